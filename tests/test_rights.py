"""Visitor rights on real chDB: export, erase (every table, aggregates included), block, withdraw
with erase, the admin API, and that no visitor ever reaches another visitor's data."""

from __future__ import annotations

import contextlib
import re
import time
from typing import Any

import httpx
import pytest

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from consentmw.collect.enrich import Enricher
from consentmw.collect.hit import Hit
from consentmw.collect.minimise import Minimiser
from consentmw.core.consent import COOKIE_NAME
from consentmw.core.policy import Policy

from tests.conftest import BROWSER_UA

IP_A, IP_B = "81.2.69.160", "81.2.69.161"
ADMIN = "admin-token-0123456789"


def site() -> Starlette:
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(f"<html><body>{request.url.path}</body></html>")

    return Starlette(routes=[Route("/{path:path}", page)])


def client(mw: Any, ip: str = IP_A, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=mw, client=(ip, 50123))
    return httpx.AsyncClient(transport=transport, base_url="http://site.test",
                             headers={"user-agent": BROWSER_UA, "accept-language": "en-GB,en;q=0.8", **headers})


async def choose(c: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, str | None]:
    r = await c.post("/_consent/choice", json=body)
    assert r.status_code == 200, r.text
    return ids(c)


def ids(c: httpx.AsyncClient) -> dict[str, str | None]:
    value = c.cookies[COOKIE_NAME]
    parts = value.split(".")[0].split("~")
    return {"consent_id": parts[1], "visitor_id": None if parts[6] == "-" else parts[6], "cookie": value}


@contextlib.asynccontextmanager
async def closing(*clients: httpx.AsyncClient) -> Any:
    try:
        yield
    finally:
        for c in clients:
            await c.aclose()


def q(ch: Any, sql: str) -> list[tuple[Any, ...]]:
    return ch.query(sql).result_rows


def n(ch: Any, sql: str) -> int:
    return q(ch, sql)[0][0]


async def visitor(mw: Any, ip: str, pages: list[str], body: dict[str, Any] | None = None) -> tuple[httpx.AsyncClient, dict[str, Any]]:
    c = client(mw, ip)
    who = await choose(c, body or {"all": True})
    for page in pages:
        assert (await c.get(page)).status_code == 200
    return c, who


def everything_mentioning(ch: Any, database: str, needle: str, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """Rows in every stored table (aggregates included) whose readable columns mention `needle`."""
    found = {}
    tables = q(ch, f"SELECT name FROM system.tables WHERE database = '{database}' AND engine LIKE '%MergeTree'")
    for (table,) in tables:
        if table in skip:
            continue
        cols = [r[0] for r in q(ch, f"SELECT name FROM system.columns WHERE database = '{database}' "
                                    f"AND table = '{table}' AND type NOT LIKE '%AggregateFunction(%'")]
        expr = " OR ".join(f"position(toString(`{c}`), '{needle}') > 0" for c in cols)
        hits = n(ch, f"SELECT count() FROM {database}.{table} WHERE {expr}")
        if hits:
            found[table] = hits
    return found




# --------------------------------------------------------------------------- export
async def test_export_is_exact_for_a_known_history(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(site())
    c, a = await visitor(mw, IP_A, ["/articles/a?utm_source=news", "/articles/b"])
    b, _ = await visitor(mw, IP_B, ["/articles/zzz"])
    async with closing(c, b):
        await choose(c, {"granted": ["statistics", "personalisation"]})  # a change, same ids
        r = await c.get("/_consent/me")
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"].startswith('attachment; filename="my-data-')
    assert r.headers["cache-control"] == "no-store"
    data = r.json()
    assert data["subject"] == {"consent_ids": [a["consent_id"]], "visitor_ids": [a["visitor_id"]]}
    assert data["blocked"] is False
    rows = data["tables"]["events_personalisation"]
    assert [row["path"] for row in rows] == ["/articles/a", "/articles/b"]
    assert {row["visitor_id"] for row in rows} == {a["visitor_id"]}
    assert {row["consent_id"] for row in rows} == {a["consent_id"]}
    assert rows[0]["utm_source"] == "news" and rows[0]["language"] == "en-gb"
    [profile] = data["tables"]["visitor_profile"]
    assert profile["pageviews"] == 2 and profile["visits"] == 1 and profile["pages"] == {"/articles/a": 1, "/articles/b": 1}
    assert [h["action"] for h in data["consent_history"]] == ["grant", "change"]
    assert data["consent_history"][0]["ip"] == "81.2.0.0"  # stored masked; exported as text
    assert data["consent_history"][1]["granted"] == ["necessary", "personalisation", "statistics"]
    assert "events_statistics" in data["not_included"] and "events_statistics" not in data["tables"]
    summary = {s["purpose"]: s for s in data["summary"]}
    assert summary["personalisation"]["rows"] == 2 and summary["personalisation"]["granted"] is True
    assert summary["personalisation"]["kept_until"] > summary["personalisation"]["newest"]
    assert "no stable identifier" in summary["statistics"]["stored"]
    assert summary["marketing"]["granted"] is False and "stores no data" in summary["marketing"]["stored"]
    assert "/articles/zzz" not in r.text  # the other visitor's page


# --------------------------------------------------------------------------- erase
async def test_delete_me_erases_every_table_including_aggregates(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(site())
    c, a = await visitor(mw, IP_A, ["/articles/a", "/articles/b", "/news/1"])
    b, bb = await visitor(mw, IP_B, ["/articles/a"])
    async with closing(c, b):
        mw.collector.flush()
        assert n(ch, f"SELECT count() FROM {database}.visitor_profile WHERE visitor_id = '{a['visitor_id']}'") >= 1
        stats_before = n(ch, f"SELECT count() FROM {database}.events_statistics")
        r = await c.delete("/_consent/me")
        assert r.status_code == 200, r.text
        body = r.json()
        # Erasing ends the consent: the cookie is cleared (the banner asks again) ...
        assert COOKIE_NAME not in c.cookies
        assert re.search(rf'{COOKIE_NAME}=""; .*Max-Age=0', r.headers["set-cookie"]), r.headers["set-cookie"]
        assert body["consent"] is None and body["prompt"] is True
        # ... so browsing on collects nothing, under no visitor id, old or new.
        before = n(ch, f"SELECT count() FROM {database}.events_personalisation")
        assert (await c.get("/articles/after-erase")).status_code == 200
        assert (await c.get("/_consent/state")).json()["prompt"] is True
        mw.collector.flush()
        assert n(ch, f"SELECT count() FROM {database}.events_personalisation") == before
        assert n(ch, f"SELECT count() FROM {database}.events_statistics WHERE path = '/articles/after-erase'") == 0
    receipt = body["receipt"]
    assert receipt["verified"] is True and receipt["left"] == {}
    assert receipt["tables"]["events_personalisation"] == 3
    assert receipt["tables"]["visitor_profile"] >= 1
    assert receipt["tables"]["consent_log"] == 1
    assert receipt["out_of_scope"] == ["events_statistics"] and "no stable identifier" in receipt["statistics"]
    # Nothing mentioning the old visitor id is left anywhere, aggregates included ...
    assert everything_mentioning(ch, database, a["visitor_id"]) == {}
    # ... and the consent id survives only in the (scrubbed) ledger, and as the tombstone that
    # keeps the erased consent's old cookies refused (a random id and a time, nothing else).
    assert everything_mentioning(ch, database, a["consent_id"], skip=("consent_log", "revoked_consents")) == {}
    assert q(ch, f"SELECT erase FROM {database}.revoked_consents WHERE consent_id = '{a['consent_id']}'") == [(1,)]
    [(vid, ua, ip)] = q(ch, f"SELECT visitor_id, user_agent, toString(ip) FROM {database}.consent_log "
                            f"WHERE consent_id = '{a['consent_id']}' AND action = 'grant'")
    assert (vid, ua, ip) == ("", "", "::")
    # The other visitor is untouched; statistics rows are out of scope and kept.
    assert n(ch, f"SELECT count() FROM {database}.events_personalisation WHERE visitor_id = '{bb['visitor_id']}'") == 1
    assert n(ch, f"SELECT sum(pageviews) FROM {database}.visitor_profiles WHERE visitor_id = '{bb['visitor_id']}'") == 1
    assert n(ch, f"SELECT count() FROM {database}.events_statistics") == stats_before
    # The receipt: tables and counts, a salted hash, no personal data.
    [(hashes, by, tables, verified, note)] = q(ch, f"SELECT subject_hash, requested_by, tables, verified, note "
                                                  f"FROM {database}.erasure_log")
    assert by == "visitor" and verified and tables["events_personalisation"] == 3
    assert a["consent_id"] not in hashes and a["visitor_id"] not in hashes
    assert mw.api.rights.subject_hash(a["consent_id"]) in hashes.split()
    assert "out of scope" in note
    # The ledger row of the erasure proves only that it happened: which consent, when, which
    # policy, which site. No address, user agent, visitor id, page or purposes.
    [erase_row] = q(ch, f"SELECT consent_id, policy_version, site, toString(ip), user_agent, visitor_id, page, "
                        f"granted, denied FROM {database}.consent_log WHERE action = 'erase'")
    assert erase_row == (a["consent_id"], Policy.default().version, "site.test", "::", "", "", "", [], [])


async def test_withdraw_with_erase(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(site())
    c, a = await visitor(mw, IP_A, ["/articles/a", "/articles/b"])
    async with closing(c):
        bad = await c.request("DELETE", "/_consent/choice?erase=maybe")
        assert bad.status_code == 400
        r = await c.request("DELETE", "/_consent/choice?erase=true")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["consent"]["granted"] == ["necessary"]
        assert body["erasure"]["verified"] is True and body["erasure"]["deleted"] >= 3
        assert body["erasure"]["requested_by"] == "withdrawal"
        assert ids(c)["visitor_id"] is None  # the withdrawal cookie was kept
        assert (await c.get("/articles/c")).status_code == 200
    mw.collector.flush()
    assert everything_mentioning(ch, database, a["visitor_id"]) == {}
    actions = [r[0] for r in q(ch, f"SELECT action FROM {database}.consent_log ORDER BY ts")]
    assert actions == ["grant", "withdraw"]


async def test_withdraw_without_erase_keeps_data(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(site())
    c, a = await visitor(mw, IP_A, ["/articles/a"])
    async with closing(c):
        r = await c.request("DELETE", "/_consent/choice")
        assert r.status_code == 200 and "erasure" not in r.json()
    mw.collector.flush()
    assert n(ch, f"SELECT count() FROM {database}.events_personalisation WHERE visitor_id = '{a['visitor_id']}'") == 1


# --------------------------------------------------------------------------- block
async def test_block_excludes_from_views_and_profile_and_unblock_restores(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(site())
    c, a = await visitor(mw, IP_A, ["/articles/a", "/articles/b"])
    b, bb = await visitor(mw, IP_B, ["/articles/a"])
    mw.collector.flush()

    def views() -> tuple[int, int, int, int]:
        return (n(ch, f"SELECT sum(pageviews) FROM {database}.stats_daily"),
                n(ch, f"SELECT sum(pageviews) FROM {database}.traffic_sources"),
                n(ch, f"SELECT count() FROM {database}.visitor_profiles"),
                n(ch, f"SELECT sum(decisions) FROM {database}.consent_daily WHERE purpose = 'personalisation'"))

    assert views() == (3, 3, 2, 2)
    async with closing(c, b):
        r = await c.post("/_consent/me/block")
        assert r.status_code == 200 and r.json()["blocked"] is True
        assert views() == (1, 1, 1, 1)  # only the other visitor is left
        me = (await c.get("/_consent/me")).json()
        assert me["blocked"] is True and len(me["tables"]["events_personalisation"]) == 2  # kept
        assert await mw.api.profiles.get(mw.codec.decode(a["cookie"])) is None
        assert await mw.api.profiles.get(mw.codec.decode(bb["cookie"])) is not None
        r = await c.post("/_consent/me/unblock")
        assert r.status_code == 200 and r.json()["blocked"] is False
        assert views() == (3, 3, 2, 2)
        profile = await mw.api.profiles.get(mw.codec.decode(a["cookie"]))
        assert profile is not None and profile.pageviews == 2


async def test_block_stops_collection(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(site())
    c, a = await visitor(mw, IP_A, ["/articles/a"])
    async with closing(c):
        assert (await c.post("/_consent/me/block")).status_code == 200
        await c.get("/articles/b")
        await c.post("/_consent/collect", json={"events": [{"type": "vitals", "path": "/articles/b", "lcp": 900}]})
        mw.collector.flush()
        assert n(ch, f"SELECT count() FROM {database}.events_personalisation") == 1
        assert n(ch, f"SELECT count() FROM {database}.events_statistics") == 1
        assert (await c.post("/_consent/me/unblock")).status_code == 200
        await c.get("/articles/c")
        mw.collector.flush()
        assert n(ch, f"SELECT count() FROM {database}.events_personalisation") == 2


def test_blocklist_is_shared_through_the_store(make_app: Any, ch: Any, database: str) -> None:
    """A block made by one process reaches another within the refresh interval."""
    from consentmw.rights import Blocklist

    mw = make_app(site())
    mw.collector.sink.client()
    other = Blocklist(mw.collector.sink, ttl=0.0)
    assert not other.is_blocked("abcdEFGH1234")
    ch.command(f"INSERT INTO {database}.blocked_visitors VALUES ('abcdEFGH1234', 1, now64(3))")
    assert other.is_blocked("abcdEFGH1234")
    ch.command(f"INSERT INTO {database}.blocked_visitors VALUES ('abcdEFGH1234', 0, now64(3) + 1)")
    assert not other.is_blocked("abcdEFGH1234")


# --------------------------------------------------------------------------- isolation
async def test_no_visitor_reaches_another_visitors_data(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(site(), rights_burst=1000)  # many attempts from one address: the rate limit is tested apart
    c, a = await visitor(mw, IP_A, ["/articles/mine"])
    b, bb = await visitor(mw, IP_B, ["/articles/theirs"])
    await c.aclose()
    await b.aclose()
    # forged: B's visitor id spliced into A's signed payload
    payload, ts, sig = a["cookie"].rsplit(".", 2)
    parts = payload.split("~")
    swapped = "~".join(parts[:6] + [bb["visitor_id"]]) + f".{ts}.{sig}"
    other_secret = make_app(site(), secret_key="another-secret-key-0123456789")
    async with client(other_secret) as o:
        await choose(o, {"all": True})
        foreign = o.cookies[COOKIE_NAME]
    cases = {"none": None, "garbage": "x" * 40, "swapped": swapped, "foreign-key": foreign,
             "other-consent": "~".join(parts[:1] + [bb["consent_id"]] + parts[2:]) + f".{ts}.{sig}"}
    for name, cookie in cases.items():
        async with client(mw) as x:
            if cookie:
                x.cookies.set(COOKIE_NAME, cookie, domain="site.test")
            for method, path in (("GET", "/_consent/me"), ("DELETE", "/_consent/me"),
                                 ("POST", "/_consent/me/block"), ("POST", "/_consent/me/unblock")):
                r = await x.request(method, path)
                assert r.status_code == 401, (name, method, path, r.status_code)
                assert "theirs" not in r.text and "mine" not in r.text
    # cross-site requests carrying a valid cookie are refused
    async with client(mw) as x:
        x.cookies.set(COOKIE_NAME, a["cookie"], domain="site.test")
        r = await x.get("/_consent/me", headers={"sec-fetch-site": "cross-site"})
        assert r.status_code == 403
        r = await x.request("DELETE", "/_consent/me", headers={"origin": "https://evil.test"})
        assert r.status_code == 403
        r = await x.get("/_consent/me")
        assert r.status_code == 200 and "/articles/mine" in r.text and "/articles/theirs" not in r.text
    mw.collector.flush()
    assert n(ch, f"SELECT count() FROM {database}.events_personalisation") == 2  # nothing erased by the attempts
    assert n(ch, f"SELECT count() FROM {database}.erasure_log") == 0


# --------------------------------------------------------------------------- admin API
async def test_admin_api_export_and_erase(make_app: Any, ch: Any, database: str) -> None:
    closed = make_app(site())
    async with client(closed) as x:
        assert (await x.get("/_consent/admin/visitors?id=abcdEFGH1234")).status_code == 404
    mw = make_app(site(), admin_token=ADMIN)
    c, a = await visitor(mw, IP_A, ["/articles/a", "/articles/b"])
    auth = {"authorization": f"Bearer {ADMIN}"}
    async with closing(c), client(mw) as x:
        r = await x.get(f"/_consent/admin/visitors?id={a['visitor_id']}")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        r = await x.get(f"/_consent/admin/visitors?id={a['visitor_id']}", headers={"authorization": "Bearer nope"})
        assert r.status_code == 401
        assert (await x.get("/_consent/admin/visitors?id=../../etc", headers=auth)).status_code == 400
        assert (await x.get("/_consent/admin/visitors?id=unknownID1234", headers=auth)).status_code == 404
        for who in (a["visitor_id"], a["consent_id"]):  # either id finds the same subject
            r = await x.get(f"/_consent/admin/visitors?id={who}", headers=auth)
            assert r.status_code == 200
            assert r.json()["subject"] == {"consent_ids": [a["consent_id"]], "visitor_ids": [a["visitor_id"]]}
            assert len(r.json()["tables"]["events_personalisation"]) == 2
        if hasattr(mw.api, "add_prefix"):
            r = await x.get(f"/_consent/admin/visitors/{a['consent_id']}", headers=auth)
            assert r.status_code == 200
        # The operator's export shows the visitor's current grants (from their latest choice).
        summary = {s["purpose"]: s["granted"] for s in r.json()["summary"]}
        assert summary == {"necessary": True, "statistics": True, "personalisation": True, "marketing": True}
        await choose(c, {"granted": ["personalisation"]})  # a change: the export follows it
        r = await x.get(f"/_consent/admin/visitors?id={a['consent_id']}", headers=auth)
        summary = {s["purpose"]: s["granted"] for s in r.json()["summary"]}
        assert summary == {"necessary": True, "statistics": False, "personalisation": True, "marketing": False}
        r = await x.delete(f"/_consent/admin/visitors?id={a['consent_id']}", headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["receipt"]["requested_by"] == "operator:api" and r.json()["receipt"]["verified"]
    assert everything_mentioning(ch, database, a["visitor_id"]) == {}


async def test_rows_carrying_only_one_of_the_ids_are_exported_and_erased(make_app: Any, ch: Any,
                                                                         database: str) -> None:
    """A statistics-only grant (a ledger row with no visitor id), then Accept all (rows with
    both ids), then withdrawal with erasure: every ledger row of the subject is exported and
    scrubbed, not only those that carry both the consent id and the visitor id."""
    mw = make_app(site(), rights_burst=1000)
    c = client(mw, IP_A)
    async with closing(c):
        first = await choose(c, {"granted": ["statistics"]})
        assert first["visitor_id"] is None
        await choose(c, {"all": True})
        assert (await c.get("/articles/x")).status_code == 200
        export = (await c.get("/_consent/me")).json()
        assert [h["action"] for h in export["consent_history"]] == ["grant", "change"]
        assert [bool(h["visitor_id"]) for h in export["consent_history"]] == [False, True]
        r = await c.delete("/_consent/choice?erase=true")
        assert r.status_code == 200 and r.json()["erasure"]["verified"] is True, r.text
    mw.collector.flush()
    rows = q(ch, f"SELECT action, visitor_id, user_agent, toString(ip) FROM {database}.consent_log "
                 f"WHERE consent_id = '{first['consent_id']}' AND action IN ('grant', 'change') ORDER BY ts")
    assert rows == [("grant", "", "", "::"), ("change", "", "", "::")]
