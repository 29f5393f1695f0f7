"""What a re-init config will do to each selected layer, decided before anything runs, with proposals.

``plan_reinit(model, cfg)`` lists every layer the config's include patterns match: ``action`` "re-init" (the
strategy acts on it) or "skip" with the ``reason`` ``apply_reinit`` would report, and for a skipped layer a
``proposal``: the strategies that can act on it, and the nearest layer (forward order) this strategy can act
on. It is decided from the layer map alone (``StrategyInfo.why_not``: no data, no model copy), so a page can
show it on every redraw. Unit-scoring strategies (redo, targeted) still choose *which units* on data: a layer
marked "re-init" may end with zero units touched when none qualifies; the preview says so.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace

import pandas as pd
from torch import nn

from plasticity_core.config import ReinitConfig
from plasticity_core.layers import LayerInfo, layer_map
from plasticity_core.metrics.recommend import Recommendation
from plasticity_core.reinit.base import STRATEGIES

COLUMNS = ["layer", "action", "reason", "proposal"]


@dataclass
class ReinitPlan:
    """Per matched layer: re-init or skip (with the reason and a proposal); patterns that match nothing."""

    strategy: str
    table: pd.DataFrame
    unmatched_patterns: list[str] = field(default_factory=list)

    @property
    def touched(self) -> list[str]:
        return list(self.table.loc[self.table["action"] == "re-init", "layer"])

    @property
    def skipped(self) -> dict[str, str]:
        t = self.table[self.table["action"] == "skip"]
        return dict(zip(t["layer"], t["reason"]))

    def problems(self) -> list[str]:
        """One line per thing the user asked for that will not happen (empty: the config acts on everything)."""
        out = [f"pattern {p!r} matches no layer of this model" for p in self.unmatched_patterns]
        if self.table.empty:
            out.append("no layer selected: this re-init changes nothing")
        elif not self.touched:
            out.append(f"{self.strategy} can act on none of the {len(self.table)} selected layers: it would change nothing")
        elif self.skipped:
            out.append(f"{self.strategy} acts on {len(self.touched)} of {len(self.table)} selected layers; "
                       f"{len(self.skipped)} {'is' if len(self.skipped) == 1 else 'are'} skipped (reasons below)")
        return out


def _matches(layer: LayerInfo, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(layer.name, p) or fnmatch.fnmatchcase(layer.module_name, p) for p in patterns)


def capable(model: nn.Module, layer: LayerInfo, include_head: bool = False) -> list[str]:
    """The strategies (default parameters) that act on ``layer``."""
    return [s.name for s in STRATEGIES.values() if s.why_not(model, layer, include_head=include_head) is None]


def plan_reinit(model: nn.Module, cfg: ReinitConfig) -> ReinitPlan:
    """What ``apply_reinit(model, cfg)`` will do to each layer the include patterns match (see module doc)."""
    if not isinstance(cfg, ReinitConfig):
        raise TypeError(f"cfg must be a ReinitConfig, got {type(cfg).__name__}")
    info = STRATEGIES.get(cfg.strategy)
    layers = layer_map(model)
    include, exclude = list(cfg.layers), list(cfg.exclude)
    unmatched = [p for p in include if not any(_matches(layer, [p]) for layer in layers)]
    matched = [layer for layer in layers if _matches(layer, include)]
    why = {}
    for layer in matched:
        ex = next((p for p in exclude if _matches(layer, [p])), None)
        why[layer.name] = (f"excluded by pattern {ex!r}" if ex is not None else
                           info.why_not(model, layer, cfg.params, include_head=cfg.include_head))
    can = [layer for layer in layers if why.get(layer.name, "") is not None and layer.name not in why
           and info.why_not(model, layer, cfg.params, include_head=cfg.include_head) is None]
    rows = []
    for layer in matched:
        reason = why[layer.name]
        if reason is None:
            rows.append((layer.name, "re-init", "", ""))
            continue
        proposal = []
        others = [s for s in capable(model, layer, cfg.include_head) if s != cfg.strategy]
        if others and not reason.startswith("excluded"):
            proposal.append(f"{', '.join(others)} can re-init it")
        near = min(can, key=lambda c: (abs(c.order - layer.order), c.order), default=None)
        if near is not None:
            proposal.append(f"nearest unselected layer {cfg.strategy} can re-init: {near.name}")
        rows.append((layer.name, "skip", reason, "; ".join(proposal) or "no strategy acts on this layer"))
    return ReinitPlan(cfg.strategy, pd.DataFrame(rows, columns=COLUMNS), unmatched)


def noop_reason(model: nn.Module, cfg: ReinitConfig | None, steps: int | None = None) -> str | None:
    """Why an arm with this re-init would train exactly like the baseline (None: it changes something).

    An arm changes nothing when its patterns reach no layer the strategy acts on, or when the strategy says its
    params do nothing within ``steps`` (its registered ``noop``: e.g. cbp whose units never mature).
    """
    if cfg is None:
        return None
    plan = plan_reinit(model, cfg)
    if not plan.touched:
        return "; ".join(plan.problems()) or "no layer selected"
    return STRATEGIES.get(cfg.strategy).noop_reason(cfg.params, steps)  # e.g. cbp that never replaces within steps


def strategies_for(model: nn.Module, layers: list[str], include_head: bool = False) -> dict[str, int]:
    """For each strategy (default parameters): how many of the named layers it acts on, most first."""
    by_name = {layer.name: layer for layer in layer_map(model)}
    chosen = [by_name[n] for n in layers if n in by_name]
    counts = {s.name: sum(s.why_not(model, layer, include_head=include_head) is None for layer in chosen)
              for s in STRATEGIES.values()}
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def fit_recommendation(rec: Recommendation, model: nn.Module) -> Recommendation:
    """``rec`` restricted to the layers its strategy acts on in ``model``, the rest named in the reason.

    ``Diagnosis.recommend`` ranks layers from metrics alone; a strategy can still skip some of them (FIRE with
    ``targets=qk`` acts on a ViT's q and k blocks only, ReDo needs an explicit unit pair). A recommendation then
    proposes only what will happen; when the strategy acts on none of them, the layers stay and the reason says
    so and names the strategy that acts on most of them.
    """
    if not rec.layers:
        return rec
    plan = plan_reinit(model, rec.to_config())
    skipped = plan.skipped
    if not skipped:
        return rec
    kept = [name for name in rec.layers if name not in skipped]
    names = ", ".join(sorted(skipped)[:6]) + (" ..." if len(skipped) > 6 else "")
    if not kept:
        best = next((s for s, n in strategies_for(model, rec.layers).items() if n), None)
        note = (f" {rec.strategy} {rec.params or ''} acts on none of these {len(rec.layers)} layers"
                f" ({next(iter(skipped.values()))})" + (f"; {best} acts on the most of them." if best else "."))
        return replace(rec, reason=rec.reason + note)
    note = (f" Left out {len(skipped)} of the {len(rec.layers)} ranked layers that {rec.strategy}"
            f" {rec.params or ''} would skip: {names} (e.g. {next(iter(skipped.values()))}).")
    return replace(rec, layers=kept, reason=rec.reason + note)
