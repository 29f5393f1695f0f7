"""A short, recorded linear probe of a fresh classifier head, so gradient metrics measure the backbone.

A fresh head is a random projection: ``dL/dW`` and ``dL/dh`` of every layer below it depend on which random head was
drawn (issue 19: conv_stem grad_norm 0.47-1.73 over head seeds). ``probe_head`` trains only the head for ``steps``
steps on the target data (backbone frozen, BatchNorm in eval mode, Adam, data order from ``seed``), then gradient
metrics and gradient-scored re-inits go through a head that has seen the task. What was done is recorded on the
Backbone (``head_probe``) and from there in the diagnosis meta and the exported config.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from plasticity_core.errors import UserError
from plasticity_core.models import Backbone, _head

PROBE_LR = 0.01


def probe_head(backbone: Backbone, data: Dataset, steps: int, seed: int = 0, batch_size: int = 32,
               lr: float = PROBE_LR) -> dict[str, Any]:
    """Train only ``backbone``'s classifier head for ``steps`` Adam steps on ``data`` (a Dataset of (image, label)),
    in place; the backbone's reference takes the probed head (SFE keeps measuring the backbone's movement only).

    Batches are drawn in the order a ``DataLoader(shuffle=True)`` with a generator seeded by ``seed`` gives (cycled
    when ``steps`` exceeds an epoch). Returns and stores in ``backbone.head_probe`` the record: steps, seed,
    batch size, lr and the train accuracy/loss of the last step. ``steps=0`` does nothing and records nothing.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UserError(f"head probe steps must be an int >= 0, got {steps!r}")
    if steps == 0:
        return {}
    found = _head(backbone.model)
    if found is None:
        raise UserError(f"cannot find the classifier head of {backbone.name} to probe it")
    name, head = found
    model = backbone.model
    device = next(head.parameters()).device
    was_training = {m: m.training for m in model.modules()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    captured: dict[str, torch.Tensor] = {}

    def grab(module: nn.Module, args: tuple) -> None:
        captured["x"] = args[0].detach()

    hook = head.register_forward_pre_hook(grab)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=False,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    last: dict[str, float] = {}
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
        done = 0
        while done < steps:
            for x, y in loader:
                with torch.no_grad():
                    model(x.to(device))
                logits = head(captured["x"]).flatten(1)
                loss = F.cross_entropy(logits, y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
                last = {"loss": float(loss.detach()), "acc": float((logits.argmax(1) == y.to(device)).float().mean())}
                if done >= steps:
                    break
    finally:
        hook.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in was_training.items():
            m.training = mode
    record = {"steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr, "optimizer": "adam",
              "last_loss": last.get("loss"), "last_acc": last.get("acc")}
    reference = dict(backbone.reference)
    for key, value in head.state_dict().items():
        reference[f"{name}.{key}"] = value.detach().clone()
    backbone.reference = MappingProxyType(reference)
    backbone.head_probe = record
    return record
