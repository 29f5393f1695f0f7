"""``ray``: one Ray task per run with its per-run request (``launch.cpus_per_run`` / ``gpus_per_run``), at most
``parallel`` in flight. Needs the ``[ray]`` extra.

Where the tasks run (the first that applies):
- ``launch.address`` or ``$RAY_ADDRESS``: a cluster's GCS (``host:port``, as ``ray start --head`` prints it) or a
  Ray client address (``ray://host:10001``); ``local`` forces a runtime of our own;
- a Ray cluster already running on this machine (``ray start --head``, found as ``ray.init()`` finds it);
- else a local Ray runtime started for this launch and stopped after it: its state in a fresh temporary folder
  (removed after; nothing written to ``~/.ray``), no dashboard, token authentication with a fresh token held in
  this process's environment. Ray's servers (GCS, raylet, object manager, workers) listen on all interfaces
  whatever it is told (Ray rewrites 127.0.0.1 to the host's address and has no option to bind them to
  loopback): the token is what guards them.
When attaching, only the per-run request is made, never the cluster's size. A connection or authentication failure
is one line naming what to set. A task lost with its node reads ``failed`` and resumes with ``--resume``.
"""
from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

from plasticity_core.runs.execute import execute_run
from plasticity_core.runs.executors.base import Launch, _env, register_executor
from plasticity_core.runs.spec import LaunchError
from plasticity_core.runs.store import Run
from plasticity_core.train.events import FINAL

AUTH_HINT = ("if the cluster uses token authentication (Ray's default for a new cluster), set RAY_AUTH_MODE=token and "
             "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to its token (`ray get-auth-token` on the head node)")


def _ray_task(folder: str) -> str:
    """Body of a Ray task: one run, in the worker Ray placed it on."""
    return execute_run(Run(folder), resume=True).get("status", "?")


def _reload_auth() -> None:
    """Make Ray re-read RAY_AUTH_MODE / RAY_AUTH_TOKEN in this process (it caches them at its first use)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # a Ray without token authentication: nothing cached
        pass


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """These environment variables (Ray's auth settings) for the duration, seen by Ray in this process too."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    _reload_auth()
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reload_auth()


def _running_local_cluster() -> str | None:
    """The address of a cluster started on this machine with ``ray start --head`` (what ``ray.init()`` attaches to)."""
    try:
        from ray._private.services import find_bootstrap_address

        return find_bootstrap_address(None)
    except Exception:  # noqa: BLE001 - none recorded or an older Ray: start our own
        return None


def where(address: str | None) -> str | None:
    """The cluster address a launch attaches to (``None``: a local runtime of its own)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":
        return None
    return address or _running_local_cluster()


@contextmanager
def connect(cfg, exp_dir) -> Iterator[str]:
    """Ray initialised for this launch (attached, or a local runtime of its own); yields a line saying which."""
    import ray

    if ray.is_initialized():  # the caller's own ray.init(): use it as it is
        yield "the Ray runtime this process already initialised"
        return
    address = where(cfg.address)
    runtime_env = {"env_vars": {"PYTHONPATH": _env()["PYTHONPATH"]}}
    token_env = {}
    if (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")) and not os.environ.get("RAY_AUTH_MODE"):
        token_env["RAY_AUTH_MODE"] = "token"  # a token given means token mode; Ray would ignore it otherwise
    if address:
        with _environ(**token_env):
            log = exp_dir / "ray.log"
            try:
                with _stderr_to(log):
                    ray.init(address=address, runtime_env=runtime_env, log_to_driver=False,
                             **({} if address.startswith("ray://") else {"include_dashboard": False}))
            except Exception as e:  # noqa: BLE001 - one line naming what to set; Ray's own words are in ray.log
                said = log.read_text(errors="replace") if log.exists() else ""
                auth = "Unauthenticated" in said or "auth" in str(e).lower()
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise LaunchError(f"cannot connect to the Ray cluster at {address} ({first}): "
                                  + (AUTH_HINT if auth else "check launch.address / RAY_ADDRESS and that the cluster "
                                     f"is up (`ray status`); {AUTH_HINT}") + f"; Ray's messages: {log}") from None
            try:
                yield f"the Ray cluster at {address}"
            finally:
                ray.shutdown()
        return
    temp = tempfile.mkdtemp(prefix="plasticity-ray-")
    cpus = min(os.cpu_count() or 1, max(1, int(cfg.parallel * cfg.cpus_per_run)))
    try:
        with _environ(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)):
            ray.init(num_cpus=cpus, _temp_dir=temp, include_dashboard=False, log_to_driver=False,
                     runtime_env=runtime_env)
            try:
                yield f"a local Ray runtime ({cpus} CPUs, state in {temp}, removed after)"
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@contextmanager
def _stderr_to(path) -> Iterator[None]:
    """File descriptor 2 into ``path`` for the duration: Ray's C++ core prints its connection retries there."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@register_executor("ray", "one Ray task per run with its CPU/GPU request; launch.address / $RAY_ADDRESS, a cluster "
                          "running on this machine, or a local Ray runtime", module="ray", extra="ray")
def _run_ray(ctx: Launch) -> None:
    import ray

    cfg = ctx.config
    runs = ctx.pending()
    if not runs:
        return
    with connect(cfg, runs[0].path.parent) as where_to:
        print(f"ray: tasks run on {where_to}", file=sys.stderr, flush=True)
        task = ray.remote(_ray_task).options(num_cpus=cfg.cpus_per_run, num_gpus=cfg.gpus_per_run, max_retries=0)
        queue, inflight = list(runs), {}
        while queue or inflight:
            while queue and len(inflight) < cfg.parallel and not ctx.stopping:
                run = queue.pop(0)
                inflight[task.remote(str(run.path.resolve()))] = run
            if ctx.stopping:  # never started: stopped with the others, resumable like them
                for run in queue:
                    if run.raw_summary().get("status") not in FINAL:
                        run.finalise("stopped", "stop requested before the run started")
                queue = []
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=0.2) if inflight else ([], [])
            ctx.tick()
            for ref in done:
                run = inflight.pop(ref)
                try:
                    ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a lost node, a worker crash or a task error: say it
                    if run.raw_summary().get("status") not in FINAL:
                        step = run.summary().get("steps")
                        run.finalise("failed", f"Ray task failed: {type(e).__name__}: "
                                               f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}; "
                                               f"resume it from its checkpoint with plasticity finetune --resume "
                                               f"{run.path.parent}")
