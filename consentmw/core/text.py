"""The one rule for text that may reach storage: valid Unicode, no NUL, no non-characters.

ClickHouse and Arrow take UTF-8 only; a lone UTF-16 surrogate (``"\\ud800"`` in JSON,
or a surrogate smuggled in by an ASGI server) cannot be encoded and used to fail a whole
batch on the writer thread. NUL and the Unicode non-characters (U+FDD0..U+FDEF and the
last two code points of every plane) are not text either: they break tools downstream.

Free-text values (paths, referrers, property values, pages, header values) are
*repaired*: each offending code point becomes U+FFFD, so one visitor's odd byte costs
at most that byte. Identifiers (event types, custom event names, property names,
purpose ids) are checked by their own patterns elsewhere and refused, because a
repaired identifier would be a different one.

Everything here is pure and cheap: `clean` is one regex search when the text is valid.
Other validators (the beacon's, whatever replaces it) call `clean`/`is_clean` so the
rule stays in one place.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"

#: the planes' last two code points (U+FFFE, U+FFFF, U+1FFFE, ..., U+10FFFF)
_PLANE_ENDS = [(plane << 16) | low for plane in range(17) for low in (0xFFFE, 0xFFFF)]
#: NUL, every surrogate (in a Python str any surrogate is a lone one) and the non-characters
INVALID = re.compile("[\x00\ud800-\udfff\ufdd0-\ufdef" + "".join(chr(c) for c in _PLANE_ENDS) + "]")
#: the same rule as an RE2 pattern, for Arrow's vectorised `match_substring_regex`
#: (Arrow strings are valid UTF-8 already, so they hold no surrogates)
INVALID_RE2 = "[\\x00\\x{FDD0}-\\x{FDEF}" + "".join(f"\\x{{{c:X}}}" for c in _PLANE_ENDS) + "]"


def is_clean(value: str) -> bool:
    """True when `value` holds no NUL, surrogate or non-character."""
    return INVALID.search(value) is None


def clean(value: str) -> str:
    """`value` with each NUL, lone surrogate and non-character replaced by U+FFFD."""
    if INVALID.search(value) is None:
        return value
    return INVALID.sub(REPLACEMENT, value)


def decode(raw: bytes | str, limit: int | None = None) -> str:
    """Header bytes as clean text: UTF-8 (invalid sequences replaced), then `clean`, then
    cut to `limit` characters. A str is only cleaned and cut."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else raw
    if limit is not None and len(text) > limit:
        text = text[:limit]
    return clean(text)

