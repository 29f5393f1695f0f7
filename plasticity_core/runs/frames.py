"""Plot-ready frames of run folders, kept up to date incrementally.

``RunFrames`` follows one run's ``metrics.jsonl`` through the run contract's incremental ``EventReader`` (each
``poll`` parses only the bytes written since the last one) and keeps two tidy tables: scalar curves
(step, time, metric, value) and per-layer snapshots over training (step, layer, metric, value), from any loop that
writes the contract (ours, the Lightning / Hugging Face callbacks, ``pc.track``). ``FrameCache`` holds one per run
folder for a live view. The rest are pure functions on those tables: TensorBoard's debiased EMA smoothing, curves per
seed or mean + band, layers x steps matrices and their difference to a baseline of the same seed, the run table with
every config field that differs between runs, and whether two experiments' setups are comparable.
"""
from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from plasticity_core.config import ExperimentConfig
from plasticity_core.runs.store import Run
from plasticity_core.train.events import FINAL, EventReader

SCALAR_EVENTS = {"step": ("loss", "lr", "images_per_s"), "eval": ("val_acc", "val_loss")}
SCALAR_COLUMNS = ["step", "time", "metric", "value"]
ENDED_EARLY = tuple(s for s in FINAL if s != "finished")  # runs whose curves stay out of means and bands
SNAPSHOT_COLUMNS = ["step", "layer", "metric", "value"]
# fields that do not change what a run computes: left out of the config diff and of the setup comparison
NOT_A_SETTING = {"name", "launch", "schema_version", "seeds", "finetune.device", "finetune.num_workers",
                 "finetune.data_path", "finetune.data_memory_mb", "finetune.checkpoint", "finetune.save_optimizer",
                 "finetune.checkpoint_every", "finetune.time_limit_s", "finetune.schema_version", "arm.schema_version",
                 "arm.resolved_layers", "arm.skipped_layers", "arm.metric_versions", "finetune.diagnose_every",
                 "finetune.diagnose_metrics", "finetune.seed", "arm.seed", "finetune.eval_every", "finetune.eval_batches", "finetune.compile"}


class RunFrames:
    """One run folder's scalar and snapshot tables, extended by ``poll()`` with the events written since the last.

    A ``resume`` event at step k drops what the interrupted attempt recorded beyond k (as ``Run.events`` does), so a
    curve never has two points for one step. ``time`` is seconds since the run's first event.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.run = Run(self.path)  # kept across polls: its config is parsed once
        self._reader = EventReader(self.path / "metrics.jsonl")
        self._lock = threading.Lock()
        self._scalars: list[tuple[float, float, str, float]] = []
        self._snaps: list[tuple[float, str, str, float]] = []
        self._t0: float | None = None
        self._seen = 0
        self.reinit_layers: list[str] = []  # the layers the run's re-init touched (its ``reinit`` event)
        self._tables: dict[str, pd.DataFrame] = {}
        self.version = 0  # bumped whenever new events arrived (a key for figures built from these tables)
        self.snapshot_version = 0  # bumped only when the snapshot table changed

    def poll(self) -> bool:
        """Read what was appended since the last poll; True if anything new arrived."""
        with self._lock:
            new = self._reader.poll()
            if not new:
                return False
            if len(self._reader.events) == len(new) and self._seen:  # the file was replaced: start over
                self._scalars, self._snaps, self._t0, self.reinit_layers = [], [], None, []
                self._tables.clear()
                self.snapshot_version += 1
            self._seen = len(self._reader.events)
            n_scalars, n_snaps = len(self._scalars), len(self._snaps)
            for e in new:
                self._add(e)
            if len(self._scalars) != n_scalars or any(e.get("type") == "resume" for e in new):
                for key in [k for k in self._tables if k == "scalars" or k.startswith("series:")]:
                    del self._tables[key]
            if len(self._snaps) != n_snaps or any(e.get("type") == "resume" for e in new):
                self._tables.pop("snaps", None)
                self.snapshot_version += 1
            self.version += 1
            return True

    def _add(self, e: Mapping[str, Any]) -> None:
        kind, step = e.get("type"), e.get("step")
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            return
        t = e.get("time")
        t = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else math.nan
        if self._t0 is None and t == t:
            self._t0 = t
        rel = t - self._t0 if self._t0 is not None and t == t else math.nan
        if kind == "reinit":
            self.reinit_layers = [str(x) for x in e.get("resolved_layers") or []]
        elif kind == "resume":
            self._scalars = [r for r in self._scalars if r[0] <= step]
            self._snaps = [r for r in self._snaps if r[0] <= step]
        elif kind in SCALAR_EVENTS:
            for metric in SCALAR_EVENTS[kind]:
                v = e.get(metric)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._scalars.append((float(step), rel, metric, float(v)))
        elif kind == "diagnosis":
            for row in e.get("rows") or []:
                v = row.get("value") if isinstance(row, Mapping) else None
                if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(row.get("layer"), str):
                    self._snaps.append((float(step), row["layer"], str(row.get("metric")), float(v)))

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event parsed so far, in file order (the reader's list: do not modify)."""
        return self._reader.events

    def scalars(self) -> pd.DataFrame:
        """step, time, metric, value for loss / lr / images_per_s (step events) and val_acc / val_loss (evals)."""
        with self._lock:
            if "scalars" not in self._tables:
                self._tables["scalars"] = pd.DataFrame(self._scalars, columns=SCALAR_COLUMNS)
            return self._tables["scalars"]

    def series(self, metric: str) -> pd.DataFrame:
        """step, time, value of one scalar metric in step order (cached until that metric gets new values)."""
        with self._lock:
            key = f"series:{metric}"
            if key not in self._tables:
                rows = [(st, t, v) for st, t, m, v in self._scalars if m == metric]
                df = pd.DataFrame(rows, columns=["step", "time", "value"], dtype=float)
                self._tables[key] = df.sort_values("step", kind="stable", ignore_index=True)
            return self._tables[key]

    def snapshots(self) -> pd.DataFrame:
        """step, layer, metric, value: every per-layer snapshot the run recorded (layers in network order)."""
        with self._lock:
            if "snaps" not in self._tables:
                self._tables["snaps"] = pd.DataFrame(self._snaps, columns=SNAPSHOT_COLUMNS)
            return self._tables["snaps"]


class FrameCache:
    """``RunFrames`` per run folder, made once and polled by the caller (one incremental read per run per tick)."""

    def __init__(self) -> None:
        self._frames: dict[Path, RunFrames] = {}
        self._lock = threading.Lock()

    def get(self, path: str | os.PathLike) -> RunFrames:
        key = Path(path).resolve()
        with self._lock:
            if key not in self._frames:
                self._frames[key] = RunFrames(key)
            return self._frames[key]

    def poll(self, paths: Iterable[str | os.PathLike]) -> list[RunFrames]:
        """Each run's frames, after one poll each."""
        out = []
        for p in paths:
            f = self.get(p)
            f.poll()
            out.append(f)
        return out


# ----------------------------------------------------------------------------------------------------- curves
def ema(values: Sequence[float], weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average with the debias term of TensorBoard's scalar dashboard
    (``last = last * w + (1 - w) * v``; ``smoothed = last / (1 - w ** n)``, n = finite values so far). Non-finite
    values pass through unsmoothed and do not enter the average; ``weight`` 0 returns the values as they are."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight {weight!r} must be in [0, 1)")
    vals = np.asarray(values, dtype=float).tolist()  # plain floats: a Python loop over them is several times faster
    out, last, n, debias = [], 0.0, 0, 1.0
    for v in vals:
        if v != v or v in (math.inf, -math.inf):
            out.append(v)
            continue
        last = last * weight + (1.0 - weight) * v
        n += 1
        debias *= weight
        out.append(last / (1.0 - debias) if weight else v)
    return np.asarray(out, dtype=float)


def curve_points(runs: Sequence[tuple[str, int, pd.DataFrame, str]], smoothing: float = 0.0) -> pd.DataFrame:
    """One metric of several runs as arm, seed, status, step, time, value, smoothed (smoothed per run, in step order).

    ``runs``: (arm, seed, that metric's ``RunFrames.series(metric)``: step, time, value; the run's status).
    """
    parts = [(arm, seed, status, g) for arm, seed, g, status in runs if len(g)]
    if not parts:
        return pd.DataFrame(columns=["arm", "seed", "status", "step", "time", "value", "smoothed"])
    g = [p[3].sort_values("step", kind="stable") for p in parts]
    sizes = [len(x) for x in g]
    return pd.DataFrame({
        "arm": np.repeat(np.array([p[0] for p in parts], dtype=object), sizes),
        "seed": np.repeat([p[1] for p in parts], sizes),
        "status": np.repeat(np.array([p[2] for p in parts], dtype=object), sizes),
        "step": np.concatenate([x["step"].to_numpy(float) for x in g]),
        "time": np.concatenate([x["time"].to_numpy(float) for x in g]),
        "value": np.concatenate([x["value"].to_numpy(float) for x in g]),
        "smoothed": np.concatenate([ema(x["value"].to_numpy(float), smoothing) for x in g]),
    })


def mean_band(points: pd.DataFrame) -> pd.DataFrame:
    """Per arm and step over the seeds present there: mean, min, max of the smoothed and of the raw value, mean time,
    seed count. Runs that ended early (stopped, failed, cancelled) are left out: their numbers are not comparable."""
    if "status" in points.columns:
        points = points[~points["status"].isin(ENDED_EARLY)]
    if points.empty:
        return pd.DataFrame(columns=["arm", "step", "time", "mean", "min", "max", "raw_mean", "n_seeds"])
    g = points.groupby(["arm", "step"], sort=False)
    out = g.agg(time=("time", "mean"), mean=("smoothed", "mean"), min=("smoothed", "min"), max=("smoothed", "max"),
                raw_mean=("value", "mean"), n_seeds=("seed", "nunique")).reset_index()
    return out.sort_values(["arm", "step"], kind="stable").reset_index(drop=True)


# -------------------------------------------------------------------------------------------------- snapshots
def snapshot_matrix(snapshots: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Layers (rows, in the order the run recorded them: network order) x steps (columns) of one metric."""
    g = snapshots[snapshots["metric"] == metric]
    if g.empty:
        return pd.DataFrame()
    layers = list(dict.fromkeys(g["layer"]))
    m = g.pivot_table(index="layer", columns="step", values="value", aggfunc="last")
    return m.reindex(index=layers).sort_index(axis=1)


def snapshot_delta(arm: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """``arm - baseline`` on the layers and steps both matrices have (same seed, same metric), arm's layer order."""
    if arm.empty or baseline.empty:
        return pd.DataFrame()
    layers = [layer for layer in arm.index if layer in baseline.index]
    steps = [s for s in arm.columns if s in baseline.columns]
    return arm.loc[layers, steps] - baseline.loc[layers, steps]


# ------------------------------------------------------------------------------------------- run table, diff
def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def config_fields(config: ExperimentConfig) -> dict[str, Any]:
    """A single-run config flattened to ``field -> value`` (``arm.*`` for its re-init config, ``finetune.*``)."""
    d = config.to_dict()
    arms = d.pop("arms", {}) or {}
    d.pop("kind", None)
    arm = next(iter(arms.values()), None) if arms else None
    flat = _flat(d)
    flat["arm.strategy"] = "none"
    if arm:
        arm = {k: v for k, v in arm.items() if k != "kind"}
        flat.update(_flat(arm, "arm."))
    return {k: v for k, v in flat.items() if k not in NOT_A_SETTING and not k.startswith("launch.")
            and not k.endswith(".kind")}


def _text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return "" if v is None else str(v)


def run_table(runs: Sequence[Any]) -> pd.DataFrame:
    """One row per run: experiment, run, arm, seed, status, final and best accuracy, steps, wall time, then every
    config field whose value differs between these runs (a list or dict shown as text)."""
    rows, fields = [], []
    for r in runs:
        s = r.summary()
        rows.append({"experiment": r.experiment, "run": r.name, "arm": r.arm, "seed": r.seed, "status": s.get("status"),
                     "final_acc": s.get("final_val_acc"), "best_acc": s.get("best_val_acc"), "steps": s.get("steps"),
                     "wall_time_s": s.get("wall_time_s")})
        fields.append({k: _text(v) for k, v in config_fields(r.config).items()})
    keys = list(dict.fromkeys(k for f in fields for k in f))
    differ = [k for k in keys if len({f.get(k, "") for f in fields}) > 1]
    for row, f in zip(rows, fields):
        row.update({k: f.get(k, "") for k in differ})
    base = ["experiment", "run", "arm", "seed", "status", "final_acc", "best_acc", "steps", "wall_time_s"]
    return pd.DataFrame(rows, columns=base + differ)


def setup_differences(a: ExperimentConfig, b: ExperimentConfig) -> list[str]:
    """Why runs of ``a`` and ``b`` are not comparable: every setup field (backbone, data, subset, fine-tune settings;
    not the arms, seeds or bookkeeping) whose value differs, as ``field: a vs b``; empty when they match."""
    fa, fb = ({k: v for k, v in config_fields(c).items() if not k.startswith("arm.")} for c in (a, b))
    return [f"{k}: {_text(fa.get(k))} vs {_text(fb.get(k))}" for k in dict.fromkeys([*fa, *fb])
            if _text(fa.get(k)) != _text(fb.get(k))]
