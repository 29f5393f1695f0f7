"""What do the per-layer snapshots the dashboard takes by default cost next to the run they watch?

One real fine-tune of the dashboard's default setup (bundled MobileNetV2 on animal silhouettes at 64 px, batch 32,
evaluation every 10 steps) with the Fine-tune page's snapshot settings (a snapshot every steps/10 steps of
dormant, dead, saturation, sfe_rel, dfi_si, feature_erank on 2 validation batches). Prints the CPU seconds
(time.process_time; run it with one thread) spent inside the snapshots and in the whole run, and their ratio.
Example: OMP_NUM_THREADS=1 python benchmarks/snapshot_overhead.py --steps 100
"""
from __future__ import annotations

import argparse
import importlib
import time

import torch

import plasticity_core as pc

loop = importlib.import_module("plasticity_core.finetune")  # the module (pc.finetune is the function)

METRICS = ["dormant", "dead", "saturation", "sfe_rel", "dfi_si", "feature_erank"]  # the Fine-tune page's set


def main() -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    bb = pc.load_backbone("bundled:mobilenetv2_100", pretrained=True, num_classes=10)
    data = pc.load_dataset("bundled:animal-silhouettes", image_size=64, data_config=bb.data_config)
    cfg = pc.FinetuneConfig(steps=args.steps, batch_size=32, lr=0.01, image_size=64, eval_every=10, device=args.device,
                            warmup_steps=min(10, args.steps // 10), diagnose_every=max(1, args.steps // 10),
                            diagnose_metrics=METRICS)
    spent, calls, original = [0.0], [0], loop._diagnose

    def timed(run, step):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        c = time.process_time() if args.device == "cpu" else time.perf_counter()
        original(run, step)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        spent[0] += (time.process_time() if args.device == "cpu" else time.perf_counter()) - c
        calls[0] += 1

    loop._diagnose = timed
    try:
        c = time.process_time() if args.device == "cpu" else time.perf_counter()
        pc.finetune(bb.model, data, cfg)
        total = (time.process_time() if args.device == "cpu" else time.perf_counter()) - c
    finally:
        loop._diagnose = original
    unit = "CPU s" if args.device == "cpu" else "s"
    print(f"{args.steps} steps on {args.device}: run {total:.1f} {unit}, {calls[0]} snapshots {spent[0]:.1f} {unit} "
          f"({spent[0] / calls[0]:.2f} each) = {100 * spent[0] / total:.1f} % of the run")
    return {"run_s": total, "snapshots_s": spent[0], "fraction": spent[0] / total}


if __name__ == "__main__":
    main()
