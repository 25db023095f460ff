"""`consentmw report`: the dashboard as one self-contained HTML file.

The same queries and the same page as the live dashboard (`{prefix}/admin/dashboard`),
with the stylesheet inlined and without the filter form: no script, no external CSS,
fonts or images, so it can be mailed, archived or opened offline.
"""

from __future__ import annotations

import datetime as dt

from consentmw.dashboard.filters import Filters, parse
from consentmw.dashboard.page import render
from consentmw.dashboard.queries import Query, load


def filters_for(days: int, today: dt.date | None = None, site: str | None = None) -> Filters:
    """The last `days` days up to `today` (UTC), optionally for one site."""
    if days < 1 or days > 3660:
        raise ValueError("--days must be between 1 and 3660")
    today = today or dt.datetime.now(dt.timezone.utc).date()
    start = today - dt.timedelta(days=days - 1)
    return parse({"range": "custom", "from": start.isoformat(), "to": today.isoformat(), "site": site or ""}, today)


def build(query: Query, database: str, filters: Filters, title: str = "Site report") -> str:
    return render(load(query, database, filters), title=title, live=False)
