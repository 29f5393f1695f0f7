"""The dashboard's case: a model's weight metrics computing in a background thread (started when the model is
loaded) while the foreground runs forwards (the first Diagnose click's activation pass). Wall clock, with the
process's own thread settings: run it WITHOUT OMP_NUM_THREADS=1, since the thread pools are what it measures.

For each model, in interleaved rounds (medians), prints:
  fwd s         --forwards plain forwards alone (batch --batch at --size px, no_grad, eval)
  weights s     every weight metric alone, weight cache cleared (what the background job computes)
  fwd|w s       the same forwards while the weight job runs beside them: what the first Diagnose click waits for
  both s        until both are done
  fwd|w / fwd   how much the background job slows the foreground (1.0 = not at all)
With --baseline DIR the weights and the pair are timed again with the kernels of the checkout in DIR (see
weights_speed.py): base weights s, base fwd|w s, base both s.
Example: python benchmarks/background_weights.py --models resnet50 vit_small --baseline ../old-checkout
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import timm
import torch

from plasticity_core.metrics import METRICS, diagnose
from plasticity_core.metrics.diagnose import clear_weight_cache

from weights_speed import MODELS, baseline_kernels, kernels_from  # one way to load another checkout's kernels


def measure(name: str, size: int, batch: int, forwards: int, repeats: int, baseline) -> dict[str, float]:
    sized = {"img_size": size} if MODELS[name].startswith("vit") else {}  # a ViT's input size is fixed at creation
    model = timm.create_model(MODELS[name], pretrained=False, **sized).eval()
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    names = [m for m, info in METRICS.items() if info.needs == "weights"]
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))

    def fwd() -> None:
        with torch.no_grad():
            for _ in range(forwards):
                model(x)

    def weights(kernels=None) -> None:
        if kernels is None:
            diagnose(model, [], reference=ref, metrics=names)
        else:
            with kernels_from(kernels):
                diagnose(model, [], reference=ref, metrics=names)

    def beside(kernels=None) -> tuple[float, float]:
        t0 = time.perf_counter()
        job = threading.Thread(target=weights, args=(kernels,))
        job.start()
        fwd()
        t_fwd = time.perf_counter() - t0
        job.join()
        return t_fwd, time.perf_counter() - t0

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {}
    fwd()  # warm-up
    weights()
    clear_weight_cache()
    for r in range(repeats + 1):
        row = {"fwd": timed(fwd)}
        clear_weight_cache()
        row["weights"] = timed(weights)
        clear_weight_cache()
        row["fwd_w"], row["both"] = beside()
        clear_weight_cache()
        if baseline is not None:
            row["base_weights"] = timed(lambda: weights(baseline))
            clear_weight_cache()
            row["base_fwd_w"], row["base_both"] = beside(baseline)
            clear_weight_cache()
        if r:
            for k, v in row.items():
                times.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet50", "vit_small"], choices=list(MODELS))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--forwards", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", metavar="DIR", help="another checkout: also time its kernels")
    args = ap.parse_args(argv)
    baseline = baseline_kernels(args.baseline) if args.baseline else None
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} size={args.size} batch={args.batch} "
          f"forwards={args.forwards} repeats={args.repeats} (wall clock)")
    head = f"{'model':16s} {'fwd s':>7s} {'weights s':>9s} {'fwd|w s':>8s} {'both s':>7s} {'fwd|w / fwd':>11s}"
    print(head + (f" {'base weights s':>14s} {'base fwd|w s':>12s} {'base both s':>11s}" if baseline else ""))
    out = []
    for name in args.models:
        t = measure(name, args.size, args.batch, args.forwards, args.repeats, baseline)
        out.append({"model": name, **t})
        print(f"{name:16s} {t['fwd']:7.3f} {t['weights']:9.3f} {t['fwd_w']:8.3f} {t['both']:7.3f} "
              f"{t['fwd_w'] / t['fwd']:11.2f}"
              + (f" {t['base_weights']:14.3f} {t['base_fwd_w']:12.3f} {t['base_both']:11.3f}" if baseline else ""),
              flush=True)
    return out


if __name__ == "__main__":
    main()
