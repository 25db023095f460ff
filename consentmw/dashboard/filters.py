"""The dashboard's date range and filters: parsed from query parameters and validated.

Every value that reaches SQL goes through here first and then travels as a ClickHouse
query parameter (`{site:String}`), never spliced into the SQL text. A bad value is a
`FilterError` whose message says what is wrong (the HTTP route answers 400 with it).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping
from urllib.parse import urlencode

RANGES = {"today": "Today", "7d": "Last 7 days", "30d": "Last 30 days", "custom": "Custom"}
DEVICES = ("desktop", "mobile", "tablet", "other")
MAX_DAYS = 3660
FILTERS = ("site", "page", "source", "country", "device")

_SITE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,252}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FilterError(ValueError):
    """A query parameter the dashboard refuses; the message is shown to the operator."""


@dataclass(frozen=True)
class Filters:
    """One dashboard view: a range of whole UTC days and the optional filters."""

    start: dt.date              # first day, inclusive
    end: dt.date                # last day, inclusive
    range: str = "30d"
    site: str = ""
    page: str = ""
    source: str = ""
    country: str = ""
    device: str = ""

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def hourly(self) -> bool:
        """One day is drawn per hour, longer ranges per day."""
        return self.days == 1

    @property
    def previous(self) -> tuple[dt.date, dt.date]:
        """The period of the same length just before: what KPI changes compare with."""
        return self.start - dt.timedelta(days=self.days), self.start - dt.timedelta(days=1)

    @property
    def active(self) -> dict[str, str]:
        """The filters that are set."""
        return {name: getattr(self, name) for name in FILTERS if getattr(self, name)}

    def params(self) -> dict[str, Any]:
        """ClickHouse query parameters for the documented SQL (docs/analysts.md)."""
        prev_start, _ = self.previous
        midnight = dt.time(0, 0)
        return {
            "start": dt.datetime.combine(self.start, midnight),
            "end": dt.datetime.combine(self.end + dt.timedelta(days=1), midnight),
            "prev_start": dt.datetime.combine(prev_start, midnight),
            "start_day": self.start,
            **{name: getattr(self, name) for name in FILTERS},
        }

    def query(self, **changes: str) -> str:
        """This view's query string with some values changed ("" removes a filter)."""
        view = replace(self, **changes) if changes else self  # type: ignore[arg-type]
        pairs: list[tuple[str, str]] = [("range", view.range)]
        if view.range == "custom":
            pairs += [("from", view.start.isoformat()), ("to", view.end.isoformat())]
        pairs += [(name, value) for name, value in view.active.items()]
        return "?" + urlencode(pairs)

    def label(self) -> str:
        if self.days == 1:
            return self.start.isoformat()
        return f"{self.start.isoformat()} – {self.end.isoformat()}"


def _date(value: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise FilterError(f"{name}: not a date (YYYY-MM-DD): {value[:40]!r}") from None


def parse(params: Mapping[str, str], today: dt.date) -> Filters:
    """Filters from query parameters (`range`, `from`, `to`, `site`, `page`, `source`,
    `country`, `device`); missing ones take their defaults (the last 30 days)."""
    kind = params.get("range") or ("custom" if params.get("from") or params.get("to") else "30d")
    if kind not in RANGES:
        raise FilterError(f"range: one of {', '.join(RANGES)}")
    if kind == "today":
        start = end = today
    elif kind in ("7d", "30d"):
        end = today
        start = today - dt.timedelta(days=int(kind[:-1]) - 1)
    else:
        if not params.get("from") or not params.get("to"):
            raise FilterError("a custom range needs both from and to (YYYY-MM-DD)")
        start, end = _date(params["from"], "from"), _date(params["to"], "to")
        if start > end:
            raise FilterError("from must not be after to")
        if start.year < 2000 or end > today + dt.timedelta(days=1):
            raise FilterError("the range must lie between 2000-01-01 and today")
        if (end - start).days + 1 > MAX_DAYS:
            raise FilterError(f"the range may span {MAX_DAYS} days at most")
    values: dict[str, str] = {}
    for name in FILTERS:
        value = (params.get(name) or "").strip()
        if value and _CONTROL.search(value):
            raise FilterError(f"{name}: control characters are not allowed")
        values[name] = value
    site, page, source = values["site"].lower(), values["page"], values["source"]
    country, device = values["country"].upper(), values["device"].lower()
    if site and not _SITE.match(site):
        raise FilterError("site: a host name (letters, digits, dots and hyphens)")
    if page and (not page.startswith("/") or len(page) > 1024):
        raise FilterError("page: a path starting with / (at most 1,024 characters)")
    if len(source) > 200:
        raise FilterError("source: at most 200 characters")
    if country and not _COUNTRY.match(country):
        raise FilterError("country: a two-letter ISO 3166 code, e.g. DE")
    if device and device not in DEVICES:
        raise FilterError(f"device: one of {', '.join(DEVICES)}")
    return Filters(start, end, kind, site=site, page=page, source=source, country=country, device=device)
