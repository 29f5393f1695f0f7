"""compare_runs counts only finished runs: a stopped or failed seed is shown apart, never in a mean or the target."""
import json
import math

import pytest

from plasticity_core.config import ExperimentConfig, ReinitConfig
from plasticity_core.runs import RunStore, compare_runs

DATA = "synthetic:classes=4,n=64,size=32"


def _run(root, arm: str, seed: int, accs: list[float], status: str):
    cfg = ExperimentConfig(name="c", data=DATA, arms={arm: None if arm == "baseline" else ReinitConfig(strategy="fire")},
                           seeds=[seed])
    run = RunStore(root).create(cfg, tag=f"{arm}{seed}")[0]
    events = [{"type": "eval", "step": 10 * (i + 1), "time": i, "val_acc": a, "val_loss": 1.0} for i, a in enumerate(accs)]
    (run.path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run.path / "summary.json").write_text(json.dumps({"status": status, "wall_time_s": 5.0, "reason": status}))
    return run


def test_a_stopped_baseline_seed_stays_out_of_the_means_and_the_target(tmp_path):
    runs = [_run(tmp_path, "baseline", 0, [0.3, 0.5, 0.6], "finished"),
            _run(tmp_path, "baseline", 1, [0.1, 0.2], "stopped"),  # stopped at 20 of 30 steps
            _run(tmp_path, "fire", 0, [0.4, 0.56, 0.7], "finished"),
            _run(tmp_path, "fire", 1, [0.2], "failed")]
    t = compare_runs(runs).set_index("arm")
    assert t.loc["baseline", "n_seeds"] == 1 and t.loc["baseline", "n_stopped"] == 1
    assert t.loc["baseline", "final_acc_mean"] == pytest.approx(0.6) and math.isnan(t.loc["baseline", "final_acc_std"])
    assert t.loc["baseline", "target_acc"] == pytest.approx(0.9 * 0.6)  # the stopped seed's 0.2 is not in it
    assert t.loc["fire", "n_seeds"] == 1 and t.loc["fire", "n_failed"] == 1 and t.loc["fire", "n_stopped"] == 0
    assert t.loc["fire", "steps_to_target_mean"] == pytest.approx(20.0) and t.loc["fire", "reached_target"] == "1/1"


def test_without_a_finished_baseline_there_is_no_target(tmp_path):
    runs = [_run(tmp_path, "baseline", 0, [0.3], "stopped"), _run(tmp_path, "fire", 0, [0.4, 0.7], "finished")]
    t = compare_runs(runs).set_index("arm")
    assert t.loc["baseline", "n_seeds"] == 0 and math.isnan(t.loc["fire", "target_acc"])
    assert t.loc["fire", "steps_to_target"].startswith("n/a")
