"""One bad input costs at most itself: invalid Unicode is repaired at ingress, and an item or
row the writer still cannot handle is split off its batch and quarantined (0600) while every
good item of the same batch is stored. Real middleware, real chDB."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consentmw import ConsentMiddleware
from consentmw.collect.hit import Hit
from consentmw.core import text
from consentmw.core.ledger import ConsentRecord
from consentmw.store.spool import Record, parse_segment
from consentmw.store.writer import MAX_SPLIT_FAILURES, bisect, decode_ipc, encode_ipc

from tests.conftest import BROWSER_UA, SECRET
from tests.faults.helpers import Store, asgi_call

ADMIN = "admin-token-0123456789abcdef"


async def html_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Every path is an HTML page (so any random path is a page view)."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
    await send({"type": "http.response.body", "body": b"<html>page</html>"})


@pytest.fixture(scope="module")
def store(ch: Any, chdb_dsn: str) -> Any:
    s = Store(ch, chdb_dsn)
    yield s
    s.drop()


@pytest.fixture
def env(store: Store, tmp_path: Any) -> Any:
    """A middleware whose writer flushes only when told: everything sent lands in one batch."""
    col = store.collector(spool_dir=str(tmp_path / "spool"), flush_interval=3600, batch_size=100_000)
    mw = ConsentMiddleware(html_app, secret_key=SECRET, clickhouse_dsn=store.dsn, database=store.database,
                           collector=col, collect_rate=1e9, collect_burst=10**9, admin_token=ADMIN,
                           choice_rate=1e9, choice_burst=10**9)
    cookie, _ = mw.codec.issue({"statistics", "personalisation"})
    yield mw, cookie
    col.stop()


def call(mw: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> tuple[int, bytes]:
    status, answer, _ = asyncio.run(asgi_call(mw, method, path, headers, body))
    assert status < 500, (status, answer[:300])
    return status, answer


def rows(store: Store, where: str, table: str = "events_statistics", **params: Any) -> list[dict[str, Any]]:
    result = store.ch.query(f"SELECT * FROM {store.database}.{table} WHERE {where}", parameters=params)
    return [dict(zip(result.column_names, r)) for r in result.result_rows]


def browser(site: str, cookie: str, **extra: bytes) -> list[tuple[bytes, bytes]]:
    h = [(b"host", site.encode()), (b"user-agent", BROWSER_UA.encode()), (b"content-type", b"application/json"),
         (b"cookie", b"consentmw=" + cookie.encode())]
    return h + [(k.replace("_", "-").encode(), v) for k, v in extra.items()]


# -- the rule itself ------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    ("plain", "plain"), ("a\x00b", "a\ufffdb"), ("x\ud800y", "x\ufffdy"), ("\udfff", "\ufffd"),
    ("\ufdd0\ufdef\ufffe\uffff", "\ufffd" * 4), ("\U0001fffe\U0010ffff", "\ufffd\ufffd"),
    ("\U0001F600 é ю ￼ \ufffd", "\U0001F600 é ю ￼ \ufffd"),  # astral and ordinary text untouched
])
def test_clean_replaces_only_what_cannot_be_stored(raw: str, expected: str) -> None:
    assert text.clean(raw) == expected
    assert text.is_clean(expected) and text.is_clean(raw) == (raw == expected)
    expected.encode("utf-8")  # always encodable


def test_decode_reads_header_bytes_as_clean_utf8() -> None:
    assert text.decode(b"caf\xc3\xa9") == "café"
    assert text.decode(b"\xed\xa0\x80x\x00\xef\xbf\xbe") == "\ufffd\ufffd\ufffdx\ufffd\ufffd"
    assert text.decode(b"a" * 600, 512) == "a" * 512


# -- the reported defect ----------------------------------------------------------------------
def test_a_lone_surrogate_beacon_costs_nobody_else_their_page_views(env: Any, store: Store) -> None:
    """Reproduced before the fix: the surrogate made the writer drop the whole batch."""
    mw, cookie = env
    site = f"surrogate-{uuid.uuid4().hex[:6]}.test"
    h = browser(site, cookie)
    for i in range(300):
        call(mw, "GET", f"/article/{i}", h)
    bad = b'{"events": [{"type": "pageview", "path": "/x\\ud800y", "referrer": "https://r.test/\\udc00"},' \
          b' {"type": "custom", "path": "/c", "name": "buy", "props": {"plan": "\\ud83d pro\\u0000"}}]}'
    status, answer = call(mw, "POST", "/_consent/collect", h, bad)
    assert status == 202 and json.loads(answer) == {"accepted": 2}
    status, _ = call(mw, "POST", "/_consent/choice", [(b"host", site.encode()), (b"content-type", b"application/json")],
                     b'{"all": true, "page": "/p\\ud800\\u0000"}')
    assert status == 200
    mw.collector.flush()
    assert mw.collector.stats.dropped == 0 and mw.collector.stats.quarantined == 0
    stored = rows(store, "site = %(s)s", s=site)
    assert len(stored) == 302
    assert {"/x\ufffdy", "/c"} <= {r["path"] for r in stored}
    [custom] = [r for r in stored if r["path"] == "/c"]
    assert custom["props"] == {"plan": "\ufffd pro\ufffd"}
    [ledger] = rows(store, "site = %(s)s", "consent_log", s=site)
    assert ledger["page"] == "/p\ufffd\ufffd"


def test_page_views_with_hostile_paths_and_headers_are_stored_repaired(env: Any, store: Store) -> None:
    mw, cookie = env
    site = f"headers-{uuid.uuid4().hex[:6]}.test"
    h = browser(site, cookie, accept_language=b"kk\x00,ru", referer=b"https://ref.test/\xed\xa0\x80\xef\xbf\xbf",
                x_forwarded_for=b"\x00\xff")
    h[1] = (b"user-agent", BROWSER_UA.encode() + b" \xed\xa0\x80\x00")
    call(mw, "GET", "/p\ud800/\x00/\ufdd0", h, b"")
    status, _, _ = asyncio.run(asgi_call(mw, "GET", "/q", h, query=b"utm_source=a%00b%EF%BF%BE&utm_medium=%ED%A0%80"))
    assert status == 200
    mw.collector.flush()
    stored = {r["path"]: r for r in rows(store, "site = %(s)s", s=site)}
    assert set(stored) == {"/p\ufffd/\ufffd/\ufffd", "/q"}
    assert stored["/q"]["utm_source"] == "a\ufffdb\ufffd" and "\ud800" not in stored["/q"]["utm_medium"]
    [personal] = rows(store, "site = %(s)s AND path = '/q'", "events_personalisation", s=site)
    assert personal["referrer"] == "https://ref.test/\ufffd\ufffd\ufffd\ufffd"
    assert mw.collector.stats.quarantined == 0


# -- the writer's isolation ----------------------------------------------------------------------
def poison_hit(site: str) -> Hit:
    """An item no ingress produces (a property value that is not text): processing it fails."""
    return Hit(time.time(), "custom", site, "/poison", "cid", "v", frozenset({"statistics"}), None, "203.0.113.1",
               "", BROWSER_UA, "en", "", None, 0, 0, {"type": "custom", "path": "/poison", "name": "x",
                                                      "props": {"k": object()}})


def poison_record(site: str) -> ConsentRecord:
    return ConsentRecord("cid", float("nan"), "grant", "v", [], [], "banner", False, "en", "h", "/", "203.0.113.1",
                         "", BROWSER_UA, site)


def test_bisect_finds_every_bad_item_in_order_with_bounded_tries() -> None:
    items = list(range(1000))
    bad = {3, 500, 501, 999}
    tried: list[list[int]] = []

    def attempt(part: list[int]) -> bool:
        tried.append(part)
        return not bad & set(part)

    pieces = list(bisect(items, attempt, MAX_SPLIT_FAILURES))
    assert [i for part, _ in pieces for i in part] == items
    assert {i for part, failed in pieces if failed for i in part} == bad
    assert len(tried) < 80
    # all bad: the tries stop at the bound, the rest is given up whole, nothing is lost
    tried.clear()
    pieces = list(bisect(items, lambda part: bool(tried.append(part)), 10))
    assert len(tried) <= 10 and [i for part, _ in pieces for i in part] == items
    assert all(failed for _, failed in pieces)


def test_poisoned_items_are_quarantined_and_counted_and_the_rest_of_the_batch_is_stored(env: Any,
                                                                                      store: Store) -> None:
    mw, cookie = env
    site = f"poison-{uuid.uuid4().hex[:6]}.test"
    col = mw.collector
    h = browser(site, cookie)
    for i in range(200):
        call(mw, "GET", f"/page/{i}", h)
        if i in (17, 150):
            col.submit(poison_hit(site))
        if i == 90:
            col.record(poison_record(site))
    status, _ = call(mw, "POST", "/_consent/choice", [(b"host", site.encode()), (b"content-type", b"application/json")],
                     b'{"all": false}')
    assert status == 200
    assert len(col.writer.queue) == 200 + 3 + 1  # one batch
    col.flush()
    assert len(rows(store, "site = %(s)s", s=site)) == 200
    assert len(rows(store, "site = %(s)s", "consent_log", s=site)) == 1
    s = col.stats
    assert (s.quarantined, s.dropped) == (3, 0)
    kept = col.spool.quarantined()
    assert kept and all(p.stat().st_mode & 0o777 == 0o600 for p in kept)
    assert sum(p.read_text().count('"why"') for p in kept) == 3
    status, body = call(mw, "GET", "/_consent/health", [(b"authorization", f"Bearer {ADMIN}".encode())])
    assert json.loads(body)["quarantined"] == 3
    status, body = call(mw, "GET", "/_consent/metrics", [(b"authorization", f"Bearer {ADMIN}".encode())])
    assert b"consentmw_quarantined_total 3.0" in body


def test_a_spooled_batch_the_store_refuses_is_split_and_only_the_bad_rows_are_quarantined(
        env: Any, store: Store) -> None:
    """A real refusal by ClickHouse (a malformed UUID) in a spooled batch of good rows."""
    mw, cookie = env
    col = mw.collector
    site = f"refused-{uuid.uuid4().hex[:6]}.test"
    h = browser(site, cookie)
    for i in range(40):
        call(mw, "GET", f"/r/{i}", h)
    data = col.minimiser.process(list(col.writer.queue))["events_statistics"]
    col.writer.queue.clear()
    ids = data.column("event_id").to_pylist()
    ids[7] = "not-a-uuid"
    ids[33] = "also-not-a-uuid"
    data = data.set_column(data.schema.get_field_index("event_id"), "event_id", pa.array(ids, pa.string()))
    col.spool.write(Record("rows", "events_statistics", "refused-1", encode_ipc(data)))
    for _ in range(8):
        col.writer._healthy()
        col.writer.replay()
    assert not col.spool.pending()
    stored = rows(store, "site = %(s)s", s=site)
    assert len(stored) == 38 and col.stats.poisoned == 2
    [kept] = col.spool.quarantined()
    assert kept.stat().st_mode & 0o777 == 0o600
    [(record, _raw)], bad = parse_segment(kept.read_bytes())
    assert not bad and record.table == "events_statistics"
    assert sorted(decode_ipc(record.body).column("event_id").to_pylist()) == ["also-not-a-uuid", "not-a-uuid"]
    # replaying the same record again (say, after a crash mid-way) stores nothing twice
    col.spool.write(Record("rows", "events_statistics", "refused-1", encode_ipc(data)))
    for _ in range(8):
        col.writer._healthy()
        col.writer.replay()
    assert len(rows(store, "site = %(s)s", s=site)) == 38


# -- the property: stored == acknowledged, poison or not -------------------------------------------
# Hypothesis' text() never draws surrogates: they are mixed in by hand, with NUL and non-characters.
odd = st.one_of(st.integers(0xD800, 0xDFFF).map(chr), st.sampled_from(["\x00", "\ufffe", "\uffff", "\ufdd0",
                                                                       "\U0001fffe", "\U0010ffff"]))
anything = st.lists(st.one_of(st.characters(), odd), max_size=40).map("".join)
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: no ASCII letters: a user-agent tail that cannot spell a bot's name
no_letters = st.lists(st.one_of(st.characters(exclude_characters=LETTERS), odd), max_size=30).map("".join)


def raw(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pages=st.lists(st.tuples(anything, anything, no_letters, anything, anything), min_size=1, max_size=8),
       beacons=st.lists(st.tuples(anything, anything, anything), max_size=8),
       choices=st.lists(anything, max_size=4), poison=st.integers(0, 3))
def test_every_acknowledged_event_is_stored_whatever_text_it_carries(
        env: Any, store: Store, pages: list[tuple[str, ...]], beacons: list[tuple[str, ...]],
        choices: list[str], poison: int) -> None:
    mw, cookie = env
    col = mw.collector
    run = uuid.uuid4().hex[:10]
    marker = f"/m/{run}/"
    acknowledged = 0
    for path, referrer, ua_tail, language, host in pages:
        h = [(b"host", raw(host)), (b"cookie", b"consentmw=" + cookie.encode()),
             (b"user-agent", BROWSER_UA.encode() + b" " + raw(ua_tail)), (b"referer", raw(referrer)),
             (b"accept-language", raw(language)), (b"x-forwarded-for", raw(referrer))]
        status, _ = call(mw, "GET", marker + path + "/end", h)
        assert status == 200
        acknowledged += 1
    for path, referrer, value in beacons:
        body = json.dumps({"events": [{"type": "pageview", "path": marker + path, "referrer": referrer},
                                      {"type": "custom", "path": marker + "c", "name": "n", "props": {"v": value}}]})
        status, answer = call(mw, "POST", "/_consent/collect", browser("b.test", cookie), body.encode())
        assert status == 202 and json.loads(answer)["accepted"] == 2
        acknowledged += 2
    for page in choices:
        body = json.dumps({"all": True, "page": marker + page})
        status, _ = call(mw, "POST", "/_consent/choice", [(b"host", b"c.test"), (b"content-type", b"application/json")],
                         body.encode())
        assert status == 200
    for i in range(poison):
        col.submit(poison_hit("poison.test")) if i % 2 == 0 else col.record(poison_record("poison.test"))
    before = col.stats.quarantined
    col.flush()
    assert col.stats.quarantined - before == poison
    assert col.stats.dropped == 0
    like = {"m": marker + "%"}
    stored = store.ch.query(f"SELECT count(), countIf(isValidUTF8(path) AND NOT match(path, '\\\\x00')) "
                            f"FROM {store.database}.events_statistics WHERE path LIKE %(m)s", parameters=like).result_rows[0]
    assert stored == (acknowledged, acknowledged)
    ledger = store.ch.query(f"SELECT count() FROM {store.database}.consent_log WHERE page LIKE %(m)s",
                            parameters=like).result_rows[0][0]
    assert ledger == len(choices)
