"""Weight metrics: distance from the pretrained weights (SFE) and deviation from isometry (DfI), plus norms.

A 2-D weight ``(d_out, d_in)`` is one matrix; a conv weight ``(C_out, C_in, kh, kw)`` is treated per spatial
tap ``w[:, :, i, j]`` (FIRE orthogonalises each tap separately) and per-tap values are averaged. Each matrix is
taken in tall orientation ``X`` (``m x n``, ``m >= n``) and everything but SFE is read off its Gram matrix
``G = X^T X`` (``n x n``): one GEMM per layer, no SVD except the eigenvalues of ``G`` for the spectral norm.
No function here ever returns NaN.
"""
from __future__ import annotations

import torch

from plasticity_core.metrics.base import register_metric

SFE_EPS = 1e-12

WEIGHT_METRICS = {
    "sfe": "||W - W0||_F^2 against the pretrained reference W0 (whole tensor)",
    "sfe_rel": "sfe / max(||W0||_F^2, 1e-12)",
    "dfi": "||X^T X - I_n||_F^2 of the tall matrix X (conv: mean over spatial taps)",
    "dfi_si": "n ||X^T X||_F^2 / ||X||_F^4 - 1, 0 iff all singular values are equal (conv: mean over taps)",
    "fro_norm": "||W||_F over the whole tensor",
    "spectral_norm": "largest singular value sigma_1 (conv: mean over taps)",
    "stable_rank": "||X||_F^2 / sigma_1^2, the classical stable rank (conv: mean over taps; 0 for a zero matrix)",
}
for _name, _definition in WEIGHT_METRICS.items():
    register_metric(name=_name, family="weights", definition=_definition, needs="weights",
                    defaults={"eps": SFE_EPS} if _name == "sfe_rel" else {})


def tall_taps(w: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight as a batch of tall matrices ``(taps, m, n)``, ``m >= n``: one per conv tap, one for a 2-D weight."""
    w = w.detach().to(dtype)
    if w.dim() == 2:
        x = w.unsqueeze(0)
    elif w.dim() in (3, 4):  # conv1d (C_out, C_in, k) / conv2d (C_out, C_in, kh, kw)
        x = w.flatten(2).permute(2, 0, 1)
    else:
        raise ValueError(f"expected a 2-D weight or a conv kernel (3-D/4-D), got shape {tuple(w.shape)}")
    return x.transpose(1, 2) if x.shape[2] > x.shape[1] else x


def gram(w: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gram matrices ``X^T X`` of the tall taps, shape ``(taps, n, n)``."""
    x = tall_taps(w, dtype)
    return x.transpose(1, 2) @ x


def _dfi_g(g: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    return (g - eye).square().sum((1, 2)).mean()


def _dfi_si_g(g: torch.Tensor) -> torch.Tensor:
    n = g.shape[-1]
    sq = g.diagonal(dim1=1, dim2=2).sum(1).square()  # ||X||_F^4
    ratio = n * g.square().sum((1, 2)) / sq.clamp_min(torch.finfo(g.dtype).tiny)
    return torch.where(sq > 0, (ratio - 1).clamp_min(0), torch.zeros_like(ratio)).mean()


def _spectral_g(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean sigma_1 and mean stable rank over taps."""
    lam = torch.linalg.eigvalsh(g)[:, -1].clamp_min(0)
    fro2 = g.diagonal(dim1=1, dim2=2).sum(1)
    srank = torch.where(lam > 0, fro2 / lam.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(lam))
    return lam.sqrt().mean(), srank.mean()


def _check_pair(w: torch.Tensor, w0: torch.Tensor) -> None:
    if w.shape != w0.shape:
        raise ValueError(f"weight and reference shapes differ: {tuple(w.shape)} vs {tuple(w0.shape)}")


def sfe_t(w: torch.Tensor, w0: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    _check_pair(w, w0)
    return (w.detach().to(dtype) - w0.detach().to(device=w.device, dtype=dtype)).square().sum()


def sfe_rel_t(w: torch.Tensor, w0: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    ref = w0.detach().to(device=w.device, dtype=dtype).square().sum()
    return sfe_t(w, w0, dtype) / ref.clamp_min(SFE_EPS)


def sfe(w: torch.Tensor, w0: torch.Tensor) -> float:
    """Squared Frobenius error ``||w - w0||_F^2`` over the whole tensor (FIRE's stability measure)."""
    return float(sfe_t(w, w0, torch.float64))


def sfe_rel(w: torch.Tensor, w0: torch.Tensor) -> float:
    """``sfe / max(||w0||_F^2, 1e-12)``: SFE comparable across layers of different scale."""
    return float(sfe_rel_t(w, w0, torch.float64))


def dfi(w: torch.Tensor) -> float:
    """Deviation from isometry ``||X^T X - I_n||_F^2`` (tall orientation; conv: mean over taps)."""
    return float(_dfi_g(gram(w, torch.float64)))


def dfi_si(w: torch.Tensor) -> float:
    """Scale-invariant DfI ``n ||X^T X||_F^2 / ||X||_F^4 - 1`` (0 iff a flat spectrum; zero matrix: 0)."""
    return float(_dfi_si_g(gram(w, torch.float64)))


def fro_norm(w: torch.Tensor) -> float:
    """``||w||_F`` over the whole tensor."""
    return float(w.detach().double().norm())


def spectral_norm(w: torch.Tensor) -> float:
    """Largest singular value (conv: mean over taps)."""
    return float(_spectral_g(gram(w, torch.float64))[0])


def stable_rank(w: torch.Tensor) -> float:
    """Classical stable rank ``||X||_F^2 / sigma_1^2`` (conv: mean over taps)."""
    return float(_spectral_g(gram(w, torch.float64))[1])


def weight_metrics(w: torch.Tensor, w0: torch.Tensor | None, names: set[str]) -> dict[str, torch.Tensor]:
    """The requested weight metrics of one layer as 0-d fp32 tensors on the weight's device (no host sync)."""
    out: dict[str, torch.Tensor] = {}
    if w0 is not None and w0.shape == w.shape:
        if "sfe" in names:
            out["sfe"] = sfe_t(w, w0)
        if "sfe_rel" in names:
            out["sfe_rel"] = sfe_rel_t(w, w0)
    if "fro_norm" in names:
        out["fro_norm"] = w.detach().float().norm()
    if names & {"dfi", "dfi_si", "spectral_norm", "stable_rank"}:
        g = gram(w)
        if "dfi" in names:
            out["dfi"] = _dfi_g(g)
        if "dfi_si" in names:
            out["dfi_si"] = _dfi_si_g(g)
        if names & {"spectral_norm", "stable_rank"}:
            s1, sr = _spectral_g(g)
            if "spectral_norm" in names:
                out["spectral_norm"] = s1
            if "stable_rank" in names:
                out["stable_rank"] = sr
    return out
