"""How long does one refresh ("tick") of the Fine-tune page take on a big store?

Builds a store of ``--runs`` runs (3 arms x seeds) of ``--steps`` logged steps, an evaluation every 10 steps and
``--snapshots`` per-layer snapshots each (53 layers x 6 metrics, MobileNetV2's layer count), written as the run
contract writes them, then drives the real page (Streamlit AppTest, the Fine-tune page without a loaded model; the runs
read as running, so the page draws its live view) and
prints the CPU seconds (time.process_time, with one thread: the work done whatever the neighbours' load) of:
  first     the first page run (every run folder parsed once)
  idle      a rerun with nothing new (each run polled: a stat, no bytes read)
  live      a rerun after 10 new step events and 1 evaluation were appended to every run (only those bytes read)
Each is the median of --repeats. Example: OMP_NUM_THREADS=1 python benchmarks/dashboard_tick.py --runs 30
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import plasticity_core as pc
from plasticity_core.runs.spec import expand_experiment, run_name

METRICS = ["dormant", "dead", "saturation", "sfe_rel", "dfi_si", "feature_erank"]
LAYERS = [f"blocks.{i}.{j}.conv_{k}" for i in range(7) for j in range(3) for k in ("pw", "dw", "pwl")][:52] + ["conv_head"]


def _events(steps: int, snapshots: int, start: int = 0) -> list[dict]:
    every = max(1, steps // snapshots)
    out = [] if start else [{"type": "start", "step": 0, "time": 0.0, "total_steps": steps},
                            {"type": "eval", "step": 0, "time": 0.5, "val_acc": 0.1, "val_loss": 2.3}]
    for s in range(start + 1, start + steps + 1):
        out.append({"type": "step", "step": s, "time": 0.1 * s, "loss": 2.0 / (1 + 0.01 * s), "lr": 0.01,
                    "images_per_s": 300.0, "epoch": s // 100})
        if s % 10 == 0:
            out.append({"type": "eval", "step": s, "time": 0.1 * s, "val_acc": min(0.9, 0.1 + s / 2000), "val_loss": 1.0})
        if s % every == 0 and start == 0:
            out.append({"type": "diagnosis", "step": s, "time": 0.1 * s,
                        "rows": [{"layer": la, "metric": m, "value": (hash((la, m, s)) % 1000) / 1000}
                                 for la in LAYERS for m in METRICS]})
    return out


def build(root: Path, runs: int, steps: int, snapshots: int) -> str:
    seeds = max(1, runs // 3)
    fire = pc.ReinitConfig(strategy="fire", layers=["blocks.5.*"])
    reset = pc.ReinitConfig(strategy="reset", layers=["blocks.6.*"])
    cfg = pc.ExperimentConfig(name="tick", finetune=pc.FinetuneConfig(steps=steps, diagnose_every=steps // snapshots),
                              arms={"baseline": None, "fire": fire, "reset": reset}, seeds=list(range(seeds)))
    folder = root / "tick-bench"
    for single in expand_experiment(cfg):
        run = folder / run_name(single)
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(single.to_yaml())
        (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in _events(steps, snapshots)))
        (run / "summary.json").write_text(json.dumps({
            "status": "running", "reason": "", "arm": next(iter(single.arms)), "seed": single.seeds[0],
            "steps": steps, "total_steps": steps, "final_val_acc": 0.6, "best_val_acc": 0.6, "wall_time_s": 100.0}))
    return folder.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--snapshots", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        experiment = build(root, args.runs, args.steps, args.snapshots)
        size = sum(p.stat().st_size for p in root.rglob("metrics.jsonl"))
        print(f"store: {args.runs} runs x {args.steps} steps, {args.snapshots} snapshots of {len(LAYERS)} layers x "
              f"{len(METRICS)} metrics: {size / 1e6:.1f} MB of events ({time.perf_counter() - t:.1f} s to write)")
        os.environ["PLASTICITY_RUNS"] = str(root)
        app = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
        at = AppTest.from_file(app, default_timeout=600)
        at.switch_page("app_pages/finetune.py")

        def timed() -> float:
            for run in (root / experiment).iterdir():  # the runs are alive (a fresh heartbeat): the live view
                (run / "heartbeat.json").write_text(json.dumps({"time": time.time(), "host": "bench", "pid": 0}))
            c = time.process_time()
            at.run()
            assert not at.exception, [e.message for e in at.exception]
            return time.process_time() - c

        first = timed()
        charts = len(at.get("plotly_chart"))
        idle = statistics.median(timed() for _ in range(args.repeats))
        live = []
        for k in range(args.repeats):
            for run in (root / experiment).iterdir():
                with open(run / "metrics.jsonl", "a") as f:
                    f.write("".join(json.dumps(e) + "\n" for e in _events(10, args.snapshots, start=args.steps + 10 * k)))
            live.append(timed())
        print(f"{charts} charts; CPU seconds per page run: first {first:.2f}, idle {idle:.2f}, "
              f"live {statistics.median(live):.2f}")


if __name__ == "__main__":
    main()
