"""Executing one run in this process: load backbone and data, fine-tune, write events and the final summary.

``load_inputs`` is ``setup.load_setup`` (kept as a name). Every executor ends up here, in whatever process it gives the run (a pool process, a Ray task, a Slurm task).
While the run is active a heartbeat thread rewrites ``heartbeat.json`` in the folder; the summary always ends
in a final status with its reason, except when the process itself dies (then the heartbeat goes stale, and
readers say ``failed``).
"""
from __future__ import annotations

import json
import signal
import time
import traceback
from typing import Any, Callable

from plasticity_core.config import ExperimentConfig
from plasticity_core.errors import user_message
from plasticity_core.runs.store import Run
from plasticity_core.setup import load_setup
from plasticity_core.train.checkpoints import STATE_FILE
from plasticity_core.train.loop import finetune
from plasticity_core.train.events import FINAL, RunWriter, make_event, write_json as _write_json


_REQUEUE: dict[str, bool] = {"pending": False}  # set by a cluster task's checkpoint hook just before it exits


def requeue_pending() -> None:
    """Called by a preempted cluster task (submitit's ``checkpoint``) before its process exits to be requeued: the
    run's folder then says ``queued`` (requeued) instead of ``failed``, and the next attempt resumes it."""
    _REQUEUE["pending"] = True


class Terminated(BaseException):
    """Raised in a worker by SIGTERM (a scheduler or ``RunHandle.stop`` ending it), so the folder says so."""


def terminate_on_sigterm() -> None:
    """In a worker process: turn SIGTERM into ``Terminated`` so the run writes its final status before exiting."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"terminated by {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)


class _StopFile:
    """``is_set()`` for the training loop: the run's STOP file exists or an in-process flag is set."""

    def __init__(self, run: Run, extra: Any = None) -> None:
        self.run, self.extra = run, extra

    def is_set(self) -> bool:
        if not self.run.path.is_dir():  # the run folder was deleted under the run: nothing it writes would be kept
            return True
        return self.run.stop_requested or bool(self.extra is not None and self.extra.is_set())


def _open_sinks(run: Run, cfg: ExperimentConfig) -> list[Any]:
    from plasticity_core.runs.sinks import SINKS

    sinks = []
    for name in cfg.launch.sinks:
        info = SINKS.get(name)
        info.check()
        sinks.append(info.open(run.path, cfg))
    return sinks


def execute_run(run: Run, stop: Any = None, on_event: Callable[[dict], None] | None = None,
                resume: bool = False) -> dict[str, Any]:
    """Fine-tune the run of this folder here and write events, tracker sinks and the final summary into it.

    A run already in a final status is not run again (its summary is returned). ``resume=True`` takes over a
    folder left ``running`` by an earlier attempt (a requeued cluster task): a ``resume`` event marks the restart,
    and the fine-tune continues from the folder's checkpoint where the training loop supports it.
    Never raises for a failure of the run itself: the folder says ``failed`` with the traceback in ``error.txt``.
    Returns the final summary.
    """
    previous = run.raw_summary()
    if previous.get("status") in FINAL:
        return previous
    _REQUEUE["pending"] = False
    if previous.get("status") == "running" and not resume and not previous.get("stale") and run.status == "running":
        raise RuntimeError(f"{run.path} is already running ({previous.get('host')} pid {previous.get('pid')}); "
                           f"pass resume=True to take it over")
    writer = RunWriter.for_folder(run.path, on_event=on_event, heartbeat_s=None)
    try:
        cfg = run.config
        writer.base.update(arm=run.arm, seed=run.seed, heartbeat_timeout_s=cfg.launch.heartbeat_timeout_s)
    except Exception as e:  # an unreadable config.yaml: say so in the folder instead of dying silently
        tb = traceback.format_exc()
        (run.path / "error.txt").write_text(tb)
        summary = {**writer.base, "status": "failed", "reason": f"config.yaml: {type(e).__name__}: {e}",
                   "traceback": tb, "ended_at": time.time()}
        _write_json(run.path / "summary.json", summary)
        return summary
    stopper = _StopFile(run, stop)
    if stopper.is_set():
        summary = {**writer.base, "status": "stopped", "reason": "stop requested before the run started", "steps": 0,
                   "ended_at": time.time()}
        _write_json(run.path / "summary.json", summary)
        return summary
    writer.heartbeat_s = cfg.launch.heartbeat_s
    # a requeued or reopened folder (``interrupt.reopen``) continues from its checkpoint on whatever executor runs it
    resuming = bool(previous.get("requeued")) or (resume and previous.get("status") == "running")
    return _execute(run, cfg, writer, stopper, resuming)


def _execute(run: Run, cfg: ExperimentConfig, writer: RunWriter, stopper: _StopFile, resuming: bool) -> dict[str, Any]:
    writer.open()
    writer.status("running", "loading backbone and data")
    try:
        writer.sinks.extend(_open_sinks(run, cfg))
        from_checkpoint = resuming and (run.path / STATE_FILE).exists()
        if resuming and not from_checkpoint:  # the training loop emits its own resume event at the checkpoint's step
            writer.write(make_event("resume", 0, None, attempt=writer.base["attempt"],
                                    reason=f"resumed; no checkpoint ({STATE_FILE}) in the folder, restarting from "
                                           f"step 0 (finetune.checkpoint_every > 0 makes a requeued run continue "
                                           f"instead)"))
        bb, data = load_setup(cfg)
        result = finetune(bb.model, data, cfg.finetune, reinit=cfg.arms[run.arm], on_event=writer.write, stop=stopper,
                          checkpoint_dir=run.path, resume=from_checkpoint)
    except BaseException as e:  # noqa: BLE001 - the folder must say how it ended whatever happened
        if isinstance(e, SystemExit) and _REQUEUE["pending"]:  # preempted: the scheduler runs it again
            step = writer.heartbeat.fields.get("step") if writer.heartbeat is not None else None
            reason = f"preempted or timed out at step {step}; requeued, the next attempt resumes from the folder"
            writer.sinks = []  # the requeued attempt continues the trackers; nothing more is sent from here
            writer._log.write(json.dumps(make_event("requeued", step, None, reason=reason)) + "\n")
            writer.close()
            writer.status("queued", reason, requeued=True, launcher=None)
            raise
        tb = traceback.format_exc()
        interrupted = isinstance(e, KeyboardInterrupt) or (isinstance(e, Terminated) and stopper.is_set())
        reason = ("stop requested; " + str(e) if isinstance(e, Terminated) else "interrupted (SIGINT / Ctrl-C)") \
            if interrupted else (user_message(e) or f"{type(e).__name__}: {e}")  # expected failures in one line
        try:
            (run.path / "error.txt").write_text(tb)
        except OSError:
            pass  # e.g. disk full: the summary below may still fit; if not, the heartbeat goes stale
        summary = writer.finish("stopped" if interrupted else "failed", reason, traceback=tb)
        if not isinstance(e, Exception):
            raise
        return summary
    fields = {k: v for k, v in result.summary().items() if k not in ("status", "reason")}
    status, reason, flag = result.status, result.reason, stopper.extra
    if status == "stopped" and getattr(flag, "ends_as", "stopped") != "stopped" and flag.is_set():  # e.g. scancel
        status = flag.ends_as
        reason = (f"{status} by {flag.received} from {flag.source} at step {result.steps}; its checkpoint is kept: "
                  f"resume with plasticity finetune --resume {run.path.parent}")
    return writer.finish(status, reason, **fields)


load_inputs = load_setup  # the name this module had for it
