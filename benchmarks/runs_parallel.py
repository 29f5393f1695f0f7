"""Wall time of the README's 2 arms x 3 seeds experiment through the ``process`` executor at 1 and at N runs at once.

The ceiling is the ideal speed-up ``min(N, cores / threads per run)``: N runs at once cannot go faster than the cores
they share. Printed: wall time at 1 and at N, the measured speed-up, and its ratio to the ceiling. Each run is a real
fine-tune (its own pool worker process, which imports torch once); the same experiment, new folders each time.

    OMP_NUM_THREADS=1 python benchmarks/runs_parallel.py --steps 150 --parallel 3    # the README example as written
    OMP_NUM_THREADS=1 python benchmarks/runs_parallel.py --steps 30 --parallel 3     # shorter runs
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import plasticity_core as pc  # noqa: E402


def experiment(steps: int) -> pc.ExperimentConfig:
    """The README's Library example (``pc.ExperimentConfig(...)``), with ``steps`` as given."""
    return pc.ExperimentConfig(
        name="silhouettes", backbone="bundled:mobilenetv2_100", data="bundled:animal-silhouettes", data_limit=2000,
        finetune=pc.FinetuneConfig(steps=steps, batch_size=32, lr=0.02, image_size=64),
        arms={"baseline": None, "fire": pc.ReinitConfig(strategy="fire", layers=["blocks.5.*", "blocks.6.*"])},
        seeds=[0, 1, 2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--parallel", type=int, default=3)
    ap.add_argument("--reverse", action="store_true", help="measure N at once first (other load on the machine drifts)")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or cores
    exp = experiment(args.steps)
    times = {}
    with tempfile.TemporaryDirectory() as root:
        for n in ((args.parallel, 1) if args.reverse else (1, args.parallel)):
            t0 = time.perf_counter()
            runs = pc.run_experiment(exp, root, tag=f"p{n}", executor="process", parallel=n)
            times[n] = time.perf_counter() - t0
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            bad = [f"{r.name}: {r.summary().get('reason')}" for r in runs if r.status != "finished"]
            assert not bad, bad
            print(f"parallel={n}: {len(runs)} runs of {args.steps} steps in {times[n]:.1f} s "
                  f"(1-min load average at the end: {load:.1f})", flush=True)
    ceiling = min(args.parallel, max(1.0, cores / threads))
    speedup = times[1] / times[args.parallel]
    print(f"cores={cores} threads/run={threads} speed-up {speedup:.2f}x, ceiling {ceiling:.2f}x, "
          f"ratio {speedup / ceiling:.2f}")


if __name__ == "__main__":
    main()
