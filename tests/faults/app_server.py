"""The site the subprocess fault tests run under uvicorn: configured only from the environment
(CONSENTMW_SECRET_KEY, CONSENTMW_CLICKHOUSE_DSN, CONSENTMW_SPOOL_DIR, CONSENTMW_ADMIN_TOKEN),
plus a few test knobs (CMWTEST_*) for the flush interval and queue size.

    python -m uvicorn --app-dir tests/faults app_server:app --port 8123
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from consentmw import ConsentMiddleware


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(f"<html><body>{request.state.consent.allows('statistics')}</body></html>")


app = ConsentMiddleware(
    Starlette(routes=[Route("/", page), Route("/articles/{slug}", page)]),
    flush_interval=float(os.environ.get("CMWTEST_FLUSH", "0.5")),
    queue_size=int(os.environ.get("CMWTEST_QUEUE", "100000")),
    collect_rate=1e6, collect_burst=1_000_000,
)
