"""What ConsentMiddleware costs a request, next to a bare app and other middleware.

Drives each variant in-process (no sockets, no HTTP parsing): the ASGI app is called
directly with a prepared scope, `receive` and `send`, many times per repeat, and repeats
are interleaved across variants so a noisy machine slows them all alike. Reports the
median over repeats of µs per request and the ratio to the bare app.

    .venv/bin/python benchmarks/bench_middleware.py [--requests 2000] [--repeats 9]

Variants
  bare                Starlette, one route answering a small HTML page
  session             + starlette SessionMiddleware, request carrying a valid session cookie
  api-analytics       + api-analytics' Starlette/FastAPI middleware (BaseHTTPMiddleware),
                      server_url=None so it never posts anywhere
  consent, no cookie  + ConsentMiddleware, visitor without a consent cookie
  consent, cookie     + ConsentMiddleware, valid cookie granting every purpose, collection on:
                      every request captures a page view into the bounded queue; the writer
                      thread minimises, enriches and inserts into an embedded chDB meanwhile
  consent + writer    the same requests, adding the wall time to drain what the writer had
                      not yet stored when the timed loop ended (the full cost of collection)
  consent, collect=False  ConsentMiddleware with a valid cookie but capture disabled:
                      isolates the consent-state part of the cost from the capture part
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from itsdangerous import TimestampSigner  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.middleware.sessions import SessionMiddleware  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import HTMLResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from consentmw import ConsentMiddleware  # noqa: E402

SECRET = "benchmark-secret-key-0123456789abcdef"
UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
      "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36")
PAGE = "<!doctype html><html><head><title>Hello</title></head><body><h1>Hello, world</h1></body></html>"

GOAL = 1.3
ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def hello_app() -> Starlette:
    async def home(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE)

    return Starlette(routes=[Route("/", home)])


def base_scope(cookie: bytes | None) -> dict[str, Any]:
    headers = [
        (b"host", b"www.example.com"),
        (b"user-agent", UA.encode()),
        (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        (b"accept-language", b"en-GB,en;q=0.9,ru;q=0.8"),
        (b"accept-encoding", b"gzip, deflate, br"),
        (b"referer", b"https://search.example.org/?q=hello"),
    ]
    if cookie:
        headers.append((b"cookie", b"theme=dark; " + cookie))
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "GET", "scheme": "https", "path": "/", "raw_path": b"/", "root_path": "",
            "query_string": b"", "headers": headers, "client": ("203.0.113.9", 51234),
            "server": ("www.example.com", 443)}


def session_cookie() -> bytes:
    """A valid Starlette session cookie (same format SessionMiddleware writes)."""
    data = base64.b64encode(json.dumps({"user": "alice", "cart": [1, 2, 3]}).encode())
    return b"session=" + TimestampSigner(SECRET).sign(data)


class Variant:
    def __init__(self, name: str, app: ASGIApp, cookie: bytes | None, note: str = "") -> None:
        self.name = name
        self.app = app
        self.scope = base_scope(cookie)
        self.note = note
        self.times: list[float] = []
        self.wall: list[float] = []
        self.with_drain: list[float] = []
        self.consent: ConsentMiddleware | None = None
        self.max_queue = 0


async def check(v: Variant) -> None:
    """One request outside timing: the variant answers 200 with the page."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await v.app({**v.scope, "state": {}}, receive, send)
    assert sent[0]["status"] == 200, (v.name, sent[0])
    assert PAGE.encode() in b"".join(m.get("body", b"") for m in sent[1:]), v.name


async def timed(v: Variant, n: int) -> tuple[float, float]:
    """Wall time and the event-loop thread's own CPU time for n requests.

    The CPU time is what the request path costs: unlike the wall time it does not grow
    while other processes on a shared machine (or our own writer thread) hold the CPU.
    """
    app, scope = v.app, v.scope

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        return None

    start, cpu = time.perf_counter(), time.thread_time()
    for _ in range(n):
        # What a server does per request: a fresh scope with a shallow copy of lifespan state.
        await app({**scope, "state": {}}, receive, send)
    return time.perf_counter() - start, time.thread_time() - cpu


def build(tmp: Path) -> tuple[list[Variant], list[ConsentMiddleware], str]:
    variants = [Variant("bare Starlette", hello_app(), None)]

    session_app = SessionMiddleware(hello_app(), secret_key=SECRET)
    variants.append(Variant("+ SessionMiddleware (valid session)", session_app, session_cookie()))

    analytics_note = ""
    try:
        from api_analytics.fastapi import Analytics, Config
        analytics = Analytics(hello_app(), api_key="bench-offline-key", config=Config(server_url=None))
        variants.append(Variant("+ api-analytics (server_url=None)", analytics, None))
    except ImportError as exc:
        analytics_note = f"api-analytics not measured: {exc} (pip install api-analytics)"

    dsn = f"chdb://{tmp / 'chdb'}"
    common = dict(secret_key=SECRET, clickhouse_dsn=dsn, spool_dir=str(tmp / "spool"), flush_interval=0.5)
    no_cookie = ConsentMiddleware(hello_app(), **common)
    variants.append(Variant("+ ConsentMiddleware, no consent cookie", no_cookie, None))

    full = ConsentMiddleware(hello_app(), **common)
    value, _ = full.codec.issue(full.policy.ids, visitor_id="benchVisitor0001")
    v = Variant("+ ConsentMiddleware, consent cookie, collecting", full, b"consentmw=" + value.encode())
    v.consent = full
    variants.append(v)

    state_only = ConsentMiddleware(hello_app(), **{**common, "collect": False})
    variants.append(Variant("+ ConsentMiddleware, consent cookie, collect=False", state_only,
                            b"consentmw=" + value.encode()))
    return variants, [no_cookie, full, state_only], analytics_note


async def main_async(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="consentmw-bench-"))
    variants, middlewares, analytics_note = build(tmp)
    full = next(v.consent for v in variants if v.consent is not None)
    assert full is not None
    # Connect and migrate before timing (a server does this at startup).
    full.collector.start()
    full.collector.sink.client()
    try:
        for v in variants:
            await check(v)
        for v in variants:  # warm-up: caches, code paths, the writer's first batches
            await timed(v, max(200, args.requests // 10))
        full.collector.flush()

        for r in range(args.repeats):
            order = variants if r % 2 == 0 else list(reversed(variants))
            for v in order:
                gc.collect()
                elapsed, cpu = await timed(v, args.requests)
                v.times.append(cpu / args.requests * 1e6)
                v.wall.append(elapsed / args.requests * 1e6)
                if v.consent is not None:
                    writer = v.consent.collector.writer
                    v.max_queue = max(v.max_queue, len(writer.queue) + len(writer.overflow))
                    # Drain what the writer has not stored yet, inside this variant's account,
                    # so no other variant is measured while it catches up.
                    t = time.perf_counter()
                    v.consent.collector.flush()
                    v.with_drain.append((elapsed + time.perf_counter() - t) / args.requests * 1e6)

        stats = full.collector.stats
        t = time.perf_counter()
        for mw in middlewares:
            mw.collector.stop()
        drain_ms = (time.perf_counter() - t) * 1000
        stored_rows = full.collector.sink.query(
            "SELECT count() FROM consentmw.events_statistics").result_rows[0][0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    bare_times = variants[0].times

    def ratio(times: list[float], base: list[float] = bare_times) -> float:
        """Median of per-repeat ratios: each repeat compares variants run moments apart,
        so a machine shared with other work skews the ratio far less than the µs."""
        return statistics.median(t / b for t, b in zip(times, base))

    rows: list[tuple[str, float, float, float]] = []
    for v in variants:
        rows.append((v.name, statistics.median(v.times), ratio(v.times), ratio(v.wall, variants[0].wall)))
        if v.with_drain:
            rows.append(("    … incl. writer (drained each repeat, wall)", statistics.median(v.with_drain),
                         ratio(v.with_drain, variants[0].wall), ratio(v.with_drain, variants[0].wall)))

    print(f"\n=== ConsentMiddleware request cost: in-process ASGI, {args.requests} requests x {args.repeats} repeats (interleaved), "
          f"Python {sys.version.split()[0]}")
    width = max(len(r[0]) for r in rows)
    print(f"{'variant':<{width}}  {'CPU µs/request':>14}  {'x bare':>7}  {'wall x bare':>11}   (min..max µs of repeats)")
    it = iter(variants)
    for name, med, x_bare, x_wall in rows:
        if not name.startswith("    "):
            v = next(it)
            spread = f"({min(v.times):.1f}..{max(v.times):.1f})"
        else:
            spread = f"({min(v.with_drain):.1f}..{max(v.with_drain):.1f})"
        print(f"{name:<{width}}  {med:>14.1f}  {x_bare:>6.2f}x  {x_wall:>10.2f}x   {spread}")
    if analytics_note:
        print(analytics_note)

    def ratio_of(prefix: str) -> float:
        return ratio(next(v for v in variants if v.name.startswith(prefix)).times)

    session = ratio_of("+ SessionMiddleware")
    consent = ratio_of("+ ConsentMiddleware, consent cookie, collecting")
    full_row = ratio(next(v for v in variants if v.consent is not None).with_drain, variants[0].wall)
    consent_wall = ratio(next(v for v in variants if v.consent is not None).wall, variants[0].wall)
    print()
    print(f"collector: accepted {stats.accepted}, stored {stats.stored} rows "
          f"({stored_rows} in events_statistics), spooled {stats.spooled}, dropped {stats.dropped}; "
          f"max queue depth at the end of a timed loop {next(v for v in variants if v.consent).max_queue}; "
          f"final drain {drain_ms:.0f} ms")
    goal1 = consent < session
    goal2 = consent <= GOAL
    print(f"goal: ConsentMiddleware(consent) < SessionMiddleware: {consent:.2f}x vs {session:.2f}x bare -> "
          f"{'met' if goal1 else 'MISSED'}")
    print(f"goal: full collection <= {GOAL}x bare (request path, CPU time): {consent:.2f}x -> "
          f"{'met' if goal2 else 'MISSED'}; wall time {consent_wall:.2f}x; including the writer's work: {full_row:.2f}x")
    return 0 if goal1 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests per variant per repeat")
    parser.add_argument("--repeats", type=int, default=21, help="interleaved repeats (median reported)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (100 requests, 3 repeats)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.repeats = 100, 3
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
