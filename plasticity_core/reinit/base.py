"""Shared plumbing of the re-init strategies: declared parameters, the registry, the per-call context.

A strategy is a function ``fn(ctx: Context) -> list[Change]`` registered with ``@register(...)`` under a name,
a one-line definition, its declared parameters (``Param``) and a version. ``StrategyInfo.validate_params``
is what ``ReinitConfig.validate()`` calls; the dashboard builds its widgets from ``StrategyInfo.params``.
"""
from __future__ import annotations

import math

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from plasticity_core.config import ConfigError
from plasticity_core.layers import LayerInfo, unsupported
from plasticity_core.registry import Registry

_TYPES = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,)}


@dataclass(frozen=True)
class Param:
    """One declared strategy parameter: type ("float" | "int" | "bool" | "str"), default, help, allowed values."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False

    def range_text(self) -> str:
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        lo = "(" if self.min_exclusive else "["
        hi = ")" if self.max_exclusive else "]"
        if self.min is None and self.max is None:
            return "any value"
        return f"in {lo}{'-inf' if self.min is None else self.min}, {'inf' if self.max is None else self.max}{hi}"

    def check(self, strategy: str, value: Any) -> Any:
        """The value converted to the declared type, or a ConfigError naming the parameter, range and why."""
        where = f"ReinitConfig.params.{self.name} (strategy {strategy!r})"
        why = f"{self.type} {self.range_text()}: {self.help}"
        types = _TYPES[self.type]
        if (isinstance(value, bool) and self.type != "bool") or not isinstance(value, types):
            raise ConfigError(f"{where}: expected {why}; got {type(value).__name__} {value!r}")
        if self.type == "float":
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{where}: expected a finite {why}; got {value}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where}: expected {why}; got {value!r}")
        if self.min is not None and (value < self.min or (self.min_exclusive and value == self.min)):
            raise ConfigError(f"{where}: expected {why}; got {value!r}")
        if self.max is not None and (value > self.max or (self.max_exclusive and value == self.max)):
            raise ConfigError(f"{where}: expected {why}; got {value!r}")
        return value


@dataclass(frozen=True)
class StrategyInfo:
    """A registered re-init strategy: its function, documented definition, declared parameters and version."""

    name: str
    fn: Callable[["Context"], list["Change"]]
    definition: str
    params: tuple[Param, ...]
    data: bool | Callable[[dict[str, Any]], bool]  # scores units on data (or: whether it does, given its params)
    version: int
    kinds: tuple[str, ...] | None = None  # layer kinds it handles (None: all)
    allow_grouped: bool = False
    allow_patch_embed: bool = False
    check: Callable[[nn.Module, LayerInfo, dict[str, Any]], str | None] | None = None  # why a layer would be skipped
    phase: str = "once"  # "once": changes the weights before training; "during": acts at every optimizer step
    noop: Callable[[dict[str, Any], int | None], str | None] | None = None  # why these params do nothing in N steps
    run_defaults: Callable[[int], dict[str, Any]] | None = None  # params a comparison run of N steps should use

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` checked against the declared ones, with defaults filled in (raises ConfigError)."""
        if not isinstance(params, dict):
            raise ConfigError(f"ReinitConfig.params: expected a mapping, got {type(params).__name__}")
        declared = {p.name: p for p in self.params}
        unknown = sorted(map(str, set(params) - set(declared)))
        if unknown:
            raise ConfigError(
                f"ReinitConfig.params: unknown parameter(s) {unknown} for strategy {self.name!r}; "
                f"allowed: {sorted(declared)}"
            )
        return {name: p.check(self.name, params[name]) if name in params else p.default for name, p in declared.items()}

    def needs_data(self, params: dict[str, Any] | None = None) -> bool:
        """Whether this strategy, with these params, scores units on data (e.g. targeted+magnitude does not)."""
        if callable(self.data):
            return bool(self.data(self.validate_params(dict(params or {}))))
        return self.data

    needs_data_for = needs_data  # the earlier name

    @property
    def during_training(self) -> bool:
        """True for a strategy that acts during training (``phase == "during"``, e.g. cbp), not once before it."""
        return self.phase == "during"

    def noop_reason(self, params: dict[str, Any] | None, steps: int | None = None) -> str | None:
        """Why this strategy with ``params`` changes nothing in a run of ``steps`` steps (None: it may act)."""
        return self.noop(self.validate_params(dict(params or {})), steps) if self.noop is not None else None

    def params_for_run(self, steps: int) -> dict[str, Any]:
        """Parameters a short comparison run of ``steps`` steps needs besides the defaults ({} for most)."""
        return dict(self.run_defaults(steps)) if self.run_defaults is not None else {}


    def why_not(self, model: nn.Module, layer: LayerInfo, params: dict[str, Any] | None = None,
                include_head: bool = False) -> str | None:
        """Why this strategy would leave ``layer`` alone (the reason ``apply_reinit`` reports), or None if it acts on it.

        Decided from the layer map alone (no data, no copy of the model), so pages can ask it on every redraw.
        """
        why = unsupported(layer, allow_head=include_head, allow_grouped=self.allow_grouped,
                          allow_patch_embed=self.allow_patch_embed, kinds=self.kinds)
        if why is not None:
            return why
        if self.check is not None:
            return self.check(model, layer, self.validate_params(dict(params or {})))
        return None


STRATEGIES: Registry[StrategyInfo] = Registry("re-init strategy")


def register(name: str, definition: str, params: tuple[Param, ...], *,
             needs_data: bool | Callable[[dict[str, Any]], bool] = False, version: int = 1,
             kinds: tuple[str, ...] | None = None, allow_grouped: bool = False, allow_patch_embed: bool = False,
             check: Callable[[nn.Module, LayerInfo, dict[str, Any]], str | None] | None = None, phase: str = "once",
             noop: Callable[[dict[str, Any], int | None], str | None] | None = None,
             run_defaults: Callable[[int], dict[str, Any]] | None = None):
    """Decorator: register a strategy function under ``name`` with its documented parameters.

    ``needs_data``: whether it scores units on data (a function of the params when that depends on them);
    ``phase``: ``"once"`` (the weights change before training) or ``"during"`` (it arms a per-step callback);
    ``noop(params, steps)``: why such an arm would do nothing in a run of ``steps``; ``run_defaults(steps)``: the
    params a short comparison run needs (e.g. cbp's maturity). Nothing outside the strategy's file tests its name.

    ``check(model, layer, params)`` returns the reason the strategy would skip a selected layer (None: it acts on
    it); it must agree with the ``Change(skip=...)`` the function returns, so a plan matches the real run.
    """

    def deco(fn):
        if phase not in ("once", "during"):
            raise ValueError(f"strategy {name!r}: phase must be 'once' or 'during', got {phase!r}")
        STRATEGIES.add(StrategyInfo(name, fn, definition, tuple(params), needs_data, version, kinds,
                                    allow_grouped, allow_patch_embed, check, phase, noop, run_defaults))
        return fn

    return deco


@dataclass
class Change:
    """What a strategy did to one layer: counts for the report, and the touched parameter slices.

    ``slices`` lists ``(param, dim, index)``; ``index=None`` means the whole tensor. They drive the optimizer
    state reset. ``skip`` set means the layer was left alone, with this reason.
    """

    layer: LayerInfo
    units: int = 0
    weights: int = 0
    slices: list[tuple[nn.Parameter, int, torch.Tensor | None]] = field(default_factory=list)
    skip: str | None = None


@dataclass
class Context:
    """Everything a strategy needs for one call: the model, the selected layers, params, seed and data."""

    model: nn.Module
    layers: list[LayerInfo]
    params: dict[str, Any]
    seed: int
    data: Any = None
    device: torch.device = torch.device("cpu")
    notes: list[str] = field(default_factory=list)
    step_callback: Any = None
    metric_versions: dict[str, int] = field(default_factory=dict)
    progress: Callable[[str, int, int], None] | None = None  # (what, done, total): scoring batches, BatchNorm batches

    def generator(self, layer_name: str) -> torch.Generator:
        """A CPU generator seeded by (seed, layer name): results do not depend on which other layers are chosen."""
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + zlib.crc32(layer_name.encode())) % (2**63))
        return g


def row_slices(layer: LayerInfo, model: nn.Module, units: torch.Tensor | None) -> list[tuple[nn.Parameter, int, torch.Tensor | None]]:
    """Optimizer slices for output units ``units`` (None: all) of a layer, q/k/v row offsets applied."""
    mod = model.get_submodule(layer.module_name)
    if units is None and layer.rows is None:
        idx = None
    else:
        base = torch.arange(layer.units) if units is None else units.cpu()
        idx = base + (layer.rows[0] if layer.rows is not None else 0)
    out = [(mod.weight, 0, idx)]
    if mod.bias is not None:
        out.append((mod.bias, 0, idx))
    return out
