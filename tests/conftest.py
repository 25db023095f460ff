"""Shared fixtures: one real chDB directory per test process (chDB allows one per process),
a fresh database per test, and apps wrapped in ConsentMiddleware."""

from __future__ import annotations

import uuid
from typing import Any, Callable

import clickhouse_connect
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route

from consentmw import ConsentMiddleware

# CI runs the property tests derandomised (the same examples every run, so a failure is
# reproducible): HYPOTHESIS_PROFILE=ci. Locally they explore new examples each run.
from hypothesis import settings as _hypothesis_settings
import os as _os

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
_hypothesis_settings.load_profile(_os.environ.get("HYPOTHESIS_PROFILE", "default"))

SECRET = "test-secret-key-0123456789abcdef"
BROWSER_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
              "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36")


@pytest.fixture(scope="session")
def chdb_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    return "chdb://" + str(tmp_path_factory.mktemp("chdb") / "data")


@pytest.fixture(scope="session")
def ch(chdb_dsn: str) -> Any:
    client = clickhouse_connect.get_client(dsn=chdb_dsn)
    yield client


@pytest.fixture
def database(ch: Any) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    yield name
    ch.command(f"DROP DATABASE IF EXISTS {name} SYNC")


def site_app() -> Starlette:
    async def page(request: Request) -> HTMLResponse:
        consent = request.state.consent
        return HTMLResponse(f"<html><body>stats={consent.allows('statistics')} "
                            f"granted={','.join(sorted(consent.granted))}</body></html>")

    async def data(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def text(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    return Starlette(routes=[Route("/", page), Route("/articles/{slug}", page), Route("/api/data", data),
                             Route("/static/app.css", text), Route("/plain", text)])


@pytest.fixture
def make_app(chdb_dsn: str, database: str, tmp_path: Any) -> Callable[..., ConsentMiddleware]:
    made: list[ConsentMiddleware] = []

    def factory(app: Any = None, **options: Any) -> ConsentMiddleware:
        options.setdefault("secret_key", SECRET)
        options.setdefault("clickhouse_dsn", chdb_dsn)
        options.setdefault("database", database)
        options.setdefault("spool_dir", str(tmp_path / "spool"))
        options.setdefault("flush_interval", 0.1)
        mw = ConsentMiddleware(app or site_app(), **options)
        made.append(mw)
        return mw

    yield factory
    for mw in made:
        mw.collector.stop()
