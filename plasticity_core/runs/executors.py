"""Executors: how the runs of an experiment get a worker (this process, a background process)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from plasticity_core.config import ExperimentConfig
from plasticity_core.runs.execute import execute_run
from plasticity_core.runs.store import ACTIVE, _CHILDREN, Run, RunStore, _read_json, _write_json, pid_alive


def run_experiment(config: ExperimentConfig | str | os.PathLike, store: RunStore | str | os.PathLike | None = None,
                   on_event: Callable[[Run, dict], None] | None = None, stop: Any = None, tag: str | None = None,
                   only: Sequence[int] | None = None) -> list[Run]:
    """Run every arm x seed of an experiment (or the expanded runs ``only``) here, one after the other.

    The CLI (``plasticity finetune --config``) and a cluster task (``only=[array index]``, a shared ``tag``) call
    this; ``on_event(run, event)`` sees every event (progress bars). Returns the run folders.
    """
    config = config if isinstance(config, ExperimentConfig) else ExperimentConfig.load(config)
    store = store if isinstance(store, RunStore) else RunStore(store)
    runs = store.create(config, tag=tag, only=only)
    for run in runs:
        execute_run(run, stop=stop, on_event=None if on_event is None else (lambda e, r=run: on_event(r, e)))
    return runs



class RunHandle:
    """A background worker process and the run folders it works through (in order)."""

    def __init__(self, runs: Sequence[Run], pid: int | None, process: subprocess.Popen | None = None) -> None:
        self.runs, self.pid, self._process = list(runs), pid, process

    def __repr__(self) -> str:
        return f"RunHandle(pid={self.pid}, {self.statuses()})"

    @classmethod
    def attach(cls, folder: str | os.PathLike) -> "RunHandle":
        """Re-attach to the worker of a run or experiment folder (e.g. after a browser refresh)."""
        p = Path(folder)
        exp_dir = p.parent if (p / "config.yaml").exists() else p
        worker = _read_json(exp_dir / "worker.json")
        if worker is None:
            raise FileNotFoundError(f"{exp_dir} has no worker.json: it was not started with start_run")
        return cls([Run(f) for f in worker["runs"]], worker.get("pid"))

    def statuses(self) -> dict[str, str]:
        return {r.name: r.status for r in self.runs}

    def alive(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return pid_alive(self.pid)

    def done(self) -> bool:
        return not any(s in ACTIVE for s in self.statuses().values())

    def wait(self, timeout: float | None = None, poll_s: float = 0.2) -> bool:
        """Block until every run ended (True) or ``timeout`` seconds passed (False)."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(poll_s)
        return True

    def stop(self, timeout: float = 30.0) -> dict[str, str]:
        """Ask every run to stop (STOP files, polled every step); after ``timeout`` s terminate the worker.

        Runs still active after a termination are marked ``stopped`` with the reason. Returns the statuses.
        """
        for run in self.runs:
            run.request_stop()
        if not self.wait(timeout) and self.pid and pid_alive(self.pid):
            _terminate(self.pid)
            for run in self.runs:
                if run.status in ACTIVE:
                    _write_json(run.path / "summary.json", {**run.summary(), "status": "stopped", "ended_at": time.time(),
                                                             "reason": f"terminated: the stop request was not honoured within {timeout:g} s"})
        return self.statuses()


def _terminate(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)  # the worker leads its own session/process group
    except (ProcessLookupError, PermissionError):
        return
    end = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.1)
    if pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_run(config: ExperimentConfig | str | os.PathLike, store: RunStore | str | os.PathLike | None = None,
              tag: str | None = None) -> RunHandle:
    """Create the run folders and work through them in a fresh background Python process; return at once.

    The worker is a new interpreter (``python -m plasticity_core.runs worker``: spawn semantics, nothing inherited,
    streamlit never imported) in its own session, so it survives a browser refresh and the caller's exit.
    Its pid and host are in ``<experiment>/worker.json``; its stdout/stderr in ``worker.log``.
    """
    config = config if isinstance(config, ExperimentConfig) else ExperimentConfig.load(config)
    store = store if isinstance(store, RunStore) else RunStore(store)
    runs = store.create(config, tag=tag)
    exp_dir = runs[0].path.parent
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    with open(exp_dir / "worker.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "plasticity_core.runs", "worker", *[str(r.path.resolve()) for r in runs]],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=os.getcwd())
    _CHILDREN.append(proc)
    _write_json(exp_dir / "worker.json", {"pid": proc.pid, "host": socket.gethostname(), "started_at": time.time(),
                                          "runs": [str(r.path.resolve()) for r in runs]})
    return RunHandle(runs, proc.pid, proc)


def _worker(folders: Sequence[str]) -> int:
    """Body of the background process: run the folders in order; an uncaught error still lands in the folder."""
    assert "streamlit" not in sys.modules, "the run worker must not import streamlit"
    for folder in folders:
        execute_run(Run(folder))
    return 0
