"""The run contract: one writer, one incremental reader, one set of statuses (plasticity_core.train.events)."""
from __future__ import annotations

import json

import pytest

import plasticity_core as pc
from plasticity_core.config import ExperimentConfig, FinetuneConfig
from plasticity_core.runs import RunStore
from plasticity_core.train.events import (ACTIVE, FINAL, SCHEMA_VERSION, EventReader, RunWriter, read_events,
                                          run_progress)


def test_statuses_are_one_set_everywhere():
    from plasticity_core import progress
    from plasticity_core.runs import store

    assert set(ACTIVE).isdisjoint(FINAL) and "cancelled" in FINAL
    assert store.FINAL is FINAL and store.ACTIVE is ACTIVE and progress.FINAL is FINAL
    assert pc.read_events is read_events or pc.read_events.__module__ == "plasticity_core.train.events"


def test_reader_reads_only_new_bytes_and_waits_for_a_half_written_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    reader = EventReader(path)
    assert reader.poll() == []  # no file yet
    path.write_text(json.dumps({"type": "step", "step": 1}) + "\n" + '{"type": "step", "st')
    assert [e["step"] for e in reader.poll()] == [1]
    first_offset = reader.offset
    assert first_offset == len(json.dumps({"type": "step", "step": 1})) + 1  # the partial line is not consumed
    with open(path, "a") as f:
        f.write('ep": 2}\n' + "not json\n" + json.dumps({"type": "eval", "step": 2, "val_acc": 0.5}))
    new = reader.poll()
    assert [(e["type"], e["step"]) for e in new] == [("step", 2), ("eval", 2)]  # corrupt line skipped, complete tail kept
    with open(path, "a") as f:
        f.write("\n" + json.dumps({"type": "finished", "step": 2}) + "\n")
    assert [e["type"] for e in reader.poll()] == ["finished"]  # the tail's newline does not repeat it
    assert [e["type"] for e in reader.events] == ["step", "step", "eval", "finished"]
    assert reader.poll() == []
    assert [e["type"] for e in read_events(path)] == ["step", "step", "eval", "finished"]
    path.write_text(json.dumps({"type": "start", "step": 0}) + "\n")  # replaced: read again from the start
    assert [e["type"] for e in reader.read()] == ["start"]


def test_writer_used_by_a_producer_of_its_own(tmp_path):
    """A loop that is not ours writes a claimed run folder; the store, progress and comparison read it like ours."""
    store = RunStore(tmp_path / "runs")
    cfg = ExperimentConfig(name="own-loop", backbone="timm:test_resnet", data="synthetic:classes=4,n=96,size=32",
                           finetune=FinetuneConfig(steps=3))
    run, = store.create(cfg, tag="t")
    assert run.status == "queued"
    seen = []
    with RunWriter.for_folder(run.path, on_event=seen.append, heartbeat_s=0.5) as w:
        w.event("start", 0, total_steps=3, source="test")
        assert run.summary()["status"] == "running" and (run.path / "heartbeat.json").exists()
        for k in (1, 2, 3):
            w.event("step", k, loss=1.0 / k)
        w.event("eval", 3, val_acc=0.75, val_loss=0.3)
        mid = run_progress(run.events(), run.summary())
        assert mid["step"] == 3 and mid["total"] == 3 and mid["status"] == "running"
        w.finish("finished", "completed 3 steps", steps=3, final_val_acc=0.75)
    s = run.summary()
    assert s["status"] == "finished" and s["reason"] == "completed 3 steps" and s["arm"] == "baseline"
    assert s["schema"] == SCHEMA_VERSION and s["attempt"] == 1
    events = run.events()
    assert [e["type"] for e in events] == ["start", "step", "step", "step", "eval", "finished"]
    assert events[0]["schema"] == SCHEMA_VERSION and [e["type"] for e in seen] == [e["type"] for e in events]
    assert run_progress(events, s)["val_acc"] == 0.75
    assert store.table().iloc[0]["status"] == "finished"


def test_writer_leaving_on_an_exception_says_failed(tmp_path):
    with pytest.raises(RuntimeError):
        with RunWriter(tmp_path, base={"arm": "a"}) as w:
            w.event("start", 0, total_steps=10)
            raise RuntimeError("the producer broke")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "the producer broke" in summary["reason"] and summary["arm"] == "a"
    assert read_events(tmp_path / "metrics.jsonl")[-1]["type"] == "failed"
    with pytest.raises(ValueError, match="status must be one of"):
        RunWriter(tmp_path).finish("done", "not a status")


def test_a_listed_run_reads_each_file_once_and_only_new_bytes(tmp_path, monkeypatch):
    """The live view's tick: a store lists the same Run objects; unchanged files are not opened again."""
    import builtins
    import io

    store = RunStore(tmp_path / "runs")
    cfg = ExperimentConfig(name="tick", backbone="timm:test_resnet", data="synthetic:classes=4,n=96,size=32",
                           finetune=FinetuneConfig(steps=3))
    run, = store.create(cfg, tag="t")
    w = RunWriter.for_folder(run.path, heartbeat_s=None).open()
    w.event("start", 0, total_steps=3)
    w.event("step", 1, loss=1.0)

    def tick():
        for r in store.runs():
            r.events(), r.summary(), r.curve("step"), r.status, r.config
        return store.runs()[0]

    assert tick() == run
    opened = []
    real = io.open

    def counting(file, *a, **k):
        opened.append(str(file))
        return real(file, *a, **k)

    monkeypatch.setattr(io, "open", counting)
    monkeypatch.setattr(builtins, "open", counting)
    tick()
    assert opened == []  # nothing changed: nothing opened
    offset = store.runs()[0]._reader.offset
    w.event("step", 2, loss=0.5)
    r = tick()
    assert [p.rsplit("/", 1)[-1] for p in opened] == ["metrics.jsonl"]  # once, though read three ways
    assert r._reader.offset > offset and [e["step"] for e in r.events("step")] == [1, 2]
    w.finish("finished", "done", steps=2)
    opened.clear()
    assert tick().status == "finished"
    assert sorted(p.rsplit("/", 1)[-1] for p in opened) == ["metrics.jsonl", "summary.json"]
