"""Tracker sinks: the run's event stream mirrored into other trackers (``metrics.jsonl`` stays the source).

``tensorboard`` (default) writes event files into the run folder, so ``tensorboard --logdir runs/`` shows every
run; ``mlflow`` (``pip install plasticity-lab[mlflow]``) logs params and metrics to ``$MLFLOW_TRACKING_URI``.
A sink receives every event dict (``type``, ``step``, ...) and is closed when the run ends.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from plasticity_core.registry import Registry
from plasticity_core.runs.spec import MissingExtraError
from plasticity_core.train.events import FINAL

# event type -> {field: scalar tag}; the tags a reader finds in TensorBoard / MLflow
SCALARS = {"step": {"loss": "train/loss", "lr": "train/lr"}, "eval": {"val_acc": "val/acc", "val_loss": "val/loss"}}


class Sink(Protocol):
    def write(self, event: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class SinkInfo:
    name: str
    doc: str
    module: str  # the import it needs
    extra: str | None  # the pip extra that provides it (None: a core dependency)
    open: Callable[[Path, Any], Sink]  # (run folder, single-run ExperimentConfig) -> sink

    def check(self) -> None:
        """One-line error naming the extra when the tracker's package is missing."""
        if importlib.util.find_spec(self.module) is None:
            what = f"'plasticity-lab[{self.extra}]'" if self.extra else self.module
            raise MissingExtraError(f"the {self.name} sink needs {self.module}: pip install {what}")


SINKS: Registry[SinkInfo] = Registry("tracker sink")


def _scalars(event: dict[str, Any]):
    for key, tag in SCALARS.get(event.get("type"), {}).items():
        value = event.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and event.get("step") is not None:
            yield tag, float(value), int(event["step"])


class TensorBoardSink:
    def __init__(self, folder: Path, config: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), flush_secs=5)
        self.writer.add_text("config", "```\n" + config.to_yaml() + "\n```", 0)

    def write(self, event: dict[str, Any]) -> None:
        for tag, value, step in _scalars(event):
            self.writer.add_scalar(tag, value, step)
        if event.get("type") == "eval":
            self.writer.flush()  # a live `tensorboard --logdir` sees each eval point as it lands

    def close(self) -> None:
        self.writer.close()


class MLflowSink:
    def __init__(self, folder: Path, config: Any) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(folder.parent.name)
        self.active = mlflow.start_run(run_name=folder.name)
        mlflow.set_tag("run_folder", str(folder.resolve()))
        flat = {f"finetune.{k}": v for k, v in config.finetune.to_dict().items()}
        flat.update(backbone=config.backbone, data=config.data, arm=next(iter(config.arms)), seed=config.seeds[0])
        mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})

    def write(self, event: dict[str, Any]) -> None:
        for tag, value, step in _scalars(event):
            self.mlflow.log_metric(tag.replace("/", "_"), value, step=step)
        if event.get("type") in FINAL:
            self.mlflow.set_tag("status", event["type"])

    def close(self) -> None:
        self.mlflow.end_run()


SINKS.add(SinkInfo("tensorboard", "TensorBoard event files in the run folder (train/loss, train/lr, val/acc, val/loss)",
                   "tensorboard", None, TensorBoardSink))
SINKS.add(SinkInfo("mlflow", "MLflow run per run folder: params, train/val metrics, final status", "mlflow", "mlflow",
                   MLflowSink))
