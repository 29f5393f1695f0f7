"""Study 1, the warm-start gap (Ash & Adams 2020; FIRE Fig. 2a protocol) at CPU scale.

Phase 1: a randomly initialised ResNet-18 is trained on 10 % of the train split (``train_per_class``: a seeded,
stratified subset, the same for every seed, so it overfits) and its weights are saved in the run folder
(``finetune.checkpoint="final"``). Phase 2: that checkpoint is loaded as a ``file:`` backbone (with ``arch``) and trained on the whole
train split, with one intervention applied at the boundary: none (warm start), FIRE (released Newton-Schulz,
and the exact SVD polar factor), shrink & perturb (FIRE's interpolation towards a fresh init, 0.8). The
"fresh" arm trains the same architecture from a fresh init on the whole split. Both phases use the same
step budget, Adam(W) without weight decay, LR warm-up + cosine to zero, gradient clipping 0.5 and no
augmentation, as in FIRE's warm-start script; the intervention touches every conv and linear layer,
the classifier included, as FIRE's code does. Every run goes through ``plasticity_core.runs.run_experiment``
(run folders under ``OUT/runs``): both phases are plain run configs.

    python experiments/warm_start.py            # full CPU scale (see experiments/README.md for the time)
    python experiments/warm_start.py --quick    # smoke test of the whole path
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from plasticity_core.config import ExperimentConfig, FinetuneConfig  # noqa: E402

STUDY = "warm_start"
BASELINE = "warm"
PHASE1_FRACTION = 0.1
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


def phase1_per_class(exp: ExperimentConfig, fraction: float = PHASE1_FRACTION) -> tuple[int, dict]:
    """Train images per class for phase 1: ``fraction`` of the smallest class of the train split; the split's sizes."""
    info = common.load_data(exp).info
    return max(1, round(fraction * min(info["train_counts"]))), info


def experiments(s: dict, per_class: int) -> tuple[ExperimentConfig, ExperimentConfig, ExperimentConfig]:
    """Phase-1 config, the phase-2 arms (a template: its backbone is set per seed) and the fresh-init config."""
    common_kw = dict(data=s["data"], data_limit=s["data_limit"], val_fraction=s["val_fraction"], finetune=s["finetune"])
    phase1 = ExperimentConfig(name="phase1", backbone=s["backbone"], pretrained=False, arms={"phase1": None},
                              seeds=s["seeds"], train_per_class=per_class,
                              **{**common_kw, "finetune": dataclasses.replace(s["finetune"], checkpoint="final")})
    every = ["*"]
    arms = {BASELINE: None,
            "fire_ns": common.reinit_arm("fire", every, include_head=True, method="newton_schulz"),
            "fire_svd": common.reinit_arm("fire", every, include_head=True, method="svd"),
            "shrink_perturb": common.reinit_arm("shrink_perturb", every, include_head=True, form="interpolate", alpha=0.8)}
    phase2 = ExperimentConfig(name="phase2", backbone="file:PHASE1_RUN/model.safetensors", arch=s["backbone"],
                              pretrained=True, arms=arms, seeds=s["seeds"], **common_kw)
    fresh = ExperimentConfig(name="fresh", backbone=s["backbone"], pretrained=False, arms={"fresh": None},
                             seeds=s["seeds"], **common_kw)
    return phase1, phase2, fresh


def cli(argv: list[str]):
    return common.parser(__doc__.splitlines()[0], scale=True).parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = cli(argv)
    args.command = shlex.join(["python", "experiments/warm_start.py", *argv])
    out = common.out_dir(args, STUDY)
    s = common.apply_scale({"val_fraction": 0.2, **settings(args.quick)}, args)
    t0 = time.perf_counter()
    probe = ExperimentConfig(name="probe", backbone=s["backbone"], pretrained=False, data=s["data"],
                             data_limit=s["data_limit"], val_fraction=s["val_fraction"], finetune=s["finetune"])
    per_class, info = phase1_per_class(probe)
    phase1, phase2, fresh = experiments(s, per_class)
    print(f"{STUDY}: {info['train']} train / {info['val']} val images at {s['finetune'].image_size} px; "
          f"phase 1 on {per_class} per class")
    phase1_runs = common.run(phase1, out)
    runs = []
    for r in phase1_runs:  # phase 2 of a seed starts from that seed's phase-1 weights
        ckpt = Path(r.folder) / "model.safetensors"
        one = ExperimentConfig.from_dict({**phase2.to_dict(), "name": f"phase2-seed{r.seed}",
                                          "backbone": f"file:{ckpt}", "seeds": [r.seed]})
        runs += common.run(one, out)
    runs += common.run(fresh, out)
    write(out, args, runs, phase1_runs, phase1, phase2, fresh, time.perf_counter() - t0)
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
        f"Command: `{args.command}`. {common.scale_note(args, seconds)}",
        f"Backbone `{phase1.backbone}` (random init), `{phase1.data}` limited to {phase1.data_limit} images "
        f"({1 - phase1.val_fraction:.0%}/{phase1.val_fraction:.0%} train/val split, the same for every seed) at "
        f"{phase1.finetune.image_size} px; phase 1 on {phase1.train_per_class} train images per class (a seeded "
        f"stratified {PHASE1_FRACTION:.0%} of the train split, the same for every seed), phase 2 on all of it, {phase1.finetune.steps} steps each (batch "
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
