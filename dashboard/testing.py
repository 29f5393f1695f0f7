"""Helpers for the dashboard's AppTest tests: the app with a tiny model and synthetic data preloaded."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).with_name("app.py"))
TINY_SETUP: dict[str, Any] = {
    "backbone": "timm:test_resnet", "pretrained": False, "arch": "",
    "data": "synthetic:classes=4,n=160,size=32", "image_size": 32, "limit": 0, "device": "cpu",
}


def tiny_app(timeout: float = 180) -> AppTest:
    """The app after its first run on Setup, which loads ``TINY_SETUP`` (timm test_resnet, synthetic 4 classes)."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.session_state["setup"] = dict(TINY_SETUP)
    return at.run()


def no_exception(at: AppTest) -> None:
    """Fail with the app's own messages when a page raised or showed an error."""
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def previewed(at: AppTest, strategy: str, pattern: str) -> AppTest:
    """Go to Re-init, choose ``strategy`` on the layers matching ``pattern`` and press Preview."""
    at.switch_page("app_pages/reinit.py").run()
    at.selectbox(key="w_strategy").set_value(strategy).run()
    at.text_area[0].set_value(pattern).run()
    at.button(key="btn_preview").click().run()
    return at
