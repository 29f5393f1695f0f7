"""Activation metrics: dormant (ReDo), dead (continual backprop) and saturation, from the real activation module.

Each is an ``Accumulator`` fed from hooks on the layer's activation module (``LayerInfo.act``): per-unit sums
and counts live on the device (sums in fp32, counts as exact float64 sums) and become scores only in ``finish``. The unit
axis is ``LayerInfo.unit_dim`` (1 for NCHW conv activations, -1 for tokens / linear); every other axis (batch,
space, tokens) counts as "inputs", so a conv unit's statistics average over batch and space. The three
statistics share one ``ActivationView`` per activation call, which computes each per-unit reduction once
(for ReLU-family outputs the dormancy sum comes from the pooled features and saturation from the nonzero
count, so ReLU saturation needs no pre-activation hook at all).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F

from plasticity_core.metrics import onepass
from plasticity_core.metrics.base import UnitRows, masked_fraction, masked_mean, register_metric, with_nan

DORMANT_TAU = 0.025
DEAD_FRACTION = 0.01
SATURATION_EPS = 0.01
REDO_EPS = 1e-9  # dopamine's estimate_neuron_score divides by mean(score) + 1e-9
NONNEG = {"relu", "relu6", "sigmoid", "hardsigmoid", "softplus"}  # outputs >= 0: |h| = h

ACT_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "relu6": F.relu6, "gelu": F.gelu, "silu": F.silu, "mish": F.mish,
    "quick_gelu": lambda z: z * torch.sigmoid(1.702 * z), "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "softplus": F.softplus, "elu": F.elu,
    "celu": F.celu, "selu": F.selu,
}


@functools.lru_cache(maxsize=None)
def flat_region(act_type: str, eps: float = SATURATION_EPS) -> tuple[float, float]:
    """``(lo, hi)``: the activation's derivative is below ``eps`` times its maximum for ``z <= lo`` and ``z >= hi``.

    Tails only (interior notches of GELU / SiLU / Mish / hard-swish are not saturation); found by autograd on
    a float64 grid of step 1e-4 over [-30, 30], a tail reaching the grid's end extends to infinity.
    """
    z = (torch.arange(-300_000, 300_001, dtype=torch.float64) / 10_000).requires_grad_(True)
    (g,) = torch.autograd.grad(ACT_FNS[act_type](z).sum(), z)
    g, z = g.abs(), z.detach()
    flat = g < eps * g.max()
    live = (~flat).nonzero().flatten()
    if live.numel() == 0:
        return math.inf, -math.inf
    first, last = int(live[0]), int(live[-1])
    lo = float(z[first - 1]) if first > 0 else -math.inf
    hi = float(z[last + 1]) if last + 1 < z.numel() else math.inf
    return lo, hi


def _region_fn(act: str) -> Callable[[torch.Tensor], torch.Tensor]:
    lo, hi = flat_region(act)
    return lambda z: (z <= lo) | (z >= hi)


# Region where |phi'(z)| < 1 % of max |phi'| (default eps): the table in docs/methods.md (Metrics), re-derived for any eps above.
FLAT_REGION: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {a: _region_fn(a) for a in ACT_FNS}


def redo_scores(mean_abs: torch.Tensor, bad: torch.Tensor | None = None) -> torch.Tensor:
    """ReDo unit scores ``s_i = E|h_i| / (mean_k E|h_k| + 1e-9)`` (mean over units with finite statistics), over
    the last axis (one row per layer)."""
    return with_nan(mean_abs / (masked_mean(mean_abs, bad)[..., None] + REDO_EPS), bad)


def dormant_mask(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """The one definition of a tau-dormant unit, used by the metric and by redo / targeted: ``s_i <= tau``.

    tau = 0 therefore means "exactly silent" (score <= 0, dopamine's rule), never "close to 0".
    """
    return scores <= tau


FEW_POSITIONS = 64  # below this many positions per (sample, unit), summing them is a matrix-vector product


def sum_last(x: torch.Tensor) -> torch.Tensor:
    """The sum of a contiguous ``x`` over its last axis. Fewer than ``FEW_POSITIONS`` entries there: a
    matrix-vector product with ones (a CPU reduction over 4 contiguous floats per row costs five times the
    product; integer-valued sums below 2^24 are exact either way)."""
    p = x.shape[-1]
    if p >= FEW_POSITIONS:
        return x.sum(-1)
    return torch.mv(x.reshape(-1, p), _ones(p, x.dtype, x.device)).view(x.shape[:-1])


@functools.lru_cache(maxsize=256)
def _ones(p: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.ones(p, dtype=dtype, device=device)


def reduce_dims(t: torch.Tensor, unit_dim: int) -> tuple[int, ...]:
    """All dimensions of ``t`` except the unit dimension."""
    u = unit_dim % t.dim()
    return tuple(d for d in range(t.dim()) if d != u)


class Scratch:
    """One reusable buffer for the elementwise results whose sums the statistics take (the 0/1 comparisons of the
    counts, ``|h|``), owned by one diagnosis pass. A fresh activation-sized tensor per hook costs more than the transform on
    the CPU: glibc hands large blocks back to the system and every reuse page-faults them in again (mobilenetv2_100
    at 64 px: ~10,000 extra minor faults per 4 batches)."""

    def __init__(self) -> None:
        self._buf: torch.Tensor | None = None

    def like(self, t: torch.Tensor) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``t``'s shape, dtype and device (valid until the next call)."""
        n = t.numel()
        b = self._buf
        if b is None or b.numel() < n or b.dtype != t.dtype or b.device != t.device:
            b = self._buf = torch.empty(n, dtype=t.dtype, device=t.device)
        return b[:n].view(t.shape)


class ActivationView:
    """One activation tensor of one layer in one batch; each per-unit reduction is computed once and shared.

    Every statistic is a float sum over positions per (sample, unit), then over samples. Counts are sums of
    comparisons written as 0.0 / 1.0 floats into one scratch buffer (exact: integers below 2^24). A comparison
    maps NaN to a definite 0 or 1, so counts alone cannot flag a broken unit: the per-unit sum of ``|h|``, which
    every layer's statistics go through (``_Probe._check`` in diagnose), turns non-finite for any NaN or inf, and
    that unit's scores are NaN and left out of the layer's value. A contiguous NCHW float32 activation on the CPU
    takes its sums and counts from one read (``onepass``, with numba; per-unit totals in float64) when the bounds
    asked for are the activation's default flat region; anything else takes torch's passes, with the same counts.
    """

    def __init__(self, t: torch.Tensor, unit_dim: int, act_type: str | None, scratch: Scratch | None = None) -> None:
        self.act_type = act_type
        self.scratch = scratch if scratch is not None else Scratch()
        u = unit_dim % t.dim()
        if u == 0:
            raise ValueError("the unit axis cannot be the batch axis")
        self.t = t if t.dtype == torch.float32 else t.float()
        self.units = t.shape[u]
        self.positions = t.numel() // (t.shape[0] * self.units)  # per sample (space / tokens)
        self.count = self.positions * t.shape[0]  # inputs per unit (from the shape: no sync)
        self.unit_dim = u
        self.bounds = flat_region(act_type) if act_type in ACT_FNS else (-math.inf, math.inf)
        self.eligible = onepass.eligible(self.t, u)  # the layout the one-pass kernel reads
        self.onepass = self.eligible and onepass.ready()
        self._pass: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        self._memo: dict[str, torch.Tensor] = {}

    def _per_sample(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, units): the sum of ``x`` (shaped like the activation) over positions."""
        if self.unit_dim == 1 and x.dim() > 2:
            return sum_last(x.reshape(x.shape[0], self.units, -1))  # NCHW: contiguous inner reduction
        dims = tuple(d for d in range(1, x.dim()) if d != self.unit_dim)
        return x.sum(dims) if dims else x

    def _per_unit(self, x: torch.Tensor) -> torch.Tensor:
        """(units,): the sum of the 0/1 ``x`` over batch and positions, a count: fp32, exact below 2^24 inputs per
        unit (the accumulators add it into float64); float64 from a larger batch on."""
        if self.count >= 2 ** 24:  # a huge batch: per sample first (positions alone stay below 2^24)
            return self._per_sample(x).double().sum(0)
        if self.unit_dim == 1 and x.dim() > 2:
            if self.positions < FEW_POSITIONS:  # over the batch first (whole rows), then the few positions
                return sum_last(x.sum(0).reshape(self.units, -1))
            return x.reshape(x.shape[0], self.units, -1).sum((0, 2))
        return x.sum(tuple(d for d in range(x.dim()) if d != self.unit_dim))

    def _one(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The one-pass kernel's per-sample sums and per-unit float64 totals (``onepass.TOTALS``), one read of ``t``."""
        if self._pass is None:
            relu = self.act_type in ("relu", "relu6") and self.bounds[0] == 0.0
            sums, totals = onepass.stats(self.t, *self.bounds, relu=relu)
            self._pass = (sums, dict(zip(onepass.TOTALS, totals)))
        return self._pass

    def _buf(self) -> torch.Tensor:
        """The scratch tensor for one elementwise transform of ``t`` (reduced before the next one is formed)."""
        return self.scratch.like(self.t)

    def _get(self, key: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def sums(self) -> torch.Tensor:
        """(batch, units) fp32: the sum over every axis but batch and units."""
        if self.onepass:
            return self._one()[0]
        return self._get("sums", lambda: self._per_sample(self.t))

    def pooled(self) -> torch.Tensor:
        """(batch, units) fp32: the mean over every axis but batch and units (Dohare et al.'s pooled features)."""
        return self._get("pooled", lambda: self.sums() / self.positions)

    def abs_sum(self) -> torch.Tensor:
        """Per-unit sum of |h| (fp32; float64 from the one-pass kernel). Non-negative outputs reuse the per-sample sums."""
        if self.onepass:
            return self._one()[1]["abs_sum"]
        if self.act_type in NONNEG:
            return self._get("abs_sum", lambda: self.sums().sum(0))
        return self._get("abs_sum", lambda: self._per_sample(torch.abs(self.t, out=self._buf())).sum(0))

    def _count(self, key: str, compare: Callable[..., torch.Tensor], value: float) -> torch.Tensor:
        """Per-unit count of the entries where ``compare(t, value)`` holds: the comparison written as 0.0 / 1.0
        into the scratch buffer, then summed (one pass; no boolean tensor, whose sum is several times slower on the
        CPU; exact: integers below 2^24)."""
        return self._get(key, lambda: self._per_unit(compare(self.t, value, out=self._buf())))

    def nonzero(self) -> torch.Tensor:
        """Per-unit count of nonzero entries."""
        if self.onepass:
            return self._one()[1]["nonzero"]
        return self._count("nonzero", torch.ne, 0.0)

    def at_most(self, lo: float) -> torch.Tensor:
        """Per-unit count of entries ``<= lo``."""
        if self.onepass and lo == self.bounds[0]:
            return self._one()[1]["at_most"]
        if lo == 0.0 and self.act_type in ("relu", "relu6"):  # outputs >= 0: zero or positive (shared with dead)
            return self.count - self.nonzero()
        return self._count(f"le{lo}", torch.le, lo)

    def at_least(self, hi: float) -> torch.Tensor:
        """Per-unit count of entries ``>= hi``."""
        if self.onepass and hi == self.bounds[1]:
            return self._one()[1]["at_least"]
        return self._count(f"ge{hi}", torch.ge, hi)

    def outside(self, lo: float, hi: float) -> torch.Tensor:
        """Per-unit count of entries ``<= lo`` or ``>= hi`` (lo < hi)."""
        if self.onepass and (lo, hi) == self.bounds:
            return self._one()[1]["outside"]
        if lo > -math.inf and hi < math.inf:
            return self.at_most(lo) + self.at_least(hi)
        if lo > -math.inf:
            return self.at_most(lo)
        if hi < math.inf:
            return self.at_least(hi)
        return torch.zeros(self.units, dtype=torch.float64, device=self.t.device)


@register_metric(
    "dormant", family="activations", needs="activations", unit_level=True, defaults={"tau": DORMANT_TAU}, version=2,
    definition="fraction of units with ReDo score s_i = E|h_i| / mean_k E|h_k| <= tau (tau = 0: exactly silent), "
               "h = the real activation module's output (conv: E over batch and space, fp32 sums); units() gives s_i",
)
class Dormant(UnitRows):
    def __init__(self, layer, device, *, tau: float) -> None:
        super().__init__(layer, device)
        self.tau = tau

    def update(self, view: ActivationView) -> None:
        self.add(view.abs_sum(), view.count)

    def key(self):
        return self.tau

    @classmethod
    def finish_rows(cls, first, mean_abs, mask):
        score = redo_scores(mean_abs, mask)
        return masked_fraction(dormant_mask(score, first.tau), mask), score


@register_metric(
    "dead", family="activations", needs="activations", unit_level=True, defaults={"min_fraction": DEAD_FRACTION},
    version=2,
    definition="fraction of units whose activation output is nonzero on fewer than min_fraction (1 %) of inputs "
               "(conv: inputs = batch x positions; Dohare et al.); units() gives each unit's nonzero fraction",
)
class Dead(UnitRows):
    def __init__(self, layer, device, *, min_fraction: float) -> None:
        super().__init__(layer, device)
        self.min_fraction = min_fraction

    def update(self, view: ActivationView) -> None:
        self.add(view.nonzero(), view.count)

    def key(self):
        return self.min_fraction

    @classmethod
    def finish_rows(cls, first, live, mask):
        frac = with_nan(live, mask)
        return masked_fraction(frac < first.min_fraction, mask), frac


@register_metric(
    "saturation", family="activations", needs="activations", unit_level=True, defaults={"eps": SATURATION_EPS},
    version=2,
    definition="fraction of (input, unit) pairs whose pre-activation z (the activation module's input) lies in a "
               "tail where phi'(z) < eps * max phi' (eps = 0.01: ReLU z<=0, ReLU6 also z>=6, GELU z<-3.02, SiLU "
               "z<-6.14, tanh |z|>2.99, sigmoid |z|>5.99, hard-swish z<=-3); units() gives the per-unit fraction",
)
class Saturation(UnitRows):
    def __init__(self, layer, device, *, eps: float) -> None:
        super().__init__(layer, device)
        self.lo, self.hi = flat_region(layer.act_type, float(eps))
        # ReLU / ReLU6 are monotone clamps: z <= 0 iff h == 0, z >= 6 iff h == 6, so the output suffices
        self.on_output = layer.act_type in ("relu", "relu6")

    @classmethod
    def applies(cls, layer) -> bool:
        return layer.act is not None and layer.act_type in ACT_FNS

    def hooks(self) -> tuple[str, ...]:
        return ("post",) if self.on_output else ("pre",)

    def _add(self, view: ActivationView) -> None:
        self.add(view.outside(self.lo, self.hi), view.count)

    update = update_pre = _add

    def key(self):
        return self.lo, self.hi

    @classmethod
    def finish_rows(cls, first, flat, mask):
        frac = with_nan(flat, mask)
        return masked_mean(frac, mask), frac

