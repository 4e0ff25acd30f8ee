"""The web pages: sign-in, the operations dashboard, the field agent's phone page and the
merchant's page. Plain HTML, CSS and JavaScript served by the fleet server itself, with Apache
ECharts from `static/vendor/` (fetched by `./dev` from the npm registry, pinned by
`web/package-lock.json`; nothing is loaded from the internet at run time).

The pages hold no data of their own: everything comes from the API with the session cookie,
and the API decides what each role may see. zh-CN first, English one tap away.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)

STATIC: Final = resources.files("fleet_server.http.web") / "static"
PAGES: Final = ("login", "ops", "agent", "merchant")
ECHARTS: Final = "vendor/echarts.min.js"
# Everything from this server; inline styles only because ECharts sets them on its elements.
_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
    " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS: Final = {
    b"content-security-policy": _CSP.encode(),
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"same-origin",
}


class SecurityHeaders:
    """Adds the headers above to every response (the API's too: a JSON answer is never framed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS.items() if k not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def charts_available() -> bool:
    return (STATIC / ECHARTS).is_file()


def mount(app: FastAPI) -> None:
    """Serve the pages and their assets on `app`."""
    if not charts_available():
        log.warning(
            "charting library missing: the dashboard shows figures without charts",
            missing=f"fleet_server/http/web/static/{ECHARTS}",
            fix="run ./dev demo or ./dev test once (npm ci in web/), or copy echarts.min.js there",
        )
    charts = f'<script src="/static/{ECHARTS}"></script>' if charts_available() else ""
    pages = {
        name: (STATIC / f"{name}.html").read_text(encoding="utf-8").replace("<!--charts-->", charts) for name in PAGES
    }
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_middleware(GZipMiddleware, minimum_size=1024)
    app.add_middleware(SecurityHeaders)

    @app.get("/", include_in_schema=False)
    async def home() -> Response:
        return RedirectResponse("/login", status_code=307)

    def page(name: str) -> None:
        html = pages[name]

        async def serve(_: Request) -> HTMLResponse:
            return HTMLResponse(html, headers={"cache-control": "no-store"})

        app.add_api_route(f"/{name}", serve, include_in_schema=False, methods=["GET"])

    for name in PAGES:
        page(name)
