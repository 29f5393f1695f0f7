"""The metrics registry: every diagnostic is registered under a name with its definition, defaults and version.

Exports (parquet files, the dashboard's legend, configs) carry the versions, so numbers computed under an
older definition are never silently compared with newer ones. Bump ``version`` when a definition changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plasticity_core.registry import Registry

NEEDS = ("weights", "activations", "gradients")


@dataclass(frozen=True)
class MetricInfo:
    """A registered metric: what it measures (one line), its default parameters and what it needs to run."""

    name: str
    family: str  # weights | activations | features | gradients
    definition: str
    defaults: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    needs: str = "weights"  # weights | activations | gradients
    unit_level: bool = False  # Diagnosis.units(layer, name) gives one value per unit

    def __post_init__(self) -> None:
        if self.needs not in NEEDS:
            raise ValueError(f"metric {self.name!r}: needs must be one of {NEEDS}, got {self.needs!r}")


METRICS: Registry[MetricInfo] = Registry("metric")


def register_metric(**kwargs: Any) -> MetricInfo:
    """Register a metric (keyword arguments of ``MetricInfo``) and return its entry."""
    return METRICS.add(MetricInfo(**kwargs))
