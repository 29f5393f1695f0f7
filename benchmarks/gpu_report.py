"""Every GPU figure of the project in one run, written as one markdown table (``bash benchmarks/gpu.sh``).

Runs, on one CUDA device and with nothing to download (timm models with random init, the bundled MobileNetV2 and
data set from the offline asset cache):
  1. the gpu-marked tests (pytest -m gpu);
  2. diagnose / plain forward (activation + weight metrics, cold and warm) and all metrics / forward+backward for
     resnet50, mobilenetv2_100 and vit_small at 224 px, batch 64, 8 batches (benchmarks/diagnose_overhead.py);
  3. WeightWatcher / ours for WeightWatcher's metric set on resnet50 and vit_small (benchmarks/weights_speed.py);
  4. fine-tune / ceiling loop at 64 and 224 px, bundled MobileNetV2, bf16 autocast, channels_last
     (benchmarks/finetune_throughput.py);
  5. FIRE over ViT-B/16 end to end (apply_reinit, every default target, device synchronised).
Each step's failure is recorded in the table (the others still run). ``--device cpu --quick`` runs the same code
path at tiny sizes on the CPU, to check the script itself (its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import diagnose_overhead  # noqa: E402
import finetune_throughput  # noqa: E402
import weights_speed  # noqa: E402

import plasticity_core as pc  # noqa: E402

Row = tuple[str, str, str, str]  # (figure, target, result, details)


def ok(value: float, target: float, higher: bool) -> str:
    good = value >= target if higher else value <= target
    return "meets" if good else "MISSES"


def gpu_tests(device: str, quick: bool) -> list[Row]:
    if device != "cuda" and not quick:
        return [("gpu-marked tests", "all pass", "not run", "needs --device cuda")]
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    cmd += ["tests/test_metrics_contract.py"] if quick else ["tests"]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    last = (p.stdout.strip().splitlines() or ["(no output)"])[-1]
    return [("gpu-marked tests", "all pass", ("pass" if p.returncode == 0 else f"FAIL (exit {p.returncode})"),
             f"{last} ({time.perf_counter() - t:.0f} s)")]


def diagnose_ratios(device: str, quick: bool) -> list[Row]:
    argv = ["--device", device, "--no-per-metric", "--no-ww"]
    argv += (["--models", "mobilenetv2_100", "--size", "32", "--batch", "2", "--batches", "2", "--repeats", "1"] if quick
             else ["--models", "resnet50", "mobilenetv2_100", "vit_small", "--size", "224", "--batch", "64",
                   "--batches", "8", "--repeats", "3"])
    rows = []
    for r in diagnose_overhead.main(argv):
        rows.append((f"diagnose (act+weights, cold) / forward, {r['model']}", "<= 1.2x", f"{r['act_w_over_fwd']:.2f}x "
                     f"({ok(r['act_w_over_fwd'], 1.2, False)})", f"forward {r['fwd_s'] * 1000:.1f} ms for the batches; "
                     f"warm {r['warm_over_fwd']:.2f}x, activations only {r['act_over_fwd']:.2f}x"))
        rows.append((f"diagnose (all metrics) / forward+backward, {r['model']}", "<= 1.4x",
                     f"{r['all_over_fb']:.2f}x ({ok(r['all_over_fb'], 1.4, False)})",
                     f"host reads per extra batch {r['reads_per_batch']:.2f}; CPU vs CUDA max rel. diff "
                     f"{r['cpu_cuda_diff']:.1e}"))
    return rows


def weightwatcher(device: str, quick: bool) -> list[Row]:
    import importlib.util

    if importlib.util.find_spec("weightwatcher") is None:
        return [("WeightWatcher / ours", ">= 15x", "not run", "weightwatcher is not installed: pip install -e '.[bench]'")]
    argv = ["--device", device] + (["--models", "mobilenetv2_100", "--repeats", "1"] if quick
                                   else ["--models", "resnet50", "vit_small", "--repeats", "3"])
    rows = []
    for r in weights_speed.main(argv):
        rows.append((f"WeightWatcher / ours (spectral norm, stable rank, Frobenius), {r['model']}", ">= 15x",
                     f"{r['ww_over_ours']:.1f}x ({ok(r['ww_over_ours'], 15, True)})",
                     f"ours {r['ours'] * 1000:.1f} ms, WeightWatcher {r['ww'] * 1000:.0f} ms; full weight set "
                     f"{r['full'] * 1000:.1f} ms = {r['bound_fraction']:.2f} of the sgemm bound of its Grams"))
    return rows


def finetune_ratio(device: str, quick: bool) -> list[Row]:
    rows = []
    sizes = [32] if quick else [64, 224]
    for size in sizes:
        argv = ["--backbone", "bundled:mobilenetv2_100", "--data", "bundled:animal-silhouettes", "--image-size",
                str(size), "--device", device]
        argv += (["--batch-size", "8", "--steps", "2", "--warmup", "1", "--repeats", "1"] if quick
                 else ["--batch-size", "256", "--steps", "100", "--warmup", "20", "--repeats", "3", "--workers", "8"])
        r = finetune_throughput.main(argv)
        q = r["ratio"]["finetune"]
        rows.append((f"fine-tune / ceiling, bundled MobileNetV2, {size} px", ">= 0.90x", f"{q:.3f}x ({ok(q, 0.90, True)})",
                     f"ceiling {r['images_per_s']['ceiling']:.0f} img/s, finetune {r['images_per_s']['finetune']:.0f}, "
                     f"DataLoader loop {r['ratio']['loader']:.3f}x; bf16={r['amp']}, channels_last={r['channels_last']}, "
                     f"data path {r['data_path']}"))
    return rows


def fire_vit(device: str, quick: bool) -> list[Row]:
    import timm

    name = "vit_tiny_patch16_224" if quick else "vit_base_patch16_224"
    dev = torch.device(device)
    model = timm.create_model(name, pretrained=False).to(dev).eval()
    cfg = pc.ReinitConfig(strategy="fire")
    times = []
    for r in range(4 if not quick else 2):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        report = pc.apply_reinit(model, cfg)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if r:
            times.append(time.perf_counter() - t)
    s = statistics.median(times)
    return [(f"FIRE over {name.split('_patch')[0].replace('vit_base', 'ViT-B/16')} end to end", "<= 0.12 s",
             f"{s:.3f} s ({ok(s, 0.12, False)})", f"apply_reinit(strategy='fire'), {len(report.resolved_layers)} layers, "
             f"median of {len(times)} after a warm-up, wall clock, device synchronised")]


STEPS = {"tests": gpu_tests, "diagnose": diagnose_ratios, "weightwatcher": weightwatcher, "finetune": finetune_ratio,
         "fire": fire_vit}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the script, not the device")
    ap.add_argument("--only", nargs="+", choices=list(STEPS), default=list(STEPS))
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results/gpu-<date>.md)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.sh: no CUDA device here (torch.cuda.is_available() is False, torch "
              f"{torch.__version__}); nothing was measured. To check the script on a CPU: "
              "bash benchmarks/gpu.sh --device cpu --quick", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    today = dt.datetime.now(dt.timezone.utc)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        f"{'gpu' if dev.type == 'cuda' else 'cpu-quick'}-{today:%Y-%m-%d}.md")
    rows: list[Row] = []
    start = time.perf_counter()
    for step in args.only:
        t = time.perf_counter()
        print(f"== {step}", flush=True)
        try:
            rows += STEPS[step](args.device, args.quick)
        except Exception as e:  # recorded in the table; the other steps still run
            traceback.print_exc()
            rows.append((step, "", f"ERROR: {type(e).__name__}", str(e).splitlines()[0][:200] if str(e) else ""))
        print(f"== {step}: {time.perf_counter() - t:.0f} s", flush=True)
    total = time.perf_counter() - start
    lines = [f"# GPU figures{' (quick CPU check of the script: numbers mean nothing)' if args.quick else ''}", "",
             f"- device: {name}", f"- torch {torch.__version__}, CUDA {torch.version.cuda}, plasticity {pc.__version__}",
             f"- date: {today:%Y-%m-%d %H:%M} UTC; total {total:.0f} s",
             f"- command: `bash benchmarks/gpu.sh{' --device cpu --quick' if args.quick else ''}`", "",
             "| figure | target | result | details |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {out}")
    return 1 if any(r[2].startswith(("ERROR", "FAIL")) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
