"""The entry points of a launch: ``run_experiment`` (blocks in this process), ``start_run`` (a background launcher
process, returns a ``RunHandle`` at once) and the handle's process management (alive, stop, terminate)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from plasticity_core.config import ExperimentConfig
from plasticity_core.config import LaunchConfig
from plasticity_core.runs.execute import terminate_on_sigterm
from plasticity_core.runs.interrupt import collect_resumable, reopen, resume_problem
from plasticity_core.runs.executors.base import EXECUTORS, _env, launch
from plasticity_core.runs.sinks import SINKS
from plasticity_core.runs.spec import LaunchError, apply_overrides, noop_arms
from plasticity_core.runs.store import Run, RunStore, check_name
from plasticity_core.train.events import ACTIVE, FINAL, read_json as _read_json, write_json as _write_json

_CHILDREN: list[subprocess.Popen] = []  # background launchers this process started; polled so that they are reaped


def _prepare(config: ExperimentConfig | str | os.PathLike, executor: str | None, parallel: int | None,
             allow_noop: bool, tag: str | None) -> ExperimentConfig:
    if tag is not None:
        check_name("tag", tag)
    config = config if isinstance(config, ExperimentConfig) else ExperimentConfig.load(config)
    changes = {k: v for k, v in (("executor", executor), ("parallel", parallel)) if v is not None}
    if changes:
        config = dataclasses.replace(config, launch=dataclasses.replace(config.launch, **changes))
    EXECUTORS.get(config.launch.executor).check()
    for sink in config.launch.sinks:
        SINKS.get(sink).check()
    if not allow_noop:
        noops = noop_arms(config)
        if noops:
            raise LaunchError("refusing to launch arms that would do nothing (pass allow_noop=True / --allow-noop to "
                             "run them anyway): " + "; ".join(f"{arm}: {why}" for arm, why in noops.items()))
    return config


def _claim(config: ExperimentConfig, store: RunStore | str | os.PathLike | None, tag: str | None,
           only: Sequence[int] | None, resume: bool) -> tuple[list[Run], str | None]:
    store = store if isinstance(store, RunStore) else RunStore(store)
    info = EXECUTORS.get(config.launch.executor)
    launcher = f".launcher-{os.getpid()}-{time.time_ns()}.json" if info.holds_queue else None
    reason = "waiting for a worker" if info.holds_queue else "waiting to be submitted"
    runs = store.create(config, tag=tag, only=only, resume=resume, launcher=launcher, queued_reason=reason)
    if resume:  # adopted folders that ended stopped / cancelled / failed continue from their checkpoint
        for run in runs:
            if run.raw_summary().get("status") in FINAL and resume_problem(run) is None:
                reopen(run, launcher=launcher, queued_reason=reason)
    return runs, launcher


def run_experiment(config: ExperimentConfig | str | os.PathLike, store: RunStore | str | os.PathLike | None = None,
                   on_event: Callable[[Run, dict], None] | None = None, stop: Any = None, tag: str | None = None,
                   only: Sequence[int] | None = None, executor: str | None = None, parallel: int | None = None,
                   allow_noop: bool = False, resume: bool = False) -> list[Run]:
    """Run every arm x seed of an experiment (or the expanded runs ``only``) and return when all have ended.

    ``executor`` / ``parallel`` override ``config.launch``; ``on_event(run, event)`` sees every event (progress
    bars); ``stop.is_set()`` stops all runs. Arms that would do nothing are refused (``allow_noop=True`` runs
    them anyway). ``resume=True`` adopts existing folders of the same runs (a requeued cluster task, ``--index``)
    and continues those that ended stopped, cancelled or failed from their checkpoint.
    Returns the run folders, each with a final status.
    """
    config = _prepare(config, executor, parallel, allow_noop, tag)
    runs, launcher = _claim(config, store, tag, only, resume)
    launch(runs, config.launch, on_event=on_event, stop=stop, launcher=launcher)
    return runs


class RunHandle:
    """A background launcher process and the run folders it works through."""

    def __init__(self, runs: Sequence[Run], pid: int | None, process: subprocess.Popen | None = None,
                 host: str | None = None) -> None:
        self.runs, self.pid, self._process = list(runs), pid, process
        self.host = host or socket.gethostname()

    def __repr__(self) -> str:
        return f"RunHandle(pid={self.pid}, {self.statuses()})"

    @classmethod
    def attach(cls, folder: str | os.PathLike) -> "RunHandle":
        """Re-attach to the launcher of a run or experiment folder (e.g. after a browser refresh)."""
        p = Path(folder)
        exp_dir = p.parent if (p / "config.yaml").exists() else p
        worker = _read_json(exp_dir / "worker.json")
        if worker is None:
            raise FileNotFoundError(f"{exp_dir} has no worker.json: it was not started with start_run")
        return cls([Run(f) for f in worker["runs"]], worker.get("pid"), host=worker.get("host"))

    def statuses(self) -> dict[str, str]:
        return {r.name: r.status for r in self.runs}

    def alive(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return self.host == socket.gethostname() and _pid_alive(self.pid)

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
        """Ask every run to stop (STOP files, polled every step); after ``timeout`` s terminate the launcher.

        Runs still active after a termination are marked ``stopped`` with the reason. Returns the statuses.
        """
        for run in self.runs:
            run.request_stop()
        if not self.wait(timeout) and self.pid and self.alive():
            _terminate(self.pid)
            for run in self.runs:
                if run.status in ACTIVE:
                    run.finalise("stopped", f"terminated: the stop request was not honoured within {timeout:g} s")
        return self.statuses()


def _pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` on this host is running (a zombie counts as gone)."""
    if not pid:
        return False
    for child in _CHILDREN:
        child.poll()  # reap our own finished launchers
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


def _terminate(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)  # the launcher leads its own session: its workers get it too
    except (ProcessLookupError, PermissionError):
        return
    end = time.monotonic() + 5
    while _pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.1)
    if _pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_run(config: ExperimentConfig | str | os.PathLike, store: RunStore | str | os.PathLike | None = None,
              tag: str | None = None, executor: str | None = None, parallel: int | None = None,
              allow_noop: bool = False) -> RunHandle:
    """Claim the run folders and launch them from a fresh background Python process; return at once.

    The launcher (``python -m plasticity_core.runs launch``: spawn semantics, streamlit never imported) runs in
    its own session, so it survives a browser refresh and the caller's exit; it runs the same executor
    ``run_experiment`` would. Its pid and host are in ``<experiment>/worker.json``, its output in ``worker.log``.
    """
    config = _prepare(config, executor, parallel, allow_noop, tag)
    runs, launcher = _claim(config, store, tag, None, False)
    return _spawn_launcher(runs, launcher, config.launch)


def _spawn_launcher(runs: Sequence[Run], launcher: str | None, config: LaunchConfig,
                    override: bool = False) -> "RunHandle":
    """The background launcher process of ``runs`` (``override``: with ``config`` instead of the runs' own)."""
    exp_dir = runs[0].path.parent
    folders = [str(r.path.resolve()) for r in runs]
    extra = ["--launch", json.dumps(config.to_dict())] if override else []
    with open(exp_dir / "worker.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "plasticity_core.runs", "launch", launcher or "-", *extra,
                                 *folders], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True, cwd=os.getcwd())
    _CHILDREN.append(proc)
    _write_json(exp_dir / "worker.json", {"pid": proc.pid, "host": socket.gethostname(), "started_at": time.time(),
                                          "executor": config.executor, "runs": folders})
    return RunHandle(runs, proc.pid, proc)


def _resume_launch(runs: Sequence[Run], executor: str | None, parallel: int | None,
                   overrides: Sequence[str] = ()) -> tuple[LaunchConfig, str | None]:
    """The launch settings of the resumed runs (their config's, with ``launch.*`` ``overrides`` and ``executor`` /
    ``parallel`` applied) and the name of this launcher's heartbeat file when the executor holds the queue."""
    config = apply_overrides(runs[0].config, list(overrides)).launch
    changes = {k: v for k, v in (("executor", executor), ("parallel", parallel)) if v is not None}
    if changes:
        config = dataclasses.replace(config, **changes)
    info = EXECUTORS.get(config.executor)
    info.check()
    launcher = f".launcher-{os.getpid()}-{time.time_ns()}.json" if info.holds_queue else None
    return config, launcher


def _reopen_all(targets, store, executor, parallel, overrides) -> tuple[list[Run], LaunchConfig, str | None]:
    other = [o for o in overrides if not o.startswith("launch.")]
    if other:
        raise LaunchError(f"a resumed run keeps the config in its folder; only launch.* settings may change: drop "
                          f"{' '.join(other)}")
    runs, _ = collect_resumable(targets, store)
    config, launcher = _resume_launch(runs, executor, parallel, overrides)
    reason = "waiting for a worker" if launcher else "waiting to be submitted"
    for run in runs:
        reopen(run, launcher=launcher, queued_reason=reason)
    return runs, config, launcher


def resume_runs(targets: Iterable[Run | str | os.PathLike], store: RunStore | str | os.PathLike | None = None,
                executor: str | None = None, parallel: int | None = None, overrides: Sequence[str] = (),
                on_event: Callable[[Run, dict], None] | None = None, stop: Any = None) -> list[Run]:
    """Resume the interrupted runs among ``targets`` (run or experiment folders, ``experiment/run`` refs, ``Run``s;
    see ``interrupt.collect_resumable``) in this process and return when all have ended.

    Each continues from its folder's last checkpoint (``finetune.checkpoint_every`` / ``checkpoint``; with
    ``save_optimizer`` its curve is the one an uninterrupted run draws); without one it restarts from step 0 and
    says so. ``executor`` / ``parallel`` and ``launch.*`` ``overrides`` (``"launch.slurm.cluster=local"``) change the
    launch settings: a run lost with its Ray node can go on in the local pool.
    """
    runs, config, launcher = _reopen_all(targets, store, executor, parallel, overrides)
    launch(runs, config, on_event=on_event, stop=stop, launcher=launcher)
    return runs


def start_resume(targets: Iterable[Run | str | os.PathLike], store: RunStore | str | os.PathLike | None = None,
                 executor: str | None = None, parallel: int | None = None, overrides: Sequence[str] = ()) -> "RunHandle":
    """``resume_runs`` from a background launcher process (as ``start_run``): returns its ``RunHandle`` at once.
    What the dashboard's Resume button calls."""
    runs, config, launcher = _reopen_all(targets, store, executor, parallel, overrides)
    return _spawn_launcher(runs, launcher, config, override=True)


def _launcher_main(launcher: str, folders: Sequence[str]) -> int:
    """Body of the background launcher: the launch of ``start_run`` / ``start_resume``, with the launch settings of
    the runs' config, or those given as ``--launch JSON`` before the folders."""
    assert "streamlit" not in sys.modules, "the run launcher must not import streamlit"
    terminate_on_sigterm()
    config = None
    if folders[:1] == ["--launch"]:
        config, folders = LaunchConfig.from_dict(json.loads(folders[1])), folders[2:]
    runs = [Run(f) for f in folders]
    launch(runs, config or runs[0].config.launch, launcher=None if launcher == "-" else launcher)
    return 0
