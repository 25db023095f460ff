"""The live dashboard over HTTP (ASGI, real chDB): admin token or sign-in cookie, strict CSP,
validated filters (400 with a reason), exact KPIs and changes for a known history."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from consentmw.collect.hit import Hit
from consentmw.core.ledger import ConsentRecord
from consentmw.web.dashboard import COOKIE, session_value

from tests.conftest import BROWSER_UA
from tests.dashboard.seed import STATS, midnight
from tests.test_views import site

TOKEN = "admin-token-0123456789"


def client(mw: Any, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=mw, client=("127.0.0.1", 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://site.test", headers=headers)


def ready(mw: Any) -> Any:
    """Create the schema now: the collector's background thread, started by the first
    request under the prefix, then finds it made and runs no DDL while the test's
    database is being dropped."""
    mw.collector.sink.client()
    return mw


def bearer() -> dict[str, str]:
    return {"authorization": f"Bearer {TOKEN}"}


async def test_disabled_without_a_token(make_app: Any) -> None:
    async with client(ready(make_app(site()))) as c:
        assert (await c.get("/_consent/admin/dashboard")).status_code == 404


async def test_token_cookie_and_sign_in(make_app: Any) -> None:
    mw = ready(make_app(site(), admin_token=TOKEN))
    async with client(mw) as c:
        r = await c.get("/_consent/admin/dashboard")
        assert r.status_code == 401 and 'name="token"' in r.text and "Visitors" not in r.text
        assert (await c.get("/_consent/admin/dashboard", headers={"authorization": "Bearer wrong"})).status_code == 401
        r = await c.get("/_consent/admin/dashboard", headers=bearer())
        assert r.status_code == 200 and "Visitors" in r.text
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe-inline" not in csp
        assert r.headers["cache-control"] == "no-store"
        # no script, no inline style, no external resource: only the same-origin stylesheet
        assert "<script" not in r.text and "style=" not in r.text and "<style" not in r.text
        assert re.findall(r'(?:src|href)="(/[^"?]*|https?:[^"]*)', r.text) == ["/_consent/admin/dashboard.css"]

        # a browser signs in with the token once: a cookie with proof of it, not the token
        r = await c.post("/_consent/admin/dashboard", content="token=nope",
                         headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 401 and COOKIE not in r.headers.get("set-cookie", "")
        r = await c.post("/_consent/admin/dashboard", content=f"token={TOKEN}",
                         headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 303 and r.headers["location"] == "/_consent/admin/dashboard"
        cookie = r.headers["set-cookie"]
        assert TOKEN not in cookie and session_value(TOKEN) in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/_consent/admin" in cookie
        assert (await c.get("/_consent/admin/dashboard")).status_code == 200  # the cookie is enough
        # signing in from another site is refused
        r = await c.post("/_consent/admin/dashboard", content=f"token={TOKEN}",
                         headers={"content-type": "application/x-www-form-urlencoded", "origin": "https://evil.test"})
        assert r.status_code == 403
        css = await c.get("/_consent/admin/dashboard.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css") and ".kpis" in css.text
        again = await c.get("/_consent/admin/dashboard.css", headers={"if-none-match": css.headers["etag"]})
        assert again.status_code == 304


@pytest.mark.parametrize("query,reason", [
    ("range=forever", "range: one of"),
    ("from=2026-02-30&to=2026-03-01", "from: not a date"),
    ("site=a%27b", "site: a host name"),
    ("country=%3Cscript%3E", "country: a two-letter"),
    ("page=%00", "control characters"),
    ("device=toaster", "device: one of"),
])
async def test_bad_filters_are_400_with_a_reason(make_app: Any, query: str, reason: str) -> None:
    mw = ready(make_app(site(), admin_token=TOKEN))
    async with client(mw, **bearer()) as c:
        r = await c.get(f"/_consent/admin/dashboard?{query}")
        assert r.status_code == 400 and reason in r.json()["error"]


async def test_store_down_is_503_not_500(make_app: Any, tmp_path: Any) -> None:
    mw = make_app(site(), admin_token=TOKEN, clickhouse_dsn="http://analyst:s3cret-pass@127.0.0.1:9/")
    async with client(mw, **bearer()) as c:
        r = await c.get("/_consent/admin/dashboard")
        assert r.status_code == 503 and "unavailable" in r.json()["error"] and "s3cret-pass" not in r.text


async def test_kpis_and_changes_are_exact(make_app: Any, ch: Any, database: str) -> None:
    """Today: visit A (3 pages), visit B (1 page, a bounce) and a 404; yesterday: visit C
    (2 pages). Decisions today: 2 of 3 grant statistics; yesterday 1 of 1."""
    mw = make_app(site(), admin_token=TOKEN)
    v = mw.policy.version
    today, yesterday = midnight(0) + 60, midnight(1) + 60

    def view(ts: float, ip: str, path: str, status: int = 200) -> None:
        mw.collector.submit(Hit(ts, "pageview", "site.test", path, "c", v, STATS, None, ip, "", BROWSER_UA, "en",
                                "", None, status, 2.0))

    for i, path in enumerate(("/", "/a", "/b")):
        view(today + i, "81.2.1.1", path)
    view(today + 5, "81.2.1.2", "/")
    view(today + 6, "81.2.1.2", "/missing", 404)
    view(yesterday, "81.2.1.3", "/")
    view(yesterday + 1, "81.2.1.3", "/a")
    for ts, granted, action in ((today, ["necessary", "statistics"], "grant"), (today + 1, ["necessary"], "grant"),
                                (today + 2, ["necessary", "statistics"], "change"),
                                (today + 3, ["necessary"], "withdraw"),
                                (yesterday, ["necessary", "statistics"], "grant")):
        mw.collector.record(ConsentRecord(consent_id=f"k{ts}", ts=ts, action=action, policy_version=v, granted=granted,
                                          denied=[], source="banner", gpc=False, language="en", texts_hash="",
                                          page="/", peer_ip="81.2.1.9", forwarded_for="", user_agent=BROWSER_UA,
                                          site="site.test"))
    mw.collector.flush()
    async with client(mw, **bearer()) as c:
        r = await c.get("/_consent/admin/dashboard?range=today")
    assert r.status_code == 200
    kpis = dict(re.findall(r'<div class="kpi"><h2>([^<]+)</h2><p class="value">([^<]+)</p>', r.text))
    assert kpis == {"Visitors": "2", "Page views": "4", "Views per visit": "2.00", "Bounce rate": "50%",
                    "Consent opt-in": "67%"}
    deltas = re.findall(r'<span class="delta (\w+)"><span aria-hidden="true">(.)</span> ([^<]+)<', r.text)
    # visitors 2 vs 1, page views 4 vs 2, 2.00 views per visit both days, opt-in 67% vs 100%
    assert deltas == [("good", "▲", "+100% "), ("good", "▲", "+100% "), ("flat", "=", "0% "), ("bad", "▼", "−33% ")]
    assert "was 0 over the previous day" in r.text  # bounce rate: 0% yesterday, no relative change
    # the hourly chart has today's four page views in the first hour, the 404 nowhere
    assert ">00:00: 4 page views<" in r.text and "/missing" not in r.text


NO_STATS_POLICY = {
    "version": "nostats-1", "updated": "2026-11-30",
    "purposes": [{"id": "necessary", "required": True, "texts": {"en": {"title": "Necessary"}}},
                 {"id": "personalisation", "categories": ["visitor_id", "page"],
                  "texts": {"en": {"title": "Personalisation"}}}]}


async def test_a_policy_without_statistics_gets_an_explanation_not_an_error(make_app: Any) -> None:
    """Nothing is broken and retrying changes nothing: the dashboard says why it is empty
    (200, the same strict headers), for any filters, instead of a 503."""
    from consentmw import Policy

    mw = ready(make_app(site(), admin_token=TOKEN, policy=Policy.from_dict(NO_STATS_POLICY)))
    async with client(mw, **bearer()) as c:
        for query in ("", "?range=7d&country=DE", "?source=Google"):
            r = await c.get("/_consent/admin/dashboard" + query)
            assert r.status_code == 200, r.text
            assert "policy has no statistics purpose" in r.text and "nothing to show" in r.text
            assert "Visitors" not in r.text and "<svg" not in r.text
            assert r.headers["content-security-policy"].startswith("default-src 'none'")
            assert r.headers["cache-control"] == "no-store"
        # still behind the token
        async with client(mw) as anonymous:
            r = await anonymous.get("/_consent/admin/dashboard")
            assert r.status_code == 401 and "statistics" not in r.text
