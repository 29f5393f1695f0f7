"""How much does ``diagnose`` cost next to the forward (and backward) passes it piggybacks on?

For each model (random weights), on the same N batches in the same run, prints:
  act+w/fwd     diagnose(activation + weight metrics), weight cache cleared first, / plain forwards (no_grad, eval)
  warm/fwd      the same with the weight metrics already cached (a dashboard session re-diagnosing one model)
  act/fwd       activation metrics only / plain forwards
  all/f+b       diagnose(all metrics, gradients included, cold) / plain forward + backward
  weights s     every weight metric for the whole model, cold
  ww/ours       WeightWatcher(model).analyze() time / weights s (benchmark-only dependency: pip install weightwatcher)
  reads/batch   host reads per extra batch: CUDA synchronisations (torch.cuda sync debug mode) on a GPU, calls of
                Tensor.item/.cpu/.tolist/.numpy/__bool__/__float__/__int__ on the CPU; (count(N) - count(1)) / (N - 1)
  cpu~cuda      max relative difference between the CPU and the CUDA diagnosis of the same model and data
                (every metric, precision="exact"); only with CUDA
  faults        minor page faults per call of the plain forwards / of act, medians of 3 calls after the timing
                (a fresh activation-sized tensor is page-faulted in whenever glibc has handed its block back to the
                system; how often depends on the process' allocation history, and moves every ratio above)
  base act/fwd  with --baseline DIR: act/fwd again with the activation statistics of the checkout in DIR (its
                plasticity_core/metrics/activations.py: ActivationView, the per-hook reductions), the rest of diagnose
                this checkout's, in the same rounds; base/act is the speed-up of this checkout's over that one
Then, per metric, its own cost: diagnose(metrics=[m]) time over the plain forward (weight metrics cold).
Targets on a GPU at 224 px, batch 64, 8 batches: act+w <= 1.2x, all <= 1.4x, WeightWatcher >= 15x slower;
on a CPU (one thread, 64 px) act+w <= 1.3x. Each time is the median of --repeats rounds after a warm-up round,
the timed functions taking turns in every round (a shared machine's load drift biases all ratios alike). On a
CPU the times are the process's CPU seconds (time.process_time: with one thread, the work done, whatever the
neighbours' load), on a GPU wall-clock seconds with the device synchronised.
Example (CPU): OMP_NUM_THREADS=1 python benchmarks/diagnose_overhead.py --size 64 --batch 8 --batches 4
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import inspect
import io
import logging
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

import plasticity_core.metrics.base as metrics_base
from plasticity_core.metrics import METRICS, diagnose
from plasticity_core.metrics.diagnose import clear_weight_cache

MODELS = {"resnet50": "resnet50", "mobilenetv2_100": "mobilenetv2_100", "vit_small": "vit_small_patch16_224",
          "resnet18": "resnet18"}
READS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")


def timed(fn, device: torch.device, repeats: int, before=None) -> float:
    return interleaved({"t": (fn, before)}, device, repeats)["t"]


def interleaved(fns: dict, device: torch.device, repeats: int) -> dict[str, float]:
    """Median time of each ``(fn, before)`` over ``repeats`` rounds, the functions taking turns in every round, so
    a machine whose load drifts (a shared CPU) biases every ratio the same way. One warm-up round first."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time  # CPU: this process's CPU seconds

    def once(fn, before) -> float:
        if before is not None:
            before()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return clock() - t

    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, (fn, before) in fns.items():
            t = once(fn, before)
            if r:
                times[k].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def minor_faults(fn, calls: int = 3) -> float:
    """Median minor page faults of this process per call of ``fn`` (NaN where the OS has no ``resource`` module)."""
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    out = []
    for _ in range(calls):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return statistics.median(out)


def host_reads(fn, device: torch.device) -> int:
    """CUDA synchronisations (GPU) or value-reading Tensor calls (CPU) made by ``fn``."""
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in seen)
    count = [0]
    saved = {name: getattr(torch.Tensor, name) for name in READS}
    for name, original in saved.items():
        def wrapper(self, *a, _original=original, **k):
            count[0] += 1
            return _original(self, *a, **k)
        setattr(torch.Tensor, name, wrapper)
    try:
        fn()
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)
    return count[0]


def max_rel_diff(a, b) -> float:
    x, y = a.wide().to_numpy(float), b.wide().reindex(index=a.wide().index, columns=a.wide().columns).to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    return float(np.max(np.abs(x[ok] - y[ok]) / np.maximum(np.abs(x[ok]), 1e-6))) if ok.any() else float("nan")


def baseline_module(checkout: str, name: str, needs: tuple[str, ...]):
    """Another checkout's ``plasticity_core/metrics/<name>.py``, loaded apart (its metric registrations skipped: this
    checkout's registry stays as it is); a folder that is not such a checkout exits with one line."""
    path = Path(checkout) / "plasticity_core" / "metrics" / f"{name}.py"
    if not path.is_file():
        raise SystemExit(f"--baseline {checkout}: no plasticity_core/metrics/{name}.py there; give a checkout of this project")
    spec = importlib.util.spec_from_file_location(f"baseline_{name}", path)
    module = importlib.util.module_from_spec(spec)
    register, metrics_base.register_metric = metrics_base.register_metric, (lambda *a, **k: (lambda f: f))
    try:
        spec.loader.exec_module(module)
    finally:
        metrics_base.register_metric = register
    missing = [k for k in needs if not hasattr(module, k)]
    if missing:
        raise SystemExit(f"--baseline {checkout}: its {name}.py has no {', '.join(missing)}; give a newer checkout")
    return module


def baseline_view(checkout: str) -> type:
    """The ``ActivationView`` of another checkout, taking this checkout's constructor arguments."""
    base = baseline_module(checkout, "activations", ("ActivationView",)).ActivationView
    takes_scratch = "scratch" in inspect.signature(base.__init__).parameters

    class View(base):
        def __init__(self, t, unit_dim, act_type, scratch=None):
            super().__init__(t, unit_dim, act_type, *((scratch,) if takes_scratch else ()))
            self.eligible = getattr(self, "eligible", False)  # read by the probe; older views never take the kernel

    return View


@contextlib.contextmanager
def swapped(module, attrs: dict):
    """Inside the block ``module``'s attributes named in ``attrs`` are those values (another checkout's code)."""
    own = {k: getattr(module, k) for k in attrs}
    for k, v in attrs.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in own.items():
            setattr(module, k, v)


def build(name: str, size: int, device: torch.device) -> torch.nn.Module:
    kwargs = {"img_size": size} if name.startswith("vit") else {}
    return timm.create_model(MODELS[name], pretrained=False, num_classes=10, **kwargs).to(device).eval()


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the comparison (arguments as on the command line); returns one dict of times and ratios per model."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--size", type=int, default=64, help="input resolution (224 on a GPU)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-ww", action="store_true", help="skip the WeightWatcher comparison")
    ap.add_argument("--no-per-metric", action="store_true", help="skip the per-metric table")
    ap.add_argument("--baseline", metavar="DIR", help="another checkout: also time act with its activation statistics")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    base_view = baseline_view(args.baseline) if args.baseline else None
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device),
             torch.randint(0, 10, (args.batch,), generator=g).to(device)) for _ in range(args.batches)]
    weights = [m for m, info in METRICS.items() if info.needs == "weights"]
    act_weight = [m for m, info in METRICS.items() if info.needs != "gradients"]
    act_only = [m for m, info in METRICS.items() if info.needs == "activations"]
    print(f"device={device} size={args.size} batch={args.batch} batches={args.batches} repeats={args.repeats} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")
    head = (f"{'model':16s} {'fwd s':>7s} {'act+w/fwd':>9s} {'warm/fwd':>8s} {'act/fwd':>7s} {'f+b s':>7s} {'all/f+b':>7s} "
            f"{'weights s':>9s} {'ww s':>7s} {'ww/ours':>7s} {'reads/batch':>11s} {'cpu~cuda':>9s} {'faults':>13s}"
            + (f" {'base act/fwd':>12s} {'base/act':>8s}" if base_view else ""))
    print(head)
    per_metric: dict[str, dict[str, float]] = {}
    results: list[dict] = []
    for name in args.models:
        model = build(name, args.size, device)
        ref = {k: v.clone() for k, v in model.state_dict().items()}

        def forward():
            with torch.no_grad():
                for x, _ in data:
                    model(x)

        def forward_backward():
            for x, y in data:
                F.cross_entropy(model(x), y, reduction="sum").backward()
            model.zero_grad(set_to_none=True)

        def act_base():
            with swapped(importlib.import_module("plasticity_core.metrics.diagnose"), {"ActivationView": base_view}):
                diagnose(model, data, metrics=act_only)

        t = interleaved({
            **({"act_base": (act_base, None)} if base_view else {}),
            "fwd": (forward, None),
            "diag": (lambda: diagnose(model, data, reference=ref, metrics=act_weight), clear_weight_cache),
            "warm": (lambda: diagnose(model, data, reference=ref, metrics=act_weight), None),
            "act": (lambda: diagnose(model, data, metrics=act_only), None),
            "fb": (forward_backward, None),
            "diag_all": (lambda: diagnose(model, data, reference=ref), clear_weight_cache),
            "w": (lambda: diagnose(model, data, reference=ref, metrics=weights), clear_weight_cache),
        }, device, args.repeats)
        fwd, diag, warm, act, fb, diag_all, w = (t[k] for k in ("fwd", "diag", "warm", "act", "fb", "diag_all", "w"))
        faults = (minor_faults(forward), minor_faults(lambda: diagnose(model, data, metrics=act_only)))
        one = host_reads(lambda: diagnose(model, data[:1], reference=ref), device)
        many = host_reads(lambda: diagnose(model, data, reference=ref), device)
        reads = (many - one) / max(1, len(data) - 1)
        diff = float("nan")
        if device.type == "cuda":
            cpu_model = copy.deepcopy(model).cpu()
            cpu_data = [(x.cpu(), y.cpu()) for x, y in data[:1]]  # one batch: agreement, not speed
            cpu_ref = {k: v.cpu() for k, v in ref.items()}
            diff = max_rel_diff(diagnose(cpu_model, cpu_data, reference=cpu_ref), diagnose(model, data[:1], reference=ref))
        ww = float("nan")
        if not args.no_ww:
            try:
                import weightwatcher

                logging.getLogger("weightwatcher").setLevel(logging.ERROR)
                watcher = weightwatcher.WeightWatcher(model=model)
                with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per power-law fit
                    ww = timed(lambda: watcher.analyze(), device, 1)
            except ImportError:
                print("  (weightwatcher not installed: pip install weightwatcher)")
        results.append({"model": name, "fwd_s": fwd, "act_w_over_fwd": diag / fwd, "warm_over_fwd": warm / fwd,
                        "act_over_fwd": act / fwd, "fb_s": fb, "all_over_fb": diag_all / fb, "weights_s": w,
                        "ww_s": ww, "ww_over_ours": ww / w, "reads_per_batch": reads, "cpu_cuda_diff": diff,
                        "faults_fwd": faults[0], "faults_act": faults[1],
                        "base_act_over_fwd": t["act_base"] / fwd if base_view else float("nan"),
                        "base_over_act": t["act_base"] / act if base_view else float("nan")})
        print(f"{name:16s} {fwd:7.3f} {diag / fwd:9.2f} {warm / fwd:8.2f} {act / fwd:7.2f} {fb:7.3f} {diag_all / fb:7.2f} "
              f"{w:9.3f} {ww:7.2f} {ww / w:7.1f} {reads:11.2f} {diff:9.1e} {f'{faults[0]:.0f}/{faults[1]:.0f}':>13s}"
              + (f" {t['act_base'] / fwd:12.2f} {t['act_base'] / act:8.2f}" if base_view else ""), flush=True)
        if not args.no_per_metric:
            t = interleaved({"fwd": (forward, None), "fb": (forward_backward, None),
                             **{m: (lambda m=m: diagnose(model, data, reference=ref, metrics=[m]), clear_weight_cache)
                                for m in METRICS.names()}}, device, 1)
            costs = {}
            for m in METRICS.names():
                base = {"gradients": t["fb"], "activations": t["fwd"]}.get(METRICS[m].needs, 0.0)
                costs[m] = (t[m] - base) / t["fwd"]
            per_metric[name] = costs
    if per_metric:
        print("\nper-metric cost: (diagnose(metrics=[m]) - the passes it rides on) / plain forward "
              "(weights: cold; gradients: minus forward+backward)")
        print(f"{'metric':16s} " + " ".join(f"{n:>16s}" for n in per_metric))
        for m in METRICS.names():
            print(f"{m:16s} " + " ".join(f"{per_metric[n][m]:16.2f}" for n in per_metric))
    return results


if __name__ == "__main__":
    main()
