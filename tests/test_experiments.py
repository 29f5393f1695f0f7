"""The studies in experiments/: their --quick mode runs the whole real path, and the shared statistics are right.

The quick runs use the offline assets (animal silhouettes, MobileNetV2 weights), hence the ``assets`` marker.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import common  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _runs(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "runs.jsonl").read_text().splitlines()]


def _check_runs(runs: list[dict], arms: set[str], seeds: set[int]) -> None:
    assert {(r["arm"], r["seed"]) for r in runs} >= {(a, s) for a in arms for s in seeds}
    for r in runs:
        assert r["status"] == "finished"
        assert 0.0 <= r["final_acc"] <= 1.0 and r["final_acc"] <= r["best_acc"] <= 1.0
        steps = [s for s, _ in r["curve"]]
        assert steps == sorted(steps) and steps[-1] > 0
        assert max(a for _, a in r["curve"]) == pytest.approx(r["best_acc"])


def _png(path: Path) -> None:
    pytest.importorskip("matplotlib")
    assert path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.assets
def test_warm_start_quick(tmp_path):
    import warm_start

    out = warm_start.main(["--quick", "--out", str(tmp_path)])
    runs = _runs(out)
    _check_runs(runs, {"warm", "fire_ns", "fire_svd", "shrink_perturb", "fresh", "phase1"}, {0})
    by_arm = {r["arm"]: r for r in runs}
    assert by_arm["warm"]["reinit"] is None and by_arm["fresh"]["reinit"] is None
    for arm in ("fire_ns", "fire_svd", "shrink_perturb"):  # every conv and linear layer, head included
        assert by_arm[arm]["reinit"]["layers"] > 0 and by_arm[arm]["reinit"]["sfe"] > 0
    text = (out / "results.md").read_text()
    for arm in ("warm", "fire_ns", "fire_svd", "shrink_perturb", "fresh"):
        assert f"| {arm} | 1 |" in text
    assert "fresh vs warm" in text
    for name in ("phase1", "phase2", "fresh"):
        assert (out / f"config-{name}.yaml").exists()
    # both phases are run folders; phase 2 starts from the weights the phase-1 run of its seed saved
    from plasticity_core.runs import Run

    p1, warm = Run(by_arm["phase1"]["folder"]), Run(by_arm["warm"]["folder"])
    assert p1.config.finetune.checkpoint == "final" and p1.config.train_per_class == 2  # 10 % of the 24 train images per class
    assert p1.events("start")[0]["batches_per_epoch"] == 1  # 20 images, batch 16
    assert warm.config.backbone == f"file:{p1.path / 'model.safetensors'}" and warm.config.arch == "timm:test_resnet"
    assert (p1.path / "model.safetensors").is_file()
    _png(out / "curves.png")


@pytest.mark.assets
def test_transfer_quick(tmp_path):
    import transfer

    out = transfer.main(["--quick", "--out", str(tmp_path), "--per-class", "8", "--eval-batches", "1"])
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["layers"] and rec["strategy"] in {"fire", "reset", "redo", "targeted"}
    runs = _runs(out)
    arms = {r["arm"] for r in runs}
    assert "baseline" in arms and f"{rec['strategy']} (recommended)" in arms and {"fire", "reset", "shrink_perturb"} <= arms
    _check_runs(runs, arms, {0})
    for r in runs:  # the after-fine-tuning diagnosis is a set of fractions per arm
        assert 0.0 <= r["extra"]["all_saturation"] <= 1.0 and 0.0 <= r["extra"]["all_dormant"] <= 1.0
    fire = next(r for r in runs if r["arm"] == "fire")
    assert fire["reinit"]["layers"] == len(rec["layers"])  # fire touches exactly the recommended layers here
    after = pd.read_csv(out / "diagnosis_after.csv", index_col=0)
    assert set(after.index) == arms
    assert (out / "diagnosis_pretrained.parquet").exists()
    from plasticity_core.runs import Run

    run = Run(fire["folder"])  # the low-data flags reach every run's config and data
    assert run.config.train_per_class == 8 and run.config.finetune.eval_batches == 1
    assert run.events("start")[0]["batches_per_epoch"] == 80 // 16
    assert "--per-class 8" in (out / "results.md").read_text()
    _png(out / "curves.png")


@pytest.mark.assets
def test_where_it_helps_quick(tmp_path):
    import where_it_helps

    out = where_it_helps.main(["--quick", "--out", str(tmp_path)])
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 and set(runs.arm) == {"baseline", "fire"} and set(runs.per_class) == {3}
    piv = runs.pivot(index="seed", columns="arm", values="final_acc")
    diff = piv["fire"] - piv["baseline"]  # paired by seed, computed here independently
    row = pd.read_csv(out / "table.csv").iloc[0]
    assert row["fire_diff"] == pytest.approx(diff.mean())
    assert row["fire_se"] == pytest.approx(diff.std(ddof=1) / math.sqrt(2))
    assert row["baseline_mean"] == pytest.approx(piv["baseline"].mean())
    assert "| 32 | 3 | 2 |" in (out / "results.md").read_text()
    _png(out / "paired_diff.png")


@pytest.mark.assets
def test_diagnosis_shift_quick(tmp_path):
    import diagnosis_shift

    out = diagnosis_shift.main(["--quick", "--out", str(tmp_path)])
    means = pd.read_csv(out / "by_dataset.csv", index_col=0)
    assert list(means.index) == ["synthetic gratings", "mnist-5k", "animal silhouettes"]
    assert ((means[["dormant", "dead", "saturation"]] >= 0) & (means[["dormant", "dead", "saturation"]] <= 1)).all().all()
    after = pd.read_csv(out / "after_reinit.csv", index_col=0)
    assert after.at["pretrained", "sel_sfe_rel"] == pytest.approx(0.0, abs=1e-12)
    # FIRE makes every selected tap an exact isometry up to scale (svd) -> scale-invariant DfI ~ 0 on those layers
    assert after.at["fire (svd)", "sel_dfi_si"] == pytest.approx(0.0, abs=1e-3)
    assert after.at["reset", "sel_sfe_rel"] > after.at["shrink_perturb", "sel_sfe_rel"] > 0
    _png(out / "saturation_per_layer.png")


def _run(arm: str, seed: int, curve: list[tuple[int, float]]) -> common.Run:
    accs = [a for _, a in curve]
    return common.Run(arm=arm, seed=seed, status="finished", final_acc=accs[-1], best_acc=max(accs), curve=curve,
                      wall_s=1.0)


def test_summarise_by_hand():
    runs = [_run("base", 0, [(10, 0.5), (20, 0.8)]), _run("base", 1, [(10, 0.6), (20, 0.6)]),
            _run("x", 0, [(10, 0.7), (20, 0.9)]), _run("x", 1, [(10, 0.4), (20, 0.5)])]
    t = common.summarise(runs, "base").set_index("arm")
    threshold = 0.9 * (0.8 + 0.6) / 2  # 0.63: 90 % of the baseline's mean best
    assert t.attrs["threshold"] == pytest.approx(threshold)
    assert t.at["base", "final_mean"] == pytest.approx(0.7) and t.at["base", "final_std"] == pytest.approx(math.sqrt(0.02))
    assert t.at["base", "per_seed_steps"] == [20, None]  # seed 1 never reaches 0.63
    assert t.at["x", "per_seed_steps"] == [10, None] and t.at["x", "steps_to_reach"] == 10 and t.at["x", "reached"] == "1/2"
    d, se = common.effect(t.reset_index(), "x", "base")
    assert d == pytest.approx(0.0) and se == pytest.approx(math.sqrt(0.02 / 2 + 0.08 / 2))


def test_paired_difference_by_hand():
    runs = [_run("base", 0, [(5, 0.50)]), _run("base", 1, [(5, 0.70)]), _run("base", 2, [(5, 0.60)]),
            _run("x", 0, [(5, 0.55)]), _run("x", 1, [(5, 0.70)]), _run("x", 2, [(5, 0.70)])]
    d, se, diffs = common.paired(runs, "x", "base")
    assert diffs == pytest.approx([0.05, 0.0, 0.10]) and d == pytest.approx(0.05)
    assert se == pytest.approx(0.05 / math.sqrt(3))  # sample std of (0.05, 0, 0.1) is 0.05
    assert "| x | +5.0 ± 2.9 | +5.0, +0.0, +10.0 | no |" in common.paired_markdown(runs, "base")


def test_scale_flags_override_the_mode():
    from plasticity_core.config import FinetuneConfig

    args = common.parser("t", scale=True, per_class=True).parse_args(
        ["--image-size", "224", "--steps", "200", "--batch-size", "64", "--lr", "0.02", "--data-limit", "0",
         "--per-class", "5", "--eval-batches", "4", "--device", "cpu", "--seeds", "3", "4"])
    s = common.apply_scale({"data_limit": 2000, "seeds": [0], "finetune": FinetuneConfig(diagnose_every=150)}, args)
    ft = s["finetune"]
    assert (ft.image_size, ft.steps, ft.batch_size, ft.lr, ft.device) == (224, 200, 64, 0.02, "cpu")
    assert (ft.warmup_steps, ft.eval_every, ft.eval_batches, ft.diagnose_every) == (20, 20, 4, 200)
    assert s["data_limit"] is None and s["train_per_class"] == 5 and s["seeds"] == [3, 4]


def test_the_readmes_study_commands_parse():
    """Every ``python experiments/<study>.py ...`` line of the two READMEs is accepted by that study's parser."""
    import importlib
    import re
    import shlex

    root = Path(__file__).resolve().parents[1]
    seen = set()
    for doc in (root / "README.md", root / "experiments" / "README.md"):
        text = doc.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            m = re.search(r"python experiments/(\w+)\.py([^`#]*)", line)
            if not m or "${" in line:
                continue
            mod = importlib.import_module(m.group(1))
            argv = shlex.split(m.group(2))
            (mod.cli(argv) if hasattr(mod, "cli") else common.parser("t").parse_args(argv))
            seen.add(m.group(1))
    assert {"warm_start", "transfer", "where_it_helps", "diagnosis_shift"} <= seen


def test_verdict_calls_noise_and_sign():
    t = pd.DataFrame([{"arm": "b", "n": 3, "final_mean": 0.70, "final_std": 0.01},
                      {"arm": "up", "n": 3, "final_mean": 0.80, "final_std": 0.01},
                      {"arm": "down", "n": 3, "final_mean": 0.60, "final_std": 0.01},
                      {"arm": "same", "n": 3, "final_mean": 0.705, "final_std": 0.01}])
    assert "same sign" in common.verdict(t, "up", "b", 1, "p")
    assert "OPPOSITE" in common.verdict(t, "down", "b", 1, "p")
    assert "within noise" in common.verdict(t, "same", "b", 1, "p")
