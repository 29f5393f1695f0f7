"""Executing one run in this process: load backbone and data, fine-tune, write events and the final summary."""
from __future__ import annotations

import json
import os
import socket
import time
import traceback
from typing import Any, Callable, Iterable

import pandas as pd

from plasticity_core.runs.store import Run, _write_json


class _StopFile:
    """``is_set()`` for the training loop: the run's STOP file exists or an in-process flag is set."""

    def __init__(self, run: Run, extra: Any = None) -> None:
        self.run, self.extra = run, extra

    def is_set(self) -> bool:
        return self.run.stop_requested or bool(self.extra is not None and self.extra.is_set())


def execute_run(run: Run, stop: Any = None, on_event: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Load the run's backbone and data, fine-tune, and write events and the summary into its folder.

    Never raises for a failure of the run itself: the folder says ``failed`` with the traceback in ``error.txt``.
    Returns the final summary.
    """
    import torch

    from plasticity_core.data import load_dataset
    from plasticity_core.finetune import finetune
    from plasticity_core.models import load_backbone, save_checkpoint

    base = {"experiment": run.experiment, "pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}
    try:
        base.update(arm=run.arm, seed=run.seed)
    except Exception as e:  # an unreadable config.yaml: say so in the folder instead of dying silently
        tb = traceback.format_exc()
        (run.path / "error.txt").write_text(tb)
        summary = {**base, "status": "failed", "reason": f"config.yaml: {type(e).__name__}: {e}", "traceback": tb}
        _write_json(run.path / "summary.json", summary)
        return summary
    stopper = _StopFile(run, stop)
    if stopper.is_set():
        summary = {**base, "status": "stopped", "reason": "stop requested before the run started", "steps": 0}
        _write_json(run.path / "summary.json", summary)
        return summary
    _write_json(run.path / "summary.json", {**base, "status": "running", "reason": "loading backbone and data"})
    cfg = run.config
    ft = cfg.finetune
    diagnoses: list[dict[str, Any]] = []
    ended = False
    with open(run.path / "metrics.jsonl", "a", buffering=1) as log:
        def write(event: dict[str, Any]) -> None:
            log.write(json.dumps(event, default=str) + "\n")
            log.flush()
            nonlocal ended
            ended = ended or event["type"] in ("finished", "stopped", "failed")
            if event["type"] == "diagnosis":
                diagnoses.extend({"step": event["step"], **row} for row in event.get("rows", []))
            elif event["type"] == "start":
                _write_json(run.path / "summary.json", {**base, "status": "running", "reason": "training",
                                                        "total_steps": event.get("total_steps")})
            if on_event is not None:
                on_event(event)

        try:
            def dataset(data_config: dict | None = None):
                return load_dataset(cfg.data, image_size=ft.image_size, val_fraction=cfg.val_fraction, seed=0,
                                    limit=cfg.data_limit, data_config=data_config, train_per_class=cfg.train_per_class)

            data = dataset()  # ImageNet normalisation until the backbone says otherwise
            torch.manual_seed(ft.seed)  # the fresh head's init depends on the run's seed only, not on the arm
            bb = load_backbone(cfg.backbone, pretrained=cfg.pretrained, num_classes=data.num_classes, arch=cfg.arch)
            if _stats(bb.data_config) != (_floats(data.mean), _floats(data.std)):
                data = dataset(bb.data_config)  # e.g. tf_efficientnet_lite0 expects mean = std = 0.5
            result = finetune(bb.model, data, ft, reinit=cfg.arms[run.arm], on_event=write, stop=stopper)
            summary = {**base, **result.summary()}
            if cfg.save_model and result.status == "finished":
                save_checkpoint(bb.model, run.path / "model.safetensors")
        except BaseException as e:  # noqa: BLE001 - the folder must say failed whatever happened
            tb = traceback.format_exc()
            (run.path / "error.txt").write_text(tb)
            summary = {**base, "status": "failed", "reason": f"{type(e).__name__}: {e}", "traceback": tb}
            if not ended:
                log.write(json.dumps({"type": "failed", "step": None, "time": None, "reason": summary["reason"]}) + "\n")
            if not isinstance(e, Exception):
                _write_json(run.path / "summary.json", {**summary, "ended_at": time.time()})
                raise
    if diagnoses:
        pd.DataFrame(diagnoses).to_parquet(run.path / "diagnosis.parquet")
    summary["ended_at"] = time.time()
    _write_json(run.path / "summary.json", summary)
    return summary


def _floats(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in values)


def _stats(data_config: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from plasticity_core.models import IMAGENET_MEAN, IMAGENET_STD

    return _floats(data_config.get("mean") or IMAGENET_MEAN), _floats(data_config.get("std") or IMAGENET_STD)
