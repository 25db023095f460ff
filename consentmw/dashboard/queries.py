"""The dashboard's SQL: one query per panel, the same text as in docs/analysts.md.

Every panel reads the statistics table directly (not the daily views), because the
filters (page, source, country, device) are finer than the views' grain. The rules are
the views' rules: only pages served successfully count as page views, blocked visitors
are left out. A *visit* is one visitor on one day: the visitor code (`visitor_hash`)
changes daily by design, so counting distinct codes over a range counts visitor-days, and
grouping by the code groups one visitor's page views of one day.

The SQL is written against `consentmw.` (replaced by the configured database) and takes
ClickHouse query parameters (`{start:DateTime64(3, 'UTC')}`); `/*filters*/` is replaced by one
`AND …` fragment per active filter, from `FILTER_SQL`. `tests/dashboard` runs the
documented copies of these queries and compares their numbers with every panel.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from consentmw.core.policy import Policy
from consentmw.dashboard.filters import Filters

log = logging.getLogger("consentmw.dashboard")

#: What the dashboard says, and `consentmw report` refuses with, when there is nothing to count.
NO_STATISTICS = ("This site's policy has no statistics purpose (or it collects nothing), so no page views "
                 "are recorded and there is nothing to show. Add a `statistics` purpose that collects pages "
                 "to the policy to record them.")


def has_statistics(policy: Policy) -> bool:
    """The panels read `events_statistics`, which exists only while the policy has a
    `statistics` purpose that collects something."""
    return "statistics" in policy and policy["statistics"].collects


#: runs SQL with query parameters and returns the rows
Query = Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]

PERIOD = "ts >= {start:DateTime64(3, 'UTC')} AND ts < {end:DateTime64(3, 'UTC')}"
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
               f"WHERE ts >= {{prev_start:DateTime64(3, 'UTC')}} AND ts < {{end:DateTime64(3, 'UTC')}} AND {PAGEVIEW} "
               f"GROUP BY visitor_hash HAVING argMin({SOURCE}, ts) = {{source:String}})"),
}

SQL: dict[str, str] = {
    # KPIs of this period (current = 1) and of the previous one of the same length (current = 0)
    "kpis": f"""SELECT day >= {{start_day:Date}} AS current, count() AS visits, sum(views) AS pageviews,
       countIf(views = 1) AS bounces
FROM (SELECT visitor_hash, toDate(min(ts)) AS day, count() AS views
      FROM consentmw.events_statistics
      WHERE ts >= {{prev_start:DateTime64(3, 'UTC')}} AND ts < {{end:DateTime64(3, 'UTC')}} AND {PAGEVIEW}
        AND {NOT_BLOCKED} /*filters*/
      GROUP BY visitor_hash)
GROUP BY current""",
    # share of consent decisions (first choices and changes) that granted statistics
    "consent": f"""SELECT toDate(ts) >= {{start_day:Date}} AS current, count() AS decisions,
       countIf(has(granted, 'statistics')) AS opt_ins
FROM consentmw.consent_log
WHERE ts >= {{prev_start:DateTime64(3, 'UTC')}} AND ts < {{end:DateTime64(3, 'UTC')}} AND action IN ('grant', 'change')
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


#: how many queries one dashboard runs at most (for progress bars)
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


def load(query: Query, database: str, filters: Filters, *, rollup: bool = False,
         command: Callable[[str, dict[str, Any]], Any] | None = None,
         retention_days: int | None = None) -> Dashboard:
    """Run the panels and assemble the dashboard.

    Same numbers as the documented queries in `SQL` (tests compare them), in fewer
    scans: the two visit-level panels (KPIs and sources) share one pass (`VISITS`), and
    with the source filter, whose subquery would otherwise be evaluated once per panel,
    the row-level panels share one pass too (`BREAKDOWN`). While nobody is blocked, the
    blocked-visitor condition (a per-row set look-up that changes nothing) is left out.
    """
    params = filters.params()
    blocked = bool(query(HAS_BLOCKED.replace("consentmw.", f"{database}."), {})[0][0])
    if rollup:
        from consentmw.dashboard import rollup as daily

        if daily.applies(filters):
            try:
                counts = daily.load_counts(query, command, database, filters, blocked,
                                           retention_days=retention_days)
            except Exception as exc:  # noqa: BLE001 - e.g. a store not migrated yet: read the rows
                log.warning("consentmw: the dashboard's daily counts are unavailable (%s); reading the "
                            "statistics table instead", str(exc).splitlines()[0][:200] if str(exc) else exc)
            else:
                return _from_counts(query, database, filters, blocked, *counts)

    def sql(text: str) -> str:
        return _prepare(text, filters, database, blocked)

    def run(name: str) -> list[tuple[Any, ...]]:
        return query(sql(SQL[name]), params)

    visits = query(sql(VISITS), params)
    periods = {bool(r[1]): (int(r[3]), int(r[4]), int(r[5])) for r in visits if r[0] == 1}
    consent = {bool(c): (int(d), int(o)) for c, d, o in run("consent")}
    kpis = _kpis(periods, consent)
    sources = _top([(r[2], int(r[6]), int(r[7])) for r in visits if r[0] == 0 and r[6] > 0])
    bucket = "hourly" if filters.hourly else "daily"
    if one_pass(filters):
        tables = _split(query(sql(BREAKDOWN.replace("/*bucket*/", BUCKET[bucket])), params))
        series_rows = tables.pop("series")
    else:
        series_rows = run(bucket)
        tables = {name: run(name) for name in ROW_PANELS}
    tables["sources"] = sources
    tables = {name: tables[name] for name in TABLES}
    sites = [r[0] for r in run("sites")]
    return Dashboard(filters, kpis, _series(filters, series_rows), tables, sites)


def _kpis(periods: dict[bool, tuple[int, int, int]], consent: dict[bool, tuple[int, int]]) -> list[KPI]:
    now, before = periods.get(True, (0, 0, 0)), periods.get(False, (0, 0, 0))
    c_now, c_before = consent.get(True, (0, 0)), consent.get(False, (0, 0))
    return [
        KPI("Visitors", now[0], before[0]),
        KPI("Page views", now[1], before[1]),
        KPI("Views per visit", _ratio(now[1], now[0]), _ratio(before[1], before[0]), "ratio"),
        KPI("Bounce rate", _ratio(now[2], now[0]), _ratio(before[2], before[0]), "percent", "down"),
        KPI("Consent opt-in", _ratio(c_now[1], c_now[0]), _ratio(c_before[1], c_before[0]), "percent"),
    ]


def _from_counts(query: Query, database: str, filters: Filters, blocked: bool, daily: list[tuple[Any, ...]],
                 counts: list[tuple[Any, ...]]) -> Dashboard:
    """The dashboard from the roll-up's answers (`consentmw.dashboard.rollup`): daily
    visits, page views and bounces, and every table panel but vitals, already ranked."""
    params = filters.params()

    def run(name: str) -> list[tuple[Any, ...]]:
        return query(_prepare(SQL[name], filters, database, blocked), params)

    periods: dict[bool, tuple[int, int, int]] = {}
    series = []
    for day, visits, views, bounces in daily:
        current = day >= filters.start
        v, p, b = periods.get(current, (0, 0, 0))
        periods[current] = (v + int(visits), p + int(views), b + int(bounces))
        if current and views:
            series.append((day, int(views), int(visits)))
    consent = {bool(c): (int(d), int(o)) for c, d, o in run("consent")}
    tables: dict[str, list[tuple[Any, ...]]] = {name: [] for name in TABLES}
    for panel, key, a, b in counts:
        tables[panel].append((key, int(a), int(b)))
    tables["vitals"] = run("vitals")
    sites = [r[0] for r in run("sites")]
    return Dashboard(filters, _kpis(periods, consent), _series(filters, series), tables, sites)


def one_pass(filters: Filters) -> bool:
    """Whether the row-level panels share one pass (`BREAKDOWN`): with a filter that the
    table's sort key cannot narrow (page, source, country, device), every per-panel query
    would read the whole range again to keep a few rows, while one pass reads it once and
    aggregates only what the filters keep. Unfiltered (or by site only), the panels' own
    queries are cheaper than one query computing every grouping."""
    return bool(filters.source or filters.page or filters.country or filters.device)


#: the tables in the order the page shows them
TABLES = ("pages", "sources", "campaigns", "countries", "devices", "browsers", "links", "events", "vitals")
#: the panels that read page views, clicks, events or vitals row by row (not per visit)
ROW_PANELS = ("pages", "campaigns", "countries", "devices", "browsers", "links", "events", "vitals")
HAS_BLOCKED = ("SELECT count() > 0 FROM (SELECT subject FROM consentmw.blocked_visitors "
               "GROUP BY subject HAVING argMax(blocked, ts) = 1)")


def _prepare(text: str, filters: Filters, database: str, blocked: bool) -> str:
    """`text` for `database` with the filters in place; without the blocked-visitor
    condition when nobody is blocked (then it is true for every row)."""
    if not blocked:
        text = text.replace(f"AND {NOT_BLOCKED}", "")
    fragments = " ".join(FILTER_SQL[key] for key in filters.active)
    text = text.replace("/*filters*/", fragments)
    text = text.replace("/*site*/", FILTER_SQL["site"] if filters.site else "")
    return text.replace("consentmw.", f"{database}.")


#: KPIs (both periods) and sources (this period) in one pass over the visits. A visit
#: counts for KPIs in the period of its first page view, as in `kpis`; for sources with
#: its page views of this period and the source of the first of them, as in `sources`.
#: `grouping(source)` tells the two apart: 1 for the KPI rows, 0 for the source rows.
VISITS = f"""SELECT grouping(source) AS kpi_row, day >= {{start_day:Date}} AS current, source,
       count() AS visits, sum(views) AS pageviews, countIf(views = 1) AS bounces,
       countIf(views_now > 0) AS visits_now, sum(views_now) AS pageviews_now
FROM (SELECT visitor_hash, toDate(min(ts)) AS day, count() AS views,
             countIf(ts >= {{start:DateTime64(3, 'UTC')}}) AS views_now,
             argMinIf({SOURCE}, ts, ts >= {{start:DateTime64(3, 'UTC')}}) AS source
      FROM consentmw.events_statistics
      WHERE ts >= {{prev_start:DateTime64(3, 'UTC')}} AND ts < {{end:DateTime64(3, 'UTC')}} AND {PAGEVIEW}
        AND {NOT_BLOCKED} /*filters*/
      GROUP BY visitor_hash)
GROUP BY GROUPING SETS ((current), (source))"""

BUCKET = {"daily": "toDate(ts)", "hourly": "toStartOfHour(ts)"}
#: Every row-level panel in one pass (used with the source filter, so that its visit-level
#: subquery runs once, not once per panel). Each row is a page view, click, custom event or
#: vitals sample (`kind`); each grouping set is one panel's GROUP BY (vitals share `path`
#: with pages); `_split` orders and cuts them as the documented queries do.
BREAKDOWN = f"""SELECT grouping(bucket) = 0, grouping(path) = 0, grouping(utm_campaign) = 0,
       grouping(country) = 0, grouping(device) = 0, grouping(browser) = 0, grouping(link) = 0,
       grouping(event_name) = 0,
       bucket, path, utm_campaign, country, device, browser, link, event_name,
       countIf(kind = 'pageview') AS pageviews, uniqExactIf(visitor_hash, kind = 'pageview') AS visitors,
       countIf(kind = 'click') AS clicks, uniqExactIf(visitor_hash, kind = 'click') AS clickers,
       countIf(kind = 'custom') AS events, uniqExactIf(visitor_hash, kind = 'custom') AS triggerers,
       countIf(kind = 'vitals') AS samples,
       quantileExactInclusiveIf(0.75)(lcp, kind = 'vitals') AS lcp75,
       quantileExactInclusiveIf(0.75)(inp, kind = 'vitals') AS inp75,
       quantileExactInclusiveIf(0.75)(cls, kind = 'vitals') AS cls75,
       quantileExactInclusiveIf(0.75)(ttfb, kind = 'vitals') AS ttfb75
FROM (SELECT multiIf({PAGEVIEW}, 'pageview', event_type IN ('click', 'custom', 'vitals'), event_type, '') AS kind,
             /*bucket*/ AS bucket, path, utm_campaign, country, device, browser,
             concat(link_host, link_path) AS link, event_name, visitor_hash, lcp, inp, cls, ttfb
      FROM consentmw.events_statistics
      WHERE {PERIOD} AND event_type IN ('pageview', 'click', 'custom', 'vitals') AND {NOT_BLOCKED} /*filters*/)
WHERE kind != ''
GROUP BY GROUPING SETS ((bucket), (path), (utm_campaign), (country), (device), (browser), (link), (event_name))"""


def _key(value: Any) -> Any:
    """ClickHouse orders strings by their bytes."""
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def _top(rows: list[tuple[Any, ...]], limit: int = 10) -> list[tuple[Any, ...]]:
    """ORDER BY the first count DESC, the name LIMIT 10, as the documented queries do;
    rows are (name, count, …) with the ordering count given by the panel."""
    return sorted(rows, key=lambda r: (-r[1], _key(r[0])))[:limit]


def _split(rows: list[tuple[Any, ...]]) -> dict[str, list[tuple[Any, ...]]]:
    """`BREAKDOWN`'s grouping sets as the documented panels' answers."""
    out: dict[str, list[tuple[Any, ...]]] = {name: [] for name in ("series", *ROW_PANELS)}
    by_views: dict[str, list[tuple[Any, int, int]]] = {n: [] for n in ("pages", "campaigns", "countries",
                                                                        "devices", "browsers")}
    for row in rows:
        flags, keys = row[:8], row[8:16]
        views, visitors, clicks, clickers, events, triggerers, samples = (int(v) for v in row[16:23])
        quantiles = row[23:27]
        if flags[0] and views:
            out["series"].append((keys[0], views, visitors))
        elif flags[1]:
            if views:
                by_views["pages"].append((keys[1], visitors, views))
            if samples:
                out["vitals"].append((keys[1], samples, *quantiles))
        elif flags[2] and views and keys[2] != "":
            by_views["campaigns"].append((keys[2], visitors, views))
        elif flags[3] and views:
            by_views["countries"].append((keys[3], visitors, views))
        elif flags[4] and views:
            by_views["devices"].append((keys[4], visitors, views))
        elif flags[5] and views:
            by_views["browsers"].append((keys[5], visitors, views))
        elif flags[6] and clicks:
            out["links"].append((keys[6], clickers, clicks))
        elif flags[7] and events:
            out["events"].append((keys[7], triggerers, events))
    for name, found in by_views.items():
        out[name] = sorted(found, key=lambda r: (-r[2], _key(r[0])))[:10]
    for name in ("links", "events"):
        out[name] = sorted(out[name], key=lambda r: (-r[2], _key(r[0])))[:10]
    out["vitals"] = _top(out["vitals"])
    out["series"].sort(key=lambda r: r[0])
    return out


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
