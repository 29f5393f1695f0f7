"""Run folders, background runs and comparisons: the one code path for the dashboard, the CLI and a cluster sweep.

An experiment (``ExperimentConfig``: backbone + data + fine-tune config + arms x seeds) expands into single runs.
Each run is a folder ``<root>/<experiment>-<tag>/<arm>-seed<seed>/`` holding

- ``config.yaml``: a single-run ``ExperimentConfig`` (one arm, one seed): ``run_experiment`` on it repeats the run;
- ``metrics.jsonl``: one finetune event per line (``type``, ``step``, ``time``), flushed as written;
- ``summary.json``: status (queued | running | finished | stopped | failed), reason, accuracies, steps, wall time;
- ``error.txt`` (the traceback of a failed run), ``diagnosis.parquet`` (snapshots, when asked), ``STOP`` (a stop
  request the worker polls every step), and in the experiment folder ``worker.json`` / ``worker.log``.

Entry points: ``run_experiment(config, store)`` runs in this process (CLI, cluster task); ``start_run(config, store)``
runs in a fresh Python process (``python -m plasticity_core.runs worker ...``, spawn semantics, own session), so it
never blocks the caller, never imports streamlit, and outlives a browser refresh; ``RunHandle.attach(folder)``
re-attaches to it. ``compare_runs(runs)`` summarises arms over seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd

from plasticity_core.config import ExperimentConfig

ROOT_ENV = "PLASTICITY_RUNS"  # overrides the default store root ./runs
ACTIVE = ("queued", "running")
_CHILDREN: list[subprocess.Popen] = []  # workers this process started; polled so that finished ones are reaped


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV, "runs"))


def slug(text: str) -> str:
    """A file-name-safe version of an experiment or arm name."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")
    return s or "run"


def expand_experiment(config: ExperimentConfig) -> list[ExperimentConfig]:
    """One single-run config per arm x seed (arm order, then seed order).

    The run's seed drives the fine-tune (head init, data order, augmentation) and the arm's re-init draw, so every
    arm of one seed sees the same head and batches and the seeds differ in everything random.
    """
    runs = []
    for arm, reinit in config.arms.items():
        for seed in config.seeds:
            arm_cfg = None if reinit is None else dataclasses.replace(reinit, seed=seed)
            runs.append(dataclasses.replace(config, finetune=dataclasses.replace(config.finetune, seed=seed),
                                            arms={arm: arm_cfg}, seeds=[seed]))
    return runs


def run_name(single: ExperimentConfig) -> str:
    """Folder name of a single-run config: the arm and the seed are visible."""
    (arm,) = single.arms
    return f"{slug(arm)}-seed{single.seeds[0]}"


# ---------------------------------------------------------------------------------------------- reading a folder
def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of ``metrics.jsonl``; a half-written or corrupt line is skipped, never raised."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    events = []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def pid_alive(pid: int | None, host: str | None = None) -> bool:
    """Whether process ``pid`` on this host is running (a zombie counts as gone). Unknown for other hosts: True."""
    if not pid:
        return False
    if host is not None and host != socket.gethostname():
        return True
    for child in _CHILDREN:
        child.poll()  # reap our own finished workers
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


class Run:
    """One run folder, read-only: config, events, summary and the status as a reader should see it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._config: ExperimentConfig | None = None

    def __repr__(self) -> str:
        return f"Run({self.experiment}/{self.name}: {self.status})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def experiment(self) -> str:
        return self.path.parent.name

    @property
    def config(self) -> ExperimentConfig:
        if self._config is None:
            self._config = ExperimentConfig.load(self.path / "config.yaml")
        return self._config

    @property
    def arm(self) -> str:
        return next(iter(self.config.arms))

    @property
    def seed(self) -> int:
        return self.config.seeds[0]

    def events(self, types: str | Sequence[str] | None = None) -> list[dict[str, Any]]:
        events = read_events(self.path / "metrics.jsonl")
        if types is None:
            return events
        wanted = {types} if isinstance(types, str) else set(types)
        return [e for e in events if e.get("type") in wanted]

    def curve(self, kind: str = "eval") -> pd.DataFrame:
        """The events of one type as a DataFrame (``eval``: step, val_acc, val_loss; ``step``: loss, lr, ...)."""
        return pd.DataFrame([{k: v for k, v in e.items() if k != "type"} for e in self.events(kind)])

    def summary(self) -> dict[str, Any]:
        """``summary.json`` with the status a reader should trust.

        A folder without a summary is ``queued``; an active status whose worker process is gone reads as
        ``failed`` (the worker died without a final word: killed, out of memory, a crash below Python).
        """
        s = _read_json(self.path / "summary.json") or {"status": "queued", "reason": "no summary written yet"}
        if s.get("status") in ACTIVE:
            worker = _read_json(self.path.parent / "worker.json") or {}
            pid, host = s.get("pid") or worker.get("pid"), s.get("host") or worker.get("host")
            if pid and not pid_alive(pid, host):
                s = {**s, "status": "failed", "stale": True,
                     "reason": f"worker process {pid} ended without a final status (killed or crashed); see "
                               f"{self.path.parent / 'worker.log'}"}
        return s

    @property
    def status(self) -> str:
        return self.summary().get("status", "queued")

    def request_stop(self) -> None:
        """Ask the worker to stop this run; it checks before every step (and before a queued run starts)."""
        (self.path / "STOP").touch()

    @property
    def stop_requested(self) -> bool:
        return (self.path / "STOP").exists()


class _StopFile:
    """``is_set()`` for the training loop: the run's STOP file exists or an in-process flag is set."""

    def __init__(self, run: Run, extra: Any = None) -> None:
        self.run, self.extra = run, extra

    def is_set(self) -> bool:
        return self.run.stop_requested or bool(self.extra is not None and self.extra.is_set())


class RunStore:
    """The folders under a root (default ``./runs`` or ``$PLASTICITY_RUNS``): create, list, load and compare runs."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def create(self, config: ExperimentConfig, tag: str | None = None, only: Sequence[int] | None = None) -> list[Run]:
        """Folders (config.yaml, queued summary) for the experiment's runs, or for the expanded runs ``only``.

        ``tag`` names the experiment folder (default: a timestamp); runs of one tag share it, which lets the tasks of
        a cluster array write into one experiment. An existing run folder is refused rather than overwritten.
        """
        if not isinstance(config, ExperimentConfig):
            raise TypeError(f"config must be an ExperimentConfig, got {type(config).__name__}")
        singles = expand_experiment(config)
        if only is not None:
            bad = [i for i in only if not 0 <= i < len(singles)]
            if bad:
                raise IndexError(f"run index {bad} out of range: the experiment has {len(singles)} runs (0..{len(singles) - 1})")
            singles = [singles[i] for i in only]
        exp_dir = self.root / f"{slug(config.name)}-{tag or time.strftime('%Y%m%d-%H%M%S')}"
        runs = []
        for single in singles:
            folder = exp_dir / run_name(single)
            if (folder / "config.yaml").exists():
                raise FileExistsError(f"run folder {folder} exists already; use another tag")
            folder.mkdir(parents=True, exist_ok=True)
            single.save(folder / "config.yaml")
            _write_json(folder / "summary.json", {"status": "queued", "reason": "waiting for a worker",
                                                  "arm": next(iter(single.arms)), "seed": single.seeds[0]})
            runs.append(Run(folder))
        return runs

    def runs(self, experiment: str | None = None) -> list[Run]:
        """Every run folder (one with a config.yaml) under the root, oldest experiment first."""
        if not self.root.is_dir():
            return []
        found = sorted(p.parent for p in self.root.glob("*/*/config.yaml"))
        return [Run(p) for p in found if experiment is None or p.parent.name == experiment]

    def experiments(self) -> list[str]:
        return sorted({r.experiment for r in self.runs()})

    def get(self, ref: str | os.PathLike) -> Run:
        """A run by folder path, ``experiment/run`` or a unique run-name suffix."""
        p = Path(ref)
        for candidate in (p, self.root / p):
            if (candidate / "config.yaml").exists():
                return Run(candidate)
        matches = [r for r in self.runs() if f"{r.experiment}/{r.name}".endswith(str(ref))]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise KeyError(f"no run {str(ref)!r} under {self.root}")
        raise KeyError(f"{str(ref)!r} is ambiguous under {self.root}: {[f'{r.experiment}/{r.name}' for r in matches[:5]]}")

    def table(self, experiment: str | None = None) -> pd.DataFrame:
        """One row per run: experiment, run, arm, seed, status, reason, steps, accuracies, wall time."""
        rows = []
        for r in self.runs(experiment):
            s = r.summary()
            rows.append({"experiment": r.experiment, "run": r.name, "arm": s.get("arm"), "seed": s.get("seed"),
                         "status": s.get("status"), "steps": s.get("steps"), "best_val_acc": s.get("best_val_acc"),
                         "final_val_acc": s.get("final_val_acc"), "wall_time_s": s.get("wall_time_s"),
                         "reason": s.get("reason"), "path": str(r.path)})
        return pd.DataFrame(rows, columns=["experiment", "run", "arm", "seed", "status", "steps", "best_val_acc",
                                           "final_val_acc", "wall_time_s", "reason", "path"])

    def compare(self, experiment: str) -> pd.DataFrame:
        return compare_runs(self.runs(experiment))


# ---------------------------------------------------------------------------------------------- executing a run
def execute_run(run: Run, stop: Any = None, on_event: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Load the run's backbone and data, fine-tune, and write events and the summary into its folder.

    Never raises for a failure of the run itself: the folder says ``failed`` with the traceback in ``error.txt``.
    Returns the final summary.
    """
    import torch

    from plasticity_core.data import load_dataset
    from plasticity_core.finetune import finetune
    from plasticity_core.models import load_backbone, save_checkpoint

    base = {"experiment": run.experiment, "pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}
    try:
        base.update(arm=run.arm, seed=run.seed)
    except Exception as e:  # an unreadable config.yaml: say so in the folder instead of dying silently
        tb = traceback.format_exc()
        (run.path / "error.txt").write_text(tb)
        summary = {**base, "status": "failed", "reason": f"config.yaml: {type(e).__name__}: {e}", "traceback": tb}
        _write_json(run.path / "summary.json", summary)
        return summary
    stopper = _StopFile(run, stop)
    if stopper.is_set():
        summary = {**base, "status": "stopped", "reason": "stop requested before the run started", "steps": 0}
        _write_json(run.path / "summary.json", summary)
        return summary
    _write_json(run.path / "summary.json", {**base, "status": "running", "reason": "loading backbone and data"})
    cfg = run.config
    ft = cfg.finetune
    diagnoses: list[dict[str, Any]] = []
    ended = False
    with open(run.path / "metrics.jsonl", "a", buffering=1) as log:
        def write(event: dict[str, Any]) -> None:
            log.write(json.dumps(event, default=str) + "\n")
            log.flush()
            nonlocal ended
            ended = ended or event["type"] in ("finished", "stopped", "failed")
            if event["type"] == "diagnosis":
                diagnoses.extend({"step": event["step"], **row} for row in event.get("rows", []))
            elif event["type"] == "start":
                _write_json(run.path / "summary.json", {**base, "status": "running", "reason": "training",
                                                        "total_steps": event.get("total_steps")})
            if on_event is not None:
                on_event(event)

        try:
            def dataset(data_config: dict | None = None):
                return load_dataset(cfg.data, image_size=ft.image_size, val_fraction=cfg.val_fraction, seed=0,
                                    limit=cfg.data_limit, data_config=data_config, train_per_class=cfg.train_per_class)

            data = dataset()  # ImageNet normalisation until the backbone says otherwise
            torch.manual_seed(ft.seed)  # the fresh head's init depends on the run's seed only, not on the arm
            bb = load_backbone(cfg.backbone, pretrained=cfg.pretrained, num_classes=data.num_classes, arch=cfg.arch)
            if _stats(bb.data_config) != (_floats(data.mean), _floats(data.std)):
                data = dataset(bb.data_config)  # e.g. tf_efficientnet_lite0 expects mean = std = 0.5
            result = finetune(bb.model, data, ft, reinit=cfg.arms[run.arm], on_event=write, stop=stopper)
            summary = {**base, **result.summary()}
            if cfg.save_model and result.status == "finished":
                save_checkpoint(bb.model, run.path / "model.safetensors")
        except BaseException as e:  # noqa: BLE001 - the folder must say failed whatever happened
            tb = traceback.format_exc()
            (run.path / "error.txt").write_text(tb)
            summary = {**base, "status": "failed", "reason": f"{type(e).__name__}: {e}", "traceback": tb}
            if not ended:
                log.write(json.dumps({"type": "failed", "step": None, "time": None, "reason": summary["reason"]}) + "\n")
            if not isinstance(e, Exception):
                _write_json(run.path / "summary.json", {**summary, "ended_at": time.time()})
                raise
    if diagnoses:
        pd.DataFrame(diagnoses).to_parquet(run.path / "diagnosis.parquet")
    summary["ended_at"] = time.time()
    _write_json(run.path / "summary.json", summary)
    return summary


def _floats(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in values)


def _stats(data_config: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from plasticity_core.models import IMAGENET_MEAN, IMAGENET_STD

    return _floats(data_config.get("mean") or IMAGENET_MEAN), _floats(data_config.get("std") or IMAGENET_STD)


def run_experiment(config: ExperimentConfig | str | os.PathLike, store: RunStore | str | os.PathLike | None = None,
                   on_event: Callable[[Run, dict], None] | None = None, stop: Any = None, tag: str | None = None,
                   only: Sequence[int] | None = None) -> list[Run]:
    """Run every arm x seed of an experiment (or the expanded runs ``only``) here, one after the other.

    The CLI (``plasticity finetune --config``) and a cluster task (``only=[array index]``, a shared ``tag``) call
    this; ``on_event(run, event)`` sees every event (progress bars). Returns the run folders.
    """
    config = config if isinstance(config, ExperimentConfig) else ExperimentConfig.load(config)
    store = store if isinstance(store, RunStore) else RunStore(store)
    runs = store.create(config, tag=tag, only=only)
    for run in runs:
        execute_run(run, stop=stop, on_event=None if on_event is None else (lambda e, r=run: on_event(r, e)))
    return runs


# ---------------------------------------------------------------------------------------------- background runs
class RunHandle:
    """A background worker process and the run folders it works through (in order)."""

    def __init__(self, runs: Sequence[Run], pid: int | None, process: subprocess.Popen | None = None) -> None:
        self.runs, self.pid, self._process = list(runs), pid, process

    def __repr__(self) -> str:
        return f"RunHandle(pid={self.pid}, {self.statuses()})"

    @classmethod
    def attach(cls, folder: str | os.PathLike) -> "RunHandle":
        """Re-attach to the worker of a run or experiment folder (e.g. after a browser refresh)."""
        p = Path(folder)
        exp_dir = p.parent if (p / "config.yaml").exists() else p
        worker = _read_json(exp_dir / "worker.json")
        if worker is None:
            raise FileNotFoundError(f"{exp_dir} has no worker.json: it was not started with start_run")
        return cls([Run(f) for f in worker["runs"]], worker.get("pid"))

    def statuses(self) -> dict[str, str]:
        return {r.name: r.status for r in self.runs}

    def alive(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return pid_alive(self.pid)

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
        """Ask every run to stop (STOP files, polled every step); after ``timeout`` s terminate the worker.

        Runs still active after a termination are marked ``stopped`` with the reason. Returns the statuses.
        """
        for run in self.runs:
            run.request_stop()
        if not self.wait(timeout) and self.pid and pid_alive(self.pid):
            _terminate(self.pid)
            for run in self.runs:
                if run.status in ACTIVE:
                    _write_json(run.path / "summary.json", {**run.summary(), "status": "stopped", "ended_at": time.time(),
                                                             "reason": f"terminated: the stop request was not honoured within {timeout:g} s"})
        return self.statuses()


def _terminate(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)  # the worker leads its own session/process group
    except (ProcessLookupError, PermissionError):
        return
    end = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.1)
    if pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_run(config: ExperimentConfig | str | os.PathLike, store: RunStore | str | os.PathLike | None = None,
              tag: str | None = None) -> RunHandle:
    """Create the run folders and work through them in a fresh background Python process; return at once.

    The worker is a new interpreter (``python -m plasticity_core.runs worker``: spawn semantics, nothing inherited,
    streamlit never imported) in its own session, so it survives a browser refresh and the caller's exit.
    Its pid and host are in ``<experiment>/worker.json``; its stdout/stderr in ``worker.log``.
    """
    config = config if isinstance(config, ExperimentConfig) else ExperimentConfig.load(config)
    store = store if isinstance(store, RunStore) else RunStore(store)
    runs = store.create(config, tag=tag)
    exp_dir = runs[0].path.parent
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    with open(exp_dir / "worker.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "plasticity_core.runs", "worker", *[str(r.path.resolve()) for r in runs]],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=os.getcwd())
    _CHILDREN.append(proc)
    _write_json(exp_dir / "worker.json", {"pid": proc.pid, "host": socket.gethostname(), "started_at": time.time(),
                                          "runs": [str(r.path.resolve()) for r in runs]})
    return RunHandle(runs, proc.pid, proc)


def _worker(folders: Sequence[str]) -> int:
    """Body of the background process: run the folders in order; an uncaught error still lands in the folder."""
    assert "streamlit" not in sys.modules, "the run worker must not import streamlit"
    for folder in folders:
        execute_run(Run(folder))
    return 0


# ---------------------------------------------------------------------------------------------- comparing runs
def _steps_to(evals: list[dict[str, Any]], threshold: float) -> float:
    for e in evals:
        acc = e.get("val_acc")
        if isinstance(acc, (int, float)) and acc >= threshold:
            return float(e["step"])
    return math.nan


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else math.nan
    return mean, std


def _pm(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.4f} ± {std:.4f}" if n > 1 and not math.isnan(std) else f"{mean:.4f} (1 seed)"


def compare_runs(runs: Iterable[Run | str | os.PathLike], baseline: str | None = None, fraction: float = 0.9) -> pd.DataFrame:
    """One row per arm over its seeds: final and best val accuracy (mean, sample std), steps to reach ``fraction``
    of the baseline's best accuracy (mean best over baseline seeds; first eval at or above it, mean over the seeds
    that reached it, ``never`` when none did), wall time.

    ``baseline``: the arm name; default the arm called ``baseline``, else the first arm without a re-init.
    Failed runs and runs without any eval count in ``n_failed`` and stay out of the means.
    """
    items = [r if isinstance(r, Run) else Run(r) for r in runs]
    per_arm: dict[str, dict[str, Any]] = {}
    for r in items:
        s, evals = r.summary(), r.events("eval")
        entry = per_arm.setdefault(r.arm, {"reinit": r.config.arms[r.arm], "ok": [], "failed": 0})
        if s.get("status") == "failed" or not evals:
            entry["failed"] += 1
            continue
        entry["ok"].append({"seed": r.seed, "final": evals[-1]["val_acc"], "best": max(e["val_acc"] for e in evals),
                            "evals": evals, "wall": s.get("wall_time_s") or math.nan})
    if baseline is None:
        plain = [a for a, e in per_arm.items() if e["reinit"] is None]
        baseline = "baseline" if "baseline" in per_arm else (plain[0] if plain else None)
    elif baseline not in per_arm:
        raise KeyError(f"baseline arm {baseline!r} is not among the runs' arms {sorted(per_arm)}")
    base_best = _mean_std([o["best"] for o in per_arm[baseline]["ok"]])[0] if baseline else math.nan
    threshold = fraction * base_best
    rows = []
    for arm, e in per_arm.items():
        ok, n = e["ok"], len(e["ok"])
        final, best = _mean_std([o["final"] for o in ok]), _mean_std([o["best"] for o in ok])
        steps = [_steps_to(o["evals"], threshold) for o in ok] if not math.isnan(threshold) else []
        reached = [s for s in steps if not math.isnan(s)]
        steps_mean = sum(reached) / len(reached) if reached else math.nan
        rows.append({
            "arm": arm, "strategy": "none" if e["reinit"] is None else e["reinit"].strategy, "n_seeds": n,
            "n_failed": e["failed"], "final_acc_mean": final[0], "final_acc_std": final[1], "best_acc_mean": best[0],
            "best_acc_std": best[1], "steps_to_target_mean": steps_mean, "reached_target": f"{len(reached)}/{n}",
            "target_acc": threshold, "wall_time_s_mean": _mean_std([o["wall"] for o in ok])[0],
            "final_acc": _pm(*final, n), "best_acc": _pm(*best, n),
            "steps_to_target": "never" if not reached else f"{steps_mean:.0f}",
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m plasticity_core.runs --config experiment.yaml [--root DIR] [--tag T] [--index I]``.

    ``--index`` runs only the I-th expanded run (a cluster array task; default ``$SLURM_ARRAY_TASK_ID`` if set
    together with ``--tag``). ``worker FOLDER...`` is the background worker ``start_run`` launches.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["worker"]:
        return _worker(args[1:])
    ap = argparse.ArgumentParser(prog="python -m plasticity_core.runs", description="Run an experiment into run folders.")
    ap.add_argument("--config", required=True, help="ExperimentConfig YAML/JSON")
    ap.add_argument("--root", default=None, help=f"store root (default ${ROOT_ENV} or ./runs)")
    ap.add_argument("--tag", default=None, help="experiment folder suffix shared by array tasks (default: a timestamp)")
    ap.add_argument("--index", type=int, default=None, help="run only this expanded run (0-based)")
    ns = ap.parse_args(args)
    index = ns.index
    if index is None and ns.tag and os.environ.get("SLURM_ARRAY_TASK_ID"):
        index = int(os.environ["SLURM_ARRAY_TASK_ID"])

    totals: dict[str, int] = {}
    last_acc: dict[str, float] = {}

    def progress(run: Run, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "start":
            totals[run.name] = int(event.get("total_steps", 0))
        elif kind == "eval":
            last_acc[run.name] = event["val_acc"]
        if kind in ("step", "eval") and totals.get(run.name):
            done, total = event["step"], totals[run.name]
            bar = "#" * int(30 * done / total) + "." * (30 - int(30 * done / total))
            acc = f" val_acc {last_acc[run.name]:.4f}" if run.name in last_acc else ""
            print(f"\r{run.name:<28} [{bar}] {done}/{total}{acc}", end="", file=sys.stderr, flush=True)
        elif kind in ("finished", "stopped", "failed"):
            print(f"\r{run.name:<28} {kind} at step {event['step']}: {event.get('reason', '')}", file=sys.stderr, flush=True)

    runs = run_experiment(ns.config, ns.root, on_event=progress, tag=ns.tag, only=None if index is None else [index])
    print(compare_runs(runs).to_string(index=False))
    return 0 if all(r.status != "failed" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
