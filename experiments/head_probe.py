"""Does a short linear probe of the fresh head make gradient metrics and Recommend stable across head seeds?

For each head seed and each probe length (0 = the untrained random head), on real data: load the bundled ImageNet
backbone with a fresh head drawn from that seed, probe the head for N steps (``pc.probe_head``), diagnose on the
same probe batches, recommend. Reported per probe length: the recommended layer sets over seeds (distinct sets,
mean pairwise Jaccard), the recommended strategy/params, and grad_norm's coefficient of variation over seeds
(median over layers, and conv_stem). Decides the dashboard's default probe length (issue 19).

    python experiments/head_probe.py --seeds 0 1 2 3 4 --steps 0 25 100 [--data bundled:animal-silhouettes]
"""
from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import pandas as pd

import plasticity_core as pc


def study(backbone: str, data_spec: str, image_size: int, limit: int, seeds: list[int], steps: list[int],
          batches: int, budget: float) -> pd.DataFrame:
    rows = []
    for n in steps:
        recs, grads = [], []
        t0 = time.process_time()
        for seed in seeds:
            bb = pc.load_backbone(backbone, num_classes=None, seed=seed)
            data = pc.load_dataset(data_spec, image_size=image_size, limit=limit, data_config=bb.data_config)
            bb = pc.load_backbone(backbone, num_classes=data.num_classes, seed=seed)
            probe = pc.probe_head(bb, data.train, steps=n, seed=seed) if n else {}
            d = pc.diagnose(bb, data.val, max_batches=batches)
            rec = d.recommend(budget=budget)
            recs.append((seed, rec, probe.get("last_acc")))
            grads.append(d.wide()["grad_norm"].rename(seed))
        g = pd.concat(grads, axis=1)
        cv = (g.std(axis=1) / g.mean(axis=1)).dropna()
        sets = [frozenset(r.layers) for _, r, _ in recs]
        jac = [len(a & b) / len(a | b) if a | b else 1.0 for a, b in itertools.combinations(sets, 2)]
        first = g.index[0]
        rows.append({"probe_steps": n, "distinct_layer_sets": len(set(sets)), "mean_pairwise_jaccard": float(np.mean(jac)),
                     "n_layers": "/".join(str(len(s)) for s in sets),
                     "strategies": "/".join(f"{r.strategy}{sorted(r.params.items()) if r.params else ''}" for _, r, _ in recs),
                     "grad_norm_cv_median": float(cv.median()), f"grad_norm_cv_{first}": float(cv.loc[first]),
                     f"grad_norm_{first}_range": f"{g.loc[first].min():.3f}-{g.loc[first].max():.3f}",
                     "probe_train_acc": "/".join("-" if a is None else f"{a:.2f}" for _, _, a in recs),
                     "cpu_s": round(time.process_time() - t0, 1)})
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="bundled:mobilenetv2_100")
    p.add_argument("--data", default="bundled:animal-silhouettes")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, nargs="+", default=[0, 25, 100])
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--budget", type=float, default=0.25)
    a = p.parse_args()
    table = study(a.backbone, a.data, a.image_size, a.limit, a.seeds, a.steps, a.batches, a.budget)
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 120):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
