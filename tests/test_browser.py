"""End to end in a real headless Chromium: setup -> diagnose -> heatmap box selection -> preview -> live fine-tune -> export.

Needs Debian ``chromium`` and the ``playwright`` Python package (its driver ships in the wheel; never
``playwright install``) and the offline assets (``plasticity assets fetch``); skipped with the reason otherwise.
Saves one screenshot per page to docs/screenshots/ and fails on any Streamlit exception box.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import plasticity_core as pc
from plasticity_core import assets

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
EXCEPTION = "[data-testid='stException']"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    missing = [a["key"] for a in assets.status() if not a["cached"]]
    if missing:
        pytest.skip(f"offline assets {missing} missing: run `plasticity assets fetch`")
    port = _free_port()
    env = {**os.environ, "PLASTICITY_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "streamlit.log").read_text()
            assert time.monotonic() < deadline, "streamlit did not become healthy in 60 s"
            time.sleep(0.3)
        yield url, tmp_path / "runs"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        for worker in (tmp_path / "runs").glob("*/worker.json"):  # never leave a fine-tune worker behind
            pc.RunHandle.attach(worker.parent).stop(timeout=5)


def _settle(page, timeout_ms: int = 120_000) -> None:
    """Wait until the app is not running a script, then check that no exception box is shown."""
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=timeout_ms)
    assert page.locator(EXCEPTION).count() == 0, page.locator(EXCEPTION).first.inner_text()


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _goto(page, title: str) -> None:
    page.locator("[data-testid='stSidebarNavLink']", has_text=title).click()
    page.wait_for_selector(f"h1:has-text('{title}')", timeout=60_000)
    _settle(page)


def _set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    _settle(page)


def _statuses(runs_root: Path) -> list[str]:
    return [json.loads(p.read_text())["status"] for p in runs_root.glob("*/*/summary.json")]


def test_offline_default_from_setup_to_export(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, runs_root = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1500}, accept_downloads=True)
        page.set_default_timeout(120_000)
        try:
            page.goto(url)
            # Setup: the offline default loads by itself and shows the real layer table of MobileNetV2
            page.wait_for_selector("text=Layers in network order")
            _settle(page)
            assert page.locator("[data-testid='stMetricValue']").nth(1).inner_text() == "53"
            page.wait_for_selector("[data-testid='stDataFrame']")
            _shot(page, "setup")

            # Diagnose: run, then drag a box over heatmap cells to select layers
            _goto(page, "Diagnose")
            _set_number(page, "Probe batches", 2)
            page.get_by_role("button", name="Run diagnosis").click()
            page.wait_for_selector(".heatmaplayer", timeout=180_000)
            _settle(page)
            drag = page.locator("[data-testid='stPlotlyChart'] .nsewdrag").first
            drag.scroll_into_view_if_needed()
            box = drag.bounding_box()
            x0, x1 = box["x"] + box["width"] * 0.05, box["x"] + box["width"] * 0.5
            y0, y1 = box["y"] + box["height"] * 0.12, box["y"] + box["height"] * 0.22
            page.mouse.move(x0, y0)
            page.mouse.down()
            page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
            page.mouse.move(x1, y1, steps=5)
            page.mouse.up()
            page.wait_for_selector("text=/Selected layers: [1-9]/", timeout=60_000)
            _settle(page)
            count = int(page.get_by_text("Selected layers:").inner_text().split(":")[1])
            page.evaluate("window.scrollTo(0, 0)")
            _shot(page, "diagnose")

            # Re-init: the selection fills the patterns; preview FIRE on a copy
            _goto(page, "Re-init")
            page.wait_for_selector("text=/[1-9][0-9]* layer\\(s\\) match/")
            selected = page.get_by_label("Include").input_value().splitlines()
            assert len(selected) == count and all(name.startswith(("blocks.", "conv_")) for name in selected)
            page.get_by_role("button", name="Preview").click()
            page.wait_for_selector("text=Preview: fire")
            _settle(page)
            assert page.locator("[data-testid='stPlotlyChart']").count() == 1
            _shot(page, "reinit")

            # Fine-tune: baseline vs FIRE, a few steps on a small subset; curves must show while it runs
            _goto(page, "Fine-tune")
            _set_number(page, "Steps", 40)
            _set_number(page, "Eval every", 5)
            _set_number(page, "Data limit (0 = all)", 300)
            page.get_by_role("button", name="Launch").click()
            page.wait_for_selector("[data-testid='stPlotlyChart'] .scatterlayer .trace", timeout=180_000)
            assert any(s in ("queued", "running") for s in _statuses(runs_root)), "curves appeared only after the end"
            _shot(page, "finetune_live")
            page.wait_for_selector("text=Comparison", timeout=240_000)
            _settle(page)
            assert sorted(_statuses(runs_root)) == ["finished", "finished"]
            _shot(page, "finetune")

            # Export: the downloaded YAML is a valid ReinitConfig for the selected layers
            _goto(page, "Export")
            with page.expect_download() as info:
                page.get_by_role("button", name="reinit_config.yaml").click()
            cfg = pc.ReinitConfig.from_yaml(Path(info.value.path()).read_text())
            assert cfg.strategy == "fire" and cfg.layers == selected
            assert set(cfg.resolved_layers) <= set(selected) and cfg.resolved_layers
            _shot(page, "export")
        finally:
            browser.close()
