"""Executors: how the runs of an experiment get workers. Chosen by name everywhere (``EXECUTORS``); one file each.

- ``process`` (``process.py``): a local pool running up to ``launch.parallel`` runs at once, each in its own fresh
  Python process;
- ``ray`` (``ray.py``): one Ray task per run with its CPU/GPU request (a local Ray runtime, or ``launch.address`` /
  ``$RAY_ADDRESS`` for a cluster), at most ``parallel`` in flight;
- ``slurm`` (``slurm.py``): a submitit array job, one run per task; a preempted task is requeued and resumes its run
  folder (``launch.slurm`` holds submitit's parameters; ``cluster: local`` runs the tasks as local processes).

Every executor works on folders that ``RunStore.create`` claimed, runs them with ``execute_run`` in its worker,
and, when it returns, leaves no run without a final status (``base.py``: registry, ``Launch``, ``launch``).
``run_experiment`` blocks in this process; ``start_run`` runs the same launch in a background process and returns
a ``RunHandle`` (``launching.py``).
"""
from __future__ import annotations

from plasticity_core.runs.executors import process, ray, slurm  # noqa: F401 - registers the executors
from plasticity_core.runs.executors.base import EXECUTORS, ExecutorInfo, Launch, _env, launch, register_executor
from plasticity_core.runs.executors.launching import (_CHILDREN, RunHandle, _launcher_main, _pid_alive, _prepare,
                                                      _terminate, resume_runs, run_experiment, start_resume,
                                                      start_run)
from plasticity_core.runs.executors.process import _Worker
from plasticity_core.runs.executors.slurm import SlurmTask

__all__ = ["EXECUTORS", "ExecutorInfo", "Launch", "RunHandle", "SlurmTask", "launch", "register_executor",
           "resume_runs", "run_experiment", "start_resume", "start_run"]
