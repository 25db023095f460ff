"""The dashboard's SQL: one query per panel, the same text as in docs/analysts.md.

Every panel reads the statistics table directly (not the daily views), because the
filters (page, source, country, device) are finer than the views' grain. The rules are
the views' rules: only pages served successfully count as page views, blocked visitors
are left out. A *visit* is one visitor on one day: the visitor code (`visitor_hash`)
changes daily by design, so counting distinct codes over a range counts visitor-days, and
grouping by the code groups one visitor's page views of one day.

The SQL is written against `consentmw.` (replaced by the configured database) and takes
ClickHouse query parameters (`{start:DateTime64(3)}`); `/*filters*/` is replaced by one
`AND …` fragment per active filter, from `FILTER_SQL`. `tests/dashboard` runs the
documented copies of these queries and compares their numbers with every panel.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable

from consentmw.dashboard.filters import Filters

#: runs SQL with query parameters and returns the rows
Query = Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]

PERIOD = "ts >= {start:DateTime64(3)} AND ts < {end:DateTime64(3)}"
NOT_BLOCKED = ("consent_id NOT IN (SELECT subject FROM consentmw.blocked_visitors "
               "GROUP BY subject HAVING argMax(blocked, ts) = 1)")
PAGEVIEW = "event_type = 'pageview' AND (status = 0 OR (status >= 200 AND status < 300) OR status = 304)"
SOURCE = ("multiIf(utm_source != '', utm_source, referrer_source != '', referrer_source, "
          "referrer_host != '', referrer_host, '(direct)')")

#: One fragment per filter. The source of a visit is the source of its first page view.
FILTER_SQL = {
    "site": "AND site = {site:String}",
    "page": "AND path = {page:String}",
    "country": "AND country = {country:String}",
    "device": "AND device = {device:String}",
    "source": ("AND visitor_hash IN (SELECT visitor_hash FROM consentmw.events_statistics "
               f"WHERE ts >= {{prev_start:DateTime64(3)}} AND ts < {{end:DateTime64(3)}} AND {PAGEVIEW} "
               f"GROUP BY visitor_hash HAVING argMin({SOURCE}, ts) = {{source:String}})"),
}

SQL: dict[str, str] = {
    # KPIs of this period (current = 1) and of the previous one of the same length (current = 0)
    "kpis": f"""SELECT day >= {{start_day:Date}} AS current, count() AS visits, sum(views) AS pageviews,
       countIf(views = 1) AS bounces
FROM (SELECT visitor_hash, toDate(min(ts)) AS day, count() AS views
      FROM consentmw.events_statistics
      WHERE ts >= {{prev_start:DateTime64(3)}} AND ts < {{end:DateTime64(3)}} AND {PAGEVIEW}
        AND {NOT_BLOCKED} /*filters*/
      GROUP BY visitor_hash)
GROUP BY current""",
    # share of consent decisions (first choices and changes) that granted statistics
    "consent": f"""SELECT toDate(ts) >= {{start_day:Date}} AS current, count() AS decisions,
       countIf(has(granted, 'statistics')) AS opt_ins
FROM consentmw.consent_log
WHERE ts >= {{prev_start:DateTime64(3)}} AND ts < {{end:DateTime64(3)}} AND action IN ('grant', 'change')
  AND {NOT_BLOCKED} /*site*/
GROUP BY current""",
    "daily": f"""SELECT toDate(ts) AS day, count() AS pageviews, uniqExact(visitor_hash) AS visitors
FROM consentmw.events_statistics
WHERE {PERIOD} AND {PAGEVIEW} AND {NOT_BLOCKED} /*filters*/
GROUP BY day ORDER BY day""",
    "hourly": f"""SELECT toStartOfHour(ts) AS hour, count() AS pageviews, uniqExact(visitor_hash) AS visitors
FROM consentmw.events_statistics
WHERE {PERIOD} AND {PAGEVIEW} AND {NOT_BLOCKED} /*filters*/
GROUP BY hour ORDER BY hour""",
    "pages": f"""SELECT path, uniqExact(visitor_hash) AS visitors, count() AS pageviews
FROM consentmw.events_statistics
WHERE {PERIOD} AND {PAGEVIEW} AND {NOT_BLOCKED} /*filters*/
GROUP BY path ORDER BY pageviews DESC, path LIMIT 10""",
    "sources": f"""SELECT source, count() AS visits, sum(views) AS pageviews
FROM (SELECT visitor_hash, argMin({SOURCE}, ts) AS source, count() AS views
      FROM consentmw.events_statistics
      WHERE {PERIOD} AND {PAGEVIEW} AND {NOT_BLOCKED} /*filters*/
      GROUP BY visitor_hash)
GROUP BY source ORDER BY visits DESC, source LIMIT 10""",
    "campaigns": f"""SELECT utm_campaign, uniqExact(visitor_hash) AS visitors, count() AS pageviews
FROM consentmw.events_statistics
WHERE {PERIOD} AND {PAGEVIEW} AND utm_campaign != '' AND {NOT_BLOCKED} /*filters*/
GROUP BY utm_campaign ORDER BY pageviews DESC, utm_campaign LIMIT 10""",
    "countries": f"""SELECT country, uniqExact(visitor_hash) AS visitors, count() AS pageviews
FROM consentmw.events_statistics
WHERE {PERIOD} AND {PAGEVIEW} AND {NOT_BLOCKED} /*filters*/
GROUP BY country ORDER BY pageviews DESC, country LIMIT 10""",
    "devices": f"""SELECT device, uniqExact(visitor_hash) AS visitors, count() AS pageviews
FROM consentmw.events_statistics
WHERE {PERIOD} AND {PAGEVIEW} AND {NOT_BLOCKED} /*filters*/
GROUP BY device ORDER BY pageviews DESC, device LIMIT 10""",
    "browsers": f"""SELECT browser, uniqExact(visitor_hash) AS visitors, count() AS pageviews
FROM consentmw.events_statistics
WHERE {PERIOD} AND {PAGEVIEW} AND {NOT_BLOCKED} /*filters*/
GROUP BY browser ORDER BY pageviews DESC, browser LIMIT 10""",
    "links": f"""SELECT concat(link_host, link_path) AS link, uniqExact(visitor_hash) AS visitors,
       count() AS clicks
FROM consentmw.events_statistics
WHERE {PERIOD} AND event_type = 'click' AND {NOT_BLOCKED} /*filters*/
GROUP BY link ORDER BY clicks DESC, link LIMIT 10""",
    "events": f"""SELECT event_name, uniqExact(visitor_hash) AS visitors, count() AS events
FROM consentmw.events_statistics
WHERE {PERIOD} AND event_type = 'custom' AND {NOT_BLOCKED} /*filters*/
GROUP BY event_name ORDER BY events DESC, event_name LIMIT 10""",
    "vitals": f"""SELECT path, count() AS samples,
       quantileExactInclusive(0.75)(lcp) AS lcp, quantileExactInclusive(0.75)(inp) AS inp,
       quantileExactInclusive(0.75)(cls) AS cls, quantileExactInclusive(0.75)(ttfb) AS ttfb
FROM consentmw.events_statistics
WHERE {PERIOD} AND event_type = 'vitals' AND {NOT_BLOCKED} /*filters*/
GROUP BY path ORDER BY samples DESC, path LIMIT 10""",
    "sites": f"""SELECT site FROM consentmw.events_statistics
WHERE {PERIOD} AND {PAGEVIEW}
GROUP BY site ORDER BY count() DESC, site LIMIT 50""",
}


#: how many queries one dashboard runs (for progress bars)
PANELS = 13


def sql_for(name: str, filters: Filters, database: str = "consentmw") -> str:
    """A panel's SQL with the active filters' fragments in place, for `database`."""
    text = SQL[name]
    fragments = " ".join(FILTER_SQL[key] for key in filters.active)
    text = text.replace("/*filters*/", fragments)
    text = text.replace("/*site*/", FILTER_SQL["site"] if filters.site else "")
    return text.replace("consentmw.", f"{database}.")


@dataclass
class KPI:
    name: str
    value: float | None
    previous: float | None
    kind: str = "count"            # count | ratio | percent
    better: str = "up"             # which direction is good: up | down

    @property
    def change(self) -> float | None:
        """Relative change against the previous period (None when it had nothing)."""
        if self.value is None or not self.previous:
            return None
        return (self.value - self.previous) / self.previous


@dataclass
class Dashboard:
    filters: Filters
    kpis: list[KPI]
    series: list[tuple[dt.datetime, int, int]]     # bucket start, page views, visitors (empty buckets filled)
    tables: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    sites: list[str] = field(default_factory=list)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def load(query: Query, database: str, filters: Filters) -> Dashboard:
    """Run every panel's query (one round each) and assemble the dashboard."""
    params = filters.params()

    def run(name: str) -> list[tuple[Any, ...]]:
        return query(sql_for(name, filters, database), params)

    periods = {bool(c): (int(v), int(p), int(b)) for c, v, p, b in run("kpis")}
    now, before = periods.get(True, (0, 0, 0)), periods.get(False, (0, 0, 0))
    consent = {bool(c): (int(d), int(o)) for c, d, o in run("consent")}
    c_now, c_before = consent.get(True, (0, 0)), consent.get(False, (0, 0))
    kpis = [
        KPI("Visitors", now[0], before[0]),
        KPI("Page views", now[1], before[1]),
        KPI("Views per visit", _ratio(now[1], now[0]), _ratio(before[1], before[0]), "ratio"),
        KPI("Bounce rate", _ratio(now[2], now[0]), _ratio(before[2], before[0]), "percent", "down"),
        KPI("Consent opt-in", _ratio(c_now[1], c_now[0]), _ratio(c_before[1], c_before[0]), "percent"),
    ]
    series = _series(filters, run("hourly" if filters.hourly else "daily"))
    tables = {name: run(name) for name in ("pages", "sources", "campaigns", "countries", "devices",
                                           "browsers", "links", "events", "vitals")}
    sites = [r[0] for r in run("sites")]
    return Dashboard(filters, kpis, series, tables, sites)


def _series(filters: Filters, rows: list[tuple[Any, ...]]) -> list[tuple[dt.datetime, int, int]]:
    """Every bucket of the range, empty ones as zeros."""
    found = {}
    for bucket, views, visitors in rows:
        key = bucket if isinstance(bucket, dt.datetime) else dt.datetime.combine(bucket, dt.time(0))
        found[key.replace(tzinfo=None)] = (int(views), int(visitors))
    first = dt.datetime.combine(filters.start, dt.time(0))
    step, count = (dt.timedelta(hours=1), 24) if filters.hourly else (dt.timedelta(days=1), filters.days)
    buckets = [first + step * i for i in range(count)]
    return [(b, *found.get(b, (0, 0))) for b in buckets]
