"""From a diagnosis to a starting point: which layers to re-initialise, with which strategy, and why.

The score of a layer is the fraction of its units that are *impaired*, i.e. flagged by at least one
unit-level criterion measured on the target data:
  - dormant: ReDo score ``s_i <= tau`` (the unit's output is negligible next to its layer's),
  - dead: nonzero on fewer than 1 % of inputs,
  - saturated: pre-activation in the flat region on more than 99 % of inputs (docs/methods.md, Metrics: saturation),
  - gradient-starved: ReDo score of ``|dL/dh_i|`` ``<= tau`` (the unit's incoming weights barely move).
Why this score: each criterion names a unit that cannot currently learn on the target task (no output, no
gradient, or zero derivative), which is what loss of plasticity means; a union of per-unit flags is
interpretable ("38 % of layer4.1.conv1's units are impaired"), lies in [0, 1] and is comparable across
layers and models, unlike raw DfI/SFE whose scale depends on the layer. Weight metrics are reported next to
it but do not enter the score: a pretrained layer far from isometry may be perfectly plastic.
Ties (and equal scores) are broken by the relative gradient ``(grad_norm / fro_norm)`` over its median
(lower first), then by depth (deeper first: the most task-specific layers).

Selection: eligible layers (not the head, not grouped/depthwise convs, not patch embeddings) with
``score >= min_score``, best first, while their weights fit in the budget (a fraction of the eligible
weight parameters when ``budget <= 1.0`` is a float, else a number of layers); then layers whose impaired share is
more than ``MARGIN`` (15 points) below the chosen set's unit-weighted share are left out and named in the reason,
so the one fraction (or whole-matrix re-init) never lands mostly on healthy units of a small layer. Strategy: ``reset`` when
the chosen layers are almost entirely impaired (>= 90 %: nothing pretrained worth keeping), ``fire`` when
most units are (>= 50 %: re-init the whole matrix but as close to the pretrained one as an isometry allows),
else ``targeted`` re-init of the impaired fraction of units, scored by dormancy when dormant/dead units dominate
(ReDo's score; ``redo`` itself would skip layers without an explicit (in, out) unit pair) and by saturation or
gradient when saturated or gradient-starved units do. If no layer reaches ``min_score``, the deepest eligible
layers within budget get ``fire``, the usual "re-init the top layers" starting point, and the reason says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from plasticity_core.metrics.base import METRICS

if TYPE_CHECKING:
    from plasticity_core.metrics.diagnosis import Diagnosis

SATURATED_UNIT = 0.99
RESET_AT, FIRE_AT = 0.9, 0.5


@dataclass
class Recommendation:
    """Ranked layers (score and its parts), proposed layers, strategy and params, and the reason in words."""

    ranking: pd.DataFrame
    layers: list[str]
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    head_seed: int = 0  # the seed of the fresh head the diagnosis ran through (0 when it used the model's own head)
    head_probe_steps: int = 0  # steps of the linear probe of that head before the diagnosis (0: none)

    def to_config(self, seed: int = 0):
        """The proposal as a ``ReinitConfig``: strategy, params, layers, ``seed`` and the diagnosis' head seed."""
        from plasticity_core.config import ReinitConfig

        return ReinitConfig(strategy=self.strategy, layers=list(self.layers), params=dict(self.params), seed=seed,
                            head_seed=self.head_seed, head_probe_steps=self.head_probe_steps,
                            resolved_layers=list(self.layers))

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "strategy": self.strategy, "params": self.params, "reason": self.reason,
                "ranking": self.ranking.to_dict(orient="records")}


def _param(params: dict[str, dict[str, Any]], metric: str, name: str) -> Any:
    """Parameter ``name`` of ``metric`` as the diagnosis recorded it, else its registered default."""
    return params.get(metric, {}).get(name, METRICS.get(metric).defaults[name])


def _flags(d: "Diagnosis", layer: str, units: int) -> dict[str, np.ndarray]:
    """Per-unit boolean flags of one layer for every criterion the diagnosis has."""
    params = d.meta.get("metric_params", {})
    tau = _param(params, "dormant", "tau")  # the diagnosis' own thresholds, else the registered defaults
    gtau = _param(params, "grad_dormant", "tau")
    min_frac = _param(params, "dead", "min_fraction")
    rules = {"dormant": lambda s: s <= tau, "dead": lambda s: s < min_frac,
             "saturation": lambda s: s > SATURATED_UNIT, "grad_dormant": lambda s: s <= gtau}
    out = {}
    for metric, rule in rules.items():
        if (layer, metric) in d.unit_keys():
            s = d.units(layer, metric)
            if s.size == units:
                out[metric] = rule(s)
    return out


def rank_layers(d: "Diagnosis") -> pd.DataFrame:
    """One row per eligible layer with unit-level data: score, its parts and the layer facts, best first."""
    wide = d.wide()
    rows = []
    for info in d.meta.get("layers", []):
        if info["head"] or info["grouped"] or info["patch_embed"]:
            continue
        flags = _flags(d, info["name"], info["units"])
        if not flags:
            continue
        impaired = np.logical_or.reduce(list(flags.values()))
        row = {"layer": info["name"], "group": info["group"], "order": info["order"], "params": info["params"],
               "units": info["units"], "score": float(impaired.mean()),
               "dormant_units": _mean(flags.get("dormant")), "dead_units": _mean(flags.get("dead")),
               "saturated_units": _mean(flags.get("saturation")), "grad_starved_units": _mean(flags.get("grad_dormant")),
               "inactive_units": _mean(_or(flags.get("dormant"), flags.get("dead"))),
               "flat_units": _mean(_or(flags.get("saturation"), flags.get("grad_dormant")))}
        for m in ("saturation", "grad_norm", "fro_norm", "dfi_si", "sfe_rel", "feature_erank"):
            if m in wide.columns and info["name"] in wide.index:
                row[m] = wide.at[info["name"], m]
        rows.append(row)
    ranking = pd.DataFrame(rows)
    if ranking.empty:
        return ranking
    if {"grad_norm", "fro_norm"} <= set(ranking.columns):
        rel = ranking["grad_norm"] / ranking["fro_norm"].where(ranking["fro_norm"] > 0)
        med = rel.median()
        ranking["rel_grad"] = rel / med if med and med > 0 else rel
    else:
        ranking["rel_grad"] = np.nan
    ranking = ranking.sort_values(["score", "rel_grad", "order"], ascending=[False, True, False], na_position="last")
    return ranking.reset_index(drop=True)


def _mean(a: np.ndarray | None) -> float:
    return float(a.mean()) if a is not None else np.nan


def _or(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return a if b is None else b
    return a | b


MARGIN = 0.15  # a chosen layer's impaired share may lie at most this far below the share the strategy acts on


def _consistent(ranking: pd.DataFrame, layers: list[str]) -> tuple[list[str], dict[str, float]]:
    """The chosen layers minus those whose impaired share is more than ``MARGIN`` below the unit-weighted share of
    the chosen set (the fraction a shared targeted re-init would take, or the bar for fire/reset), repeated until
    stable; the worst layer always stays. Returns (layers, {left-out layer: its impaired share})."""
    left_out: dict[str, float] = {}
    while len(layers) > 1:
        chosen = ranking[ranking["layer"].isin(layers)]
        share = float(np.average(chosen["score"], weights=chosen["units"].to_numpy(float)))
        low = chosen[chosen["score"] < share - MARGIN]
        if low.empty:
            break
        left_out.update(dict(zip(low["layer"], low["score"].astype(float))))
        layers = [n for n in layers if n not in set(low["layer"])]
    return layers, left_out


def _within_budget(candidates: pd.DataFrame, budget: float | int, total_params: int) -> list[str]:
    chosen, used = [], 0
    for _, r in candidates.iterrows():
        if isinstance(budget, float) and budget <= 1.0:
            if used + r["params"] > budget * total_params:
                continue
        elif len(chosen) >= int(budget):
            break
        chosen.append(r["layer"])
        used += r["params"]
    return chosen


def recommend(d: "Diagnosis", budget: float | int = 0.25, min_score: float = 0.05) -> Recommendation:
    """Rank layers by the impaired-unit score (module docstring) and propose layers and a strategy."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
        raise ValueError(f"budget must be a fraction of parameters in (0, 1] or a number of layers >= 1, got {budget!r}")
    rec = _recommend(d, budget, min_score)
    head = d.meta.get("head") or {}
    rec.head_seed = int(head.get("seed") or 0)
    rec.head_probe_steps = int((head.get("probe") or {}).get("steps") or 0)
    return rec


def _recommend(d: "Diagnosis", budget: float | int, min_score: float) -> Recommendation:
    ranking = rank_layers(d)
    bad = d.meta.get("nonfinite", {})
    if bad.get("inputs") or bad.get("layers"):
        layers = bad.get("layers", [])
        return Recommendation(ranking, [], "fire", {}, (
            f"Refused: this diagnosis saw non-finite values ({bad.get('inputs', 0)} in the inputs; weights or statistics "
            f"of {len(layers)} layer(s){': ' + ', '.join(layers[:5]) if layers else ''}{' ...' if len(layers) > 5 else ''}). "
            f"Scores computed around NaN/inf are not a basis for re-initialising anything: fix the data or the model "
            f"(column 'nonfinite' of the diagnosis) and diagnose again."))
    if ranking.empty:
        return Recommendation(ranking, [], "fire", {}, "No unit-level metrics (dormant, dead, saturation, "
                              "grad_dormant) in this diagnosis: run diagnose with them to get a recommendation.")
    total = int(ranking["params"].sum())
    budget_text = f"{budget:.0%} of the scored weights" if isinstance(budget, float) and budget <= 1 else f"{int(budget)} layers"
    hit = ranking[ranking["score"] >= min_score]
    if hit.empty:
        deepest = ranking.sort_values("order", ascending=False)
        layers = _within_budget(deepest, budget, total)
        return Recommendation(ranking, layers, "fire", {}, (
            f"No layer has {min_score:.0%} or more impaired units, so there is no clear plasticity loss. Starting "
            f"point: FIRE on the deepest layers within {budget_text} (the most task-specific ones)."))
    layers = _within_budget(hit, budget, total)
    if not layers:  # the single worst layer is larger than the budget: still name it
        layers = [hit.iloc[0]["layer"]]
    layers, left_out = _consistent(ranking, layers)
    chosen = ranking[ranking["layer"].isin(layers)]
    w = chosen["units"].to_numpy(float)
    impaired = float(np.average(chosen["score"], weights=w))
    inactive = float(np.nanmean(chosen["inactive_units"])) if chosen["inactive_units"].notna().any() else 0.0
    flat = float(np.nanmean(chosen["flat_units"])) if chosen["flat_units"].notna().any() else 0.0
    head = f"{len(layers)} layer(s) with {impaired:.0%} impaired units on average (within {budget_text})"
    if left_out:
        head += (f"; left out, with far fewer impaired units than the others (a shared re-init would mostly hit "
                 f"healthy units there): " + ", ".join(f"{n} ({v:.0%})" for n, v in left_out.items()))
    if impaired >= RESET_AT:
        return Recommendation(ranking, layers, "reset", {}, f"{head}: almost nothing pretrained is left in them, reset them.")
    if impaired >= FIRE_AT:
        return Recommendation(ranking, layers, "fire", {}, (
            f"{head}: most units are impaired, so re-initialise whole matrices; FIRE gives the isometry closest "
            f"to the pretrained weights (least SFE)."))
    fraction = float(min(1.0, max(0.01, np.ceil(impaired * 100) / 100)))  # rounded up: targeted floors k
    if inactive >= flat:
        # targeted on dormancy rather than redo: redo needs an explicit (in, out) unit pair for each layer and
        # skips layers without one (projection convs, layers feeding the residual stream); this applies to all
        return Recommendation(ranking, layers, "targeted", {"criterion": "dormant", "fraction": fraction}, (
            f"{head}: mostly dormant/dead units ({inactive:.0%} vs {flat:.0%} saturated, i.e. flat on > 99 % of inputs, "
            f"or gradient-starved; the heatmap's saturation column is the share of inputs instead); "
            f"re-initialise the {fraction:.0%} least active units per layer (ReDo's dormancy score, applied with "
            f"targeted re-init so every chosen layer can be touched) and keep the rest of the pretrained weights."))
    sat = float(np.nanmean(chosen["saturated_units"])) if chosen["saturated_units"].notna().any() else 0.0
    grad = float(np.nanmean(chosen["grad_starved_units"])) if chosen["grad_starved_units"].notna().any() else 0.0
    criterion = "saturation" if sat >= grad else "grad"
    return Recommendation(ranking, layers, "targeted", {"criterion": criterion, "fraction": fraction}, (
        f"{head}: mostly {'saturated (flat on > 99 % of inputs)' if criterion == 'saturation' else 'gradient-starved'} units "
        f"({flat:.0%} vs {inactive:.0%} dormant/dead); re-initialise the worst {fraction:.0%} of units per layer "
        f"scored by {criterion} (targeted re-init, our reading of 2603.20860)."))
