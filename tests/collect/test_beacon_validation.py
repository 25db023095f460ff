"""Every cap and type rule of the beacon format, one by one."""

from __future__ import annotations

from typing import Any

import pytest

from consentmw.collect import beacon
from consentmw.collect.beacon import BeaconError, validate_batch


def one(event: dict[str, Any]) -> dict[str, Any]:
    return validate_batch({"events": [event]})[0]


def test_valid_events_are_normalised() -> None:
    assert one({"type": "pageview", "path": "/a?q=1#x", "referrer": "https://r.test/"}) == \
        {"type": "pageview", "path": "/a", "referrer": "https://r.test/"}
    assert one({"type": "timing", "path": "/", "ttfb": 12.4, "load": 900}) == \
        {"type": "timing", "path": "/", "ttfb": 12, "load": 900}
    assert one({"type": "vitals", "path": "/", "cls": 0.25, "lcp": 1500}) == \
        {"type": "vitals", "path": "/", "cls": 0.25, "lcp": 1500}
    assert one({"type": "click", "path": "/", "url": "https://Other.Example/x/y?secret=1"}) == \
        {"type": "click", "path": "/", "link_host": "other.example", "link_path": "/x/y"}
    assert one({"type": "custom", "path": "/", "name": "signup", "props": {"plan": "pro", "n": 3, "ok": True}}) == \
        {"type": "custom", "path": "/", "name": "signup", "props": {"plan": "pro", "n": "3", "ok": "true"}}


@pytest.mark.parametrize("body,reason", [
    ([], "expected"),
    ({}, "expected"),
    ({"events": []}, "non-empty"),
    ({"events": "x"}, "non-empty"),
    ({"events": [{"type": "pageview", "path": "/"}], "extra": 1}, "expected"),
    ({"events": [{"type": "pageview", "path": "/"}] * (beacon.MAX_EVENTS + 1)}, "too many events"),
])
def test_batch_shape(body: Any, reason: str) -> None:
    with pytest.raises(BeaconError, match=reason):
        validate_batch(body)


@pytest.mark.parametrize("event,reason", [
    ("string", "expected an object"),
    ({"path": "/"}, "type"),
    ({"type": "unknown", "path": "/"}, "type"),
    ({"type": 5, "path": "/"}, "type"),
    ({"type": "pageview"}, "path"),
    ({"type": "pageview", "path": "relative"}, "path"),
    ({"type": "pageview", "path": "/" + "a" * beacon.MAX_PATH}, "path"),
    ({"type": "pageview", "path": 7}, "path"),
    ({"type": "pageview", "path": "/", "referrer": 1}, "referrer"),
    ({"type": "pageview", "path": "/", "referrer": "h" * (beacon.MAX_URL + 1)}, "longer"),
    ({"type": "pageview", "path": "/", "ts": 1}, "unknown field"),
    ({"type": "timing", "path": "/"}, "at least one"),
    ({"type": "timing", "path": "/", "ttfb": -1}, "out of range"),
    ({"type": "timing", "path": "/", "ttfb": beacon.MAX_MS + 1}, "out of range"),
    ({"type": "timing", "path": "/", "ttfb": "12"}, "number"),
    ({"type": "timing", "path": "/", "ttfb": True}, "number"),
    ({"type": "timing", "path": "/", "lcp": 5}, "unknown field"),
    ({"type": "vitals", "path": "/", "cls": beacon.MAX_CLS + 1}, "out of range"),
    ({"type": "vitals", "path": "/", "inp": 1e308}, "out of range"),
    ({"type": "vitals", "path": "/", "lcp": None}, "number"),
    ({"type": "click", "path": "/", "url": "javascript:alert(1)"}, "http"),
    ({"type": "click", "path": "/", "url": "/relative"}, "http"),
    ({"type": "click", "path": "/"}, "string"),
    ({"type": "click", "path": "/", "url": "http://[::1"}, "URL"),
    ({"type": "custom", "path": "/"}, "name"),
    ({"type": "custom", "path": "/", "name": ""}, "name"),
    ({"type": "custom", "path": "/", "name": "x" * 65}, "name"),
    ({"type": "custom", "path": "/", "name": "<b>"}, "name"),
    ({"type": "custom", "path": "/", "name": "ok", "props": []}, "object"),
    ({"type": "custom", "path": "/", "name": "ok", "props": {f"k{i}": "v" for i in range(beacon.MAX_PROPS + 1)}}, "at most"),
    ({"type": "custom", "path": "/", "name": "ok", "props": {"k" * (beacon.MAX_PROP_KEY + 1): "v"}}, "property names"),
    ({"type": "custom", "path": "/", "name": "ok", "props": {"bad key!": "v"}}, "property names"),
    ({"type": "custom", "path": "/", "name": "ok", "props": {"k": "v" * (beacon.MAX_PROP_VALUE + 1)}}, "longer"),
    ({"type": "custom", "path": "/", "name": "ok", "props": {"k": {"nested": 1}}}, "string, number"),
    ({"type": "custom", "path": "/", "name": "ok", "props": {"k": None}}, "string, number"),
])
def test_event_rules(event: Any, reason: str) -> None:
    with pytest.raises(BeaconError, match=reason):
        validate_batch({"events": [event]})


def test_one_bad_event_rejects_the_batch() -> None:
    with pytest.raises(BeaconError, match=r"events\[1\]"):
        validate_batch({"events": [{"type": "pageview", "path": "/"}, {"type": "pageview"}]})
