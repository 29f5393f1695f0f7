"""Study 4, where does re-initialisation help? Resolution x labelled images per class, paired over seeds.

For every cell (image size, N labelled train images per class) the bundled ImageNet MobileNetV2 is diagnosed on
the N-per-class train split, ``Diagnosis.recommend`` picks the layers (as the dashboard's "recommend" does), and
plain fine-tuning (baseline) is compared with each strategy on those layers. The val split is the same large set
in every cell (it does not depend on N), every run is evaluated once, at the end, on all of it. Each arm of a seed
shares the head init, the data and the batch order with the baseline of that seed, so the per-seed difference
arm - baseline is paired; the table gives its mean and standard error over seeds.

    python experiments/where_it_helps.py            # full CPU scale (80 runs; 46 min measured on 2 shared cores)
    python experiments/where_it_helps.py --quick    # smoke test of the whole path
    python experiments/where_it_helps.py --data "torchvision:DTD?root=$HOME/data&download=1" \\
        --image-sizes 224 --per-class 5 10 25 --steps 300 --batch-size 32 --device cuda   # the GPU recipe
"""
from __future__ import annotations

import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import transfer  # noqa: E402
from plasticity_core.config import FinetuneConfig  # noqa: E402

STUDY = "where_it_helps"
BASELINE = "baseline"
STRATEGIES = ["fire", "shrink_perturb", "reset", "targeted"]


def settings(quick: bool) -> dict:
    """Scale of one mode; the full mode is 80 runs (46 min measured on 2 CPU cores shared with other jobs)."""
    if quick:
        return dict(data="bundled:animal-silhouettes", backbone="bundled:mobilenetv2_100", data_limit=200,
                    val_fraction=0.5, image_sizes=[32], per_class=[3], seeds=[0, 1], probe_batches=1,
                    strategies=["fire"],
                    finetune=FinetuneConfig(steps=3, batch_size=10, optimizer="sgd", lr=0.02, weight_decay=5e-4,
                                            warmup_steps=1, image_size=32, eval_every=3, device="auto"))
    return dict(data="bundled:animal-silhouettes", backbone="bundled:mobilenetv2_100", data_limit=2000,
                val_fraction=0.5, image_sizes=[32, 64], per_class=[5, 25], seeds=[0, 1, 2, 3, 4], probe_batches=4,
                strategies=["fire", "shrink_perturb", "targeted"],
                finetune=FinetuneConfig(steps=40, batch_size=25, optimizer="sgd", lr=0.02, weight_decay=5e-4,
                                        warmup_steps=4, image_size=64, eval_every=40, device="auto"))


def cli(argv: list[str]):
    p = common.parser(__doc__.splitlines()[0], scale=True)
    p.add_argument("--image-sizes", type=int, nargs="+", help="resolutions of the grid (px)")
    p.add_argument("--per-class", type=int, nargs="+", help="labelled train images per class of the grid")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES + ["redo", "cbp"], help="arms besides the baseline")
    p.add_argument("--resume", action="store_true", help="keep the cells already in OUT/runs.csv and run the others")
    return p.parse_args(argv)


def cell_settings(s: dict, size: int, n: int) -> dict:
    """The transfer study's settings for one cell: one evaluation, at the end, on the whole val split."""
    ft = dataclasses.replace(s["finetune"], image_size=size, eval_every=s["finetune"].steps, eval_batches=None)
    return {**s, "finetune": ft, "train_per_class": n, "cbp": dict(maturity=max(2, ft.steps // 10))}


def run_cell(s: dict, size: int, n: int, out: Path) -> tuple[list[common.Run], dict]:
    cs = cell_settings(s, size, n)
    exp = transfer.base_experiment(cs, name=f"{STUDY}-{size}px-{n}pc")
    rec, _ = transfer.recommend(exp, cs)
    arms = {k: v for k, v in transfer.arms(rec, cs).items()}
    # stable arm names across cells: the recommended strategy runs under its own name with the recommended params
    named = {BASELINE: None}
    for name, cfg in arms.items():
        plain = name.replace(" (recommended)", "")
        if name == BASELINE or plain not in s["strategies"] or plain in named:
            continue
        named[plain] = cfg
    exp.arms = named
    runs = common.run(exp, out)
    return runs, {"image_size": size, "per_class": n, "strategy": rec.strategy, "params": rec.params,
                  "layers": list(rec.layers)}


def rows_of(runs: list[common.Run], size: int, n: int) -> list[dict]:
    return [{"image_size": size, "per_class": n, "arm": r.arm, "seed": r.seed, "final_acc": r.final_acc,
             "wall_s": r.wall_s, "touched": common._touched(r)} for r in runs]


def table(frame: pd.DataFrame, arms: list[str]) -> pd.DataFrame:
    """Per cell: baseline accuracy mean ± SE, and per arm the paired difference to the baseline (mean, SE)."""
    out = []
    for (size, n), cell in frame.groupby(["image_size", "per_class"], sort=True):
        base = cell[cell.arm == BASELINE].set_index("seed")["final_acc"]
        row = {"image_size": size, "per_class": n, "n_seeds": len(base), "baseline_mean": base.mean(),
               "baseline_se": _se(base.to_numpy())}
        for arm in arms:
            a = cell[cell.arm == arm].set_index("seed")["final_acc"]
            d = (a - base).dropna().to_numpy()
            row[f"{arm}_acc"] = a.mean() if len(a) else math.nan
            row[f"{arm}_diff"] = d.mean() if len(d) else math.nan
            row[f"{arm}_se"] = _se(d)
        out.append(row)
    return pd.DataFrame(out)


def _se(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def markdown(t: pd.DataFrame, arms: list[str]) -> str:
    head = ["px", "N/class", "seeds", "baseline acc (%)"] + [f"{a}: diff (points)" for a in arms]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in t.to_dict("records"):
        cells = [str(r["image_size"]), str(r["per_class"]), str(r["n_seeds"]),
                 f"{r['baseline_mean'] * 100:.1f} ± {r['baseline_se'] * 100:.1f}"]
        for a in arms:
            d, se = r[f"{a}_diff"], r[f"{a}_se"]
            mark = "" if math.isnan(se) or abs(d) <= 2 * se else (" **(+)**" if d > 0 else " **(-)**")
            cells.append("n/a" if math.isnan(d) else f"{d * 100:+.1f} ± {se * 100:.1f}{mark}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(t: pd.DataFrame, arms: list[str], path: Path) -> bool:
    """Paired difference to the baseline (± 2 SE) against N per class, one panel per resolution."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = sorted(t.image_size.unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.8), dpi=110, sharey=True, squeeze=False)
    for ax, size in zip(axes[0], sizes):
        sub = t[t.image_size == size].sort_values("per_class")
        for i, a in enumerate(arms):
            x = np.arange(len(sub)) + (i - (len(arms) - 1) / 2) * 0.12
            ax.errorbar(x, sub[f"{a}_diff"] * 100, yerr=2 * sub[f"{a}_se"].fillna(0) * 100, fmt="o", capsize=3, label=a)
        ax.axhline(0, color="grey", lw=1)
        ax.set_xticks(np.arange(len(sub)), [str(n) for n in sub.per_class])
        ax.set(xlabel="labelled train images per class", title=f"{size} px")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("arm - baseline, same seed (points, ± 2 SE)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = cli(argv)
    command = shlex.join(["python", "experiments/where_it_helps.py", *argv])
    out = common.out_dir(args, STUDY)
    s = common.apply_scale(settings(args.quick), args)
    s["image_sizes"] = args.image_sizes or s["image_sizes"]
    s["per_class"] = args.per_class or s["per_class"]
    s["strategies"] = args.strategies or s["strategies"]
    t0 = time.perf_counter()
    csv, recs_path = out / "runs.csv", out / "recommendations.json"
    frame = pd.read_csv(csv) if args.resume and csv.exists() else pd.DataFrame()
    recs = json.loads(recs_path.read_text()) if args.resume and recs_path.exists() else []
    for size in s["image_sizes"]:
        for n in s["per_class"]:
            if len(frame) and ((frame.image_size == size) & (frame.per_class == n)).any():
                continue
            print(f"{STUDY}: {size} px, {n} per class")
            runs, rec = run_cell(s, size, n, out)
            frame = pd.concat([frame, pd.DataFrame(rows_of(runs, size, n))], ignore_index=True)
            recs.append(rec)
            frame.to_csv(csv, index=False)  # written after every cell: an interrupted study keeps what it measured
            recs_path.write_text(json.dumps(recs, indent=2, default=str))
    write(out, args, command, s, frame, recs, time.perf_counter() - t0)
    return out


def write(out: Path, args, command: str, s: dict, frame: pd.DataFrame, recs: list[dict], seconds: float) -> None:
    arms = [a for a in s["strategies"] if a in set(frame.arm)]
    t = table(frame, arms)
    t.to_csv(out / "table.csv", index=False)
    plotted = plot(t, arms, out / "paired_diff.png")
    ft = s["finetune"]
    n_val = common.load_data(transfer.base_experiment({**s, "finetune": dataclasses.replace(ft, image_size=16)})).info["val"]
    rec_lines = [f"- {r['image_size']} px, {r['per_class']}/class: **{r['strategy']}** {r['params']} on "
                 f"{len(r['layers'])} layer(s) ({', '.join(f'`{x}`' for x in r['layers'][:6])}"
                 f"{', ...' if len(r['layers']) > 6 else ''})" for r in recs]
    lines = [
        "# Study 4: where does re-initialisation help?", "",
        f"Command: `{command}`. {common.scale_note(args, seconds)} {len(frame)} runs.",
        f"`{s['backbone']}` (pretrained, fresh head) on `{s['data']}` limited to {s['data_limit']} images, "
        f"{1 - s['val_fraction']:.0%}/{s['val_fraction']:.0%} train/val split (split seed {common.SPLIT_SEED}); the "
        f"val split ({n_val} images) is the same in every cell and every run is evaluated once, at the end, on all of "
        f"it. Train: the first N images per class of the train split in a seeded order (nested: a smaller N is a subset of a larger one). "
        f"{ft.steps} steps, batch {ft.batch_size}, {ft.optimizer} lr {ft.lr:g} (momentum {ft.momentum}, wd "
        f"{ft.weight_decay:g}), warm-up {ft.warmup_steps} + cosine to 0, no augmentation; seeds {s['seeds']}.",
        "", "## Final val accuracy: baseline, and each strategy's paired difference to it", "",
        "Difference = arm - baseline of the same seed (same head init, data, batch order), mean ± standard error over "
        "seeds, in points. **(+)** / **(-)**: beyond 2 SE. No other mark means the difference is within noise.", "",
        markdown(t, arms), "",
        "Strategies act on the layers `Diagnosis.recommend` picked for that cell (on its N-per-class train split):", "",
        *rec_lines, "",
        "Per-seed values: `runs.csv`; this table: `table.csv`.", "",
        "![paired differences](paired_diff.png)" if plotted else "(No PNG: matplotlib is not installed.)",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
