"""Weight metrics: distance from the pretrained weights (SFE), deviation from isometry (DfI), norms, spectrum.

A 2-D weight ``(d_out, d_in)`` is one matrix; a conv weight ``(C_out, C_in, kh, kw)`` is treated per spatial
tap ``w[:, :, i, j]`` (FIRE orthogonalises each tap separately) and per-tap values are averaged. Each matrix is
taken in tall orientation ``X`` (``m x n``, ``m >= n``) and everything but SFE is read off its Gram matrix
``G = X^T X`` (``n x n``, fp32 with TF32 off): one GEMM per layer. The top eigenvalue of ``G`` (``sigma_1^2``)
comes from batched Lanczos (``LANCZOS_STEPS`` steps with full reorthogonalisation, exact when ``n`` is at most
that), not from a full eigendecomposition; its a-posteriori error bound is checked against ``torch.linalg`` in
the tests. No function here returns NaN for a finite weight.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from plasticity_core.metrics.base import register_metric

SFE_EPS = 1e-12
LANCZOS_STEPS = 48


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


def lanczos_top(g: torch.Tensor, steps: int = LANCZOS_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest eigenvalue of each symmetric PSD matrix in ``g`` (``(b, n, n)``) and an error bound, by Lanczos.

    ``min(steps, n)`` steps from a fixed-seed start vector (the same on every device), full
    reorthogonalisation (twice), the tridiagonal's eigenvalues from one small batched ``eigvalsh``. The Ritz
    value never exceeds the true eigenvalue; ``bound = beta_k |s_k|`` is the standard residual bound (an
    eigenvalue lies within it). Exact (up to rounding) when ``n <= steps``. Non-finite input gives NaN.
    """
    b, n, _ = g.shape
    k = min(steps, n)
    start = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = (start / start.norm()).to(device=g.device, dtype=g.dtype).expand(b, n).contiguous()
    tiny = g.diagonal(dim1=1, dim2=2).sum(1, keepdim=True) * (16 * torch.finfo(g.dtype).eps)  # trace-relative
    basis = g.new_zeros(b, k, n)
    alpha, beta = g.new_zeros(b, k), g.new_zeros(b, k)
    for j in range(k):
        basis[:, j] = q
        w = torch.bmm(q.unsqueeze(1), g).squeeze(1)  # q^T G = (G q)^T: the row form is the fast one on CPU
        alpha[:, j] = (w * q).sum(1)
        qj = basis[:, : j + 1]
        for _ in range(2):
            w = w - torch.bmm(torch.bmm(qj, w.unsqueeze(-1)).transpose(1, 2), qj).squeeze(1)
        nb = w.norm(dim=1, keepdim=True)
        live = nb > tiny  # below: the Krylov space is invariant (exact breakdown), continue with zeros
        beta[:, j] = torch.where(live, nb, torch.zeros_like(nb)).squeeze(1)
        q = torch.where(live, w / nb.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(w))
    t = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1) + torch.diag_embed(beta[:, :-1], -1)
    bad = ~torch.isfinite(t).flatten(1).all(1)  # a non-finite G spreads into T: sanitise the small matrix only
    theta, s = torch.linalg.eigh(torch.where(bad[:, None, None], torch.zeros_like(t), t).double())
    top = theta[:, -1].clamp_min(0).to(g.dtype)
    bound = (beta[:, -1].double() * s[:, -1, -1].abs()).to(g.dtype)
    nan = torch.full_like(top, float("nan"))
    return torch.where(bad, nan, top), torch.where(bad, nan, bound)


class WeightView:
    """One layer's weight (and reference) for the weight metrics, with the shared pieces computed once."""

    def __init__(self, w: torch.Tensor, w0: torch.Tensor | None, spectra: "SpectraBatch | None" = None) -> None:
        self.w = w.detach()
        self.w0 = None if w0 is None else w0.detach().to(self.w.device)
        self._gram: torch.Tensor | None = None
        self.spectra = spectra if spectra is not None else SpectraBatch()
        self.spectra.add(self)

    @property
    def gram(self) -> torch.Tensor:
        if self._gram is None:
            self._gram = gram(self.w)
        return self._gram

    def top_eig(self) -> torch.Tensor:
        """``sigma_1^2`` per tap, shape ``(taps,)`` (batched with every other layer of the same diagnosis)."""
        return self.spectra.top(self)


class SpectraBatch:
    """Top eigenvalues of many layers' Grams, computed together: one Lanczos run per matrix size."""

    def __init__(self) -> None:
        self.views: list[WeightView] = []
        self.done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, view: WeightView) -> None:
        self.views.append(view)

    def top(self, view: WeightView) -> torch.Tensor:
        if id(view) not in self.done:
            self._run()
        return self.done[id(view)][0]

    def bound(self, view: WeightView) -> torch.Tensor:
        self.top(view)
        return self.done[id(view)][1]

    def _run(self) -> None:
        groups: dict[tuple, list[WeightView]] = defaultdict(list)
        for v in self.views:
            if id(v) not in self.done:
                g = v.gram
                groups[(g.shape[-1], g.device)].append(v)
        for vs in groups.values():
            grams = [v.gram for v in vs]
            top, bound = lanczos_top(torch.cat(grams))
            for v, t, b in zip(vs, top.split([g.shape[0] for g in grams]), bound.split([g.shape[0] for g in grams])):
                self.done[id(v)] = (t, b)


def _dfi_g(g: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    return (g - eye).square().sum((1, 2)).mean()


def _dfi_si_g(g: torch.Tensor) -> torch.Tensor:
    n = g.shape[-1]
    sq = g.diagonal(dim1=1, dim2=2).sum(1).square()  # ||X||_F^4
    ratio = n * g.square().sum((1, 2)) / sq.clamp_min(torch.finfo(g.dtype).tiny)
    return torch.where(sq > 0, (ratio - 1).clamp_min(0), torch.zeros_like(ratio)).mean()


def _stable_rank(g: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    fro2 = g.diagonal(dim1=1, dim2=2).sum(1)
    return torch.where(lam > 0, fro2 / lam.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(lam)).mean()


def _check_pair(w: torch.Tensor, w0: torch.Tensor) -> None:
    if w.shape != w0.shape:
        raise ValueError(f"weight and reference shapes differ: {tuple(w.shape)} vs {tuple(w0.shape)}")


def sfe_t(w: torch.Tensor, w0: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    _check_pair(w, w0)
    return (w.detach().to(dtype) - w0.detach().to(device=w.device, dtype=dtype)).square().sum()


def sfe_rel_t(w: torch.Tensor, w0: torch.Tensor, dtype: torch.dtype = torch.float32, eps: float = SFE_EPS) -> torch.Tensor:
    ref = w0.detach().to(device=w.device, dtype=dtype).square().sum()
    return sfe_t(w, w0, dtype) / ref.clamp_min(eps)


# ---- the registered metrics (fp32 on the weight's device, 0-d tensors, no host sync) ----

@register_metric("sfe", family="weights", definition="||W - W0||_F^2 against the pretrained reference W0 (whole tensor)")
def _sfe(v: WeightView) -> torch.Tensor | None:
    return sfe_t(v.w, v.w0) if v.w0 is not None and v.w0.shape == v.w.shape else None


@register_metric("sfe_rel", family="weights", defaults={"eps": SFE_EPS}, version=2,
                 definition="sfe / max(||W0||_F^2, eps), eps = 1e-12 by default (whole tensor)")
def _sfe_rel(v: WeightView, eps: float) -> torch.Tensor | None:
    return sfe_rel_t(v.w, v.w0, eps=eps) if v.w0 is not None and v.w0.shape == v.w.shape else None


@register_metric("dfi", family="weights",
                 definition="||X^T X - I_n||_F^2 of the tall matrix X (conv: mean over spatial taps)")
def _dfi(v: WeightView) -> torch.Tensor:
    return _dfi_g(v.gram)


@register_metric("dfi_si", family="weights",
                 definition="n ||X^T X||_F^2 / ||X||_F^4 - 1, 0 iff all singular values are equal (conv: mean over taps)")
def _dfi_si(v: WeightView) -> torch.Tensor:
    return _dfi_si_g(v.gram)


@register_metric("fro_norm", family="weights", definition="||W||_F over the whole tensor")
def _fro(v: WeightView) -> torch.Tensor:
    return v.w.float().norm()


@register_metric("spectral_norm", family="weights", version=2,
                 definition="largest singular value sigma_1 (conv: mean over taps), by 48-step Lanczos on X^T X in fp32")
def _spectral(v: WeightView) -> torch.Tensor:
    return v.top_eig().sqrt().mean()


@register_metric("stable_rank", family="weights", version=2,
                 definition="||X||_F^2 / sigma_1^2, the classical stable rank (conv: mean over taps; 0 for a zero matrix)")
def _srank(v: WeightView) -> torch.Tensor:
    return _stable_rank(v.gram, v.top_eig())


# ---- the pure functions of the public API (float64, host floats) ----

def sfe(w: torch.Tensor, w0: torch.Tensor) -> float:
    """Squared Frobenius error ``||w - w0||_F^2`` over the whole tensor (FIRE's stability measure)."""
    return float(sfe_t(w, w0, torch.float64))


def sfe_rel(w: torch.Tensor, w0: torch.Tensor, eps: float = SFE_EPS) -> float:
    """``sfe / max(||w0||_F^2, eps)``: SFE comparable across layers of different scale."""
    return float(sfe_rel_t(w, w0, torch.float64, eps))


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
    """Largest singular value (conv: mean over taps), float64 Lanczos."""
    g = gram(w, torch.float64)
    return float(lanczos_top(g)[0].sqrt().mean())


def stable_rank(w: torch.Tensor) -> float:
    """Classical stable rank ``||X||_F^2 / sigma_1^2`` (conv: mean over taps)."""
    g = gram(w, torch.float64)
    return float(_stable_rank(g, lanczos_top(g)[0]))


def weight_metrics(w: torch.Tensor, w0: torch.Tensor | None, names: set[str],
                   params: dict[str, dict[str, Any]] | None = None) -> dict[str, torch.Tensor]:
    """The requested registered weight metrics of one layer as 0-d fp32 tensors on the weight's device."""
    from plasticity_core.metrics.base import METRICS

    view = WeightView(w, w0)
    out = {}
    for name in names:
        info = METRICS.get(name)
        if info.needs != "weights" or info.family != "weights":
            continue
        kw = {**info.defaults, **(params or {}).get(name, {})}
        value = info.impl(view, **kw)
        if value is not None:
            out[name] = value
    return out
