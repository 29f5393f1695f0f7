"""``Diagnosis``: the result of ``diagnose`` as tables, per-unit scores and metadata, saved to parquet losslessly.

On disk it is one parquet table: the long table (layer, metric, value) plus a ``units`` list column (null for
layer-level metrics), and the metadata as JSON under the ``plasticity.meta`` key of the parquet schema.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from plasticity_core.errors import UnknownNameError
from plasticity_core.files import write_atomic
from plasticity_core.metrics import onepass, weight_kernels
from plasticity_core.metrics.base import METRICS

META_KEY = b"plasticity.meta"


class Diagnosis:
    """Per-layer metrics: ``table`` (long), ``wide()``, ``units(layer, metric)``, ``meta``, ``recommend()``."""

    def __init__(self, table: pd.DataFrame, units: dict[tuple[str, str], np.ndarray], meta: dict[str, Any]) -> None:
        self.table = table
        self._units = units
        self.meta = meta

    @classmethod
    def from_rows(cls, rows: list[tuple[str, str, float]], units: dict, meta: dict) -> "Diagnosis":
        if rows:  # built from columns: a fifth of the time of inferring from rows
            layer, metric, value = zip(*rows)
            table = pd.DataFrame({"layer": list(layer), "metric": list(metric), "value": np.array(value, np.float64)})
        else:
            table = pd.DataFrame(rows, columns=["layer", "metric", "value"]).astype({"value": "float64"})
        return cls(table, units, meta)

    @property
    def layer_names(self) -> list[str]:
        """Every layer of the model in network order (also those without any value)."""
        return [l["name"] for l in self.meta.get("layers", [])] or list(dict.fromkeys(self.table["layer"]))

    @property
    def metrics(self) -> list[str]:
        """Metrics present, in registry order."""
        present = set(self.table["metric"])
        return [m for m in METRICS.names() if m in present] + sorted(present - set(METRICS.names()))

    def layers(self) -> pd.DataFrame:
        """The layer map the diagnosis was computed on (name, kind, units, params, group, flags)."""
        return pd.DataFrame(self.meta.get("layers", []))

    def wide(self) -> pd.DataFrame:
        """Layer x metric table in network order (NaN only where a metric does not apply to a layer)."""
        order = [n for n in self.layer_names if n in set(self.table["layer"])]
        wide = self.table.pivot(index="layer", columns="metric", values="value")
        return wide.reindex(index=order, columns=self.metrics).rename_axis(columns=None)

    def units(self, layer: str, metric: str) -> np.ndarray:
        """One score per unit of ``layer`` for a unit-level metric (dormant, dead, saturation, grad_dormant)."""
        try:
            return self._units[(layer, metric)]
        except KeyError:
            have = sorted({m for (l, m) in self._units if l == layer})
            if metric in METRICS and not METRICS[metric].unit_level:
                why = f"{metric!r} is a layer-level metric"
            elif layer not in self.layer_names:
                why = f"unknown layer {layer!r}"
            else:
                why = f"no per-unit {metric!r} for {layer!r} (not requested, or the layer has no activation)"
            raise UnknownNameError(f"{why}; unit metrics of this layer: {have}") from None

    def unit_keys(self) -> list[tuple[str, str]]:
        return list(self._units)

    def save(self, path: str | Path) -> None:
        """Write one parquet file: long table + ``units`` list column + metadata (lossless round trip)."""
        units = [self._units.get((l, m)) for l, m in zip(self.table["layer"], self.table["metric"])]
        table = pa.table({
            "layer": pa.array(self.table["layer"].tolist(), pa.string()),
            "metric": pa.array(self.table["metric"].tolist(), pa.string()),
            "value": pa.array(self.table["value"].to_numpy(np.float64), pa.float64()),
            "units": pa.array([None if u is None else u.tolist() for u in units], pa.list_(pa.float64())),
        })
        table = table.replace_schema_metadata({META_KEY: json.dumps(self.meta).encode()})
        write_atomic(path, lambda f: pq.write_table(table, f))

    @classmethod
    def load(cls, path: str | Path) -> "Diagnosis":
        t = pq.read_table(str(path))
        raw = (t.schema.metadata or {}).get(META_KEY)
        if raw is None:
            raise ValueError(f"{path}: not a plasticity diagnosis (no {META_KEY.decode()} metadata)")
        cols = t.to_pydict()
        rows = list(zip(cols["layer"], cols["metric"], cols["value"]))
        units = {(l, m): np.asarray(u, dtype=np.float64)
                 for l, m, u in zip(cols["layer"], cols["metric"], cols["units"]) if u is not None}
        return cls.from_rows(rows, units, json.loads(raw))

    def slow_path_note(self) -> str | None:
        """One line naming the slower paths this diagnosis took (None when none): layers whose ``sigma_1`` came from
        the exact-SVD fallback, sigma_1 on the CPU without the compiled Lanczos kernel, and activation statistics on
        the CPU without the one-pass kernel (and why)."""
        notes = []
        slow = self.meta.get("weights_slow_path", {}).get("layers", [])
        if slow:
            notes.append(f"sigma_1 of {len(slow)} layer(s) came from an exact SVD (Lanczos not converged in its step "
                         f"limit: exact, only slower): {', '.join(slow[:8])}" + (" ..." if len(slow) > 8 else ""))
        spectral = self.meta.get("spectral_path") or ""
        if spectral.startswith(weight_kernels.SLOWER):
            notes.append(f"sigma_1 took {spectral} (the same values to rounding, slower)")
        act = self.meta.get("activation_pass") or ""
        if act.startswith(onepass.SLOWER):
            notes.append(f"activation statistics took {act} (the same values, slower)")
        return ". ".join(notes) or None

    def recommend(self, budget: float | int = 0.25, min_score: float = 0.05) -> "Recommendation":
        """Rank layers by plasticity loss and propose a layer selection and strategy (see ``recommend``)."""
        from plasticity_core.metrics.recommend import recommend

        return recommend(self, budget=budget, min_score=min_score)

    def __repr__(self) -> str:
        m = self.meta
        return (f"Diagnosis({m.get('model', '?')}: {self.table['layer'].nunique()} layers x {len(self.metrics)} "
                f"metrics, {m.get('samples', 0)} samples on {m.get('device', '?')})")


from plasticity_core.metrics.recommend import Recommendation  # noqa: E402  (type of recommend())
