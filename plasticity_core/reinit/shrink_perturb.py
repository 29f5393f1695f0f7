"""Shrink & perturb, in its two published forms (name the one you use; docs/methods.md).

``form="shrink"`` (Ash & Adams 2020): ``theta <- lam * theta + N(0, sigma^2)``.
``form="interpolate"`` (FIRE's and SAC's code): ``theta <- (1 - alpha) * theta + alpha * theta_init`` with
``theta_init`` a fresh init draw. Applied to the weights and biases of the selected layers. Ash & Adams'
own default values were not verified here; the defaults below are the commonly used ones.
"""
from __future__ import annotations

import torch

from plasticity_core.reinit.base import Change, Context, Param, register, row_slices
from plasticity_core.reinit.fresh import fresh_weight
from plasticity_core.reinit.reset import INIT_PARAM


@register(
    "shrink_perturb",
    "Shrink & perturb: theta <- lam*theta + N(0, sigma^2) (form=shrink) or (1-alpha)*theta + alpha*theta_init (form=interpolate)",
    (
        Param("form", "str", "shrink", "shrink = Ash & Adams lam*theta + noise; interpolate = blend towards a fresh init",
              choices=("shrink", "interpolate")),
        Param("lam", "float", 0.6, "shrink factor lambda of form=shrink (1 keeps the weights)", min=0.0, max=1.0),
        Param("sigma", "float", 0.01, "std of the Gaussian noise of form=shrink (absolute, not relative)", min=0.0),
        Param("alpha", "float", 0.8, "weight of the fresh init in form=interpolate (FIRE's scripts: 0.8)", min=0.0, max=1.0),
        INIT_PARAM,
    ),
)
def shrink_perturb(ctx: Context) -> list[Change]:
    p = ctx.params
    changes = []
    for layer in ctx.layers:
        g = ctx.generator(layer.name)
        tensors = [t for t in (layer.weight(ctx.model), layer.bias(ctx.model)) if t is not None]
        if p["form"] == "interpolate":
            targets = [t for t in fresh_weight(layer, ctx.model, g, p["init"]) if t is not None]
        with torch.no_grad():
            for i, t in enumerate(tensors):
                if p["form"] == "shrink":
                    new = p["lam"] * t
                    if p["sigma"] > 0:
                        new = new + p["sigma"] * torch.randn(t.shape, generator=g).to(t.device, t.dtype)
                else:
                    new = (1.0 - p["alpha"]) * t + p["alpha"] * targets[i]
                t.copy_(new)
        changes.append(Change(layer, units=layer.units, weights=tensors[0].numel(), slices=row_slices(layer, ctx.model, None)))
    return changes
