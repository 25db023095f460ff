"""End to end through the middleware into real chDB: what is stored, where, and what never is."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import httpx
import pytest

from consentmw.core.consent import COOKIE_NAME
from consentmw.core.fields import BY_NAME

from tests.collect.test_enrichment import make_mmdb
from tests.conftest import BROWSER_UA

CLIENT_IP = "81.2.69.160"


def client(mw: Any, ip: str = CLIENT_IP, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=mw, client=(ip, 50123))
    return httpx.AsyncClient(transport=transport, base_url="http://site.test",
                             headers={"user-agent": BROWSER_UA, "accept-language": "kk-KZ,ru;q=0.8", **headers})


def rows(ch: Any, database: str, table: str) -> list[dict[str, Any]]:
    result = ch.query(f"SELECT * FROM {database}.{table} ORDER BY ts")
    return [dict(zip(result.column_names, row)) for row in result.result_rows]


def count(ch: Any, database: str, table: str) -> int:
    return ch.query(f"SELECT count() FROM {database}.{table}").result_rows[0][0]


async def choose(c: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await c.post("/_consent/choice", json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def test_nothing_is_stored_or_set_without_consent(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app()
    async with client(mw) as c:
        for path in ("/", "/articles/a?utm_source=x", "/articles/b"):
            r = await c.get(path, headers={"referer": "https://www.google.com/"})
            assert r.status_code == 200
            assert "set-cookie" not in r.headers
        r = await c.post("/_consent/collect", json={"events": [{"type": "vitals", "path": "/", "lcp": 10}]})
        assert r.status_code == 204
    mw.collector.flush()
    mw.collector.sink.client()
    assert count(ch, database, "events_statistics") == 0
    assert count(ch, database, "events_personalisation") == 0
    assert mw.collector.stats.accepted == 0


async def test_statistics_only_stores_only_statistics_columns(tmp_path: Path, make_app: Any, ch: Any,
                                                                database: str) -> None:
    mw = make_app(geoip_db=str(make_mmdb(tmp_path / "geo.mmdb")))
    async with client(mw) as c:
        state = await choose(c, {"granted": ["statistics"]})
        consent_id = state["consent"]["id"]
        r = await c.get("/articles/hello?utm_source=news&utm_campaign=winter&gclid=XYZ&email=me@x.test",
                        headers={"referer": "https://www.google.com/search?q=private"})
        assert "stats=True" in r.text
    mw.collector.flush()
    assert count(ch, database, "events_personalisation") == 0
    [row] = rows(ch, database, "events_statistics")
    assert row["event_type"] == "pageview" and row["path"] == "/articles/hello" and row["status"] == 200
    assert row["site"] == "site.test" and row["policy_version"] == mw.policy.version
    assert (row["utm_source"], row["utm_campaign"], row["click_id_type"]) == ("news", "winter", "gclid")
    assert (row["referrer_host"], row["referrer_source"]) == ("google.com", "Google")
    assert (row["browser"], row["os"], row["device"]) == ("Chrome", "Windows", "desktop")
    assert row["country"] == "GB"
    assert row["visitor_hash"] != 0 and row["duration_ms"] is not None
    # no stable identifiers in statistics: not the consent id, not the IP, not the full referrer, not the city
    assert row["consent_id"] and row["consent_id"] != consent_id
    for absent in ("ip", "visitor_id", "referrer", "city", "region", "language"):
        assert absent not in row
    assert not any(CLIENT_IP in str(v) or "private" in str(v) or "me@x.test" in str(v) for v in row.values())


async def test_all_purposes_store_per_purpose_rows(tmp_path: Path, make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(geoip_db=str(make_mmdb(tmp_path / "geo.mmdb")))
    async with client(mw) as c:
        await choose(c, {"all": True})
        cookie = c.cookies[COOKIE_NAME]
        visitor_id = cookie.split("~")[6].split(".")[0]
        consent_id = cookie.split("~")[1]
        await c.get("/articles/one", headers={"referer": "https://blog.example.org/post?id=7"})
        r = await c.post("/_consent/collect", json={"events": [
            {"type": "vitals", "path": "/articles/one", "lcp": 1234, "cls": 0.1},
            {"type": "click", "path": "/articles/one", "url": "https://out.example/x"},
            {"type": "custom", "path": "/articles/one", "name": "signup", "props": {"plan": "pro"}},
            {"type": "pageview", "path": "/spa/two", "referrer": "https://site.test/articles/one"},
        ]})
        assert r.status_code == 202
    mw.collector.flush()
    stats = rows(ch, database, "events_statistics")
    personal = rows(ch, database, "events_personalisation")
    assert sorted(r["event_type"] for r in stats) == ["click", "custom", "pageview", "pageview", "vitals"]
    vitals = next(r for r in stats if r["event_type"] == "vitals")
    assert vitals["lcp"] == 1234 and abs(vitals["cls"] - 0.1) < 1e-6 and vitals["ttfb"] is None
    click = next(r for r in stats if r["event_type"] == "click")
    assert (click["link_host"], click["link_path"]) == ("out.example", "/x")
    custom = next(r for r in stats if r["event_type"] == "custom")
    assert custom["event_name"] == "signup" and custom["props"] == {"plan": "pro"}
    # personalisation keeps page views only (its categories have no timing or clicks)
    assert [r["event_type"] for r in personal] == ["pageview", "pageview"]
    first = personal[0]
    assert first["visitor_id"] == visitor_id and first["consent_id"] == consent_id
    assert (first["city"], first["country"], first["language"]) == ("London", "GB", "kk-kz")
    assert first["referrer"] == "https://blog.example.org/post"  # full referrer, but never its query
    assert personal[1]["referrer_host"] == ""  # internal navigation is no referrer
    # event ids are never shared across purposes (no join of statistics to a stable id)
    assert not {r["event_id"] for r in stats} & {r["event_id"] for r in personal}
    # marketing collects nothing: no table at all
    assert not ch.query(f"EXISTS TABLE {database}.events_marketing").result_rows[0][0]


async def test_only_html_pages_are_captured(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app()
    async with client(mw) as c:
        await choose(c, {"granted": ["statistics"]})
        await c.get("/api/data")             # JSON
        await c.get("/plain")                # text/plain
        await c.get("/static/app.css")       # excluded prefix
        await c.post("/articles/x")          # not GET/HEAD
        await c.get("/_consent/state")       # our own endpoints
        await c.get("/missing")              # 404 text/plain from Starlette
        await c.get("/articles/counted")
    mw.collector.flush()
    assert [r["path"] for r in rows(ch, database, "events_statistics")] == ["/articles/counted"]


async def test_withdrawal_stops_collection_at_once(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app()
    async with client(mw) as c:
        await choose(c, {"all": True})
        await c.get("/articles/before")
        r = await c.delete("/_consent/choice")
        assert r.status_code == 200 and r.json()["consent"]["granted"] == ["necessary"]
        await c.get("/articles/after")
        r = await c.post("/_consent/collect", json={"events": [{"type": "pageview", "path": "/x"}]})
        assert r.status_code == 204
    mw.collector.flush()
    for table in ("events_statistics", "events_personalisation"):
        assert [r["path"] for r in rows(ch, database, table)] == ["/articles/before"]


async def test_ledger_records_grant_change_and_withdrawal(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app()
    async with client(mw) as c:
        await choose(c, {"granted": ["statistics"], "lang": "ru", "page": "/articles/a"})
        await choose(c, {"all": True})
        await c.delete("/_consent/choice")
    mw.collector.flush()
    ledger = rows(ch, database, "consent_log")
    assert [r["action"] for r in ledger] == ["grant", "change", "withdraw"]
    assert len({r["consent_id"] for r in ledger}) == 1
    assert ledger[0]["granted"] == ["necessary", "statistics"]
    assert ledger[0]["denied"] == ["marketing", "personalisation"]
    assert ledger[0]["language"] == "ru" and ledger[0]["page"] == "/articles/a"
    assert ledger[0]["texts_hash"] == mw.policy.texts_hash("ru")
    assert ledger[1]["visitor_id"] and ledger[2]["visitor_id"] == ""
    assert ledger[0]["ip"].ipv4_mapped == ipaddress.IPv4Address("81.2.0.0")  # masked, never raw
    assert all(r["policy_version"] == mw.policy.version for r in ledger)


async def test_gpc_narrows_an_older_choice(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app()
    async with client(mw) as c:
        await choose(c, {"all": True})
        r = await c.get("/articles/gpc", headers={"sec-gpc": "1"})
        assert "personalisation" not in r.text and "statistics" in r.text
    mw.collector.flush()
    assert count(ch, database, "events_personalisation") == 0
    assert count(ch, database, "events_statistics") == 1


async def test_bots_are_not_stored(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app()
    async with client(mw) as c:
        await choose(c, {"granted": ["statistics"]})
        await c.get("/articles/x", headers={"user-agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"})
        await c.get("/articles/y", headers={"user-agent": "curl/8.0"})
    mw.collector.flush()
    assert count(ch, database, "events_statistics") == 0
    assert mw.collector.minimiser.counts.bots == 2


async def test_page_and_beacon_read_non_ascii_headers_alike(make_app: Any, ch: Any, database: str) -> None:
    """A page view and a beacon event from one browser whose User-Agent carries UTF-8 bytes
    are stored with the same text and the same daily visitor code."""
    mw = make_app()
    agent = BROWSER_UA.encode() + " Сайт/1.0".encode()
    async with client(mw) as c:
        await choose(c, {"granted": ["statistics"]})
        await c.get("/articles/u", headers={"user-agent": agent})
        r = await c.post("/_consent/collect", headers={"user-agent": agent},
                         json={"events": [{"type": "timing", "path": "/articles/u", "ttfb": 12}]})
        assert r.status_code == 202, r.text
    mw.collector.flush()
    stored = {r["event_type"]: r for r in rows(ch, database, "events_statistics")}
    assert set(stored) == {"pageview", "timing"}
    assert stored["pageview"]["visitor_hash"] == stored["timing"]["visitor_hash"] != 0
    assert stored["pageview"]["browser"] == stored["timing"]["browser"] == "Chrome"


async def test_forwarded_for_is_used_only_from_trusted_proxies(tmp_path: Path, make_app: Any, ch: Any,
                                                                database: str) -> None:
    mw = make_app(geoip_db=str(make_mmdb(tmp_path / "geo.mmdb")), trusted_proxies=["10.0.0.0/8"])
    async with client(mw, ip="10.1.2.3") as proxied, client(mw, ip="198.51.100.1") as direct:
        await choose(proxied, {"all": True})
        await proxied.get("/articles/p", headers={"x-forwarded-for": "2a02:1810::99"})
        await choose(direct, {"all": True})
        await direct.get("/articles/d", headers={"x-forwarded-for": "81.2.69.1"})  # spoof attempt
    mw.collector.flush()
    by_path = {r["path"]: r for r in rows(ch, database, "events_personalisation")}
    assert by_path["/articles/p"]["city"] == "Almaty"
    assert by_path["/articles/d"]["country"] == ""


async def test_canary_values_reach_only_permitted_columns(make_app: Any, ch: Any, database: str) -> None:
    """Distinctive values sent in every header and field land only in their categories' columns."""
    mw = make_app()
    canaries = {
        "ip": "81.2.69.160",
        "referrer": "canary-ref.example",
        "language": "zu-canary",
        "page": "canary-path",
    }
    async with client(mw, accept_language="zu-canary") as c:
        await choose(c, {"granted": ["statistics"]})
        await c.get("/articles/canary-path", headers={"referer": "https://canary-ref.example/a?token=SECRET"})
    mw.collector.flush()
    [row] = rows(ch, database, "events_statistics")
    policy_categories = mw.policy["statistics"].categories
    for name, value in row.items():
        text = str(value)
        if "SECRET" in text or canaries["ip"] in text:
            pytest.fail(f"{name} holds data no purpose may store: {text}")
        if canaries["language"] in text:
            assert "language" in policy_categories, name
        if canaries["referrer"] in text:
            assert BY_NAME[name].category == "referrer", name
        if canaries["page"] in text:
            assert BY_NAME[name].category == "page", name


@pytest.mark.parametrize("header, lines", [
    ("x-forwarded-for", ["81.2.69.1", "2a02:1810::99"]),                     # the client's line, then the proxy's
    ("x-forwarded-for", ["81.2.69.1, 2a02:1810::99", "10.9.9.9"]),           # a combined line and a trusted hop
    ("forwarded", ['for="81.2.69.1:443"', 'for="[2a02:1810::99]:51234";proto=https']),
])
async def test_one_forwarding_chain_for_hits_beacons_and_the_ledger(tmp_path: Path, make_app: Any, ch: Any,
                                                                    database: str, header: str,
                                                                    lines: list[str]) -> None:
    """Several header lines are one list; the rightmost untrusted hop is the client for the page
    hit, the beacon event and the consent record alike (the spoofed London address never counts)."""
    mw = make_app(geoip_db=str(make_mmdb(tmp_path / "geo.mmdb")), trusted_proxies=["10.0.0.0/8"],
                  forwarded_header=header)
    transport = httpx.ASGITransport(app=mw, client=("10.1.2.3", 50123))
    # https: the Forwarded case says proto=https, so the cookie is Secure
    async with httpx.AsyncClient(transport=transport, base_url="https://site.test",
                                 headers={"user-agent": BROWSER_UA}) as c:
        extra = [(header, line) for line in lines]
        r = await c.post("/_consent/choice", json={"all": True}, headers=httpx.Headers(extra))
        assert r.status_code == 200
        assert (await c.get("/articles/p", headers=httpx.Headers(extra))).status_code == 200
        r = await c.post("/_consent/collect", json={"events": [{"type": "pageview", "path": "/spa/x"}]},
                         headers=httpx.Headers(extra))
        assert r.status_code == 202
    mw.collector.flush()
    by_path = {r["path"]: r for r in rows(ch, database, "events_personalisation")}
    assert {p: (r["country"], r["city"]) for p, r in by_path.items()} == {
        "/articles/p": ("KZ", "Almaty"), "/spa/x": ("KZ", "Almaty")}
    [ledger] = rows(ch, database, "consent_log")
    assert str(ledger["ip"]) == "2a02:1810::"
