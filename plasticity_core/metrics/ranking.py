"""Reading a diagnosis: the k worst layers by one metric, and how a diagnosis changed against an earlier one of the
same model (before / after a re-init, or between fine-tuning checkpoints)."""
from __future__ import annotations

import pandas as pd

from plasticity_core.directions import worse


def top_layers(wide: pd.DataFrame, metric: str, k: int = 10) -> pd.DataFrame:
    """rank, layer, value of the ``k`` worst layers by ``metric`` (its direction: highest first for "higher is
    worse", lowest first for "lower is worse", highest first without one); layers without a value are left out."""
    if metric not in wide.columns:
        raise KeyError(f"no metric {metric!r} in this diagnosis (it has {', '.join(wide.columns)})")
    col = wide[metric].dropna()
    ordered = col.sort_values(ascending=worse(metric) == "low", kind="stable").head(max(0, int(k)))
    return pd.DataFrame({"rank": range(1, len(ordered) + 1), "layer": ordered.index, "value": ordered.to_numpy()})


def diagnosis_change(before: pd.DataFrame, after: pd.DataFrame, metric: str) -> pd.DataFrame:
    """layer, before, after, change (after - before) of one metric, on the layers both wide tables have (``after``'s
    order); a layer where either value is missing keeps NaN in ``change``."""
    if metric not in before.columns or metric not in after.columns:
        raise KeyError(f"metric {metric!r} is not in both diagnoses")
    layers = [layer for layer in after.index if layer in before.index]
    b, a = before.loc[layers, metric].to_numpy(float), after.loc[layers, metric].to_numpy(float)
    return pd.DataFrame({"layer": layers, "before": b, "after": a, "change": a - b})
