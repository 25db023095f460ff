"""A site whose consentmw-wrapped app lives below a path, two ways: mounted at /shop in a
Starlette app (`mounted_app`), or served whole with `uvicorn --root-path /shop` (`inner`).
Run by tests as a real uvicorn subprocess through `create`."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Mount, Route

from consentmw import ConsentMiddleware


async def page(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    consent = request.state.consent
    return HTMLResponse(f"<!doctype html><html lang='en'><head><title>shop</title><link rel='icon' href='data:,'>"
                        f"<script src='{root}/_consent/banner.js' defer></script></head>"
                        f"<body><h1>shop page</h1><p id='granted'>{','.join(sorted(consent.granted))}</p>"
                        f"<p id='path'>{request.url.path}</p></body></html>")


def inner() -> ConsentMiddleware:
    return ConsentMiddleware(Starlette(routes=[Route("/", page), Route("/items/{name}", page)]),
                             flush_interval=0.2)


async def outer_home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("outer site")


def mounted_app() -> Starlette:
    return Starlette(routes=[Route("/", outer_home), Mount("/shop", app=inner())])


def create() -> Starlette | ConsentMiddleware:
    """`uvicorn --factory tests.mounted_site:create`: settings from CONSENTMW_* variables."""
    return mounted_app() if os.environ.get("CONSENTMW_TEST_MOUNT") else inner()
