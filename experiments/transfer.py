"""Study 2, transfer to an atypical target (the setting of arXiv 2603.20860) at CPU scale.

The bundled ImageNet MobileNetV2 (real torchvision weights) gets a fresh 10-class head and is fine-tuned on
the animal silhouettes (grayscale 28 px shapes, far from ImageNet photos) at 64 px. First the pretrained
backbone is diagnosed on the target train split and ``Diagnosis.recommend`` picks the layers, exactly as the
dashboard's "recommend" button does; then every arm fine-tunes for the same step budget: plain fine-tuning
(baseline), the recommended strategy, and each other strategy on the same layers. After fine-tuning, each
model is diagnosed again on the val split (study 3 reads those numbers).

    python experiments/transfer.py            # full CPU scale (see experiments/README.md for the time)
    python experiments/transfer.py --quick    # smoke test of the whole path
    python experiments/transfer.py --image-size 224 --data-limit 3000 --steps 200 --batch-size 64 --lr 0.02
                                              # native resolution (the issue's H100 protocol)
    python experiments/transfer.py --per-class 10 --data-limit 3000 --val-fraction 0.5   # low-data mode
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from plasticity_core.config import ExperimentConfig, FinetuneConfig, ReinitConfig  # noqa: E402
from plasticity_core.finetune import resolve_device  # noqa: E402

STUDY = "transfer"
BASELINE = "baseline"
AFTER_METRICS = ["dormant", "dead", "saturation", "dfi_si"]  # snapshot at the last step (FinetuneConfig.diagnose_every)
PAPER_TEXT = ("2603.20860 reports faster transfer after re-initialising saturated weights (abstract only; no "
              "numbers are public); FIRE/ReDo/CBP/S&P were not evaluated in this setting")


def settings(quick: bool) -> dict:
    """Scale of one mode (the full mode is sized for <= ~8 min on 2 free CPU cores)."""
    if quick:
        return dict(data="bundled:animal-silhouettes", backbone="bundled:mobilenetv2_100", val_fraction=0.2,
                    train_per_class=None, data_limit=200, seeds=[0], probe_batches=1, cbp=dict(maturity=2),
                    finetune=FinetuneConfig(steps=4, batch_size=16, optimizer="sgd", lr=0.02, weight_decay=5e-4,
                                            warmup_steps=1, image_size=32, eval_every=2, device="auto",
                                            diagnose_every=4, diagnose_metrics=AFTER_METRICS))
    return dict(data="bundled:animal-silhouettes", backbone="bundled:mobilenetv2_100", val_fraction=0.2,
                train_per_class=None, data_limit=2000, seeds=[0, 1, 2], probe_batches=8, cbp=dict(maturity=20),
                finetune=FinetuneConfig(steps=150, batch_size=32, optimizer="sgd", lr=0.02, weight_decay=5e-4,
                                        warmup_steps=15, image_size=64, eval_every=15, device="auto",
                                        diagnose_every=150, diagnose_metrics=AFTER_METRICS))


def base_experiment(s: dict, name: str = STUDY) -> ExperimentConfig:
    return ExperimentConfig(name=name, backbone=s.get("backbone", "bundled:mobilenetv2_100"), pretrained=True,
                            data=s.get("data", "bundled:animal-silhouettes"), data_limit=s["data_limit"],
                            val_fraction=s.get("val_fraction", 0.2), train_per_class=s.get("train_per_class"),
                            finetune=s["finetune"], arms={BASELINE: None}, seeds=s["seeds"])


def recommend(exp: ExperimentConfig, s: dict, out: Path | None = None):
    """Diagnose the pretrained backbone (seed-0 head) on the target train split (saved under ``out``); advise."""
    bb, data = common.load_setup(exp, head_seed=0)  # the weights loaded once; the seed-0 head
    d = common.pc.diagnose(bb, data.train, max_batches=s["probe_batches"],
                         device=resolve_device(exp.finetune.device))
    if out is not None:
        d.save(out / "diagnosis_pretrained.parquet")
    return d.recommend(), data


def arms(rec, s: dict) -> dict[str, ReinitConfig | None]:
    """Baseline, the recommended strategy, and every other strategy on the recommended layers."""
    layers = list(rec.layers)
    crit = rec.params.get("criterion", "grad")
    candidates = {
        "fire": common.reinit_arm("fire", layers),
        "reset": common.reinit_arm("reset", layers),
        "shrink_perturb": common.reinit_arm("shrink_perturb", layers),
        "redo": common.reinit_arm("redo", layers),
        "targeted": common.reinit_arm("targeted", layers, criterion=crit, fraction=rec.params.get("fraction", 0.1)),
        "cbp": common.reinit_arm("cbp", layers, replacement_rate=1e-3, **s["cbp"]),
    }
    out: dict[str, ReinitConfig | None] = {BASELINE: None}
    recommended = common.reinit_arm(rec.strategy, layers, **rec.params)
    out[f"{rec.strategy} (recommended)"] = recommended
    for name, cfg in candidates.items():
        if not (cfg.strategy == recommended.strategy and cfg.params == recommended.params):
            out[name] = cfg
    return out


def after_means(run: common.Run, layers: list[str]) -> dict[str, float]:
    """Layer means of the run's last diagnosis snapshot (taken by ``finetune`` at the final step)."""
    rows = pd.DataFrame(run.extra.get("last_diagnosis", []), columns=["layer", "metric", "value"])
    out = {}
    for m in AFTER_METRICS:
        col = rows[rows["metric"] == m].set_index("layer")["value"]
        out[f"sel_{m}"] = float(col[col.index.isin(layers)].mean()) if len(col) else float("nan")
        out[f"all_{m}"] = float(col.mean()) if len(col) else float("nan")
    return out


def cli(argv: list[str]):
    return common.parser(__doc__.splitlines()[0], scale=True, per_class=True).parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = cli(argv)
    args.command = shlex.join(["python", "experiments/transfer.py", *argv])
    out = common.out_dir(args, STUDY)
    s = common.apply_scale(settings(args.quick), args)
    t0 = time.perf_counter()
    exp = base_experiment(s)
    rec, data = recommend(exp, s, out)
    print(f"{STUDY}: recommend -> {rec.strategy} {rec.params} on {len(rec.layers)} layers: {rec.reason}")
    exp.arms = arms(rec, s)
    exp.save(out / "config.yaml")
    runs = common.run(exp, out)
    for r in runs:
        r.extra = after_means(r, rec.layers)
    write(out, args, exp, rec, runs, time.perf_counter() - t0, s["probe_batches"], data.num_classes)
    return out


def write(out: Path, args, exp: ExperimentConfig, rec, runs, seconds: float, probe_batches: int,
          num_classes: int) -> None:
    table = common.summarise(runs, BASELINE)
    common.save_runs(runs, out)
    (out / "recommendation.json").write_text(json.dumps(rec.to_dict(), indent=2, default=str))
    after = pd.DataFrame([{"arm": r.arm, "seed": r.seed, **r.extra} for r in runs]).groupby("arm", sort=False).mean(numeric_only=True)
    after = after.drop(columns="seed")
    after.to_csv(out / "diagnosis_after.csv")
    ft = exp.finetune
    plotted = common.plot_curves(runs, out / "curves.png", f"{exp.backbone} -> {exp.data}, {ft.image_size} px"
                                 if not args.quick else "transfer --quick", table.attrs["threshold"])
    per_class = f", {exp.train_per_class} train images per class" if exp.train_per_class else ""
    evals = (f"val accuracy every {ft.eval_every} steps on the whole val split" if ft.eval_batches is None else
             f"val accuracy every {ft.eval_every} steps on the first {ft.eval_batches} val batches, final eval on the "
             "whole val split")
    lines = [
        "# Study 2: transfer to an atypical target", "",
        f"Command: `{args.command}`. {common.scale_note(args, seconds)}",
        f"`{exp.backbone}` (pretrained, fresh {num_classes}-class head) on `{exp.data}` limited to "
        f"{exp.data_limit or 'all'} images ({1 - exp.val_fraction:.0%}/{exp.val_fraction:.0%} train/val split{per_class}) "
        f"at {ft.image_size} px; {ft.steps} steps, batch {ft.batch_size}, {ft.optimizer} (momentum {ft.momentum}) lr "
        f"{ft.lr:g} wd {ft.weight_decay:g}, warm-up {ft.warmup_steps} + cosine to 0; {evals}; seeds {exp.seeds}.",
        "", "## What the diagnosis recommended", "",
        f"`Diagnosis.recommend()` on the pretrained backbone ({probe_batches} probe batches of the target train "
        f"split): **{rec.strategy}** {rec.params} on {len(rec.layers)} layer(s): {', '.join(f'`{l}`' for l in rec.layers)}.",
        f"Reason given: {rec.reason}", "",
        "## Val accuracy after the step budget", "", common.markdown_table(table), "",
        f"Steps to reach: first eval step with val accuracy >= {common.REACH:.0%} of the baseline's mean best "
        f"({table.attrs['threshold'] * 100:.1f} %).", "", "## Against the paper", "",
        *[common.verdict(table, arm, BASELINE, 1, PAPER_TEXT) for arm in table["arm"] if arm != BASELINE], "",
        "Paired by seed (each arm minus the baseline of the same seed: same head init, data and batch order):", "",
        common.paired_markdown(runs, BASELINE), "",
        "## Diagnosis after fine-tuning (mean over the recommended layers `sel_` / all layers `all_`)", "",
        "From the snapshot `finetune` takes at the last step (`diagnose_every`): its probe is the first 2 batches of "
        "the val split (a seeded random, stratified order: all classes appear); the same images for every arm.", "",
        common.frame_markdown(after), "",
        "![curves](curves.png)" if plotted else "(No PNG: matplotlib is not installed.)",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
