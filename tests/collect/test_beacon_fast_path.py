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
    st.none(), st.booleans(), st.integers(min_value=-10, max_value=10 ** 20),
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
