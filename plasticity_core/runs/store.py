"""The run store: one folder per run under a root, created exactly once, read tolerantly.

Layout: ``<root>/<experiment>-<tag>/<arm>-seed<seed>/``. A folder is claimed with an atomic ``mkdir``: of two
launches (or cluster tasks) creating the same folder exactly one wins; the other gets a clear error, or a fresh
suffix when it did not ask for a tag. Tags and names never leave the store.

Liveness is read from files, never from PIDs, so a run on another host reads right: a worker rewrites
``heartbeat.json`` in its run folder every few seconds, and a launcher holding queued runs rewrites
``.launcher-<id>.json`` in the experiment folder. A ``running`` run without a heartbeat for its
``heartbeat_timeout_s`` reads ``failed``; a ``queued`` run whose launcher went silent reads ``cancelled``.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from plasticity_core.config import ExperimentConfig
from plasticity_core.train.events import (ACTIVE, FINAL, Heartbeat, EventReader, beat_age, drop_superseded, heartbeat_age,
                                          read_events)
from plasticity_core.train.events import read_json as _read_json, write_json as _write_json
from plasticity_core.runs.spec import LaunchError, RunExistsError, check_experiment, expand_experiment, run_name, slug

ROOT_ENV = "PLASTICITY_RUNS"  # overrides the default store root ./runs
# path -> ((inode, mtime_ns, size), content) of summary / heartbeat files read by any Run object of this process
_JSON_CACHE: dict[str, tuple[tuple[int, int, int], dict[str, Any] | None]] = {}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV, "runs"))


def check_name(kind: str, value: str) -> str:
    """A tag or folder name that stays inside the store: letters, digits, ``.``, ``_``, ``-``; no ``..``."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise LaunchError(f"{kind} {value!r} is not allowed: use letters, digits, '.', '_' or '-' (at most 128, "
                         f"no '/' or '..'), since it names a folder inside the run store")
    return value


# ---------------------------------------------------------------------------------------------- a run
class Run:
    """One run folder, read-only: config, events, summary and the status as a reader should see it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._config: ExperimentConfig | None = None
        self._reader: EventReader | None = None  # reads only the bytes appended since the last events() call
        self._events: tuple[int, list[dict[str, Any]]] = (-1, [])  # (events parsed, after dropping superseded ones)
        self._unsaved: dict[str, Any] | None = None  # a final status finalise could not write (disk full, folder gone)

    def __repr__(self) -> str:
        return f"Run({self.experiment}/{self.name}: {self.status})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def experiment(self) -> str:
        return self.path.parent.name

    @property
    def config(self) -> ExperimentConfig:
        if self._config is None:
            self._config = ExperimentConfig.load(self.path / "config.yaml")
        return self._config

    @property
    def arm(self) -> str:
        return next(iter(self.config.arms))

    @property
    def seed(self) -> int:
        return self.config.seeds[0]

    def events(self, types: str | Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The events in order; after a ``resume`` event (a requeued run restarting from step k) the events of the
        interrupted attempt beyond step k are dropped, so a curve never has two points for one step."""
        if self._reader is None:
            self._reader = EventReader(self.path / "metrics.jsonl")
        parsed = self._reader.read()
        if self._events[0] != len(parsed):
            self._events = (len(parsed), drop_superseded(parsed))
        events = list(self._events[1])
        if types is None:
            return events
        wanted = {types} if isinstance(types, str) else set(types)
        return [e for e in events if e.get("type") in wanted]

    @property
    def event_notes(self) -> str | None:
        """What the reader left out of ``metrics.jsonl`` (mistyped or impossible values), naming the folder, or None."""
        if self._reader is None:
            self.events()
        rejected = self._reader.rejected if self._reader is not None else []
        if not rejected:
            return None
        return (f"{self.path / 'metrics.jsonl'}: {len(rejected)} event line(s) left out ({'; '.join(rejected[:3])}"
                f"{' ...' if len(rejected) > 3 else ''})")

    def curve(self, kind: str = "eval") -> pd.DataFrame:
        """The events of one type as a DataFrame (``eval``: step, val_acc, val_loss; ``step``: loss, lr, ...)."""
        return pd.DataFrame([{k: v for k, v in e.items() if k != "type"} for e in self.events(kind)])

    def _json(self, path: Path) -> dict[str, Any] | None:
        """A JSON file of the folder, read again only when it changed (writers replace it: a new inode each time);
        the cache is the process's, so every ``Run`` object of a folder shares one read."""
        try:
            st = path.stat()
        except OSError:
            _JSON_CACHE.pop(str(path), None)
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = _JSON_CACHE.get(str(path))
        if cached is None or cached[0] != key:
            cached = (key, _read_json(path))
            _JSON_CACHE[str(path)] = cached
        return dict(cached[1]) if cached[1] is not None else None

    def raw_summary(self) -> dict[str, Any]:
        """``summary.json`` as written (``queued`` when there is none yet), read again only when it was replaced.

        Without a readable summary the folder still tells the truth: a folder deleted under a run reads ``failed``;
        a summary deleted mid-run reads from the events (their final event) or the heartbeat (``running``, so a
        dead worker goes stale); a final status ``finalise`` could not write (disk full) is kept in memory.
        """
        s = self._json(self.path / "summary.json")
        if s is not None and (s.get("status") in FINAL or self._unsaved is None):
            return s
        if self._unsaved is not None:
            return dict(self._unsaved)
        if not self.path.is_dir():
            return {"status": "failed", "reason": f"its run folder {self.path} was deleted (nothing of the run is left)"}
        events = self.events()
        final = next((e for e in reversed(events) if e.get("type") in FINAL), None)
        if final is not None:
            steps = final.get("step") if isinstance(final.get("step"), int) else None
            return {"status": final["type"], "reason": f"{final.get('reason') or final['type']} (summary.json is "
                                                       f"missing; read from metrics.jsonl)", "steps": steps}
        hb = self._json(self.path / "heartbeat.json")
        if events or hb is not None:  # it ran: running while its heartbeat (or its event log) stays fresh, then failed
            try:
                since = (self.path / "metrics.jsonl").stat().st_mtime
            except OSError:
                since = time.time()
            return {"status": "running", "reason": "summary.json is missing or unreadable; status read from the "
                                                   "heartbeat and metrics.jsonl", "started_at": since}
        return {"status": "queued", "reason": "no summary written yet"}

    def _heartbeat_age(self, path: Path, fallback: float | None) -> tuple[float | None, dict[str, Any]]:
        hb = self._json(path) or {}
        return beat_age(hb, path, fallback), hb

    def summary(self) -> dict[str, Any]:
        """``summary.json`` with the status a reader should trust.

        ``running`` without a heartbeat for ``heartbeat_timeout_s`` reads ``failed`` (the worker was killed,
        crashed, or its host or disk went away); ``queued`` whose launcher stopped beating reads ``cancelled``.
        """
        s = self.raw_summary()
        status, timeout = s.get("status"), float(s.get("heartbeat_timeout_s") or 60.0)
        if status == "running":
            age, hb = self._heartbeat_age(self.path / "heartbeat.json", s.get("started_at"))
            if age is not None and age > timeout:
                who = f"{hb.get('host', s.get('host', '?'))} pid {hb.get('pid', s.get('pid', '?'))}"
                step = f", last step {hb['step']}" if hb.get("step") is not None else ""
                s = {**s, "status": "failed", "stale": True,
                     "reason": f"no heartbeat from its worker ({who}) for {age:.0f} s (timeout {timeout:g} s): the "
                               f"worker was killed, crashed, or lost its host or disk{step}; see "
                               f"{self.path / 'worker.log'} if it exists"}
        elif status == "queued" and s.get("launcher"):
            age, hb = self._heartbeat_age(self.path.parent / s["launcher"], s.get("created_at"))
            if age is not None and age > timeout:
                who = f"{hb.get('host', '?')} pid {hb.get('pid', '?')}"
                s = {**s, "status": "cancelled", "stale": True,
                     "reason": f"never started: its launcher ({who}) stopped {age:.0f} s ago (timeout {timeout:g} s) "
                               f"before giving it a worker"}
        return s

    @property
    def status(self) -> str:
        return self.summary().get("status", "queued")

    def request_stop(self) -> None:
        """Ask the worker to stop this run; it checks before every step (and before a queued run starts). A folder
        that is gone or cannot be written is left alone: there is nothing to stop there."""
        try:
            (self.path / "STOP").touch()
        except OSError:
            pass

    @property
    def stop_requested(self) -> bool:
        return (self.path / "STOP").exists()

    def finalise(self, status: str, reason: str, **fields: Any) -> dict[str, Any]:
        """Write a final status for a run that cannot write one itself (its worker is gone or never came)."""
        assert status in FINAL, status
        s = {**self.raw_summary(), **fields, "status": status, "reason": reason, "ended_at": time.time()}
        if not self.path.is_dir():  # deleted under the run: nothing to write, the status stays in memory
            self._unsaved = s
            return s
        try:
            _write_json(self.path / "summary.json", s)
        except OSError as e:  # disk full or read-only: never raise into the launcher loop (the other runs go on)
            s = {**s, "not_saved": f"summary.json not written: {e.strerror or type(e).__name__}"}
            self._unsaved = s
        return s


# ---------------------------------------------------------------------------------------------- the store
class RunStore:
    """The folders under a root (default ``./runs`` or ``$PLASTICITY_RUNS``): create, list and load runs."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self._known: dict[Path, Run] = {}  # one Run per folder, so repeated listings reuse what each has read

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def create(self, config: ExperimentConfig, tag: str | None = None, only: Sequence[int] | None = None,
               resume: bool = False, launcher: str | None = None, queued_reason: str = "waiting for a worker") -> list[Run]:
        """Claim the folders (config.yaml, a queued summary) of the experiment's runs, or of the expanded runs ``only``.

        Without ``only`` the experiment folder ``<name>-<tag>`` is claimed as a whole: if it exists, a default
        (timestamp) tag moves on to ``<tag>-2``, ``-3``...; an explicit tag is refused. With ``only`` (cluster array
        tasks sharing a tag) each run folder is claimed on its own. ``resume=True`` adopts existing folders with the
        same config instead (a requeued task). ``launcher``: the experiment-level heartbeat file of the process that
        holds the queue; queued runs read ``cancelled`` when it goes silent.
        """
        if not isinstance(config, ExperimentConfig):
            raise TypeError(f"config must be an ExperimentConfig, got {type(config).__name__}")
        check_experiment(config)
        if tag is not None:
            check_name("tag", tag)
        singles = expand_experiment(config)
        if only is not None:
            bad = [i for i in only if not 0 <= i < len(singles)]
            if bad:
                raise LaunchError(f"run index {bad} out of range: the experiment has {len(singles)} runs (0..{len(singles) - 1})")
            singles = [singles[i] for i in only]
        if self.root.exists() and not self.root.is_dir():
            raise LaunchError(f"the run store {self.root} is a file, not a folder: choose a folder (--store DIR)")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new store is private (an existing one is kept)
        base = f"{slug(config.name)}-{tag or time.strftime('%Y%m%d-%H%M%S')}"
        exp_dir = self._claim_experiment(base, whole=only is None and not resume, explicit=tag is not None)
        launch_id = uuid.uuid4().hex[:12]
        runs, made = [], []
        try:
            for single in singles:
                folder = self._inside(exp_dir / run_name(single))
                try:
                    os.mkdir(folder)  # the atomic claim: exactly one creator wins
                except FileExistsError:
                    if resume and self._same_config(folder, single):
                        runs.append(Run(folder))
                        continue
                    raise RunExistsError(f"run folder {folder} exists already (another launch owns it); use another "
                                          f"tag{'' if resume else ', or resume it'}") from None
                made.append(folder)
                single.save(folder / ".config.yaml.tmp")
                os.replace(folder / ".config.yaml.tmp", folder / "config.yaml")
                _write_json(folder / "summary.json", {
                    "status": "queued", "reason": queued_reason, "arm": next(iter(single.arms)), "seed": single.seeds[0],
                    "launch": launch_id, "launcher": launcher, "created_at": time.time(), "host": socket.gethostname(),
                    "heartbeat_timeout_s": single.launch.heartbeat_timeout_s})
                runs.append(Run(folder))
        except BaseException:
            for folder in made:  # all or nothing: never leave half a launch queued with nobody to run it
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return runs

    def _inside(self, path: Path) -> Path:
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):
            raise LaunchError(f"{path} would leave the run store {root}")
        return path

    def _claim_experiment(self, base: str, whole: bool, explicit: bool) -> Path:
        check_name("experiment folder", base)
        if not whole:
            exp_dir = self._inside(self.root / base)
            exp_dir.mkdir(exist_ok=True)
            return exp_dir
        for i in range(1, 1000):
            exp_dir = self._inside(self.root / (base if i == 1 else f"{base}-{i}"))
            try:
                os.mkdir(exp_dir)
                return exp_dir
            except FileExistsError:
                if explicit:
                    raise RunExistsError(f"experiment folder {exp_dir} exists already (another launch owns it); "
                                          f"use another --tag") from None
        raise RunExistsError(f"no free experiment folder for {base} under {self.root}")

    @staticmethod
    def _same_config(folder: Path, single: ExperimentConfig) -> bool:
        try:
            return ExperimentConfig.load(folder / "config.yaml").to_dict() == single.to_dict()
        except Exception:  # noqa: BLE001 - unreadable: not the same run
            return False

    def runs(self, experiment: str | None = None) -> list[Run]:
        """Every run folder (one with a config.yaml) under the root, oldest experiment first."""
        if not self.root.is_dir():
            return []
        found = sorted(p.parent for p in self.root.glob("*/*/config.yaml"))
        return [self._known.setdefault(p, Run(p)) for p in found if experiment is None or p.parent.name == experiment]

    def experiments(self) -> list[str]:
        return sorted({r.experiment for r in self.runs()})

    def get(self, ref: str | os.PathLike) -> Run:
        """A run by folder path, ``experiment/run`` or a unique run-name suffix."""
        p = Path(ref)
        for candidate in (p, self.root / p):
            if (candidate / "config.yaml").exists():
                return Run(candidate)
        matches = [r for r in self.runs() if f"{r.experiment}/{r.name}".endswith(str(ref))]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise KeyError(f"no run {str(ref)!r} under {self.root}")
        raise KeyError(f"{str(ref)!r} is ambiguous under {self.root}: {[f'{r.experiment}/{r.name}' for r in matches[:5]]}")

    def table(self, experiment: str | None = None) -> pd.DataFrame:
        """One row per run: experiment, run, arm, seed, status, reason, steps, accuracies, wall time."""
        rows = []
        for r in self.runs(experiment):
            s = r.summary()
            rows.append({"experiment": r.experiment, "run": r.name, "arm": s.get("arm"), "seed": s.get("seed"),
                         "status": s.get("status"), "steps": s.get("steps"), "best_val_acc": s.get("best_val_acc"),
                         "final_val_acc": s.get("final_val_acc"), "wall_time_s": s.get("wall_time_s"),
                         "reason": s.get("reason"), "path": str(r.path)})
        return pd.DataFrame(rows, columns=["experiment", "run", "arm", "seed", "status", "steps", "best_val_acc",
                                           "final_val_acc", "wall_time_s", "reason", "path"])
