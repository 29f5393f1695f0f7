"""The run contract: what a run folder holds while and after a run trains, written by one class, read by one.

Every producer (our fine-tune loop through ``runs.execute``, a Lightning / Hugging Face callback, ``pc.track``
around a loop of the user's own) writes a run folder through ``RunWriter``; every consumer (the run store, the
executors' event pump, the CLI bars, the dashboard's live views, ``compare``) reads it through ``EventReader``
and ``run_progress``. A run folder holds:

- ``metrics.jsonl``: one JSON event per line, flushed as written. Every event has ``type``, ``step`` (optimizer
  steps done, or None) and ``time`` (seconds since the producer started, or None); the other fields depend on the
  type (``EVENTS``). Readers skip lines they cannot parse and types they do not know.
- ``summary.json``: the status (``ACTIVE`` while queued or running, then one of ``FINAL``) with its ``reason``;
  written atomically, always ending in a final status unless the process itself died;
- ``heartbeat.json``: rewritten every few seconds while the run is active, so a reader can tell a dead worker
  (``running`` without a heartbeat for ``heartbeat_timeout_s`` reads ``failed``);
- ``diagnosis.parquet``: the rows of every ``diagnosis`` event (step, layer, metric, value), when there were any.

``SCHEMA_VERSION`` is written into the ``start`` event and the summary; version 1 is also what folders written
before it had (they carry no version and read the same).
"""
from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

SCHEMA_VERSION = 1
CLOCK_SKEW_S = 60.0  # a heartbeat time further ahead than this is not believed (the file's mtime is used instead)
ACTIVE = ("queued", "running")  # a run that may still change
FINAL = ("finished", "stopped", "failed", "cancelled")  # a run that ended; ``cancelled``: it never started

METRICS_FILE, SUMMARY_FILE, HEARTBEAT_FILE, DIAGNOSIS_FILE = ("metrics.jsonl", "summary.json", "heartbeat.json",
                                                              "diagnosis.parquet")

# The event vocabulary: type -> its fields (besides type, step, time). A producer may add fields; readers ignore
# what they do not know. The final types (finished / stopped / failed) are the last event of an attempt.
EVENTS: dict[str, str] = {
    "start": "total_steps, schema (SCHEMA_VERSION); ours also: device, batches_per_epoch, log_every, data_path, "
             "val_images, eval_images, resumed_from, notes; an integration: source (lightning / hf / track)",
    "reinit": "strategy, table (per-layer records), notes, resolved_layers, summary: the re-init before training",
    "optimizer": "groups: {group name: parameter count}",
    "step": "loss, lr, images_per_s, epoch, replaced (cbp): the mean over the steps since the last step event",
    "eval": "val_acc, val_loss, val_images, full_val (the whole val split or the periodic subset)",
    "diagnosis": "rows: [{layer, metric, value}], a per-layer snapshot at this step",
    "checkpoint": "path: weights and training state saved at this step",
    "warning": "message: something the user should know, the run goes on",
    "cbp": "replaced: units continual backprop replaced over the run",
    "resume": "from_step / checkpoint / attempt / reason: a later attempt continues; events of the earlier attempt "
              "beyond this step are dropped by readers",
    "requeued": "reason: a preempted cluster task will run again",
    "finished": "the run's summary fields (steps, accuracies, wall time, reason)",
    "stopped": "reason (a stop request, a time limit, Ctrl-C)",
    "failed": "reason",
}


def make_event(kind: str, step: int | None, time_s: float | None, **fields: Any) -> dict[str, Any]:
    """One event dict in the contract's shape: ``{"type", "step", "time", **fields}``."""
    return {"type": kind, "step": step, "time": None if time_s is None else round(float(time_s), 4), **fields}


class Clock:
    """Builds events with ``time`` = seconds since ``t0`` and hands them to ``sink`` (the fine-tune loop's emitter)."""

    def __init__(self, sink: Callable[[dict[str, Any]], None] | None, t0: float | None = None) -> None:
        self.sink, self.t0 = sink, time.perf_counter() if t0 is None else t0

    def __call__(self, kind: str, step: int | None, **fields: Any) -> None:
        if self.sink is not None:
            self.sink(make_event(kind, step, time.perf_counter() - self.t0, **fields))


# ---------------------------------------------------------------------------------------------- files
def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)
    except BaseException:  # disk full, folder deleted, read-only: never leave a temp file behind
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


class Heartbeat:
    """A daemon thread rewriting ``path`` with ``{host, pid, time, **fields}`` every ``interval`` seconds.

    It stops at ``close()`` or at the first failed write (disk full, folder gone): a reader then sees the
    heartbeat go stale, which is the truth. ``update(**fields)`` changes what the next beat says.
    """

    def __init__(self, path: str | os.PathLike, interval: float, **fields: Any) -> None:
        self.path, self.interval = Path(path), interval
        self.fields = {"host": socket.gethostname(), "pid": os.getpid(), **fields}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat:{self.path}", daemon=True)
        self.error: str | None = None

    def __enter__(self) -> "Heartbeat":
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, **fields: Any) -> None:
        self.fields.update(fields)

    def beat(self) -> bool:
        try:
            write_json(self.path, {**self.fields, "time": time.time(), "interval_s": self.interval})
            return True
        except OSError as e:
            self.error = f"{type(e).__name__}: {e}"
            return False

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            if not self.beat():
                return

    def close(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 1)


def heartbeat_age(path: str | os.PathLike, fallback: float | None = None) -> tuple[float | None, dict[str, Any]]:
    """Seconds since the heartbeat file's last beat (``fallback`` time when there is none yet) and its content."""
    hb = read_json(path) or {}
    return beat_age(hb, path, fallback), hb


def beat_age(hb: dict[str, Any], path: str | os.PathLike, fallback: float | None = None) -> float | None:
    """Seconds since the beat ``hb`` (read from ``path``) was written: its ``time``, or the file's modification time
    when that time is from the future (beyond ``CLOCK_SKEW_S``: another host's clock, a hand edit) or not a number;
    ``fallback`` when there is no beat. None when nothing tells."""
    last, now = hb.get("time", fallback), time.time()
    if hb and not (_number(last) and math.isfinite(last) and last <= now + CLOCK_SKEW_S):
        # a beat from the future (another host's clock, a hand-edited file) or no number: trust when the file changed
        try:
            last = os.stat(path).st_mtime
        except OSError:
            last = fallback
    if not (_number(last) and math.isfinite(last)):
        return None
    return max(0.0, now - float(last))


# ---------------------------------------------------------------------------------------------- the writer
class RunWriter:
    """The one writer of a run folder: ``metrics.jsonl`` (line-flushed), tracker sinks, heartbeat, ``summary.json``.

    ``folder``: a claimed run folder (``RunStore.create``) or any folder of a producer's own. ``base``: fields every
    summary repeats (experiment, arm, seed, attempt, ...); ``for_folder`` builds them from the folder's queued
    summary. ``sinks``: objects with ``write(event)`` / ``close()``; ``on_event``: a callback seeing every event.
    ``heartbeat_s``: start a heartbeat thread (None: none, e.g. a producer that keeps its own).

    Use as a context manager (``open`` / ``close``); ``event(kind, step, **fields)`` or ``write(event)`` append,
    ``status(status, reason)`` rewrites the summary of an active run, ``finish(status, reason, **fields)`` writes the
    final event (unless the producer wrote it), closes the sinks, writes ``diagnosis.parquet`` and the final summary.
    Leaving the ``with`` block on an exception without ``finish`` finishes the run ``failed`` (``stopped`` on
    Ctrl-C) with the exception as the reason.
    """

    def __init__(self, folder: str | os.PathLike, base: dict[str, Any] | None = None, sinks: Sequence[Any] = (),
                 on_event: Callable[[dict[str, Any]], None] | None = None, heartbeat_s: float | None = None) -> None:
        self.path = Path(folder)
        self.base = dict(base or {})
        self.sinks = list(sinks)
        self.on_event = on_event
        self.heartbeat_s = heartbeat_s
        self.heartbeat: Heartbeat | None = None
        self.t0 = time.perf_counter()
        self.ended: str | None = None  # the final event type written, if any
        self.summary: dict[str, Any] | None = None  # the final summary once finished
        self.diagnoses: list[dict[str, Any]] = []
        self.last_step: int | None = None  # the highest step written: a run that fails says where it got to
        self.write_error: str | None = None  # why the final summary could not be written (disk full, folder gone)
        self._log: Any = None

    @classmethod
    def for_folder(cls, folder: str | os.PathLike, sinks: Sequence[Any] = (),
                   on_event: Callable[[dict[str, Any]], None] | None = None, heartbeat_s: float | None = 5.0,
                   **fields: Any) -> "RunWriter":
        """A writer for a claimed (queued) run folder, taking over its summary's fields; this process is the worker."""
        previous = read_json(Path(folder) / SUMMARY_FILE) or {}
        base = {k: previous[k] for k in ("experiment", "arm", "seed", "launch", "job_id", "created_at",
                                         "heartbeat_timeout_s") if k in previous}
        base.update(experiment=base.get("experiment", Path(folder).parent.name), pid=os.getpid(),
                    host=socket.gethostname(), started_at=time.time(), attempt=int(previous.get("attempt", 0)) + 1,
                    schema=SCHEMA_VERSION, **fields)
        return cls(folder, base, sinks, on_event, heartbeat_s)

    # -- lifecycle
    def open(self) -> "RunWriter":
        if self._log is None:
            if self.heartbeat_s and self.heartbeat is None:
                self.heartbeat = Heartbeat(self.path / HEARTBEAT_FILE, self.heartbeat_s,
                                           attempt=self.base.get("attempt")).__enter__()
            self._log = open(self.path / METRICS_FILE, "a", buffering=1)
        return self

    def __enter__(self) -> "RunWriter":
        return self.open()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and self.summary is None:
            interrupted = isinstance(exc, KeyboardInterrupt)
            reason = "interrupted (SIGINT / Ctrl-C)" if interrupted else f"{type(exc).__name__}: {exc}"
            try:
                self.finish("stopped" if interrupted else "failed", reason)
            except Exception:  # noqa: BLE001 - the producer's own exception is what the caller must see
                pass
        self.close()

    def close(self) -> None:
        """Close the log, the sinks and the heartbeat (without a final status: ``finish`` writes that)."""
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - a tracker failing at close must not hide the run's own status
                pass
        self.sinks = []
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.heartbeat is not None:
            self.heartbeat.close()

    # -- writing
    def status(self, status: str, reason: str, **fields: Any) -> dict[str, Any]:
        """Rewrite ``summary.json`` of a run that has not ended (``running`` with what it is doing, ``queued``)."""
        summary = {**self.base, **fields, "status": status, "reason": reason}
        write_json(self.path / SUMMARY_FILE, summary)
        return summary

    def event(self, kind: str, step: int | None, **fields: Any) -> dict[str, Any]:
        """Append an event of ``kind`` at ``step`` (``time``: seconds since this writer was made)."""
        event = make_event(kind, step, time.perf_counter() - self.t0, **fields)
        self.write(event)
        return event

    def write(self, event: dict[str, Any]) -> None:
        """Append a complete event (``type``, ``step``, ``time``, ...) and hand it to the sinks and ``on_event``."""
        self.open()
        kind = event.get("type")
        if kind == "start":
            event = {**event, "schema": event.get("schema", SCHEMA_VERSION)}
        self._log.write(json.dumps(event, default=str) + "\n")
        self._log.flush()
        if kind in FINAL:
            self.ended = kind
        if isinstance(event.get("step"), int) and not isinstance(event.get("step"), bool):
            self.last_step = max(self.last_step or 0, event["step"])
        if event.get("step") is not None and self.heartbeat is not None:
            self.heartbeat.update(step=event["step"])
        if kind == "diagnosis":
            self.diagnoses.extend({"step": event["step"], **row} for row in event.get("rows", []))
        elif kind == "start":
            self.status("running", "training", total_steps=event.get("total_steps"))
        for sink in self.sinks:
            sink.write(event)
        if self.on_event is not None:
            self.on_event(event)

    def finish(self, status: str, reason: str, **fields: Any) -> dict[str, Any]:
        """End the run: the final event (unless the producer wrote this one), sinks closed, ``diagnosis.parquet``, and the
        final ``summary.json`` (``{**base, **fields, status, reason, ended_at}``), returned."""
        if status not in FINAL:
            raise ValueError(f"finish: status must be one of {FINAL}, got {status!r}")
        if fields.get("steps") is None and self.last_step is not None:
            fields["steps"] = self.last_step  # a run that failed at step 51 says 51, not 0
        if self.ended != status:  # the last final event agrees with the summary (e.g. Ctrl-C after the loop's 'failed')
            try:
                self.write(make_event(status, fields.get("steps"), time.perf_counter() - self.t0, reason=reason))
            except Exception:  # noqa: BLE001 - e.g. disk full or a broken sink: the summary below may still fit
                pass
        self.close()
        if self.diagnoses:
            import pandas as pd

            try:
                pd.DataFrame(self.diagnoses).to_parquet(self.path / DIAGNOSIS_FILE)
            except Exception:  # noqa: BLE001 - the snapshots are also in metrics.jsonl
                pass
        self.summary = {**self.base, **fields, "status": status, "reason": reason, "ended_at": time.time()}
        try:
            write_json(self.path / SUMMARY_FILE, self.summary)
        except OSError as e:  # disk full, read-only, the folder deleted: the caller gets the true status in memory
            self.write_error = f"{self.path / SUMMARY_FILE} not written: {e.strerror or type(e).__name__}"
            self.summary["not_saved"] = self.write_error
        return self.summary


# ---------------------------------------------------------------------------------------------- the reader
class EventReader:
    """The one reader of ``metrics.jsonl``: each ``poll()`` reads only the bytes written since the last one.

    A last line still being written is left for the next poll (unless it is already a complete JSON object); lines
    that do not parse are skipped, never raised. ``events`` keeps every event parsed so far, in order. A file that
    shrank or was replaced is read again from the start.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.offset = 0
        self.events: list[dict[str, Any]] = []
        self.rejected: list[str] = []  # "line N: why" for complete lines whose values are mistyped or impossible
        self._lines = 0
        self._ident: tuple[int, int] | None = None

    def poll(self) -> list[dict[str, Any]]:
        """The events appended since the last poll (also added to ``events``)."""
        try:
            st = os.stat(self.path)  # unchanged since the last poll: nothing to open
        except OSError:
            return []
        if (st.st_dev, st.st_ino) == self._ident and st.st_size == self.offset:
            return []
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                ident = (st.st_dev, st.st_ino)
                if ident != self._ident or st.st_size < self.offset:
                    self.offset, self.events, self._ident, self.rejected, self._lines = 0, [], ident, [], 0
                if st.st_size == self.offset:
                    return []
                f.seek(self.offset)
                chunk = f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
            return []
        new: list[dict[str, Any]] = []
        end = chunk.rfind(b"\n") + 1
        for line in chunk[:end].split(b"\n")[:-1]:
            self._lines += 1
            self._take(_parse(line), new)
        tail = chunk[end:]
        event = _parse(tail)  # a prefix of a JSON object never parses, so a tail that parses is a complete event
        if event is not None:
            self._lines += 1
            self._take(event, new)
            end += len(tail)  # its newline, when it comes, reads as an empty line
        self.offset += end
        self.events.extend(new)
        return new

    def _take(self, event: dict[str, Any] | None, new: list[dict[str, Any]]) -> None:
        if event is None:
            return
        why = event_problem(event)
        if why is None:
            new.append(event)
        elif len(self.rejected) < 100:
            self.rejected.append(f"line {self._lines}: {why}")

    def read(self) -> list[dict[str, Any]]:
        """Every event so far (polls first)."""
        self.poll()
        return self.events


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def event_problem(event: dict[str, Any]) -> str | None:
    """Why an event's values cannot be trusted (a step that is not a whole number, an accuracy outside [0, 1] or not
    finite, a time that is not a finite number, a mistyped loss or lr), or None. Readers drop such events and say so:
    one hand-edited or corrupted line must not enter a comparison or break a page."""
    step = event.get("step")
    if step is not None and not (isinstance(step, int) and not isinstance(step, bool) and step >= 0):
        return f"step {str(step)[:40]!r} is not a whole number >= 0"
    t = event.get("time")
    if t is not None and not (_number(t) and math.isfinite(t)):
        return f"time {str(t)[:40]!r} is not a finite number"
    if "val_acc" in event:
        acc = event["val_acc"]
        if not (_number(acc) and math.isfinite(acc) and 0.0 <= acc <= 1.0):
            return f"val_acc {str(acc)[:40]!r} is not an accuracy in [0, 1]"
    for key in ("val_loss", "loss", "lr"):  # NaN/inf are allowed here: a diverged loss is a true value
        if event.get(key) is not None and not _number(event[key]):
            return f"{key} {str(event[key])[:40]!r} is not a number"
    return None


def _parse(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        event = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return event if isinstance(event, dict) else None


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete JSON line of ``metrics.jsonl``; a half-written or corrupt line is skipped, never raised."""
    return EventReader(path).read()


def drop_superseded(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events in order; after a ``resume`` event (an attempt restarting from step k) the events of the
    interrupted attempt beyond step k are dropped, so a curve never has two points for one step."""
    out: list[dict[str, Any]] = []
    for e in events:
        if e.get("type") == "resume":
            k = e.get("step") or 0
            out = [x for x in out if not (isinstance(x.get("step"), (int, float)) and x["step"] > k)]
        out.append(e)
    return out


# ---------------------------------------------------------------------------------------------- progress
def run_progress(events: Iterable[dict[str, Any]], summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{step, total, fraction, val_acc, val_acc_step, elapsed_s, eta_s, status}`` of one run.

    One function for every reader (the dashboard's run table, the CLI bars). ``eta_s`` is the time left at the run's
    own mean pace so far (None until the first step, and once it ended); ``val_acc`` is the latest evaluation's
    (None before the first). Never raises on a partial stream.
    """
    summary = summary or {}
    total = summary.get("total_steps")
    step, elapsed, acc, acc_step, status = 0, 0.0, None, None, summary.get("status", "queued")
    for e in events:
        kind = e.get("type")
        if kind == "start" and e.get("total_steps"):
            total = int(e["total_steps"])
        if isinstance(e.get("step"), int):
            step = max(step, e["step"]) if kind in ("step", "eval") or kind in FINAL else step
        if isinstance(e.get("time"), (int, float)):
            elapsed = float(e["time"])
        if kind == "eval" and isinstance(e.get("val_acc"), (int, float)):
            acc, acc_step = float(e["val_acc"]), e.get("step")
        if kind in FINAL:
            status = kind
    if isinstance(summary.get("steps"), int) and status in FINAL:
        step = summary["steps"]
    total = int(total) if total else None
    running = status not in FINAL
    eta = None
    if running and total and step > 0 and elapsed > 0:
        eta = elapsed / step * max(total - step, 0)
    fraction = min(step / total, 1.0) if total else 0.0
    return {"step": step, "total": total, "fraction": fraction, "val_acc": acc, "val_acc_step": acc_step,
            "elapsed_s": elapsed, "eta_s": None if eta is None or math.isnan(eta) else eta, "status": status}
