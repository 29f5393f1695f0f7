"""Activation metrics: dormant (ReDo), dead (continual backprop), saturation, and feature effective rank.

Each metric is a streaming accumulator fed from forward hooks: per-unit sums and counts live on the
device (sums in fp32, counts in int64) and are turned into scores only in ``finish``. The unit axis is
``LayerInfo.unit_dim`` (1 for NCHW conv activations, -1 for token/linear activations); every other axis
(batch, space, tokens) counts as "inputs", so a conv unit's statistics average over batch and space.
"""
from __future__ import annotations

from typing import Callable

import torch

from plasticity_core.metrics.base import register_metric

DORMANT_TAU = 0.025
DEAD_FRACTION = 0.01
REDO_EPS = 1e-9  # dopamine's estimate_neuron_score divides by mean(score) + 1e-9

# Region where |phi'(z)| < 1 % of max |phi'| (tails only; GELU/SiLU/Mish interior notches are not counted).
# Thresholds from docs/methods.md (Metrics, saturation); the rest computed the same way (tests re-derive them by autograd).
FLAT_REGION: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": lambda z: z <= 0,
    "relu6": lambda z: (z <= 0) | (z >= 6),
    "gelu": lambda z: z < -3.02,
    "silu": lambda z: z < -6.14,
    "mish": lambda z: z < -6.16,
    "quick_gelu": lambda z: z < -3.61,
    "tanh": lambda z: z.abs() > 2.99,
    "sigmoid": lambda z: z.abs() > 5.99,
    "hardswish": lambda z: z <= -3,
    "hardsigmoid": lambda z: z.abs() >= 3,
    "softplus": lambda z: z < -4.60,
    "elu": lambda z: z < -4.61,
    "celu": lambda z: z < -4.61,
    "selu": lambda z: z < -4.61,
}

register_metric(
    name="dormant", family="activations", needs="activations", unit_level=True, defaults={"tau": DORMANT_TAU},
    definition="fraction of units with ReDo score s_i = E|h_i| / mean_k E|h_k| <= tau, h = the real activation's "
               "output (conv: E over batch and space); units() gives s_i",
)
register_metric(
    name="dead", family="activations", needs="activations", unit_level=True, defaults={"min_fraction": DEAD_FRACTION},
    definition="fraction of units whose activation output is nonzero on fewer than 1 % of inputs (conv: inputs = "
               "batch x positions); units() gives each unit's nonzero fraction",
)
register_metric(
    name="saturation", family="activations", needs="activations", unit_level=True, defaults={"eps": 0.01},
    definition="fraction of (input, unit) pairs whose pre-activation (the activation module's input) lies where "
               "phi' < 1 % of its max (ReLU z<=0, ReLU6 also z>=6, GELU z<-3.02, SiLU z<-6.14, tanh |z|>2.99, "
               "sigmoid |z|>5.99, hard-swish z<=-3); units() gives the per-unit fraction",
)
register_metric(
    name="feature_erank", family="features", needs="activations",
    definition="exp(entropy of sigma_k / sum sigma) of the layer's own output, spatially / token mean-pooled "
               "(N samples x units, not centred; Dohare et al.)",
)


def reduce_dims(t: torch.Tensor, unit_dim: int) -> tuple[int, ...]:
    """All dimensions of ``t`` except the unit dimension."""
    u = unit_dim % t.dim()
    return tuple(d for d in range(t.dim()) if d != u)


class ActivationStats:
    """Per-unit streaming statistics of one layer's activation module (post- and pre-activation)."""

    def __init__(self, units: int, act_type: str | None, device: torch.device, want: set[str]) -> None:
        self.want = want
        self.flat = FLAT_REGION.get(act_type or "")
        self.abs_sum = torch.zeros(units, dtype=torch.float32, device=device)
        self.nonzero = torch.zeros(units, dtype=torch.int64, device=device)
        self.saturated = torch.zeros(units, dtype=torch.int64, device=device)
        self.n_post = 0  # inputs per unit seen (host int: derived from shapes, no sync)
        self.n_pre = 0

    def update_pre(self, z: torch.Tensor, unit_dim: int) -> None:
        if "saturation" not in self.want or self.flat is None:
            return
        dims = reduce_dims(z, unit_dim)
        self.saturated += self.flat(z).sum(dims)
        self.n_pre += z.numel() // z.shape[unit_dim]

    def update_post(self, h: torch.Tensor, unit_dim: int) -> None:
        dims = reduce_dims(h, unit_dim)
        if "dormant" in self.want:
            self.abs_sum += torch.linalg.vector_norm(h.float(), ord=1, dim=dims)
        if "dead" in self.want:
            self.nonzero += torch.count_nonzero(h, dim=dims)
        self.n_post += h.numel() // h.shape[unit_dim]

    def finish(self, tau: float, min_fraction: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """metric -> (layer value, per-unit scores) as device tensors."""
        out = {}
        if "dormant" in self.want and self.n_post:
            score = redo_scores(self.abs_sum / self.n_post)
            out["dormant"] = ((score <= tau).float().mean(), score)
        if "dead" in self.want and self.n_post:
            frac = self.nonzero.double() / self.n_post
            out["dead"] = ((frac < min_fraction).float().mean(), frac)
        if "saturation" in self.want and self.n_pre:
            frac = self.saturated.double() / self.n_pre
            out["saturation"] = (frac.mean(), frac)
        return out


def redo_scores(mean_abs: torch.Tensor) -> torch.Tensor:
    """ReDo unit scores ``s_i = E|h_i| / (mean_k E|h_k| + 1e-9)`` from per-unit mean absolute activations."""
    return mean_abs / (mean_abs.mean() + REDO_EPS)


class FeatureRank:
    """Effective rank of pooled features, streamed: rows are kept until there are more than ``units``,
    then folded into the ``units x units`` Gram matrix (memory never exceeds ``units^2`` floats)."""

    def __init__(self, units: int, device: torch.device) -> None:
        self.units = units
        self.rows: list[torch.Tensor] = []
        self.n_rows = 0
        self.gram: torch.Tensor | None = None
        self.device = device

    def update(self, out: torch.Tensor, unit_dim: int) -> None:
        feats = pool(out, unit_dim).float()
        if self.gram is not None:
            self.gram += feats.T @ feats
            return
        self.rows.append(feats)
        self.n_rows += feats.shape[0]
        if self.n_rows > self.units:
            stacked = torch.cat(self.rows)
            self.gram = stacked.T @ stacked
            self.rows.clear()

    def finish(self) -> torch.Tensor | None:
        if self.gram is not None:
            g = self.gram.double()
        elif self.rows:
            x = torch.cat(self.rows).double()
            g = x @ x.T  # N x N, N <= units: the same nonzero spectrum
        else:
            return None
        lam = torch.linalg.eigvalsh(g)
        # eigenvalues under the fp32 rounding floor of the features are zeros, not tiny singular values
        floor = lam[-1] * g.shape[-1] * torch.finfo(torch.float32).eps
        return effective_rank(torch.where(lam > floor, lam, torch.zeros_like(lam)).sqrt())


def pool(out: torch.Tensor, unit_dim: int) -> torch.Tensor:
    """(batch, units) features: the mean over every axis but batch (axis 0) and the unit axis."""
    u = unit_dim % out.dim()
    if u == 0:
        raise ValueError("the unit axis cannot be the batch axis")
    dims = tuple(d for d in range(1, out.dim()) if d != u)
    return out.mean(dims) if dims else out


def effective_rank(sigma: torch.Tensor) -> torch.Tensor:
    """``exp(-sum p log p)``, ``p = sigma / sum sigma`` (0 log 0 = 0; all-zero spectrum: 0)."""
    total = sigma.sum()
    p = sigma / total.clamp_min(torch.finfo(sigma.dtype).tiny)
    ent = -(p * torch.log(p.clamp_min(torch.finfo(sigma.dtype).tiny))).sum()
    return torch.where(total > 0, ent.exp(), torch.zeros_like(ent))
