"""Widget groups shared by pages: backbone and dataset pickers, strategy parameters generated from the registry.

Widgets take their initial value from the session's committed setup (``value=``/``index=``) and hold their own
state under ``w_*`` keys only while their page is shown; pages commit values to plain keys on actions.
"""
from __future__ import annotations

import difflib
import math
from typing import Any

import streamlit as st

import plasticity_core as pc
from plasticity_core.models import BUNDLED, BUNDLED_ABOUT

BACKBONE_SOURCES = {"bundled": "Bundled (offline ImageNet)", "timm": "timm", "torchvision": "torchvision",
                    "file": "Checkpoint file"}
DATA_SOURCES = {"bundled": "Bundled (offline)", "folder": "Image folder", "torchvision": "torchvision",
                "synthetic": "Synthetic"}
BUNDLED_DATA = ["animal-silhouettes", "mnist-5k"]


def _split(spec: str, sources: dict[str, str]) -> tuple[str, str]:
    scheme, _, rest = spec.partition(":")
    return (scheme, rest) if scheme in sources else (next(iter(sources)), "")


@st.cache_data(show_spinner=False)
def timm_names() -> list[str]:
    import timm

    return timm.list_models()


@st.cache_data(show_spinner=False)
def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _search(label: str, names: list[str], current: str, key: str) -> str:
    """A search box over ``names``: substring matches to pick from, close matches when nothing matches."""
    query = st.text_input(f"Search {label} models", value=current, key=f"{key}_q").strip()
    hits = [n for n in names if query.lower() in n.lower()] if query else names
    if not hits:
        close = difflib.get_close_matches(query, names, n=5, cutoff=0.5)
        st.warning(f"No {label} model contains {query!r}." + (f" Close matches: {', '.join(close)}" if close else ""))
        return query
    index = hits.index(query) if query in hits else 0
    return st.selectbox(f"{label} model ({len(hits)} matches)", hits[:500], index=min(index, 499), key=f"{key}_pick")


def backbone_picker(setup: dict[str, Any]) -> tuple[str, str]:
    """Source + name widgets; returns (spec, arch) where arch is only used for checkpoint files."""
    scheme, name = _split(setup["backbone"], BACKBONE_SOURCES)
    source = st.radio("Source", list(BACKBONE_SOURCES), format_func=BACKBONE_SOURCES.get, horizontal=True,
                      index=list(BACKBONE_SOURCES).index(scheme), key="w_bb_source")
    keep = name if source == scheme else ""
    if source == "bundled":
        names = list(BUNDLED)
        name = st.selectbox("Bundled backbone", names, index=names.index(keep) if keep in names else 0, key="w_bb_bundled")
        st.caption(BUNDLED_ABOUT.get(name, ""))
        return f"bundled:{name}", ""
    if source == "timm":
        return f"timm:{_search('timm', timm_names(), keep or 'resnet18', 'w_bb_timm')}", ""
    if source == "torchvision":
        return f"torchvision:{_search('torchvision', torchvision_names(), keep or 'resnet18', 'w_bb_tv')}", ""
    path = st.text_input("Checkpoint path (.pth, .pt, .safetensors)", value=keep, key="w_bb_path")
    arch = st.text_input("Architecture", value=setup.get("arch") or "timm:resnet18", key="w_bb_arch",
                         help="timm:NAME or torchvision:NAME that the checkpoint's tensors fit")
    return f"file:{path}", arch


def dataset_picker(setup: dict[str, Any]) -> str:
    """Source + name widgets; returns the dataset spec."""
    scheme, rest = _split(setup["data"], DATA_SOURCES)
    source = st.radio("Source", list(DATA_SOURCES), format_func=DATA_SOURCES.get, horizontal=True,
                      index=list(DATA_SOURCES).index(scheme), key="w_data_source")
    keep = rest if source == scheme else ""
    if source == "bundled":
        return "bundled:" + st.selectbox("Bundled dataset", BUNDLED_DATA,
                                         index=BUNDLED_DATA.index(keep) if keep in BUNDLED_DATA else 0, key="w_data_bundled")
    if source == "folder":
        return "folder:" + st.text_input("Image folder (one sub-folder per class)", value=keep, key="w_data_folder")
    if source == "torchvision":
        return "torchvision:" + st.text_input("torchvision dataset (NAME?root=DIR&download=1)",
                                              value=keep or "CIFAR10?root=data", key="w_data_tv")
    return "synthetic:" + st.text_input("Synthetic options", value=keep or "classes=4,n=256,size=32", key="w_data_syn")


def strategy_picker(key: str, label: str = "Strategy") -> str:
    """A strategy selectbox bound to the session's one chosen strategy (shared by Diagnose and Re-init)."""
    names = pc.STRATEGIES.names()
    current = st.session_state.get("strategy")
    if current not in names:
        current = names[0]
    st.session_state["strategy"] = current
    if st.session_state.get(key) != current:  # another page (or a recommendation) changed it
        st.session_state[key] = current
    return st.selectbox(label, names, key=key, on_change=lambda: st.session_state.update(strategy=st.session_state[key]))


def strategy_params(info: Any, current: dict[str, Any], key: str) -> dict[str, Any]:
    """One widget per declared parameter of a strategy (type, range, choices, help and default from the registry)."""
    values = {}
    for p in info.params:
        value = current.get(p.name, p.default)
        help_text = f"{p.help} Default: {p.default!r}; {p.range_text()}."
        wkey = f"{key}_{info.name}_{p.name}"
        if p.choices is not None:
            choices = list(p.choices)
            values[p.name] = st.selectbox(p.name, choices, index=choices.index(value) if value in choices else 0,
                                          help=help_text, key=wkey)
        elif p.type == "bool":
            values[p.name] = st.checkbox(p.name, value=bool(value), help=help_text, key=wkey)
        elif p.type == "int":
            values[p.name] = int(st.number_input(p.name, value=int(value), step=1, help=help_text, key=wkey,
                                                 min_value=None if p.min is None else int(p.min),
                                                 max_value=None if p.max is None else int(p.max)))
        elif p.type == "float":
            values[p.name] = float(st.number_input(p.name, value=float(value), help=help_text, key=wkey,
                                                   format="%.4g", step=_step(value),
                                                   min_value=None if p.min is None else float(p.min),
                                                   max_value=None if p.max is None else float(p.max)))
        else:
            values[p.name] = st.text_input(p.name, value=str(value), help=help_text, key=wkey)
    return values


def _step(value: float) -> float:
    """A tenth of the value's order of magnitude (0.01 for zero): sensible +/- steps for any parameter."""
    v = abs(float(value))
    return 0.01 if v == 0 else 10.0 ** (math.floor(math.log10(v)) - 1)


def kept(key: str, default: Any) -> Any:
    """The value widget ``key`` had when this workspace last drew it (``state.save`` records them), else ``default``."""
    value = st.session_state.get("form", {}).get(key, default)
    return type(default)(value) if isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None else value


def executors() -> tuple[dict[str, str], dict[str, str]]:
    """Executors this installation can use (name -> label) and those it cannot (name -> the one-line reason)."""
    ok, missing = {}, {}
    for name, info in pc.EXECUTORS.items():
        try:
            info.check()
        except Exception as e:  # noqa: BLE001 - MissingExtraError: its message names the pip extra
            missing[name] = str(e)
        else:
            ok[name] = f"{name}: {info.doc.split(';')[0]}"
    return ok, missing


def errors() -> tuple[type[BaseException], ...]:
    """The library's user-facing errors, shown in the page instead of a traceback."""
    return (pc.BackboneError, pc.DatasetError, pc.ConfigError, pc.AssetMissingError, ValueError, KeyError,
            FileNotFoundError, TypeError, RuntimeError)
