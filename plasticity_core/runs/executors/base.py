"""What every executor shares: the registry (``EXECUTORS``, ``register_executor``), the ``Launch`` an executor works
on (its runs, settings, stop flag and event pump), ``launch`` (run claimed folders with the configured executor and
leave none without a final status) and the worker processes' environment.

A new executor is one file beside this one: a function ``(Launch) -> None`` decorated with ``register_executor``,
imported by ``executors/__init__.py``.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from plasticity_core.config import LaunchConfig
from plasticity_core.registry import Registry
from plasticity_core.runs.spec import MissingExtraError
from plasticity_core.runs.store import Heartbeat, Run
from plasticity_core.train.events import FINAL, EventReader

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[3])


@dataclass(frozen=True)
class ExecutorInfo:
    name: str
    doc: str
    module: str | None  # the optional package it needs
    extra: str | None  # the pip extra that provides it
    run: Callable[["Launch"], None]  # runs every run of the launch; returns when all have ended
    holds_queue: bool = True  # queued runs depend on the launcher staying alive (not so for Slurm's own queue)

    def check(self) -> None:
        """One-line error naming the extra when the backend is not installed."""
        if self.module and importlib.util.find_spec(self.module) is None:
            raise MissingExtraError(f"the {self.name} executor needs {self.module}: pip install 'plasticity-lab[{self.extra}]'")


EXECUTORS: Registry[ExecutorInfo] = Registry("executor")


def register_executor(name: str, doc: str, module: str | None = None, extra: str | None = None, holds_queue: bool = True):
    def deco(fn: Callable[["Launch"], None]) -> Callable[["Launch"], None]:
        EXECUTORS.add(ExecutorInfo(name, doc, module, extra, fn, holds_queue))
        return fn

    return deco


def _env() -> dict[str, str]:
    """This environment with plasticity_core importable (workers are fresh interpreters)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")]))
    return env


class Launch:
    """What an executor works on: the runs, the launch settings, a stop flag and the event pump.

    ``tick()`` (call it every fraction of a second while waiting) forwards new events from the run folders to
    ``on_event(run, event)`` and turns a set ``stop`` flag into STOP files, which every worker polls.
    """

    def __init__(self, runs: Sequence[Run], config: LaunchConfig, on_event: Callable[[Run, dict], None] | None = None,
                 stop: Any = None) -> None:
        self.runs, self.config, self.on_event, self.stop = list(runs), config, on_event, stop
        self._readers = {r: EventReader(r.path / "metrics.jsonl") for r in self.runs}
        for r, reader in self._readers.items():
            if r.raw_summary().get("requeued"):
                reader.poll()  # a resumed run: its earlier attempts' events were shown when they happened
        self.stopping = False

    def last_step(self, run: Run) -> int | None:
        """The highest step this launch has read from the run's events (also after its folder was deleted)."""
        self._readers[run].poll()
        steps = [e["step"] for e in self._readers[run].events if isinstance(e.get("step"), int)]
        return max(steps) if steps else None

    def vanished(self, run: Run) -> bool:
        """The run's folder was deleted under it: give it its final status in memory, once; the others go on."""
        if run.path.is_dir():
            return False
        if run._unsaved is None:
            step = self.last_step(run)
            run.finalise("failed", f"its run folder {run.path} was deleted during the launch"
                                   + (f" (last step seen: {step})" if step is not None else ""), steps=step)
        return True

    def tick(self) -> None:
        if not self.stopping and self.stop is not None and self.stop.is_set():
            self.stopping = True
            for r in self.runs:
                r.request_stop()
        if self.on_event is not None:
            for r in self.runs:
                self._pump(r)

    def _pump(self, run: Run) -> None:
        for event in self._readers[run].poll():  # only the bytes written since the last tick
            self.on_event(run, event)

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)
        self.tick()

    def pending(self) -> list[Run]:
        return [r for r in self.runs if r.raw_summary().get("status") not in FINAL]

    def close(self, executor: str) -> None:
        """Every run still without a final status gets one, saying why (its worker ended without writing it)."""
        self.tick()
        for r in self.runs:
            if self.vanished(r):
                continue
            status = r.raw_summary().get("status")
            if status == "queued":
                r.finalise("cancelled", f"never started: the {executor} launch ended before giving it a worker")
            elif status == "running":
                s = r.summary()
                step = self.last_step(r)
                r.finalise("failed", s["reason"] if s.get("stale") else
                           f"its {executor} worker ended without writing a final status (killed, crashed, or the disk "
                           f"full)" + (f" at step {step}" if step is not None else ""), steps=step)
        self.tick()


def launch(runs: Sequence[Run], config: LaunchConfig, on_event: Callable[[Run, dict], None] | None = None,
           stop: Any = None, launcher: str | None = None) -> None:
    """Run ``runs`` (claimed folders) with the executor ``config.executor``; return when all have a final status."""
    info = EXECUTORS.get(config.executor)
    info.check()
    ctx = Launch(runs, config, on_event, stop)
    exp_dirs = {r.path.parent for r in runs}
    beats = [Heartbeat(d / launcher, config.heartbeat_s, role="launcher", executor=config.executor)
             for d in exp_dirs] if launcher else []
    for b in beats:
        b.__enter__()
    try:
        info.run(ctx)
    except KeyboardInterrupt:
        for r in ctx.pending():
            r.request_stop()
        raise
    finally:
        ctx.close(info.name)
        for b in beats:
            b.close()


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"
