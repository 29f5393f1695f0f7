"""One way to load what a run, a diagnosis or the dashboard works on: the backbone and the data, in one fixed order.

``load_setup(cfg)`` is used by the run worker, the CLI, the dashboard and the experiments, so the same config gives
the same model and the same split everywhere: the data first (its classes size the head), then the backbone with a
fresh head drawn from a recorded seed, then the data again normalised with the backbone's statistics when they
differ from ImageNet's.
"""
from __future__ import annotations

from typing import Any, Iterable

from plasticity_core.config import ExperimentConfig
from plasticity_core.data import DataBundle, load_dataset
from plasticity_core.models import IMAGENET_MEAN, IMAGENET_STD, Backbone, load_backbone


def load_setup(cfg: ExperimentConfig) -> tuple[Backbone, DataBundle]:
    """The backbone and data of a (single-run) config, as its run sees them: the data normalised with the
    backbone's statistics, the head's init drawn from the run's seed only (not the arm)."""
    ft = cfg.finetune

    def dataset(data_config: dict | None = None) -> DataBundle:
        return load_dataset(cfg.data, image_size=ft.image_size, val_fraction=cfg.val_fraction, seed=0,
                            limit=cfg.data_limit, data_config=data_config, train_per_class=cfg.train_per_class)

    data = dataset()  # ImageNet normalisation until the backbone says otherwise
    bb = load_backbone(cfg.backbone, pretrained=cfg.pretrained, num_classes=data.num_classes, arch=cfg.arch,
                       seed=ft.seed)  # the fresh head from the run's recorded seed (finetune.seed in config.yaml)
    if _stats(bb.data_config) != (_floats(data.mean), _floats(data.std)):
        data = dataset(bb.data_config)  # e.g. tf_efficientnet_lite0 expects mean = std = 0.5
    return bb, data


def _floats(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in values)


def _stats(data_config: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return _floats(data_config.get("mean") or IMAGENET_MEAN), _floats(data_config.get("std") or IMAGENET_STD)
