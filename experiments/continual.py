"""Continual backprop at CPU scale: online permuted MNIST (Dohare et al., Nature 2024, ``lop/permuted_mnist``).

An MLP (784 - width x depth ReLU - 10) learns a sequence of tasks; each task is the same MNIST images under a new
fixed permutation of the 784 pixels (an abrupt switch, no augmentation). Every arm of a seed sees the same
permutations, the same images in the same order and starts from the same weights, and differs only by the
strategy, each applied through the library (``pc.apply_reinit``):

- ``sgd``: plain SGD, nothing else (the paper's baseline, which loses plasticity);
- ``cbp``: continual backprop, ``apply_reinit`` arms it and the loop calls ``report.step_callback`` after every
  optimizer step (replacement rate 1e-4, maturity 100, decay 0.99: the paper's permuted-MNIST settings);
- ``shrink_perturb``: ``theta <- lam*theta + N(0, sigma^2)`` once at every task switch (Ash & Adams' one-shot form;
  the paper applies L2 + noise at every step instead);
- ``redo``: ReDo's recycling of tau-dormant units (tau 0.025), scored on the new task's images at every switch.

Measured per task: the online accuracy (each batch is scored before the update on it, averaged over the task: the
paper's per-task accuracy) and, every ``--diag-every`` tasks, ``pc.diagnose``'s dead fraction (nonzero on < 1 % of
1,000 images of the current task) and ReDo-dormant fraction per hidden layer; the network-level figure is dead units
/ all hidden units (for an MLP per-position and pooled counting coincide: docs/methods.md, Metrics: dead).

    python experiments/continual.py           # 3 seeds x 4 arms x 150 tasks (the committed results)
    python experiments/continual.py --quick   # smoke test of the whole path
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import plasticity_core as pc  # noqa: E402

STUDY = "continual"
ARMS = ("sgd", "cbp", "shrink_perturb", "redo")
CBP = {"replacement_rate": 1e-4, "maturity": 100, "decay": 0.99}
SHRINK = {"form": "shrink", "lam": 0.8, "sigma": 0.01}
REDO = {"tau": 0.025}


def mlp(width: int, depth: int, seed: int) -> nn.Sequential:
    """784 -> width (x depth, ReLU) -> 10, PyTorch's default init drawn from ``seed``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = 784
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, 10))
    return nn.Sequential(*layers)


def mnist(limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled MNIST images (5,000) as flat 784-vectors scaled to [0, 1], and their labels."""
    data = pc.load_dataset("bundled:mnist-5k", image_size=28, val_fraction=0.0001, seed=0, limit=limit)
    xs, ys = [], []
    for ds in (data.train, data.val):
        for i in range(len(ds)):
            x, y = ds[i]
            xs.append(x[0].flatten())
            ys.append(int(y))
    x = torch.stack(xs)
    x = (x - x.min()) / (x.max() - x.min())
    return x, torch.tensor(ys)


def hidden_names(model: nn.Sequential) -> list[str]:
    return [str(i) for i, m in enumerate(model) if isinstance(m, nn.Linear)][:-1]


def run_arm(arm: str, seed: int, x: torch.Tensor, y: torch.Tensor, a: argparse.Namespace) -> list[dict]:
    """One arm of one seed over all tasks; one row per task."""
    model = mlp(a.width, a.depth, seed)
    layers = hidden_names(model)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr)
    cb = None
    if arm == "cbp":
        cb = pc.apply_reinit(model, pc.ReinitConfig(strategy="cbp", layers=layers, params=CBP, seed=seed),
                             optimizer=opt).step_callback
    gen = torch.Generator().manual_seed(1000 + seed)  # permutations and batch order: the same for every arm
    rows, step = [], 0
    for task in range(a.tasks):
        perm = torch.randperm(784, generator=gen)
        order = torch.cat([torch.randperm(len(x), generator=gen) for _ in range(a.epochs)])
        xt = x[:, perm]
        probe = torch.utils.data.TensorDataset(xt[:1000], y[:1000])
        replaced = 0
        if task > 0 and arm in ("shrink_perturb", "redo"):
            cfg = pc.ReinitConfig(strategy=arm, layers=layers, params=SHRINK if arm == "shrink_perturb" else REDO,
                                  seed=seed * 100_000 + task)
            rep = pc.apply_reinit(model, cfg, data=probe if arm == "redo" else None, optimizer=opt)
            replaced = int(rep.table["units_touched"].sum()) if arm == "redo" else 0
        model.train()
        correct, seen, loss_sum = 0, 0, 0.0
        for i in range(0, len(order) - a.batch_size + 1, a.batch_size):
            idx = order[i:i + a.batch_size]
            out = model(xt[idx])
            loss = F.cross_entropy(out, y[idx])
            correct += int((out.argmax(1) == y[idx]).sum())
            seen += len(idx)
            loss_sum += float(loss) * len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if cb is not None:
                replaced += int(cb(model, opt, step) or 0)
        row = {"arm": arm, "seed": seed, "task": task, "online_acc": correct / seen, "loss": loss_sum / seen,
               "replaced": replaced}
        if task % a.diag_every == 0 or task == a.tasks - 1:
            d = pc.diagnose(model, probe, metrics=["dead", "dormant"], max_batches=1000 // 32 + 1)
            w = d.wide()
            units = np.array([model[int(n)].out_features for n in layers], float)
            row["dead"] = float((w.loc[layers, "dead"].to_numpy() * units).sum() / units.sum())
            row["dormant"] = float((w.loc[layers, "dormant"].to_numpy() * units).sum() / units.sum())
            row["dead_per_layer"] = [round(float(v), 4) for v in w.loc[layers, "dead"]]
        rows.append(row)
    if cb is not None:
        cb.close()
    return rows


def table(df: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """Per arm: online accuracy over the first and last tasks (mean over seeds, ± std of seed means), the change,
    the final dead / dormant fraction and units replaced per task."""
    n = df["task"].max() + 1
    rows = []
    for arm in dict.fromkeys(df["arm"]):
        a = df[df["arm"] == arm]
        per_seed_first = a[a["task"] < first].groupby("seed")["online_acc"].mean()
        per_seed_last = a[a["task"] >= n - last].groupby("seed")["online_acc"].mean()
        drop = per_seed_last - per_seed_first
        end = a[a["task"] == n - 1]
        rows.append({"arm": arm, "seeds": len(per_seed_first),
                     f"acc tasks 1-{first} (%)": _pm(per_seed_first * 100),
                     f"acc last {last} tasks (%)": _pm(per_seed_last * 100),
                     "change (points)": _pm(drop * 100, sign=True),
                     "dead at end (%)": _pm(end["dead"] * 100), "dormant at end (%)": _pm(end["dormant"] * 100),
                     "units replaced / task": f"{a['replaced'].mean():.2f}"})
    return pd.DataFrame(rows).set_index("arm")


def _pm(s: pd.Series, sign: bool = False) -> str:
    m = float(s.mean())
    sd = float(s.std(ddof=1)) if len(s) > 1 else math.nan
    f = "+.1f" if sign else ".1f"
    return f"{m:{f}}" if math.isnan(sd) else f"{m:{f}} ± {sd:.1f}"


def plot(df: pd.DataFrame, path: Path, smooth: int) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for arm in dict.fromkeys(df["arm"]):
        a = df[df["arm"] == arm]
        acc = a.groupby("task")["online_acc"].mean().rolling(smooth, min_periods=1).mean() * 100
        line, = ax1.plot(acc.index + 1, acc.to_numpy(), label=arm, lw=1.6)
        dead = a.dropna(subset=["dead"]).groupby("task")["dead"].mean() * 100
        ax2.plot(dead.index + 1, dead.to_numpy(), label=arm, lw=1.6, color=line.get_color(), marker=".")
    ax1.set(xlabel="task", ylabel=f"online accuracy (%, mean of seeds, {smooth}-task mean)",
            title="permuted MNIST: accuracy per task")
    ax2.set(xlabel="task", ylabel="dead hidden units (%)", title="dead units (nonzero on < 1 % of inputs)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test (3 tasks of 200 images; numbers mean nothing)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--tasks", type=int, default=150)
    p.add_argument("--width", type=int, default=100)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.03, help="SGD step (paper: 0.01 on 60,000 images per task; 5,000 here)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1, help="passes over the images per task")
    p.add_argument("--images", type=int, default=0, help="MNIST images per task (0: all 5,000)")
    p.add_argument("--diag-every", type=int, default=10)
    a = p.parse_args(argv)
    if a.quick:
        a.tasks, a.images, a.diag_every, a.seeds = 3, 200, 1, a.seeds[:1]
    out = common.out_dir(a, STUDY)
    t0, c0 = time.time(), time.process_time()
    x, y = mnist(a.images or None)
    rows = []
    for seed in a.seeds:
        for arm in a.arms:
            c = time.process_time()
            rows += run_arm(arm, seed, x, y, a)
            print(f"  {arm:>15s} seed {seed}: last-task acc {rows[-1]['online_acc']:.3f}, dead {rows[-1]['dead']:.3f} "
                  f"({time.process_time() - c:.0f} CPU s)", flush=True)
    df = pd.DataFrame(rows)
    with open(out / "tasks.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    first = max(1, min(10, a.tasks // 10))
    t = table(df, first, first)
    plotted = plot(df, out / "continual.png", smooth=max(1, a.tasks // 30))
    cmd = "python experiments/continual.py " + " ".join(shlex.quote(s) for s in (argv if argv is not None else sys.argv[1:]))
    md = [f"# Continual backprop at CPU scale: online permuted MNIST\n", f"Command: `{cmd.strip()}`\n",
          f"{'--quick (smoke test: numbers mean nothing). ' if a.quick else ''}MLP 784-{'-'.join([str(a.width)] * a.depth)}-10 "
          f"(ReLU), SGD lr {a.lr}, batch {a.batch_size}, {a.tasks} tasks of {len(x)} bundled MNIST images x {a.epochs} "
          f"pass(es) under a new pixel permutation each; seeds {a.seeds}. {time.process_time() - c0:.0f} CPU s "
          f"({(time.time() - t0) / 60:.1f} min wall, one thread).\n",
          f"Online accuracy = each batch scored before its update, mean over the task (Dohare et al.'s per-task "
          f"accuracy). Dead = hidden units nonzero on < 1 % of 1,000 images of the current task, all hidden layers "
          f"together, after the last task. ± = std over seeds.\n",
          common.frame_markdown(t), ""]
    if plotted:
        md.append("![accuracy and dead units per task](continual.png)\n")
    (out / "results.md").write_text("\n".join(md))
    print((out / "results.md").read_text())
    return out


if __name__ == "__main__":
    main()
