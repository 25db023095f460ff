"""Every cache on the request and writer path is bounded in bytes, not just in entries: keys
are capped in size (longer values are computed, not remembered) or the cache counts bytes.
The end-to-end number (RSS under 10,000 distinct 100 KB User-Agents) is benchmarks/bench_memory.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from consentmw import ConsentMiddleware, Policy
from consentmw.collect.hit import Hit
from consentmw.collect.referrer import _cached as referrer_cache, parse_referrer
from consentmw.collect.salt import DailySalts
from consentmw.collect.useragent import _parse_agent, parse_agent
from consentmw.rights.profile import ProfileService

from tests.conftest import BROWSER_UA, SECRET
from tests.faults.helpers import asgi_call
from tests.test_isolation import html_app


def test_user_agent_cache_keeps_no_oversized_string() -> None:
    before = _parse_agent.cache_info().currsize
    for i in range(50):
        assert parse_agent(f"{BROWSER_UA} {i} " + "x" * 100_000).is_bot
    assert _parse_agent.cache_info().currsize == before


def test_referrer_cache_keeps_no_long_referrer() -> None:
    before = referrer_cache.cache_info().currsize
    for i in range(50):
        assert parse_referrer(f"https://r{i}.test/" + "a" * 2000, "site.test").host == f"r{i}.test"
    assert referrer_cache.cache_info().currsize == before


def test_daily_visitor_codes_are_bounded_in_bytes() -> None:
    salts = DailySalts(max_bytes=64 * 1024)
    ts = time.time()
    codes = {}
    for i in range(2000):
        ua = f"{BROWSER_UA} {i} " + "y" * 400
        codes[i] = salts.visitor_hash(ts, "site.test", "203.0.113.9", ua)
        assert salts._code_bytes <= 64 * 1024
    assert len(salts._codes) < 200
    # forgetting a code never changes it: the same visitor gets the same code that day
    assert all(salts.visitor_hash(ts, "site.test", "203.0.113.9", f"{BROWSER_UA} {i} " + "y" * 400) == codes[i]
               for i in (0, 999, 1999))


def test_pending_profile_notes_are_bounded_in_bytes() -> None:
    profiles = ProfileService(None, Policy.default(), None, max_bytes=256 * 1024)  # type: ignore[arg-type]
    for i in range(3000):
        profiles.note(Hit(time.time(), "pageview", "site.test", f"/p/{i}/" + "z" * 1100, "c", "v",
                          frozenset({"personalisation"}), f"visitor{i % 700}", "", "", "", "", "", None, 200, 1))
        assert profiles._pending_bytes <= profiles.max_pending_bytes
    held = sum(len(p) + 100 for notes in profiles._pending.values() for _, p in notes)
    assert held == profiles._pending_bytes and profiles._pending


def test_path_decisions_are_remembered_only_for_short_paths(tmp_path: Any) -> None:
    mw = ConsentMiddleware(html_app, secret_key=SECRET, clickhouse_dsn="http://127.0.0.1:9",
                           spool_dir=str(tmp_path / "spool"))
    cookie, _ = mw.codec.issue({"statistics"})
    h = [(b"host", b"site.test"), (b"user-agent", BROWSER_UA.encode()), (b"cookie", b"consentmw=" + cookie.encode())]

    async def pages() -> None:
        for i in range(100):
            await asgi_call(mw, "GET", f"/long/{i}/" + "p" * 5000, h)
        await asgi_call(mw, "GET", "/short", h)

    asyncio.run(pages())
    mw.collector.stop(timeout=1)
    assert list(mw._wants_cache) == ["/short"]
    assert all(len(getattr(hit, "path", "")) <= 2048 for hit in mw.collector.writer.queue)
