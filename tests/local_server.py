"""A server a test starts on this machine: a free loopback port, and the wait until Streamlit answers its health
check (failing with the server's own log when it exits first or never answers)."""
from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, timeout_s: float, log: Path | None = None) -> None:
    """Return once ``http://127.0.0.1:port/_stcore/health`` answers ``ok``; fail if ``proc`` exits first or
    ``timeout_s`` passes, quoting the end of ``log`` (the server's output) when given."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return
        except OSError:
            pass
        tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
        assert proc.poll() is None, f"the server exited with code {proc.returncode} before answering; log:\n{tail}"
        assert time.monotonic() < deadline, f"the server did not become healthy in {timeout_s:.0f} s; log:\n{tail}"
        time.sleep(0.3)
