"""Waiting on what a test started: a condition with a deadline, and whether a process is still running (a zombie,
exited but not yet reaped, counts as gone)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Return once ``predicate()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (Linux ``/proc``)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, OSError):
        return False
