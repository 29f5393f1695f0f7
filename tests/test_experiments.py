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
    _png(out / "curves.png")


@pytest.mark.assets
def test_transfer_quick(tmp_path):
    import transfer

    out = transfer.main(["--quick", "--out", str(tmp_path)])
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
    _png(out / "curves.png")


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


def test_verdict_calls_noise_and_sign():
    t = pd.DataFrame([{"arm": "b", "n": 3, "final_mean": 0.70, "final_std": 0.01},
                      {"arm": "up", "n": 3, "final_mean": 0.80, "final_std": 0.01},
                      {"arm": "down", "n": 3, "final_mean": 0.60, "final_std": 0.01},
                      {"arm": "same", "n": 3, "final_mean": 0.705, "final_std": 0.01}])
    assert "same sign" in common.verdict(t, "up", "b", 1, "p")
    assert "OPPOSITE" in common.verdict(t, "down", "b", 1, "p")
    assert "within noise" in common.verdict(t, "same", "b", 1, "p")


def test_own_runner_matches_the_run_store_path(tmp_path):
    """The warm-start study runs phase 2 with ``common.run_experiment`` (``runs.py`` cannot load a ``file:`` backbone
    without ``arch``); on an experiment both can run it must give bit-identical accuracies to the dashboard's path.
    ``runs.execute_run`` normalises with the backbone's statistics (test_resnet: mean = std = 0.5), so the data is
    given that way."""
    from plasticity_core.config import ExperimentConfig, FinetuneConfig, ReinitConfig

    exp = ExperimentConfig(name="eq", backbone="timm:test_resnet", pretrained=False,
                           data="synthetic:classes=4,n=96,size=32", finetune=FinetuneConfig(
                               steps=4, batch_size=16, lr=0.05, warmup_steps=1, image_size=32, eval_every=2, device="cpu"),
                           arms={"baseline": None, "fire": ReinitConfig(strategy="fire", layers=["layer*"])}, seeds=[0, 1])
    data = common.pc.load_dataset(exp.data, image_size=32, seed=common.SPLIT_SEED, mean=(0.5,) * 3, std=(0.5,) * 3)
    mine = {(r.arm, r.seed): r.curve for r in common.run_experiment(exp, data=data, log=lambda _: None)}
    store = {(r.arm, r.seed): r.curve for r in common.run_with_store(exp, tmp_path, log=lambda _: None)}
    assert mine.keys() == store.keys() == {(a, s) for a in ("baseline", "fire") for s in (0, 1)}
    for key in mine:
        assert [tuple(p) for p in store[key]] == [tuple(p) for p in mine[key]]
    assert mine[("fire", 0)] != mine[("baseline", 0)]  # the arms really differ
