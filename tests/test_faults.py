"""Real faults under real launches: a run folder deleted while it trains, a disk that fills up (a real tmpfs mounted
here when root), a read-only store, /dev/full. Whatever one run meets, the other runs of the launch go on, every
run ends in a true final status, no temp file is left, and the CLI says it in one line per run, never a traceback."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from plasticity_core.config import ExperimentConfig, FinetuneConfig
from plasticity_core.errors import user_message
from plasticity_core.runs import RunStore, run_experiment
from plasticity_core.train.events import write_json

DATA = "synthetic:classes=3,n=48,size=16"


def _exp(seeds=(0, 1, 2), steps: int = 60, name: str = "f") -> ExperimentConfig:
    cfg = ExperimentConfig(name=name, backbone="timm:test_resnet", pretrained=False, data=DATA, seeds=list(seeds),
                           finetune=FinetuneConfig(steps=steps, batch_size=8, eval_every=1000, image_size=16,
                                                   device="cpu", warmup_steps=0))
    cfg.launch.sinks = []
    cfg.launch.heartbeat_s = 0.5
    cfg.launch.heartbeat_timeout_s = 5.0
    return cfg


@pytest.fixture
def tmpfs(tmp_path):
    """A real tmpfs of 4 MiB mounted at a fresh folder (root only; skipped where mounting is not allowed)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder: Path) -> None:
    """Write one file until the file system says ENOSPC."""
    with open(folder / "filler.bin", "wb", buffering=0) as f:
        block = b"\0" * 65536
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    # the last partial blocks too
    try:
        with open(folder / "filler2.bin", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 512)
    except OSError:
        pass


def test_deleting_one_run_folder_while_it_trains_leaves_the_others_alone(tmp_path):
    """Three runs, two at once: seed0's folder is deleted at step 5; seed1 and the queued seed2 finish, seed0 reads
    failed with the step it had reached, and the launch returns (the queue is drained)."""
    deleted = {}

    def on_event(run, event):
        if run.name == "baseline-seed0" and event.get("type") == "step" and event["step"] >= 5 and not deleted:
            deleted["step"] = event["step"]
            shutil.rmtree(run.path)

    runs = run_experiment(_exp(), RunStore(tmp_path), tag="del", executor="process", parallel=2, on_event=on_event)
    by = {r.name: r.summary() for r in runs}
    assert deleted and by["baseline-seed1"]["status"] == "finished" and by["baseline-seed2"]["status"] == "finished"
    gone = by["baseline-seed0"]
    assert gone["status"] == "failed" and "was deleted during the launch" in gone["reason"]
    assert gone["steps"] >= deleted["step"]  # the step it reached, not 0
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_disk_that_fills_up_mid_run_ends_every_run_in_a_true_status(tmpfs):
    """The store is a real 4 MiB tmpfs; once both runs are stepping and one has reached step 5, the disk is filled.
    The launch still returns, every run has a final status (in memory where the disk could not take it), the failed
    ones at the step they reached, and no temp file is left. (Filling at seed0's step 5 alone raced: on a fast
    machine seed1 could still be starting, and a run that fails before its first step has reached no step.)"""
    filled, reached = {}, {}

    def on_event(run, event):
        if event.get("type") != "step":
            return
        reached[run.name] = event["step"]
        if not filled and len(reached) == 2 and max(reached.values()) >= 5:
            filled["step"] = event["step"]
            _fill(tmpfs)

    runs = run_experiment(_exp(seeds=(0, 1), steps=400), RunStore(tmpfs), tag="full", executor="process", parallel=2,
                          on_event=on_event)
    assert filled
    for r in runs:
        s = r.summary()
        assert s["status"] in ("failed", "finished"), s
        if s["status"] == "failed":
            assert isinstance(s.get("steps"), int) and s["steps"] >= 1, s  # where it got to, not step 0
            assert "No space left" in s["reason"] or "not_saved" in s or "disk" in s["reason"], s
    assert any(r.summary()["status"] == "failed" for r in runs)
    assert not [p for p in tmpfs.rglob("*.tmp")], list(tmpfs.rglob("*.tmp"))


def test_the_cli_on_a_full_disk_and_a_read_only_store_is_one_line(tmpfs, tmp_path, capsys):
    from plasticity_core.cli import main

    cfg = tmp_path / "e.yaml"
    _exp(seeds=(0,), steps=3).save(cfg)
    _fill(tmpfs)
    rc = main(["finetune", "--config", str(cfg), "--store", str(tmpfs / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and ".tmp" not in err, err
    assert "No space left on device; the disk is full" in err, err
    for f in tmpfs.glob("filler*"):
        f.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    rc = main(["finetune", "--config", str(cfg), "--store", str(tmpfs / "runs2")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "Read-only file system; that file system is read-only" in err, err


def test_store_naming_a_file_and_write_json_leaving_no_temp(tmp_path, capsys):
    from plasticity_core.cli import main

    cfg = tmp_path / "e.yaml"
    _exp(seeds=(0,), steps=3).save(cfg)
    (tmp_path / "afile").write_text("x")
    rc = main(["finetune", "--config", str(cfg), "--store", str(tmp_path / "afile")])
    err = capsys.readouterr().err
    assert rc == 2 and "the run store" in err and "afile is a file, not a folder" in err, err
    RunStore(tmp_path / "new").create(_exp(seeds=(0,), steps=3), tag="p")
    import stat

    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700  # a new store is private
    with pytest.raises(OSError):
        write_json(tmp_path / "gone" / "summary.json", {"a": 1})
    assert not list(tmp_path.rglob("*.tmp"))


def test_summary_deleted_mid_run_reads_from_the_folder(tmp_path):
    """summary.json deleted while a run trains: the run reads running (from its heartbeat), not queued; a finished
    run whose summary was deleted reads finished from its final event."""
    seen = {}

    def on_event(run, event):
        if event.get("type") == "step" and event["step"] == 3 and not seen:
            (run.path / "summary.json").unlink()
            seen["status"] = run.raw_summary()["status"]

    runs = run_experiment(_exp(seeds=(0,), steps=400), RunStore(tmp_path), tag="s", on_event=on_event)
    assert seen["status"] == "running"
    assert runs[0].summary()["status"] == "finished"  # the worker's final write puts it back
    (runs[0].path / "summary.json").unlink()
    s = runs[0].raw_summary()
    assert s["status"] == "finished" and s["steps"] == 400 and "read from metrics.jsonl" in s["reason"]


def test_errno_words_for_environment_failures():
    for code, words in [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only"), (errno.EEXIST, "already exists"),
                        (errno.ENAMETOOLONG, "255 bytes"), (errno.ELOOP, "symlink loop")]:
        msg = user_message(OSError(code, os.strerror(code), "/x/" + "y" * 400))
        assert msg is not None and words in msg and "chars)" in msg, (code, msg)
    assert user_message(OSError(errno.ENOSPC, "No space left on device")) is not None  # pyarrow-style, no file name
    assert user_message(OSError(errno.EIO, "I/O error", "/x")) is None  # not a user's fault: show the traceback


def test_diagnose_out_on_dev_full_and_a_full_disk(tmpfs, tmp_path, capsys):
    from plasticity_core.cli import main

    args = ["diagnose", "--model", "timm:test_resnet", "--random-init", "--data", DATA, "--image-size", "16",
            "--metrics", "dormant", "--batches", "1"]
    rc = main([*args, "--out", "/dev/full"])
    err = capsys.readouterr().err
    assert rc == 2 and "/dev/full is a device, not a file" in err and "saved" not in err, err
    _fill(tmpfs)
    rc = main([*args, "--out", str(tmpfs / "d.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "the disk is full" in err, err
    assert "diagnose [" not in err  # refused before the computation, not after it
    assert not (tmpfs / "d.parquet").exists() and not list(tmpfs.glob(".*tmp*"))
    from plasticity_core.metrics.diagnosis import Diagnosis

    d = Diagnosis.from_rows([("a", "dormant", 0.5)], {}, {})
    with pytest.raises(OSError) as e:
        d.save(tmpfs / "d2.parquet")  # the library's own save on the full disk: an error naming the file, no temp
    assert user_message(e.value) and "d2.parquet" in user_message(e.value) and "disk is full" in user_message(e.value)
    assert not list(tmpfs.glob(".d2*"))


def test_readers_leave_out_impossible_event_values_and_say_which_folder(tmp_path, capsys):
    """NaN / Infinity / 1e308 accuracies and a string step, written into a finished run's metrics.jsonl by hand, are
    left out of the run's events and of the comparison, with a note naming the folder; the rest of the run counts."""
    import json

    from plasticity_core.cli import main
    from plasticity_core.runs import compare_runs
    from plasticity_core.train.events import run_progress

    runs = run_experiment(_exp(seeds=(0, 1), steps=4), RunStore(tmp_path), tag="r")
    for r in runs:
        assert r.summary()["status"] == "finished"
    good = compare_runs(runs)
    bad = runs[0].path / "metrics.jsonl"
    with open(bad, "a") as f:
        for line in ('{"type": "eval", "step": 5, "time": 1.0, "val_acc": NaN}',
                     '{"type": "eval", "step": 6, "time": 1.0, "val_acc": Infinity}',
                     '{"type": "eval", "step": 7, "time": 1.0, "val_acc": 1e308}',
                     '{"type": "step", "step": "eight", "time": 1.0, "loss": 0.5}',
                     '{"type": "step", "step": 9, "time": "late", "loss": 0.5}'):
            f.write(line + "\n")
    fresh = [type(r)(r.path) for r in runs]
    assert [e["step"] for e in fresh[0].events("eval")] == [e["step"] for e in runs[1].events("eval")]
    table = compare_runs(fresh)
    assert table["final_acc_mean"].tolist() == good["final_acc_mean"].tolist()
    (note,) = table.attrs["notes"].values()
    assert str(bad) in note and "5 event line(s) left out" in note and "val_acc 'nan' is not an accuracy" in note
    run_progress(fresh[0].events(), fresh[0].summary())  # never raises
    assert main(["compare", "--store", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"note: {bad}" in err and "Traceback" not in err
    json.loads(runs[1].path.joinpath("summary.json").read_text())


def test_compare_never_pools_baselines_of_different_setups(tmp_path, capsys):
    from plasticity_core.cli import main
    from plasticity_core.runs import compare_runs
    from plasticity_core.runs.compare import CompareError

    a = run_experiment(_exp(seeds=(0,), steps=2, name="a"), RunStore(tmp_path), tag="x")
    other = _exp(seeds=(0,), steps=3, name="b")
    other.data = "synthetic:classes=3,n=60,size=16"
    b = run_experiment(other, RunStore(tmp_path), tag="x")
    with pytest.raises(CompareError, match="2 different setups"):
        compare_runs(a + b)
    assert main(["compare", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== a-x" in out and "== b-x" in out and out.count("baseline") == 2  # one table each, never pooled


def test_a_heartbeat_from_the_future_does_not_keep_a_dead_run_running(tmp_path):
    import json

    run = RunStore(tmp_path).create(_exp(seeds=(0,)), tag="h")[0]
    now = time.time()
    (run.path / "summary.json").write_text(json.dumps({"status": "running", "heartbeat_timeout_s": 5.0,
                                                       "started_at": now - 100}))
    hb = run.path / "heartbeat.json"
    for beat in (now + 10 ** 7, "soon"):
        hb.write_text(json.dumps({"host": "h", "pid": 1, "time": beat}))
        old = now - 600
        os.utime(hb, (old, old))  # the file itself was last written ten minutes ago
        s = run.summary()
        assert s["status"] == "failed" and s["stale"], s
