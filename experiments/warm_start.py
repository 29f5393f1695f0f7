"""Study 1, the warm-start gap (Ash & Adams 2020; FIRE Fig. 2a protocol) at CPU scale.

Phase 1: a randomly initialised ResNet-18 is trained on 10 % of the train split (a stratified subset, so
it overfits). Phase 2: the phase-1 checkpoint is loaded as a ``file:`` backbone and trained on the whole
train split, with one intervention applied at the boundary: none (warm start), FIRE (released Newton-Schulz,
and the exact SVD polar factor), shrink & perturb (FIRE's interpolation towards a fresh init, 0.8). The
"fresh" arm trains the same architecture from a fresh init on the whole split. Both phases use the same
step budget, Adam(W) without weight decay, LR warm-up + cosine to zero, gradient clipping 0.5 and no
augmentation, as in FIRE's warm-start script; the intervention touches every conv and linear layer,
the classifier included, as FIRE's code does.

    python experiments/warm_start.py            # full CPU scale (see experiments/README.md for the time)
    python experiments/warm_start.py --quick    # smoke test of the whole path
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from plasticity_core.config import ExperimentConfig, FinetuneConfig  # noqa: E402
from plasticity_core.data import DataBundle  # noqa: E402

STUDY = "warm_start"
BASELINE = "warm"
PAPER = {  # arm: (expected sign vs warm start, what the papers report)
    "fresh": (1, "fresh init beats warm start: FIRE Fig. 2a C10/ResNet-18 ≈84.7 vs ≈78; Ash & Adams C10 Adam 78.0 vs 74.4"),
    "fire_ns": (1, "FIRE ≈83 vs ≈78 (C10/ResNet-18, Fig. 2a)"),
    "fire_svd": (1, "no paper number for the exact polar factor; expected ≈ FIRE"),
    "shrink_perturb": (1, "S&P(0.8) ≈80 vs ≈78 (Fig. 2a)"),
}


def settings(quick: bool) -> dict:
    """Model, data and step budget of one mode (the full mode is sized for <= ~10 min on 2 free CPU cores)."""
    if quick:
        return dict(backbone="timm:test_resnet", data="bundled:animal-silhouettes", data_limit=300, seeds=[0],
                    finetune=FinetuneConfig(steps=6, batch_size=16, optimizer="adamw", lr=1e-3, weight_decay=0.0,
                                            warmup_steps=1, grad_clip=0.5, image_size=32, eval_every=3, device="auto"))
    return dict(backbone="timm:resnet18", data="bundled:animal-silhouettes", data_limit=5000, seeds=[0, 1, 2],
                finetune=FinetuneConfig(steps=300, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=0.0,
                                        warmup_steps=30, grad_clip=0.5, image_size=32, eval_every=25, device="auto"))


def phase1_subset(data: DataBundle, fraction: float, seed: int) -> DataBundle:
    """The same val split, and a stratified ``fraction`` of the train split to train phase 1 on."""
    labels = np.asarray(data.train.dataset.labels)[np.asarray(data.train.indices)]
    rng = np.random.default_rng(seed)
    picked = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:max(1, round(fraction * (labels == c).sum()))]
                                     for c in np.unique(labels)]))
    return DataBundle(name=f"{data.name} (phase 1: {fraction:.0%} of train)", train=Subset(data.train, picked.tolist()),
                      val=data.val, classes=data.classes, image_size=data.image_size, mean=data.mean, std=data.std,
                      info=dict(data.info, train=len(picked)))


def experiments(s: dict, ckpt: dict[int, Path]) -> tuple[ExperimentConfig, list[ExperimentConfig], ExperimentConfig]:
    """Phase-1 config, one phase-2 config per seed (its own checkpoint), and the fresh-init config."""
    common_kw = dict(data=s["data"], data_limit=s["data_limit"], finetune=s["finetune"])
    phase1 = ExperimentConfig(name="phase1", backbone=s["backbone"], pretrained=False, arms={"phase1": None},
                              seeds=s["seeds"], **common_kw)
    every = ["*"]
    arms = {BASELINE: None,
            "fire_ns": common.reinit_arm("fire", every, include_head=True, method="newton_schulz"),
            "fire_svd": common.reinit_arm("fire", every, include_head=True, method="svd"),
            "shrink_perturb": common.reinit_arm("shrink_perturb", every, include_head=True, form="interpolate", alpha=0.8)}
    phase2 = [ExperimentConfig(name="phase2", backbone=f"file:{ckpt[seed]}", arch=s["backbone"], pretrained=True,
                               arms=arms, seeds=[seed], **common_kw) for seed in s["seeds"]]
    fresh = ExperimentConfig(name="fresh", backbone=s["backbone"], pretrained=False, arms={"fresh": None},
                             seeds=s["seeds"], **common_kw)
    return phase1, phase2, fresh


def cli(argv: list[str] | None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", help="dataset spec, e.g. 'torchvision:CIFAR10?root=~/data&download=1'")
    p.add_argument("--backbone", help="timm architecture trained from random init, e.g. timm:resnet18")
    p.add_argument("--data-limit", type=int, help="images kept before the split (0: all)")
    p.add_argument("--steps", type=int, help="steps per phase (warm-up: 10 %%)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int)
    return p.parse_args(argv)


def apply_overrides(s: dict, args) -> dict:
    """Command-line overrides of the mode's settings (the GPU recipe in experiments/README.md uses them)."""
    if args.seeds:
        s["seeds"] = args.seeds
    for key in ("data", "backbone"):
        if getattr(args, key):
            s[key] = getattr(args, key)
    if args.data_limit is not None:
        s["data_limit"] = args.data_limit or None
    ft = {}
    if args.steps:
        ft.update(steps=args.steps, warmup_steps=max(1, args.steps // 10), eval_every=max(1, args.steps // 12))
    if args.batch_size:
        ft["batch_size"] = args.batch_size
    if args.image_size:
        ft["image_size"] = args.image_size
    s["finetune"] = dataclasses.replace(s["finetune"], **ft)
    return s


def main(argv: list[str] | None = None) -> Path:
    args = cli(argv)
    out = common.out_dir(args, STUDY)
    s = apply_overrides(settings(args.quick), args)
    arch = s["backbone"]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = {seed: Path(tmp) / f"phase1-seed{seed}.pt" for seed in s["seeds"]}
        phase1, phase2, fresh = experiments(s, ckpt)
        probe = common.pc.load_backbone(arch, pretrained=False)
        full = common.load_data(phase1, probe.data_config)
        print(f"{STUDY}: {full.info['train']} train / {full.info['val']} val images at {full.image_size} px")
        phase1_runs = []
        for seed in s["seeds"]:
            def save(model: torch.nn.Module, data: DataBundle, arm: str, seed: int) -> dict:
                torch.save(model.state_dict(), ckpt[seed])
                return {}
            one = ExperimentConfig.from_dict({**phase1.to_dict(), "seeds": [seed]})
            phase1_runs += common.run_experiment(one, data=phase1_subset(full, 0.1, seed), after=save)
        runs = []
        for exp in phase2:
            runs += common.run_experiment(exp, data=full)
        runs += common.run_experiment(fresh, data=full)
    write(out, args, runs, phase1_runs, phase1, phase2[0], fresh, time.perf_counter() - t0)
    return out


def write(out: Path, args, runs, phase1_runs, phase1, phase2, fresh, seconds: float) -> None:
    table = common.summarise(runs, BASELINE)
    common.save_runs(runs + phase1_runs, out)
    for exp in (phase1, phase2, fresh):
        exp.save(out / f"config-{exp.name}.yaml")
    plotted = common.plot_curves(runs, out / "curves.png", f"Warm-start gap, phase 2 ({phase1.data}, {phase1.finetune.image_size} px)",
                                 table.attrs["threshold"])
    p1 = common.summarise(phase1_runs, "phase1")
    lines = [
        "# Study 1: warm-start gap", "",
        f"Command: `python experiments/warm_start.py{' --quick' if args.quick else ''}`. {common.scale_note(args, seconds)}",
        f"Backbone `{phase1.backbone}` (random init), `{phase1.data}` limited to {phase1.data_limit} images "
        f"(80/20 train/val split, the same for every seed) at {phase1.finetune.image_size} px; phase 1 on a stratified "
        f"10 % of the train split, phase 2 on all of it, {phase1.finetune.steps} steps each (batch "
        f"{phase1.finetune.batch_size}, AdamW lr {phase1.finetune.lr:g}, no weight decay, warm-up "
        f"{phase1.finetune.warmup_steps} + cosine to 0, grad clip {phase1.finetune.grad_clip}). Seeds {phase1.seeds}.",
        f"Phase 1 val accuracy: {common._pm(p1.at[0, 'final_mean'], p1.at[0, 'final_std'])} %.", "",
        "## Phase 2 (val accuracy after the step budget)", "", common.markdown_table(table), "",
        f"Steps to reach: first eval step with val accuracy >= {common.REACH:.0%} of the warm-start arm's mean best "
        f"({table.attrs['threshold'] * 100:.1f} %).", "", "## Against the papers", "",
        *[common.verdict(table, arm, BASELINE, *PAPER[arm]) for arm in PAPER if arm in set(table["arm"])], "",
        "![curves](curves.png)" if plotted else "(No PNG: matplotlib is not installed.)",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
