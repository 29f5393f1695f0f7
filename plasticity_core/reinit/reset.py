"""Reset: the selected layers go back to a fresh init of their kind (weights and biases)."""
from __future__ import annotations

import torch

from plasticity_core.reinit.base import Change, Context, Param, register, row_slices
from plasticity_core.reinit.fresh import fresh_weight

INIT_PARAM = Param(
    "init", "str", "model",
    "model = the model family's own init (timm ResNet Kaiming fan_out, timm ViT trunc-normal 0.02, else PyTorch's); "
    "default = PyTorch reset_parameters; kaiming = He-normal fan_in with zero bias",
    choices=("model", "default", "kaiming"),
)


@register("reset", "Reset: weights and biases of the selected layers <- a fresh draw of their init", (INIT_PARAM,))
def reset(ctx: Context) -> list[Change]:
    changes = []
    for layer in ctx.layers:
        w_new, b_new = fresh_weight(layer, ctx.model, ctx.generator(layer.name), ctx.params["init"])
        with torch.no_grad():
            layer.weight(ctx.model).copy_(w_new)
            if b_new is not None:
                layer.bias(ctx.model).copy_(b_new)
        changes.append(Change(layer, units=layer.units, weights=w_new.numel(), slices=row_slices(layer, ctx.model, None)))
    return changes
