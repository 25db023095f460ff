"""The fast path of beacon validation: the `/collect` rules as a msgspec schema, checked in C.

`beacon.validate_batch` states every rule in Python and explains what is wrong; it costs
~15 µs per event. Here msgspec decodes the body straight into typed structs, checking the
batch shape, each event type's allowed fields (no unknown ones), types (no booleans for
numbers, no nulls), lengths and ranges while it parses. What msgspec cannot express (path
normalisation, the click URL, custom event names and properties, "at least one timing")
is finished in Python with beacon.py's own helpers.

The fast path only ever *accepts*: it answers None for anything it does not accept
(invalid, unusual, or simply outside its scope), and the caller then runs the reference
validator, which accepts or rejects with a reason. Its scope is bodies that are ASCII
without backslash escapes: every rule of the reference validator for non-ASCII or
escaped text (`consentmw.core.text.clean`: NUL, lone surrogates, non-characters) then
holds here too, because such text never takes the fast path (and `clean` leaves the
text that does take it as it is). Beacons are nearly always ASCII
(browsers percent-encode paths and URLs); the tests compare both paths on random bodies.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from consentmw.collect import beacon as rules

_Path = Annotated[str, Meta(pattern="^/", max_length=rules.MAX_PATH)]
_Url = Annotated[str, Meta(max_length=rules.MAX_URL)]
_Ms = Annotated[float, Meta(ge=0, le=rules.MAX_MS)] | UnsetType
_Cls = Annotated[float, Meta(ge=0, le=rules.MAX_CLS)] | UnsetType


class _Event(Struct, forbid_unknown_fields=True, tag_field="type"):
    path: _Path


class _Pageview(_Event, tag="pageview"):
    referrer: _Url = ""


class _Timing(_Event, tag="timing"):
    ttfb: _Ms = UNSET
    dom_interactive: _Ms = UNSET
    dom_complete: _Ms = UNSET
    load: _Ms = UNSET


class _Vitals(_Event, tag="vitals"):
    lcp: _Ms = UNSET
    inp: _Ms = UNSET
    fcp: _Ms = UNSET
    ttfb: _Ms = UNSET
    cls: _Cls = UNSET


class _Click(_Event, tag="click"):
    url: _Url


class _Custom(_Event, tag="custom"):
    name: str
    props: Annotated[dict[str, Union[str, int, float, bool]], Meta(max_length=rules.MAX_PROPS)] = {}


_Any = Union[_Pageview, _Timing, _Vitals, _Click, _Custom]


class _Batch(Struct, forbid_unknown_fields=True):
    events: Annotated[list[_Any], Meta(min_length=1, max_length=rules.MAX_EVENTS)]


_DECODER = msgspec.json.Decoder(_Batch)
#: click URL -> its stored link host and path: pages send clicks on the same links over and
#: over, and parsing a URL is the dearest step of a click. Bounded: 4,096 URLs of <= 256 chars.
_CLICKS: dict[str, dict[str, str]] = {}
_CLICKS_MAX, _CLICK_URL_MAX = 4096, 256
_TIMING = ("ttfb", "dom_interactive", "dom_complete", "load")
_VITALS = ("lcp", "inp", "fcp", "ttfb")


def fast_events(body: bytes) -> list[dict[str, Any]] | None:
    """The body's events, normalised exactly as `beacon.validate_batch` would, or None when
    this path does not accept the body (then the reference validator decides)."""
    if not body.isascii() or b"\\" in body:
        return None
    try:
        batch = _DECODER.decode(body)
    except msgspec.ValidationError:
        return None
    except msgspec.DecodeError:
        return None
    out = []
    for event in batch.events:
        found = _normalise(event)
        if found is None:
            return None
        out.append(found)
    return out


def _normalise(event: Any) -> dict[str, Any] | None:
    path = event.path
    if "?" in path or "#" in path:
        path = path.split("?", 1)[0].split("#", 1)[0]
    kind = type(event)
    if kind is _Pageview:
        return {"type": "pageview", "path": path, "referrer": event.referrer}
    if kind is _Timing or kind is _Vitals:
        out: dict[str, Any] = {"type": "timing" if kind is _Timing else "vitals", "path": path}
        for name in (_TIMING if kind is _Timing else _VITALS):
            value = getattr(event, name)
            if value is not UNSET:
                out[name] = int(round(value))
        if kind is _Vitals and event.cls is not UNSET:
            out["cls"] = float(event.cls)
        return out if len(out) > 2 else None
    try:  # click and custom: beacon.py's own checks (they raise on anything invalid)
        if kind is _Click:
            url = event.url
            target = _CLICKS.get(url)
            if target is None:
                target = rules.click_target(url, "url")
                if len(url) <= _CLICK_URL_MAX:
                    if len(_CLICKS) >= _CLICKS_MAX:
                        _CLICKS.clear()
                    _CLICKS[url] = target
            return {"type": "click", "path": path, **target}
        if not rules._NAME.fullmatch(event.name):
            return None
        return {"type": "custom", "path": path, "name": event.name, "props": rules._props(event.props, "props")}
    except rules.BeaconError:
        return None
