"""The run store: one folder per run under a root, created exactly once, read tolerantly."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from plasticity_core.config import ExperimentConfig
from plasticity_core.runs.spec import expand_experiment, run_name, slug

ROOT_ENV = "PLASTICITY_RUNS"  # overrides the default store root ./runs
ACTIVE = ("queued", "running")
_CHILDREN: list[subprocess.Popen] = []  # workers this process started; polled so that finished ones are reaped


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV, "runs"))


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of ``metrics.jsonl``; a half-written or corrupt line is skipped, never raised."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    events = []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def pid_alive(pid: int | None, host: str | None = None) -> bool:
    """Whether process ``pid`` on this host is running (a zombie counts as gone). Unknown for other hosts: True."""
    if not pid:
        return False
    if host is not None and host != socket.gethostname():
        return True
    for child in _CHILDREN:
        child.poll()  # reap our own finished workers
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Run:
    """One run folder, read-only: config, events, summary and the status as a reader should see it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._config: ExperimentConfig | None = None

    def __repr__(self) -> str:
        return f"Run({self.experiment}/{self.name}: {self.status})"

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
        events = read_events(self.path / "metrics.jsonl")
        if types is None:
            return events
        wanted = {types} if isinstance(types, str) else set(types)
        return [e for e in events if e.get("type") in wanted]

    def curve(self, kind: str = "eval") -> pd.DataFrame:
        """The events of one type as a DataFrame (``eval``: step, val_acc, val_loss; ``step``: loss, lr, ...)."""
        return pd.DataFrame([{k: v for k, v in e.items() if k != "type"} for e in self.events(kind)])

    def summary(self) -> dict[str, Any]:
        """``summary.json`` with the status a reader should trust.

        A folder without a summary is ``queued``; an active status whose worker process is gone reads as
        ``failed`` (the worker died without a final word: killed, out of memory, a crash below Python).
        """
        s = _read_json(self.path / "summary.json") or {"status": "queued", "reason": "no summary written yet"}
        if s.get("status") in ACTIVE:
            worker = _read_json(self.path.parent / "worker.json") or {}
            pid, host = s.get("pid") or worker.get("pid"), s.get("host") or worker.get("host")
            if pid and not pid_alive(pid, host):
                s = {**s, "status": "failed", "stale": True,
                     "reason": f"worker process {pid} ended without a final status (killed or crashed); see "
                               f"{self.path.parent / 'worker.log'}"}
        return s

    @property
    def status(self) -> str:
        return self.summary().get("status", "queued")

    def request_stop(self) -> None:
        """Ask the worker to stop this run; it checks before every step (and before a queued run starts)."""
        (self.path / "STOP").touch()

    @property
    def stop_requested(self) -> bool:
        return (self.path / "STOP").exists()


class RunStore:
    """The folders under a root (default ``./runs`` or ``$PLASTICITY_RUNS``): create, list, load and compare runs."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def create(self, config: ExperimentConfig, tag: str | None = None, only: Sequence[int] | None = None) -> list[Run]:
        """Folders (config.yaml, queued summary) for the experiment's runs, or for the expanded runs ``only``.

        ``tag`` names the experiment folder (default: a timestamp); runs of one tag share it, which lets the tasks of
        a cluster array write into one experiment. An existing run folder is refused rather than overwritten.
        """
        if not isinstance(config, ExperimentConfig):
            raise TypeError(f"config must be an ExperimentConfig, got {type(config).__name__}")
        singles = expand_experiment(config)
        if only is not None:
            bad = [i for i in only if not 0 <= i < len(singles)]
            if bad:
                raise IndexError(f"run index {bad} out of range: the experiment has {len(singles)} runs (0..{len(singles) - 1})")
            singles = [singles[i] for i in only]
        exp_dir = self.root / f"{slug(config.name)}-{tag or time.strftime('%Y%m%d-%H%M%S')}"
        runs = []
        for single in singles:
            folder = exp_dir / run_name(single)
            if (folder / "config.yaml").exists():
                raise FileExistsError(f"run folder {folder} exists already; use another tag")
            folder.mkdir(parents=True, exist_ok=True)
            single.save(folder / "config.yaml")
            _write_json(folder / "summary.json", {"status": "queued", "reason": "waiting for a worker",
                                                  "arm": next(iter(single.arms)), "seed": single.seeds[0]})
            runs.append(Run(folder))
        return runs

    def runs(self, experiment: str | None = None) -> list[Run]:
        """Every run folder (one with a config.yaml) under the root, oldest experiment first."""
        if not self.root.is_dir():
            return []
        found = sorted(p.parent for p in self.root.glob("*/*/config.yaml"))
        return [Run(p) for p in found if experiment is None or p.parent.name == experiment]

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

    def compare(self, experiment: str) -> pd.DataFrame:
        from plasticity_core.runs.compare import compare_runs

        return compare_runs(self.runs(experiment))
