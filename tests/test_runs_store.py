"""The run store: folders claimed exactly once, names that stay inside, liveness from heartbeats, resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plasticity_core.cli import main
from plasticity_core.config import ConfigError, ExperimentConfig, FinetuneConfig, ReinitConfig
from plasticity_core.runs import LaunchError, Run, RunExistsError, RunStore, execute_run

DATA = "synthetic:classes=4,n=96,size=32"


def _exp(seeds=(0, 1), steps: int = 4, **launch) -> ExperimentConfig:
    cfg = ExperimentConfig(name="t", backbone="timm:test_resnet", pretrained=False, data=DATA, seeds=list(seeds),
                           finetune=FinetuneConfig(steps=steps, batch_size=16, eval_every=2, image_size=32, device="cpu"),
                           arms={"baseline": None, "fire": ReinitConfig(strategy="fire", layers=["layer*"])})
    for k, v in launch.items():
        setattr(cfg.launch, k, v)
    return cfg


RACE = """
import json, sys, time
from pathlib import Path
from plasticity_core.config import ExperimentConfig
from plasticity_core.runs import RunStore, RunExistsError
cfg, me, phases = ExperimentConfig.load(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
for i, (root, tag, only) in enumerate(phases):
    Path(root, f".ready-{me}").touch()
    while not Path(root, ".go").exists():
        time.sleep(0.001)
    try:
        runs = RunStore(root).create(cfg, tag=tag, only=only)
        print(json.dumps({"ok": [str(r.path) for r in runs], "launch": runs[0].raw_summary()["launch"]}), flush=True)
    except RunExistsError as e:
        print(json.dumps({"error": str(e)}), flush=True)
"""

PHASES = {"same tag": ("same", [None] * 4), "array tasks": ("sweep", [[0], [0], [3], [3]]), "no tag": (None, [None] * 4)}


@pytest.fixture(scope="module")
def races(tmp_path_factory) -> dict[str, list[dict]]:
    """Four processes create the same experiment at the same instant, three times; what each got each time."""
    tmp = tmp_path_factory.mktemp("race")
    _exp().save(tmp / "exp.yaml")
    roots = {name: tmp / f"store{i}" for i, name in enumerate(PHASES)}
    for root in roots.values():
        root.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    phases = [[[str(roots[name]), tag, onlys[i]] for name, (tag, onlys) in PHASES.items()] for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp / "exp.yaml"), str(i), json.dumps(phases[i])],
                              stdout=subprocess.PIPE, text=True, env=env) for i in range(4)]
    for root in roots.values():  # release all four at once, phase by phase
        deadline = time.monotonic() + 180
        while len(list(root.glob(".ready-*"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        (root / ".go").touch()
    outs = [p.communicate(timeout=180)[0].strip().splitlines() for p in procs]
    return {name: [json.loads(out[k]) for out in outs] for k, name in enumerate(PHASES)}


def _owners(results: list[dict]) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for r in results:
        for folder in r.get("ok", []):
            owners.setdefault(folder, []).append(r["launch"])
    return owners


def test_four_launches_with_the_same_tag_leave_one_owner_per_folder(races):
    results = races["same tag"]
    winners = [r for r in results if "ok" in r]
    assert len(winners) == 1 and len(winners[0]["ok"]) == 4  # the whole experiment went to one launch
    assert all("exists already (another launch owns it)" in r["error"] for r in results if "error" in r)
    for folder, owner in _owners(results).items():  # and every folder says so
        assert owner == [winners[0]["launch"]] and Run(folder).raw_summary()["launch"] == owner[0]
        assert Run(folder).config.seeds in ([0], [1])


def test_array_tasks_sharing_a_tag_claim_each_run_once(races):
    results = races["array tasks"]  # two tasks per index (a duplicate submission)
    owners = _owners(results)
    assert sorted(Path(f).name for f in owners) == ["baseline-seed0", "fire-seed1"]
    for folder, owner in owners.items():
        assert len(owner) == 1 and Run(folder).raw_summary()["launch"] == owner[0]
    assert sum("error" in r for r in results) == 2


def test_default_tags_never_collide(races):
    results = races["no tag"]  # same second, no tag: each launch gets a fresh suffix
    exps = {Path(r["ok"][0]).parent for r in results}
    assert len(exps) == 4 and all(len(r["ok"]) == 4 for r in results)


def test_a_traversal_tag_is_refused_and_nothing_leaves_the_store(tmp_path, capsys):
    store = tmp_path / "a" / "store"
    for tag in ("x/../../../elsewhere", "..", "../x", "/abs", "a b"):
        with pytest.raises(LaunchError, match="is not allowed"):
            RunStore(store).create(_exp(), tag=tag)
    _exp().save(tmp_path / "exp.yaml")
    assert main(["finetune", "--config", str(tmp_path / "exp.yaml"), "--store", str(store), "--tag", "x/../../../elsewhere"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tag 'x/../../../elsewhere' is not allowed") and "Traceback" not in err
    assert [p for p in tmp_path.rglob("*") if p.is_dir() and p.name not in ("a", "store")] == []
    (run,) = RunStore(store).create(ExperimentConfig(name="../../up", data=DATA), tag="ok")  # names are slugged
    assert run.path.resolve().is_relative_to(store.resolve())


def test_arms_that_would_share_a_folder_are_refused(tmp_path):
    cfg = _exp()
    cfg.arms = {"a b": None, "a-b": None}
    with pytest.raises(ConfigError, match="share the run folder 'a-b-seed0'"):
        RunStore(tmp_path).create(cfg, tag="x")


def test_queued_runs_of_a_silent_launcher_read_cancelled(tmp_path):
    (run,) = RunStore(tmp_path).create(_exp(seeds=(0,), heartbeat_s=0.5, heartbeat_timeout_s=1.0), tag="q", only=[0],
                                       launcher=".launcher-x.json")
    assert run.status == "queued"  # the launcher has just been started: within the timeout
    (tmp_path / "t-q" / ".launcher-x.json").write_text(json.dumps({"host": "h", "pid": 1, "time": time.time() - 5}))
    s = run.summary()
    assert s["status"] == "cancelled" and "never started: its launcher (h pid 1) stopped" in s["reason"]


def test_a_requeued_task_resumes_its_folder(tmp_path):
    cfg = _exp(seeds=(0,))
    (first,) = RunStore(tmp_path).create(cfg, tag="r", only=[0])
    with pytest.raises(RunExistsError, match="another launch owns it"):
        RunStore(tmp_path).create(cfg, tag="r", only=[0])
    # an attempt preempted at step 3: events up to step 3, summary still running
    lines = [{"type": "start", "step": 0, "time": 0, "total_steps": 4}] + [
        {"type": "step", "step": i, "time": i, "loss": 9.0} for i in (1, 2, 3)]
    (first.path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    (first.path / "summary.json").write_text(json.dumps({**first.raw_summary(), "status": "running", "attempt": 1}))
    (again,) = RunStore(tmp_path).create(cfg, tag="r", only=[0], resume=True)
    assert again == first
    s = execute_run(again, resume=True)
    assert s["status"] == "finished" and s["attempt"] == 2 and s["steps"] == 4
    steps = [e["step"] for e in again.events("step")]
    assert steps == sorted(set(steps)) and steps[-1] == 4 and 9.0 not in [e["loss"] for e in again.events("step")]
    assert [e["type"] for e in again.events()].count("resume") == 1
    assert execute_run(again, resume=True)["status"] == "finished"  # a finished run is never run again
    assert [e["type"] for e in again.events()].count("finished") == 1
