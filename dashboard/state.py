"""Session state and cached resources of the dashboard.

Pretrained weights are loaded once per process and shared read-only (``st.cache_resource``); every browser
session works on its own copy (a session-scoped resource, freed when the session ends). Datasets are cached
once per (spec, size, limit, normalisation). Page results (diagnosis, selection, re-init config, runs) live in
``st.session_state`` under plain keys, never under widget keys, so they survive page switches.

The workspace (setup, diagnosis, selection, strategy, preview, form values) is also written under the runs root,
``<runs>/.workspaces/<id>/``, after every script run; ``?ws=<id>`` in the URL names it, so a browser reload
(a new session) restores it instead of starting over.
"""
from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import re
import threading
import time
import uuid
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import streamlit as st
import torch

import plasticity_core as pc
from plasticity_core.files import write_atomic
from plasticity_core.setup import with_head
from plasticity_core.metrics import precompute_weight_metrics

DEFAULT_SETUP: dict[str, Any] = {
    "backbone": "bundled:mobilenetv2_100",
    "pretrained": True,
    "arch": "",
    "data": "bundled:animal-silhouettes",
    "image_size": 64,
    "limit": 0,  # 0: the whole dataset
    "device": "cpu",
    "head_seed": 0,  # the fresh classifier head is drawn from this seed (load_backbone(..., seed=head_seed))
    "head_probe_steps": 0,  # linear probe of that head before gradient metrics (experiments/head_probe.py: default 0)
}
RUNS_ENV = "PLASTICITY_RUNS"
WS_PARAM = "ws"
FORM_PREFIXES = ("w_ft_",)  # widget keys whose values are kept in the workspace's "form"
NOT_KEPT = ("w_ft_anyway", "w_ft_experiment", "w_ft_own", "w_ft_name", "w_ft_stop_one")  # per launch, or kept only when typed
# plain session keys that make up the workspace (JSON-able); diagnosis, preview and re-init config have own files
PERSISTED = ("setup", "loaded_setup", "selected_layers", "diag_metrics", "diag_batches", "strategy", "strategy_params",
             "form", "experiment", "preview_for", "my_experiments")
REINIT_WIDGETS = ("w_param_", "w_reinit_seed", "w_exclude", "w_recal")  # Re-init's form: redrawn from reinit_cfg


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
    """Default session keys, and the workspace named in the URL restored once per session (called by the entry
    script before any page)."""
    ws = workspace_id()
    if st.session_state.get("ws_restored") != ws:
        restore(ws)
        st.session_state["ws_restored"] = ws
    st.session_state.setdefault("setup", dict(DEFAULT_SETUP))
    st.session_state.setdefault("selected_layers", [])
    st.session_state.setdefault("form", {})


def workspace_id() -> str:
    """The workspace named by ``?ws=`` (a new one when absent or malformed); always written back into the URL."""
    ws = st.query_params.get(WS_PARAM) or st.session_state.get("ws_restored") or ""
    if not re.fullmatch(r"[0-9a-f]{8,32}", ws):
        ws = uuid.uuid4().hex[:12]
    if st.query_params.get(WS_PARAM) != ws:
        st.query_params[WS_PARAM] = ws
    return ws


def workspace_dir(ws: str) -> Path:
    return runs_root() / ".workspaces" / ws


def restore(ws: str) -> bool:
    """Load a saved workspace into this session (True if one was found).

    The file is validated, not trusted: non-UTF-8 bytes or invalid JSON set it aside (renamed ``*.broken-<time>``,
    said once) and the session starts fresh; a value of the wrong type is dropped with a one-line note, so no page
    ever meets it. The version read is remembered: ``save`` writes only over the version this session has seen.
    """
    folder = workspace_dir(ws)
    path = folder / "workspace.json"
    st.session_state["ws_version"] = 0
    if not path.exists():
        return False
    try:
        saved = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON {type(saved).__name__}, not an object")
    except (UnicodeDecodeError, ValueError) as e:
        aside = path.with_name(f"workspace.json.broken-{int(time.time())}")
        try:
            path.replace(aside)
        except OSError:
            pass
        what = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else f"not a workspace ({str(e)[:80]})"
        st.session_state["restore_error"] = (f"Workspace {ws}: workspace.json is {what}; set aside as {aside.name}, "
                                             f"starting fresh.")
        return False
    except OSError as e:
        st.session_state["restore_error"] = f"Workspace {ws} could not be read ({message(e)}); starting fresh."
        return False
    clean, problems = validate_workspace(saved)
    st.session_state["ws_version"] = clean.pop(VERSION_KEY, 0)
    for key in PERSISTED:
        if key in clean:
            st.session_state[key] = clean[key]
    try:
        if (folder / "diagnosis.parquet").exists():
            st.session_state["diagnosis"] = pc.Diagnosis.load(folder / "diagnosis.parquet")
            st.session_state["saved_diagnosis"] = id(st.session_state["diagnosis"])
        if (folder / "reinit_config.yaml").exists():
            st.session_state["reinit_cfg"] = pc.ReinitConfig.from_yaml((folder / "reinit_config.yaml").read_text())
        if (folder / "preview.json").exists():
            st.session_state["preview"] = pc.ReinitReport.from_dict(json.loads((folder / "preview.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError, pc.ConfigError) as e:
        problems.append(f"its saved results could not be read ({type(e).__name__}: {str(e)[:120]})")
    if problems:
        st.session_state["restore_error"] = f"Workspace {ws} restored in part: " + "; ".join(problems) + "."
    return True


VERSION_KEY = "_version"  # bumped by every save; a tab writes only over the version it has seen
_SETUP_TYPES = {k: type(v) for k, v in DEFAULT_SETUP.items()}
_LIST_OF_STR = ("selected_layers", "diag_metrics")


def validate_workspace(saved: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The values of a saved workspace that have the types the pages expect, and a note per value dropped."""
    clean: dict[str, Any] = {}
    problems: list[str] = []

    def drop(key: str, why: str) -> None:
        problems.append(f"{key} dropped ({why})")

    version = saved.get(VERSION_KEY, 0)
    clean[VERSION_KEY] = version if isinstance(version, int) and not isinstance(version, bool) and version >= 0 else 0
    for key in ("setup", "loaded_setup"):
        if key not in saved or (key == "loaded_setup" and saved[key] is None):
            continue
        value = saved[key]
        if not isinstance(value, dict):
            drop(key, f"a {type(value).__name__}, not a mapping")
            continue
        bad = [k for k, t in _SETUP_TYPES.items() if k in value and not (
            isinstance(value[k], t) and (t is bool or not isinstance(value[k], bool)))]
        missing = [k for k in ("backbone", "data", "image_size") if k not in value]
        if bad or (key == "loaded_setup" and missing):
            drop(key, f"wrong or missing fields: {', '.join((bad + missing)[:5])}")
            continue
        clean[key] = {k: v for k, v in value.items() if k in _SETUP_TYPES}  # only the fields a setup has
    for key in _LIST_OF_STR:
        if key in saved:
            v = saved[key]
            if isinstance(v, list) and all(isinstance(x, str) for x in v):
                clean[key] = v
            else:
                drop(key, "not a list of names")
    checks = {"diag_batches": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
              "strategy": lambda v: isinstance(v, str),
              "experiment": lambda v: v is None or isinstance(v, str),
              "strategy_params": lambda v: isinstance(v, dict) and all(isinstance(p, dict) for p in v.values()),
              "form": lambda v: isinstance(v, dict) and all(isinstance(k, str) and _plain(x) for k, x in v.items()),
              "preview_for": lambda v: v is None or isinstance(v, dict)}
    for key, ok in checks.items():
        if key in saved:
            if ok(saved[key]):
                clean[key] = saved[key]
            else:
                drop(key, f"unexpected {type(saved[key]).__name__}")
    return clean, problems


@contextlib.contextmanager
def _workspace_lock(folder: Path) -> Iterator[None]:
    """One writer at a time per workspace: a thread lock (tabs of one server) and an flock (several servers)."""
    with _WS_LOCK:
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


_WS_LOCK = threading.Lock()


def _disk_version(path: Path) -> int | None:
    """The version of the workspace file on disk (0: none yet; None: unreadable)."""
    if not path.exists():
        return 0
    try:
        saved = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    v = saved.get(VERSION_KEY, 0) if isinstance(saved, dict) else None
    return v if isinstance(v, int) else None


def _private_dir(folder: Path) -> None:
    """Make the workspace folder (and ``.workspaces``) owner-only: a workspace id is a capability."""
    for d in (folder.parent, folder):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if d.stat().st_mode & 0o077:
            os.chmod(d, 0o700)


def _is_default(data: dict[str, Any]) -> bool:
    """Nothing worth a folder yet: the default setup (loaded or not: a fresh visit loads it anyway), nothing selected
    or computed."""
    return (data.get("setup", DEFAULT_SETUP) == DEFAULT_SETUP and data.get("loaded_setup") in (None, DEFAULT_SETUP)
            and not data.get("selected_layers") and not data.get("form") and not data.get("experiment")
            and not any(st.session_state.get(k) is not None for k in ("diagnosis", "reinit_cfg", "preview")))


def save() -> None:
    """Write the session's workspace (called at the end of every script run; files only rewritten when changed).

    Versioned: the write happens only when the file on disk is the version this session last read or wrote; when
    another tab saved since, nothing is written or deleted here and ``ws_conflict`` says so (the page offers to load
    the other tab's state or keep this one's). A workspace that is still all defaults makes no folder (an odd
    ``?ws=`` visit leaves nothing behind). Folders are 0700 and files 0600.
    """
    ws = st.session_state.get("ws_restored") or workspace_id()
    folder = workspace_dir(ws)
    form = st.session_state.setdefault("form", {})
    for key, value in st.session_state.items():  # widget values of the forms that must survive leaving the page
        if isinstance(key, str) and key.startswith(FORM_PREFIXES) and key not in NOT_KEPT and _plain(value):
            form[key] = value
    data = {k: st.session_state[k] for k in PERSISTED if k in st.session_state}
    if not folder.exists() and _is_default(data):
        return
    try:
        _private_dir(folder)
        with _workspace_lock(folder):
            _save_locked(folder, data)
    except OSError as e:  # a full disk or a read-only store: said on the page, never a traceback on every page
        st.session_state["ws_save_error"] = f"Workspace {ws} not saved: {message(e)}"


def _save_locked(folder: Path, data: dict[str, Any]) -> None:
    path = folder / "workspace.json"
    mine, on_disk = int(st.session_state.get("ws_version", 0)), _disk_version(path)
    if st.session_state.pop("ws_overwrite", False) and on_disk is not None:
        mine = on_disk  # the user chose to keep this tab's state over the other tab's
    if on_disk is not None and on_disk != mine:
        st.session_state["ws_conflict"] = (
            f"Another tab saved this workspace (version {on_disk}; this tab has version {mine}): this tab's changes "
            f"are not saved, and nothing the other tab saved was touched.")
        return
    st.session_state.pop("ws_conflict", None)
    changed = False  # the side files first, then workspace.json with the next version (what other tabs compare)
    diagnosis = st.session_state.get("diagnosis")
    if diagnosis is None:
        changed |= _unlink(folder / "diagnosis.parquet")
    elif st.session_state.get("saved_diagnosis") != id(diagnosis):
        diagnosis.save(folder / "diagnosis.parquet")
        os.chmod(folder / "diagnosis.parquet", 0o600)
        st.session_state["saved_diagnosis"] = id(diagnosis)
        changed = True
    cfg, preview = st.session_state.get("reinit_cfg"), st.session_state.get("preview")
    for name, text in (("reinit_config.yaml", cfg.to_yaml() if cfg is not None else None),
                       ("preview.json", json.dumps(preview.to_dict(), default=str) if preview is not None else None)):
        if text is None:
            changed |= _unlink(folder / name)
        else:
            changed |= _write_file_if_changed(folder / name, text)
    if _write_if_changed(path, json.dumps(data, indent=1, sort_keys=True, default=str), mine + 1, force=changed):
        st.session_state["ws_version"] = mine + 1


def reload_workspace() -> None:
    """Replace this tab's workspace with the one on disk (another tab's newer save)."""
    for key in (*PERSISTED, "diagnosis", "saved_diagnosis", "reinit_cfg", "preview", "ws_conflict"):
        st.session_state.pop(key, None)
    restore(st.session_state.get("ws_restored") or workspace_id())
    st.session_state.setdefault("setup", dict(DEFAULT_SETUP))
    st.session_state.setdefault("selected_layers", [])
    st.session_state.setdefault("form", {})


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def _plain(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str)) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _write_file_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` atomically (0600) unless the file already holds it; True when written."""
    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    write_atomic(path, lambda f: f.write(data), mode=0o600)
    return True


def _write_if_changed(path: Path, text: str, version: int, force: bool = False) -> bool:
    """The workspace file: its content without the version compared, written with ``version`` when it differs."""
    data = json.loads(text)
    try:
        old = json.loads(path.read_bytes().decode("utf-8"))
        old.pop(VERSION_KEY, None)
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        old = None
    if old == data and not force:
        return False
    body = json.dumps({**data, VERSION_KEY: version}, indent=1, sort_keys=True, default=str)
    write_atomic(path, lambda f: f.write(body.encode("utf-8")), mode=0o600)
    return True


def config_key(cfg: pc.ReinitConfig) -> dict[str, Any]:
    """What makes a re-init config the same recipe (not what it resolved to): compares a preview with the config."""
    d = cfg.to_dict()
    for k in ("resolved_layers", "skipped_layers", "metric_versions"):
        d.pop(k, None)
    return d


def reinit_seed() -> int:
    """The re-init seed the session's config has (0 before there is one)."""
    cfg = st.session_state.get("reinit_cfg")
    return int(cfg.seed) if cfg is not None else 0


def adopt_config(model: torch.nn.Module, cfg: pc.ReinitConfig, diagnosis: pc.Diagnosis | None = None,
                 from_form: bool = False) -> pc.ReinitConfig:
    """Make ``cfg`` the session's one re-init config, the object Re-init shows, the preview applies, Export writes
    and Fine-tune launches: head seed of the loaded setup, metric versions of the diagnosis, resolved and skipped
    layers from the plan. A preview of another recipe is dropped. Unless ``from_form`` (Re-init's own widgets), the
    Re-init widgets are reset so that they show this config."""
    setup = st.session_state.get("loaded_setup") or {}
    cfg.head_seed = head_seed(setup)
    cfg.head_probe_steps = int(setup.get("head_probe_steps", 0))
    if diagnosis is not None:
        cfg.metric_versions = dict(diagnosis.meta.get("metric_versions", {}))
    plan = pc.plan_reinit(model, cfg)
    cfg.resolved_layers, cfg.skipped_layers = list(plan.touched), dict(plan.skipped)
    st.session_state["reinit_cfg"] = cfg
    st.session_state["strategy"] = cfg.strategy
    st.session_state.setdefault("strategy_params", {})[cfg.strategy] = dict(cfg.params)
    if st.session_state.get("preview_for") != config_key(cfg):
        st.session_state.pop("preview", None)
        st.session_state.pop("preview_for", None)
    if not from_form:
        for key in [k for k in st.session_state if isinstance(k, str) and k.startswith(REINIT_WIDGETS)]:
            del st.session_state[key]
    return cfg


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
def working_backbone(spec: str, pretrained: bool, arch: str, num_classes: int, device: str,
                     head_seed: int = 0, probe_steps: int = 0, data_key: tuple = (), _train=None) -> pc.Backbone:
    """This session's own copy with a fresh head for the target classes drawn from ``head_seed`` (the same head
    the CLI, the exported snippet and a run with that seed draw), linear-probed for ``probe_steps`` on ``_train``
    (the data named by ``data_key``) when asked; its reference includes that head."""
    bb = with_head(pretrained_backbone(spec, pretrained, arch), num_classes, int(head_seed), device=device, copy=True)
    if probe_steps:
        pc.probe_head(bb, _train, steps=int(probe_steps), seed=int(head_seed))
    return bb


def load(setup: dict[str, Any], step=lambda msg: None) -> Loaded:
    """Load a setup (weights, data, working copy); ``step(msg)`` reports progress. Raises the library's errors."""
    step(f"Weights: {setup['backbone']}")
    shared = pretrained_backbone(setup["backbone"], setup["pretrained"], setup["arch"])
    cfg = shared.data_config
    step(f"Data: {setup['data']} at {setup['image_size']} px")
    data = dataset(setup["data"], int(setup["image_size"]), int(setup["limit"]), tuple(cfg["mean"]), tuple(cfg["std"]))
    probe = int(setup.get("head_probe_steps", 0))
    step(f"Working copy on {setup['device']} with a {data.num_classes}-class head (seed {head_seed(setup)}"
         + (f", linear-probed for {probe} steps)" if probe else ")"))
    bb = working_backbone(setup["backbone"], setup["pretrained"], setup["arch"], data.num_classes, setup["device"],
                          head_seed(setup), probe, (setup["data"], int(setup["image_size"]), int(setup["limit"])),
                          data.train)
    start_weight_metrics(bb)
    return Loaded(dict(setup), bb, data)


# ---- weight metrics computed in the background as soon as a model is loaded ----

_WEIGHT_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weight-metrics")
_WEIGHT_JOBS: dict[int, tuple[weakref.ref, Future, float]] = {}  # id(model) -> (model ref, job, start time)
_WEIGHT_LOCK = threading.Lock()


def start_weight_metrics(bb: pc.Backbone) -> Future:
    """Start (once per working model) computing its weight metrics into the library's cache, in a background
    thread, so the first diagnosis only waits for its activation pass. The layer map is traced here, on the
    caller's thread, so the background job runs no forward pass."""
    model = bb.model
    with _WEIGHT_LOCK:
        entry = _WEIGHT_JOBS.get(id(model))
        if entry is not None and entry[0]() is model:
            return entry[1]
        layers = pc.layer_map(model)
        job = _WEIGHT_POOL.submit(precompute_weight_metrics, model, None, layers)
        key = id(model)
        _WEIGHT_JOBS[key] = (weakref.ref(model, lambda _, key=key: _WEIGHT_JOBS.pop(key, None)), job, time.monotonic())
        return job


def weight_metrics_status(bb: pc.Backbone) -> str:
    """One line for the page: the background weight metrics of this model are computing, ready or failed."""
    entry = _WEIGHT_JOBS.get(id(bb.model))
    if entry is None or entry[0]() is not bb.model:
        return "weight metrics: computed with the diagnosis"
    _, job, started = entry
    if not job.done():
        return f"weight metrics: computing in the background ({time.monotonic() - started:.0f} s so far)"
    if job.exception() is not None:
        return f"weight metrics: background computation failed ({message(job.exception())}); the diagnosis computes them"
    slow = job.result()
    return "weight metrics: ready" + (f" ({len(slow)} layer(s) needed an exact SVD)" if slow else "")


def weight_metrics_pending(bb: pc.Backbone) -> bool:
    """Whether this model's background weight metrics are still computing."""
    entry = _WEIGHT_JOBS.get(id(bb.model))
    return entry is not None and entry[0]() is bb.model and not entry[1].done()


def wait_weight_metrics(bb: pc.Backbone) -> None:
    """Wait for this model's background weight metrics (a failure is left to the diagnosis, which reports it)."""
    entry = _WEIGHT_JOBS.get(id(bb.model))
    if entry is not None and entry[0]() is bb.model:
        try:
            entry[1].result()
        except Exception:  # noqa: BLE001 - diagnose recomputes and raises with the library's message
            pass


_MODEL_LOCKS: dict[int, threading.Lock] = {}


def model_lock(model: torch.nn.Module) -> threading.Lock:
    """One lock per working model: a diagnosis or preview holds it, so a second one started by a rerun (a double
    click, Enter in a form while the previous run still computes: Streamlit cannot stop a running library call)
    waits instead of registering its hooks on the same model and mixing both passes' activations."""
    with _WEIGHT_LOCK:
        return _MODEL_LOCKS.setdefault(id(model), threading.Lock())


def head_seed(setup: dict[str, Any]) -> int:
    """The seed of the setup's fresh head (0 for workspaces saved before it was recorded)."""
    return int(setup.get("head_seed", 0))


def loaded() -> Loaded | None:
    """The session's loaded setup (cache hits after the first load), or None before Setup succeeded.

    A restored setup that no longer loads (a moved checkpoint, a deleted folder) is dropped with the reason,
    which Setup shows; it is never silently replaced by another model.
    """
    setup = st.session_state.get("loaded_setup")
    if setup is None:
        return None
    try:
        return load(setup)
    except Exception as e:  # noqa: BLE001 - shown on Setup as the library's one-line message
        st.session_state.pop("loaded_setup", None)
        st.session_state["setup_error"] = f"Could not reload {setup['backbone']} on {setup['data']}: {message(e)}"
        return None


def message(e: BaseException) -> str:
    """The one-line message a user sees for an expected failure (the library's wording, dashboard spellings)."""
    return pc.user_message(e, "dashboard") or f"{type(e).__name__}: {e}"


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
        for key in ("diagnosis", "preview", "preview_for", "reinit_cfg", "recommendation", "strategy_params"):
            st.session_state.pop(key, None)
        st.session_state["selected_layers"] = []
    st.session_state["loaded_setup"] = result.setup


def runs_root() -> Path:
    """Where run folders go: ``$PLASTICITY_RUNS`` or ``./runs``."""
    return Path(os.environ.get(RUNS_ENV, "runs")).resolve()
