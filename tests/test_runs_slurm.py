"""The ``slurm`` executor on a real single-node Slurm without accounting (``tests/slurm_cluster.py``): ``scancel`` of
a running and of a pending task ends both ``cancelled`` within seconds (sacct fails here: the launcher follows the
queue), the launcher never hangs, submitit's sacct warnings stay out of the output, memory is requested per run, and
``--resume`` continues the cancelled runs from their checkpoints. Skipped, with the reason, where Slurm cannot start."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plasticity_core.cli import main
from plasticity_core.config import ExperimentConfig, FinetuneConfig
from plasticity_core.runs import Run, RunStore, execute_run, read_events
from slurm_cluster import SlurmCluster, why_not
from processes import alive, wait_until

pytestmark = [pytest.mark.skipif(why_not() is not None, reason=why_not() or ""),
              pytest.mark.usefixtures("one_thread")]
submitit = pytest.importorskip("submitit")
REPO = Path(__file__).resolve().parents[1]


def _exp(seeds=(0, 1), steps: int = 1200) -> ExperimentConfig:
    # long enough (~25 s on one free core) that the scancel lands mid-run however fast the machine trains
    cfg = ExperimentConfig(name="t", backbone="timm:test_resnet", pretrained=False, data="synthetic:classes=4,n=96,size=32",
                           seeds=list(seeds), arms={"baseline": None},
                           finetune=FinetuneConfig(steps=steps, batch_size=16, eval_every=20, image_size=32, device="cpu",
                                                   checkpoint_every=10, save_optimizer=True))
    cfg.launch.heartbeat_s, cfg.launch.heartbeat_timeout_s, cfg.launch.sinks = 0.5, 5.0, []
    cfg.launch.memory_gb_per_run, cfg.launch.parallel = 1.0, 1
    cfg.launch.slurm = {"timeout_min": 10}
    return cfg


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=2, memory_mb=4000, kill_wait_s=30)
    try:
        yield cluster
    finally:
        cluster.stop()


def _curve(run: Run) -> tuple[list, list]:
    return ([(e["step"], e["loss"], e["lr"]) for e in run.events("step")],
            [(e["step"], e["val_acc"], e["val_loss"]) for e in run.events("eval")])


def test_scancel_without_accounting_reads_cancelled_in_seconds_and_resumes(slurm, tmp_path, monkeypatch):
    assert slurm.run("sacct", "-j", "1").returncode != 0  # no accounting here: sacct cannot help the launcher
    (ref,) = RunStore(tmp_path / "ref").create(_exp(seeds=(0,)), tag="ref")
    assert execute_run(ref)["status"] == "finished"
    _exp().save(tmp_path / "exp.yaml")
    env = {**os.environ, **slurm.env, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cli = subprocess.Popen([sys.executable, "-m", "plasticity_core.runs", "--config", str(tmp_path / "exp.yaml"),
                            "--store", str(tmp_path), "--tag", "s", "--executor", "slurm"], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    first, second = Run(tmp_path / "t-s" / "baseline-seed0"), Run(tmp_path / "t-s" / "baseline-seed1")
    try:
        wait_until(lambda: len(first.events("step")) >= 15, 240, "the first task to train past a checkpoint")
        job, pending = first.raw_summary()["job_id"], second.raw_summary()["job_id"]
        shown = slurm.run("scontrol", "show", "job", job).stdout
        assert "MinMemoryNode=1G" in shown or "mem=1G" in shown, shown  # launch.memory_gb_per_run
        worker = json.loads((first.path / "heartbeat.json").read_text())["pid"]

        slurm.run("scancel", pending)  # a task still pending (array parallelism 1)
        t0 = time.monotonic()
        wait_until(lambda: second.status == "cancelled", 30, "the pending task to read cancelled")
        pending_after = time.monotonic() - t0
        slurm.run("scancel", job)  # the running task: SIGTERM, which submitit alone would ignore until KillWait
        t0 = time.monotonic()
        wait_until(lambda: first.status == "cancelled", 20, "the running task to read cancelled")
        running_after = time.monotonic() - t0
        wait_until(lambda: not alive(worker), 20, "the cancelled task's process to exit")
        out, err = cli.communicate(timeout=60)  # the launch ends: nothing left in the queue
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    print(f"pending task cancelled -> read cancelled after {pending_after:.1f} s; running task after {running_after:.1f} s")
    assert cli.returncode == 1
    assert "with squeue (sacct unavailable" in err and "Bypassing" not in err, err[-3000:]
    assert "before it started" in second.summary()["reason"]
    s = first.summary()
    assert s["reason"].startswith("cancelled by SIGTERM from the scheduler"), s
    assert [e["type"] for e in read_events(first.path / "metrics.jsonl")][-1] == "cancelled"
    stopped_at = first.events("stopped")[-1]["step"]

    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    assert main(["finetune", "--resume", str(tmp_path / "t-s"), "--store", str(tmp_path), "--parallel", "2"]) == 0
    assert first.summary()["status"] == second.summary()["status"] == "finished"
    assert first.events("resume")[-1]["step"] == stopped_at
    assert _curve(first) == _curve(ref)  # the cancelled run continued to the uninterrupted curve
