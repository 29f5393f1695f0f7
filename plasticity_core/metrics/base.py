"""The metrics registry: each diagnostic registers its name, definition, defaults, version and implementation.

A metric is one of two kinds:
- a weight metric: a function ``fn(view: WeightView, **params) -> 0-d tensor | None`` of one layer's weight
  (``None``: does not apply, e.g. ``sfe`` without a reference);
- a data metric: an ``Accumulator`` subclass, one instance per layer, fed on the device batch by batch and
  turned into (layer value, per-unit scores) once at the end.
``diagnose`` loops over what is registered and passes each metric exactly its declared parameters, so adding a
metric is one file with one decorated function or class. Exports carry the versions: bump ``version`` when a
definition changes, so numbers computed under an older definition are never silently compared with newer ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch

from plasticity_core.registry import Registry

if TYPE_CHECKING:
    from plasticity_core.layers import LayerInfo

NEEDS = ("weights", "activations", "gradients")
Result = tuple[torch.Tensor, "torch.Tensor | None"]  # (0-d layer value, per-unit scores or None)


@dataclass(frozen=True)
class MetricInfo:
    """A registered metric: what it measures (one line), defaults, version, what it needs and its implementation."""

    name: str
    family: str  # weights | activations | features | gradients | checks
    definition: str
    defaults: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    needs: str = "weights"  # weights | activations | gradients
    unit_level: bool = False  # Diagnosis.units(layer, name) gives one value per unit
    impl: Any = field(default=None, compare=False, repr=False)  # weight function or Accumulator subclass
    worse: str | None = None  # "high" (more is a sign of lost plasticity), "low" (less is), None (a description)
    plain: str = ""  # the metric in plain words, for heatmaps and reports

    def __post_init__(self) -> None:
        if self.needs not in NEEDS:
            raise ValueError(f"metric {self.name!r}: needs must be one of {NEEDS}, got {self.needs!r}")
        if self.worse not in ("high", "low", None):
            raise ValueError(f"metric {self.name!r}: worse must be 'high', 'low' or None, got {self.worse!r}")


METRICS: Registry[MetricInfo] = Registry("metric")

# Which way is worse and the plain words, for the metrics registered in this package (a metric of its own passes
# ``worse=`` / ``plain=`` to ``register_metric``).
WORSE: dict[str, str] = {
    "dormant": "high", "dead": "high", "saturation": "high", "grad_dormant": "high", "dfi": "high", "dfi_si": "high",
    "nonfinite": "high", "feature_erank": "low", "stable_rank": "low", "grad_norm": "low",
}
PLAIN: dict[str, str] = {
    "sfe": "how far the weights moved from the pretrained ones (0 before any training)",
    "sfe_rel": "that movement relative to the pretrained weights' size",
    "dfi": "how far the weight matrix is from an isometry (0 = orthogonal)",
    "dfi_si": "the same, ignoring scale: 0 when all singular values are equal",
    "fro_norm": "size of the weights",
    "spectral_norm": "largest stretch the layer applies to any input",
    "stable_rank": "how many directions the weights really use",
    "dormant": "share of units that are almost silent on your data",
    "dead": "share of units that (almost) never fire on your data",
    "saturation": "share of inputs landing where the activation is flat (no gradient passes)",
    "feature_erank": "how many independent features the layer's output carries on your data",
    "grad_norm": "how strongly your data's loss pulls on the weights",
    "grad_dormant": "share of units that receive almost no gradient from your data",
    "nonfinite": "NaN or infinite values found in the layer (weights, activations or gradients)",
}


def worse(metric: str) -> str | None:
    """"high", "low" or None (no better/worse direction) for a metric name (None for an unknown name)."""
    return METRICS.get(metric).worse if metric in METRICS else WORSE.get(metric)


def plain(metric: str) -> str:
    """The metric in plain words (empty when none is written down)."""
    return METRICS.get(metric).plain if metric in METRICS else PLAIN.get(metric, "")


def register_metric(name: str, **kwargs: Any) -> Callable[[Any], Any]:
    """Decorator: register the decorated weight function or ``Accumulator`` class under ``name``.

    Keyword arguments are the other ``MetricInfo`` fields. Returns the implementation unchanged.
    """
    kwargs.setdefault("worse", WORSE.get(name))
    kwargs.setdefault("plain", PLAIN.get(name, ""))

    def wrap(impl: Any) -> Any:
        METRICS.add(MetricInfo(name=name, impl=impl, **kwargs))
        return impl

    return wrap


class Accumulator:
    """One layer's streaming statistic for a data metric.

    ``reads`` names the hooks it needs: "post" (the activation module's output), "pre" (its input), "out" (the
    weight layer's output), "grad" (the gradient of that output), "wgrad" (the weight's gradient). Updates run
    on the device and never synchronise with the host; ``finish`` runs once after the last batch.
    """

    reads: ClassVar[tuple[str, ...]] = ("post",)

    def __init__(self, layer: "LayerInfo", device: torch.device, **params: Any) -> None:
        self.layer, self.device, self.params = layer, device, params

    @classmethod
    def applies(cls, layer: "LayerInfo") -> bool:
        """Whether the metric is defined for this layer (e.g. activation metrics need an activation module)."""
        return layer.act is not None

    def hooks(self) -> tuple[str, ...]:
        """The hooks this instance needs (may depend on the layer, e.g. saturation of ReLU reads only "post")."""
        return self.reads

    def update(self, view: Any) -> None:  # "post": an ActivationView of the activation output
        raise NotImplementedError

    def update_pre(self, view: Any) -> None:  # "pre": an ActivationView of the activation input
        raise NotImplementedError

    def update_out(self, out: torch.Tensor) -> None:  # "out": the layer's output (its rows of a fused qkv)
        raise NotImplementedError

    def update_grad(self, grad: torch.Tensor) -> None:  # "grad": dL/d(output), per-sample losses summed
        raise NotImplementedError

    def update_wgrad(self, grad: torch.Tensor, samples: int) -> None:  # "wgrad": dL/dW of one batch
        raise NotImplementedError

    def finish(self, bad: torch.Tensor | None) -> Result | None:
        """(layer value, per-unit scores) as device tensors. ``bad``: per-unit mask of units whose probe data
        held non-finite values (their scores are NaN, the layer value is over the other units)."""
        raise NotImplementedError

    @classmethod
    def finish_all(cls, accs: Sequence["Accumulator"], bad: Sequence[torch.Tensor | None]) -> list[Result | None]:
        """Finish every layer's instance; override to batch the last step across layers (one decomposition)."""
        return [a.finish(b) for a, b in zip(accs, bad)]


def masked_fraction(flags: torch.Tensor, bad: torch.Tensor | None) -> torch.Tensor:
    """Fraction of units flagged among those with finite statistics (NaN when no unit has any), over the last axis."""
    if bad is None:
        return flags.double().mean(-1)
    return torch.where(bad, float("nan"), flags.double()).nanmean(-1)


def masked_mean(values: torch.Tensor, bad: torch.Tensor | None) -> torch.Tensor:
    """Mean over the units with finite statistics (NaN when no unit has any), over the last axis."""
    if bad is None:
        return values.mean(-1)
    return torch.where(bad, float("nan"), values).nanmean(-1)


def with_nan(scores: torch.Tensor, bad: torch.Tensor | None) -> torch.Tensor:
    """Per-unit scores with the units fed non-finite values set to NaN (undefined, never a silent number)."""
    if bad is None:
        return scores
    return torch.where(bad, float("nan"), scores)


class UnitRows(Accumulator):
    """An ``Accumulator`` whose layers are finished all at once: each adds per-unit counts or sums into ``total``
    (float64) over its ``n`` inputs (``add``), and ``finish_all`` hands ``finish_rows`` those of every layer with the
    same ``key()`` (its parameters) as rows of one NaN-padded (layers, units) float64 tensor of ``total / n``, with
    the mask of ``bad`` units and of the padding: a few tensor operations per metric, not a few per layer. A layer
    that saw no data has no value."""

    def __init__(self, layer: "LayerInfo", device: torch.device, **params: Any) -> None:
        super().__init__(layer, device, **params)
        self.total = torch.zeros(layer.units, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, per_unit: torch.Tensor, inputs: int) -> None:
        """Add one batch: ``per_unit`` totals over its ``inputs`` (batch x positions) per unit."""
        self.total += per_unit
        self.n += inputs

    def key(self) -> Any:
        return None

    @classmethod
    def finish_rows(cls, first: "UnitRows", rows: torch.Tensor,
                    mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(layer values, per-unit scores as rows) of a group, ``first`` one of its accumulators (its parameters)."""
        raise NotImplementedError

    def finish(self, bad: torch.Tensor | None) -> Result | None:
        return self.finish_all([self], [bad])[0]

    @classmethod
    def finish_all(cls, accs: Sequence["UnitRows"], bad: Sequence[torch.Tensor | None]) -> list[Result | None]:
        out: list[Result | None] = [None] * len(accs)
        groups: dict[Any, list[int]] = {}
        for i, a in enumerate(accs):
            if a.n:
                groups.setdefault(a.key(), []).append(i)
        for idx in groups.values():
            first = accs[idx[0]]
            dev = first.device
            n = torch.tensor([float(accs[i].n) for i in idx], dtype=torch.float64, device=dev)
            rows = torch.nn.utils.rnn.pad_sequence([accs[i].total for i in idx], batch_first=True,
                                                   padding_value=float("nan")).double() / n[:, None]
            masks = [bad[i] if bad[i] is not None else torch.zeros(accs[i].layer.units, dtype=torch.bool, device=dev)
                     for i in idx]
            values, units = cls.finish_rows(first, rows, torch.nn.utils.rnn.pad_sequence(masks, batch_first=True,
                                                                                        padding_value=True))
            for k, i in enumerate(idx):
                out[i] = (values[k], units[k, :accs[i].layer.units])
        return out
