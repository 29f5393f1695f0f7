"""Executors with their real backends: a local process pool, a local Ray runtime, submitit's local executor."""
from __future__ import annotations

import os
import re
import shlex
import signal
import time
from pathlib import Path

import pytest

from plasticity_core.cli import main
from plasticity_core.config import ExperimentConfig, FinetuneConfig, ReinitConfig
from plasticity_core.runs import EXECUTORS, MissingExtraError, RunStore, compare_runs, run_experiment, start_run
from processes import wait_until

DATA = "synthetic:classes=4,n=96,size=32"
README = Path(__file__).resolve().parents[1] / "README.md"


def _exp(seeds=(0, 1), steps: int = 4, arms=None, **launch) -> ExperimentConfig:
    cfg = ExperimentConfig(name="t", backbone="timm:test_resnet", pretrained=False, data=DATA, seeds=list(seeds),
                           finetune=FinetuneConfig(steps=steps, batch_size=16, eval_every=2, image_size=32, device="cpu"),
                           arms=arms or {"baseline": None, "fire": ReinitConfig(strategy="fire", layers=["layer4*"])})
    for k, v in launch.items():
        setattr(cfg.launch, k, v)
    return cfg


def _four_finished(runs) -> None:
    assert sorted(r.name for r in runs) == ["baseline-seed0", "baseline-seed1", "fire-seed0", "fire-seed1"]
    for r in runs:
        s = r.summary()
        assert s["status"] == "finished" and s["steps"] == 4, s
        assert [e["step"] for e in r.events("eval")] == [0, 2, 4]  # step 0: before any update
        assert s["pid"] != os.getpid()  # executed by a worker, not by the caller
    table = compare_runs(runs)
    assert list(table["arm"]) == ["baseline", "fire"] and list(table["n_seeds"]) == [2, 2]
    assert list(table["n_failed"]) == [0, 0] and table.attrs["skipped"] == {}


def test_registry_names_the_three_backends():
    assert EXECUTORS.names() == ["process", "ray", "slurm"]
    assert {n: EXECUTORS[n].extra for n in EXECUTORS} == {"process": None, "ray": "ray", "slurm": "slurm"}


def test_process_pool_runs_two_at_once(tmp_path):
    runs = run_experiment(_exp(), RunStore(tmp_path), tag="p", executor="process", parallel=2)
    _four_finished(runs)
    pids = {r.summary()["pid"] for r in runs}
    assert len(pids) == 2  # two pool workers shared the four runs
    assert sorted(p.name for p in (tmp_path / "t-p").glob("worker-*.log")) == ["worker-0.log", "worker-1.log"]


def _readme_command(marker: str) -> list[str]:
    text = README.read_text()
    section = text[text.index("## Scaling out"):]
    lines = [l.split("  #")[0].strip() for l in re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0].splitlines()]
    (line,) = [l for l in lines if l.startswith("plasticity finetune") and marker in l]
    return shlex.split(line)[1:]


def _run_readme_command(tmp_path, marker: str, capsys):
    _exp().save(tmp_path / "exp.yaml")
    argv = [str(tmp_path / "exp.yaml") if a == "exp.yaml" else a for a in _readme_command(marker)]
    assert main([*argv, "--store", str(tmp_path / "runs"), "--tag", "s"]) == 0
    out = capsys.readouterr()
    assert "baseline" in out.out and "fire" in out.out and "finished at step 4" in out.err
    return RunStore(tmp_path / "runs").runs(), out.err


def test_ray_local_runtime_from_the_readme_command(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    home_ray = Path.home() / ".ray"
    before = home_ray.exists()
    monkeypatch.setenv("RAY_ADDRESS", "local")  # a runtime of its own even if a cluster runs on this machine
    runs, err = _run_readme_command(tmp_path, "--executor ray", capsys)
    _four_finished(runs)
    said = re.search(r"ray: tasks run on a local Ray runtime \(\d+ CPUs, state in (\S+), removed after\)", err)
    assert said and not Path(said.group(1)).exists()  # its state lived in a temporary folder, now gone
    assert home_ray.exists() == before  # nothing written to ~/.ray (its token was held in memory)


def test_submitit_local_executor_from_the_readme_command(tmp_path, capsys):
    runs, _ = _run_readme_command(tmp_path, "cluster=local", capsys)
    _four_finished(runs)
    job_ids = {r.summary()["job_id"] for r in runs}
    assert len(job_ids) == 4  # one task per run, each with submitit's logs in the experiment folder
    assert all(any((tmp_path / "runs" / "t-s" / "slurm" / j).glob("*_log.out")) for j in job_ids)


def test_a_missing_backend_names_its_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'plasticity-lab\[ray\]'"):
        run_experiment(_exp(), RunStore(tmp_path), executor="ray")
    _exp().save(tmp_path / "exp.yaml")
    assert main(["finetune", "--config", str(tmp_path / "exp.yaml"), "--store", str(tmp_path), "--executor", "ray"]) == 2
    assert capsys.readouterr().err.strip() == "error: the ray executor needs ray: pip install 'plasticity-lab[ray]'"
    assert not any(tmp_path.glob("t-*"))  # refused before any folder was claimed


def _heartbeat_pid(run) -> int:
    import json

    return json.loads((run.path / "heartbeat.json").read_text())["pid"]


def test_sigkill_leaves_no_run_in_a_non_final_state(tmp_path):
    cfg = _exp(seeds=(0, 1, 2), steps=100_000, arms={"baseline": None}, heartbeat_s=0.3, heartbeat_timeout_s=1.5)
    handle = start_run(cfg, RunStore(tmp_path), tag="k")
    first, second, third = handle.runs
    try:
        wait_until(lambda: first.events("step"), 120, "the first run to train")
        os.kill(_heartbeat_pid(first), signal.SIGKILL)  # a pool worker dies (OOM killer, kill -9)
        wait_until(lambda: first.status == "failed", 1.5 + 5, "the killed run to read failed")
        assert "SIGKILL" in first.summary()["reason"] or "no heartbeat" in first.summary()["reason"]
        wait_until(lambda: second.events("step"), 120, "the next queued run to get a fresh worker")
        os.killpg(handle.pid, signal.SIGKILL)  # now the launcher and its workers all die at once
        t0 = time.monotonic()
        wait_until(lambda: handle.done(), 1.5 + 5, "every run to read a final status")
        assert time.monotonic() - t0 < 1.5 + 5
    finally:
        if handle.alive():
            os.killpg(handle.pid, signal.SIGKILL)
    assert second.status == "failed" and "no heartbeat from its worker" in second.summary()["reason"]
    assert third.status == "cancelled" and "its launcher" in third.summary()["reason"]


def test_a_preempted_slurm_task_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    import submitit

    from plasticity_core.runs import read_events
    from plasticity_core.runs.executors import SlurmTask

    cfg = _exp(seeds=(0,), steps=100_000, arms={"baseline": None})
    cfg.finetune.checkpoint_every, cfg.finetune.save_optimizer, cfg.finetune.eval_every = 5, True, 1000
    (run,) = RunStore(tmp_path).create(cfg, tag="pre")
    executor = submitit.AutoExecutor(folder=tmp_path / "slurm" / "%j", cluster="local")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(SlurmTask(), str(run.path.resolve()))  # what the slurm executor submits per run
    try:
        wait_until(lambda: any(e["step"] >= 12 for e in run.events("step")), 180, "checkpointed steps")
        os.kill(_heartbeat_pid(run), signal.SIGUSR2)  # Slurm's preemption / time-limit signal to the task
        wait_until(lambda: run.events("resume"), 180, "the requeued attempt to resume")
        wait_until(lambda: len(run.events("step")) > run.events("resume")[0]["step"] + 2, 120, "steps after the resume")
        run.request_stop()
        job.result()
    finally:
        job.cancel(check=False)
        if run.raw_summary()["status"] == "running":
            os.kill(_heartbeat_pid(run), signal.SIGKILL)
    s = run.summary()
    assert s["status"] == "stopped" and s["attempt"] == 2, s
    raw = [e["type"] for e in read_events(run.path / "metrics.jsonl")]
    assert raw.count("start") == 2 and "requeued" in raw and raw.index("requeued") < raw.index("resume")
    resumed = run.events("resume")[0]["step"]
    assert resumed >= 10 and resumed % 5 == 0  # from the last checkpoint, not from step 0
    steps = [e["step"] for e in run.events("step")]
    assert steps == list(range(1, len(steps) + 1))  # one curve: the interrupted attempt's extra steps are superseded
