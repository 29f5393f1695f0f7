"""Interrupted launches: real signals to a real ``plasticity finetune`` process, and resuming what they stopped.

A foreground CLI turns SIGTERM / SIGINT (Ctrl-C to its process group) into stopped runs with their checkpoint, no
worker left behind; a killed CLI's worker stops by itself; ``--resume`` continues the runs from the checkpoint to
the curve an uninterrupted run draws.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from plasticity_core.cli import main
from plasticity_core.config import ExperimentConfig, FinetuneConfig
from plasticity_core.runs import LaunchError, Run, RunStore, execute_run, read_events
from plasticity_core.runs import resume_runs
from plasticity_core.runs.interrupt import checkpoint_step, collect_resumable, reopen
from processes import alive, wait_until

pytestmark = pytest.mark.usefixtures("one_thread")  # bit-identical curves across processes

REPO = Path(__file__).resolve().parents[1]


def _exp(seeds=(0,), steps: int = 150) -> ExperimentConfig:
    cfg = ExperimentConfig(name="t", backbone="timm:test_resnet", pretrained=False, data="synthetic:classes=4,n=96,size=32",
                           seeds=list(seeds), arms={"baseline": None},
                           finetune=FinetuneConfig(steps=steps, batch_size=16, eval_every=20, image_size=32, device="cpu",
                                                   checkpoint_every=50, save_optimizer=True))
    cfg.launch.heartbeat_s, cfg.launch.heartbeat_timeout_s = 0.5, 5.0
    cfg.launch.sinks = []
    return cfg


def _cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    """``plasticity finetune ...`` as its own process group (as a shell starts a foreground job)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "plasticity_core.runs", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _curve(run: Run) -> tuple[list, list]:
    return ([(e["step"], e["loss"], e["lr"]) for e in run.events("step")],
            [(e["step"], e["val_acc"], e["val_loss"]) for e in run.events("eval")])


def _final_event(run: Run) -> dict:
    return [e for e in read_events(run.path / "metrics.jsonl") if e["type"] in ("finished", "stopped", "failed")][-1]


def _assert_stopped_with_checkpoint(run: Run) -> int:
    s = run.summary()
    assert s["status"] == "stopped", s
    last = _final_event(run)
    assert last["type"] == "stopped" and last["step"] == s["steps"], (last, s)  # metrics.jsonl and summary agree
    assert checkpoint_step(run) == s["steps"]  # the checkpoint is the step it stopped at
    return s["steps"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Run:
    """The uninterrupted run every resumed one must match."""
    (run,) = RunStore(tmp_path_factory.mktemp("ref")).create(_exp(), tag="ref")
    assert execute_run(run)["status"] == "finished"
    return run


def test_sigterm_to_the_cli_stops_the_run_with_its_checkpoint_and_resume_continues_the_same_curve(tmp_path, reference,
                                                                                                  capsys):
    _exp().save(tmp_path / "exp.yaml")
    cli = _cli(tmp_path, "--config", str(tmp_path / "exp.yaml"), "--store", str(tmp_path), "--tag", "s")
    run = Run(tmp_path / "t-s" / "baseline-seed0")
    try:
        wait_until(lambda: any(e["step"] >= 5 for e in run.events("step")), 120, "training steps")
        worker = json.loads((run.path / "heartbeat.json").read_text())["pid"]
        cli.send_signal(signal.SIGTERM)  # the CLI only, as `kill PID` or a scheduler's stop does
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    assert cli.returncode == 1, err
    assert "SIGTERM: stopping every run at its next step" in err
    assert f"resume with: plasticity finetune --resume {tmp_path / 't-s'}" in err
    wait_until(lambda: not alive(worker), 10, "the pool worker to exit")  # no orphan training on
    stopped_at = _assert_stopped_with_checkpoint(run)
    assert 5 <= stopped_at < 150

    assert main(["finetune", "--resume", str(tmp_path / "t-s"), "--store", str(tmp_path)]) == 0
    s = run.summary()
    assert s["status"] == "finished" and s["attempt"] == 2 and s["steps"] == 150, s
    assert run.events("resume")[0]["step"] == stopped_at
    assert _curve(run) == _curve(reference)  # bit-identical losses, learning rates and accuracies


def test_ctrl_c_to_the_process_group_stops_every_run_and_a_killed_cli_leaves_no_orphan(tmp_path):
    _exp(seeds=(0, 1)).save(tmp_path / "exp.yaml")
    cli = _cli(tmp_path, "--config", str(tmp_path / "exp.yaml"), "--store", str(tmp_path), "--tag", "c")
    first, second = Run(tmp_path / "t-c" / "baseline-seed0"), Run(tmp_path / "t-c" / "baseline-seed1")
    try:
        wait_until(lambda: any(e["step"] >= 3 for e in first.events("step")), 120, "training steps")
        os.killpg(cli.pid, signal.SIGINT)  # Ctrl-C in a terminal: the launcher and its workers all get it
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    assert cli.returncode == 1, err
    assert "KeyboardInterrupt" not in "".join(json.dumps(e) for e in read_events(first.path / "metrics.jsonl"))
    _assert_stopped_with_checkpoint(first)
    assert second.summary()["status"] == "stopped"  # queued behind it: stopped before it started, resumable too
    assert [r.name for r in collect_resumable([tmp_path / "t-c"], tmp_path)[0]] == ["baseline-seed0", "baseline-seed1"]

    # the launcher killed outright (SIGKILL, OOM killer): its worker notices and stops the run itself
    cli = _cli(tmp_path, "--resume", str(first.path), "--store", str(tmp_path))
    try:
        wait_until(lambda: first.events("resume") and len(first.events("step")) > first.events("resume")[-1]["step"] + 2,
              120, "the resumed run to train")
        worker = json.loads((first.path / "heartbeat.json").read_text())["pid"]
        os.kill(cli.pid, signal.SIGKILL)
        cli.communicate(timeout=30)
        wait_until(lambda: not alive(worker), 30, "the orphaned worker to stop")
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    _assert_stopped_with_checkpoint(first)


def test_what_cannot_be_resumed_is_refused_in_one_line(tmp_path, reference, capsys):
    with pytest.raises(LaunchError, match="it finished already"):
        reopen(reference)
    with pytest.raises(LaunchError, match="nothing to resume at"):
        collect_resumable([tmp_path / "nowhere"], tmp_path)
    assert main(["finetune", "--resume", str(reference.path), "--store", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("it finished already")
    assert main(["finetune", "--resume", str(reference.path), "finetune.lr=0.1"]) == 2
    assert "only launch.* settings may change: drop finetune.lr=0.1" in capsys.readouterr().err
    (run,) = RunStore(tmp_path).create(_exp(), tag="q")
    with pytest.raises(LaunchError, match="still queued"):
        resume_runs([run.path])
