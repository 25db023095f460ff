"""The store is down (refused, silent, HTTP 500/503): the site starts and serves, events
spool, and replay into a healthy store later stores each exactly once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from consentmw import ConsentMiddleware

from tests.conftest import SECRET, site_app

from .helpers import (ErrorServer, FlakySink, SilentServer, Store, asgi_call, beacon_headers, closed_port,
                      collector, events_body)

# Whole seconds: clickhouse-connect truncates timeouts to int (0.5 s would become an invalid 0).
FAST = {"connect_timeout": 1, "send_receive_timeout": 1}


@pytest.fixture(params=["refused", "silent", "http500", "http503"])
def down_dsn(request: pytest.FixtureRequest) -> Any:
    kind = request.param
    server: Any = None
    if kind == "refused":
        port = closed_port()
    elif kind == "silent":
        server = SilentServer()
        port = server.port
    else:
        server = ErrorServer(int(kind[4:]))
        port = server.port
    yield kind, f"http://127.0.0.1:{port}", server
    if server is not None:
        server.close()


def test_store_down_spools_then_replays(down_dsn: tuple[str, str, Any], tmp_path: Any, store: Store) -> None:
    kind, dsn, server = down_dsn
    site = f"{kind}.down.test"
    spool_dir = str(tmp_path / "spool")
    started = time.monotonic()
    col = collector(sink_kwargs=FAST, clickhouse_dsn=dsn, database=store.database, spool_dir=spool_dir)
    mw = ConsentMiddleware(site_app(), secret_key=SECRET, clickhouse_dsn=dsn, database=store.database,
                           spool_dir=spool_dir, collector=col, flush_interval=0.1)
    assert time.monotonic() - started < 1.0, "building the app must not wait for the store"
    cookie, _ = mw.codec.issue({"statistics"})
    acked = 0
    worst = 0.0

    async def traffic() -> None:
        nonlocal acked, worst
        for i in range(30):  # no lifespan: the first request starts the collector
            t = time.monotonic()
            status, body, _ = await asgi_call(mw, "POST", "/_consent/collect",
                                              beacon_headers(cookie, site), events_body(10, str(i)))
            assert status == 202, body
            acked += 10
            status, _, _ = await asgi_call(mw, "GET", f"/articles/{i}", beacon_headers(cookie, site))
            assert status == 200
            acked += 1
            worst = max(worst, time.monotonic() - t)
            await asyncio.sleep(0.01)

    asyncio.run(traffic())
    assert worst < 0.5, f"a request waited {worst:.2f}s on a dead store"
    time.sleep(0.3)
    t = time.monotonic()
    col.stop()
    assert time.monotonic() - t < 5.5
    stats = col.stats
    assert stats.accepted == acked == 330
    assert stats.stored == 0 and stats.dropped == 0
    assert stats.spooled == acked, stats.as_dict()
    assert col.spool.pending() and not stats.sink_healthy and stats.insert_failures >= 1
    if kind.startswith("http"):
        assert server.requests, "the fake server was really asked"
    elif kind == "silent":
        assert server.conns, "the silent server really accepted connections"
    expected = {"refused": "failed to establish a new connec", "silent": "timed out", "http500": "500", "http503": "503"}[kind]
    assert expected in stats.last_error.lower(), stats.last_error

    # A healthy store later (chDB, through the same API): the spool replays, once.
    healthy = store.collector(spool_dir=spool_dir)
    moved = healthy.replay()
    assert moved == acked
    assert store.count(site) == (acked, acked)
    assert not healthy.spool.pending() and healthy.spool.stats.corrupt == 0
    assert healthy.replay() == 0 and store.count(site) == (acked, acked)
    print(f"\n[{kind}] accepted={acked} spooled={stats.spooled} replayed={moved} stored={store.count(site)[0]} "
          f"distinct={store.count(site)[1]}")


def test_store_comes_back_while_running(tmp_path: Any, store: Store) -> None:
    """The background replayer drains the spool once the store answers again, no restart."""
    site = "back.test"
    spool_dir = str(tmp_path / "spool")
    col = collector(FlakySink, clickhouse_dsn=store.dsn, database=store.database, spool_dir=spool_dir)
    col.sink._client, col.sink._migrated = store.sink.client(), True  # skip a second migration
    mw = ConsentMiddleware(site_app(), secret_key=SECRET, database=store.database, spool_dir=spool_dir,
                           collector=col, clickhouse_dsn=store.dsn)
    cookie, _ = mw.codec.issue({"statistics"})
    col.start()

    async def send(n: int, tag: str) -> None:
        for i in range(n):
            status, _, _ = await asgi_call(mw, "POST", "/_consent/collect", beacon_headers(cookie, site),
                                           events_body(5, f"{tag}{i}"))
            assert status == 202

    asyncio.run(send(20, "down"))
    deadline = time.monotonic() + 5
    while col.stats.spooled < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert col.stats.spooled == 100 and col.stats.stored == 0 and col.stats.insert_failures >= 1
    col.sink.down.clear()
    asyncio.run(send(10, "up"))
    deadline = time.monotonic() + 40  # backoff is at most 30 s (+ jitter); usually ~1 s here
    while (col.stats.stored < 150 or col.spool.pending()) and time.monotonic() < deadline:
        time.sleep(0.1)
    col.stop()
    assert col.stats.replayed >= 100  # events sent before the first successful probe spool too
    assert store.count(site) == (150, 150)
    health = col.health()
    assert health["spool_segments"] == 0 and health["sink_healthy"] and health["dropped"] == 0
