"""FIRE (Han et al., ICLR 2026): replace each weight by its nearest (scaled) isometry.

As released (``isaac7778/FIRE`` vision/interventions/fire.py): tall orientation, Frobenius normalisation,
cubic Newton-Schulz ``X <- 1.5 X - 0.5 X (X^T X)`` for 10 steps, convs per spatial tap, then scale
``sqrt(d_out/d_in)`` (convs: per tap ``sqrt(C_out/C_in) / (kh*kw)``). ``method="svd"`` gives the exact polar
factor ``U V^T`` (10 Newton-Schulz steps only partly flatten square or ill-conditioned spectra, docs/methods.md,
fire). For timm ViTs FIRE touches only the q and k row blocks of ``qkv`` (``targets="qk"``); ``"all"`` adds
v, ``attn.proj`` and the MLP (FIRE's language-model variant). Biases, norms and the patch embedding stay.
"""
from __future__ import annotations

import math

import torch

from torch import nn

from plasticity_core.layers import LayerInfo, layer_map
from plasticity_core.reinit.base import Change, Context, Param, register, row_slices


def _as_taps(w: torch.Tensor) -> torch.Tensor:
    """(T, d_out, d_in) view-copy: one matrix per spatial tap (T = 1 for a 2-D weight)."""
    if w.dim() == 2:
        return w.unsqueeze(0)
    return w.reshape(w.shape[0], w.shape[1], -1).permute(2, 0, 1)


def _from_taps(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 2:
        return x[0]
    return x.permute(1, 2, 0).reshape(like.shape)


def orthogonalize(w: torch.Tensor, method: str = "svd", steps: int = 10) -> torch.Tensor:
    """The (unscaled) orthogonal factor of ``w``, per spatial tap for a conv weight.

    ``method="svd"``: exact polar factor ``U V^T`` of each tap (thin SVD), the SFE-nearest semi-orthogonal
    matrix (orthogonal Procrustes). ``method="newton_schulz"``: FIRE's released iteration, ``steps`` cubic
    steps on the Frobenius-normalised tall matrix (an approximation for ill-conditioned taps). Computed in
    at least fp32; an all-zero tap stays zero (FIRE's code would give NaN). Returns ``w``'s shape and dtype.
    """
    if w.dim() < 2:
        raise ValueError(f"orthogonalize needs a 2-D or conv weight, got shape {tuple(w.shape)}")
    if method not in ("svd", "newton_schulz"):
        raise ValueError(f"orthogonalize: method must be 'svd' or 'newton_schulz', got {method!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"orthogonalize: steps must be an int >= 0, got {steps!r}")
    dtype = torch.promote_types(w.dtype, torch.float32)
    x = _as_taps(w.detach().to(dtype))
    wide = x.shape[1] < x.shape[2]
    if wide:
        x = x.transpose(1, 2)
    if method == "svd":
        u, _, vh = torch.linalg.svd(x, full_matrices=False)
        q = u @ vh
        q = torch.where(x.flatten(1).norm(dim=1).view(-1, 1, 1) > 0, q, torch.zeros_like(q))
    else:
        norm = x.flatten(1).norm(dim=1).view(-1, 1, 1)
        q = x / torch.where(norm > 0, norm, torch.ones_like(norm))
        for _ in range(steps):
            q = 1.5 * q - 0.5 * q @ (q.transpose(1, 2) @ q)
    if wide:
        q = q.transpose(1, 2)
    return _from_taps(q, w).to(w.dtype).contiguous()


def fire_scale(w: torch.Tensor) -> float:
    """FIRE's released scale: ``sqrt(d_out/d_in)``, and for convs per tap divided by the kernel size kh*kw."""
    c = math.sqrt(w.shape[0] / w.shape[1])
    return c / math.prod(w.shape[2:]) if w.dim() > 2 else c


def _fire_check(model: nn.Module, layer: LayerInfo, params: dict) -> str | None:
    if params["targets"] == "qk" and layer.kind not in ("attn_q", "attn_k") and _has_attention(model):
        return QK_ONLY
    return None


def _has_attention(model: nn.Module) -> bool:
    return any(layer.kind == "attn_q" for layer in layer_map(model))


QK_ONLY = "fire targets='qk' (FIRE's ViT default) touches only attention q/k blocks"


@register(
    "fire",
    "FIRE: weight <- c * orthogonal factor (Newton-Schulz as released, or exact SVD), convs per spatial tap",
    (
        Param("method", "str", "newton_schulz", "newton_schulz = FIRE's released cubic iteration; svd = exact polar factor U V^T",
              choices=("newton_schulz", "svd")),
        Param("steps", "int", 10, "Newton-Schulz iterations (FIRE vision: 10; language: 5); ignored by svd", min=1, max=100),
        Param("scale", "str", "paper",
              "paper = sqrt(d_out/d_in) (/(kh*kw) for convs) as released; norm = keep each layer's Frobenius norm; none = 1",
              choices=("paper", "norm", "none")),
        Param("targets", "str", "qk",
              "transformers: qk = only q/k row blocks of attention (FIRE's ViT); all = also v, proj and MLP. "
              "Models without attention: every selected layer either way", choices=("qk", "all")),
    ),
    check=_fire_check,
)
def fire(ctx: Context) -> list[Change]:
    p = ctx.params
    has_attention = _has_attention(ctx.model)
    changes = []
    for layer in ctx.layers:
        if has_attention and p["targets"] == "qk" and layer.kind not in ("attn_q", "attn_k"):
            changes.append(Change(layer, skip=QK_ONLY))
            continue
        w = layer.weight(ctx.model)
        q = orthogonalize(w, p["method"], p["steps"])
        if p["scale"] == "paper":
            q = q * fire_scale(w)
        elif p["scale"] == "norm":
            q = q * (w.detach().norm() / q.norm().clamp_min(1e-12))
        with torch.no_grad():
            w.copy_(q)
        changes.append(Change(layer, units=layer.units, weights=w.numel(), slices=row_slices(layer, ctx.model, None)[:1]))
    return changes
