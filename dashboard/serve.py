"""The dashboard as an ASGI app (``st.App``): ``plasticity dashboard`` runs ``streamlit run dashboard/serve.py``.

Streamlit's config has no option for response headers (streamlit#9160); ``st.App`` takes Starlette middleware, the
documented way to add them. ``FrameGuard`` forbids framing the page on another site (clickjacking): every response
carries ``Content-Security-Policy: frame-ancestors 'none'`` and ``X-Frame-Options: DENY``. Run ``app.py`` directly
(``streamlit run dashboard/app.py``) and the page has no such header.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware

FRAME_HEADERS = ((b"content-security-policy", b"frame-ancestors 'none'"), (b"x-frame-options", b"DENY"))


class FrameGuard:
    """ASGI middleware: the frame headers on every HTTP response (pages, static files, health)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message.get("type") == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *((k, v) for k, v in FRAME_HEADERS if k not in names)]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


app = st.App(str(Path(__file__).resolve().parent / "app.py"), middleware=[Middleware(FrameGuard)])
