"""The ``ray`` executor on real Ray: a two-node cluster started with ``ray start`` (head + worker node, token auth,
state in temporary folders), our launcher attaching to it; Ctrl-C of the launch, a node killed mid-run, resuming on
Ray and on another executor; and the local runtime the launcher starts itself (nothing left in ``~/.ray``)."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plasticity_core.cli import main
from plasticity_core.config import ExperimentConfig, FinetuneConfig
from plasticity_core.runs import LaunchError, Run, RunStore, execute_run, run_experiment
from local_server import free_port
from processes import wait_until

pytestmark = pytest.mark.usefixtures("one_thread")  # bit-identical curves across processes

ray = pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
MARK = "PLASTICITY_TEST_RAY_NODE"


def _exp(steps: int = 80) -> ExperimentConfig:
    cfg = ExperimentConfig(name="t", backbone="timm:test_resnet", pretrained=False, data="synthetic:classes=4,n=96,size=32",
                           seeds=[0], arms={"baseline": None},
                           finetune=FinetuneConfig(steps=steps, batch_size=16, eval_every=20, image_size=32, device="cpu",
                                                   checkpoint_every=10, save_optimizer=True))
    cfg.launch.heartbeat_s, cfg.launch.heartbeat_timeout_s, cfg.launch.sinks = 0.5, 5.0, []
    return cfg


def _kill_marked(marker: str) -> None:
    """SIGKILL every process whose environment carries ``marker`` (the Ray processes one test node started)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "environ").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


class _Cluster:
    """A head node (no CPUs: runs go elsewhere) and a worker node with one CPU, both on this machine."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.root, self.token = root, secrets.token_hex(16)
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.address = f"127.0.0.1:{self.port}"
        self.start("head", "--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false")
        self.start("worker", f"--address={self.address}", "--num-cpus=1")

    def start(self, name: str, *args: str) -> None:
        env = {**os.environ, **self.auth, MARK: f"{self.root}:{name}", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        temp = self.root / name
        temp.mkdir(exist_ok=True)
        p = subprocess.run([RAY, "start", *args, f"--temp-dir={temp}", "--disable-usage-stats"], env=env,
                           capture_output=True, text=True, timeout=180, start_new_session=True)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]

    def kill(self, name: str) -> None:
        _kill_marked(f"{self.root}:{name}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home_ray = Path.home() / ".ray"
    before = home_ray.exists()
    root = tmp_path_factory.mktemp("ray")
    c = None
    try:
        c = _Cluster(root)
        yield c
    finally:
        _kill_marked(str(root))
    assert home_ray.exists() == before, "the Ray tests wrote ~/.ray"


def _cli(env: dict, *args: str) -> subprocess.Popen:
    env = {**os.environ, **env, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "plasticity_core.runs", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _curve(run: Run) -> tuple[list, list]:
    return ([(e["step"], e["loss"], e["lr"]) for e in run.events("step")],
            [(e["step"], e["val_acc"], e["val_loss"]) for e in run.events("eval")])


def test_a_two_node_cluster_ctrl_c_a_lost_node_and_resuming_elsewhere(cluster, tmp_path, monkeypatch):
    (ref,) = RunStore(tmp_path / "ref").create(_exp(), tag="ref")
    assert execute_run(ref)["status"] == "finished"  # the uninterrupted curve
    _exp().save(tmp_path / "exp.yaml")
    env = {**cluster.auth, "RAY_ADDRESS": cluster.address}
    run = Run(tmp_path / "t-r" / "baseline-seed0")

    # 1. attach with `--executor ray` (no num_cpus passed: the head has none, the worker node one); Ctrl-C -> stopped
    cli = _cli(env, "--config", str(tmp_path / "exp.yaml"), "--store", str(tmp_path), "--tag", "r", "--executor", "ray")
    try:
        wait_until(lambda: len(run.events("step")) >= 5, 180, "the Ray task to train")
        os.killpg(cli.pid, signal.SIGINT)
        _, err = cli.communicate(timeout=90)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    s = run.summary()
    assert s["status"] == "stopped" and "stop requested" in s["reason"], (s, err[-2000:])
    assert [e["type"] for e in run.events() if e["type"] in ("stopped", "failed")][-1] == "stopped"

    # 2. resume on the same cluster; the worker node dies mid-run -> failed within seconds, not a heartbeat timeout
    cli = _cli(env, "--resume", str(tmp_path / "t-r"), "--store", str(tmp_path), "--executor", "ray")
    try:
        wait_until(lambda: run.events("resume") and len(run.events("step")) > run.events("resume")[-1]["step"] + 12, 180,
              "the resumed Ray task to train past a checkpoint")
        cluster.kill("worker")
        t0 = time.monotonic()
        _, err = cli.communicate(timeout=120)
        lost_after = time.monotonic() - t0
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    s = run.summary()
    assert s["status"] == "failed" and "Ray task failed" in s["reason"], (s, err[-2000:])
    print(f"run read failed {lost_after:.1f} s after its node was killed")

    # 3. resume it on another executor (the local pool): from its last checkpoint to the uninterrupted curve
    assert main(["finetune", "--resume", str(tmp_path / "t-r"), "--store", str(tmp_path), "--executor", "process"]) == 0
    s = run.summary()
    assert s["status"] == "finished" and s["attempt"] == 3 and s["steps"] == 80, s
    assert _curve(run) == _curve(ref)


def test_a_wrong_token_is_one_line_naming_what_to_set(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    monkeypatch.setenv("RAY_gcs_rpc_server_connect_timeout_s", "3")
    with pytest.raises(LaunchError, match=r"cannot connect to the Ray cluster at 127\.0\.0\.1:\d+ .*set "
                                          r"RAY_AUTH_MODE=token and RAY_AUTH_TOKEN"):
        cfg = _exp(steps=2)
        cfg.launch.address = cluster.address
        run_experiment(cfg, RunStore(tmp_path), executor="ray", tag="a")
    assert not ray.is_initialized()
    (run,) = RunStore(tmp_path).runs()
    assert run.status == "cancelled"  # never started, and says why
