"""Runs: the one code path from the dashboard, the CLI and a cluster sweep to run folders.

An experiment (``ExperimentConfig``: backbone + data + fine-tune config + arms x seeds) expands into single runs
(``spec``). Each run is a folder ``<root>/<experiment>-<tag>/<arm>-seed<seed>/`` in a ``RunStore`` (``store``)
holding ``config.yaml`` (a single-run config that repeats the run), ``metrics.jsonl`` (one event per line, flushed
as written), ``summary.json`` (status and reason), and ``error.txt`` / ``diagnosis.parquet`` / ``STOP`` when
they apply, a heartbeat and TensorBoard event files (``sinks``). ``execute_run`` runs one folder in this process
(``execute``); executors chosen by name (``EXECUTORS``: process, ray, slurm) give runs their workers
(``executors``); ``compare_runs`` summarises arms over seeds and names the folders it skips (``compare``);
``__main__`` is the workers' entry. The run folder's contents (events, summary, heartbeat) are the run contract
of ``plasticity_core.train.events``.
"""
from __future__ import annotations

from plasticity_core.runs.compare import compare_runs
from plasticity_core.runs.execute import execute_run
from plasticity_core.runs.executors import (EXECUTORS, RunHandle, launch, resume_runs, run_experiment, start_resume,
                                           start_run)
from plasticity_core.runs.sinks import SINKS
from plasticity_core.runs.spec import (LaunchError, MissingExtraError, RunExistsError, apply_overrides, expand_experiment,
                                       noop_arms, run_name, slug)
from plasticity_core.runs.store import ACTIVE, FINAL, ROOT_ENV, Run, RunStore, default_root, read_events

__all__ = ["ACTIVE", "EXECUTORS", "FINAL", "LaunchError", "MissingExtraError", "ROOT_ENV", "RunExistsError", "Run", "RunHandle", "RunStore", "SINKS", "apply_overrides",
           "compare_runs", "default_root", "execute_run", "expand_experiment", "launch", "noop_arms",
           "read_events", "resume_runs", "run_experiment", "run_name", "slug", "start_resume", "start_run"]

