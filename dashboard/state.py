"""Session state and cached resources of the dashboard.

Pretrained weights are loaded once per process and shared read-only (``st.cache_resource``); every browser
session works on its own copy (a session-scoped resource, freed when the session ends). Datasets are cached
once per (spec, size, limit, normalisation). Page results (diagnosis, selection, re-init config, runs) live in
``st.session_state`` under plain keys, never under widget keys, so they survive page switches.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
import torch

import plasticity_core as pc

DEFAULT_SETUP: dict[str, Any] = {
    "backbone": "bundled:mobilenetv2_100",
    "pretrained": True,
    "arch": "",
    "data": "bundled:animal-silhouettes",
    "image_size": 64,
    "limit": 0,  # 0: the whole dataset
    "device": "cpu",
}
RUNS_ENV = "PLASTICITY_RUNS"


@dataclass
class Loaded:
    """What Setup loaded for this session: the working backbone (own copy) and the target data."""

    setup: dict[str, Any]
    backbone: pc.Backbone
    data: pc.DataBundle

    @property
    def model(self) -> torch.nn.Module:
        return self.backbone.model

    @property
    def device(self) -> str:
        return self.setup["device"]


def init() -> None:
    """Default session keys (called by the entry script before any page)."""
    st.session_state.setdefault("setup", dict(DEFAULT_SETUP))
    st.session_state.setdefault("selected_layers", [])
    st.session_state.setdefault("exclude_patterns", [])


def devices() -> list[str]:
    """Devices this machine offers, CPU first."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


@st.cache_resource(show_spinner=False, max_entries=3)
def pretrained_backbone(spec: str, pretrained: bool, arch: str) -> pc.Backbone:
    """The backbone as loaded, shared by all sessions: never mutate it, take ``fresh_copy()``."""
    return pc.load_backbone(spec, pretrained=pretrained, arch=arch or None)


@st.cache_resource(show_spinner=False, max_entries=3)
def dataset(spec: str, image_size: int, limit: int, mean: tuple, std: tuple) -> pc.DataBundle:
    """A train/val split (read-only tensors, so shared rather than pickled per call)."""
    return pc.load_dataset(spec, image_size=image_size, limit=limit or None, mean=mean, std=std)


def _release(backbone: pc.Backbone) -> None:
    backbone.model.to("cpu")
    del backbone
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@st.cache_resource(show_spinner=False, scope="session", max_entries=1, on_release=_release)
def working_backbone(spec: str, pretrained: bool, arch: str, num_classes: int, device: str) -> pc.Backbone:
    """This session's own copy with a fresh head for the target classes; its reference includes that head."""
    shared = pretrained_backbone(spec, pretrained, arch)
    torch.manual_seed(0)  # the fresh head is the same in every session
    bb = pc.load_backbone(shared.fresh_copy(), num_classes=num_classes, device=device)
    bb.name, bb.source, bb.data_config, bb.pretrained = shared.name, shared.source, shared.data_config, shared.pretrained
    return bb


def load(setup: dict[str, Any], step=lambda msg: None) -> Loaded:
    """Load a setup (weights, data, working copy); ``step(msg)`` reports progress. Raises the library's errors."""
    step(f"Weights: {setup['backbone']}")
    shared = pretrained_backbone(setup["backbone"], setup["pretrained"], setup["arch"])
    cfg = shared.data_config
    step(f"Data: {setup['data']} at {setup['image_size']} px")
    data = dataset(setup["data"], int(setup["image_size"]), int(setup["limit"]), tuple(cfg["mean"]), tuple(cfg["std"]))
    step(f"Working copy on {setup['device']} with a {data.num_classes}-class head")
    bb = working_backbone(setup["backbone"], setup["pretrained"], setup["arch"], data.num_classes, setup["device"])
    return Loaded(dict(setup), bb, data)


def loaded() -> Loaded | None:
    """The session's loaded setup (cache hits after the first load), or None before Setup succeeded."""
    setup = st.session_state.get("loaded_setup")
    return None if setup is None else load(setup)


def require_loaded() -> Loaded:
    """The loaded setup, or a pointer to Setup and a stop of the page when nothing is loaded yet."""
    current = loaded()
    if current is None:
        st.info("Load a backbone and a dataset first.")
        st.page_link("app_pages/setup.py", label="Go to Setup", icon=":material/tune:")
        st.stop()
    return current


def commit_loaded(result: Loaded) -> None:
    """Make ``result`` the session's setup; results computed on another setup are dropped."""
    if st.session_state.get("loaded_setup") != result.setup:
        for key in ("diagnosis", "preview", "reinit_cfg", "recommendation"):
            st.session_state.pop(key, None)
        st.session_state["selected_layers"] = []
    st.session_state["loaded_setup"] = result.setup


def runs_root() -> Path:
    """Where run folders go: ``$PLASTICITY_RUNS`` or ``./runs``."""
    return Path(os.environ.get(RUNS_ENV, "runs")).resolve()
