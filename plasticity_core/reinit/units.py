"""Unit-level surgery shared by redo, cbp and targeted: score units on data, recycle chosen units.

Recycling unit ``i`` of layer L (paired with its consumer M, see ``fresh.consumer``): fresh incoming weights
(fan-in He-normal, optionally rescaled to the surviving rows' mean norm), incoming bias 0, the following
BatchNorm entry reset (gamma 1, beta 0, mean 0, var 1: a BN-shifted dead unit would otherwise stay dead, as in
CBP's conv code), and outgoing weights ``M.weight[:, i] = 0`` so the network's function is unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from plasticity_core.layers import LayerInfo
from plasticity_core.reinit.base import Context, Param, row_slices
from plasticity_core.reinit.fresh import fresh_rows

# parameters every unit-level strategy (redo, targeted) declares the same way
SCALE_PARAM = Param("scale", "str", "match", "fresh incoming rows: match = rescaled to surviving rows' mean norm; "
                    "fan_in = He-normal", choices=("match", "fan_in"))
MAX_BATCHES_PARAM = Param("max_batches", "int", 8, "batches of target data used to score units", min=1)

Slices = list[tuple[nn.Parameter, int, torch.Tensor | None]]


def diagnose_units(ctx: Context, metrics: list[str], max_batches: int) -> Any:
    """Run ``plasticity_core.metrics.diagnose`` on the context's data; records the metric versions used."""
    from plasticity_core.metrics import METRICS, diagnose

    report = None if ctx.progress is None else (lambda done, total: ctx.progress("batches scored", done, total))
    d = diagnose(ctx.model, ctx.data, metrics=metrics, max_batches=max_batches, device=ctx.device, progress=report)
    bad = d.meta.get("nonfinite", {})
    if bad.get("inputs") or bad.get("layers"):
        raise ValueError(f"cannot score units: the data or the model gave non-finite values ({bad.get('inputs', 0)} input "
                         f"values; layers: {', '.join(bad.get('layers', [])[:5]) or 'none'}); fix them and apply again")
    for m in metrics:
        ctx.metric_versions[m] = METRICS.get(m).version
    return d


def unit_scores(diagnosis: Any, layer: LayerInfo, metric: str) -> torch.Tensor:
    """Per-unit scores of ``layer`` as a float CPU tensor, checked against the layer's unit count."""
    s = torch.as_tensor(diagnosis.units(layer.name, metric), dtype=torch.float32).flatten().cpu()
    if s.numel() != layer.units:
        raise RuntimeError(f"metric {metric!r} gave {s.numel()} unit scores for {layer.name} ({layer.units} units)")
    return s


def _norm_after(model: nn.Module, layer: LayerInfo) -> nn.Module | None:
    if layer.norm is None:
        return None
    norm = model.get_submodule(layer.norm)
    w = getattr(norm, "weight", None)
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and (w is None or w.shape[0] == layer.units):
        return norm
    return None


def recycle(ctx: Context, layer: LayerInfo, units: torch.Tensor, g: torch.Generator, *, scale: str,
            consumer: LayerInfo | None) -> Slices:
    """Re-initialise ``units`` of ``layer`` in place (see module doc); ``consumer=None`` keeps outgoing weights."""
    model = ctx.model
    units = units.to(torch.long)
    rows = fresh_rows(layer, model, units, g, scale)
    w, b = layer.weight(model), layer.bias(model)
    idx = units.to(w.device)
    slices = row_slices(layer, model, units)
    with torch.no_grad():
        w[idx] = rows
        if b is not None:
            b[idx] = 0.0
        norm = _norm_after(model, layer)
        if norm is not None:
            if norm.weight is not None:
                norm.weight[idx] = 1.0
                norm.bias[idx] = 0.0
                slices += [(norm.weight, 0, units.cpu()), (norm.bias, 0, units.cpu())]
            if norm.running_mean is not None:
                norm.running_mean[idx] = 0.0
                norm.running_var[idx] = 1.0
        if consumer is not None:
            out = model.get_submodule(consumer.module_name).weight
            out[:, idx] = 0.0
            slices.append((out, 1, units.cpu()))
    return slices
