"""The served dashboard cannot be framed by another site: ``plasticity dashboard`` serves ``dashboard/serve.py`` (the
app as an ``st.App`` with the ``FrameGuard`` middleware), and every response carries frame-ancestors 'none' and
X-Frame-Options DENY. A real server on a free local port, read with a real HTTP client."""
from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from pathlib import Path

from plasticity_core.cli import dashboard_command

from local_server import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]


def test_every_response_forbids_framing(tmp_path):
    port = free_port()
    cmd = dashboard_command(["--server.port", str(port)])
    serve = next(i for i, a in enumerate(cmd) if a.endswith("serve.py"))
    cmd[serve] = str(ROOT / "dashboard" / "serve.py")  # this checkout's, whatever the installed copy is
    env = {**os.environ, "PLASTICITY_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(port, proc, 90, tmp_path / "streamlit.log")
        for path in ("/", "/_stcore/health", "/?ws=0123456789ab"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                assert r.headers.get_all("X-Frame-Options") == ["DENY"], (path, dict(r.headers))
                assert r.headers.get("Content-Security-Policy") == "frame-ancestors 'none'", (path, dict(r.headers))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
