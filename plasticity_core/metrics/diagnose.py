"""The diagnostics engine: every registered metric for every layer in one pass over a few probe batches.

``diagnose`` loops over ``METRICS``: weight metrics are functions of a ``WeightView`` (cached per parameter
version, see ``weight_values``), data metrics are ``Accumulator`` instances fed from hooks. Per batch: one
forward with hooks on the activation modules (pre-activation in, post-activation out) and on the weight
layers (their outputs), plus one backward only when a gradient metric is asked for. All statistics are
streaming sums on the device; nothing in the batch loop waits for the device (no ``.item()``, no host copy);
the only device-to-host transfer is one concatenated tensor at the end. The model's train/eval mode,
``requires_grad`` flags, device and the TF32 switches are restored afterwards, and every hook is removed,
also when the forward raises.

Precision: ``precision="exact"`` (default) turns TF32 off for the diagnosis' own work (matmul and cuDNN), so a
CPU and a CUDA diagnosis of the same model and data agree to float32 rounding; ``"fast"`` allows TF32 and runs
the forward under bfloat16 autocast on CUDA (no effect on CPU). ``meta["precision"]`` records which.
"""
from __future__ import annotations

import contextlib
import threading
import time
import warnings
import weakref
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from plasticity_core.data import probe_batches
from plasticity_core.hooks import HookSet, kept_modes
from plasticity_core.layers import LayerInfo, layer_map, uncovered_layers
from plasticity_core.metrics import onepass, weight_kernels
from plasticity_core.metrics.activations import ActivationView, Scratch
from plasticity_core.metrics.base import METRICS, Accumulator
from plasticity_core.metrics.checks import NonFiniteWarning
from plasticity_core.metrics.diagnosis import Diagnosis
from plasticity_core.metrics.weights import SpectraBatch, WeightView
from plasticity_core.version import __version__

DATASET_BATCH = 32
PRECISIONS = ("exact", "fast")
SPECTRAL_METRICS = {"spectral_norm", "stable_rank"}  # the metrics that need sigma_1
REFERENCE_METRICS = {"sfe", "sfe_rel"}  # depend on the reference too: cached per reference tensor (identity + version)

Pending = list[tuple[str, str, torch.Tensor, "torch.Tensor | None"]]


def diagnose(
    model: Any,
    data: Any,
    reference: Mapping[str, torch.Tensor] | None = None,
    metrics: list[str] | None = None,
    max_batches: int = 8,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    precision: str = "exact",
) -> Diagnosis:
    """Per-layer diagnostics of ``model`` on up to ``max_batches`` batches of ``data``.

    ``model`` is an ``nn.Module`` or a ``Backbone`` (its ``.reference`` is then the default reference).
    ``data`` is a DataLoader of (images, labels), a Dataset (batched 32 at a time, in a seeded random order) or any iterable
    of (images, labels). ``metrics`` are names from ``METRICS`` (None: all). Without a reference, ``sfe``
    and ``sfe_rel`` are absent. ``params`` overrides metric defaults, e.g. ``{"dormant": {"tau": 0.1}}``.
    The model runs on ``device`` (default: where its parameters are) and is moved back afterwards.
    ``precision``: "exact" (default, TF32 off: the same numbers on every device) or "fast" (TF32 / bf16 on CUDA).
    """
    module, reference = _unwrap(model, reference)
    names = _resolve_metrics(metrics)
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    opts = _options(names, params)
    home = _model_device(module)
    dev = torch.device(device) if device is not None else home
    layers = layer_map(module)
    start = time.perf_counter()
    any_training = any(m.training for m in module.modules())  # a model already in eval mode is not walked again
    grads = any(METRICS[m].needs == "gradients" for m in names)
    flags = [(p, p.requires_grad) for p in module.parameters()] if grads else []  # only the gradient probe sets them
    batches = samples = 0
    slow_layers: list[str] = []
    no_gradient: list[str] = []
    bad_inputs: torch.Tensor | None = None
    activation_pass: str | None = None  # which path the activation statistics took (None: no data pass)
    try:
        with precision_policy(precision), kept_modes(module):
            if dev != home:
                module.to(dev)
            if any_training:
                module.eval()
            pending = weight_values(module, layers, reference, names, opts, precision, slow_layers)
            if any(METRICS[m].needs != "weights" for m in names):
                probe = _Probe(module, layers, names, opts, dev, precision)
                batches, samples = probe.run(_batches(data), _total(data, max_batches), max_batches, progress)
                pending += probe.finish()
                no_gradient = probe.no_gradient
                bad_inputs = probe.bad_inputs
                activation_pass = onepass.describe(dev, probe.nchw)
                pending = _add_bad_units(pending, probe.bad)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        if dev != home:
            module.to(home)
    meta = {"requested": sorted(names), "model": type(module).__name__, "batches": batches, "samples": samples,
            "device": str(dev), "precision": precision, "reference": reference is not None,
            "plasticity_version": __version__, "torch_version": torch.__version__,
            "head": head_meta(model, module, layers),
            # layers run under no_grad / detached inside the model: gradient metrics n/a (absent), not 0
            "no_gradient": no_gradient,
            "uncovered": [list(u) for u in uncovered_layers(module, layers)],  # weights outside the layer map, with why
            # layers whose sigma_1 needed the exact SVD (Lanczos not converged in GKL_MAX_STEPS): the slow path
            "weights_slow_path": {"layers": slow_layers, "count": len(slow_layers)},
            "activation_pass": activation_pass,  # one read per activation (numba) or torch's passes
            # how sigma_1 was computed (None: no spectral metric asked for)
            "spectral_path": weight_kernels.describe(dev) if names & SPECTRAL_METRICS else None}
    return _assemble(pending, layers, names, opts, meta, bad_inputs, start)


_POLICY = threading.Condition()  # the TF32 flags are process-wide: threads inside precision_policy share them
_POLICY_STATE: dict[str, Any] = {"precision": None, "count": 0, "saved": None}
_POLICY_DEPTH = threading.local()


def _tf32_flags() -> tuple[str, bool]:
    """The user's float32 matmul precision and cuDNN TF32 flag (a state mixing the legacy ``allow_tf32`` and the
    precision API reads as the precision that flag means)."""
    try:
        precision = torch.get_float32_matmul_precision()
    except RuntimeError:
        precision = "high" if torch.backends.cuda.matmul.allow_tf32 else "highest"
    return precision, torch.backends.cudnn.allow_tf32


def _set_tf32_flags(flags: tuple[str, bool]) -> None:
    # the precision API alone (it also sets cuda.matmul.allow_tf32): writing allow_tf32 after it leaves a "mixed"
    # state in which torch.get_float32_matmul_precision() raises (a user's "medium" broke the next diagnosis)
    torch.set_float32_matmul_precision(flags[0])
    torch.backends.cudnn.allow_tf32 = flags[1]


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """TF32 off ("exact") or on ("fast") for matmuls and cuDNN inside the block; the user's settings come back after.

    The flags are global to the process, so threads coordinate: blocks of the same precision overlap (the first
    saves the user's settings, the last restores them), a block of the other precision waits until they are all
    done. A block nested in the same thread just sets and restores the flags around itself."""
    flags = ("high", True) if precision == "fast" else ("highest", False)
    depth = getattr(_POLICY_DEPTH, "n", 0)
    if depth:  # nested in this thread: this thread already holds the policy
        saved = _tf32_flags()
        _POLICY_DEPTH.n = depth + 1
        try:
            _set_tf32_flags(flags)
            yield
        finally:
            _set_tf32_flags(saved)
            _POLICY_DEPTH.n = depth
        return
    with _POLICY:
        while _POLICY_STATE["count"] and _POLICY_STATE["precision"] != precision:
            _POLICY.wait()
        if not _POLICY_STATE["count"]:
            _POLICY_STATE.update(saved=_tf32_flags(), precision=precision)
            _set_tf32_flags(flags)
        _POLICY_STATE["count"] += 1
    _POLICY_DEPTH.n = 1
    try:
        yield
    finally:
        _POLICY_DEPTH.n = 0
        with _POLICY:
            _POLICY_STATE["count"] -= 1
            if not _POLICY_STATE["count"]:
                _set_tf32_flags(_POLICY_STATE["saved"])
                _POLICY_STATE.update(saved=None, precision=None)
                _POLICY.notify_all()


# ---- weight metrics, cached per parameter version ----

# parameter -> (state, {(metric, params): value}); state = (version counter, storage, device, dtype, precision).
# In-place updates (optimiser steps, load_state_dict, re-init under no_grad) bump the version counter; writes
# through ``param.data`` do not and are not seen (they bypass autograd's bookkeeping too).
# Keyed by id() with a weak reference checked on lookup (tensors cannot be WeakKeyDictionary keys: their
# ``==`` is elementwise); an entry goes away with its parameter.
_WEIGHT_CACHE: dict[int, tuple[weakref.ref, tuple, dict]] = {}


def precompute_weight_metrics(model: Any, metrics: list[str] | None = None, layers: list[LayerInfo] | None = None,
                              params: dict[str, dict[str, Any]] | None = None, precision: str = "exact") -> list[str]:
    """Compute and cache the weight metrics ``diagnose`` would (all but the reference ones, which are cheap and never
    cached), so that a later ``diagnose`` of the unchanged weights only pays for its data pass.

    Meant for a background thread started when a model is loaded: it only reads the weights (pass ``layers`` from
    ``layer_map`` computed on the caller's thread, so no tracing forward runs here) and changes no module state;
    weights updated meanwhile are simply recomputed by the next diagnosis (the cache key is the version counter).
    A model on the CPU also gets the one-pass activation kernel built (``onepass.ready``: numba's import and
    compilation or cache load, up to a second, otherwise paid by the first diagnosis of the process).
    Returns the layers whose ``sigma_1`` took the slow path (exact SVD).
    """
    module, _ = _unwrap(model, None)
    names = _resolve_metrics(metrics) - REFERENCE_METRICS
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    opts = _options(names, params)
    slow: list[str] = []
    with precision_policy(precision):
        weight_values(module, layers if layers is not None else layer_map(module), None, names, opts, precision, slow)
    if _model_device(module).type == "cpu":
        onepass.ready()
    return slow


def clear_weight_cache() -> None:
    """Forget every cached weight metric (benchmarks measure the cold cost with it)."""
    _WEIGHT_CACHE.clear()


def _cache_for(param: torch.Tensor, state: tuple) -> dict:
    entry = _WEIGHT_CACHE.get(id(param))
    if entry is None or entry[0]() is not param or entry[1] != state:
        key = id(param)
        ref = weakref.ref(param, lambda _, key=key: _WEIGHT_CACHE.pop(key, None))
        entry = (ref, state, {})
        _WEIGHT_CACHE[key] = entry
    return entry[2]


def weight_values(module: nn.Module, layers: list[LayerInfo], reference: Mapping | None, names: set[str],
                  opts: dict, precision: str, slow_layers: list[str] | None = None) -> Pending:
    """Every requested weight metric of every layer (plus the non-finite count), from the cache where unchanged.

    ``slow_layers`` (if given) receives the names of the layers computed now whose ``sigma_1`` needed the exact
    SVD fallback (see ``weights.top_singular``)."""
    wanted = [m for m in METRICS.names() if METRICS[m].needs == "weights" and (m in names or m == "nonfinite")]
    settings = {m: tuple(sorted(opts[m].items())) for m in wanted}
    spectra = SpectraBatch()
    todo = []
    subs = dict(module.named_modules())  # one walk instead of a get_submodule per layer
    for layer in layers:  # first every view, so the spectra of all layers are computed in one batch per size
        sub = subs[layer.module_name]
        param = sub.weight
        store = _cache_for(param, (param._version, param.data_ptr(), param.device, param.dtype, precision))
        keys = {m: (m, layer.rows, settings[m]) for m in wanted}
        ref = None if reference is None else reference.get(f"{layer.module_name}.weight")
        missing = [m for m in wanted if keys[m] not in store
                   or (m in REFERENCE_METRICS and not _same_reference(store[keys[m]], ref))]
        view = WeightView(layer.weight_in(sub), _reference_weight(reference, layer), spectra) if missing else None
        todo.append((layer, store, keys, missing, view))
    out: Pending = []
    for layer, store, keys, missing, view in todo:
        # the cache holds each value as reported: NaN where the weight has non-finite entries (masked once, when
        # computed), so a cached layer costs no tensor operation
        computed = {m: v for m in missing if (v := METRICS[m].impl(view, **opts[m])) is not None}
        nonfinite = computed["nonfinite"] if "nonfinite" in computed else store[keys["nonfinite"]]
        broken = nonfinite > 0 if computed else None
        for m in wanted:
            if m in computed:
                v = computed[m] if m == "nonfinite" else torch.where(broken, float("nan"), computed[m])
                if m not in REFERENCE_METRICS:
                    store[keys[m]] = v
                elif isinstance(ref := (reference or {}).get(f"{layer.module_name}.weight"), torch.Tensor):
                    store[keys[m]] = (weakref.ref(ref), ref._version, v)  # valid while that reference is unchanged
            elif m in missing:  # not defined for this layer (e.g. sfe without a reference of its shape)
                continue
            else:
                v = store[keys[m]][2] if m in REFERENCE_METRICS else store[keys[m]]
            out.append((layer.name, m, v, None))
        if view is not None:
            view.release()  # this layer's tap copies and Gram: one layer's at a time
            if slow_layers is not None and spectra.fallback.get(id(view)):
                slow_layers.append(layer.name)
    return out


def _same_reference(entry: tuple, ref: Any) -> bool:
    """A cached sfe / sfe_rel entry is for this very reference tensor, unchanged since (identity and version)."""
    return isinstance(ref, torch.Tensor) and entry[0]() is ref and entry[1] == ref._version


def _add_bad_units(pending: Pending, bad: dict[str, torch.Tensor]) -> Pending:
    """``nonfinite`` = non-finite weight entries + units whose probe statistics were non-finite."""
    return [(l, m, v + bad[l].sum() if m == "nonfinite" and l in bad else v, u) for l, m, v, u in pending]


# ---- data metrics ----

class _Probe:
    """Accumulators and hooks of one diagnosis pass."""

    def __init__(self, module: nn.Module, layers: list[LayerInfo], names: set[str], opts: dict, dev: torch.device,
                 precision: str):
        self.module, self.layers, self.dev = module, layers, dev
        self.autocast = precision == "fast" and dev.type == "cuda"
        self.metrics = [m for m in METRICS.names() if m in names and METRICS[m].needs != "weights"]
        self.acc: dict[str, dict[str, Accumulator]] = {}
        for l in layers:
            accs = {m: METRICS[m].impl(l, dev, **opts[m]) for m in self.metrics if METRICS[m].impl.applies(l)}
            if accs:
                self.acc[l.name] = accs
        reads = {l: {h for a in accs.values() for h in a.hooks()} for l, accs in self.acc.items()}
        self.pre = {l: [a for a in accs.values() if "pre" in a.hooks()] for l, accs in self.acc.items()}
        self.post = {l: [a for a in accs.values() if "post" in a.hooks()] for l, accs in self.acc.items()}
        self.out = {l: [a for a in accs.values() if "out" in a.hooks()] for l, accs in self.acc.items()}
        self.grad = {l: [a for a in accs.values() if "grad" in a.hooks()] for l, accs in self.acc.items()}
        self.wgrad = {l: [a for a in accs.values() if "wgrad" in a.hooks()] for l, accs in self.acc.items()}
        self.grads = any(self.grad.values()) or any(self.wgrad.values())
        self.check: dict[str, torch.Tensor] = {}  # per-unit |.| sums of what the layer's statistics read
        self.by_call: dict[tuple[str, int], list[LayerInfo]] = defaultdict(list)
        self.by_module: dict[str, list[LayerInfo]] = defaultdict(list)
        for l in layers:
            r = reads.get(l.name, set())
            if r & {"pre", "post"}:
                self.by_call[(l.act, l.act_call)].append(l)
            if r & {"out", "grad"}:
                self.by_module[l.module_name].append(l)
        self.calls: dict[str, int] = {}
        # output-gradient hooks need the backward to reach every layer: differentiate w.r.t. every weight
        self.weights = {l.module_name: module.get_submodule(l.module_name).weight for l in layers} if self.grads else {}
        self.bad_inputs = torch.zeros((), dtype=torch.int64, device=dev)
        self.in_graph: set[str] = set()  # weight modules whose output was part of the autograd graph
        self.scratch = Scratch()  # one buffer for the statistics' elementwise transforms, freed with the pass
        self.nchw = False  # an activation with the one-pass kernel's layout was read (onepass.describe)

    @property
    def no_gradient(self) -> list[str]:
        """Layers whose output never joined the autograd graph (run under ``torch.no_grad`` or detached inside the
        model, e.g. a frozen feature extractor): their gradient is not measurable, so gradient metrics are n/a."""
        if not self.grads:
            return []
        return [l.name for l in self.layers if l.module_name not in self.in_graph]

    def _graph_seen(self, name: str, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.requires_grad:
            self.in_graph.add(name)

    def _hooks(self, hooks: HookSet) -> None:
        for act in {a for a, _ in self.by_call}:
            mod = self.module.get_submodule(act)
            if any(self.pre[l.name] for (a, _), ls in self.by_call.items() if a == act for l in ls):
                hooks.forward_pre(mod, lambda m, args, act=act: self._pre(act, args))
            hooks.forward(mod, lambda m, args, out, act=act: self._post(act, out))
        for name, members in self.by_module.items():
            hooks.forward(self.module.get_submodule(name),
                          lambda m, args, out, members=members: self._layer_out(members, out, hooks))
        if self.grads:
            for name in self.weights:
                hooks.forward(self.module.get_submodule(name), lambda m, args, out, name=name: self._graph_seen(name, out))

    def _check(self, l: LayerInfo, view: ActivationView) -> None:
        s = view.abs_sum()
        self.check[l.name] = s.clone() if l.name not in self.check else self.check[l.name].add_(s)

    def _view(self, views: dict, t: torch.Tensor, layer: LayerInfo) -> ActivationView:
        """The view of ``t`` that the layers of one activation call with the same unit axis and type share."""
        key = (layer.unit_dim % t.dim(), layer.act_type)
        if key not in views:
            views[key] = ActivationView(t.detach(), layer.unit_dim, layer.act_type, self.scratch)
            self.nchw = self.nchw or views[key].eligible
        return views[key]

    def _pre(self, act: str, args: tuple) -> None:
        views: dict[tuple, ActivationView] = {}  # layers fed by the same call share one view (one set of reductions)
        for l in self.by_call.get((act, self.calls.get(act, 0)), ()):
            if self.pre[l.name] and _fits(args[0], l):
                view = self._view(views, args[0], l)
                for a in self.pre[l.name]:
                    a.update_pre(view)
                if not self.post[l.name]:
                    self._check(l, view)

    def _post(self, act: str, out: torch.Tensor) -> None:
        k = self.calls.get(act, 0)
        views: dict[tuple, ActivationView] = {}
        for l in self.by_call.get((act, k), ()):
            if self.post[l.name] and _fits(out, l):
                view = self._view(views, out, l)
                for a in self.post[l.name]:
                    a.update(view)
                self._check(l, view)
        self.calls[act] = k + 1

    def _layer_out(self, members: list[LayerInfo], out: torch.Tensor, hooks: HookSet) -> None:
        if not isinstance(out, torch.Tensor):
            return
        for l in members:
            for a in self.out[l.name]:
                a.update_out(_rows(out, l).detach())
        if out.requires_grad and any(self.grad[l.name] for l in members):
            hooks.tensor(out, lambda g, members=members: self._grad_out(members, g))

    def _grad_out(self, members: list[LayerInfo], g: torch.Tensor) -> None:
        for l in members:
            for a in self.grad[l.name]:
                a.update_grad(_rows(g, l))

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
                if x.is_floating_point():  # x * 0 is NaN exactly where x is NaN or inf (a third of isfinite's time)
                    self.bad_inputs += torch.count_nonzero(x * 0)
                self.calls.clear()
                with torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext():
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
            grads = dict(zip(self.weights, torch.autograd.grad(loss, list(self.weights.values()), allow_unused=True)))
        for l in self.layers:
            for a in self.wgrad.get(l.name, ()):
                g = grads.get(l.module_name)
                a.update_wgrad(None if g is None else _weight_rows(g, l), x.shape[0])

    @property
    def bad(self) -> dict[str, torch.Tensor]:
        return {name: ~torch.isfinite(s) for name, s in self.check.items()}

    def finish(self) -> Pending:
        out: Pending = []
        bad = self.bad
        no_gradient = set(self.no_gradient)
        for m in self.metrics:
            layers = [l for l in self.layers if m in self.acc.get(l.name, {})
                      and not (METRICS[m].needs == "gradients" and l.name in no_gradient)]
            accs = [self.acc[l.name][m] for l in layers]
            if not accs:
                continue
            results = type(accs[0]).finish_all(accs, [bad.get(l.name) for l in layers])
            for l, r in zip(layers, results):
                if r is not None:
                    out.append((l.name, m, r[0], r[1]))
        return out


def _fits(t: Any, layer: LayerInfo) -> bool:
    """The activation tensor has the layer's units on its unit axis (a shape check, no device sync)."""
    return isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[layer.unit_dim] == layer.units


def _rows(t: torch.Tensor, layer: LayerInfo) -> torch.Tensor:
    """The layer's slice of its module's output (q/k/v blocks of a fused qkv along the last axis)."""
    return t if layer.rows is None else t[..., layer.rows[0]:layer.rows[1]]


def _weight_rows(w: torch.Tensor, layer: LayerInfo) -> torch.Tensor:
    return w if layer.rows is None else w[layer.rows[0]:layer.rows[1]]


def head_meta(model: Any, module: nn.Module, layers: list[LayerInfo] | None = None) -> dict[str, Any]:
    """Which classifier head the gradient metrics went through: classes, the seed a fresh head was drawn from
    (``Backbone.head_seed``; None for the model's own head) and the words the dashboard and the CLI show."""
    layers = layer_map(module) if layers is None else layers
    head = next(((l.module_name, module.get_submodule(l.module_name)) for l in layers if l.head), None)
    classes = int(head[1].weight.shape[0]) if head is not None and hasattr(head[1], "weight") else None
    seed = None if isinstance(model, nn.Module) else getattr(model, "head_seed", None)
    probe = None if isinstance(model, nn.Module) else getattr(model, "head_probe", None)
    if head is None:
        text = "no classifier head found: gradient metrics use the model's output as logits"
    elif seed is None:
        text = f"the model's own {classes}-class head `{head[0]}` (as given; not drawn here)"
    else:
        text = f"a fresh {classes}-class head `{head[0]}` drawn from seed {seed}, " + (
            f"linear-probed for {probe['steps']} steps (seed {probe['seed']}, last train acc {probe['last_acc']:.0%})"
            if probe else "untrained (a random projection)")
    return {"module": head[0] if head else None, "classes": classes, "seed": seed, "probe": probe, "text": text}


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
        hint = ": pass its .val (the probe split the dashboard uses) or .train" if hasattr(data, "val") else ""
        raise TypeError(f"diagnose: data must be a DataLoader, a Dataset or an iterable of batches, got "
                        f"{type(data).__name__}{hint}")
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


def _assemble(pending: Pending, layers: list[LayerInfo], names: set[str], opts: dict, meta: dict,
              bad_inputs: torch.Tensor | None, start: float) -> Diagnosis:
    """One device-to-host transfer of every value and unit score, then the long table, the meta and the warning."""
    dev = pending[0][2].device if pending else torch.device("cpu")
    first = torch.zeros(1, dtype=torch.float64, device=dev) if bad_inputs is None else bad_inputs.reshape(1)
    # [inputs, every value, every unit vector] as float64 (torch.cat promotes), one copy to the host
    parts = [first.to(dev, torch.float64)]
    if pending:
        parts.append(torch.stack([v if v.device == dev else v.to(dev) for _, _, v, _ in pending]).reshape(-1))
    parts += [u.reshape(-1) if u.device == dev else u.reshape(-1).to(dev) for _, _, _, u in pending if u is not None]
    flat = torch.cat(parts).cpu().numpy()  # the one device-to-host transfer
    n_inputs = int(flat[0])
    values, units, i = {}, {}, 1 + len(pending)
    for k, (layer, m, _, u) in enumerate(pending):
        values[(layer, m)] = float(flat[1 + k])
        if u is not None:
            units[(layer, m)] = flat[i:i + u.numel()].copy()
            i += u.numel()
    bad_layers = [l.name for l in layers if values.get((l.name, "nonfinite"), 0) > 0]
    show_nonfinite = "nonfinite" in names or bad_layers
    present = {m for _, m in values}
    computed = [m for m in METRICS.names() if m in present and (m != "nonfinite" or show_nonfinite)]
    rows = [(l.name, m, values[(l.name, m)]) for l in layers for m in computed if (l.name, m) in values]
    weight_bad = sum(values[(l, m)] for (l, m) in values if m == "nonfinite")
    meta.update({
        "metric_versions": {m: METRICS[m].version for m in computed},
        "metric_params": {m: opts[m] for m in computed if opts[m]},
        "nonfinite": {"inputs": n_inputs, "layers": bad_layers, "per_layer_total": float(weight_bad)},
        "seconds": time.perf_counter() - start,
        "layers": [_layer_meta(l) for l in layers],
    })
    if n_inputs or bad_layers:
        shown = ", ".join(bad_layers[:8]) + (f" and {len(bad_layers) - 8} more" if len(bad_layers) > 8 else "")
        warnings.warn(f"diagnose: {n_inputs} non-finite input values; non-finite weights or statistics in "
                      f"{len(bad_layers)} layer(s): {shown or 'none'}. Their metrics are partial or NaN (column "
                      f"'nonfinite'); no recommendation is made from this diagnosis.", NonFiniteWarning, stacklevel=3)
    return Diagnosis.from_rows(rows, units, meta)


def _layer_meta(layer: LayerInfo) -> dict[str, Any]:
    keys = ("name", "module_name", "kind", "units", "params", "group", "order", "act_type", "head", "grouped",
            "depthwise", "patch_embed")
    d = {k: getattr(layer, k) for k in keys}
    d["shape"] = list(layer.shape)
    return d
