"""The layer map: every weight layer of a model, what feeds what, and how to select layers by name.

A "layer" is a weight matrix a metric or a re-init strategy works on: each ``nn.Conv2d``/``nn.Conv1d``/
``nn.Linear``, and for timm's fused attention ``qkv`` Linear its q, k and v row blocks separately
(named ``<module>.q``, ``.k``, ``.v``). The map is built by tracing one small forward pass with hooks that
follow tensors from module to module, so each layer knows the real activation module its output reaches
(through norms, identities and in-place residual adds), the norm right after it, and its place in the
execution order. Module registration order is never trusted for data flow (timm registers ``downsample``
after ``conv2``).
"""
from __future__ import annotations

import fnmatch
import weakref
from dataclasses import asdict, dataclass, field

import pandas as pd
import torch
from torch import nn

from plasticity_core.errors import UserError
from plasticity_core.hooks import HookSet, kept_modes

# class name (lower case) -> canonical activation type understood by the saturation metric
ACTIVATIONS = {
    "relu": "relu", "relu6": "relu6", "gelu": "gelu", "gelutanh": "gelu", "silu": "silu", "swish": "silu",
    "tanh": "tanh", "sigmoid": "sigmoid", "hardswish": "hardswish", "hardsigmoid": "hardsigmoid",
    "leakyrelu": "leaky_relu", "elu": "elu", "mish": "mish", "prelu": "prelu", "quickgelu": "quick_gelu",
    "celu": "celu", "selu": "selu", "softplus": "softplus",
}
WEIGHT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


def activation_type(module: nn.Module) -> str | None:
    """Canonical name of an activation module (``'relu6'``, ``'gelu'``, ...), or None if it is not one."""
    return ACTIVATIONS.get(type(module).__name__.lower())


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def _is_passthrough(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return _is_norm(module) or name in ("identity", "droppath", "layerscale", "layerscale2d") or name.startswith("dropout") or name.startswith("dropblock")


@dataclass(frozen=True)
class LayerInfo:
    """One weight layer. ``rows`` is the row block of ``module_name``'s weight (q/k/v of a fused qkv), else None."""

    name: str
    module_name: str
    kind: str  # conv | linear | attn_q | attn_k | attn_v
    shape: tuple[int, ...]
    params: int
    units: int
    group: str
    order: int  # position in the forward pass
    rows: tuple[int, int] | None = None
    act: str | None = None  # module name of the activation this layer's output reaches
    act_type: str | None = None
    act_call: int = 0  # which call of a shared activation module (torchvision's ResNet reuses self.relu)
    norm: str | None = None  # norm module directly after this layer
    input_from: str | None = None  # module name of the weight layer whose (activated) output this layer reads
    unit_dim: int = 1  # dimension of the units in the activation tensor: 1 for conv (NCHW), -1 for linear
    grouped: bool = False
    depthwise: bool = False
    patch_embed: bool = False
    head: bool = False
    aliases: tuple[str, ...] = ()  # other modules holding the same (tied) weight: one layer, every name listed

    def weight(self, model: nn.Module) -> torch.Tensor:
        """The layer's weight tensor (a view of the row block for q/k/v), sharing storage with the model."""
        return self.weight_in(model.get_submodule(self.module_name))

    def weight_in(self, module: nn.Module) -> torch.Tensor:
        """``weight`` given the layer's own module (``model.get_submodule(module_name)``, when the caller has it)."""
        w = module.weight
        return w[self.rows[0]:self.rows[1]] if self.rows is not None else w

    def bias(self, model: nn.Module) -> torch.Tensor | None:
        b = model.get_submodule(self.module_name).bias
        if b is None:
            return None
        return b[self.rows[0]:self.rows[1]] if self.rows is not None else b


@dataclass
class Selection:
    """Layers chosen by patterns, and every layer left out with its reason (never a silent skip)."""

    layers: list[LayerInfo]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # the skipped layers no include pattern matched

    @property
    def rejected(self) -> list[tuple[str, str]]:
        """(layer, reason) for the layers the include patterns matched but the selection left out."""
        out = set(self.unmatched)
        return [(name, why) for name, why in self.skipped if name not in out]

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)


_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, list[LayerInfo]]]" = weakref.WeakKeyDictionary()


def _signature(model: nn.Module) -> tuple:
    return tuple((n, id(m), tuple(m.weight.shape)) for n, m in model.named_modules() if isinstance(m, WEIGHT_TYPES))


def layer_map(model: nn.Module, input_size: tuple[int, ...] | None = None) -> list[LayerInfo]:
    """All weight layers of ``model`` in forward order (cached per model until its layers change)."""
    sig = _signature(model)
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == sig and input_size is None:
        return cached[1]
    layers = _build(model, input_size)
    _CACHE[model] = (sig, layers)
    return layers


class LayerMapError(UserError):
    """A model the layer map cannot describe (no Conv1d/Conv2d/Linear layer at all)."""


_UNCOVERED_WHY = {
    nn.Conv3d: "Conv3d: 3-D convolutions are not in the layer map (it covers Conv1d, Conv2d and Linear)",
    nn.ConvTranspose1d: "transposed conv: its weight is C_in x C_out, not a map the metrics or strategies read",
    nn.ConvTranspose2d: "transposed conv: its weight is C_in x C_out, not a map the metrics or strategies read",
    nn.ConvTranspose3d: "transposed conv: its weight is C_in x C_out, not a map the metrics or strategies read",
    nn.Embedding: "embedding table: a lookup, not a weight map over inputs",
    nn.EmbeddingBag: "embedding table: a lookup, not a weight map over inputs",
}


def uncovered_layers(model: nn.Module, layers: list[LayerInfo] | None = None) -> list[tuple[str, str]]:
    """(name, reason) for every weight (a parameter of 2+ dims) the layer map does not cover: ``nn.MultiheadAttention``
    (its packed ``in_proj_weight`` and ``out_proj`` are read by a functional call, never called as layers), Conv3d,
    transposed convs, embeddings, custom parameters, and Conv/Linear modules the traced forward never called."""
    if layers is None:  # ``layers``: the model's layer map, when the caller has it
        try:
            layers = layer_map(model)
        except LayerMapError:
            layers = []
    covered = {n for layer in layers for n in (layer.module_name, *layer.aliases)}
    modules = dict(model.named_modules())  # one walk (this runs in every diagnosis)
    tied = {id(modules[layer.module_name].weight) for layer in layers}
    out: list[tuple[str, str]] = []
    inside_mha: list[str] = []
    for name, m in modules.items():
        if inside_mha and any(name.startswith(p + ".") for p in inside_mha):
            continue
        if isinstance(m, nn.MultiheadAttention):
            inside_mha.append(name)
            out.append((name or "(model)", "nn.MultiheadAttention: its packed in_proj_weight (q, k, v) and out_proj are "
                        "used by F.multi_head_attention_forward, not called as layers: not measured or re-initialised "
                        "(timm's fused qkv Linear is covered)"))
            continue
        if isinstance(m, WEIGHT_TYPES):
            if name not in covered:
                out.append((name, f"{type(m).__name__} not called in the traced forward pass (unused, or the trace input "
                                  f"did not reach it)"))
            continue
        big = _own_matrices(m, tied)
        if not big:
            continue
        why = next((w for t, w in _UNCOVERED_WHY.items() if isinstance(m, t)), None)
        if why is not None:  # a known module type: named by its module
            out.append((name or "(model)", why))
            continue
        for pname, t in big:
            out.append((f"{name}.{pname}" if name else pname,
                        why or f"a {'x'.join(map(str, t.shape))} parameter of a {type(m).__name__} module, not a "
                               f"Conv1d/Conv2d/Linear layer"))
    return out


def _own_matrices(m: nn.Module, skip: set[int]) -> list[tuple[str, torch.Tensor]]:
    """The module's own parameters of 2+ dims not in ``skip`` (ids), each once: what ``named_parameters(recurse=False)``
    yields, without its generator's cost (this runs for every module in every diagnosis)."""
    out, seen = [], set()
    for p, t in m._parameters.items():
        if t is not None and t.dim() >= 2 and id(t) not in skip and id(t) not in seen:
            seen.add(id(t))
            out.append((p, t))
    return out


def layer_table(model: nn.Module) -> pd.DataFrame:
    """One row per weight layer: name, kind, shape, params, group, activation, norm and flags; tied weights are one
    row (``aliases`` names the other modules). ``attrs["uncovered"]`` lists the weights the map leaves out, with why."""
    rows = []
    for layer in layer_map(model):
        d = asdict(layer)
        d["shape"] = "x".join(map(str, layer.shape))
        d["rows"] = None if layer.rows is None else f"{layer.rows[0]}:{layer.rows[1]}"
        d["aliases"] = ", ".join(layer.aliases)
        rows.append(d)
    cols = ["name", "kind", "shape", "params", "units", "group", "act", "act_type", "norm", "grouped",
            "depthwise", "patch_embed", "head", "module_name", "rows", "input_from", "order", "act_call", "unit_dim",
            "aliases"]
    df = pd.DataFrame(rows, columns=cols)
    df.attrs["uncovered"] = uncovered_layers(model)
    return df


def select_layers(
    model: nn.Module,
    include: list[str] | str = ("*",),
    exclude: list[str] | str = (),
    *,
    allow_head: bool = False,
    allow_grouped: bool = False,
    allow_patch_embed: bool = False,
    kinds: tuple[str, ...] | None = None,
) -> Selection:
    """Layers whose name (or module name) matches an ``include`` fnmatch pattern and no ``exclude`` pattern.

    The classifier head, grouped/depthwise convs and patch embeddings are left out unless allowed, because
    re-init strategies define no sound way to treat them; each is listed in ``skipped`` with the reason.
    """
    include = [include] if isinstance(include, str) else list(include)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)

    def matches(layer: LayerInfo, patterns: list[str]) -> str | None:
        for p in patterns:
            if any(fnmatch.fnmatchcase(n, p) for n in (layer.name, layer.module_name, *layer.aliases)):
                return p
        return None

    chosen, skipped, unmatched = [], [], []
    for layer in layer_map(model):
        if matches(layer, include) is None:
            skipped.append((layer.name, f"not matched by include {include}"))
            unmatched.append(layer.name)
        elif (p := matches(layer, exclude)) is not None:
            skipped.append((layer.name, f"excluded by pattern {p!r}"))
        elif (why := unsupported(layer, allow_head=allow_head, allow_grouped=allow_grouped,
                                 allow_patch_embed=allow_patch_embed, kinds=kinds)) is not None:
            skipped.append((layer.name, why))
        else:
            chosen.append(layer)
    return Selection(chosen, skipped, unmatched)


def unsupported(layer: LayerInfo, *, allow_head: bool = False, allow_grouped: bool = False,
                allow_patch_embed: bool = False, kinds: tuple[str, ...] | None = None) -> str | None:
    """Why a matched layer is left out of a selection (head, grouped/depthwise, patch embedding, kind), or None."""
    if layer.head and not allow_head:
        return "classifier head (fresh for the target task; include_head to select it)"
    if layer.grouped and not allow_grouped:
        what = "depthwise" if layer.depthwise else "grouped"
        return f"{what} conv: its (C, 1, k, k) weight is not a C_out x C_in map"
    if layer.patch_embed and not allow_patch_embed:
        return "patch embedding (a patchify conv, never re-initialised by FIRE/ReDo)"
    if kinds is not None and layer.kind not in kinds:
        return f"kind {layer.kind!r} not handled (handles {list(kinds)})"
    return None


# ---------------------------------------------------------------------------------------------------------
# tracing


def _group_labels(model: nn.Module, names: list[str], head: str | None) -> dict[str, str]:
    """Stage/block label per weight layer (``names`` in forward order).

    timm's ``group_matcher`` groups where the model has one (labelled by their common name prefix), else the
    name up to its first block index (``layer2.1``, ``features.3``); undotted layers before any stage are the
    stem, after one they keep their own name (``conv_head``), and the classifier is ``head``.
    """
    labels: dict[str, str] = {}
    matcher = getattr(model, "group_matcher", None)
    if callable(matcher):
        try:
            from timm.models._manipulate import group_modules

            wanted = set(names)
            for members in group_modules(model, matcher(coarse=False)).values():
                members = [m for m in members if m in wanted]
                prefix = _common_prefix(members)
                labels.update({m: prefix for m in members if prefix})
        except Exception:  # a matcher that does not fit the model's modules: fall back to name prefixes
            labels = {}
    in_stages = False
    for n in names:
        if n == head:
            labels[n] = "head"
        elif n not in labels:
            labels[n] = _name_prefix(n) if "." in n else (n if in_stages else "stem")
        in_stages = in_stages or "." in n
    return labels


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    out = []
    for comps in zip(*parts):
        if len(set(comps)) != 1:
            break
        out.append(comps[0])
    if len(names) == 1 and out:
        out = out[:-1]
    return ".".join(out)


def _name_prefix(name: str) -> str:
    comps = name.split(".")
    for i, c in enumerate(comps[:-1]):
        if c.isdigit():
            return ".".join(comps[: i + 1])
    return comps[0]


def _trace_input(model: nn.Module, size: tuple[int, ...] | None) -> list[tuple[int, ...]]:
    """Input shapes to try (without the batch dim): the given one, then by the first weight layer's kind."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = next((m for m in model.modules() if isinstance(m, WEIGHT_TYPES)), None)
    candidates: list[tuple[int, ...]] = [size] if size else []
    if isinstance(first, nn.Linear):  # an MLP: feature vectors
        candidates.append((first.in_features,))
    elif isinstance(first, nn.Conv1d):
        candidates.append((first.in_channels, 64))
    chans = first.in_channels if isinstance(first, nn.Conv2d) else 3
    candidates.append((chans, 64, 64))
    if cfg.get("input_size"):
        candidates.append(tuple(cfg["input_size"]))
    candidates.append((chans, 224, 224))
    return candidates


def _build(model: nn.Module, input_size: tuple[int, ...] | None) -> list[LayerInfo]:
    if not any(isinstance(m, WEIGHT_TYPES) for m in model.modules()):
        gaps = [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
                if any(t.dim() >= 2 for t in m.parameters(recurse=False))]
        raise LayerMapError(f"{type(model).__name__} has no Conv1d, Conv2d or Linear layer: nothing to measure or "
                            f"re-initialise" + (f" (its weights: {', '.join(gaps[:6])}"
                                                f"{' ...' if len(gaps) > 6 else ''})" if gaps else ""))
    names = {id(m): n for n, m in model.named_modules()}
    producer: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # keeps traced tensors alive so their ids are not reused
    in_src: dict[str, str | None] = {}
    stack: list[str] = []
    order: list[str] = []
    act_sources: dict[str, list[tuple[str | None, str | None]]] = {}  # act -> per call (layer, norm)
    after: dict[str, str] = {}  # layer -> the norm directly after it
    reads: dict[str, str | None] = {}  # weight layer -> the weight layer its input comes from

    def first_tensor(args):
        for a in args:
            if isinstance(a, torch.Tensor):
                return a
        return None

    def resolve(src: str | None, used: set[str]) -> tuple[str | None, str | None]:
        norm = None
        for _ in range(64):
            if src is None:  # produced by a functional op inside a norm-act module (timm BatchNormAct2d)
                anc = next((a for a in reversed(stack) if a not in used and _is_norm(model.get_submodule(a))), None)
                if anc is None:
                    return None, norm
                used.add(anc)
                norm = norm or anc
                src = in_src.get(anc)
                continue
            mod = model.get_submodule(src)
            if isinstance(mod, WEIGHT_TYPES):
                return src, norm
            if not _is_passthrough(mod):
                return None, norm
            if _is_norm(mod):
                norm = norm or src
            src = in_src.get(src)
        return None, norm

    def resolve_input(src: str | None) -> str | None:
        """The weight layer behind a weight layer's input, through norms, identities and activations."""
        for _ in range(64):
            if src is None:
                return None
            mod = model.get_submodule(src)
            if isinstance(mod, WEIGHT_TYPES):
                return src
            if activation_type(mod) is not None:
                return act_sources[src][-1][0] if act_sources.get(src) else None
            if not _is_passthrough(mod):
                return None
            src = in_src.get(src)
        return None

    def pre(module, args):
        name = names[id(module)]
        t = first_tensor(args)
        src = producer.get(id(t)) if t is not None else None
        in_src[name] = src
        if isinstance(module, WEIGHT_TYPES):
            order.append(name)
            reads.setdefault(name, resolve_input(src))
        elif _is_norm(module) and src is not None and isinstance(model.get_submodule(src), WEIGHT_TYPES):
            after.setdefault(src, name)
        if activation_type(module) is not None:
            act_sources.setdefault(name, []).append(resolve(src, {name}))
        stack.append(name)

    def post(module, args, out):
        name = names[id(module)]
        if stack and stack[-1] == name:
            stack.pop()
        if isinstance(out, torch.Tensor):
            inner = producer.get(id(out))
            if inner is None or not inner.startswith(name + "."):  # a container passes on its last child's output
                producer[id(out)] = name
            keep.append(out)

    error: Exception | None = None
    with kept_modes(model):
        model.eval()
        with HookSet() as hooks, torch.no_grad():
            for _, m in model.named_modules():
                if m is model:
                    continue
                hooks.forward_pre(m, pre)
                hooks.forward(m, post)
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
            for size in _trace_input(model, input_size):
                producer.clear(); keep.clear(); in_src.clear(); stack.clear(); order.clear()
                act_sources.clear(); after.clear(); reads.clear()
                try:
                    model(torch.randn(2, *size, device=device, dtype=dtype))
                    error = None
                    break
                except Exception as e:  # wrong input size for this model: try the next candidate
                    error = e
    if error is not None:
        raise RuntimeError(f"could not trace the model to build its layer map: {error}") from error

    feeds: dict[str, tuple[str, str, int, str | None]] = {}
    for act, calls in act_sources.items():
        act_t = activation_type(model.get_submodule(act))
        for k, (layer, norm) in enumerate(calls):
            if layer is not None and layer not in feeds:
                feeds[layer] = (act, act_t, k, norm)

    head_name = _head_name(model, order)
    weight_modules = list(dict.fromkeys(order))  # a module called twice is one layer
    owner: dict[int, str] = {}  # a tied weight (one Parameter in several modules) is one layer under its first name
    aliases: dict[str, list[str]] = {}
    for name in list(weight_modules):
        first_name = owner.setdefault(id(model.get_submodule(name).weight), name)
        if first_name != name:
            aliases.setdefault(first_name, []).append(name)
            weight_modules.remove(name)
    for name, m in model.named_modules():  # an uncalled module tied to a called one is a name of that layer too
        if isinstance(m, WEIGHT_TYPES) and name not in order and id(m.weight) in owner:
            aliases.setdefault(owner[id(m.weight)], []).append(name)
    labels = _group_labels(model, weight_modules, head_name)
    first = weight_modules[0] if weight_modules else None
    out: list[LayerInfo] = []
    for name in weight_modules:
        m = model.get_submodule(name)
        w = m.weight
        is_conv = isinstance(m, (nn.Conv1d, nn.Conv2d))
        act, act_t, call, norm = feeds.get(name, (None, None, 0, None))
        norm = norm or after.get(name)
        common = dict(module_name=name, group=labels[name], order=len(out), input_from=reads.get(name),
                      aliases=tuple(aliases.get(name, ())))
        if is_conv:
            grouped = m.groups > 1
            ks = tuple(m.kernel_size)
            stride = tuple(m.stride)
            patch = "patch_embed" in name or (name == first and ks == stride and ks[0] >= 4)
            params = w.numel() + (m.bias.numel() if m.bias is not None else 0)
            out.append(LayerInfo(name=name, kind="conv", shape=tuple(w.shape), params=params, units=w.shape[0],
                                 act=act, act_type=act_t, act_call=call, norm=norm, unit_dim=1, grouped=grouped,
                                 depthwise=grouped and m.groups == m.in_channels, patch_embed=patch,
                                 head=name == head_name, **common))
        elif name.split(".")[-1] == "qkv" and w.shape[0] == 3 * w.shape[1]:
            d = w.shape[1]
            for i, part in enumerate("qkv"):
                params = d * d + (d if m.bias is not None else 0)
                out.append(LayerInfo(name=f"{name}.{part}", kind=f"attn_{part}", shape=(d, d), params=params, units=d,
                                     rows=(i * d, (i + 1) * d), unit_dim=-1, **common))
                common["order"] += 1
        else:
            params = w.numel() + (m.bias.numel() if m.bias is not None else 0)
            out.append(LayerInfo(name=name, kind="linear", shape=tuple(w.shape), params=params, units=w.shape[0],
                                 act=act, act_type=act_t, act_call=call, norm=norm, unit_dim=-1,
                                 patch_embed="patch_embed" in name, head=name == head_name, **common))
    return out


def _head_name(model: nn.Module, order: list[str]) -> str | None:
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            head = get_classifier()
        except Exception:
            head = None
        if isinstance(head, WEIGHT_TYPES):
            for n, m in model.named_modules():
                if m is head:
                    return n
        if isinstance(head, nn.Module):  # e.g. a Sequential head: its last weight layer
            inner = [n for n, m in model.named_modules() if isinstance(m, WEIGHT_TYPES) and any(m is x for x in head.modules())]
            if inner:
                return inner[-1]
        if head is not None:
            return None
    if order and isinstance(model.get_submodule(order[-1]), nn.Linear):
        return order[-1]
    return None
