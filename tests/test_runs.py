"""Run folders, experiments, background runs and comparisons."""
from __future__ import annotations

import json
import math
import os
import socket
import time

import pandas as pd
import pytest

from plasticity_core.config import ExperimentConfig, FinetuneConfig, ReinitConfig
from plasticity_core.runs import (Run, RunHandle, RunStore, compare_runs, expand_experiment, read_events, run_experiment,
                                  start_run)

DATA = "synthetic:classes=4,n=256,size=32"


def _exp(steps: int = 6, seeds=(0, 1), backbone: str = "timm:test_resnet", **ft) -> ExperimentConfig:
    ft = FinetuneConfig(**{**dict(steps=steps, batch_size=32, lr=0.05, warmup_steps=2, eval_every=3, image_size=32,
                                  device="cpu"), **ft})
    return ExperimentConfig(name="t", backbone=backbone, pretrained=False, data=DATA, finetune=ft,
                            arms={"baseline": None, "fire": ReinitConfig(strategy="fire", layers=["layer*"])},
                            seeds=list(seeds))


def test_expansion_gives_one_single_run_config_per_arm_and_seed():
    singles = expand_experiment(_exp(seeds=(3, 4)))
    assert [(next(iter(s.arms)), s.seeds, s.finetune.seed) for s in singles] == [
        ("baseline", [3], 3), ("baseline", [4], 4), ("fire", [3], 3), ("fire", [4], 4)]
    assert singles[3].arms["fire"].seed == 4 and singles[3].arms["fire"].strategy == "fire"


def test_truncated_metrics_jsonl_and_missing_summary_load(tmp_path):
    run = RunStore(tmp_path).create(_exp(seeds=(0,)), tag="x")[0]
    (run.path / "summary.json").unlink()
    good = [{"type": "step", "step": i, "time": 0.1 * i, "loss": 1.0 / i} for i in range(1, 4)]
    text = "".join(json.dumps(e) + "\n" for e in good) + '{"type": "eval", "step": 3, "val_a'
    (run.path / "metrics.jsonl").write_text(text)
    assert read_events(run.path / "metrics.jsonl") == good
    # no summary but events: it ran, so it reads running (failed once its log and heartbeat go stale), never queued
    assert run.status == "running" and len(run.curve("step")) == 3 and run.events("eval") == []
    (run.path / "summary.json").write_text('{"status": "runn')  # half-written summary
    assert run.status == "running" and "summary.json is missing or unreadable" in run.summary()["reason"]
    old = time.time() - 3600
    os.utime(run.path / "metrics.jsonl", (old, old))
    assert run.status == "failed"  # nobody wrote for an hour: the worker is gone


def test_running_summary_without_a_fresh_heartbeat_reads_failed(tmp_path):
    run = RunStore(tmp_path).create(_exp(seeds=(0,)), tag="x")[0]
    now = time.time()
    running = {"status": "running", "pid": 12345, "host": "elsewhere", "heartbeat_timeout_s": 2.0, "started_at": now - 10}
    (run.path / "summary.json").write_text(json.dumps(running))
    (run.path / "heartbeat.json").write_text(json.dumps({"host": "elsewhere", "pid": 12345, "time": now - 5, "step": 7}))
    s = run.summary()  # another host's worker: no PID can be checked, the heartbeat says it is gone
    assert s["status"] == "failed" and s["stale"] and "elsewhere pid 12345" in s["reason"] and "last step 7" in s["reason"]
    (run.path / "heartbeat.json").write_text(json.dumps({"host": "elsewhere", "pid": 12345, "time": time.time()}))
    assert run.status == "running"


def test_experiment_2_arms_x_2_seeds_gives_4_folders_and_a_comparison(tmp_path):
    seen = []
    runs = run_experiment(_exp(), RunStore(tmp_path), on_event=lambda r, e: seen.append((r.name, e["type"])), tag="a")
    assert sorted(p.name for p in (tmp_path / "t-a").iterdir() if p.is_dir()) == [
        "baseline-seed0", "baseline-seed1", "fire-seed0", "fire-seed1"]
    for r in runs:
        s = r.summary()
        assert s["status"] == "finished" and s["steps"] == 6 and {"arm", "seed", "wall_time_s", "best_val_acc"} <= set(s)
        assert [e["step"] for e in r.events("eval")] == [0, 3, 6]  # step 0: after the re-init, before any update
    assert ("fire-seed1", "reinit") in seen and ("baseline-seed0", "reinit") not in seen
    table = compare_runs(RunStore(tmp_path).runs("t-a"))
    assert list(table["arm"]) == ["baseline", "fire"] and list(table["n_seeds"]) == [2, 2]
    base = [r for r in runs if r.arm == "baseline"]
    best = [max(e["val_acc"] for e in r.events("eval")) for r in base]
    assert table.loc[0, "best_acc_mean"] == pytest.approx(sum(best) / 2)
    assert table.loc[0, "best_acc_std"] == pytest.approx(abs(best[0] - best[1]) / math.sqrt(2))


def test_config_yaml_repeats_the_run_exactly(tmp_path):
    first = run_experiment(_exp(seeds=(1,), diagnose_every=3, diagnose_metrics=["dormant"]), tmp_path, tag="a")[1]
    snaps = pd.read_parquet(first.path / "diagnosis.parquet")  # the fire arm's diagnosis snapshots
    assert sorted(set(snaps["step"])) == [3, 6] and set(snaps["metric"]) == {"dormant"}
    again = run_experiment(first.path / "config.yaml", tmp_path, tag="b")[0]
    assert again.name == first.name == "fire-seed1"
    strip = lambda run: [(e["type"], e["step"], e.get("loss"), e.get("val_acc")) for e in run.events()]  # noqa: E731
    assert strip(again) == strip(first)


def _fake_run(store_root, arm: str, seed: int, accs: list[float], status: str = "finished", wall: float = 10.0) -> Run:
    reinit = None if arm == "baseline" else ReinitConfig(strategy="fire")
    cfg = ExperimentConfig(name="f", data=DATA, arms={arm: reinit}, seeds=[seed])
    run = RunStore(store_root).create(cfg, tag=f"{arm}{seed}")[0]
    events = [{"type": "eval", "step": 10 * (i + 1), "time": i, "val_acc": a, "val_loss": 1.0} for i, a in enumerate(accs)]
    (run.path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run.path / "summary.json").write_text(json.dumps({"status": status, "wall_time_s": wall}))
    return run


def test_compare_runs_against_hand_computed_values(tmp_path):
    runs = [_fake_run(tmp_path, "baseline", 0, [0.5, 0.8, 0.7]), _fake_run(tmp_path, "baseline", 1, [0.6, 0.9, 1.0], wall=20),
            _fake_run(tmp_path, "fire", 0, [0.85, 0.9, 0.95]), _fake_run(tmp_path, "fire", 1, [0.3, 0.6, 0.82]),
            _fake_run(tmp_path, "slow", 0, [0.1, 0.2, 0.3]), _fake_run(tmp_path, "slow", 1, [], status="failed")]
    t = compare_runs(runs).set_index("arm")
    target = 0.9 * (0.8 + 1.0) / 2  # 0.81: 90 % of the baseline's mean best accuracy
    assert t.loc["baseline", "target_acc"] == pytest.approx(target)
    assert t.loc["baseline", "final_acc_mean"] == pytest.approx(0.85)
    assert t.loc["baseline", "final_acc_std"] == pytest.approx(math.sqrt(((0.7 - 0.85) ** 2 + (1.0 - 0.85) ** 2) / 1))
    assert t.loc["baseline", "steps_to_target_mean"] == pytest.approx(20.0)  # 20 in seed 1; seed 0 never reaches 0.81
    assert t.loc["baseline", "reached_target"] == "1/2" and t.loc["baseline", "wall_time_s_mean"] == pytest.approx(15.0)
    assert t.loc["fire", "steps_to_target_mean"] == pytest.approx((10 + 30) / 2) and t.loc["fire", "reached_target"] == "2/2"
    assert t.loc["slow", "steps_to_target"] == "never" and math.isnan(t.loc["slow", "steps_to_target_mean"])
    assert t.loc["slow", "n_seeds"] == 1 and t.loc["slow", "n_failed"] == 1 and "(1 seed)" in t.loc["slow", "final_acc"]
    with pytest.raises(KeyError, match="nope"):
        compare_runs(runs, baseline="nope")


def test_background_run_streams_events_and_stops(tmp_path):
    cfg = _exp(steps=100_000, seeds=(0,), eval_every=5)
    cfg.arms = {"baseline": None}
    handle = start_run(cfg, RunStore(tmp_path), tag="bg")
    run = handle.runs[0]
    try:
        deadline = time.monotonic() + 120
        while not run.events("eval") and time.monotonic() < deadline:
            assert run.status in ("queued", "running"), run.summary()
            time.sleep(0.2)
        assert run.events("eval") and run.status == "running"  # streamed while the worker is still running
        again = RunHandle.attach(run.path)  # e.g. after a browser refresh
        assert again.pid == handle.pid and again.statuses() == {"baseline-seed0": "running"}
        statuses = again.stop(timeout=60)
    finally:
        if handle.alive():
            handle.stop(timeout=1)
    s = run.summary()
    assert statuses == {"baseline-seed0": "stopped"} and "stop requested" in s["reason"]
    assert 0 < s["steps"] < 100_000 and s["host"] == socket.gethostname() and s["pid"] != os.getpid()
    assert run.events()[-1]["type"] == "stopped"


def test_crashed_background_run_leaves_failed_with_traceback(tmp_path):
    cfg = _exp(seeds=(0,), backbone="timm:no_such_model_xyz")
    cfg.arms = {"baseline": None}
    handle = start_run(cfg, tmp_path, tag="crash")
    assert handle.wait(timeout=120)
    s = handle.runs[0].summary()
    assert s["status"] == "failed" and "no_such_model_xyz" in s["reason"]
    assert not s["reason"].startswith("BackboneError"), s["reason"]  # an expected failure reads as its one-line message
    assert "Traceback" in (handle.runs[0].path / "error.txt").read_text()


def test_unreadable_config_yaml_leaves_a_failed_folder(tmp_path):
    from plasticity_core.runs import execute_run

    run = RunStore(tmp_path).create(_exp(seeds=(0,)), tag="bad")[0]
    (run.path / "config.yaml").write_text("finetune: {steps: -1}\n")
    s = execute_run(run)
    assert s["status"] == "failed" and "steps" in s["reason"] and run.status == "failed"
    assert "Traceback" in (run.path / "error.txt").read_text()


@pytest.mark.assets
def test_real_pretrained_backbone_on_real_images_beats_chance(tmp_path):
    from plasticity_core import assets

    try:
        assets.asset_path("mobilenet_v2"), assets.asset_path("animal_images")
    except assets.AssetMissingError as e:
        pytest.skip(str(e))
    ft = FinetuneConfig(steps=20, batch_size=64, lr=0.02, warmup_steps=4, eval_every=20, image_size=48, device="cpu")
    cfg = ExperimentConfig(name="real", backbone="bundled:mobilenetv2_100", data="bundled:animal-silhouettes",
                           data_limit=800, finetune=ft, arms={"baseline": None}, seeds=[0])
    (run,) = run_experiment(cfg, tmp_path, tag="a")
    s = run.summary()
    assert s["status"] == "finished" and s["final_val_acc"] > 0.3  # 10 classes: chance is 0.1


def test_data_is_normalised_with_the_backbones_statistics(tmp_path, monkeypatch):
    import plasticity_core.setup as setup_mod  # the one loader every entry point goes through (load_setup)

    seen = []
    real = setup_mod.load_dataset

    def spy(*args, **kwargs):
        bundle = real(*args, **kwargs)
        seen.append((bundle.mean, bundle.std))
        return bundle

    monkeypatch.setattr(setup_mod, "load_dataset", spy)
    cfg = _exp(steps=2, seeds=(0,))  # timm's test_resnet expects mean = std = 0.5, not ImageNet's statistics
    cfg.arms = {"baseline": None}
    from plasticity_core.runs import execute_run

    (run,) = RunStore(tmp_path).create(cfg, tag="n")
    assert execute_run(run)["status"] == "finished" and run.status == "finished"  # in this process: the spy sees it
    assert tuple(seen[-1][0]) == pytest.approx((0.5,) * 3) and tuple(seen[-1][1]) == pytest.approx((0.5,) * 3)


def test_a_checkpoint_file_backbone_runs_with_its_arch(tmp_path):
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("test_resnet", num_classes=4).state_dict(), tmp_path / "ckpt.safetensors")
    exp = ExperimentConfig(name="ckpt", backbone=f"file:{tmp_path / 'ckpt.safetensors'}", arch="timm:test_resnet",
                           data="synthetic:classes=4,n=64,size=32",
                           finetune=FinetuneConfig(steps=2, eval_every=2, image_size=32, batch_size=16))
    (run,) = run_experiment(exp, RunStore(tmp_path / "runs"))
    assert run.status == "finished" and run.config.arch == "timm:test_resnet"


def test_low_data_run_saves_weights_that_load_back_as_a_file_backbone(tmp_path):
    """``train_per_class`` reaches the run's data; ``checkpoint="final"`` leaves weights in the run folder
    that a ``file:`` run continues from."""
    import dataclasses

    import torch

    from plasticity_core.data import load_dataset
    from plasticity_core.finetune import evaluate
    from plasticity_core.models import load_backbone

    exp = dataclasses.replace(_exp(steps=4, seeds=(0,), checkpoint="final"), arms={"baseline": None}, train_per_class=6)
    (run,) = run_experiment(exp, tmp_path / "runs", tag="p1")
    assert run.status == "finished" and run.events("start")[0]["batches_per_epoch"] == 1  # 24 images, batch 32
    weights = run.path / "model.safetensors"
    data = load_dataset(DATA, image_size=32, seed=0, train_per_class=6, mean=(0.5,) * 3, std=(0.5,) * 3)
    bb = load_backbone(f"file:{weights}", arch="timm:test_resnet", num_classes=4)
    acc, _ = evaluate(bb.model, data, exp.finetune, torch.device("cpu"))
    assert acc == pytest.approx(run.summary()["final_val_acc"])  # the saved weights are the trained model
    nxt = dataclasses.replace(exp, backbone=f"file:{weights}", arch="timm:test_resnet", pretrained=True,
                              train_per_class=None, finetune=dataclasses.replace(exp.finetune, checkpoint="none"))
    (cont,) = run_experiment(nxt, tmp_path / "runs", tag="p2")
    assert cont.status == "finished" and not (cont.path / "model.safetensors").exists()


def test_compare_skips_a_corrupt_folder_and_names_it(tmp_path, capsys):
    from plasticity_core.cli import main

    runs = [_fake_run(tmp_path, "baseline", 0, [0.5, 0.8]), _fake_run(tmp_path, "fire", 0, [0.6, 0.9]),
            _fake_run(tmp_path, "fire", 1, [0.7, 0.7])]
    (runs[2].path / "config.yaml").write_text("arms: [not, a, mapping\n")  # a half-written or damaged config
    t = compare_runs(runs)
    assert list(t["arm"]) == ["baseline", "fire"] and list(t["n_seeds"]) == [1, 1]
    assert list(t.attrs["skipped"]) == [str(runs[2].path)] and "ConfigError" in t.attrs["skipped"][str(runs[2].path)]
    assert main(["compare", "--store", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "baseline" in captured.out and f"skipped {runs[2].path}: ConfigError" in captured.err
