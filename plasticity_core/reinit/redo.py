"""ReDo (Sokar et al. 2023): recycle tau-dormant units, scored on the target data.

A unit is tau-dormant when its ReDo score ``s_i = E|h_i| / mean_k E|h_k|`` (``diagnose`` metric "dormant") is
``<= tau``: ``metrics.dormant_mask``, the one rule shared with the metric (tau = 0: score <= 0, dopamine's rule). Each dormant unit gets fresh incoming weights (rescaled to the surviving rows' mean norm by
default), a zero incoming bias, a reset BatchNorm entry, and zero outgoing weights in its one consumer layer.
Only layers with an explicit (in, out) unit pair inside a block are recycled; the residual stream,
downsample convs, attention q/k/v and the head are skipped with the reason.
"""
from __future__ import annotations

from plasticity_core.metrics.activations import dormant_mask
from plasticity_core.reinit.base import Change, Context, Param, register
from plasticity_core.reinit.fresh import consumer
from plasticity_core.reinit.units import MAX_BATCHES_PARAM, SCALE_PARAM, diagnose_units, recycle, unit_scores

NO_PAIR = ("no explicit (in, out) unit pair: its output reaches the residual stream, attention or the head, "
           "or it has no activation, so zeroing outgoing weights would not silence its units")


@register(
    "redo",
    "ReDo: units with score E|h_i|/mean_k E|h_k| <= tau on target data get fresh incoming and zero outgoing weights",
    (
        Param("tau", "float", 0.025, "dormancy threshold: units with ReDo score <= tau (paper default 0.025; 0 = exactly silent, score <= 0)", min=0.0),
        SCALE_PARAM,
        MAX_BATCHES_PARAM,
    ),
    needs_data=True,
    check=lambda model, layer, params: None if consumer(model, layer) is not None else f"redo: {NO_PAIR}",
)
def redo(ctx: Context) -> list[Change]:
    p = ctx.params
    pairs = {layer.name: consumer(ctx.model, layer) for layer in ctx.layers}
    scored = [layer for layer in ctx.layers if pairs[layer.name] is not None]
    d = diagnose_units(ctx, ["dormant"], p["max_batches"]) if scored else None
    changes = []
    for layer in ctx.layers:
        if pairs[layer.name] is None:
            changes.append(Change(layer, skip=f"redo: {NO_PAIR}"))
            continue
        s = unit_scores(d, layer, "dormant")
        units = dormant_mask(s, p["tau"]).nonzero().flatten()
        if len(units) == 0:
            changes.append(Change(layer))
            continue
        slices = recycle(ctx, layer, units, ctx.generator(layer.name), scale=p["scale"], consumer=pairs[layer.name])
        fan = layer.weight(ctx.model)[0].numel()
        changes.append(Change(layer, units=len(units), weights=len(units) * fan, slices=slices))
    return changes
