"""The visitor profile on real chDB: exact values for a known sequence of visits, only with
personalisation granted, brief caching, blocked visitors excluded, and its cost per call."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from consentmw.collect.hit import Hit
from consentmw.core.consent import COOKIE_NAME
from consentmw.rights.profile import Profile, get_profile

from tests.collect.test_enrichment import make_mmdb
from tests.conftest import BROWSER_UA

IP = "81.2.69.160"


def app() -> Starlette:
    async def for_you(request: Request) -> JSONResponse:
        profile = await get_profile(request)
        return JSONResponse(profile.to_json() if profile else None)

    async def for_you_state(request: Request) -> JSONResponse:
        # The documented accessor, used as documented: it exists for every visitor.
        profile = await request.state.consent_profile()
        return JSONResponse(profile.to_json() if profile else None)

    return Starlette(routes=[Route("/for-you", for_you), Route("/for-you-state", for_you_state)])


def client(mw: Any, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=mw, client=(IP, 50123))
    return httpx.AsyncClient(transport=transport, base_url="http://site.test",
                             headers={"user-agent": BROWSER_UA, "accept-language": "en", **headers})


async def grant(c: httpx.AsyncClient, body: dict[str, Any]) -> tuple[str, str | None]:
    r = await c.post("/_consent/choice", json=body)
    assert r.status_code == 200, r.text
    parts = c.cookies[COOKIE_NAME].split(".")[0].split("~")
    return parts[1], None if parts[6] == "-" else parts[6]


def visit(mw: Any, ts: float, path: str, cid: str, vid: str, lang: str = "en-GB", referrer: str = "",
          campaign: dict[str, str] | None = None) -> None:
    mw.collector.submit(Hit(ts, "pageview", "site.test", path, cid, mw.policy.version,
                            frozenset({"statistics", "personalisation"}), vid, IP, "", BROWSER_UA, lang,
                            referrer, campaign, 200, 12))


async def test_profile_values_are_exact_for_a_known_sequence(tmp_path: Path, make_app: Any) -> None:
    mw = make_app(app(), geoip_db=str(make_mmdb(tmp_path / "geo.mmdb")))
    day0 = (int(time.time()) // 86400 - 3) * 86400
    async with client(mw) as c:
        cid, vid = await grant(c, {"all": True})
        assert vid
        visit(mw, day0 + 10 * 3600, "/articles/a", cid, vid, referrer="https://www.google.com/search?q=x")
        visit(mw, day0 + 10 * 3600 + 300, "/articles/b", cid, vid)
        visit(mw, day0 + 86400 + 9 * 3600, "/articles/a", cid, vid)
        visit(mw, day0 + 86400 + 9 * 3600 + 1800, "/news/x?utm_source=mail", cid, vid, lang="ru")
        visit(mw, day0 + 3 * 86400 + 8 * 3600, "/about", cid, vid, lang="")
        mw.collector.flush()
        r = await c.get("/for-you")
    assert r.status_code == 200
    data = r.json()
    utc = dt.timezone.utc
    assert data == {
        "visitor_id": vid, "site": "site.test",
        "first_seen": dt.datetime.fromtimestamp(day0 + 10 * 3600, utc).isoformat().replace("+00:00", "Z"),
        "last_seen": dt.datetime.fromtimestamp(day0 + 3 * 86400 + 8 * 3600, utc).isoformat().replace("+00:00", "Z"),
        "visits": 3, "pageviews": 5,
        "recent_pages": ["/about", "/news/x?utm_source=mail", "/articles/a", "/articles/b"],
        "top_pages": [["/articles/a", 2], ["/about", 1], ["/articles/b", 1], ["/news/x?utm_source=mail", 1]],
        "recent_sections": ["/about", "/news", "/articles"],
        "top_sections": [["/articles", 3], ["/about", 1], ["/news", 1]],
        "language": "ru", "country": "GB", "city": "London", "device": "desktop", "first_source": "Google",
    }


async def test_profile_is_none_unless_personalisation_is_granted(make_app: Any) -> None:
    mw = make_app(app())
    for route in ("/for-you", "/for-you-state"):
        async with client(mw) as anonymous:
            r = await anonymous.get(route)
            assert r.status_code == 200 and r.json() is None
        async with client(mw) as stats_only:
            cid, vid = await grant(stats_only, {"granted": ["statistics"]})
            assert vid is None
            r = await stats_only.get(route)
            assert r.status_code == 200 and r.json() is None
        async with client(mw) as everything:
            cid, vid = await grant(everything, {"all": True})
            visit(mw, time.time(), "/articles/a", cid, vid)
            mw.collector.flush()
            assert (await everything.get(route)).json()["pageviews"] == 1
            # Global Privacy Control narrows an older choice: personalisation is off, so no profile.
            assert (await everything.get(route, headers={"sec-gpc": "1"})).json() is None
            # Withdrawal: no visitor id any more.
            assert (await everything.request("DELETE", "/_consent/choice")).status_code == 200
            assert (await everything.get(route)).json() is None


async def test_profile_is_cached_briefly_and_hides_blocked_visitors(make_app: Any) -> None:
    mw = make_app(app())
    profiles = mw.api.profiles
    async with client(mw) as c:
        cid, vid = await grant(c, {"all": True})
        state = mw.codec.decode(c.cookies[COOKIE_NAME])
        fresh = await profiles.get(state)
        assert fresh == Profile(vid) and fresh.visits == 0  # granted, nothing stored yet
        visit(mw, time.time(), "/articles/a", cid, vid)
        mw.collector.flush()
        loads = profiles.loads
        # still the cached copy (no new load), with the visitor's own queued view merged in
        assert (await profiles.get(state)).pageviews == 1
        assert profiles.loads == loads
        profiles.ttl = 0.0
        assert (await profiles.get(state)).pageviews == 1  # stored now: not counted twice
        assert profiles.loads == loads + 1
        profiles.ttl = 5.0
        assert (await c.post("/_consent/me/block")).status_code == 200
        assert await profiles.get(state) is None
        assert (await c.post("/_consent/me/unblock")).status_code == 200
        assert (await profiles.get(state)).pageviews == 1


async def test_profile_cost_per_call(make_app: Any, ch: Any, database: str) -> None:
    """Cold (one aggregate look-up) and cached cost on chDB, with 20k visitors / 200k page views stored."""
    mw = make_app(app())
    profiles = mw.api.profiles
    mw.collector.sink.client()
    ch.command(
        f"INSERT INTO {database}.events_personalisation (event_id, ts, site, event_type, consent_id, policy_version, "
        "path, visitor_id, language, country, city, device) "
        "SELECT generateUUIDv4(), now64(3) - number * 7, 'site.test', 'pageview', concat('c', toString(number % 20000)), "
        "'v', concat('/s', toString(number % 7), '/p', toString(number % 97)), concat('v', toString(number % 20000)), "
        "'en', 'GB', 'London', 'desktop' FROM numbers(200000)")
    from consentmw.core.consent import ConsentState

    def state(i: int) -> ConsentState:
        return ConsentState(id=f"c{i}", granted=frozenset({"necessary", "personalisation"}),
                            policy_version=mw.policy.version, visitor_id=f"v{i}")

    await profiles.get(state(0))  # warm up the connection and the blocklist
    cold = []
    for i in range(1, 41):
        t = time.perf_counter()
        p = await profiles.get(state(i))
        cold.append(time.perf_counter() - t)
        assert p is not None and p.pageviews == 10
    t = time.perf_counter()
    for _ in range(2000):
        await profiles.get(state(1))
    cached = (time.perf_counter() - t) / 2000
    cold.sort()
    median, p95 = cold[len(cold) // 2], cold[int(len(cold) * 0.95)]
    print(f"\nprofile() on chDB, 20k visitors / 200k rows: cold median {median * 1e3:.2f} ms, "
          f"p95 {p95 * 1e3:.2f} ms; cached {cached * 1e6:.1f} µs per call")
    assert cached < 1e-3 and median < 0.5


def pages_app() -> Starlette:
    async def page(request: Request) -> Any:
        from starlette.responses import HTMLResponse
        status = 404 if request.url.path.startswith("/nope") else 200
        return HTMLResponse(f"<html><body>{request.url.path}</body></html>", status_code=status)

    async def for_you(request: Request) -> JSONResponse:
        profile = await get_profile(request)
        return JSONResponse(profile.to_json() if profile else None)

    return Starlette(routes=[Route("/for-you", for_you), Route("/{path:path}", page)])


async def test_a_visitor_sees_their_own_latest_views_at_once(make_app: Any) -> None:
    """No 5 s wait: the views just queued (not yet written) are in the profile at once,
    error pages are not, and once written they are not counted twice."""
    mw = make_app(pages_app(), flush_interval=60.0)  # the writer does not flush by itself
    profiles = mw.api.profiles
    async with client(mw) as c:
        await grant(c, {"all": True})
        assert (await c.get("/for-you")).json()["pageviews"] == 0  # loaded and cached: empty
        await c.get("/articles/a")
        await c.get("/nope/")
        await c.get("/news/b")
        mine = (await c.get("/for-you")).json()
        assert mine["recent_pages"] == ["/news/b", "/articles/a"]
        assert mine["pageviews"] == 2 and mine["visits"] == 1
        assert dict(map(tuple, mine["top_sections"])) == {"/news": 1, "/articles": 1}
        mw.collector.flush()
        profiles.ttl = 0.0  # reload from the store: the same profile, nothing doubled
        stored = (await c.get("/for-you")).json()
        assert stored["recent_pages"] == ["/news/b", "/articles/a"] and stored["pageviews"] == 2
        # another visitor sees none of it
    async with client(mw) as other:
        await grant(other, {"all": True})
        assert (await other.get("/for-you")).json()["pageviews"] == 0


async def test_demo_never_recommends_the_page_being_read(chdb_dsn: str, database: str, tmp_path: Path) -> None:
    from consentmw.demo import ARTICLES, create_app

    demo = create_app(dsn=chdb_dsn, database=database, spool_dir=str(tmp_path / "spool"), flush_interval=60.0)
    try:
        transport = httpx.ASGITransport(app=demo, client=(IP, 50123))
        async with httpx.AsyncClient(transport=transport, base_url="http://site.test",
                                     headers={"user-agent": BROWSER_UA}) as c:
            await grant(c, {"all": True})
            slugs = list(ARTICLES)
            await c.get(f"/articles/{slugs[0]}")
            html = (await c.get(f"/articles/{slugs[1]}")).text  # first page view already in the profile
            block = html.split('id="recommended"', 1)[1].split("</div>", 1)[0]
            assert "Recommended for you" in block
            assert f"/articles/{slugs[1]}" not in block and f"/articles/{slugs[0]}" not in block
            assert f"/articles/{slugs[2]}" in block
    finally:
        demo.collector.stop()
