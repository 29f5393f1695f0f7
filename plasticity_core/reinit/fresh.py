"""Fresh weights and explicit (in, out) unit pairs, shared by reset, shrink_perturb, redo, cbp and targeted.

Fresh weights are drawn on the CPU from a seeded generator and then moved to the layer's device, so a seed
gives the same weights on every device. Unit pairs are explicit (docs/methods.md, Safeguards: unit pairs): a unit of layer L may be
recycled only when L's activation feeds exactly one next weight layer M inside the same block (``conv1 ->
conv2 -> conv3`` of a ResNet block, ``mlp.fc1 -> mlp.fc2`` of a ViT block, consecutive layers of an
``nn.Sequential``, ``conv_pw -> (depthwise) -> conv_pwl`` of an inverted residual block); never the residual
stream, never a downsample conv.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from plasticity_core.layers import LayerInfo, layer_map


def fan_in(layer: LayerInfo) -> int:
    return int(math.prod(layer.shape[1:]))


def _model_init(model: nn.Module) -> str:
    """Which init the model family uses: 'timm_resnet', 'timm_vit' or 'default' (PyTorch's reset_parameters)."""
    try:
        from timm.models.resnet import ResNet
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # timm is a dependency, but keep plain-torch models working without it
        return "default"
    if isinstance(model, ResNet):
        return "timm_resnet"
    if isinstance(model, VisionTransformer):
        return "timm_vit"
    return "default"


def fresh_weight(layer: LayerInfo, model: nn.Module, g: torch.Generator, init: str = "model") -> tuple[torch.Tensor, torch.Tensor | None]:
    """A freshly initialised (weight, bias) for ``layer`` (row block for q/k/v), on the layer's device and dtype.

    ``init``: "model" = the model family's own init (timm ResNet: Kaiming-normal fan_out for convs; timm ViT:
    trunc-normal std 0.02, zero bias; otherwise PyTorch's default), "default" = PyTorch's ``reset_parameters``
    (U(+-1/sqrt(fan_in)) for weight and bias), "kaiming" = He-normal fan_in (std sqrt(2/fan_in)), zero bias.
    """
    ref = layer.weight(model)
    bias_ref = layer.bias(model)
    w = torch.empty(ref.shape, dtype=torch.float32)
    b = None if bias_ref is None else torch.empty(bias_ref.shape, dtype=torch.float32)
    family = _model_init(model) if init == "model" else init
    bound = 1.0 / math.sqrt(fan_in(layer))
    if family == "timm_resnet" and layer.kind == "conv":
        nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=g)
        if b is not None:
            b.zero_()
    elif family == "timm_vit" and layer.kind != "conv":
        nn.init.trunc_normal_(w, std=0.02, generator=g)
        if b is not None:
            b.zero_()
    elif family == "kaiming":
        w.normal_(0.0, math.sqrt(2.0 / fan_in(layer)), generator=g)
        if b is not None:
            b.zero_()
    else:  # PyTorch default: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)); bias the same bound
        w.uniform_(-bound, bound, generator=g)
        if b is not None:
            b.uniform_(-bound, bound, generator=g)
    cast = dict(device=ref.device, dtype=ref.dtype)
    return w.to(**cast), (None if b is None else b.to(**cast))


def fresh_rows(layer: LayerInfo, model: nn.Module, units: torch.Tensor, g: torch.Generator, scale: str = "match") -> torch.Tensor:
    """Fresh incoming weights for ``units`` of ``layer``: He-normal at fan-in scale (docs/methods.md, Safeguards: fresh weight scale).

    ``scale="match"`` rescales each new row to the mean norm of the surviving rows (dopamine's
    ``weight_scaling``), so new units are neither dwarfed by nor dominate pretrained ones.
    """
    w = layer.weight(model)
    rows = torch.randn((len(units), *w.shape[1:]), generator=g) * math.sqrt(2.0 / fan_in(layer))
    rows = rows.to(device=w.device, dtype=w.dtype)
    if scale == "match":
        keep = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
        keep[units.to(w.device)] = False
        if keep.any():
            target = w[keep].detach().flatten(1).norm(dim=1).mean()
            norms = rows.flatten(1).norm(dim=1).clamp_min(1e-12)
            rows = rows * (target / norms).view(-1, *([1] * (rows.dim() - 1)))
    return rows


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def consumer(model: nn.Module, layer: LayerInfo) -> LayerInfo | None:
    """The one next weight layer that reads ``layer``'s activated output inside the same block, or None.

    None for layers whose output reaches the residual stream, downsample convs, attention q/k/v, layers
    without an activation module and the head: recycling those units cannot be made function-preserving.
    """
    if layer.act is None or layer.rows is not None or layer.head:
        return None
    parent, _, leaf = layer.module_name.rpartition(".")
    by_module = {info.module_name: info for info in layer_map(model) if info.rows is None}
    candidate = None
    parent_mod = model.get_submodule(parent) if parent else model
    if isinstance(parent_mod, nn.Sequential):
        names = [n for n, _ in parent_mod.named_children()]
        i = names.index(leaf)
        for n in names[i + 1:]:
            full = f"{parent}.{n}" if parent else n
            if full in by_module:
                candidate = by_module[full]
                break
            if any(True for _ in parent_mod.get_submodule(n).children()):  # a nested block: not a plain chain
                break
    elif (m := _NUMBERED.match(leaf)) and m.group(1) in ("conv", "fc"):
        nxt = f"{m.group(1)}{int(m.group(2)) + 1}"
        candidate = by_module.get(f"{parent}.{nxt}" if parent else nxt)
    if candidate is None or candidate.depthwise:
        candidate = _through_depthwise(layer, list(by_module.values()))
    if candidate is None or candidate.head or candidate.order <= layer.order:
        return None
    if not layer.act.startswith(parent + ".") and parent:  # the activation sits outside the block
        return None
    if candidate.grouped or len(candidate.shape) < 2 or candidate.shape[1] != layer.units:
        return None
    return candidate


def _through_depthwise(layer: LayerInfo, layers: list[LayerInfo]) -> LayerInfo | None:
    """``conv_pw -> conv_dw -> conv_pwl`` of an inverted residual block (MobileNet, EfficientNet): a depthwise conv
    keeps channel i of the expansion on channel i, so unit i's outgoing weights are column i of the projection.

    Only when the expansion is read by the depthwise conv alone, the depthwise conv by the projection alone
    (per the traced data flow), and all three sit in the same block. Not exactly function-preserving: a silent
    expansion unit still emits the depthwise BatchNorm's shift on its channel, and zeroing the projection column
    removes that constant too (BatchNorm recalibration, on by default, re-centres what follows).
    """
    block = layer.module_name.rpartition(".")[0]
    readers = [l for l in layers if l.input_from == layer.module_name]
    if not block or len(readers) != 1 or not readers[0].depthwise or readers[0].units != layer.units:
        return None
    dw = readers[0]
    after = [l for l in layers if l.input_from == dw.module_name]
    if len(after) != 1 or {dw.module_name.rpartition(".")[0], after[0].module_name.rpartition(".")[0]} != {block}:
        return None
    return after[0]
