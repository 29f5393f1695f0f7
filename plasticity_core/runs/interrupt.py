"""Interrupting a launch and taking it up again.

- ``StopOnSignals``: in a foreground launcher (the CLI), SIGINT (Ctrl-C) and SIGTERM become a stop request: every
  run stops at its next step, writes its checkpoint (``finetune.checkpoint_every`` or ``checkpoint``) and ends
  ``stopped``; a second signal aborts the wait.
- ``resume_problem(run)``: why a run cannot be resumed (``None`` when it can: ``stopped``, ``cancelled`` or
  ``failed``, whatever took it down: a stop, ``scancel``, a lost Ray node, a killed worker).
- ``reopen(run)``: an interrupted run's folder made ``queued`` again; the next worker to execute it continues from
  the folder's last checkpoint (or from step 0 when there is none, saying so), on whichever executor runs it.
- ``collect_resumable(targets)``: the runs named by run or experiment folders that can be resumed.

``resume_runs`` / ``start_resume`` (``executors.launching``) launch them again.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from plasticity_core.runs.spec import LaunchError
from plasticity_core.runs.store import ACTIVE, Run, RunStore, _write_json

RESUMABLE = ("stopped", "cancelled", "failed")


class StopOnSignals:
    """A stop flag (``is_set()``) that SIGINT and SIGTERM set, for the foreground launcher of a launch.

    The first signal asks every run to stop at its next step (the executor turns the flag into STOP files); the
    runs then write their checkpoint and end ``stopped``. A second signal raises ``KeyboardInterrupt`` (abort: the
    launcher stops waiting; runs still active are finalised). Outside the main thread it installs nothing and is a
    plain flag. The previous handlers come back on exit. ``ends_as="cancelled"`` (a Slurm task's ``scancel``): a run
    it stopped reads ``cancelled``, from ``source``.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM), announce: bool = True,
                 ends_as: str = "stopped", source: str = "") -> None:
        self.signals, self.announce = tuple(signals), announce
        self.ends_as, self.source = ends_as, source  # a run this flag stopped ends with this status (execute_run)
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}
        self.received: str | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._event.is_set():
            raise KeyboardInterrupt(f"{name} received twice: aborting the wait for the runs to stop")
        self.received = name
        self._event.set()
        if self.announce:
            print(f"{name}: stopping every run at its next step (each writes its checkpoint where "
                  f"finetune.checkpoint_every or checkpoint is set; resume with plasticity finetune --resume); "
                  f"send it again to stop waiting", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


class ParentWatch:
    """``is_set()`` once the process that started this one is gone (re-parented): a pool worker whose launcher was
    killed stops its run at the next step instead of training on as an orphan."""

    def __init__(self) -> None:
        self.parent = os.getppid()

    def is_set(self) -> bool:
        return os.getppid() != self.parent


class AnyStop:
    """``is_set()`` when any of the given stop flags is set."""

    def __init__(self, *flags: Any) -> None:
        self.flags = flags

    def is_set(self) -> bool:
        return any(f.is_set() for f in self.flags)


def checkpoint_step(run: Run) -> int | None:
    """The step of the resumable checkpoint in the run's folder (``None``: there is none)."""
    from plasticity_core.train.checkpoints import MODEL_FILE, STATE_FILE

    if not (run.path / STATE_FILE).exists() or not (run.path / MODEL_FILE).exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(run.path / MODEL_FILE), framework="pt") as f:
            return int((f.metadata() or {}).get("step"))
    except Exception:  # noqa: BLE001 - unreadable: the resume itself will say why
        return None


def resume_problem(run: Run) -> str | None:
    """Why ``run`` cannot be resumed, or ``None`` when it can (a final status other than ``finished``)."""
    s = run.summary()
    status = s.get("status")
    if status == "finished":
        return "it finished already"
    if s.get("source") not in (None, "plasticity"):  # written by an integration around the user's own training script
        return (f"it was trained by your own script (through the {s['source']} integration), which plasticity cannot "
                f"rerun: run that script again under a new name")
    if status in ACTIVE:
        return f"it is still {status} ({s.get('reason')}); stop it first or wait for it to end"
    if status not in RESUMABLE:
        return f"its status {status!r} is not one of {', '.join(RESUMABLE)}"
    return None


def reopen(run: Run, launcher: str | None = None, queued_reason: str = "waiting for a worker") -> dict[str, Any]:
    """Make an interrupted run ``queued`` again so that the next worker continues it from its checkpoint.

    Refuses (``LaunchError``) a run that finished or is still active. Keeps the run's identity (arm, seed, launch
    id, attempt count); removes its STOP file. ``launcher``: the heartbeat file of the launcher that now holds it.
    """
    problem = resume_problem(run)
    if problem is not None:
        raise LaunchError(f"cannot resume {run.path}: {problem}")
    was = run.summary()
    step = checkpoint_step(run)
    where = f"from its checkpoint at step {step}" if step is not None else \
        "from step 0 (no checkpoint in the folder: finetune.checkpoint_every > 0 keeps one)"
    previous = run.raw_summary()
    keep = {k: previous[k] for k in ("arm", "seed", "launch", "created_at", "host", "heartbeat_timeout_s", "attempt",
                                     "steps") if k in previous}
    (run.path / "STOP").unlink(missing_ok=True)
    summary = {**keep, "status": "queued", "requeued": True, "launcher": launcher, "resumed_at": time.time(),
               "resume_from": {"status": was.get("status"), "reason": was.get("reason"), "checkpoint_step": step},
               "reason": f"{queued_reason}; resuming {where} (was {was.get('status')}: {was.get('reason')})"}
    _write_json(run.path / "summary.json", summary)
    return summary


def _runs_of(target: Run | str | os.PathLike, store: RunStore) -> tuple[list[Run], bool]:
    """(runs, named): the run a target names, or the runs of an experiment folder (named=False)."""
    if isinstance(target, Run):
        return [target], True
    p = Path(target)
    for folder in (p, store.root / p):
        if (folder / "config.yaml").is_file():
            return [Run(folder)], True
        if folder.is_dir() and any(folder.glob("*/config.yaml")):
            return [Run(c.parent) for c in sorted(folder.glob("*/config.yaml"))], False
    try:
        return [store.get(str(target))], True
    except KeyError as e:
        raise LaunchError(f"nothing to resume at {str(target)!r}: not a run or experiment folder "
                          f"({e.args[0]})") from None


def collect_resumable(targets: Iterable[Run | str | os.PathLike], store: RunStore | str | os.PathLike | None = None
                      ) -> tuple[list[Run], dict[str, str]]:
    """The runs to resume among ``targets`` (run folders, experiment folders, ``experiment/run`` refs, ``Run``s)
    and ``{run folder: why skipped}`` for the runs of an experiment folder that are not resumable (finished, active).

    A run named on its own that cannot be resumed is refused (``LaunchError``), as is a set with nothing to resume.
    """
    store = store if isinstance(store, RunStore) else RunStore(store)
    runs: list[Run] = []
    skipped: dict[str, str] = {}
    for target in targets:
        found, named = _runs_of(target, store)
        for run in found:
            problem = resume_problem(run)
            if problem is None:
                if run not in runs:
                    runs.append(run)
            elif named:
                raise LaunchError(f"cannot resume {run.path}: {problem}")
            else:
                skipped[str(run.path)] = problem
    if not runs:
        raise LaunchError("nothing to resume: " + ("; ".join(f"{Path(k).name}: {v}" for k, v in skipped.items())
                                                   or "no run folders given"))
    return runs, skipped

