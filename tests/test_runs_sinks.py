"""Tracker sinks: TensorBoard event files in every run folder, read back with TensorBoard's own reader."""
from __future__ import annotations

import pytest

from plasticity_core.config import ExperimentConfig, FinetuneConfig
from plasticity_core.runs import SINKS, MissingExtraError, RunStore, execute_run


def test_tensorboard_reader_reads_the_accuracy_curve_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = ExperimentConfig(name="tb", backbone="timm:test_resnet", pretrained=False, data="synthetic:classes=4,n=96,size=32",
                           finetune=FinetuneConfig(steps=4, batch_size=16, eval_every=2, image_size=32, device="cpu"))
    assert cfg.launch.sinks == ["tensorboard"]  # on by default
    (run,) = RunStore(tmp_path).create(cfg, tag="a")
    assert execute_run(run)["status"] == "finished"
    acc = EventAccumulator(str(run.path))
    acc.Reload()
    assert {"val/acc", "val/loss", "train/loss", "train/lr"} <= set(acc.Tags()["scalars"])
    evals = run.events("eval")
    assert [(e.step, e.value) for e in acc.Scalars("val/acc")] == [
        (ev["step"], pytest.approx(ev["val_acc"], abs=1e-6)) for ev in evals]
    assert [e.step for e in acc.Scalars("train/loss")] == [ev["step"] for ev in run.events("step")]


def test_a_sink_without_its_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'plasticity-lab\[mlflow\]'"):
        SINKS.get("mlflow").check()
