"""Where a run stands, read from its event stream: step of total, latest accuracy, elapsed time and ETA.

One function for every reader (the dashboard's per-run table; a CLI bar can use the same numbers), so progress
is computed once. Events are the fine-tune loop's (``start``, ``step``, ``eval``, final status), each with
``step`` and ``time`` (seconds since the run started).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

FINAL = ("finished", "stopped", "failed")


def run_progress(events: Iterable[dict[str, Any]], summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{step, total, fraction, val_acc, val_acc_step, elapsed_s, eta_s, status}`` of one run.

    ``eta_s`` is the time left at the run's own mean pace so far (None until the first step, and once it ended);
    ``val_acc`` is the latest evaluation's (None before the first). Never raises on a partial stream.
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
