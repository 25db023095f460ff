"""The msgspec fast path of beacon validation accepts only what the reference validator
accepts, and normalises it identically; anything else it leaves to the reference."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consentmw.collect import beacon
from consentmw.collect.beacon import BeaconError, validate_batch
from consentmw.collect.beacon_schema import fast_events
from consentmw.web.http import HTTPProblem, parse_json

VALID = [
    {"type": "pageview", "path": "/articles/1?x=1#top", "referrer": "https://duckduckgo.com/"},
    {"type": "pageview", "path": "/"},
    {"type": "timing", "path": "/a", "ttfb": 42.6, "dom_interactive": 310, "dom_complete": 620, "load": 700},
    {"type": "vitals", "path": "/a", "lcp": 1200, "inp": 80, "cls": 0.02, "fcp": 650, "ttfb": 42},
    {"type": "vitals", "path": "/a", "cls": 0},
    {"type": "click", "path": "/a", "url": "https://Example.org/outbound?x=1"},
    {"type": "custom", "path": "/a", "name": "signup", "props": {"plan": "pro", "step": 2, "ok": True, "r": 0.5}},
    {"type": "custom", "path": "/a", "name": "a.b:c/d-e f_g"},
]


def reference(body: bytes) -> list[dict[str, Any]] | None:
    try:
        return validate_batch(parse_json(body))
    except (BeaconError, HTTPProblem):
        return None


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_the_usual_batch_takes_the_fast_path_with_the_same_result() -> None:
    body = encode({"events": VALID * 6})
    fast = fast_events(body)
    assert fast is not None
    assert fast == reference(body)
    assert [list(e) for e in fast] == [list(e) for e in reference(body) or []]  # same keys, same order


@pytest.mark.parametrize("body", [
    b"", b"null", b"[]", b"{}", b'{"events": []}', b'{"events": "x"}', b"not json",
    encode({"events": [VALID[0]], "extra": 1}),
    encode({"events": [VALID[0]] * (beacon.MAX_EVENTS + 1)}),
    encode({"events": [{"type": "pageview"}]}),
    encode({"events": [{"type": "pageview", "path": "relative"}]}),
    encode({"events": [{"type": "pageview", "path": "/" + "a" * beacon.MAX_PATH}]}),
    encode({"events": [{"type": "pageview", "path": "/", "referrer": None}]}),
    encode({"events": [{"type": "pageview", "path": "/", "url": "https://x.test/"}]}),
    encode({"events": [{"type": "timing", "path": "/"}]}),
    encode({"events": [{"type": "timing", "path": "/", "ttfb": True}]}),
    encode({"events": [{"type": "timing", "path": "/", "ttfb": None}]}),
    encode({"events": [{"type": "timing", "path": "/", "ttfb": -1}]}),
    encode({"events": [{"type": "timing", "path": "/", "ttfb": beacon.MAX_MS + 0.5}]}),
    encode({"events": [{"type": "timing", "path": "/", "ttfb": 10 ** 30}]}),
    b'{"events": [{"type": "timing", "path": "/", "ttfb": NaN}]}',
    b'{"events": [{"type": "timing", "path": "/", "ttfb": 1e400}]}',
    encode({"events": [{"type": "vitals", "path": "/", "cls": 100.5}]}),
    encode({"events": [{"type": "click", "path": "/", "url": "javascript:alert(1)"}]}),
    encode({"events": [{"type": "click", "path": "/", "url": "https:///nohost"}]}),
    encode({"events": [{"type": "click", "path": "/", "url": "http://[::1"}]}),
    encode({"events": [{"type": "custom", "path": "/", "name": ""}]}),
    encode({"events": [{"type": "custom", "path": "/", "name": "bad<name>"}]}),
    encode({"events": [{"type": "custom", "path": "/", "name": "n", "props": {"k": [1]}}]}),
    encode({"events": [{"type": "custom", "path": "/", "name": "n", "props": {"k": "v" * 201}}]}),
    encode({"events": [{"type": "custom", "path": "/", "name": "n", "props": {"bad key!": "v"}}]}),
    encode({"events": [{"type": "custom", "path": "/", "name": "n", "props": {f"k{i}": i for i in range(11)}}]}),
    encode({"events": [{"type": "other", "path": "/"}]}),
    encode({"events": [{"type": 1, "path": "/"}]}),
    encode({"events": [VALID[0], "not an object"]}),
    # the last duplicate key wins in both; the fast path also checks the others
    b'{"events": [{"type": "pageview", "path": "/"}], "events": "x"}',
    b'{"events": [{"type": "timing", "path": "/", "ttfb": -5, "ttfb": 5}]}',
])
def test_whatever_the_reference_rejects_the_fast_path_does_not_accept(body: bytes) -> None:
    assert fast_events(body) is None or fast_events(body) == reference(body)
    if reference(body) is None:
        assert fast_events(body) is None


@pytest.mark.parametrize("text", ["/caf\u00e9", "/a\u0000b", "/\ud800", "/\ufffe", "/tab\there", "/q\"uote"])
def test_escaped_or_non_ascii_text_is_left_to_the_reference(text: str) -> None:
    """Rules about unusual characters live in the reference validator only: such bodies never
    take the fast path, whether JSON writes the character raw or escaped."""
    event = {"type": "pageview", "path": text}
    for body in (json.dumps({"events": [event]}, ensure_ascii=False).encode("utf-8", "surrogatepass"),
                 json.dumps({"events": [event]}).encode()):
        assert fast_events(body) is None


_hostile = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10, max_value=10 ** 20), st.sampled_from([10 ** 400, -10 ** 309]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0, 0.5, 599_999.5, 600_000, 100, 100.01]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    st.sampled_from(["/", "/a?b#c", "https://x.test/p?q", "http://h", "ftp://h/", "a b", "x" * 65, "/" + "p" * 1024]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.sampled_from(["k", "bad key!", "x" * 41]),
                                                        st.one_of(st.text(max_size=3), st.integers(), st.none()),
                                                        max_size=3),
)
_keys = st.sampled_from(["type", "path", "referrer", "ttfb", "dom_interactive", "dom_complete", "load", "lcp",
                         "inp", "fcp", "cls", "url", "name", "props", "extra"])


@st.composite
def mutated(draw: Any) -> dict[str, Any]:
    event = dict(draw(st.sampled_from(VALID)))
    for key in draw(st.lists(_keys, max_size=3)):
        if draw(st.booleans()):
            event[key] = draw(_hostile)
        else:
            event.pop(key, None)
    return event


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=0, max_size=4))
def test_fast_path_never_accepts_more_nor_normalises_differently(events: list[dict[str, Any]]) -> None:
    body = json.dumps({"events": events}).encode()
    fast = fast_events(body)
    expected = reference(body)
    if fast is not None:
        assert fast == expected
    elif body.isascii() and b"\\" not in body:
        # in its scope, the fast path accepts every valid batch (it is not just declining)
        assert expected is None


# -- hostile bodies found by attacking the fast path ---------------------------------------
#: an integer JSON allows (401 digits, under Python's 4300-digit limit) that no float holds
HUGE = "1" + "0" * 400


def _custom(props: str) -> bytes:
    return ('{"events": [{"type": "custom", "path": "/", "name": "n", "props": {%s}}]}' % props).encode()


@pytest.mark.parametrize("body", [
    ('{"events": [{"type": "timing", "path": "/", "ttfb": %s}]}' % HUGE).encode(),
    ('{"events": [{"type": "timing", "path": "/", "load": -%s}]}' % HUGE).encode(),
    ('{"events": [{"type": "vitals", "path": "/", "cls": %s}]}' % HUGE).encode(),
    _custom(f'"k": {HUGE}'),
    _custom(f'"k": -{HUGE}'),
    _custom(f'"ok": 1, "k": {HUGE}'),
])
def test_integers_beyond_float_range_are_refused_with_a_reason(body: bytes) -> None:
    """Both validators used to raise OverflowError (math.isfinite / format on a 401-digit
    int): a 500 from /collect instead of a 400."""
    with pytest.raises(BeaconError):
        validate_batch(parse_json(body))
    assert fast_events(body) is None


@pytest.mark.parametrize("body", [
    _custom('"k": 1' + "0" * 308),  # the largest integers a float holds are still numbers
    _custom('"k": 18446744073709551616, "m": -9223372036854775809'),  # past int64 / uint64
    _custom('"k": -0, "m": -0.0, "n": 1e-400, "o": 1E2, "p": 123456789'),
    _custom('"a": 1, "a": "x"'), _custom('"a": [1], "a": "x"'), _custom('"a": "x", "a": [1]'),
    b'{"events": [{"type": "vitals", "path": "/", "cls": -0, "lcp": 1, "lcp": -1}]}',
    b'{"events": [{"type": "vitals", "path": "/", "cls": -0.0, "lcp": -1, "lcp": 1}]}',
    b'{"events": [{"type": "timing", "path": "/", "ttfb": 0.5, "load": 1.5, "dom_complete": 2.5}]}',
    b'{"events": [{"type": "timing", "path": "/", "ttfb": 600000.0000000001}]}',
    b'{"events": [{"type": "timing", "path": "/", "ttfb": NaN}]}',
    b'{"events": [{"type": "timing", "path": "/", "ttfb": -Infinity}]}',
    b'{"events": [{"type": "timing", "path": "/", "ttfb": 01}]}',
    b'{"events": [{"type": "timing", "path": "/", "ttfb": .5}]}',
    b'{"events": [{"type": "click", "path": "/", "type": "pageview"}]}',
    b'{"events": [{"type": "pageview", "path": "/", "type": "click", "url": "http://a/"}]}',
    b'{"events": [{"path": "/a", "path": "/b", "type": "pageview"}]}',
    b'{"events": [{"type": "custom", "path": "/", "name": "n", "name": "bad<"}]}',
    b'{"events": [{"type": "pageview", "path": "/a\x7fb"}]}',
    b'{"events": [{"type": "pageview", "path": "/a\tb"}]}',
    b'{"events": [{"type": "pageview", "path": "/?#"}, {"type": "pageview", "path": "/#?x"}]}',
    b'\xef\xbb\xbf{"events": [{"type": "pageview", "path": "/"}]}',
    b' {"events": [{"type": "pageview", "path": "/"}]}\n',
    b'{"events": [{"type": "pageview", "path": "/"}]}{}',
    b'{"events": [[[[[[[[[[[]]]]]]]]]]]}',
    _custom('"k": {"a": {"b": {"c": {"d": {"e": {}}}}}}'),
    ('{"events": [%s]}' % ", ".join(['{"type": "pageview", "path": "/"}'] * beacon.MAX_EVENTS)).encode(),
    *[('{"events": [{"type": "click", "path": "/", "url": "%s"}]}' % url).encode() for url in [
        "http://[::1", "http://[::1]:80/x", "https://user@host", "HTTP://User:pw@EXAMPLE.org:8080/P?q#f",
        "http://h:99999/", "http://h:port/", "http://xn--bcher-kva.example/", "http://%00/", " http://h/",
        "http://h/a b", "//h/a", "Https://h", "http://[v1.x]/", "http://a@b@c/", "http://h:/",
    ]],
])
def test_hostile_bodies_get_the_reference_answer(body: bytes) -> None:
    """Odd but parseable bodies: the fast path accepts them with the reference's result or
    leaves them to it, and the reference answers (never an unexpected exception)."""
    expected = reference(body)
    fast = fast_events(body)
    assert fast is None or repr(fast) == repr(expected)  # repr: -0.0 and 0.0 differ in storage


def test_a_huge_integer_through_collect_is_a_400(tmp_path: Any) -> None:
    """End to end: the endpoint answers 400 with a reason (it answered 500)."""
    import asyncio

    from consentmw import ConsentMiddleware

    from tests.conftest import SECRET, site_app
    from tests.faults.helpers import asgi_call, beacon_headers, closed_port

    mw = ConsentMiddleware(site_app(), secret_key=SECRET, clickhouse_dsn=f"http://127.0.0.1:{closed_port()}",
                           spool_dir=str(tmp_path / "spool"))
    try:
        for body in (_custom(f'"k": {HUGE}'), ('{"events": [{"type": "timing", "path": "/", "ttfb": %s}]}'
                                                % HUGE).encode()):
            status, answer, _ = asyncio.run(asgi_call(mw, "POST", "/_consent/collect", beacon_headers(None), body))
            assert status == 400, answer
            assert b"number" in answer or b"range" in answer, answer
    finally:
        mw.collector.stop(0.5)


def test_repeated_click_urls_are_parsed_once_and_the_cache_stays_bounded() -> None:
    from consentmw.collect import beacon_schema

    beacon_schema._CLICKS.clear()
    body = json.dumps({"events": [{"type": "click", "path": "/a", "url": "https://Example.org/out?x=1"}] * 2}).encode()
    first, second = fast_events(body) or [], fast_events(body) or []
    assert first == second == reference(body)
    first[0]["link_host"] = "changed"  # every event gets its own dict: the cache is never shared out
    assert (fast_events(body) or [])[0]["link_host"] == "example.org"
    bad = json.dumps({"events": [{"type": "click", "path": "/a", "url": "ftp://x.test/"}]}).encode()
    assert fast_events(bad) is None and "ftp://x.test/" not in beacon_schema._CLICKS
    long_url = "https://x.test/" + "a" * 300
    fast_events(json.dumps({"events": [{"type": "click", "path": "/a", "url": long_url}]}).encode())
    assert long_url not in beacon_schema._CLICKS  # only short URLs are remembered
    for i in range(beacon_schema._CLICKS_MAX + 10):
        fast_events(json.dumps({"events": [{"type": "click", "path": "/a", "url": f"https://x.test/{i}"}]}).encode())
    assert len(beacon_schema._CLICKS) <= beacon_schema._CLICKS_MAX
