"""``apply_reinit`` / ``preview_reinit`` and the two helpers every strategy relies on.

Order of one call: validate the config, resolve layers, run the strategy on the selected layers, zero the
optimizer state of what it touched, recalibrate BatchNorm statistics on target data (docs/methods.md, Safeguards),
and report per layer what changed.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Iterator

import pandas as pd
import torch
from torch import nn

from plasticity_core.config import ReinitConfig
from plasticity_core.data import probe_batches
from plasticity_core.errors import UserError
from plasticity_core.layers import select_layers
from plasticity_core.reinit.base import STRATEGIES, Context
from plasticity_core.reinit.report import COLUMNS, ReinitReport, layer_row

Touched = Iterable["nn.Parameter | tuple[nn.Parameter, int, torch.Tensor | None]"]


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def iter_images(data: Any, batches: int, device: torch.device, batch_size: int = 32) -> Iterator[torch.Tensor]:
    """Up to ``batches`` image batches from a DataLoader or a Dataset of (image, label) items, on ``device``."""
    data = probe_batches(data, batch_size)
    if not isinstance(data, Iterable):
        raise TypeError(f"data must be a DataLoader or a Dataset of (image, label) items, got {type(data).__name__}")
    for i, batch in enumerate(data):
        if i >= batches:
            return
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"data batches must hold image tensors, got {type(x).__name__}")
        yield x.to(device, non_blocking=True)


def recalibrate_batchnorm(model: nn.Module, loader: Any, batches: int = 20, device: torch.device | str | None = None,
                          progress: Callable[[str, int, int], None] | None = None) -> int:
    """Re-estimate every BatchNorm's running mean/var on ``loader`` (cumulative average over ``batches``).

    Needed after any weight surgery: the stored statistics describe the old weights, so eval-mode outputs
    are wrong until they are refreshed (docs/methods.md, Safeguards: BatchNorm). Only BatchNorm layers run in train mode; dropout
    and the rest stay in eval mode. Returns the number of batches used (0 if the model has no BatchNorm).
    ``progress("BatchNorm batches", done, batches)`` is called after each batch.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    device = torch.device(device) if device is not None else _device(model)
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    used = 0
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average: every batch weighs the same
            bn.train()
        with torch.no_grad():
            for x in iter_images(loader, batches, device):
                model(x)
                used += 1
                if progress is not None:
                    progress("BatchNorm batches", used, batches)
    finally:
        for bn, mom in momenta.items():
            bn.momentum = mom
        for m, mode in modes.items():
            m.training = mode
    return used


def reset_optimizer_state(optimizer: torch.optim.Optimizer, touched: Touched) -> int:
    """Zero the optimizer state (momentum buffers, Adam moments) of the touched parameter slices.

    ``touched``: parameters (whole tensor) or ``(param, dim, index)`` tuples (``index=None``: whole tensor).
    A whole-tensor reset also sets Adam's per-tensor ``step`` to 0 (fresh bias correction). A partial reset
    leaves ``step``: PyTorch keeps one step per tensor, and zeroing it would re-damp every other entry
    (docs/methods.md, Safeguards: optimizer state). Returns the number of state entries zeroed.
    """
    zeroed = 0
    for item in touched:
        param, dim, index = (item, 0, None) if isinstance(item, torch.Tensor) else item
        state = optimizer.state.get(param)
        if not state:
            continue
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                continue
            if value.shape == param.shape:
                if index is None:
                    value.zero_()
                    zeroed += value.numel()
                else:
                    value.index_fill_(dim, index.to(value.device), 0)
                    zeroed += index.numel() * value.numel() // value.shape[dim]
            elif key == "step" and index is None:
                value.zero_()
        if index is None and isinstance(state.get("step"), (int, float)):
            state["step"] = 0
    return zeroed


def _check_optimizer(model: nn.Module, optimizer: Any, layers: list, notes: list[str]) -> None:
    """Refuse an optimizer that holds none of the selected layers' weights (another model's: resetting its state
    would do nothing, silently); note the selected layers it does not hold (e.g. frozen ones left out of it)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UserError(f"apply_reinit: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [layer.name for layer in layers if id(model.get_submodule(layer.module_name).weight) not in held]
    if len(missing) == len(layers):
        raise UserError(f"apply_reinit: the optimizer holds none of the {len(layers)} selected layers' weights (e.g. "
                        f"{missing[0]}); pass the optimizer built on this model's parameters, or none and build it after")
    if missing:
        notes.append(f"the optimizer does not hold {len(missing)} selected layer(s) (e.g. {missing[0]}): their state "
                     f"was not reset")


def apply_reinit(model: nn.Module, cfg: ReinitConfig, data: Any = None, optimizer: torch.optim.Optimizer | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> ReinitReport:
    """Re-initialise the layers ``cfg`` selects, in place, and report per layer what changed.

    ``data``: target images (DataLoader or Dataset) for unit scoring and BatchNorm recalibration; required
    by strategies that score units (redo, targeted except criterion="magnitude"). ``optimizer``: when given,
    its state of the touched slices is zeroed. For ``cbp`` nothing changes now: the report's
    ``step_callback`` must be called by the training loop after each optimizer step. ``progress(what, done,
    total)`` reports the waits in their own units ("batches scored", "BatchNorm batches").
    """
    if not isinstance(cfg, ReinitConfig):
        raise TypeError(f"cfg must be a ReinitConfig, got {type(cfg).__name__}")
    cfg.validate()
    info = STRATEGIES.get(cfg.strategy)
    params = dict(cfg.params)
    if info.needs_data_for(params) and data is None:
        raise ValueError(f"strategy {cfg.strategy!r} scores units on target data: pass data= (a DataLoader or Dataset)")
    sel = select_layers(model, cfg.layers, cfg.exclude, allow_head=cfg.include_head, allow_grouped=info.allow_grouped,
                        allow_patch_embed=info.allow_patch_embed, kinds=info.kinds)
    notes: list[str] = []
    if not sel.layers:
        notes.append("no layer selected: nothing changed")
    if optimizer is not None and sel.layers:
        _check_optimizer(model, optimizer, sel.layers, notes)
    before = {layer.name: layer.weight(model).detach().clone() for layer in sel.layers}
    ctx = Context(model, sel.layers, params, cfg.seed, data, _device(model), notes, progress=progress)
    changes = info.fn(ctx) if sel.layers else []

    rows, skipped, slices = [], list(sel.rejected), []
    for ch in changes:
        if ch.skip is not None:
            skipped.append((ch.layer.name, ch.skip))
            continue
        rows.append(layer_row(ch.layer.name, cfg.strategy, before[ch.layer.name], ch.layer.weight(model), ch.units, ch.weights))
        slices.extend(ch.slices)
    strategy_skips = [c for c in changes if c.skip is not None]
    touched = [c.layer.name for c in changes if c.skip is None]
    if cfg.resolved_layers and cfg.resolved_layers != touched:
        notes.append(f"the config's resolved_layers ({len(cfg.resolved_layers)}) differ from what its patterns and "
                     f"strategy reach on this model ({len(touched)}); the patterns were used")
    if sel.layers and len(strategy_skips) == len(sel.layers):
        notes.append(f"no layer was touched: {cfg.strategy} skipped all {len(sel.layers)} selected layers "
                     f"(first reason: {strategy_skips[0].skip}); see .skipped")
    if optimizer is not None and slices:
        reset_optimizer_state(optimizer, slices)
    elif optimizer is None and slices:
        notes.append("no optimizer given: create the optimizer after apply_reinit (or pass it to reset its state)")
    if any(c.skip is None and c.weights for c in changes) and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        if not cfg.recalibrate_bn:
            notes.append("BatchNorm not recalibrated: recalibrate_bn is off")
        elif data is None:
            notes.append("BatchNorm not recalibrated: no data given (eval-mode outputs use stale statistics)")
        else:
            n = recalibrate_batchnorm(model, data, cfg.bn_batches, progress=progress)
            notes.append(f"BatchNorm statistics recalibrated on {n} batches of the given data")
    return ReinitReport(cfg.strategy, pd.DataFrame(rows, columns=COLUMNS),
                        pd.DataFrame(skipped, columns=["layer", "reason"]), notes, touched, params,
                        dict(ctx.metric_versions), ctx.step_callback)


def preview_reinit(model: nn.Module, cfg: ReinitConfig, data: Any = None,
                   progress: Callable[[str, int, int], None] | None = None) -> ReinitReport:
    """The report ``apply_reinit`` would give, computed on a deep copy: ``model`` stays bit-identical."""
    clone = copy.deepcopy(model)
    report = apply_reinit(clone, cfg, data=data, progress=progress)
    if report.step_callback is not None:
        close = getattr(report.step_callback, "close", None)
        if callable(close):
            close()
        report.step_callback = None
        report.notes.append(f"preview: {cfg.strategy} acts during fine-tuning; no step callback is returned")
    return report
