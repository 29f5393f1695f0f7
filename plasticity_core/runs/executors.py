"""Executors: how the runs of an experiment get workers. Chosen by name everywhere (``EXECUTORS``).

- ``process``: a local pool running up to ``launch.parallel`` runs at once, each in its own fresh Python process;
- ``ray``: one Ray task per run with its CPU/GPU request (a local Ray runtime, or ``launch.address`` /
  ``$RAY_ADDRESS`` for a cluster), at most ``parallel`` in flight;
- ``slurm``: a submitit array job, one run per task; a preempted task is requeued and resumes its run folder
  (``launch.slurm`` holds submitit's parameters; ``cluster: local`` runs the tasks as local processes).

Every executor works on folders that ``RunStore.create`` claimed, runs them with ``execute_run`` in its worker,
and, when it returns, leaves no run without a final status. ``run_experiment`` blocks in this process;
``start_run`` runs the same launch in a background process and returns a ``RunHandle``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from plasticity_core.config import ExperimentConfig, LaunchConfig
from plasticity_core.registry import Registry
from plasticity_core.runs.execute import execute_run
from plasticity_core.runs.spec import LaunchError, MissingExtraError
from plasticity_core.runs.store import ACTIVE, FINAL, Heartbeat, Run, RunStore, _read_json, _write_json, check_name

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
_CHILDREN: list[subprocess.Popen] = []  # background launchers this process started; polled so that they are reaped


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
        self._offsets = {r: 0 for r in self.runs}
        self.stopping = False

    def tick(self) -> None:
        if not self.stopping and self.stop is not None and self.stop.is_set():
            self.stopping = True
            for r in self.runs:
                r.request_stop()
        if self.on_event is not None:
            for r in self.runs:
                self._pump(r)

    def _pump(self, run: Run) -> None:
        import json

        try:
            with open(run.path / "metrics.jsonl", "rb") as f:
                f.seek(self._offsets[run])
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1  # only complete lines; the rest is read at the next tick
        self._offsets[run] += end
        for line in chunk[:end].split(b"\n"):
            try:
                event = json.loads(line) if line.strip() else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(event, dict):
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
            status = r.raw_summary().get("status")
            if status == "queued":
                r.finalise("cancelled", f"never started: the {executor} launch ended before giving it a worker")
            elif status == "running":
                s = r.summary()
                r.finalise("failed", s["reason"] if s.get("stale") else
                           f"its {executor} worker ended without writing a final status (killed or crashed)")
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


# ---------------------------------------------------------------------------------------------- process
def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


class _Worker:
    """One pool process (``python -m plasticity_core.runs serve``): reads run folders from stdin, one per line, and
    executes them in turn, so torch is imported once per slot rather than once per run."""

    def __init__(self, log_path: Path) -> None:
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "plasticity_core.runs", "serve"], stdin=subprocess.PIPE,
                                         stdout=log, stderr=subprocess.STDOUT, env=_env(), text=True)
        self.run: Run | None = None

    def give(self, run: Run | None) -> None:
        """Hand over the next run (``None``: no more work, the worker exits)."""
        self.run = run
        if self.proc.stdin.closed:
            return
        try:
            if run is None:
                self.proc.stdin.close()
            else:
                self.proc.stdin.write(str(run.path.resolve()) + "\n")
                self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the worker is gone; poll() reports it

    def idle(self) -> bool:
        return self.run is None or self.run.raw_summary().get("status") in FINAL


@register_executor("process", "local pool: up to launch.parallel runs at once, each pool worker its own Python process")
def _run_process(ctx: Launch) -> None:
    queue = ctx.pending()
    exp_dir = queue[0].path.parent if queue else None
    workers: list[_Worker] = []
    try:
        while queue or any(w.run is not None for w in workers):
            while queue and len(workers) < ctx.config.parallel:
                workers.append(_Worker(exp_dir / f"worker-{len(workers)}.log"))
            for w in list(workers):
                rc = w.proc.poll()
                if rc is not None:  # died: its run cannot say so itself; a fresh worker takes the slot
                    workers.remove(w)
                    if w.run is not None and w.run.raw_summary().get("status") not in FINAL:
                        w.run.finalise("failed", f"worker process {w.proc.pid} ended with {_describe_exit(rc)} before "
                                                 f"writing a final status (killed, out of memory, or a crash below "
                                                 f"Python); see {exp_dir / 'worker-*.log'}")
                    continue
                if w.idle():
                    w.give(queue.pop(0) if queue else None)
            ctx.wait(0.2)
    finally:
        for w in workers:  # an interrupted launcher: its workers got the same Ctrl-C; give them time to say so
            w.give(None)
            try:
                w.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.proc.kill()


# ---------------------------------------------------------------------------------------------- ray
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


# ---------------------------------------------------------------------------------------------- slurm
class SlurmTask:
    """Body of a Slurm (submitit) task: one run. On preemption or timeout submitit calls ``checkpoint``, which
    requeues the same task; the requeued task resumes the run folder instead of failing on it."""

    def __call__(self, folder: str) -> str:
        return execute_run(Run(folder), resume=True).get("status", "?")

    def checkpoint(self, folder: str) -> Any:
        import submitit

        from plasticity_core.runs.execute import requeue_pending

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


# ---------------------------------------------------------------------------------------------- entry points
def _prepare(config: ExperimentConfig | str | os.PathLike, executor: str | None, parallel: int | None,
             allow_noop: bool, tag: str | None) -> ExperimentConfig:
    if tag is not None:
        check_name("tag", tag)
    config = config if isinstance(config, ExperimentConfig) else ExperimentConfig.load(config)
    changes = {k: v for k, v in (("executor", executor), ("parallel", parallel)) if v is not None}
    if changes:
        config = dataclasses.replace(config, launch=dataclasses.replace(config.launch, **changes))
    EXECUTORS.get(config.launch.executor).check()
    from plasticity_core.runs.sinks import SINKS

    for sink in config.launch.sinks:
        SINKS.get(sink).check()
    if not allow_noop:
        from plasticity_core.runs.spec import noop_arms

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
    return store.create(config, tag=tag, only=only, resume=resume, launcher=launcher, queued_reason=reason), launcher


def run_experiment(config: ExperimentConfig | str | os.PathLike, store: RunStore | str | os.PathLike | None = None,
                   on_event: Callable[[Run, dict], None] | None = None, stop: Any = None, tag: str | None = None,
                   only: Sequence[int] | None = None, executor: str | None = None, parallel: int | None = None,
                   allow_noop: bool = False, resume: bool = False) -> list[Run]:
    """Run every arm x seed of an experiment (or the expanded runs ``only``) and return when all have ended.

    ``executor`` / ``parallel`` override ``config.launch``; ``on_event(run, event)`` sees every event (progress
    bars); ``stop.is_set()`` stops all runs. Arms that would do nothing are refused (``allow_noop=True`` runs
    them anyway). ``resume=True`` adopts existing folders of the same runs (a requeued cluster task).
    Returns the run folders, each with a final status.
    """
    config = _prepare(config, executor, parallel, allow_noop, tag)
    runs, launcher = _claim(config, store, tag, only, resume)
    launch(runs, config.launch, on_event=on_event, stop=stop, launcher=launcher)
    return runs


# ---------------------------------------------------------------------------------------------- background launches
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
    exp_dir = runs[0].path.parent
    folders = [str(r.path.resolve()) for r in runs]
    with open(exp_dir / "worker.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "plasticity_core.runs", "launch", launcher or "-", *folders],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True, cwd=os.getcwd())
    _CHILDREN.append(proc)
    _write_json(exp_dir / "worker.json", {"pid": proc.pid, "host": socket.gethostname(), "started_at": time.time(),
                                          "executor": config.launch.executor, "runs": folders})
    return RunHandle(runs, proc.pid, proc)


def _launcher_main(launcher: str, folders: Sequence[str]) -> int:
    """Body of the background launcher: the launch of ``start_run``, with the launch settings of the runs' config."""
    assert "streamlit" not in sys.modules, "the run launcher must not import streamlit"
    from plasticity_core.runs.execute import terminate_on_sigterm

    terminate_on_sigterm()
    runs = [Run(f) for f in folders]
    launch(runs, runs[0].config.launch, launcher=None if launcher == "-" else launcher)
    return 0
