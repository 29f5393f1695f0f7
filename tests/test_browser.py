"""End to end in a real headless Chromium: setup -> diagnose (click and box selection, reasons for unsupported
layers) -> preview -> a refused no-op arm -> live fine-tune, a reload mid-run that restores the workspace -> export
(the shown command parses back to the intended argv).

Needs Debian ``chromium`` and the ``playwright`` Python package (its driver ships in the wheel; never
``playwright install``) and the offline assets (``plasticity assets fetch``); skipped with the reason otherwise.
Saves one screenshot per page to docs/screenshots/ and fails on any Streamlit exception box.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

import plasticity_core as pc
from plasticity_core import assets

from local_server import free_port, wait_healthy

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
EXCEPTION = "[data-testid='stException']"


@pytest.fixture
def server(tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    missing = [a["key"] for a in assets.status() if not a["cached"]]
    if missing:
        pytest.skip(f"offline assets {missing} missing: run `plasticity assets fetch`")
    port = free_port()
    env = {**os.environ, "PLASTICITY_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(port, proc, 60, tmp_path / "streamlit.log")
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


def _first_diagnosis(page) -> None:
    """Go to Diagnose and run one diagnosis on one probe batch, until the heatmap is drawn. The loaded model's weight
    metrics were started in the background at load, and the page says where they stand (computing / ready), so
    this first click waits only for the activation pass."""
    _goto(page, "Diagnose")
    status = page.get_by_text("weight metrics: ", exact=False)
    assert status.count() == 1
    assert re.match(r"weight metrics: (ready|computing in the background)", status.inner_text()), status.inner_text()
    _set_number(page, "Probe batches", 1)
    page.get_by_role("button", name="Run diagnosis").click()
    page.wait_for_selector(".heatmaplayer", timeout=180_000)
    _settle(page)


@contextlib.contextmanager
def _opened(url: str, tmp_path: Path) -> Iterator:
    """A headless Chromium page on the app, its Setup page loaded (the layer table drawn); on a failure the page as
    the user saw it is saved to ``tmp_path / "failure.png"``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1400}, accept_downloads=True)
        page.set_default_timeout(120_000)
        try:
            page.goto(url)
            page.wait_for_selector("text=Layers in network order")
            _settle(page)
            yield page
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)  # what the user saw when it failed
            raise
        finally:
            browser.close()


def _statuses(runs_root: Path) -> list[str]:
    return [json.loads(p.read_text())["status"] for p in runs_root.glob("*/*/summary.json")]


def _cell(page, row: int, col: float) -> tuple[float, float]:
    """Viewport pixel of heatmap cell (row, col), from Plotly's own axis mapping."""
    return tuple(page.evaluate("""([row, col]) => {
        const gd = document.querySelector("[data-testid='stPlotlyChart'] .js-plotly-plot");
        const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return [r.left + gd._fullLayout.xaxis.l2p(col), r.top + gd._fullLayout.yaxis.l2p(row)]; }""", [row, col]))


def _rows(page) -> list[str]:
    return page.evaluate("""() => Array.from(document.querySelector("[data-testid='stPlotlyChart'] .js-plotly-plot")
                                  ._fullLayout.yaxis.ticktext)""")


def _selected(page) -> list[str]:
    box = page.locator("[data-testid='stMultiSelect']").nth(1)  # after the form's metric picker
    return [t.strip() for t in box.locator(".react-aria-ComboBox [data-tag]").all_inner_texts()]


def _wait_selected(page, expected: list[str], timeout_s: float = 60) -> None:
    """Wait until the page's layer multiselect shows exactly ``expected`` (the sidebar count updates first)."""
    deadline = time.monotonic() + timeout_s
    while _selected(page) != expected:
        assert time.monotonic() < deadline, f"selected {_selected(page)}, expected {expected}"
        page.wait_for_timeout(250)
    _settle(page)


def _choose(page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()
    _settle(page)


def test_offline_default_from_setup_to_export(server, tmp_path):
    from dashboard import views

    url, runs_root = server
    with _opened(url, tmp_path) as page:
        # Setup: the offline default loads by itself and shows the real layer table of MobileNetV2
        assert page.locator("[data-testid='stMetricValue']").nth(1).inner_text() == "53"
        assert "ws=" in page.url  # the workspace is named in the URL
        _shot(page, "setup")

        # Diagnose: run, then click one cell: exactly that layer is selected
        _first_diagnosis(page)
        page.locator("[data-testid='stPlotlyChart']").first.scroll_into_view_if_needed()
        rows = _rows(page)
        target = rows.index("blocks.2.0.conv_pw")
        x, y = _cell(page, target, 1)
        page.mouse.move(x, y)
        page.mouse.click(x, y)
        _wait_selected(page, ["blocks.2.0.conv_pw"])

        # a box over the three convs of block 1.0 (expansion, depthwise, projection) with the toolbar's box tool
        page.locator("[data-testid='stPlotlyChart']").first.hover()
        page.locator("[data-testid='stPlotlyChart'] .modebar-btn[data-title*=Box]").first.click()
        first = rows.index("blocks.1.0.conv_pw")
        x0, y0 = _cell(page, first - 0.4, 0.6)
        x1, y1 = _cell(page, first + 2.4, 2.4)
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
        page.mouse.move(x1, y1, steps=5)
        page.mouse.up()
        selected = ["blocks.1.0.conv_pw", "blocks.1.0.conv_dw", "blocks.1.0.conv_pwl"]
        _wait_selected(page, selected)
        # checked against redo: the depthwise conv and the projection (no activation) cannot be recycled, and
        # the page says so next to the heatmap, with what would work instead
        _choose(page, "Strategy to check the selection against", "redo")
        page.wait_for_selector("text=redo acts on 1 of 3 selected layers")
        assert page.get_by_text("depthwise conv: its (C, 1, k, k) weight is not a C_out x C_in map").count() >= 1
        assert page.get_by_text("no explicit (in, out) unit pair", exact=False).count() >= 1
        page.evaluate("window.scrollTo(0, 0)")
        _shot(page, "diagnose")

        # Re-init: the selection fills the patterns; cbp with default maturity first (a no-op in a short run)
        _goto(page, "Re-init")
        page.wait_for_function("() => document.querySelector('textarea[aria-label=Include]')?.value.length > 0")
        assert page.get_by_label("Include").input_value().splitlines() == selected
        page.wait_for_selector("text=redo acts on 1 of 3 selected layers")  # the same check where the user looks
        _choose(page, "Strategy", "cbp")
        _settle(page)
        page.get_by_role("button", name="Preview").click()
        page.wait_for_selector("text=Preview: cbp")
        _settle(page)
        _goto(page, "Fine-tune")
        _set_number(page, "Steps", 16)
        page.wait_for_selector("text=/Arm cbp would change nothing: cbp maturity 1000 (>=|≥) the run's 16 steps/",
                               timeout=30_000)
        assert page.get_by_role("button", name="Launch").is_disabled()
        _shot(page, "finetune_refused")

        # FIRE on the same selection: the depthwise conv is skipped, with the reason, before and after Preview
        _goto(page, "Re-init")
        _choose(page, "Strategy", "fire")
        page.wait_for_selector("text=fire acts on 2 of 3 selected layers")
        _settle(page)  # no rerun still running when Preview is pressed (a click during one was lost once in CI)
        page.get_by_role("button", name="Preview").click()
        page.wait_for_selector("text=Preview: fire")
        _settle(page)
        assert page.get_by_text("1 selected layer(s) left alone by fire:").count() == 1
        _shot(page, "reinit")

        # Fine-tune: baseline vs FIRE, a few steps on a small subset; the form kept its values
        _goto(page, "Fine-tune")
        assert page.get_by_label("Steps", exact=True).input_value() == "16"
        _set_number(page, "Eval every", 4)
        _set_number(page, "Data limit (0 = all)", 200)
        page.get_by_role("button", name="Launch").click()
        page.wait_for_selector("[data-testid='stPlotlyChart'] .scatterlayer .trace", timeout=180_000)
        assert any(s in ("queued", "running") for s in _statuses(runs_root)), "curves appeared only after the end"
        page.wait_for_selector("text=/[0-9]+/16/", state="attached")  # per-run progress (a canvas grid)
        _shot(page, "finetune_live")

        # a reload mid-run: the workspace comes back from the URL (setup, selection, preview, form values)
        live_url = page.url
        page.reload()
        page.wait_for_selector("h1:has-text('Fine-tune')")
        _settle(page)
        assert page.url == live_url
        assert any(s in ("queued", "running") for s in _statuses(runs_root)), "the runs ended before the reload"
        assert page.get_by_text("Selected layers: 3").count() == 1
        assert page.get_by_text("bundled:mobilenetv2_100").count() >= 1
        assert page.get_by_label("Steps", exact=True).input_value() == "16"
        page.wait_for_selector("text=Comparison", timeout=240_000)
        _settle(page)
        assert sorted(_statuses(runs_root)) == ["finished", "finished"]
        _shot(page, "finetune")
        _goto(page, "Re-init")
        page.wait_for_selector("text=Preview: fire")  # restored, not recomputed

        # Export: the downloaded YAML lists touched and skipped layers apart; the command parses back exactly
        _goto(page, "Export")
        with page.expect_download() as info:
            page.get_by_role("button", name="reinit_config.yaml").click()
        cfg = pc.ReinitConfig.from_yaml(Path(info.value.path()).read_text())
        assert cfg.strategy == "fire" and cfg.layers == selected
        assert cfg.resolved_layers == ["blocks.1.0.conv_pw", "blocks.1.0.conv_pwl"]
        assert list(cfg.skipped_layers) == ["blocks.1.0.conv_dw"]
        command = page.locator("[data-testid='stCode']", has_text="plasticity reinit").first.inner_text().strip()
        setup = {"backbone": "bundled:mobilenetv2_100", "pretrained": True, "arch": "",
                 "data": "bundled:animal-silhouettes", "image_size": 64, "limit": 0}
        assert shlex.split(command) == views.reinit_argv(setup, 10)
        _shot(page, "export")


def _charts_with_data(page) -> int:
    """Plotly charts on screen that drew at least one trace or heatmap."""
    return page.evaluate("""() => Array.from(document.querySelectorAll("[data-testid='stPlotlyChart'] .js-plotly-plot"))
        .filter(gd => gd.offsetParent !== null
                      && (gd._fullData || []).some(t => (t.y && t.y.length) || (t.z && t.z.length)))
        .length""")


def _tall_shot(page, name: str) -> None:
    """A screenshot of the whole page: the viewport grown to the app's scroll height (Streamlit scrolls inside)."""
    height = page.evaluate("() => document.querySelector(\"[data-testid='stMain']\").scrollHeight")
    page.set_viewport_size({"width": 1500, "height": min(int(height) + 40, 6000)})
    page.wait_for_timeout(1500)  # images and charts below the old fold load now
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    page.wait_for_timeout(1000)
    _shot(page, name)
    page.set_viewport_size({"width": 1500, "height": 1400})


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(800)
    _settle(page)


def test_run_views_samples_topk_and_history(server, tmp_path):
    """Issue 21's views on real data: Setup's sample grid and class counts; Diagnose's top-k and history; the
    Fine-tune page's curves (smoothing, downloads, tensorboard line), per-layer snapshots over training (arm and
    arm - baseline) and the run table, on runs of the real loop that recorded snapshots. Fails if a view is empty."""
    url, runs_root = server
    fire = pc.ReinitConfig(strategy="fire", layers=["blocks.5.*"])
    experiment = pc.ExperimentConfig(
        name="views", data_limit=200, arms={"baseline": None, "fire": fire}, seeds=[0],
        finetune=pc.FinetuneConfig(steps=12, batch_size=16, eval_every=4, image_size=64, device="cpu", warmup_steps=1,
                                   diagnose_every=4, diagnose_metrics=["dormant", "dead", "saturation", "sfe_rel"]))
    runs = pc.run_experiment(experiment, pc.RunStore(runs_root))
    assert {r.status for r in runs} == {"finished"}, [r.summary().get("reason") for r in runs]
    snapshot_steps = sorted({e["step"] for e in runs[0].events("diagnosis")})
    assert snapshot_steps == [4, 8, 12]
    with _opened(url, tmp_path) as page:
        # Setup: 8 sample images for each of the 10 classes and the per-class counts
        page.get_by_role("heading", name="Target data", exact=True).scroll_into_view_if_needed()
        page.wait_for_function("() => document.querySelectorAll(\"img[src*='/media/']\").length >= 80",
                               timeout=60_000)  # the grid's images arrive one by one
        assert page.get_by_text("Images per class in each split.").count() == 1
        _tall_shot(page, "setup_data")

        # Diagnose twice: the top-k table and the comparison of the two kept diagnoses
        _first_diagnosis(page)
        page.get_by_role("button", name="Run diagnosis").click()  # a second one: both kept, comparable
        page.get_by_role("combobox", name="Before", exact=True).wait_for(timeout=180_000)
        _settle(page)
        page.get_by_role("heading", name="Top layers by a metric", exact=True).scroll_into_view_if_needed()
        assert page.get_by_text("Metric to rank by").count() == 1
        _shot(page, "diagnose_topk_history")

        # Fine-tune: the experiment above, curves first
        _goto(page, "Fine-tune")
        page.wait_for_selector("text=Run table")
        _settle(page)
        page.wait_for_selector("[data-testid='stPlotlyChart'] .scatterlayer .trace")
        assert _charts_with_data(page) == 5  # val acc, loss, val loss, lr, images/s
        command = page.locator("[data-testid='stCode']", has_text="tensorboard --logdir").first.inner_text().strip()
        assert shlex.split(command) == ["tensorboard", "--logdir", str(runs_root)]
        with page.expect_download() as info:
            page.locator(".st-key-dl_curves_csv button").first.click()
        import pandas as pd

        plotted = pd.read_csv(info.value.path())
        assert set(plotted["metric"]) == {"val_acc", "loss", "val_loss", "lr", "images_per_s"}
        assert len(plotted[plotted["metric"] == "val_acc"]) == 2 * len(runs[0].events("eval"))
        _shot(page, "finetune_curves")

        _tab(page, "Layers over training")
        page.wait_for_selector(".heatmaplayer")
        assert _charts_with_data(page) == 3  # baseline, fire, fire - baseline
        assert page.get_by_text("No per-layer snapshots").count() == 0
        _shot(page, "finetune_layers")

        _tab(page, "Run table")
        assert page.locator("[data-testid='stCaptionContainer']", has_text="arm.strategy").count() >= 1
        _shot(page, "finetune_runs")
