"""Withdrawal and erasure enforced on the server (issue 11.8) and erasure racing collection
(11.9), on real chDB. A consent cookie stays valid for 180 days, so the server must refuse a
copy replayed after the visitor withdrew, narrowed or erased, in every process: here two
middlewares on one store stand for two app servers."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from typing import Any, Callable

import httpx
import pytest
import uvicorn

from consentmw import ConsentMiddleware
from consentmw.core.consent import COOKIE_NAME
from consentmw.core.revocation import Revocations

from tests.conftest import BROWSER_UA
from tests.test_rights import site

Factory = Callable[..., ConsentMiddleware]


def client(mw: Any, cookie: str | None = None) -> httpx.AsyncClient:
    c = httpx.AsyncClient(transport=httpx.ASGITransport(app=mw, client=("81.2.69.160", 5000)),
                          base_url="http://site.test", headers={"user-agent": BROWSER_UA})
    if cookie:
        c.cookies.set(COOKIE_NAME, cookie, domain="site.test")
    return c


def stored(ch: Any, database: str, path_like: str) -> dict[str, int]:
    out = {}
    for table in ("events_statistics", "events_personalisation"):
        out[table] = ch.query(f"SELECT count() FROM {database}.{table} WHERE path LIKE '{path_like}'").result_rows[0][0]
    return out


async def replay(mw: Any, cookie: str, path: str) -> httpx.Response:
    async with client(mw, cookie) as c:
        page = await c.get(path)
        assert page.status_code == 200
        beacon = await c.post("/_consent/collect", json={"events": [{"type": "pageview", "path": path + "-spa"}]})
        assert beacon.status_code == 204, beacon.text  # nothing stored: no consent
        return await c.get("/_consent/state")


@pytest.mark.parametrize("how", ["withdraw", "withdraw-erase", "delete-me", "narrow"])
async def test_an_old_cookie_replayed_after_the_change_collects_nothing(make_app: Factory, ch: Any, database: str,
                                                                        how: str) -> None:
    mw = make_app(site())
    async with client(mw) as c:
        assert (await c.post("/_consent/choice", json={"all": True})).status_code == 200
        old = c.cookies[COOKIE_NAME]
        assert (await c.get("/before")).status_code == 200
        if how == "withdraw":
            r = await c.delete("/_consent/choice")
        elif how == "withdraw-erase":
            r = await c.delete("/_consent/choice?erase=true")
        elif how == "delete-me":
            r = await c.delete("/_consent/me")
        else:
            r = await c.post("/_consent/choice", json={"granted": ["statistics"]})
        assert r.status_code == 200, r.text
        new = c.cookies.get(COOKIE_NAME)
    if how == "narrow":
        async with client(mw, old) as c:
            await c.get("/replayed")
        mw.collector.flush()
        # the narrower choice is what counts: statistics only, personalisation no longer
        assert stored(ch, database, "/replayed%") == {"events_statistics": 0, "events_personalisation": 0}
        async with client(mw, new) as c:
            await c.get("/replayed-new")
        mw.collector.flush()
        assert stored(ch, database, "/replayed-new") == {"events_statistics": 1, "events_personalisation": 0}
        return
    state = (await replay(mw, old, "/replayed")).json()
    assert state["consent"] is None and state["prompt"] is True
    mw.collector.flush()
    assert stored(ch, database, "/replayed%") == {"events_statistics": 0, "events_personalisation": 0}
    if how.startswith("withdraw"):
        # the withdrawal's own cookie is valid: the visitor is not asked again
        async with client(mw, new) as c:
            body = (await c.get("/_consent/state")).json()
        assert body["prompt"] is False and body["consent"]["granted"] == ["necessary"]
    async with client(mw, old) as c:
        assert (await c.get("/_consent/me")).status_code == 401  # nor does it identify anyone


async def test_revocations_reach_a_second_app_server_through_the_store(make_app: Factory, ch: Any,
                                                                       database: str) -> None:
    """Two middlewares (two collectors, two revocation syncs) on one store: a withdrawal made on
    one is refused by the other within its refresh interval; an erasure too."""
    one = make_app(site(), revocation_refresh=0.2)
    two = make_app(site(), revocation_refresh=0.2)
    cookies = {}
    for name in ("withdrawn", "erased"):
        async with client(one) as c:
            assert (await c.post("/_consent/choice", json={"all": True})).status_code == 200
            cookies[name] = c.cookies[COOKIE_NAME]
            async with client(two, cookies[name]) as other:
                assert (await other.get(f"/{name}-before")).status_code == 200  # collected on two
    async with client(one, cookies["withdrawn"]) as c:
        assert (await c.delete("/_consent/choice")).status_code == 200
    async with client(one, cookies["erased"]) as c:
        assert (await c.delete("/_consent/me")).status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(two.codec.decode(v) is None for v in cookies.values()):
            break
        await asyncio.sleep(0.05)
    for name in ("withdrawn", "erased"):
        assert (await replay(two, cookies[name], f"/{name}-after")).json()["consent"] is None
    two.collector.flush()
    assert stored(ch, database, "/%-after%") == {"events_statistics": 0, "events_personalisation": 0}
    rows = ch.query(f"SELECT count(), countIf(erase = 1) FROM {database}.revoked_consents").result_rows[0]
    assert rows[0] >= 2 and rows[1] == 1


async def test_the_revocation_list_is_bounded_by_the_cookie_lifetime(make_app: Factory, ch: Any,
                                                                     database: str) -> None:
    """Only revocations younger than the cookie lifetime are loaded (older cookies expired anyway)."""
    mw = make_app(site(), cookie_max_age=3600, revocation_refresh=0.1)
    async with client(mw) as c:
        await c.get("/_consent/state")  # starts the collector (migrates the store)
    mw.collector.flush()
    ch.command(f"INSERT INTO {database}.revoked_consents (consent_id, before, erase) VALUES "
               f"('oldoldoldoldoldo', now64(3) - toIntervalSecond(7200), 0), "
               f"('newnewnewnewnewn', now64(3) - toIntervalSecond(60), 0)")
    sync = next(c for c in mw.collector.companions)
    deadline = time.monotonic() + 10
    while "newnewnewnewnewn" not in mw.codec.revocations.before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert "newnewnewnewnewn" in mw.codec.revocations.before
    assert "oldoldoldoldoldo" not in mw.codec.revocations.before
    revocations = Revocations()
    revocations.revoke("a" * 16, time.time() - 7200)
    revocations.revoke("b" * 16, time.time())
    revocations.prune(time.time() - 3600)
    assert list(revocations.before) == ["b" * 16] and sync.loaded


# --------------------------------------------------------------------------- erasure races
class Server:
    """A uvicorn server in a thread on 127.0.0.1 (the test reads the same chDB store)."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)

    def request(self, method: str, path: str, cookie: str | None = None, body: Any = None) -> tuple[int, Any, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"user-agent": BROWSER_UA, "host": "site.test"}
        if cookie:
            headers["cookie"] = f"{COOKIE_NAME}={cookie}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            text = r.read().decode()
            value = None
            for key, val in r.getheaders():
                if key.lower() == "set-cookie" and val.startswith(COOKIE_NAME + "=") and "Max-Age=0" not in val:
                    value = val.split(";")[0].split("=", 1)[1]
            return r.status, value, text
        finally:
            conn.close()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def test_every_receipt_is_verified_while_the_visitor_keeps_browsing(make_app: Factory, ch: Any,
                                                                     database: str) -> None:
    """Real concurrency: a uvicorn server, and per visitor two threads browsing pages and sending
    beacons with the visitor's cookie while the visitor's DELETE /me runs."""
    mw = make_app(site(), flush_interval=0.05, collect_rate=1e6, collect_burst=1_000_000)
    server = Server(mw)
    receipts: list[dict[str, Any]] = []
    late_rows = []
    try:
        for round_ in range(6):
            status, cookie, _ = server.request("POST", "/_consent/choice", body={"all": True})
            assert status == 200 and cookie
            stop = threading.Event()
            counts = [0]
            lock = threading.Lock()

            def browse(tag: str) -> None:
                i = 0
                while not stop.is_set():
                    server.request("GET", f"/r{round_}/{tag}/{i}", cookie)
                    server.request("POST", "/_consent/collect", cookie,
                                   {"events": [{"type": "pageview", "path": f"/r{round_}/{tag}/spa{i}"}]})
                    i += 1
                    with lock:
                        counts[0] += 1

            def browsed_at_least(n: int) -> None:
                """Until the tabs have made n more rounds (a busy machine may need long)."""
                target, deadline = counts[0] + n, time.monotonic() + 30
                while counts[0] < target and time.monotonic() < deadline:
                    time.sleep(0.01)

            tabs = [threading.Thread(target=browse, args=(t,)) for t in ("a", "b")]
            for t in tabs:
                t.start()
            time.sleep(0.4)
            browsed_at_least(3)
            before = counts[0]
            status, _, text = server.request("DELETE", "/_consent/me", cookie)
            # the moment the erasure stopped collection for the visitor
            asked_at = mw.codec.revocations.erased_at(cookie.split("~")[1])
            assert asked_at is not None
            time.sleep(0.3)  # the tabs keep going with the old cookie
            browsed_at_least(3)
            stop.set()
            for t in tabs:
                t.join(30)
            assert status == 200, text
            receipts.append(json.loads(text)["receipt"])
            # the tabs really browsed around the erasure
            assert before >= 3 and counts[0] - before >= 3 and counts[0] > 4, (before, counts)
            mw.collector.flush()
            # statistics rows carry no identifier (out of the erasure's scope), but none may
            # come from after the request; personalisation rows none at all
            late_rows.append(ch.query(
                f"SELECT (SELECT count() FROM {database}.events_personalisation WHERE path LIKE '/r{round_}/%'), "
                f"(SELECT count() FROM {database}.events_statistics WHERE path LIKE '/r{round_}/%' "
                f"AND ts > fromUnixTimestamp64Milli({int(asked_at * 1000)}))").result_rows[0])
    finally:
        server.stop()
    assert all(r["verified"] for r in receipts), receipts
    # nothing of any erased visitor is left, and nothing was collected after the erasure either
    assert all(rows == (0, 0) for rows in late_rows), late_rows
    verified = ch.query(f"SELECT count(), countIf(verified) FROM {database}.erasure_log").result_rows[0]
    assert verified[0] == verified[1] == 6
