"""Analyst views on real chDB: exact numbers for a known history, and every cookbook query
in docs/analysts.md executed as written (database name substituted)."""

from __future__ import annotations

from consentmw.core.policy import Policy

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from consentmw.collect.hit import Hit
from consentmw.core.consent import COOKIE_NAME
from consentmw.core.ledger import ConsentRecord

from tests.conftest import BROWSER_UA

DOC = Path(__file__).resolve().parent.parent / "docs" / "analysts.md"
DAY = 86400


def site() -> Starlette:
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(f"<html><body>{request.url.path}</body></html>")

    return Starlette(routes=[Route("/{path:path}", page)])


def client(mw: Any, ip: str, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=mw, client=(ip, 50123))
    return httpx.AsyncClient(transport=transport, base_url="http://site.test",
                             headers={"user-agent": BROWSER_UA, "accept-language": "en", **headers})


async def seed_today(mw: Any) -> dict[str, Any]:
    """Four browsers today, through the app: A accepts all, B statistics only, C rejects all,
    D accepts all under Global Privacy Control; E accepts all and erases its data."""
    out: dict[str, Any] = {}
    async with client(mw, "81.2.69.160") as a:
        await a.post("/_consent/choice", json={"all": True})
        await a.get("/")
        await a.get("/articles/a?utm_source=news&utm_medium=email&utm_campaign=winter",
                    headers={"referer": "https://www.google.com/"})
        await a.post("/_consent/collect", json={"events": [
            {"type": "vitals", "path": "/articles/a", "lcp": 1000, "inp": 100, "cls": 0.1}]})
        out["a"] = a.cookies[COOKIE_NAME]
    async with client(mw, "81.2.69.161") as b:
        await b.post("/_consent/choice", json={"granted": ["statistics"]})
        await b.get("/articles/a", headers={"referer": "https://news.ycombinator.com/item?id=1"})
        await b.get("/")
        await b.post("/_consent/collect", json={"events": [{"type": "vitals", "path": "/articles/a", "lcp": 2000}]})
    async with client(mw, "81.2.69.162") as c:
        await c.post("/_consent/choice", json={"all": False})
        await c.get("/")
    async with client(mw, "81.2.69.163", **{"sec-gpc": "1"}) as d:
        await d.post("/_consent/choice", json={"all": True})
    async with client(mw, "81.2.69.164") as e:
        await e.post("/_consent/choice", json={"granted": ["personalisation"]})
        await e.get("/secret/page")
        assert (await e.delete("/_consent/me")).status_code == 200
    mw.collector.flush()
    return out


def seed_history(mw: Any, days: int = 14) -> None:
    """Past days written through the collector: page views with vitals, a returning
    personalisation visitor, and consent choices with a rising opt-in rate."""
    today = int(time.time()) // DAY * DAY
    version = mw.policy.version
    both = frozenset({"statistics", "personalisation"})
    for back in range(days, 0, -1):
        day = today - back * DAY + 9 * 3600
        for i in range(3 + (days - back) % 5):
            ip = f"81.2.{back}.{i + 1}"
            path = ("/", "/articles/a", "/articles/b", "/news/1")[i % 4]
            mw.collector.submit(Hit(day + i * 60, "pageview", "site.test", path, f"hist{i}", version,
                                    frozenset({"statistics"}), None, ip, "", BROWSER_UA, "en",
                                    "https://www.bing.com/" if i % 3 == 0 else "",
                                    {"utm_source": "newsletter", "utm_campaign": "spring"} if i == 2 else None, 200, 5))
            mw.collector.submit(Hit(day + i * 60 + 1, "vitals", "site.test", path, f"hist{i}", version,
                                    frozenset({"statistics"}), None, ip, "", BROWSER_UA, "en", "", None, 0, 0,
                                    {"lcp": 800 + 100 * i + 10 * back, "inp": 50 + 10 * i, "cls": 0.05, "ttfb": 90}))
        mw.collector.submit(Hit(day + 1800, "pageview", "site.test", "/nope/", "hist0", version,
                                frozenset({"statistics"}), None, "81.2.0.9", "", BROWSER_UA, "en", "", None, 404, 0.4))
        mw.collector.submit(Hit(day + 3600, "pageview", "site.test", "/articles/b", "histvisitor", version, both,
                                "HistVisitor0001", "81.2.99.1", "", BROWSER_UA, "en", "", None, 200, 5))
        for i in range(4):
            granted = ["necessary", "statistics"] + (["personalisation"] if i < 1 + (days - back) % 3 else [])
            mw.collector.record(ConsentRecord(
                consent_id=f"hist-{back}-{i}", ts=day + i, action="grant", policy_version=version,
                granted=granted, denied=sorted(mw.policy.ids - set(granted)), source="banner", gpc=i == 3,
                language="en", texts_hash=mw.policy.texts_hash("en"), page="/", peer_ip="81.2.0.1",
                forwarded_for="", user_agent=BROWSER_UA, site="site.test"))
    mw.collector.flush()


def cookbook() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)


async def test_views_are_exact_for_a_known_day(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(site())
    await seed_today(mw)
    rows = ch.query(f"SELECT path, pageviews, visitors, lcp_p50, lcp_p75, inp_p50, cls_p75 FROM {database}.stats_daily "
                    f"WHERE day = today() ORDER BY path").result_rows
    assert [r[0] for r in rows] == ["/", "/articles/a"]  # C rejected all; E granted personalisation only
    assert rows[0][1:3] == (2, 2)
    by_path = {r[0]: r[1:] for r in rows}
    assert by_path["/articles/a"] == (2, 2, 1500.0, 1750.0, 100.0, pytest.approx(0.1))
    site_row = ch.query(f"SELECT pageviews, visitors, pages FROM {database}.stats_daily_site WHERE day = today()").result_rows
    assert site_row == [(4, 2, 2)]
    sources = dict(((s, m), v) for s, m, v in ch.query(
        f"SELECT source, medium, sum(pageviews) FROM {database}.traffic_sources GROUP BY source, medium").result_rows)
    assert sources[("news", "email")] == 1 and sources[("Hacker News", "social")] == 1
    assert ch.query(f"SELECT utm_campaign, pageviews FROM {database}.campaigns").result_rows == [("winter", 1)]
    consent = {r[0]: r[1:] for r in ch.query(
        f"SELECT purpose, decisions, opt_ins, refusals, opt_in_rate, gpc_share FROM {database}.consent_daily "
        f"WHERE day = today() ORDER BY purpose").result_rows}
    # A all, B statistics, C nothing, D all under GPC (personalisation and marketing refused), E personalisation
    assert consent["personalisation"] == (5, 2, 3, 0.4, 0.2)
    assert consent["statistics"] == (5, 3, 2, 0.6, 0.2)
    assert consent["marketing"] == (5, 1, 4, 0.2, 0.2)
    assert "necessary" not in consent
    choices = ch.query(f"SELECT decisions, accept_all, reject_all, custom, gpc_decisions FROM "
                       f"{database}.consent_choices_daily WHERE day = today()").result_rows
    assert choices == [(5, 1, 1, 3, 1)]


async def test_every_cookbook_query_runs(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(site())
    await seed_today(mw)
    seed_history(mw)
    queries = cookbook()
    assert len(queries) >= 10
    for sql in queries:
        if "get_client" in sql or "consentmw." not in sql or sql.startswith("-- dashboard"):
            continue  # the dashboard's queries take parameters: tests/dashboard runs them
        sql = sql.replace("consentmw.", f"{database}.")
        result = ch.query(sql)
        assert result.result_rows, f"no rows from:\n{sql}"


def test_cookbook_python_snippet_is_valid() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "the cookbook lost its Python example"
    from consentmw.store.schema import Schema

    created = "\n".join(Schema(Policy.default(), "consentmw").statements())
    for block in blocks:
        compile(block, "analysts.md", "exec")
        # every table or view the snippet reads is one the schema creates
        names = re.findall(r"consentmw\.(\w+)", block)
        assert names, block
        for name in names:
            assert re.search(rf"consentmw\.{name}\b", created), f"analysts.md reads consentmw.{name}, which no DDL creates"


def error_site() -> Starlette:
    """Pages answer with the status in their path: /status/404, /status/500; others 200."""
    async def page(request: Request) -> HTMLResponse:
        parts = request.url.path.split("/")
        status = int(parts[2]) if len(parts) > 2 and parts[1] == "status" and parts[2].isdigit() else 200
        return HTMLResponse(f"<html><body>{request.url.path}</body></html>", status_code=status)

    return Starlette(routes=[Route("/{path:path}", page)])


async def test_error_pages_keep_their_status_but_are_not_page_views(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(error_site())
    async with client(mw, "81.2.69.170") as a:
        await a.post("/_consent/choice", json={"all": True})
        cid_vid = a.cookies[COOKIE_NAME]
        for path in ("/", "/status/404", "/status/500", "/status/201", "/articles/x"):
            await a.get(path)
        await a.post("/_consent/collect", json={"events": [{"type": "pageview", "path": "/spa/view"}]})
        # the profile service reads the aggregate fed by the materialized view
        r = await a.get("/status/404")
        assert r.status_code == 404
    mw.collector.flush()
    stored = sorted(ch.query(f"SELECT path, status FROM {database}.events_statistics WHERE event_type = 'pageview'").result_rows)
    assert ("/status/404", 404) in stored and ("/status/500", 500) in stored  # the status is kept
    pages = dict(ch.query(f"SELECT path, sum(pageviews) FROM {database}.stats_daily GROUP BY path").result_rows)
    assert pages["/status/404"] == 0 and pages["/status/500"] == 0
    assert pages["/"] == 1 and pages["/status/201"] == 1 and pages["/spa/view"] == 1
    errors = ch.query(f"SELECT sum(pageviews), sum(error_views) FROM {database}.stats_daily_site").result_rows
    assert errors == [(4, 3)]
    assert ch.query(f"SELECT sum(pageviews) FROM {database}.traffic_sources").result_rows == [(4,)]
    profile_pages = ch.query(f"SELECT mapKeys(pages) FROM {database}.visitor_profiles").result_rows
    assert profile_pages and set(profile_pages[0][0]) == {"/", "/status/201", "/articles/x", "/spa/view"}
    assert cid_vid


async def test_server_duration_keeps_sub_millisecond_precision(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(site())
    async with client(mw, "81.2.69.171") as a:
        await a.post("/_consent/choice", json={"granted": ["statistics"]})
        for _ in range(5):
            await a.get("/fast")
    mw.collector.submit(Hit(time.time(), "pageview", "site.test", "/slow", "x", mw.policy.version,
                            frozenset({"statistics"}), None, "81.2.69.172", "", BROWSER_UA, "en", "", None, 200, 12.3456))
    mw.collector.flush()
    rows = ch.query(f"SELECT path, duration_us, duration_ms FROM {database}.events_statistics "
                    f"WHERE event_type = 'pageview' ORDER BY path").result_rows
    fast = [r for r in rows if r[0] == "/fast"]
    assert len(fast) == 5 and all(us is not None and us > 0 for _, us, _ in fast)  # never truncated to 0
    assert ("/slow", 12346, 12) in rows
    p50 = ch.query(f"SELECT duration_p50 FROM {database}.stats_daily WHERE path = '/slow'").result_rows
    assert p50 == [(pytest.approx(12.346),)]


async def test_consent_views_separate_decisions_changes_withdrawals_and_erasures(
        make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(site())
    async with client(mw, "81.2.69.180") as a:   # rejects, then changes to accept all, then withdraws
        await a.post("/_consent/choice", json={"all": False})
        await a.post("/_consent/choice", json={"all": True})
        assert (await a.delete("/_consent/choice")).status_code == 200
    async with client(mw, "81.2.69.181") as b:   # accepts all, then erases its data
        await b.post("/_consent/choice", json={"all": True})
        await b.get("/page")
        assert (await b.delete("/_consent/me")).status_code == 200
    mw.collector.flush()
    actions = sorted(r[0] for r in ch.query(f"SELECT action FROM {database}.consent_log").result_rows)
    assert actions == ["change", "erase", "grant", "grant", "withdraw"]
    row = ch.query(f"SELECT decisions, first_decisions, changes, accept_all, reject_all, custom, withdrawals, erasures "
                   f"FROM {database}.consent_choices_daily").result_rows
    # 3 decisions (2 first + 1 change): 2 accept all, 1 reject all; the withdrawal and the
    # erasure are counted apart and not as choices
    assert row == [(3, 2, 1, 2, 1, 0, 1, 1)]
    stats = ch.query(f"SELECT decisions, first_decisions, changes, opt_ins, refusals, opt_in_rate, first_opt_in_rate, "
                     f"withdrawals FROM {database}.consent_daily WHERE purpose = 'statistics'").result_rows
    assert stats == [(3, 2, 1, 2, 1, pytest.approx(0.6667), 0.5, 1)]
