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

from plasticity_core.metrics.base import Accumulator, masked_fraction, masked_mean, register_metric, with_nan

DORMANT_TAU = 0.025
DEAD_FRACTION = 0.01
SATURATION_EPS = 0.01
REDO_EPS = 1e-9  # dopamine's estimate_neuron_score divides by mean(score) + 1e-9
NONNEG = {"relu", "relu6", "sigmoid", "hardsigmoid", "softplus"}  # outputs >= 0: |h| = h
BELOW_SIX = float(torch.nextafter(torch.tensor(6.0), torch.tensor(0.0)))  # the float32 just below 6

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
    """ReDo unit scores ``s_i = E|h_i| / (mean_k E|h_k| + 1e-9)`` (mean over units with finite statistics)."""
    if bad is None:
        return mean_abs / (mean_abs.mean() + REDO_EPS)
    return with_nan(mean_abs / (masked_mean(mean_abs, bad) + REDO_EPS), bad)


def dormant_mask(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """The one definition of a tau-dormant unit, used by the metric and by redo / targeted: ``s_i <= tau``.

    tau = 0 therefore means "exactly silent" (score <= 0, dopamine's rule), never "close to 0".
    """
    return scores <= tau


def reduce_dims(t: torch.Tensor, unit_dim: int) -> tuple[int, ...]:
    """All dimensions of ``t`` except the unit dimension."""
    u = unit_dim % t.dim()
    return tuple(d for d in range(t.dim()) if d != u)


class ActivationView:
    """One activation tensor of one layer in one batch; each per-unit reduction is computed once and shared.

    Every statistic is a float sum over positions per (sample, unit), then over samples: counts come from
    ``sign`` / ``ceil`` arithmetic rather than boolean masks (two to four times faster on CPU, exact: each
    per-sample count is an integer below 2^24), and a NaN or inf in the input makes the sum non-finite, so a
    broken unit can never pass for a healthy one (ReLU6's count of 6s uses ``threshold``, which maps NaN to 0:
    there the unit is caught by the abs-sum check every layer's statistics go through, and its score is NaN).
    """

    def __init__(self, t: torch.Tensor, unit_dim: int, act_type: str | None) -> None:
        self.act_type = act_type
        u = unit_dim % t.dim()
        if u == 0:
            raise ValueError("the unit axis cannot be the batch axis")
        self.t = t if t.dtype == torch.float32 else t.float()
        self.units = t.shape[u]
        self.positions = t.numel() // (t.shape[0] * self.units)  # per sample (space / tokens)
        self.count = self.positions * t.shape[0]  # inputs per unit (from the shape: no sync)
        self.unit_dim = u
        self._memo: dict[str, torch.Tensor] = {}

    def _per_sample(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, units): the sum of ``x`` (shaped like the activation) over positions."""
        if self.unit_dim == 1 and x.dim() > 2:
            return x.reshape(x.shape[0], self.units, -1).sum(-1)  # NCHW: contiguous inner reduction
        dims = tuple(d for d in range(1, x.dim()) if d != self.unit_dim)
        return x.sum(dims) if dims else x

    def _per_unit(self, x: torch.Tensor) -> torch.Tensor:
        """(units,) float64: the sum of ``x`` over batch and positions (a count, exact: fp32 holds integers < 2^24)."""
        if self.count >= 2 ** 24:  # a huge batch: per sample first (positions alone stay below 2^24)
            return self._per_sample(x).double().sum(0)
        if self.unit_dim == 1 and x.dim() > 2:
            return x.reshape(x.shape[0], self.units, -1).sum((0, 2)).double()
        return x.sum(tuple(d for d in range(x.dim()) if d != self.unit_dim)).double()

    def _get(self, key: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def pooled(self) -> torch.Tensor:
        """(batch, units) fp32: the mean over every axis but batch and units (Dohare et al.'s pooled features)."""
        return self._get("pooled", lambda: self._per_sample(self.t) / self.positions)

    def abs_sum(self) -> torch.Tensor:
        """Per-unit sum of |h| (fp32). Non-negative outputs reuse the pooled features (no second pass)."""
        if self.act_type in NONNEG:
            return self._get("abs_sum", lambda: self.pooled().sum(0) * self.positions)
        return self._get("abs_sum", lambda: self._per_sample(self.t.abs()).sum(0))

    def nonzero(self) -> torch.Tensor:
        """Per-unit count of nonzero entries (fp32 sums of |sign h|, exact integers)."""
        def count() -> torch.Tensor:
            sign = torch.sign(self.t)
            return self._per_unit(sign if self.act_type in NONNEG else sign.abs_())
        return self._get("nonzero", count)

    def at_most(self, lo: float) -> torch.Tensor:
        """Per-unit count of entries ``<= lo``."""
        if lo == 0.0 and self.act_type in ("relu", "relu6"):  # outputs >= 0: zero or positive
            return self.count - self.nonzero()
        # ceil(t - lo) <= 0 iff t <= lo (t - lo is exact near lo, Sterbenz); clamp to {0, 1}, count the zeros
        return self._get(f"le{lo}", lambda: self.count - self._per_unit((self.t - lo).ceil_().clamp_(0, 1)))

    def at_least(self, hi: float) -> torch.Tensor:
        """Per-unit count of entries ``>= hi``."""
        if self.act_type == "relu6" and hi == 6.0:  # outputs <= 6: count the entries equal to 6
            if 6 * self.count < 2 ** 24:  # one pass: threshold keeps exactly the 6s (sums of 6s exact in fp32)
                return self._get("ge6", lambda: self._per_unit(F.threshold(self.t, BELOW_SIX, 0.0)) / 6.0)
            return self._get("ge6", lambda: self._per_unit((self.t - 6.0).sign_()) + self.count)
        return self._get(f"ge{hi}", lambda: self.count - self._per_unit((hi - self.t).ceil_().clamp_(0, 1)))

    def outside(self, lo: float, hi: float) -> torch.Tensor:
        """Per-unit count of entries ``<= lo`` or ``>= hi`` (lo < hi)."""
        out = torch.zeros(self.units, dtype=torch.float64, device=self.t.device)
        if lo > -math.inf:
            out = out + self.at_most(lo)
        if hi < math.inf:
            out = out + self.at_least(hi)
        return out


@register_metric(
    "dormant", family="activations", needs="activations", unit_level=True, defaults={"tau": DORMANT_TAU}, version=2,
    definition="fraction of units with ReDo score s_i = E|h_i| / mean_k E|h_k| <= tau (tau = 0: exactly silent), "
               "h = the real activation module's output (conv: E over batch and space, fp32 sums); units() gives s_i",
)
class Dormant(Accumulator):
    def __init__(self, layer, device, *, tau: float) -> None:
        super().__init__(layer, device)
        self.tau = tau
        self.abs_sum = torch.zeros(layer.units, dtype=torch.float32, device=device)
        self.n = 0

    def update(self, view: ActivationView) -> None:
        self.abs_sum += view.abs_sum()
        self.n += view.count

    def finish(self, bad):
        if not self.n:
            return None
        score = redo_scores(self.abs_sum / self.n, bad)
        return masked_fraction(dormant_mask(score, self.tau), bad), score


@register_metric(
    "dead", family="activations", needs="activations", unit_level=True, defaults={"min_fraction": DEAD_FRACTION},
    version=2,
    definition="fraction of units whose activation output is nonzero on fewer than min_fraction (1 %) of inputs "
               "(conv: inputs = batch x positions; Dohare et al.); units() gives each unit's nonzero fraction",
)
class Dead(Accumulator):
    def __init__(self, layer, device, *, min_fraction: float) -> None:
        super().__init__(layer, device)
        self.min_fraction = min_fraction
        self.nonzero = torch.zeros(layer.units, dtype=torch.float64, device=device)
        self.n = 0

    def update(self, view: ActivationView) -> None:
        self.nonzero += view.nonzero()
        self.n += view.count

    def finish(self, bad):
        if not self.n:
            return None
        frac = with_nan(self.nonzero / self.n, bad)
        return masked_fraction(frac < self.min_fraction, bad), frac


@register_metric(
    "saturation", family="activations", needs="activations", unit_level=True, defaults={"eps": SATURATION_EPS},
    version=2,
    definition="fraction of (input, unit) pairs whose pre-activation z (the activation module's input) lies in a "
               "tail where phi'(z) < eps * max phi' (eps = 0.01: ReLU z<=0, ReLU6 also z>=6, GELU z<-3.02, SiLU "
               "z<-6.14, tanh |z|>2.99, sigmoid |z|>5.99, hard-swish z<=-3); units() gives the per-unit fraction",
)
class Saturation(Accumulator):
    def __init__(self, layer, device, *, eps: float) -> None:
        super().__init__(layer, device)
        self.lo, self.hi = flat_region(layer.act_type, float(eps))
        # ReLU / ReLU6 are monotone clamps: z <= 0 iff h == 0, z >= 6 iff h == 6, so the output suffices
        self.on_output = layer.act_type in ("relu", "relu6")
        self.count = torch.zeros(layer.units, dtype=torch.float64, device=device)
        self.n = 0

    @classmethod
    def applies(cls, layer) -> bool:
        return layer.act is not None and layer.act_type in ACT_FNS

    def hooks(self) -> tuple[str, ...]:
        return ("post",) if self.on_output else ("pre",)

    def _add(self, view: ActivationView) -> None:
        self.count += view.outside(self.lo, self.hi)
        self.n += view.count

    update = update_pre = _add

    def finish(self, bad):
        if not self.n:
            return None
        frac = with_nan(self.count / self.n, bad)
        return masked_mean(frac, bad), frac
