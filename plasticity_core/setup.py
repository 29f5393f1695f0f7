"""One way to load what a run, a diagnosis or the dashboard works on: the backbone and the data, in one fixed order.

``load_setup`` is used by the run worker (``load_setup(cfg)`` of a run's config), the CLI, the dashboard and the
experiments, so the same inputs give the same model and the same split everywhere:

1. the backbone's weights, loaded once (with ``pretrained=False`` its random init drawn from ``head_seed``);
2. the data, split with ``split_seed`` and normalised with the backbone's mean / std;
3. a fresh classifier head for the data's classes, drawn from ``head_seed`` (``models.load_backbone(seed=)``: the
   head's own init on a seeded CPU generator), only when the backbone's head does not fit the data.
"""
from __future__ import annotations

import os
import torch

from plasticity_core.config import ExperimentConfig
from plasticity_core.data import DataBundle, load_dataset
from plasticity_core.models import Backbone, load_backbone


def load_setup(backbone: str | os.PathLike | Backbone | ExperimentConfig, data: str | DataBundle | None = None, *,
               pretrained: bool = True, arch: str | None = None, image_size: int = 64, val_fraction: float = 0.2,
               split_seed: int = 0, limit: int | None = None, train_per_class: int | None = None, head_seed: int = 0,
               device: str | torch.device | None = None, fresh_head: bool = True) -> tuple[Backbone, DataBundle]:
    """``(backbone, data)`` in the fixed order above.

    ``backbone``: a spec (``timm:NAME``, ``file:PATH``, ...), an already loaded ``Backbone`` (used as is, e.g. the
    dashboard's cached weights; give ``fresh_copy`` semantics yourself if it is shared), or a single-run
    ``ExperimentConfig`` (its backbone, data, split and ``finetune.seed`` as the head seed: what its run sees).
    ``data``: a spec or a loaded ``DataBundle``. ``fresh_head=False`` keeps the backbone's head whatever the classes.
    """
    if isinstance(backbone, ExperimentConfig):
        cfg = backbone
        return load_setup(cfg.backbone, cfg.data, pretrained=cfg.pretrained, arch=cfg.arch,
                          image_size=cfg.finetune.image_size, val_fraction=cfg.val_fraction, split_seed=0,
                          limit=cfg.data_limit, train_per_class=cfg.train_per_class, head_seed=cfg.finetune.seed,
                          device=device, fresh_head=fresh_head)
    if data is None:
        raise TypeError("load_setup needs data (a spec or a DataBundle) besides a backbone spec")
    bb = backbone if isinstance(backbone, Backbone) else load_backbone(backbone, pretrained=pretrained, arch=arch,
                                                                       seed=head_seed)
    if not isinstance(data, DataBundle):
        data = load_dataset(data, image_size=image_size, val_fraction=val_fraction, seed=split_seed, limit=limit,
                            data_config=bb.data_config, train_per_class=train_per_class)
    if fresh_head and bb.num_classes != data.num_classes:
        bb = with_head(bb, data.num_classes, head_seed)
    if device is not None:
        bb.model.to(device)
    return bb, data


def with_head(bb: Backbone, num_classes: int, seed: int, device: str | torch.device | None = None,
              copy: bool = False) -> Backbone:
    """``bb`` with a fresh ``num_classes``-class head drawn from ``seed`` (its reference includes that head).

    ``copy=True`` works on a copy of the reference weights (``fresh_copy``) and leaves ``bb`` as it was (a backbone
    shared between sessions); otherwise the head of ``bb.model`` itself is replaced.
    """
    model = bb.fresh_copy() if copy else bb.model
    out = load_backbone(model, num_classes=num_classes, device=device, seed=int(seed))
    out.name, out.source, out.data_config, out.pretrained = bb.name, bb.source, bb.data_config, bb.pretrained
    return out
