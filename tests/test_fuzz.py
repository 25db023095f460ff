"""Hypothesis fuzzing of /collect bodies, /choice bodies, cookies and headers through the real
middleware (raw ASGI, so any bytes reach it): never a 5xx, never an exception, never a stored
row from an invalid event, the writer never chokes on what enrichment is handed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consentmw import ConsentMiddleware

from tests.conftest import BROWSER_UA, SECRET, site_app
from tests.faults.helpers import Store, asgi_call

SETTINGS = settings(max_examples=250, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# 401: a fuzzed DELETE /choice withdraws the shared cookie, which is refused from then on
OK = {200, 202, 204, 400, 401, 403, 404, 405, 413, 415, 429}


@pytest.fixture(scope="module")
def env(ch: Any, chdb_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    store = Store(ch, chdb_dsn)
    col = store.collector(spool_dir=str(tmp_path_factory.mktemp("fuzzspool")), flush_interval=0.2)
    mw = ConsentMiddleware(site_app(), secret_key=SECRET, clickhouse_dsn=chdb_dsn, database=store.database,
                           collector=col, collect_rate=1e9, collect_burst=10**9, choice_burst=10**9, rights_burst=10**9,
                           trusted_proxies="127.0.0.0/8,::1/128")
    cookie, _ = mw.codec.issue({"statistics"})
    state = {"accepted": 0}
    yield store, mw, cookie, state
    col.stop()
    store.drop()


def call(mw: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"",
         client: tuple[str, int] = ("198.51.100.20", 4242)) -> tuple[int, bytes]:
    status, answer, _ = asyncio.run(asgi_call(mw, method, path, headers, body, client=client))
    assert status not in range(500, 600) and status in OK, (status, answer[:200])
    return status, answer


def site(tag: str) -> bytes:
    return f"fuzz-{tag}.test".encode()


# -- strategies --------------------------------------------------------------------------
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
                         st.floats(allow_nan=False), st.text(max_size=40),
                         st.sampled_from(["/", "/a?b#c", "//x", "http://x", "1e999", "-0", "\u0000", "\ud7ff"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)), max_leaves=25)
KEYS = ["type", "path", "referrer", "ttfb", "dom_interactive", "dom_complete", "load", "lcp", "inp",
        "fcp", "cls", "url", "name", "props", "extra"]
event = st.dictionaries(st.sampled_from(KEYS), st.one_of(
    json_scalars, st.sampled_from(["pageview", "timing", "vitals", "click", "custom", "/", "/page",
                                   "https://example.com/x", 0, 1, 599999, 600001, 1e308, -1, 99.9]),
    st.dictionaries(st.text(max_size=45), json_scalars, max_size=12)), max_size=6)
path_st = st.text(max_size=60).map(lambda t: "/" + t)
ms = st.integers(0, 600_000)
valid_event = st.one_of(
    st.fixed_dictionaries({"type": st.just("pageview"), "path": path_st}, optional={"referrer": st.text(max_size=80)}),
    st.fixed_dictionaries({"type": st.just("timing"), "path": path_st, "load": ms}, optional={"ttfb": ms}),
    st.fixed_dictionaries({"type": st.just("vitals"), "path": path_st, "cls": st.floats(0, 100)},
                          optional={"lcp": ms, "inp": ms}),
    st.fixed_dictionaries({"type": st.just("click"), "path": path_st,
                           "url": st.sampled_from(["https://example.com/a", "http://x.test/", "https://[::1]/p"])}),
    st.fixed_dictionaries({"type": st.just("custom"), "path": path_st,
                           "name": st.from_regex(r"[\w .:/-]{1,64}", fullmatch=True)},
                          optional={"props": st.dictionaries(st.from_regex(r"[a-z]{1,10}", fullmatch=True),
                                                             st.one_of(st.text(max_size=20), st.integers(), st.booleans()),
                                                             max_size=10)}),
)
collect_body = st.one_of(
    st.builds(lambda evs: json.dumps({"events": evs}).encode(), st.lists(event, max_size=60)),
    st.builds(lambda evs: json.dumps({"events": evs}).encode(), st.lists(valid_event, max_size=55)),
    st.builds(lambda evs, bad: json.dumps({"events": evs + [bad]}).encode(), st.lists(valid_event, max_size=5), event),
    st.builds(lambda v: json.dumps(v, allow_nan=True).encode(), json_values),
    st.binary(max_size=400),
    st.builds(lambda d: b'{"events":' + b"[" * d + b"]" * d + b"}", st.integers(0, 5000)),
    st.builds(lambda n: b'{"events": [' + b",".join([b'{"type":"pageview","path":"/x"}'] * n) + b"]}",
              st.integers(0, 2000)),
    st.sampled_from([b'{"events": [{"type": "timing", "path": "/", "load": NaN}]}',
                     b'{"events": [{"type": "timing", "path": "/", "load": Infinity}]}',
                     b'{"events": [{"type": "timing", "path": "/", "load": 1e400}]}',
                     b'{"events": [{"type": "pageview", "path": "/\xff\xfe"}]}',
                     b'{"events": [{"type": "pageview", "path": "/", "path": 1}]}',
                     b'\xef\xbb\xbf{"events": [{"type": "pageview", "path": "/"}]}']),
)
header_bytes = st.one_of(st.binary(max_size=300), st.text(max_size=100).map(lambda t: t.encode("utf-8")),
                         st.sampled_from([b"fe80::1%eth0", b"::ffff:1.2.3.4", b"1.2.3.4, fe80::1%25lo",
                                          b"999.1.1.1", b"[::1]:80", b"unknown", b"for=\"[2001:db8::1]:4711\"",
                                          b"0" * 8000, b"\x00\xff", b"1.1.1.1" + b", 2.2.2.2" * 300,
                                          b"-1", b"18446744073709551616", b"text/plain; charset=\xff"]))
header_names = st.sampled_from([b"x-forwarded-for", b"forwarded", b"user-agent", b"accept-language",
                                b"referer", b"cookie", b"sec-gpc", b"content-type", b"content-length",
                                b"origin", b"sec-fetch-site", b"host", b"x-forwarded-proto", b"x-weird"])
headers = st.one_of(st.lists(st.tuples(header_names, header_bytes), max_size=12),
                    st.builds(lambda name, value, n: [(name, value)] * n, header_names, header_bytes,
                              st.integers(1, 300)))


# -- /collect bodies -------------------------------------------------------------------------
@SETTINGS
@given(body=collect_body, ctype=st.sampled_from([b"application/json", b"text/plain", b"text/plain;charset=UTF-8"]))
def test_fuzz_collect_bodies(env: Any, body: bytes, ctype: bytes) -> None:
    store, mw, cookie, state = env
    before = mw.collector.stats.accepted
    h = [(b"host", site("collect")), (b"user-agent", BROWSER_UA.encode()), (b"content-type", ctype),
         (b"cookie", b"consentmw=" + cookie.encode())]
    status, answer = call(mw, "POST", "/_consent/collect", h, body)
    if status == 202:
        n = json.loads(answer)["accepted"]
        assert 1 <= n <= 50
        state["accepted"] += n
        assert mw.collector.stats.accepted == before + n
    else:
        assert mw.collector.stats.accepted == before, "a refused batch must queue nothing"
        assert status in (400, 413)


def test_fuzz_collect_stored_rows_are_exactly_the_accepted_ones(env: Any) -> None:
    """Runs after the fuzz above (same module): what reached ClickHouse is what was accepted."""
    store, mw, cookie, state = env
    mw.collector.flush()
    n, distinct = store.count("fuzz-collect.test")
    assert n == distinct == state["accepted"]
    assert mw.collector.stats.dropped == 0
    bad = store.ch.command(
        f"SELECT count() FROM {store.database}.events_statistics WHERE site = 'fuzz-collect.test' AND ("
        f"NOT startsWith(path, '/') OR length(path) > 1024 OR event_type NOT IN "
        f"('pageview','timing','vitals','click','custom') OR ifNull(load_ms, 0) > 600000 "
        f"OR ifNull(cls, 0) > 100 OR ifNull(cls, 0) < 0 OR length(mapKeys(props)) > 10)")
    assert int(bad) == 0
    print(f"\n[fuzz collect] accepted={state['accepted']} stored={n} distinct={distinct}")


# -- /choice bodies ---------------------------------------------------------------------------
choice_body = st.one_of(
    st.builds(lambda v: json.dumps(v).encode(), st.fixed_dictionaries({}, optional={
        "granted": st.one_of(st.lists(st.sampled_from(["statistics", "marketing", "necessary", "x", "", "STATISTICS"])
                                      | st.text(max_size=50), max_size=70), json_values),
        "all": st.one_of(st.booleans(), json_scalars), "lang": json_scalars, "page": json_values,
        "other": json_scalars})),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.binary(max_size=300),
    st.builds(lambda n: b'{"granted": ["' + b"a" * n + b'"]}', st.integers(0, 20000)),
)


@SETTINGS
@given(body=choice_body, ctype=st.sampled_from([b"application/json", b"text/plain", b"application/json; x=\xff"]))
def test_fuzz_choice_bodies(env: Any, body: bytes, ctype: bytes) -> None:
    store, mw, cookie, state = env
    status, answer = call(mw, "POST", "/_consent/choice",
                          [(b"host", site("choice")), (b"content-type", ctype)], body)
    if status == 200:
        state_body = json.loads(answer)
        assert set(state_body["consent"]["granted"]) <= set(mw.policy.ids)
    else:
        assert status in (400, 413, 415), status


# -- cookies and headers ------------------------------------------------------------------------
@SETTINGS
@given(cookie=st.one_of(st.binary(max_size=600), st.text(max_size=300).map(lambda t: t.encode("utf-8"))),
       repeat=st.integers(1, 4))
def test_fuzz_cookies(env: Any, cookie: bytes, repeat: int) -> None:
    store, mw, valid, state = env
    h = [(b"host", site("cookie"))] + [(b"cookie", b"consentmw=" + cookie)] * repeat
    status, body = call(mw, "GET", "/", h)
    assert status == 200 and b"stats=False" in body
    status, _ = call(mw, "GET", "/_consent/state", h)
    assert status == 200
    status, _ = call(mw, "POST", "/_consent/collect", h + [(b"content-type", b"application/json")],
                     b'{"events": [{"type": "pageview", "path": "/"}]}')
    assert status in (204, 400)


@SETTINGS
@given(extra=headers, path=st.sampled_from(["/", "/articles/x", "/_consent/state", "/_consent/collect",
                                            "/_consent/choice", "/_consent/me", "/_consent/banner.js",
                                            "/_consent/health", "/_consent/nope"]),
       method=st.sampled_from(["GET", "POST", "HEAD", "DELETE", "PUT"]),
       peer=st.sampled_from([("127.0.0.1", 1), ("::1", 2), ("198.51.100.3", 3), ("fe80::1%eth0", 4), ("", 0)]))
def test_fuzz_headers(env: Any, extra: list[tuple[bytes, bytes]], path: str, method: str,
                      peer: tuple[str, int]) -> None:
    store, mw, valid, state = env
    h = [(b"host", site("headers")), (b"cookie", b"consentmw=" + valid.encode()),
         (b"user-agent", BROWSER_UA.encode())] + extra
    body = b'{"events": [{"type": "pageview", "path": "/h"}]}' if method == "POST" else b""
    call(mw, method, path, h, body, client=peer)


def test_fuzz_headers_never_broke_the_writer(env: Any) -> None:
    store, mw, cookie, state = env
    mw.collector.flush()
    assert mw.collector.stats.dropped == 0, "enrichment choked on a fuzzed header"
    assert mw.collector.writer.running
