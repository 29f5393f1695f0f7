"""``ray``: one Ray task per run with its CPU/GPU request (a local Ray runtime, or ``launch.address`` /
``$RAY_ADDRESS`` for a cluster), at most ``parallel`` in flight. Needs the ``[ray]`` extra."""
from __future__ import annotations

import os

from plasticity_core.runs.execute import execute_run
from plasticity_core.runs.executors.base import Launch, _env, register_executor
from plasticity_core.runs.store import Run
from plasticity_core.train.events import FINAL


def _ray_task(folder: str) -> str:
    """Body of a Ray task: one run, in the worker Ray placed it on."""
    return execute_run(Run(folder), resume=True).get("status", "?")


@register_executor("ray", "one Ray task per run with its CPU/GPU request; a local Ray runtime or launch.address / "
                          "$RAY_ADDRESS", module="ray", extra="ray")
def _run_ray(ctx: Launch) -> None:
    import ray

    cfg = ctx.config
    started = False
    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        env = {"env_vars": {"PYTHONPATH": _env()["PYTHONPATH"]}}
        if address:
            ray.init(address=address, runtime_env=env, include_dashboard=False, log_to_driver=False)
        else:
            cpus = min(os.cpu_count() or 1, max(1, int(cfg.parallel * cfg.cpus_per_run)))
            ray.init(num_cpus=cpus, runtime_env=env, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        task = ray.remote(_ray_task).options(num_cpus=cfg.cpus_per_run, num_gpus=cfg.gpus_per_run, max_retries=0)
        queue, inflight = ctx.pending(), {}
        while queue or inflight:
            while queue and len(inflight) < cfg.parallel:
                run = queue.pop(0)
                inflight[task.remote(str(run.path.resolve()))] = run
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=0.2)
            ctx.tick()
            for ref in done:
                run = inflight.pop(ref)
                try:
                    ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a worker crash or a task error: the folder must say it
                    if run.raw_summary().get("status") not in FINAL:
                        run.finalise("failed", f"Ray task failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    finally:
        if started:
            ray.shutdown()
