"""Targeted re-initialisation before fine-tuning: score units on the target data, re-init the lowest fraction.

Our reading of Coetzer, Schreuder & Bosman, arXiv 2603.20860: only the paper's abstract is public ("saturated"
pretrained weights that "yield insignificant gradients", re-initialised "prior to fine-tuning"); its exact
criterion, fraction and init are not, so this strategy offers the hypotheses of docs/methods.md (targeted) as a parameter
and must not be cited as the paper's method. Per selected layer, units are ranked by ``criterion``:
- "grad": ReDo score on |dL/dh| (``diagnose`` metric "grad_dormant"); lowest = most insignificant gradients;
- "saturation": per-unit fraction of inputs in the activation's flat region; highest = most saturated;
- "dormant": ReDo activation score; lowest = most dormant;
- "magnitude": norm of the unit's incoming weights (no data needed); lowest first.
The ``floor(fraction * units)`` worst units get fresh incoming weights; ``outgoing="zero"`` also zeroes their
outgoing weights (only for layers with an explicit unit pair, others are skipped), ``"keep"`` leaves them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from plasticity_core.layers import LayerInfo
from plasticity_core.reinit.base import Change, Context, Param, register
from plasticity_core.reinit.fresh import consumer
from plasticity_core.reinit.redo import NO_PAIR
from plasticity_core.reinit.units import MAX_BATCHES_PARAM, SCALE_PARAM, diagnose_units, recycle, unit_scores

METRIC = {"grad": "grad_dormant", "saturation": "saturation", "dormant": "dormant"}


def _check(model: nn.Module, layer: LayerInfo, params: dict) -> str | None:
    """Why targeted leaves ``layer`` alone with these params (no unit pair for outgoing='zero', no unit score)."""
    if params["outgoing"] == "zero" and consumer(model, layer) is None:
        return f"targeted outgoing='zero': {NO_PAIR}"
    criterion = params["criterion"]
    if criterion in ("dormant", "saturation") and layer.act is None:
        return f"targeted criterion={criterion!r}: no activation module after this layer, so no per-unit {criterion} score"
    if criterion == "saturation":
        from plasticity_core.metrics.activations import FLAT_REGION

        if layer.act_type not in FLAT_REGION:
            return f"targeted criterion='saturation': its activation {layer.act_type!r} has no flat region to measure"
    return None


@register(
    "targeted",
    "Targeted (our reading of 2603.20860, criterion not public): re-init the lowest-scoring fraction of units per layer",
    (
        Param("criterion", "str", "grad", "unit score on target data: grad | saturation | dormant | magnitude (no data)",
              choices=("grad", "saturation", "dormant", "magnitude")),
        Param("fraction", "float", 0.1, "fraction of each layer's units re-initialised (worst first)", min=0.0, max=1.0,
              min_exclusive=True),
        Param("outgoing", "str", "keep", "keep = leave outgoing weights; zero = zero them (function-preserving, needs a unit pair)",
              choices=("keep", "zero")),
        SCALE_PARAM,
        MAX_BATCHES_PARAM,
    ),
    needs_data=lambda params: params["criterion"] != "magnitude",  # magnitude scores weights, not activations
    check=_check,
)
def targeted(ctx: Context) -> list[Change]:
    p = ctx.params
    metric = METRIC.get(p["criterion"])
    d = diagnose_units(ctx, [metric], p["max_batches"]) if metric else None
    changes = []
    for layer in ctx.layers:
        pair = consumer(ctx.model, layer)
        if (why := _check(ctx.model, layer, p)) is not None:
            changes.append(Change(layer, skip=why))
            continue
        if metric is None:
            score = layer.weight(ctx.model).detach().flatten(1).norm(dim=1).float().cpu()
        else:
            try:
                score = unit_scores(d, layer, metric)
            except KeyError as e:  # e.g. attention q/k/v or a layer without an activation module
                changes.append(Change(layer, skip=f"targeted criterion={p['criterion']!r}: {e.args[0]}"))
                continue
            if metric == "saturation":
                score = -score
        k = math.floor(p["fraction"] * layer.units)
        if k == 0:
            changes.append(Change(layer))
            continue
        units = torch.argsort(score, stable=True)[:k]
        slices = recycle(ctx, layer, units, ctx.generator(layer.name), scale=p["scale"],
                         consumer=pair if p["outgoing"] == "zero" else None)
        fan = layer.weight(ctx.model)[0].numel()
        changes.append(Change(layer, units=k, weights=k * fan, slices=slices))
    return changes
