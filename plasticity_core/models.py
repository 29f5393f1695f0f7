"""Backbones and where their weights come from.

``load_backbone(spec)`` accepts ``timm:NAME``, ``torchvision:NAME``, ``bundled:mobilenetv2_100`` /
``bundled:tf_efficientnet_lite0`` (real ImageNet weights from the offline cache, mapped into timm models),
``file:PATH`` (a checkpoint, with ``arch=``) or an ``nn.Module``. The returned ``Backbone`` keeps a read-only
copy of the weights as loaded: the reference that SFE measures movement from.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import torch
from torch import nn

from plasticity_core.errors import UserError, file_problem

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BUNDLED = {
    # name -> (asset key, timm architecture, data config)
    "mobilenetv2_100": ("mobilenet_v2", "mobilenetv2_100", dict(
        input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear", crop_pct=0.875)),
    "tf_efficientnet_lite0": ("efficientnet_lite0", "tf_efficientnet_lite0", dict(
        input_size=(3, 224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", crop_pct=0.875)),
}


class BackboneError(UserError):
    """A backbone spec that cannot be honoured: unknown name, unreachable weights, checkpoint that does not fit."""


@dataclass
class Backbone:
    """A model plus what a user needs to feed and judge it.

    ``reference`` is a read-only mapping of the state dict as loaded (pretrained weights and the fresh head):
    the point SFE measures movement from.
    """

    model: nn.Module
    name: str
    source: str  # timm | torchvision | bundled | file | module
    data_config: dict[str, Any]
    reference: Mapping[str, torch.Tensor] = field(repr=False)
    pretrained: bool = True
    num_classes: int | None = None
    head_seed: int | None = None  # the seed the fresh classifier head was drawn from; None: the loaded head was kept
    head_probe: dict[str, Any] | None = None  # the linear probe of the head, when one ran (plasticity_core.head_probe)

    def fresh_copy(self) -> nn.Module:
        """A deep copy of the model with the reference weights loaded (for per-session working copies)."""
        import copy

        m = copy.deepcopy(self.model)
        m.load_state_dict(dict(self.reference))
        return m


def load_backbone(spec: str | nn.Module, pretrained: bool = True, num_classes: int | None = None,
                  arch: str | None = None, device: str | torch.device | None = None, seed: int = 0) -> Backbone:
    """Build a backbone from a spec (see module docstring); a fresh classifier head when ``num_classes`` differs.

    Every random draw of the build comes from ``seed`` (recorded as ``Backbone.head_seed`` when a fresh head was
    drawn): the fresh head is drawn by its own ``reset_parameters()`` on the CPU generator seeded with ``seed``,
    whatever the spec or the path (a spec string or a copy of a loaded module), so the dashboard, the CLI, Python and
    a run worker get the same head; with ``pretrained=False`` the whole random init is drawn from it too. The
    caller's global RNG state is left as it was.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BackboneError(f"seed must be an int (the seed of the fresh head), got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(spec, nn.Module):
            model, name, source, cfg = spec, type(spec).__name__, "module", _data_config(spec)
        else:
            scheme, _, name = str(spec).partition(":")
            if not name:
                raise BackboneError(f"backbone spec {spec!r} needs a scheme: timm:NAME, torchvision:NAME, "
                                    f"bundled:{'|'.join(BUNDLED)}, or file:PATH (with arch=...)")
            loaders = {"timm": _timm, "torchvision": _torchvision, "bundled": _bundled, "file": _file}
            if scheme not in loaders:
                raise BackboneError(f"unknown backbone scheme {scheme!r} in {spec!r}; use one of {', '.join(loaders)}")
            if scheme == "file":
                model, cfg = _file(name, arch, pretrained, None)
            else:
                model, cfg = loaders[scheme](name, pretrained, None)
            source = scheme
        head_seed = None
        if num_classes is not None and _num_classes(model) != num_classes:
            _set_num_classes(model, num_classes)
            _draw_head(model, seed)
            head_seed = seed
    if device is not None:
        model.to(device)
    reference = MappingProxyType({k: v.detach().clone() for k, v in model.state_dict().items()})
    return Backbone(model=model, name=name, source=source, data_config=cfg, reference=reference,
                    pretrained=pretrained and source != "module", num_classes=_num_classes(model), head_seed=head_seed)


def _draw_head(model: nn.Module, seed: int) -> None:
    """Re-draw the classifier head with its module's own default init from the CPU generator seeded with ``seed``."""
    head = _head(model)
    if head is None or not hasattr(head[1], "reset_parameters"):
        raise BackboneError(f"cannot find the classifier head of {type(model).__name__} to draw it from seed {seed}")
    module = head[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        device = module.weight.device
        module.to("cpu")
        module.reset_parameters()
        module.to(device)


def _close(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    return f"; close matches: {', '.join(close)}" if close else ""


def _timm(name: str, pretrained: bool, num_classes: int | None, overlay: dict | None = None) -> tuple[nn.Module, dict]:
    import timm

    if not timm.is_model(name):
        raise BackboneError(f"unknown timm model {name!r}{_close(name, timm.list_models())}")
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if pretrained and overlay is None:
        cached = _timm_weights_offline(name)
        overlay = None if cached is None else {"file": cached}  # offline but cached: load the file, skip the hub
    try:
        model = timm.create_model(name, pretrained=pretrained, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as e:  # hub unreachable, no pretrained tag, ...
        if not pretrained:
            raise
        raise BackboneError(
            f"could not load pretrained weights for timm:{name} ({type(e).__name__}: {' '.join(str(e).split())[:200]}). "
            f"{_OFFLINE_HINT.format(spec=f'timm:{name}')}"
        ) from None
    return model, _data_config(model)


_OFFLINE_HINT = ("Use bundled:" + " or bundled:".join(BUNDLED) + " (real ImageNet weights from the offline cache), "
                 "file:PATH with arch='{spec}', or load without pretrained weights (pretrained=False)")


def _host(url: str) -> str:
    from urllib.parse import urlparse

    return urlparse(url).hostname or url


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the host of ``url`` accepts a TCP connection within ``timeout`` seconds (DNS included).

    Weight downloads retry for about a minute when offline; this answers in seconds. Run in a daemon thread
    because name resolution has no timeout of its own.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    parsed = urlparse(url)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _timm_weights_offline(name: str) -> str | None:
    """For pretrained timm weights: the cached file when the hub cannot be reached (load it directly); ``None`` when
    the hub is reachable (or the user chose the hub's offline mode); ``BackboneError`` at once when the weights are
    neither cached nor reachable, instead of a minute of download retries."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        if constants.HF_HUB_OFFLINE:
            return None  # the hub library answers from its cache at once
        if host_reachable(constants.ENDPOINT):
            return None
        files = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors", "pytorch_model.bin"]
        for f in files:
            cached = try_to_load_from_cache(hub_id, f)
            if isinstance(cached, str):
                return cached
        raise BackboneError(f"timm:{name} pretrained weights ({hub_id}) are not cached and {_host(constants.ENDPOINT)} "
                            f"cannot be reached: offline. {_OFFLINE_HINT.format(spec=f'timm:{name}')}")
    url = getattr(cfg, "url", None)
    if url and not (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file() and not host_reachable(url):
        raise BackboneError(f"timm:{name} pretrained weights ({url}) are not cached and {_host(url)} cannot be reached: "
                            f"offline. {_OFFLINE_HINT.format(spec=f'timm:{name}')}")
    return None


def _torchvision(name: str, pretrained: bool, num_classes: int | None) -> tuple[nn.Module, dict]:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise BackboneError(f"unknown torchvision model {name!r}{_close(name, names)}")
    if pretrained:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.is_file() and not host_reachable(weights.url):
            raise BackboneError(f"torchvision:{name} pretrained weights are not cached ({cached}) and "
                                f"{_host(weights.url)} cannot be reached: offline. "
                                f"{_OFFLINE_HINT.format(spec=f'torchvision:{name}')}")
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    except Exception as e:
        if not pretrained:
            raise
        raise BackboneError(
            f"could not load pretrained weights for torchvision:{name} ({type(e).__name__}: {' '.join(str(e).split())[:200]}). "
            f"Put the file torchvision expects in $TORCH_HOME/hub/checkpoints/, or "
            f"{_OFFLINE_HINT.format(spec=f'torchvision:{name}')[0].lower()}{_OFFLINE_HINT.format(spec=f'torchvision:{name}')[1:]}"
        ) from None
    if num_classes is not None:
        _set_num_classes(model, num_classes)
    return model, _data_config(model)


def _bundled(name: str, pretrained: bool, num_classes: int | None) -> tuple[nn.Module, dict]:
    import timm

    from plasticity_core.assets import asset_path

    if name not in BUNDLED:
        raise BackboneError(f"unknown bundled backbone {name!r}{_close(name, list(BUNDLED))}; bundled: {', '.join(BUNDLED)}")
    asset, arch, cfg = BUNDLED[name]
    model = timm.create_model(arch, pretrained=False)
    if pretrained:
        source = torch.load(asset_path(asset), map_location="cpu", weights_only=True)
        model.load_state_dict(map_in_order(source, model.state_dict()))
    if num_classes is not None:
        _set_num_classes(model, num_classes)
    return model, dict(cfg)


def map_in_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors onto ``target``'s keys by position; every shape must agree.

    torchvision's MobileNetV2 and efficientnet_pytorch's Lite0 define their tensors in the same order as the
    timm models, so a positional map is exact (verified by equal logits in the tests).
    """
    if len(source) != len(target):
        raise BackboneError(f"cannot map checkpoint: {len(source)} tensors vs {len(target)} in the model")
    out = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if tuple(sv.shape) != tuple(tv.shape):
            raise BackboneError(f"cannot map checkpoint: {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return out


def _file(path: str, arch: str | None, pretrained: bool, num_classes: int | None) -> tuple[nn.Module, dict]:
    p = Path(path).expanduser()
    if arch is None:
        raise BackboneError(f"file:{path} needs arch=..., e.g. arch='timm:resnet18' or 'torchvision:resnet18'")
    problem = file_problem(p, "checkpoint")
    if problem:
        raise BackboneError(problem)
    state = read_checkpoint(p)
    scheme, _, arch_name = arch.partition(":")
    if scheme not in ("timm", "torchvision"):
        raise BackboneError(f"arch {arch!r} must be timm:NAME or torchvision:NAME")
    build = _timm if scheme == "timm" else _torchvision
    model, cfg = build(arch_name, False, None)
    ckpt_classes = _checkpoint_classes(model, state)
    if ckpt_classes is not None and ckpt_classes != _num_classes(model):
        _set_num_classes(model, ckpt_classes)
    check_fits(model, state, what=f"checkpoint {p.name}")
    model.load_state_dict(state)
    if num_classes is not None and num_classes != _num_classes(model):
        _set_num_classes(model, num_classes)
    return model, cfg


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pt/.pth`` file, loaded safely (``weights_only=True``)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except SafetensorError as e:
            raise BackboneError(f"{path} is not a readable .safetensors file ({e}); it may be empty or truncated: "
                                f"copy or save it again") from None
    elif path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            if found or "allowed global" in str(e):
                what = f" ({found.group(1)})" if found else ""
                raise BackboneError(f"{path} holds Python objects besides tensors{what}, which are not loaded for safety "
                                    f"(weights_only=True); save model.state_dict() or a .safetensors file") from None
            raise BackboneError(f"{path} is damaged or not a PyTorch checkpoint ({type(e).__name__}); it may be "
                                f"truncated: copy or save it again") from None
        for key in ("state_dict", "model_state_dict", "model", "module"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    else:
        raise BackboneError(f"unsupported checkpoint type {path.suffix!r}: use .safetensors, .pt or .pth")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{path.name} does not hold a state dict of tensors")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Raise ``BackboneError`` listing missing keys, unexpected keys and shape mismatches, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        prefixes = {k.split(".", 1)[0] + "." for k in unexpected if "." in k}
        if missing and len(prefixes) == 1:
            prefix = prefixes.pop()
            if all(k.removeprefix(prefix) in own for k in unexpected):
                raise BackboneError(
                    f"{what} does not fit {type(model).__name__}: every key starts with {prefix!r} (saved from a "
                    f"training wrapper such as a Lightning module); save the inner model's state_dict(), or strip the "
                    f"prefix: {{k.removeprefix({prefix!r}): v for k, v in state.items()}}")

        def cut(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8} more)" if len(items) > 8 else "")
        parts = [f"{len(missing)} missing keys: {cut(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected keys: {cut(unexpected)}" if unexpected else "",
                 f"{len(shapes)} shape mismatches: {cut(shapes)}" if shapes else ""]
        raise BackboneError(f"{what} does not fit {type(model).__name__}: " + "; ".join(p for p in parts if p))


def fixed_image_size(model: nn.Module) -> int | None:
    """The one input side a model accepts (timm / torchvision ViTs without dynamic size), or ``None`` if any works."""
    patch_embed = getattr(model, "patch_embed", None)
    dynamic = getattr(model, "dynamic_img_size", False) or getattr(patch_embed, "dynamic_img_size", False)
    if patch_embed is not None and not dynamic and getattr(patch_embed, "img_size", None):
        return int(patch_embed.img_size[0])
    if type(model).__name__ == "VisionTransformer" and isinstance(getattr(model, "image_size", None), int):
        return int(model.image_size)  # torchvision's
    return None


def check_image_size(backbone: "Backbone | nn.Module", image_size: int) -> None:
    """Refuse an image size the model was not built for (a ViT's patch grid is fixed), naming the size it takes."""
    model = backbone.model if isinstance(backbone, Backbone) else backbone
    size = fixed_image_size(model)
    if size is not None and size != image_size:
        name = backbone.name if isinstance(backbone, Backbone) else type(model).__name__
        raise BackboneError(f"{name} was built for {size} px images, not {image_size} px: use image_size={size} "
                            f"(or a model that takes any size, e.g. a CNN)")


def check_head(backbone: "Backbone", data: Any, fix: str = "num_classes=") -> None:
    """Refuse a classifier head whose number of classes differs from the data's, explaining both numbers."""
    have, want = backbone.num_classes, getattr(data, "num_classes", None)
    if have is None or want is None or have == want:
        return
    raise BackboneError(
        f"the head of {backbone.name} has {have} classes but the data {getattr(data, 'name', '')} has {want}: "
        f"{'labels beyond the head cannot be scored' if want > have else 'its extra outputs match no class'}; "
        f"use {fix}{want} for a fresh {want}-class head, or data with the head's {have} classes")


def _head(model: nn.Module) -> tuple[str, nn.Module] | None:
    from plasticity_core.layers import layer_map

    for layer in layer_map(model):
        if layer.head:
            return layer.module_name, model.get_submodule(layer.module_name)
    return None


def _num_classes(model: nn.Module) -> int | None:
    if hasattr(model, "num_classes") and isinstance(model.num_classes, int):
        return model.num_classes
    head = _head(model)
    return head[1].weight.shape[0] if head else None


def _checkpoint_classes(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    head = _head(model)
    if head is None:
        return None
    w = state.get(f"{head[0]}.weight")
    return None if w is None else int(w.shape[0])


def _set_num_classes(model: nn.Module, num_classes: int) -> None:
    """A fresh classifier head with ``num_classes`` outputs (timm's ``reset_classifier`` where available)."""
    if hasattr(model, "reset_classifier"):
        if getattr(model, "num_classes", None) != num_classes:
            model.reset_classifier(num_classes)
        return
    head = _head(model)
    if head is None:
        raise BackboneError(f"cannot find the classifier head of {type(model).__name__} to give it {num_classes} classes")
    name, old = head
    if old.weight.shape[0] == num_classes:
        return
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, bias=old.bias is not None)
    new.to(old.weight.device, old.weight.dtype)
    model.set_submodule(name, new)


def _data_config(model: nn.Module) -> dict[str, Any]:
    try:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        return {k: cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct") if k in cfg}
    except Exception:
        return dict(input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear",
                    crop_pct=0.875)
