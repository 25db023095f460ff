"""The raw hit: what the request path captures, before any minimisation or parsing.

Capturing must be nearly free, so a hit holds header values exactly as they arrived;
IP resolution, user-agent parsing, GeoIP and per-purpose minimisation happen later on
the writer thread. A hit never outlives the writer's batch except in the spool, and
only purposes the visitor granted ever see it.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from consentmw.core.text import clean

#: Query parameters worth keeping (campaign tags and ad click ids); everything else is dropped.
CAMPAIGN_PARAMS = frozenset({"utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "ref"})
CLICK_ID_PARAMS = frozenset({"gclid", "gbraid", "wbraid", "dclid", "fbclid", "msclkid", "yclid", "ttclid", "twclid", "li_fat_id"})
_KEEP = CAMPAIGN_PARAMS | CLICK_ID_PARAMS


class Hit(NamedTuple):
    """One event as captured: a server-side page view or one beacon event.

    A named tuple: the request path builds one per page with `new_hit(Hit, fields)`, a single
    C call (a dataclass's generated `__init__` is a Python frame setting 17 attributes),
    and the writer reads each attribute over a batch with C-level getters.
    """

    # Header values may be the raw bytes (the request path does not decode them; the writer
    # reads them as UTF-8, invalid bytes replaced) or text.
    ts: float                       # unix seconds when the request started
    event_type: str                 # pageview | timing | vitals | click | custom
    site: str | bytes               # Host header: the host the visitor asked for
    path: str
    consent_id: str
    policy_version: str
    purposes: frozenset[str]        # granted purposes that collect data
    visitor_id: str | None          # only when a granted purpose keeps one
    peer_ip: str                    # the socket peer
    forwarded_for: str | bytes      # X-Forwarded-For / Forwarded, resolved later against trusted proxies
    user_agent: str | bytes
    language: str | bytes           # Accept-Language as sent
    referrer: str | bytes
    campaign: dict[str, str] | None = None  # only CAMPAIGN_PARAMS / CLICK_ID_PARAMS
    status: int = 0
    duration_ms: float = 0.0        # server time to answer, in ms (sub-millisecond precision)
    data: dict[str, Any] | None = None      # validated beacon payload


#: `new_hit(Hit, (ts, event_type, ..., data))`: a Hit from a tuple of all 17 fields, in order
new_hit = tuple.__new__


def campaign_params(query_string: bytes) -> dict[str, str] | None:
    """Keep only campaign tags and click ids from a query string (None when there are none)."""
    if not query_string or (b"utm_" not in query_string and b"clid" not in query_string
                            and b"ref=" not in query_string and b"braid" not in query_string
                            and b"li_fat_id" not in query_string):
        return None
    try:
        pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=False)
    except ValueError:
        return None
    kept = {k: clean(v[:200]) for k, v in pairs if k in _KEEP}
    return kept or None
