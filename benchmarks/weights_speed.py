"""Weight metrics: our cost against WeightWatcher and against the matmul bound, measured in the same run.

For each model (timm, random init: no pretrained weights are needed offline; the Gram and SVD costs do not
depend on the values, the Lanczos step count does a little: random matrices have the smallest spectral gaps,
so they are the slow case), prints:
  ours s        diagnose(metrics=[spectral_norm, stable_rank, fro_norm]) (WeightWatcher's metric set), weight
                cache cleared first
  ww s          WeightWatcher(model).analyze() with its defaults (benchmark-only dependency: the `bench` extra)
  ww/ours       the ratio (goal >= 15x)
  full s        every weight metric (sfe, sfe_rel, dfi, dfi_si, fro_norm, spectral_norm, stable_rank, nonfinite)
  gram GF       GFLOP of the Grams the full set needs (2 m n^2 per tap: dfi / dfi_si read X^T X)
  bound s       gram GF / the sgemm rate measured in this run (1024^3 fp32 matmul)
  bound/full    the fraction of the matmul bound the full weight set reaches (1.0 = only the Grams' GEMMs)
  base s        with --baseline DIR: "ours" again with the kernels of the checkout in DIR (its
                plasticity_core/metrics/weights.py: top_singular and gram_norms, with everything they call), the rest
                of diagnose this checkout's; base/ours is the speed-up of this checkout's kernels over that one,
                measured in the same rounds (a shared host's drift moves both alike)
  base full s   the same for "full"; base/full is its speed-up
Times are medians over --repeats rounds after a warm-up round, the timed functions taking turns in every round;
CPU seconds of this process (time.process_time) on a CPU, wall-clock seconds with the device synchronised on a GPU.
Run with one thread on a CPU: OMP_NUM_THREADS=1 python benchmarks/weights_speed.py
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging

import timm
import torch

import plasticity_core.metrics.weights as weights
from plasticity_core.layers import layer_map
from plasticity_core.metrics import METRICS, diagnose
from plasticity_core.metrics.diagnose import clear_weight_cache
from plasticity_core.metrics.weights import tall_taps

from diagnose_overhead import baseline_module, interleaved, swapped  # the one timer and loader of benchmarks/

MODELS = {"resnet50": "resnet50", "vit_small": "vit_small_patch16_224", "mobilenetv2_100": "mobilenetv2_100",
          "resnet18": "resnet18"}
WW_SET = ["spectral_norm", "stable_rank", "fro_norm"]


def sgemm_rate(device: torch.device, n: int = 1024) -> float:
    """Measured fp32 GEMM rate (FLOP/s), TF32 off."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        reps = 50 if device.type == "cuda" else 5
        t = interleaved({"mm": (lambda: [a @ b for _ in range(reps)], None)}, device, 3)["mm"]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return 2 * n ** 3 * reps / t


def gram_flops(model: torch.nn.Module) -> float:
    total = 0.0
    for layer in layer_map(model):
        x = tall_taps(layer.weight(model))
        b, m, n = x.shape
        total += 2.0 * b * m * n * n
    return total


def weightwatcher_fn(model: torch.nn.Module):
    try:
        import weightwatcher
    except ImportError:
        return None
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    watcher = weightwatcher.WeightWatcher(model=model)

    def run():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            watcher.analyze()
    return run


KERNELS = ("top_singular", "gram_norms")  # what --baseline takes from the other checkout


def baseline_kernels(checkout: str) -> dict:
    """``KERNELS`` of another checkout's ``plasticity_core/metrics/weights.py``."""
    module = baseline_module(checkout, "weights", KERNELS)
    return {k: getattr(module, k) for k in KERNELS}


def kernels_from(kernels: dict):
    """Run diagnose with ``kernels`` in place of this checkout's."""
    return swapped(weights, kernels)


def measure(name: str, device: torch.device, repeats: int, ww: bool, baseline=None) -> dict[str, float]:
    model = timm.create_model(MODELS[name], pretrained=False).to(device).eval()
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    names = [m for m, info in METRICS.items() if info.needs == "weights"]
    fns = {
        "ours": (lambda: diagnose(model, [], metrics=WW_SET), clear_weight_cache),
        "full": (lambda: diagnose(model, [], reference=ref, metrics=names), clear_weight_cache),
    }
    if baseline is not None:
        def with_baseline(metrics, reference=None):
            def run():
                with kernels_from(baseline):
                    diagnose(model, [], reference=reference, metrics=metrics)
            return run
        fns["base"] = (with_baseline(WW_SET), clear_weight_cache)
        fns["base_full"] = (with_baseline(names, ref), clear_weight_cache)
    run_ww = weightwatcher_fn(model) if ww else None  # on a GPU it uses torch's SVD there
    if run_ww is not None:
        fns["ww"] = (run_ww, None)
    t = interleaved(fns, device, repeats)
    t["gram_flops"] = gram_flops(model)
    t.setdefault("ww", float("nan"))
    t.setdefault("base", float("nan"))
    t.setdefault("base_full", float("nan"))
    return t


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the comparison (arguments as on the command line); returns one dict per model."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet50", "vit_small"], choices=list(MODELS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-ww", action="store_true", help="skip WeightWatcher")
    ap.add_argument("--baseline", metavar="DIR", help="another checkout: also time ours with its kernels")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    baseline = baseline_kernels(args.baseline) if args.baseline else None
    rate = sgemm_rate(device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} repeats={args.repeats} "
          f"sgemm={rate / 1e9:.1f} GFLOP/s")
    print(f"{'model':16s} {'ours s':>7s} {'ww s':>7s} {'ww/ours':>7s} {'full s':>7s} {'gram GF':>8s} {'bound s':>8s} "
          f"{'bound/full':>10s}"
          + (f" {'base s':>7s} {'base/ours':>9s} {'base full s':>11s} {'base/full':>9s}" if baseline else ""))
    out = []
    for name in args.models:
        t = measure(name, device, args.repeats, not args.no_ww, baseline)
        bound = t["gram_flops"] / rate
        out.append({"model": name, **t, "ww_over_ours": t["ww"] / t["ours"], "bound_s": bound,
                    "bound_fraction": bound / t["full"], "sgemm_flops": rate, "base_over_ours": t["base"] / t["ours"],
                    "base_over_full": t["base_full"] / t["full"]})
        print(f"{name:16s} {t['ours']:7.3f} {t['ww']:7.3f} {t['ww'] / t['ours']:7.1f} {t['full']:7.3f} "
              f"{t['gram_flops'] / 1e9:8.2f} {bound:8.3f} {bound / t['full']:10.2f}"
              + (f" {t['base']:7.3f} {t['base'] / t['ours']:9.2f} {t['base_full']:11.3f} "
                 f"{t['base_full'] / t['full']:9.2f}" if baseline else ""), flush=True)
    return out


if __name__ == "__main__":
    main()
