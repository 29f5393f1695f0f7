"""``slurm``: one submitit task per run (``launch.slurm`` holds submitit's parameters; ``cluster: local`` runs the
tasks as local processes). Needs the ``[slurm]`` extra.

- Resources per run: ``cpus_per_run``, ``gpus_per_run`` and ``memory_gb_per_run`` (``--mem``; a cluster without a
  default memory per CPU would otherwise give a task the whole node), unless ``launch.slurm`` names its own;
  ``parallel`` bounds the tasks at once (the array's ``%parallel`` on Slurm, the number of live local tasks with
  ``cluster: local``).
- Following the tasks: a run folder's own final status ends its task's wait (no scheduler query needed). A task that
  ended without writing one is found with ``squeue`` (every state Slurm still holds, ``-t all``), its final state
  read from ``sacct`` when accounting answers; a task no longer in the queue ends the wait either way, so a cluster
  without accounting never hangs the launcher. The line printed at submission says which of the two is used.
- In the task: ``scancel`` (SIGTERM; submitit's local cancel sends SIGINT) stops the run at its next step with its
  checkpoint and it reads ``cancelled`` (submitit itself ignores SIGTERM); preemption or time limit (SIGUSR2) requeues
  the task and the requeued one resumes the folder, as does a task Slurm requeued itself (``scontrol requeue``).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from plasticity_core.runs.execute import execute_run, requeue_pending
from plasticity_core.runs.executors.base import Launch, register_executor
from plasticity_core.runs.interrupt import StopOnSignals, reopen, resume_problem
from plasticity_core.runs.store import Run
from plasticity_core.train.events import FINAL, write_json as _write_json

# states in which Slurm still holds a task (it may yet run or is ending); anything else, or absence, means it ended
_HELD = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
         "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED"}
POLL_S = 3.0  # between scheduler queries


class SlurmTask:
    """Body of a Slurm (submitit) task: one run. On preemption or timeout submitit calls ``checkpoint``, which
    requeues the same task; the requeued task resumes the run folder instead of failing on it."""

    def __call__(self, folder: str) -> str:
        run = Run(folder)
        if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0 and resume_problem(run) is None:
            reopen(run, queued_reason="requeued by Slurm")  # e.g. scontrol requeue after the folder said cancelled
        cancel = StopOnSignals((signal.SIGTERM, signal.SIGINT), announce=False, ends_as="cancelled",
                               source="the scheduler (scancel, preemption or the job's end)")  # submitit ignores it
        with cancel:
            return execute_run(run, stop=cancel, resume=True).get("status", "?")

    def checkpoint(self, folder: str) -> Any:
        import submitit

        requeue_pending()
        return submitit.helpers.DelayedSubmission(SlurmTask(), folder)


def _squeue(job_ids: list[str]) -> tuple[dict[str, str] | None, str]:
    """({task id: state} of the tasks Slurm still holds, ""), or (None, why) when squeue itself fails."""
    try:
        p = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i %T", "-j", ",".join(job_ids)],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{type(e).__name__}: {e}"
    if p.returncode != 0:
        if "Invalid job id" in p.stderr:
            return {}, ""  # none of them is known any more: all left the queue
        return None, (p.stderr.strip() or f"exit code {p.returncode}").splitlines()[0][:200]
    states = {}
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states, ""


def _sacct(job_ids: list[str]) -> tuple[dict[str, str] | None, str]:
    """({task id: final state} from accounting, ""), or (None, why) when sacct does not answer."""
    try:
        p = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{type(e).__name__}: {e}"
    if p.returncode != 0:
        return None, ((p.stderr or p.stdout).strip() or f"exit code {p.returncode}").splitlines()[0][:200]
    return {a: b.split()[0] for a, b in (l.split("|", 1) for l in p.stdout.splitlines() if "|" in l)}, ""


def _ended(run: Run, job_id: str, state: str | None, source: str, log_dir) -> None:
    """Final status of a run whose task ended without writing one."""
    raw = run.raw_summary().get("status")
    cancelled = (state or "").startswith("CANCELLED") or (state is None and raw == "queued")
    what = f"ended {state} ({source})" if state else "left the Slurm queue (no accounting record)"
    when = "before it started" if raw == "queued" else "without writing a final status (killed, or lost its node)"
    run.finalise("cancelled" if cancelled else "failed",
                 f"Slurm job {job_id} {what} {when}; see {log_dir / job_id.split('_')[0]}; resume with plasticity "
                 f"finetune --resume {run.path.parent}")


def _follow(ctx: Launch, jobs: list, runs: list[Run], log_dir) -> None:
    """Wait until every run has a final status, finalising those whose task left the queue without writing one."""
    ids = [str(j.job_id) for j in jobs]
    _, why_not = _sacct(ids[:1])
    print(f"slurm: following {len(ids)} task(s) of job {ids[0].split('_')[0]} with squeue"
          + (" (final states from sacct)" if not why_not else f" (sacct unavailable: {why_not})"),
          file=sys.stderr, flush=True)
    next_poll, squeue_failing_since, gone = 0.0, None, {}
    while True:
        ctx.wait(0.5)
        pending = [(j, r) for j, r in zip(ids, runs) if r.raw_summary().get("status") not in FINAL]
        if not pending:
            return
        if ctx.stopping:
            _cancel_unstarted(jobs, runs)
        if time.monotonic() < next_poll:
            continue
        next_poll = time.monotonic() + POLL_S
        states, why = _squeue([j for j, _ in pending])
        if states is None:
            squeue_failing_since = squeue_failing_since or time.monotonic()
            if time.monotonic() - squeue_failing_since > 20 * POLL_S:
                for j, r in pending:
                    r.finalise("failed", f"cannot follow Slurm job {j}: squeue fails ({why}) for "
                                         f"{20 * POLL_S:.0f} s; check it with squeue -j {j}")
                return
            continue
        squeue_failing_since = None
        left = [(j, r) for j, r in pending if states.get(j) not in _HELD]
        finals = _sacct([j for j, _ in left])[0] if left else None
        for j, r in left:
            s = r.summary()
            beat = s.get("status") == "running" and not s.get("stale")
            if beat and time.monotonic() - gone.setdefault(j, time.monotonic()) < 2 * ctx.config.heartbeat_timeout_s:
                continue  # its worker is still writing its status (a cancelled task stops at its next step)
            state = states.get(j) or (finals or {}).get(j)
            _ended(r, j, state, "squeue" if states.get(j) else "sacct" if state else "squeue", log_dir)


def _cancel_unstarted(jobs: list, runs: list[Run]) -> None:
    """On a stop request: tasks whose run has not started are cancelled, the runs ``stopped`` (resumable)."""
    for job, run in zip(jobs, runs):
        if run.raw_summary().get("status") == "queued":
            job.cancel(check=False)
            run.finalise("stopped", f"stop requested before it started; Slurm job {job.job_id} cancelled")


def _follow_local(ctx: Launch, executor: Any, runs: list[Run], log_dir) -> None:
    """submitit's local executor: at most ``parallel`` live tasks, each followed through its process."""
    queue, live = list(runs), {}
    try:
        while queue or live:
            while queue and len(live) < ctx.config.parallel and not ctx.stopping:
                run = queue.pop(0)
                job = executor.submit(SlurmTask(), str(run.path.resolve()))
                _note_job(run, job)
                live[job] = run
            if ctx.stopping:
                for run in queue:
                    run.finalise("stopped", "stop requested before it started")
                queue = []
            for job in [j for j in live if j.done()]:
                run = live.pop(job)
                if run.raw_summary().get("status") not in FINAL:
                    try:
                        job.result()
                        why = "it returned without a final status"
                    except Exception as e:  # noqa: BLE001
                        why = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
                    run.finalise("failed", f"local job {job.job_id} ended: {why}; see {log_dir / str(job.job_id)}")
            ctx.wait(0.3)
    except BaseException:
        for job in live:
            job.cancel(check=False)
        raise


def _note_job(run: Run, job: Any) -> None:
    s = run.raw_summary()
    if s.get("status") == "queued":
        _write_json(run.path / "summary.json", {**s, "reason": f"submitted as job {job.job_id}; waiting for the "
                                                              f"scheduler", "job_id": str(job.job_id)})


@register_executor("slurm", "one submitit task per run (an array job), requeued on preemption, followed without "
                            "relying on sacct (launch.slurm: submitit parameters; cluster: local for a local test)",
                   module="submitit", extra="slurm", holds_queue=False)
def _run_slurm(ctx: Launch) -> None:
    import submitit

    cfg = ctx.config
    params = dict(cfg.slurm)
    cluster = params.pop("cluster", None)
    runs = ctx.pending()
    if not runs:
        return
    exp_dir = runs[0].path.parent
    log_dir = exp_dir / "slurm"
    executor = submitit.AutoExecutor(folder=log_dir / "%j", cluster=cluster)
    defaults: dict[str, Any] = {"name": exp_dir.name, "timeout_min": 60, "cpus_per_task": max(1, int(cfg.cpus_per_run)),
                                "slurm_array_parallelism": cfg.parallel}
    if not any(k in params for k in ("mem_gb", "slurm_mem", "slurm_mem_per_cpu", "slurm_mem_per_gpu")):
        defaults["mem_gb"] = cfg.memory_gb_per_run
    if cfg.gpus_per_run:
        defaults["gpus_per_node"] = max(1, int(cfg.gpus_per_run))
    executor.update_parameters(**{**defaults, **params})
    if executor.cluster == "local":
        _follow_local(ctx, executor, runs, log_dir)
        return
    quiet = logging.getLogger("submitit")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its sacct watcher's "Bypassing sacct error" warnings; we follow with squeue
    try:
        jobs = executor.map_array(SlurmTask(), [str(r.path.resolve()) for r in runs])
        for job, run in zip(jobs, runs):
            _note_job(run, job)
        try:
            _follow(ctx, jobs, runs, log_dir)
        except BaseException:  # an aborted launcher (second Ctrl-C): the tasks must not run on unwatched
            for job in jobs:
                job.cancel(check=False)
            raise
    finally:
        quiet.setLevel(level)
