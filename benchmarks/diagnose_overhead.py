"""How much does ``diagnose`` cost next to the forward (and backward) passes it piggybacks on?

For each model (random weights), on the same N batches in the same run, prints:
  act+weight / fwd      diagnose(activation + weight metrics) time / plain forwards (no_grad, eval)
  act / fwd             the same without the weight metrics (their cost does not grow with the data)
  all / fwd+bwd         diagnose(all metrics, gradients included) time / plain forward + backward
  weights / ww          all weight metrics for the whole model (diagnose(metrics=weight names)) time /
                        WeightWatcher(model).analyze() time (a benchmark-only dependency: pip install weightwatcher)
Targets on a GPU: <= 1.2x, <= 1.4x, and WeightWatcher >= 15x slower. Each time is the median of --repeats runs
after one warm-up run. Example (CPU, modest): python benchmarks/diagnose_overhead.py --size 64 --batches 2
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import time

import timm
import torch
import torch.nn.functional as F

from plasticity_core.metrics import METRICS, diagnose

MODELS = {"resnet50": "resnet50", "mobilenetv2_100": "mobilenetv2_100", "vit_small": "vit_small_patch16_224"}


def timed(fn, device: torch.device, repeats: int) -> float:
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    once()  # warm-up (allocator, cudnn autotune, layer-map trace)
    return statistics.median(once() for _ in range(repeats))


def build(name: str, size: int, device: torch.device) -> torch.nn.Module:
    kwargs = {"img_size": size} if name.startswith("vit") else {}
    return timm.create_model(MODELS[name], pretrained=False, num_classes=10, **kwargs).to(device).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--size", type=int, default=64, help="input resolution (224 on a GPU)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-ww", action="store_true", help="skip the WeightWatcher comparison")
    args = ap.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device),
             torch.randint(0, 10, (args.batch,), generator=g).to(device)) for _ in range(args.batches)]
    weights = [m for m, info in METRICS.items() if info.needs == "weights"]
    act_weight = [m for m, info in METRICS.items() if info.needs != "gradients"]
    act_only = [m for m, info in METRICS.items() if info.needs == "activations"]
    print(f"device={device} size={args.size} batch={args.batch} batches={args.batches} repeats={args.repeats} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'model':16s} {'fwd s':>8s} {'diag s':>8s} {'act+w/fwd':>9s} {'act/fwd':>7s} {'fwd+bwd s':>9s} {'diag all s':>10s} "
          f"{'all/f+b':>8s} {'weights s':>9s} {'ww s':>8s} {'ww/ours':>8s}")
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

        fwd = timed(forward, device, args.repeats)
        diag = timed(lambda: diagnose(model, data, reference=ref, metrics=act_weight, max_batches=args.batches),
                     device, args.repeats)
        act = timed(lambda: diagnose(model, data, metrics=act_only, max_batches=args.batches), device, args.repeats)
        fb = timed(forward_backward, device, args.repeats)
        diag_all = timed(lambda: diagnose(model, data, reference=ref, max_batches=args.batches), device, args.repeats)
        w = timed(lambda: diagnose(model, data, reference=ref, metrics=weights), device, args.repeats)
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
        print(f"{name:16s} {fwd:8.3f} {diag:8.3f} {diag / fwd:9.2f} {act / fwd:7.2f} {fb:9.3f} {diag_all:10.3f} {diag_all / fb:8.2f} "
              f"{w:9.3f} {ww:8.2f} {ww / w:8.1f}", flush=True)


if __name__ == "__main__":
    main()
