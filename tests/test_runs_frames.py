"""Run frames: incremental tables of a run's events, TensorBoard smoothing, snapshot matrices, run table, setup diff."""
import json
import math

import numpy as np
import pandas as pd
import pytest

import plasticity_core as pc
from plasticity_core.runs import frames


def _append(path, *events):
    with open(path, "a") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")


def test_ema_is_tensorboards_debiased_average():
    # last = last*w + (1-w)*v; smoothed = last / (1 - w**n): 1, 1.25/0.75, 2.125/0.875
    np.testing.assert_allclose(frames.ema([1.0, 2.0, 3.0], 0.5), [1.0, 1.25 / 0.75, 2.125 / 0.875])
    np.testing.assert_allclose(frames.ema([4.0, 5.0], 0.0), [4.0, 5.0])
    out = frames.ema([1.0, math.nan, 3.0], 0.5)  # a non-finite value passes through and does not enter the average
    assert math.isnan(out[1]) and out[2] == pytest.approx((0.25 + 1.5) / 0.75)
    assert frames.ema([7.0] * 5, 0.9) == pytest.approx([7.0] * 5)  # debiased: a constant stays constant from step 1
    with pytest.raises(ValueError, match="smoothing weight"):
        frames.ema([1.0], 1.0)


def test_run_frames_read_only_new_events_and_follow_a_resume(tmp_path):
    log = tmp_path / "metrics.jsonl"
    _append(log, {"type": "start", "step": 0, "time": 10.0},
            {"type": "reinit", "step": 0, "time": 10.5, "resolved_layers": ["layer3.0.conv1"]},
            {"type": "eval", "step": 0, "time": 11.0, "val_acc": 0.25, "val_loss": 1.4},
            {"type": "step", "step": 1, "time": 12.0, "loss": 1.3, "lr": 0.01, "images_per_s": 50.0})
    f = frames.RunFrames(tmp_path)
    assert f.poll() and f.reinit_layers == ["layer3.0.conv1"]
    s = f.scalars()
    assert set(s["metric"]) == {"val_acc", "val_loss", "loss", "lr", "images_per_s"}
    assert s.loc[s["metric"] == "loss", "time"].item() == pytest.approx(2.0)  # seconds since the first event
    assert f.series("val_acc")[["step", "value"]].values.tolist() == [[0.0, 0.25]]
    assert not f.poll() and f.scalars() is s  # nothing new: the same cached table, no re-parse
    _append(log, {"type": "diagnosis", "step": 2, "time": 13.0,
                  "rows": [{"layer": "b", "metric": "dormant", "value": 0.1}, {"layer": "a", "metric": "dormant", "value": 0.2}]})
    _append(log, {"type": "step", "step": 2, "time": 13.5, "loss": 1.1})
    with open(log, "a") as fh:
        fh.write('{"type": "step", "step": 3, "time": 14.0, "lo')  # a half-written line: left for the next poll
    assert f.poll()
    assert sorted(f.scalars().loc[f.scalars()["metric"] == "loss", "step"]) == [1.0, 2.0]
    assert list(f.snapshots()["layer"]) == ["b", "a"]
    with open(log, "a") as fh:
        fh.write('ss": 0.9}\n')
    assert f.poll() and f.scalars().loc[f.scalars()["metric"] == "loss", "value"].tolist() == [1.3, 1.1, 0.9]
    assert f.series("loss")["value"].tolist() == [1.3, 1.1, 0.9]  # the per-metric cache follows new values
    _append(log, {"type": "resume", "step": 1, "time": 0.0}, {"type": "step", "step": 2, "time": 1.0, "loss": 1.0})
    f.poll()  # the interrupted attempt's steps beyond 1 are dropped, and its snapshot at step 2
    assert f.scalars().loc[f.scalars()["metric"] == "loss", "value"].tolist() == [1.3, 1.0]
    assert f.snapshots().empty


def test_frame_cache_polls_each_run_once_and_keeps_its_frames(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _append(tmp_path / name / "metrics.jsonl", {"type": "eval", "step": 0, "time": 0.0, "val_acc": 0.5})
    cache = frames.FrameCache()
    first = cache.poll([tmp_path / "a", tmp_path / "b"])
    again = cache.poll([tmp_path / "a", tmp_path / "b"])
    assert [id(x) for x in first] == [id(x) for x in again] and all(len(x.scalars()) == 1 for x in again)


def test_curve_points_smooth_per_run_and_the_band_spans_the_seeds():
    def scal(values):
        return pd.DataFrame({"step": range(len(values)), "time": [float(i) for i in range(len(values))], "value": values})
    pts = frames.curve_points([("base", 0, scal([1.0, 2.0, 3.0]), "finished"), ("base", 1, scal([3.0, 2.0, 1.0]), "running"),
                               ("base", 2, scal([9.0, 9.0]), "failed")], 0.5)
    np.testing.assert_allclose(pts[pts["seed"] == 0]["smoothed"], frames.ema([1.0, 2.0, 3.0], 0.5))
    band = frames.mean_band(pts)
    assert band["n_seeds"].tolist() == [2, 2, 2] and band["raw_mean"].tolist() == [2.0, 2.0, 2.0]
    assert (band["min"] <= band["mean"]).all() and (band["mean"] <= band["max"]).all()
    assert set(pts["status"]) == {"finished", "running", "failed"}  # the failed run is plotted, apart from the mean
    assert frames.curve_points([("base", 0, scal([]), "running")]).empty


def test_snapshot_matrix_and_difference_to_the_baseline():
    def snaps(values):
        return pd.DataFrame([(s, layer, "dormant", v) for (s, layer), v in values.items()], columns=frames.SNAPSHOT_COLUMNS)
    arm = frames.snapshot_matrix(snaps({(10, "l2"): 0.5, (10, "l1"): 0.1, (20, "l2"): 0.2, (20, "l1"): 0.0}), "dormant")
    assert list(arm.index) == ["l2", "l1"] and list(arm.columns) == [10, 20]  # network order as recorded
    base = frames.snapshot_matrix(snaps({(10, "l1"): 0.3, (10, "l2"): 0.5, (20, "l1"): 0.4}), "dormant")
    delta = frames.snapshot_delta(arm, base)
    assert delta.loc["l1"].tolist() == pytest.approx([-0.2, -0.4]) and delta.loc["l2", 10] == 0.0
    assert math.isnan(delta.loc["l2", 20])  # the baseline has no l2 at step 20
    assert frames.snapshot_matrix(snaps({(10, "l1"): 0.3}), "dead").empty


def _experiment(**over):
    fire = pc.ReinitConfig(strategy="fire", layers=["layer4.*"])
    base = dict(name="e", backbone="timm:test_resnet", pretrained=False, data="synthetic:classes=4,n=40,size=32",
                finetune=pc.FinetuneConfig(steps=5, lr=0.01), arms={"baseline": None, "fire": fire}, seeds=[0, 1])
    return pc.ExperimentConfig(**(base | over))


def test_run_table_lists_every_run_and_only_the_fields_that_differ(tmp_path):
    store = pc.RunStore(tmp_path)
    store.create(_experiment())
    runs = store.runs()
    table = frames.run_table(runs)
    assert len(table) == 4 and sorted(zip(table["arm"], table["seed"])) == [("baseline", 0), ("baseline", 1),
                                                                          ("fire", 0), ("fire", 1)]
    extra = list(table.columns[9:])
    assert "arm.strategy" in extra and "arm.layers" in extra  # what the arms ran with
    assert not any(c.startswith(("finetune.", "backbone", "data")) for c in extra)  # the same in every run
    assert set(table["arm.strategy"]) == {"none", "fire"} and set(table["status"]) == {"queued"}


def test_setup_differences_name_each_field_or_nothing():
    assert frames.setup_differences(_experiment(), _experiment(name="other", seeds=[3], arms={"baseline": None})) == []
    why = frames.setup_differences(_experiment(), _experiment(finetune=pc.FinetuneConfig(steps=5, lr=0.02),
                                                              data_limit=20))
    assert why == ["data_limit:  vs 20", "finetune.lr: 0.01 vs 0.02"]


def test_a_plain_loop_tracked_through_the_run_contract_shows_its_snapshots_and_curves(tmp_path):
    import timm
    import torch

    data = pc.load_dataset("synthetic:classes=4,n=64,size=32", image_size=32, seed=0)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    fire = pc.ReinitConfig(strategy="fire", layers=["layer4.*"])
    with pc.track(tmp_path, "own-loop", model=model, reinit=fire, data=data.val, total_steps=4, diagnose_every=2,
                  diagnose_metrics=["dormant", "sfe_rel"]) as run:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        for step, (x, y) in enumerate(data.loader("train", batch_size=16), start=1):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log(step, loss=loss)
            if step == 4:
                break
    f = frames.FrameCache().poll([run.path])[0]
    assert f.run.arm == "fire" and f.reinit_layers and all(n.startswith("layer4.") for n in f.reinit_layers)
    assert f.series("loss")["step"].tolist() == [1.0, 2.0, 3.0, 4.0]
    m = frames.snapshot_matrix(f.snapshots(), "sfe_rel")
    assert list(m.columns) == [2.0, 4.0] and len(m) > 0
    assert (m.loc[[n for n in m.index if n.startswith("layer4.")]] > 0).all().all()  # moved from the pretrained weights
