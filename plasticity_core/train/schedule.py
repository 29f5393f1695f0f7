"""The learning-rate schedule (warm-up then cosine or constant) and the optimizer with its parameter groups."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from plasticity_core.config import FinetuneConfig


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """LR multiplier at 0-based ``step``: linear warm-up to 1 over ``warmup`` steps, then cosine to 0 (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """Backbone and head parameters with their own LR scale; no weight decay on biases and norm parameters."""
    from plasticity_core.layers import layer_map

    heads = [layer.module_name for layer in layer_map(model) if layer.head]
    head_ids = {id(p) for name in heads for p in model.get_submodule(name).parameters()}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault(("head" if id(p) in head_ids else "backbone", p.ndim > 1), []).append(p)
    scale = {"head": cfg.head_lr_scale, "backbone": cfg.backbone_lr_scale}
    return [dict(params=ps, name=f"{part}{'' if decay else '_no_decay'}", base_lr=cfg.lr * scale[part],
                 lr=cfg.lr * scale[part], weight_decay=cfg.weight_decay if decay else 0.0)
            for (part, decay), ps in sorted(groups.items())]


def make_optimizer(groups: list[dict[str, Any]], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)
