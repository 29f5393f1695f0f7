"""``slurm``: a submitit array job, one run per task; a preempted task is requeued and resumes its run folder
(``launch.slurm`` holds submitit's parameters; ``cluster: local`` runs the tasks as local processes). Needs ``[slurm]``."""
from __future__ import annotations

from typing import Any

from plasticity_core.runs.execute import execute_run, requeue_pending
from plasticity_core.runs.executors.base import Launch, register_executor
from plasticity_core.runs.store import Run
from plasticity_core.train.events import FINAL, write_json as _write_json


class SlurmTask:
    """Body of a Slurm (submitit) task: one run. On preemption or timeout submitit calls ``checkpoint``, which
    requeues the same task; the requeued task resumes the run folder instead of failing on it."""

    def __call__(self, folder: str) -> str:
        return execute_run(Run(folder), resume=True).get("status", "?")

    def checkpoint(self, folder: str) -> Any:
        import submitit

        requeue_pending()
        return submitit.helpers.DelayedSubmission(SlurmTask(), folder)


@register_executor("slurm", "a submitit array job, one run per task, requeued on preemption (launch.slurm: submitit "
                            "parameters; cluster: local for a local test)", module="submitit", extra="slurm",
                   holds_queue=False)
def _run_slurm(ctx: Launch) -> None:
    import submitit

    cfg = ctx.config
    params = dict(cfg.slurm)
    cluster = params.pop("cluster", None)
    runs = ctx.pending()
    if not runs:
        return
    exp_dir = runs[0].path.parent
    executor = submitit.AutoExecutor(folder=exp_dir / "slurm" / "%j", cluster=cluster)
    defaults: dict[str, Any] = {"name": exp_dir.name, "timeout_min": 60, "cpus_per_task": max(1, int(cfg.cpus_per_run)),
                                "slurm_array_parallelism": cfg.parallel}
    if cfg.gpus_per_run:
        defaults["gpus_per_node"] = max(1, int(cfg.gpus_per_run))
    executor.update_parameters(**{**defaults, **params})
    jobs = executor.map_array(SlurmTask(), [str(r.path.resolve()) for r in runs])
    for job, run in zip(jobs, runs):
        s = run.raw_summary()
        if s.get("status") == "queued":
            _write_json(run.path / "summary.json", {**s, "reason": f"submitted as job {job.job_id}; waiting for the scheduler",
                                                    "job_id": str(job.job_id)})
    try:
        while not all(j.done() for j in jobs):
            ctx.wait(0.5)
    except BaseException:  # Ctrl-C / SIGTERM of the launcher: the jobs must not run folders it will mark cancelled
        for job in jobs:
            job.cancel(check=False)
        raise
    for job, run in zip(jobs, runs):
        if run.raw_summary().get("status") not in FINAL:
            try:
                job.result()
                why = "it returned without a final status"
            except Exception as e:  # noqa: BLE001
                why = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
            run.finalise("failed", f"job {job.job_id} ended: {why}; see {exp_dir / 'slurm' / str(job.job_id)}")
