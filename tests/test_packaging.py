"""The built wheel, installed into a fresh virtual environment, runs both commands from an empty folder.

Build: ``pip wheel --no-build-isolation`` on a copy of what the wheel is made of (no network). Install: a fresh
venv whose dependencies come from this interpreter's site-packages through a ``.pth`` file (torch is not
downloaded again) and whose ``plasticity_core`` is the wheel's. Then ``plasticity layers`` and ``plasticity
dashboard --server.port PORT`` from a temporary folder that has no ``.streamlit/config.toml``: the dashboard
must answer its health check and listen on 127.0.0.1 only.
"""
from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from local_server import free_port, wait_healthy

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """No PYTHONPATH: the checkout must not be importable in the fresh venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("plasticity_core", "dashboard"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(dist), str(src)], check=True, capture_output=True, text=True, timeout=300, cwd=tmp)
    (wheel,) = dist.glob("plasticity_lab-*.whl")
    env_dir = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    Path(purelib, "_plasticity_test_deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True, text=True, timeout=300, env=_env())
    return env_dir


def test_wheel_carries_the_dashboard_and_the_version(venv, tmp_path):
    code = ("import plasticity_core, importlib.metadata as m, pathlib; "
            "print(plasticity_core.__file__); print(plasticity_core.__version__, m.version('plasticity-lab')); "
            "from plasticity_core.cli import dashboard_app; print(dashboard_app())")
    out = subprocess.run([venv / "bin" / "python", "-c", code], check=True, capture_output=True, text=True,
                         env=_env(), cwd=tmp_path).stdout.split("\n")
    assert out[0].startswith(str(venv))  # the wheel's copy, not the checkout
    version, meta = out[1].split()
    assert version == meta  # the version is written once, in plasticity_core.__version__
    app = Path(out[2])
    assert app.is_relative_to(venv) and app.name == "app.py" and (app.parent / "app_pages" / "setup.py").is_file()


def test_installed_dashboard_renders_its_first_page(venv, tmp_path):
    """Health alone does not run the app: run the installed app.py (Setup page, tiny preset) with AppTest."""
    code = ("from plasticity_core.dashboard.testing import APP, tiny_app, no_exception; "
            "at = tiny_app(); no_exception(at); print(APP); print(len(at.dataframe))")
    proc = subprocess.run([venv / "bin" / "python", "-c", code], capture_output=True, text=True, env=_env(),
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    app, tables = proc.stdout.split()[-2:]
    assert Path(app).is_relative_to(venv) and int(tables) >= 1  # the loaded model's layer table is shown


def test_plasticity_layers_from_an_empty_folder(venv, tmp_path):
    proc = subprocess.run([venv / "bin" / "plasticity", "layers", "--model", "timm:test_resnet", "--random-init"],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "layer1.0.conv1" in proc.stdout and "fc" in proc.stdout


def _listeners(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


def _group(pgid: int) -> list[int]:
    """Processes of the process group ``pgid`` (the dashboard was started in its own session)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    out.append(int(entry.name))
            except ProcessLookupError:
                pass
    return out


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from Linux /proc")
def test_plasticity_dashboard_serves_on_localhost_only_from_any_folder(venv, tmp_path):
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w+")
    proc = subprocess.Popen([venv / "bin" / "plasticity", "dashboard", "--server.port", str(port)], cwd=tmp_path,
                            env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(port, proc, 180, tmp_path / "dashboard.log")
        listening = _listeners(port)
        assert listening and set(listening) == {"0100007F"}, listening  # 127.0.0.1, and no IPv4/IPv6 wildcard
        cmdlines = []
        for pid in _group(proc.pid):
            try:
                cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
            except FileNotFoundError:
                pass
        streamlit = next(c for c in cmdlines if b"streamlit" in b" ".join(c))
        args = [a.decode() for a in streamlit]
        assert args[args.index("--browser.gatherUsageStats") + 1] == "false"
        assert args[args.index("--server.headless") + 1] == "true"
        assert args[args.index("--server.fileWatcherType") + 1] == "none"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_dashboard_options_match_the_checkout_config():
    """``plasticity dashboard`` passes the same settings that ``.streamlit/config.toml`` gives the checkout."""
    from plasticity_core.cli import STREAMLIT_OPTIONS

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    flat = {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}
    as_text = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in flat.items()}
    assert as_text == STREAMLIT_OPTIONS
