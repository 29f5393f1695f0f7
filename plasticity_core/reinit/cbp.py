"""Continual backprop (Dohare et al., Nature 2024) as a step callback of the fine-tune loop.

``apply_reinit`` with ``cbp`` changes no weight: it arms a ``ContinualBackprop`` (``report.step_callback``;
or build one with ``make_cbp(model, cfg)``) that the loop calls as ``cb(model, optimizer, step)`` after every
optimizer step and closes at the end (``cb.close()`` or ``with``). Per paired layer and step (docs/methods.md, cbp):
ages += 1; contribution utility ``u <- decay*u + (1-decay) * mean|h_i| * mean|w_out[:, i]|`` (a true EMA, not
res_gnt.py's cumulative sum) with bias correction ``u / (1 - decay^age)``; units with age > maturity
are eligible; ``replacement_rate * n_eligible`` replacements accumulate and ``floor`` of the sum are carried
out on the lowest-utility eligible units (fresh fan-in incoming weights, zero outgoing weights, reset BN entry,
age and utility 0, optimizer state of the slices zeroed). ``|h|`` is the consumer layer's input, i.e. the
real post-activation, captured by a forward pre-hook in training mode only.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from plasticity_core.config import ReinitConfig
from plasticity_core.hooks import HookSet
from plasticity_core.layers import LayerInfo, select_layers
from plasticity_core.reinit.base import STRATEGIES, Change, Context, Param, register
from plasticity_core.reinit.fresh import consumer
from plasticity_core.reinit.redo import NO_PAIR
from plasticity_core.reinit.units import recycle


class _Unit:
    """CBP state of one (layer, consumer) pair."""

    def __init__(self, layer: LayerInfo, out: LayerInfo, device: torch.device) -> None:
        self.layer, self.out = layer, out
        self.age = torch.zeros(layer.units, dtype=torch.long)  # host-side: eligibility needs no device sync
        self.util = torch.zeros(layer.units, device=device)
        self.act: torch.Tensor | None = None
        self.acc = 0.0
        self.replaced = 0


class ContinualBackprop:
    """Step callback ``cb(model, optimizer, step) -> units replaced``; hooks are removed by ``close()``."""

    def __init__(self, model: nn.Module, pairs: list[tuple[LayerInfo, LayerInfo]], params: dict[str, Any], ctx: Context) -> None:
        self.model, self.params, self.ctx = model, params, ctx
        self.units = [_Unit(a, b, ctx.device) for a, b in pairs]
        self.hooks = HookSet()
        for u in self.units:
            self.hooks.forward_pre(model.get_submodule(u.out.module_name), self._capture(u))

    @staticmethod
    def _capture(u: _Unit):
        def hook(module, args):
            if module.training and args and isinstance(args[0], torch.Tensor):
                h = args[0].detach().abs()
                u.act = h.mean(dim=tuple(i for i in range(h.dim()) if i != 1)) if h.dim() > 2 else h.flatten(0, -2).mean(0)
        return hook

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, step: int) -> int:
        if model is not self.model:
            raise ValueError("this cbp callback was armed on a different model")
        from plasticity_core.reinit.apply import reset_optimizer_state

        p = self.params
        total = 0
        for u in self.units:
            if u.act is None:  # no training forward since the last step
                continue
            w_out = model.get_submodule(u.out.module_name).weight.detach()
            out_mag = w_out.abs().transpose(0, 1).flatten(1).mean(1)
            u.util.mul_(p["decay"]).add_((1 - p["decay"]) * u.act * out_mag)
            u.act = None
            u.age += 1
            eligible = u.age > p["maturity"]
            u.acc += p["replacement_rate"] * int(eligible.sum())
            n = math.floor(u.acc)
            if n == 0:
                continue
            u.acc -= n
            corrected = u.util / (1 - p["decay"] ** u.age.clamp_min(1).to(u.util.device, torch.float32))
            corrected = corrected.masked_fill(~eligible.to(corrected.device), float("inf"))
            units = torch.topk(corrected, n, largest=False).indices.cpu()
            g = self.ctx.generator(f"{u.layer.name}#{step}")
            slices = recycle(self.ctx, u.layer, units, g, scale="fan_in", consumer=u.out)
            if optimizer is not None:
                reset_optimizer_state(optimizer, slices)
            u.age[units] = 0
            u.util[units.to(u.util.device)] = 0.0
            u.replaced += n
            total += n
        return total

    def replaced(self) -> dict[str, int]:
        """Units replaced so far, per layer."""
        return {u.layer.name: u.replaced for u in self.units}

    def close(self) -> None:
        self.hooks.remove()

    def __enter__(self) -> "ContinualBackprop":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _noop(p: dict[str, Any], steps: int | None) -> str | None:
    """Why cbp with params ``p`` never replaces a unit in ``steps`` steps (None: it may)."""
    if p["replacement_rate"] == 0:
        return "cbp with replacement_rate 0 never replaces a unit"
    if steps is not None and p["maturity"] >= steps:
        return (f"cbp maturity {p['maturity']} >= the run's {steps} steps: no unit becomes old enough to be replaced "
                f"(set maturity below {steps}, e.g. {max(1, steps // 10)})")
    return None


@register(
    "cbp",
    "Continual backprop: during fine-tuning, replace the lowest contribution-utility mature units at a fixed rate",
    (
        Param("replacement_rate", "float", 1e-4, "expected replacements per eligible unit and step (Dohare: 1e-4..1e-6)",
              min=0.0, max=1.0),
        Param("maturity", "int", 1000, "steps a unit is protected after (re)initialisation (Dohare: 100..10000)", min=0),
        Param("decay", "float", 0.99, "EMA decay eta of the contribution utility (Dohare: 0.99)", min=0.0, max=1.0,
              max_exclusive=True),
    ),
    check=lambda model, layer, params: None if consumer(model, layer) is not None else f"cbp: {NO_PAIR}",
    phase="during",
    noop=lambda params, steps: _noop(params, steps),
    run_defaults=lambda steps: {"maturity": max(1, int(steps) // 10)},
)
def cbp(ctx: Context) -> list[Change]:
    changes, pairs = [], []
    for layer in ctx.layers:
        out = consumer(ctx.model, layer)
        if out is None:
            changes.append(Change(layer, skip=f"cbp: {NO_PAIR}"))
        else:
            pairs.append((layer, out))
            changes.append(Change(layer))
    if pairs:
        ctx.step_callback = ContinualBackprop(ctx.model, pairs, ctx.params, ctx)
        ctx.notes.append(f"cbp armed on {len(pairs)} layers: no weight changes now; call report.step_callback"
                         "(model, optimizer, step) after each optimizer step and .close() at the end")
    return changes


def make_cbp(model: nn.Module, cfg: ReinitConfig) -> ContinualBackprop | None:
    """A ``ContinualBackprop`` step callback for ``model`` from a ``cbp`` config (None if no layer pairs)."""
    if cfg.strategy != "cbp":
        raise ValueError(f"make_cbp needs a cbp config, got strategy {cfg.strategy!r}")
    params = STRATEGIES.get("cbp").validate_params(cfg.params)
    sel = select_layers(model, cfg.layers, cfg.exclude, allow_head=cfg.include_head)
    p = next(model.parameters(), None)
    ctx = Context(model, sel.layers, params, cfg.seed, device=p.device if p is not None else torch.device("cpu"))
    cbp(ctx)
    return ctx.step_callback
