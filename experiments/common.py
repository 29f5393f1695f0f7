"""Shared plumbing of the studies: run an ``ExperimentConfig``, summarise the runs, write tables and plots.

Every study builds ``plasticity_core.ExperimentConfig`` objects and runs them with ``run`` here, i.e. through
``plasticity_core.runs.run_experiment``: the same run folders the dashboard and ``plasticity finetune --config`` write.
For a given seed every arm gets the same head init, the same data split and the same batch order, so arms differ
only by the intervention (docs/methods.md, Study protocol). ``paired`` gives the per-seed difference to the baseline,
``scale_flags`` the shared command-line flags that size a study (image size, steps, batch, data, device).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

import plasticity_core as pc
from plasticity_core.config import ExperimentConfig, ReinitConfig
from plasticity_core.data import DataBundle

RESULTS = Path(__file__).resolve().parent / "results"
SPLIT_SEED = 0  # the train/val split is the same for every seed: seeds vary init and batch order only
REACH = 0.9  # convergence measure: first step at which val accuracy reaches 90 % of the baseline's best


@dataclass
class Run:
    """One finished run: arm, seed, its eval curve and final numbers (JSON-ready)."""

    arm: str
    seed: int
    status: str
    final_acc: float
    best_acc: float
    curve: list[tuple[int, float]]  # (step, val accuracy) at every eval
    wall_s: float
    reinit: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    folder: str = ""  # the run folder it was read from

    def steps_to(self, threshold: float) -> int | None:
        return next((s for s, a in self.curve if a >= threshold), None)


def load_data(exp: ExperimentConfig, data_config: dict | None = None) -> DataBundle:
    """The experiment's data exactly as its runs see it: split seed ``SPLIT_SEED``, limit, per-class train subset."""
    return pc.load_dataset(exp.data, image_size=exp.finetune.image_size, val_fraction=exp.val_fraction,
                           seed=SPLIT_SEED, limit=exp.data_limit, data_config=data_config,
                           train_per_class=exp.train_per_class)


def load_setup(exp: ExperimentConfig, head_seed: int = 0) -> tuple[pc.Backbone, DataBundle]:
    """Backbone and data of ``exp`` through the library's one ``load_setup`` (weights once, the data with the
    backbone's statistics, a fresh head from ``head_seed``), with the experiments' split seed."""
    from plasticity_core.setup import load_setup as _load_setup

    return _load_setup(exp.backbone, exp.data, pretrained=exp.pretrained, arch=exp.arch,
                       image_size=exp.finetune.image_size, val_fraction=exp.val_fraction, split_seed=SPLIT_SEED,
                       limit=exp.data_limit, train_per_class=exp.train_per_class, head_seed=head_seed)


def run(exp: ExperimentConfig, out: Path, log: Callable[[str], None] = print) -> list[Run]:
    """Every arm x seed of ``exp`` through ``plasticity_core.runs.run_experiment`` (the dashboard's and the CLI's
    path), run folders under ``out/runs``; returns the runs read back from their folders (``Run.folder``)."""
    from plasticity_core import runs as pc_runs

    folders = pc_runs.run_experiment(exp, store=out / "runs", tag=time.strftime("%Y%m%d-%H%M%S"))
    runs = []
    for f in folders:
        r = read_run(f)
        log(f"  {exp.name} {r.arm:>22s} seed {r.seed}: final {r.final_acc:.3f} best {r.best_acc:.3f} ({r.wall_s:.0f} s)")
        runs.append(r)
    return runs


def read_run(f) -> Run:
    """A finished run folder (``plasticity_core.runs.Run``) as a ``Run``; raises if it did not finish."""
    summary, evals = f.summary(), f.events("eval")
    if summary.get("status") != "finished" or not evals:
        raise RuntimeError(f"run {f.path} ended {summary.get('status')}: {summary.get('reason')}")
    reinit = next((e["summary"] for e in f.events("reinit")), None)
    diag = [e["rows"] for e in f.events("diagnosis")]
    return Run(arm=f.arm, seed=f.seed, status=summary["status"], final_acc=float(evals[-1]["val_acc"]),
               best_acc=max(float(e["val_acc"]) for e in evals), curve=[(e["step"], e["val_acc"]) for e in evals],
               wall_s=float(summary.get("wall_time_s") or math.nan), reinit=reinit,
               extra={"last_diagnosis": diag[-1] if diag else []}, folder=str(f.path))


def paired(runs: list[Run], arm: str, baseline: str) -> tuple[float, float, list[float]]:
    """Per-seed differences of final accuracy (arm - baseline, same seed), their mean and standard error."""
    base = {r.seed: r.final_acc for r in runs if r.arm == baseline}
    diffs = [r.final_acc - base[r.seed] for r in sorted(runs, key=lambda r: r.seed) if r.arm == arm and r.seed in base]
    if not diffs:
        return math.nan, math.nan, []
    d = np.array(diffs)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan, diffs


def paired_markdown(runs: list[Run], baseline: str) -> str:
    """One row per arm: mean paired difference to the baseline ± its SE (points), the per-seed differences, and
    whether it is beyond 2 SE."""
    lines = ["| arm | paired diff vs baseline (points, mean ± SE) | per-seed diffs | beyond 2 SE |", "|---|---|---|---|"]
    for arm in dict.fromkeys(r.arm for r in runs):
        if arm == baseline:
            continue
        d, se, diffs = paired(runs, arm, baseline)
        beyond = "n/a (1 seed)" if math.isnan(se) else ("yes" if abs(d) > 2 * se else "no")
        lines.append(f"| {arm} | {d * 100:+.1f} ± {se * 100:.1f} | {', '.join(f'{x * 100:+.1f}' for x in diffs)} | {beyond} |")
    return "\n".join(lines)


def summarise(runs: list[Run], baseline: str) -> pd.DataFrame:
    """Per arm: n, final and best accuracy mean/std, steps to 90 % of the baseline's best, per-seed values."""
    base_best = np.mean([r.best_acc for r in runs if r.arm == baseline])
    threshold = REACH * base_best
    rows = []
    for arm in dict.fromkeys(r.arm for r in runs):
        rs = sorted((r for r in runs if r.arm == arm), key=lambda r: r.seed)
        final = np.array([r.final_acc for r in rs])
        best = np.array([r.best_acc for r in rs])
        reach = [r.steps_to(threshold) for r in rs]
        hit = [s for s in reach if s is not None]
        rows.append({"arm": arm, "n": len(rs), "final_mean": final.mean(), "final_std": _std(final),
                     "best_mean": best.mean(), "best_std": _std(best),
                     "steps_to_reach": float(np.mean(hit)) if hit else math.nan, "reached": f"{len(hit)}/{len(rs)}",
                     "per_seed_final": [round(float(v), 4) for v in final],
                     "per_seed_steps": reach, "wall_s": float(np.mean([r.wall_s for r in rs])),
                     "touched": _touched(rs[0])})
    table = pd.DataFrame(rows)
    table.attrs["threshold"] = threshold
    return table


def _touched(run: Run) -> str:
    """What the arm's re-init changed before training (units in layers); cbp changes units during training."""
    if run.reinit is None:
        return "-"
    r = run.reinit
    if not r["layers"]:
        return "nothing (all layers skipped)"
    if pc.STRATEGIES.get(r["strategy"]).during_training:
        return f"armed on {r['layers']} layers (replaces units during training)"
    return f"{r['units']} units in {r['layers']} layers"


def _std(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else math.nan


def effect(table: pd.DataFrame, arm: str, baseline: str) -> tuple[float, float]:
    """Difference of final accuracy means (arm - baseline) and its standard error (Welch); NaN SE with 1 seed."""
    a = table.set_index("arm")
    d = a.at[arm, "final_mean"] - a.at[baseline, "final_mean"]
    se = math.sqrt(a.at[arm, "final_std"] ** 2 / a.at[arm, "n"] + a.at[baseline, "final_std"] ** 2 / a.at[baseline, "n"])
    return float(d), se


def verdict(table: pd.DataFrame, arm: str, baseline: str, paper_sign: int, paper_text: str) -> str:
    """One honest sentence: the measured difference, whether it is beyond 2 standard errors, and vs the paper."""
    d, se = effect(table, arm, baseline)
    if math.isnan(se) or se == 0:
        return f"- {arm} vs {baseline}: {d * 100:+.1f} points (one seed: no noise estimate). Paper: {paper_text}."
    if abs(d) < 2 * se:
        call = "within noise (|diff| < 2 SE)"
    elif (d > 0) == (paper_sign > 0):
        call = "same sign as the paper"
    else:
        call = "OPPOSITE sign to the paper"
    return f"- {arm} vs {baseline}: {d * 100:+.1f} ± {se * 100:.1f} points (SE): {call}. Paper: {paper_text}."


def markdown_table(table: pd.DataFrame) -> str:
    """The per-arm table as markdown: mean ± std in points, steps to 90 % of baseline best, per-seed values."""
    lines = ["| arm | n | final acc (%) | best acc (%) | steps to 90 % of baseline best | per-seed final (%) | "
             "per-seed steps | re-init touched | s/run |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        steps = "never" if math.isnan(r.steps_to_reach) else f"{r.steps_to_reach:.0f} ({r.reached})"
        seeds = ", ".join(f"{v * 100:.1f}" for v in r.per_seed_final)
        per_steps = ", ".join("never" if s is None else str(s) for s in r.per_seed_steps)
        lines.append(f"| {r.arm} | {r.n} | {_pm(r.final_mean, r.final_std)} | {_pm(r.best_mean, r.best_std)} | "
                     f"{steps} | {seeds} | {per_steps} | {r.touched} | {r.wall_s:.0f} |")
    return "\n".join(lines)


def _pm(mean: float, std: float) -> str:
    return f"{mean * 100:.1f}" if math.isnan(std) else f"{mean * 100:.1f} ± {std * 100:.1f}"


def save_runs(runs: list[Run], out: Path) -> None:
    """One JSON line per run (curves included), so tables and plots can be redrawn without rerunning."""
    with open(out / "runs.jsonl", "w") as f:
        for r in runs:
            f.write(json.dumps(dataclasses.asdict(r)) + "\n")


def plot_curves(runs: list[Run], path: Path, title: str, threshold: float | None = None) -> bool:
    """Mean val-accuracy curve per arm (band: min..max over seeds) as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for arm in dict.fromkeys(r.arm for r in runs):
        curves = [r.curve for r in runs if r.arm == arm]
        steps = [s for s, _ in curves[0]]
        acc = np.array([[a for _, a in c] for c in curves if len(c) == len(steps)]) * 100
        line, = ax.plot(steps, acc.mean(0), label=arm, lw=1.8)
        ax.fill_between(steps, acc.min(0), acc.max(0), color=line.get_color(), alpha=0.15, lw=0)
    if threshold is not None:
        ax.axhline(threshold * 100, color="grey", ls=":", lw=1, label=f"{REACH:.0%} of baseline best")
    ax.set(xlabel="step", ylabel="val accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_lines(frame: pd.DataFrame, path: Path, title: str, xlabel: str, ylabel: str) -> bool:
    """One line per column over the index (e.g. a metric per layer, one line per probe dataset)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    x = np.arange(len(frame))
    for col in frame.columns:
        ax.plot(x, frame[col].to_numpy(float), marker=".", lw=1.4, label=str(col))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_bars(frame: pd.DataFrame, path: Path, title: str, ylabel: str) -> bool:
    """Grouped bars: rows = x groups, columns = series (e.g. metric x probe dataset); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(frame) * max(1, len(frame.columns)) / 2), 4.2), dpi=110)
    width = 0.8 / max(1, len(frame.columns))
    x = np.arange(len(frame))
    for i, col in enumerate(frame.columns):
        ax.bar(x + (i - (len(frame.columns) - 1) / 2) * width, frame[col].to_numpy(float), width, label=str(col))
    ax.set_xticks(x, [str(i) for i in frame.index], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def parser(description: str, scale: bool = False, per_class: bool = False) -> argparse.ArgumentParser:
    """--quick, --out, --seeds; with ``scale`` the flags that size a study (``apply_scale`` reads them)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smoke test of the whole path in seconds (tiny scale)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default experiments/results/<study>[-quick])")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    if scale:
        p.add_argument("--data", help="dataset spec, e.g. 'torchvision:DTD?root=~/data&download=1'")
        p.add_argument("--backbone", help="backbone spec, e.g. timm:resnet18 or bundled:mobilenetv2_100")
        p.add_argument("--image-size", type=int, help="input side in pixels (native: 224)")
        p.add_argument("--steps", type=int, help="SGD/AdamW steps (warm-up 10 %%, eval every 1/10 of the run)")
        p.add_argument("--batch-size", type=int)
        p.add_argument("--lr", type=float)
        p.add_argument("--data-limit", type=int, help="images kept before the train/val split (0: all)")
        p.add_argument("--val-fraction", type=float, help="fraction of the kept images in the val split")
        p.add_argument("--eval-batches", type=int, help="val batches per eval during training (0: the whole val split)")
        p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    if per_class:
        p.add_argument("--per-class", type=int, help="labelled train images per class (low-data mode; val unchanged)")
    return p


def apply_scale(s: dict, args: argparse.Namespace) -> dict:
    """The mode's settings (``data``, ``backbone``, ``data_limit``, ``val_fraction``, ``train_per_class``, ``seeds``,
    ``finetune``) with the command line's overrides; ``--steps`` also resets warm-up (10 %) and eval spacing."""
    s = dict(s)
    if args.seeds:
        s["seeds"] = args.seeds
    for key in ("data", "backbone", "val_fraction"):
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    if getattr(args, "data_limit", None) is not None:
        s["data_limit"] = args.data_limit or None
    if getattr(args, "per_class", None) is not None:
        s["train_per_class"] = args.per_class
    ft = {}
    if getattr(args, "steps", None):
        ft.update(steps=args.steps, warmup_steps=max(1, args.steps // 10), eval_every=max(1, args.steps // 10))
        if s["finetune"].diagnose_every:
            ft["diagnose_every"] = args.steps
    for key in ("batch_size", "image_size", "lr", "device"):
        if getattr(args, key, None) is not None:
            ft[key] = getattr(args, key)
    if getattr(args, "eval_batches", None) is not None:
        ft["eval_batches"] = args.eval_batches or None
    s["finetune"] = dataclasses.replace(s["finetune"], **ft)
    return s


def out_dir(args: argparse.Namespace, study: str) -> Path:
    out = args.out or RESULTS / (f"{study}-quick" if args.quick else study)
    out.mkdir(parents=True, exist_ok=True)
    return out


def scale_note(args: argparse.Namespace, seconds: float) -> str:
    mode = "--quick (smoke test: numbers mean nothing)" if args.quick else "full"
    return (f"Mode: {mode}. Wall time {seconds / 60:.1f} min with {torch.get_num_threads()} torch thread(s) on "
            f"{'CUDA' if torch.cuda.is_available() else 'CPU'}.")


def layer_means(d, layers: list[str], metrics: list[str] | None = None) -> dict[str, float]:
    """Mean of each metric over ``layers`` (prefix ``sel_``) and over every layer that has it (prefix ``all_``)."""
    wide = d.wide()
    out = {}
    for m in metrics or list(wide.columns):
        col = wide[m].dropna()
        picked = col[col.index.isin(layers)]
        out[f"sel_{m}"] = float(picked.mean()) if len(picked) else math.nan
        out[f"all_{m}"] = float(col.mean()) if len(col) else math.nan
    return out


def frame_markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame (index = first column) as a markdown table, without the optional ``tabulate`` package."""
    cols = [frame.index.name or ""] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in frame.iterrows():
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join([str(idx)] + cells) + " |")
    return "\n".join(lines)


def reinit_arm(strategy: str, layers: list[str], include_head: bool = False, **params: Any) -> ReinitConfig:
    """A validated re-init arm (the seed is set per run by ``run_experiment``)."""
    return ReinitConfig(strategy=strategy, layers=layers, params=params, include_head=include_head)
