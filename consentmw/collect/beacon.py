"""Validation of beacon events posted to `/collect`: strict types, caps and ranges.

Whatever the browser sends is untrusted. An event that breaks any rule rejects the
whole batch with a reason (so a broken client shows up in its developer's console),
and nothing of it is stored. Free text (path, referrer, link, property values) is
repaired by `consentmw.core.text.clean` (a lone surrogate, NUL or non-character becomes
U+FFFD: JavaScript strings can hold lone surrogates, and one odd character must not cost
the visitor's other events); identifiers (type, event and property names) must match
their patterns, which admit none of those characters.
"""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import urlsplit

from consentmw.core.text import clean

BODY_LIMIT = 32 * 1024
MAX_EVENTS = 50
MAX_PATH = 1024
MAX_URL = 2048
MAX_MS = 600_000            # ten minutes: anything slower is not a page load
MAX_CLS = 100.0
MAX_PROPS = 10
MAX_PROP_KEY = 40
MAX_PROP_VALUE = 200
_NAME = re.compile(r"[\w .:/-]{1,64}")

_TIMING = ("ttfb", "dom_interactive", "dom_complete", "load")
_VITALS = ("lcp", "inp", "fcp", "ttfb", "cls")
_ALLOWED = {
    "pageview": {"type", "path", "referrer"},
    "timing": {"type", "path", *_TIMING},
    "vitals": {"type", "path", *_VITALS},
    "click": {"type", "path", "url"},
    "custom": {"type", "path", "name", "props"},
}
#: The data category an event type exists to record; purposes without it never store it.
EVENT_CATEGORY = {"pageview": "page", "timing": "timing", "vitals": "timing", "click": "clicks", "custom": "clicks"}


class BeaconError(ValueError):
    """The batch is invalid; the message is the reason told to the client."""


def validate_batch(body: Any) -> list[dict[str, Any]]:
    """Check a decoded `/collect` body and return its events, normalised."""
    if not isinstance(body, dict) or set(body) != {"events"}:
        raise BeaconError('expected {"events": [...]}')
    events = body["events"]
    if not isinstance(events, list) or not events:
        raise BeaconError("'events' must be a non-empty list")
    if len(events) > MAX_EVENTS:
        raise BeaconError(f"too many events in one batch (limit {MAX_EVENTS})")
    return [_event(e, i) for i, e in enumerate(events)]


def _event(event: Any, i: int) -> dict[str, Any]:
    where = f"events[{i}]"
    if not isinstance(event, dict):
        raise BeaconError(f"{where}: expected an object")
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in _ALLOWED:
        raise BeaconError(f"{where}.type: expected one of {', '.join(_ALLOWED)}")
    extra = set(event) - _ALLOWED[kind]
    if extra:
        raise BeaconError(f"{where}: unknown field {sorted(extra)[0][:40]!r} for a {kind} event")
    out: dict[str, Any] = {"type": kind, "path": _path(event.get("path"), where)}
    if kind == "pageview":
        out["referrer"] = _text(event.get("referrer", ""), f"{where}.referrer", MAX_URL)
    elif kind in ("timing", "vitals"):
        names = _TIMING if kind == "timing" else _VITALS
        present = [n for n in names if n in event]
        if not present:
            raise BeaconError(f"{where}: a {kind} event needs at least one of {', '.join(names)}")
        for name in present:
            out[name] = _number(event[name], f"{where}.{name}", MAX_CLS if name == "cls" else MAX_MS,
                                integer=name != "cls")
    elif kind == "click":
        out.update(click_target(_text(event.get("url"), f"{where}.url", MAX_URL), f"{where}.url"))
    else:
        event_name = event.get("name")
        if not isinstance(event_name, str) or not _NAME.fullmatch(event_name):
            raise BeaconError(f"{where}.name: 1-64 letters, digits, spaces or . : / - _")
        out["name"] = event_name
        out["props"] = _props(event.get("props", {}), f"{where}.props")
    return out


def click_target(url: str, where: str) -> dict[str, str]:
    """The stored part of an outbound link: host and path of an http(s) URL (no query)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise BeaconError(f"{where}: not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BeaconError(f"{where}: expected an http(s) URL")
    return {"link_host": clean(parts.hostname.lower()[:255]), "link_path": clean(parts.path[:MAX_PATH]) or "/"}


def _path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or len(value) > MAX_PATH:
        raise BeaconError(f"{where}.path: expected a path starting with '/' (at most {MAX_PATH} characters)")
    return clean(value.split("?", 1)[0].split("#", 1)[0])


def _text(value: Any, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise BeaconError(f"{where}: expected a string")
    if len(value) > limit:
        raise BeaconError(f"{where}: longer than {limit} characters")
    return clean(value)


def _number(value: Any, where: str, limit: float, integer: bool) -> float | int:
    # (an int is compared as it is: math.isfinite would raise on one too large for a float)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise BeaconError(f"{where}: expected a number")
    if not 0 <= value <= limit:
        raise BeaconError(f"{where}: out of range (0 to {limit:g})")
    return int(round(value)) if integer else float(value)


def _props(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise BeaconError(f"{where}: expected an object")
    if len(value) > MAX_PROPS:
        raise BeaconError(f"{where}: at most {MAX_PROPS} properties")
    out = {}
    for key, item in value.items():
        if not _NAME.fullmatch(key) or len(key) > MAX_PROP_KEY:
            raise BeaconError(f"{where}: property names are 1-{MAX_PROP_KEY} letters, digits, spaces or . : / - _")
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, (int, float)):
            item = number_text(item)
            if item is None:
                raise BeaconError(f"{where}.{key}: expected a string, boolean or number (finite, within float range)")
        elif not isinstance(item, str):
            raise BeaconError(f"{where}.{key}: expected a string, number or boolean")
        if len(item) > MAX_PROP_VALUE:
            raise BeaconError(f"{where}.{key}: longer than {MAX_PROP_VALUE} characters")
        out[key] = clean(item)
    return out


def number_text(value: int | float) -> str | None:
    """A property's number as stored (`format(value, "g")`), or None for one that is not a
    finite float: NaN, infinity, or an integer too large for a float (JSON allows
    hundreds of digits; `math.isfinite` and `format` raise OverflowError on those)."""
    try:
        return format(value, "g") if math.isfinite(value) else None
    except OverflowError:
        return None
