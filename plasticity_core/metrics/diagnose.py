"""The diagnostics engine: every registered metric for every layer in one pass over a few probe batches.

Per batch: one forward with hooks on the activation modules (pre-activation in, post-activation out) and
on the weight layers (their outputs), plus one backward only when a gradient metric is asked for. All
statistics are streaming sums on the device; the only device-to-host transfer is one concatenated tensor
at the end. The model's train/eval mode, ``requires_grad`` flags and device are restored afterwards, and
every hook is removed, also when the forward raises.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import plasticity_core
from plasticity_core.data import probe_batches
from plasticity_core.hooks import HookSet
from plasticity_core.layers import LayerInfo, layer_map
from plasticity_core.metrics.activations import ActivationStats, FeatureRank
from plasticity_core.metrics.base import METRICS
from plasticity_core.metrics.diagnosis import Diagnosis
from plasticity_core.metrics.gradients import GradStats
from plasticity_core.metrics.weights import weight_metrics

DATASET_BATCH = 32
ACT_METRICS = {"dormant", "dead", "saturation"}


def diagnose(
    model: Any,
    data: Any,
    reference: Mapping[str, torch.Tensor] | None = None,
    metrics: list[str] | None = None,
    max_batches: int = 8,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
) -> Diagnosis:
    """Per-layer diagnostics of ``model`` on up to ``max_batches`` batches of ``data``.

    ``model`` is an ``nn.Module`` or a ``Backbone`` (its ``.reference`` is then the default reference).
    ``data`` is a DataLoader of (images, labels), a Dataset (batched 32 at a time, in a seeded random order) or any iterable
    of (images, labels). ``metrics`` are names from ``METRICS`` (None: all). Without a reference, ``sfe``
    and ``sfe_rel`` are absent. ``params`` overrides metric defaults, e.g. ``{"dormant": {"tau": 0.1}}``.
    The model runs on ``device`` (default: where its parameters are) and is moved back afterwards.
    """
    module, reference = _unwrap(model, reference)
    names = _resolve_metrics(metrics)
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    opts = _options(names, params)
    home = _model_device(module)
    dev = torch.device(device) if device is not None else home
    layers = layer_map(module)
    start = time.perf_counter()
    was_training = module.training
    flags = [(p, p.requires_grad) for p in module.parameters()]
    pending: list[tuple[str, str, torch.Tensor, torch.Tensor | None]] = []
    batches = samples = 0
    try:
        if dev != home:
            module.to(dev)
        module.eval()
        for layer in layers:
            w0 = _reference_weight(reference, layer)
            for m, v in weight_metrics(layer.weight(module), w0, names).items():
                pending.append((layer.name, m, v, None))
        if names - {m for m in names if METRICS[m].needs == "weights"}:
            probe = _Probe(module, layers, names, opts, dev)
            batches, samples = probe.run(_batches(data), _total(data, max_batches), max_batches, progress)
            pending += probe.finish()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        module.train(was_training)
        if dev != home:
            module.to(home)
    return _assemble(pending, layers, names, opts, module, dev, batches, samples, start, reference is not None)


class _Probe:
    """Hooks and accumulators of one diagnosis pass."""

    def __init__(self, module: nn.Module, layers: list[LayerInfo], names: set[str], opts: dict, dev: torch.device):
        self.module, self.layers, self.opts, self.dev = module, layers, opts, dev
        want_act = names & ACT_METRICS
        self.want_saturation = "saturation" in want_act
        self.grads = bool(names & {"grad_norm", "grad_dormant"})
        self.act = {l.name: ActivationStats(l.units, l.act_type, dev, want_act)
                    for l in layers if want_act and l.act is not None}
        self.rank = {l.name: FeatureRank(l.units, dev) for l in layers} if "feature_erank" in names else {}
        self.gstats = {l.name: GradStats(l.units, dev) for l in layers} if "grad_dormant" in names else {}
        self.want_grad_norm = "grad_norm" in names
        self.by_call: dict[tuple[str, int], list[LayerInfo]] = defaultdict(list)
        for l in layers:
            if l.name in self.act:
                self.by_call[(l.act, l.act_call)].append(l)
        self.by_module: dict[str, list[LayerInfo]] = defaultdict(list)
        for l in layers:
            self.by_module[l.module_name].append(l)
        self.calls: dict[str, int] = {}
        self.weights = {l.module_name: module.get_submodule(l.module_name).weight for l in layers}
        self.grad_sums: dict[str, torch.Tensor] = {}

    def _hooks(self, hooks: HookSet) -> None:
        for act in {a for a, _ in self.by_call}:
            mod = self.module.get_submodule(act)
            if self.want_saturation:
                hooks.forward_pre(mod, lambda m, args, act=act: self._pre(act, args))
            hooks.forward(mod, lambda m, args, out, act=act: self._post(act, out))
        if self.rank or self.gstats:
            for name, members in self.by_module.items():
                hooks.forward(self.module.get_submodule(name),
                              lambda m, args, out, members=members: self._layer_out(members, out, hooks))

    def _pre(self, act: str, args: tuple) -> None:
        for l in self.by_call.get((act, self.calls.get(act, 0)), ()):
            if _fits(args[0], l):
                self.act[l.name].update_pre(args[0].detach(), l.unit_dim)

    def _post(self, act: str, out: torch.Tensor) -> None:
        k = self.calls.get(act, 0)
        for l in self.by_call.get((act, k), ()):
            if _fits(out, l):
                self.act[l.name].update_post(out.detach(), l.unit_dim)
        self.calls[act] = k + 1

    def _layer_out(self, members: list[LayerInfo], out: torch.Tensor, hooks: HookSet) -> None:
        for l in members:
            if l.name in self.rank:
                self.rank[l.name].update(_rows(out, l).detach(), l.unit_dim)
            if l.name in self.gstats:
                self.gstats[l.name].count(out, l.unit_dim)
        if self.gstats and out.requires_grad and any(l.name in self.gstats for l in members):
            hooks.tensor(out, lambda g, members=members: self._grad_out(members, g))

    def _grad_out(self, members: list[LayerInfo], g: torch.Tensor) -> None:
        for l in members:
            if l.name in self.gstats:
                self.gstats[l.name].add(_rows(g, l), l.unit_dim)

    def run(self, batches: Iterable, total: int, max_batches: int, progress) -> tuple[int, int]:
        done = samples = 0
        if self.grads:
            for w in self.weights.values():
                w.requires_grad_(True)
        with HookSet() as hooks:
            self._hooks(hooks)
            for x, y in batches:
                if done >= max_batches:
                    break
                x = x.to(self.dev, non_blocking=True)
                self.calls.clear()
                if self.grads:
                    self._forward_backward(x, y)
                else:
                    with torch.no_grad():
                        self.module(x)
                done += 1
                samples += x.shape[0]
                if progress is not None:
                    progress(done, total)
        if done == 0:
            raise ValueError("diagnose: the data yielded no batches")
        self.samples = samples
        return done, samples

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        if y is None:
            raise ValueError("gradient metrics need labels: data must yield (images, labels)")
        with torch.enable_grad():
            logits = self.module(x)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                raise ValueError("gradient metrics need a model that returns (batch, classes) logits")
            y = y.to(self.dev, non_blocking=True).long()
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            params = list(self.weights.values())
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        if self.want_grad_norm:
            for name, g in zip(self.weights, grads):
                if g is None:
                    continue
                if name in self.grad_sums:
                    self.grad_sums[name] += g.float()
                else:
                    self.grad_sums[name] = g.float().clone()

    def finish(self) -> list[tuple[str, str, torch.Tensor, torch.Tensor | None]]:
        out = []
        tau, min_frac, gtau = self.opts["dormant"]["tau"], self.opts["dead"]["min_fraction"], self.opts["grad_dormant"]["tau"]
        for l in self.layers:
            if l.name in self.act:
                for m, (v, u) in self.act[l.name].finish(tau, min_frac).items():
                    out.append((l.name, m, v, u))
            if l.name in self.rank and (r := self.rank[l.name].finish()) is not None:
                out.append((l.name, "feature_erank", r, None))
            if self.want_grad_norm:
                g = self.grad_sums.get(l.module_name)
                w = self.weights[l.module_name]
                norm = (_weight_rows(g, l) / self.samples).norm() if g is not None else w.new_zeros((), dtype=torch.float32)
                out.append((l.name, "grad_norm", norm, None))
            if l.name in self.gstats and (r := self.gstats[l.name].finish(gtau)) is not None:
                out.append((l.name, "grad_dormant", r[0], r[1]))
        return out


def _fits(t: Any, layer: LayerInfo) -> bool:
    """The activation tensor has the layer's units on its unit axis (a shape check, no device sync)."""
    return isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[layer.unit_dim] == layer.units


def _rows(t: torch.Tensor, layer: LayerInfo) -> torch.Tensor:
    """The layer's slice of its module's output (q/k/v blocks of a fused qkv along the last axis)."""
    return t if layer.rows is None else t[..., layer.rows[0]:layer.rows[1]]


def _weight_rows(w: torch.Tensor, layer: LayerInfo) -> torch.Tensor:
    return w if layer.rows is None else w[layer.rows[0]:layer.rows[1]]


def _unwrap(model: Any, reference: Mapping | None) -> tuple[nn.Module, Mapping | None]:
    if isinstance(model, nn.Module):
        return model, reference
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module):
        return inner, reference if reference is not None else getattr(model, "reference", None)
    raise TypeError(f"diagnose: expected an nn.Module or a Backbone, got {type(model).__name__}")


def _resolve_metrics(metrics: list[str] | None) -> set[str]:
    if metrics is None:
        return set(METRICS.names())
    if isinstance(metrics, str):
        metrics = [metrics]
    for m in metrics:
        METRICS.get(m)  # unknown names raise with close matches
    return set(metrics)


def _options(names: set[str], params: dict | None) -> dict[str, dict[str, Any]]:
    opts = {m: dict(info.defaults) for m, info in METRICS.items()}
    for m, p in (params or {}).items():
        info = METRICS.get(m)
        unknown = set(p) - set(info.defaults)
        if unknown:
            raise ValueError(f"metric {m!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(info.defaults)}")
        opts[m].update(p)
    return opts


def _model_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _reference_weight(reference: Mapping | None, layer: LayerInfo) -> torch.Tensor | None:
    if reference is None:
        return None
    w0 = reference.get(f"{layer.module_name}.weight")
    return None if w0 is None else _weight_rows(w0, layer)


def _batches(data: Any) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    data = probe_batches(data, DATASET_BATCH)
    if not isinstance(data, Iterable):
        raise TypeError(f"diagnose: data must be a DataLoader, a Dataset or an iterable of batches, got {type(data).__name__}")
    for batch in data:
        if isinstance(batch, torch.Tensor):
            yield batch, None
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            yield batch[0], batch[1] if len(batch) > 1 else None
        else:
            raise TypeError(f"diagnose: a batch must be (images, labels) tensors, got {type(batch).__name__}")


def _total(data: Any, max_batches: int) -> int:
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        try:
            return min(max_batches, -(-len(data) // DATASET_BATCH))
        except TypeError:
            return max_batches
    try:
        return min(max_batches, len(data))
    except TypeError:
        return max_batches


def _assemble(pending, layers, names, opts, module, dev, batches, samples, start, has_ref) -> Diagnosis:
    """One device-to-host transfer of every value and unit score, then the long table."""
    parts = []
    for _, _, v, u in pending:
        parts.append(v.reshape(1).to(torch.float64))
        if u is not None:
            parts.append(u.reshape(-1).to(torch.float64))
    flat = torch.cat(parts).cpu().numpy() if parts else None
    values, units, i = {}, {}, 0
    for layer, m, _, u in pending:
        values[(layer, m)] = float(flat[i])
        i += 1
        if u is not None:
            units[(layer, m)] = flat[i:i + u.numel()].copy()
            i += u.numel()
    computed = [m for m in METRICS.names() if any(k[1] == m for k in values)]
    rows = [(l.name, m, values[(l.name, m)]) for l in layers for m in computed if (l.name, m) in values]
    meta = {
        "metric_versions": {m: METRICS[m].version for m in computed},
        "metric_params": {m: opts[m] for m in computed if opts[m]},
        "requested": sorted(names),
        "model": type(module).__name__,
        "batches": batches,
        "samples": samples,
        "device": str(dev),
        "seconds": time.perf_counter() - start,
        "reference": has_ref,
        "plasticity_version": plasticity_core.__version__,
        "torch_version": torch.__version__,
        "layers": [_layer_meta(l) for l in layers],
    }
    return Diagnosis.from_rows(rows, units, meta)


def _layer_meta(layer: LayerInfo) -> dict[str, Any]:
    keys = ("name", "module_name", "kind", "units", "params", "group", "order", "act_type", "head", "grouped",
            "depthwise", "patch_embed")
    d = {k: getattr(layer, k) for k in keys}
    d["shape"] = list(layer.shape)
    return d
