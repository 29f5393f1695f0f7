"""Files the Fine-tune page's live view reads per tick, on a store of 20 runs (10 running, 10 finished).

A tick is what the page's ``_live_view`` fragment does every second while runs are active (dashboard/app_pages/
finetune.py): list the experiment's runs, its status table, the progress table (events + summary per run), the
curves and snapshots (events per run), each run's strategy from its config. The script writes the
store's files as a worker does (200 step events and 20 evals per run), then counts every file
opened during a first tick (cold) and the following ticks (warm, while 10 runs append events), by patching
``io.open`` / ``builtins.open`` (which ``Path.read_text`` / ``read_bytes`` and the YAML loader use).

    PYTHONPATH=. python benchmarks/live_view_reads.py
"""
from __future__ import annotations

import builtins
import collections
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

import plasticity_core as pc  # noqa: E402
from plasticity_core.config import ExperimentConfig, FinetuneConfig, ReinitConfig  # noqa: E402
from plasticity_core.progress import run_progress  # noqa: E402
from plasticity_core.runs import RunStore  # noqa: E402

STEPS = 200


def _append(path: Path, events: list[dict]) -> None:
    with open(path, "a") as f:
        f.write("".join(json.dumps(e) + "\n" for e in events))


def make_store(root: Path) -> tuple[RunStore, str, list[Path]]:
    """20 claimed run folders with the files a worker writes (metrics.jsonl, summary.json, heartbeat.json), written
    directly so the script measures any version of the readers."""
    cfg = ExperimentConfig(name="live", backbone="timm:test_resnet", data="synthetic:classes=4,n=96,size=32",
                           finetune=FinetuneConfig(steps=2 * STEPS),
                           arms={"baseline": None, "fire": ReinitConfig(strategy="fire", layers=["layer1.*"]),
                                 "reset": ReinitConfig(strategy="reset", layers=["layer1.*"]),
                                 "shrink_perturb": ReinitConfig(strategy="shrink_perturb", layers=["layer1.*"])},
                           seeds=[0, 1, 2, 3, 4])
    store = RunStore(root)
    runs = store.create(cfg, tag="bench")
    running = []
    for i, run in enumerate(runs):
        events = [{"type": "start", "step": 0, "time": 0.0, "total_steps": 2 * STEPS}]
        for k in range(1, STEPS + 1):
            events.append({"type": "step", "step": k, "time": k * 0.1, "loss": 1.0 / k, "lr": 0.01})
            if k % 10 == 0:
                events.append({"type": "eval", "step": k, "time": k * 0.1, "val_acc": k / (2 * STEPS), "val_loss": 1 / k})
        summary = json.loads((run.path / "summary.json").read_text())
        if i % 2:
            events.append({"type": "finished", "step": STEPS, "time": STEPS * 0.1, "reason": "completed"})
            summary.update(status="finished", reason="completed", steps=STEPS, final_val_acc=0.5)
        else:
            summary.update(status="running", reason="training", total_steps=2 * STEPS, started_at=time.time())
            running.append(run.path)
        _append(run.path / "metrics.jsonl", events)
        (run.path / "summary.json").write_text(json.dumps(summary))
        (run.path / "heartbeat.json").write_text(json.dumps({"time": time.time(), "step": STEPS}))
    return store, runs[0].experiment, running


def tick(store: RunStore, chosen: str, cache) -> None:
    """The library calls of one ``_live_view`` tick, in the page's order (the page of this checkout: with a
    ``runs.frames.FrameCache`` when it has one, else the earlier page that read every run's files itself)."""
    runs = store.runs(chosen)
    table = store.table(chosen)
    table["status"].isin(["queued", "running"]).any()
    if cache is not None:  # the page since runs/frames.py: one FrameCache poll per run, its Run objects reused
        polled = cache.poll(r.path for r in runs)
        runs = [f.run for f in polled]
        for r, f in zip(runs, polled):  # _progress_table
            run_progress(f.events, r.summary())
            r.summary().get("reason", "")
        {r.arm: (r.config.arms[r.arm].strategy if r.config.arms[r.arm] is not None else "none") for r in runs}
        for f in polled:  # _curve_figures / _snapshots
            f.scalars(), f.run.seed, f.run.status, f.snapshots()
        return
    for r in runs:  # _progress_table
        run_progress(r.events(), r.summary())
        r.summary().get("reason", "")
    for r in runs:  # _points
        for kind in ("eval", "step"):
            r.curve(kind)
            r.arm, r.seed, r.status
    {r.arm: (r.config.arms[r.arm].strategy if r.config.arms[r.arm] is not None else "none") for r in runs}
    max((r.config.finetune.steps for r in runs), default=None)
    pd.DataFrame()


class _Counted:
    """A file object that adds what ``read`` returns to a byte counter."""

    def __init__(self, f, counter: collections.Counter, name: str) -> None:
        self._f, self._counter, self._name = f, counter, name

    def read(self, *a):
        data = self._f.read(*a)
        self._counter[self._name] += len(data)
        return data

    def __iter__(self):
        for line in self._f:
            self._counter[self._name] += len(line)
            yield line

    def __enter__(self):
        self._f.__enter__()
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._f, name)


class OpenCounter:
    def __init__(self) -> None:
        self.opened: collections.Counter[str] = collections.Counter()
        self.bytes: collections.Counter[str] = collections.Counter()
        self._io, self._builtin = io.open, builtins.open

    def __enter__(self) -> "OpenCounter":
        def counting(file, *a, **k):
            f = self._io(file, *a, **k)
            if isinstance(file, (str, Path)):
                self.opened[Path(file).name] += 1
                return _Counted(f, self.bytes, Path(file).name)
            return f

        io.open = builtins.open = counting
        return self

    def __exit__(self, *exc) -> None:
        io.open, builtins.open = self._io, self._builtin


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store, chosen, running = make_store(Path(tmp))
        try:
            from plasticity_core.runs.frames import FrameCache
            cache = FrameCache()
        except ImportError:
            cache = None
        assert len(store.runs(chosen)) == 20
        results = []
        for n in range(4):
            with OpenCounter() as c:
                tick(store, chosen, cache)
            results.append((c.opened, c.bytes))
            for path in running:  # the running runs go on between ticks: 10 new steps, a fresh heartbeat
                _append(path / "metrics.jsonl", [{"type": "step", "step": k, "time": k * 0.1, "loss": 1.0 / k}
                                                 for k in range(STEPS + 10 * n + 1, STEPS + 10 * n + 11)])
                (path / "heartbeat.json").write_text(json.dumps({"time": time.time(), "step": STEPS + 10 * n + 10}))
            time.sleep(0.01)
    for name, ticks in (("first tick", results[:1]), ("later ticks (mean of 3)", results[1:])):
        opened = {k: sum(c[0][k] for c in ticks) / len(ticks) for k in sorted({k for c in ticks for k in c[0]})}
        read = sum(sum(c[1].values()) for c in ticks) / len(ticks)
        mb = sum(c[1]["metrics.jsonl"] for c in ticks) / len(ticks)
        print(f"{name}: {sum(opened.values()):g} file opens for 20 runs ("
              + ", ".join(f"{k} {v:g}" for k, v in opened.items()) + f"); {read / 1e3:.1f} kB read, of which "
              f"metrics.jsonl {mb / 1e3:.1f} kB")
    print(f"plasticity_core from {pc.__file__}")


if __name__ == "__main__":
    main()
