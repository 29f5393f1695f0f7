"""``ReinitReport``: per layer, what a re-init changed (units/weights, SFE, DfI before/after, weight norms)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

COLUMNS = ["layer", "strategy", "units_touched", "weights_touched", "sfe", "sfe_rel", "dfi_before", "dfi_after",
           "dfi_si_before", "dfi_si_after", "norm_before", "norm_after"]


@dataclass
class ReinitReport:
    """Result of ``apply_reinit`` / ``preview_reinit``.

    ``table``: one row per touched layer (columns ``COLUMNS``); ``skipped``: (layer, reason) for every layer the
    config's patterns matched but the strategy left alone (excluded, unsupported, no unit pair...; layers no
    pattern matched are not listed); ``notes``: what the caller must know (e.g. BatchNorm not recalibrated);
    ``resolved_layers``: the layers the strategy acted on (matched and not skipped); ``step_callback``: for ``cbp`` the callable
    ``(model, optimizer, step)`` the training loop calls after each optimizer step, else None.
    """

    strategy: str
    table: pd.DataFrame
    skipped: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    resolved_layers: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    metric_versions: dict[str, int] = field(default_factory=dict)
    step_callback: Any = None

    def summary(self) -> dict[str, Any]:
        """Totals over layers: layers touched, units/weights touched, total SFE."""
        t = self.table
        return {"strategy": self.strategy, "layers": len(t), "units": int(t["units_touched"].sum()) if len(t) else 0,
                "weights": int(t["weights_touched"].sum()) if len(t) else 0,
                "sfe": float(t["sfe"].sum()) if len(t) else 0.0, "skipped": len(self.skipped)}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (tables as records; the cbp step callback is not kept)."""
        return {"strategy": self.strategy, "table": self.table.to_dict("records"),
                "skipped": self.skipped.to_dict("records"), "notes": list(self.notes),
                "resolved_layers": list(self.resolved_layers), "params": dict(self.params),
                "metric_versions": dict(self.metric_versions)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReinitReport":
        return cls(d["strategy"], pd.DataFrame(d["table"], columns=COLUMNS),
                   pd.DataFrame(d["skipped"], columns=["layer", "reason"]), list(d.get("notes", [])),
                   list(d.get("resolved_layers", [])), dict(d.get("params", {})), dict(d.get("metric_versions", {})))

    def __repr__(self) -> str:
        s = self.summary()
        return (f"ReinitReport({s['strategy']}: {s['layers']} layers, {s['units']} units, {s['weights']} weights, "
                f"SFE {s['sfe']:.4g}, {s['skipped']} skipped, {len(self.notes)} notes)")


def layer_row(layer: str, strategy: str, before: torch.Tensor, after: torch.Tensor, units: int, weights: int) -> dict[str, Any]:
    """One report row from a layer's weight before and after (metric functions of plasticity_core.metrics)."""
    from plasticity_core.metrics import dfi, dfi_si, fro_norm, sfe, sfe_rel

    before, after = before.detach().float(), after.detach().float()
    return {
        "layer": layer, "strategy": strategy, "units_touched": units, "weights_touched": weights,
        "sfe": float(sfe(after, before)), "sfe_rel": float(sfe_rel(after, before)),
        "dfi_before": float(dfi(before)), "dfi_after": float(dfi(after)),
        "dfi_si_before": float(dfi_si(before)), "dfi_si_after": float(dfi_si(after)),
        "norm_before": fro_norm(before), "norm_after": fro_norm(after),  # float64: the diagnosis' fro_norm
    }
