"""The unfiltered (or site-filtered) multi-day dashboard from daily counts, not raw rows.

Why it is exact: the visitor code (`visitor_hash`) is keyed by site and UTC day (a new salt
every day, the site hashed in), so one code never spans two days or two sites. Hence the
distinct visitors of a range are the sum of each day's and site's distinct visitors, a
visit lies within one day, and every panel below is a sum of per-day, per-site counts.
(Two codes of different days colliding in 64 bits is the only way this can differ.)

How it stays right: `dashboard_days` records, per closed day, the statistics rows it was
computed from (their count, and a fingerprint of the rows of blocked visitors). Each load
compares that with the table now; a day that differs (rows arrived late, expired, someone
was blocked or unblocked) is computed again before it is used, so the numbers are the
documented queries' numbers. Today, and every day when nothing may be written (`command`
is None), is computed from the raw rows inside the same query. Web vitals (percentiles),
the consent panel and the site list always read their tables directly.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Callable

from consentmw.dashboard.filters import Filters
from consentmw.dashboard.queries import NOT_BLOCKED, PAGEVIEW, SOURCE
from consentmw.store.rollup import DAILY, DAYS

#: runs a statement that returns nothing (the roll-up's INSERT … SELECT)
Command = Callable[[str, dict[str, Any]], Any]

RANGE = ("ts >= {r_lo:DateTime64(3)} AND ts < {r_hi:DateTime64(3)} AND toDate(ts) IN {r_days:Array(Date)}")
_STATS = "consentmw.events_statistics"
_VISITS = (f"(SELECT toDate(ts) AS day, site, visitor_hash, count() AS views, argMin({SOURCE}, ts) AS source "
           f"FROM {_STATS} WHERE {RANGE} AND {PAGEVIEW} AND {NOT_BLOCKED} GROUP BY day, site, visitor_hash)")


def _by(panel: str, key: str, where: str) -> str:
    return (f"SELECT toDate(ts) AS day, site, '{panel}' AS panel, CAST({key} AS String) AS key, "
            f"uniqExact(visitor_hash) AS a, count() AS b, toUInt64(0) AS c "
            f"FROM {_STATS} WHERE {RANGE} AND {where} AND {NOT_BLOCKED} GROUP BY day, site, key")


#: (day, site, panel, key, a, b, c) from the raw rows of the days `r_days`, one SELECT per
#: panel. kpis: a visits, b page views, c bounces; sources: a visits, b page views; the
#: others: a visitors, b page views / clicks / events.
PANELS = {
    "kpis": f"SELECT day, site, 'kpis' AS panel, '' AS key, count() AS a, sum(views) AS b, countIf(views = 1) AS c "
            f"FROM {_VISITS} GROUP BY day, site",
    "sources": f"SELECT day, site, 'sources' AS panel, source AS key, count() AS a, sum(views) AS b, "
               f"toUInt64(0) AS c FROM {_VISITS} GROUP BY day, site, source",
    "pages": _by("pages", "path", PAGEVIEW),
    "campaigns": _by("campaigns", "utm_campaign", f"{PAGEVIEW} AND utm_campaign != ''"),
    "countries": _by("countries", "country", PAGEVIEW),
    "devices": _by("devices", "device", PAGEVIEW),
    "browsers": _by("browsers", "browser", PAGEVIEW),
    "links": _by("links", "concat(link_host, link_path)", "event_type = 'click'"),
    "events": _by("events", "event_name", "event_type = 'custom'"),
}
PARTS = "\nUNION ALL\n".join(PANELS.values())
TABLE_PANELS = [name for name in PANELS if name != "kpis"]


def _counts(panels: list[str], raw: bool) -> str:
    """The roll-up's rows of `panels` for the current versions of the rolled days, plus
    (when some days are read raw) those days' rows computed from the statistics table."""
    names = ", ".join(f"'{p}'" for p in panels)
    rolled = (f"SELECT day, site, panel, key, a, b, c FROM consentmw.{DAILY} "
              f"WHERE (day, version) IN {{r_rolled:Array(Tuple(Date, UInt64))}} AND panel IN ({names})")
    return "(" + "\nUNION ALL\n".join([rolled] + ([PANELS[p] for p in panels] if raw else [])) + ")"


SITE = "AND site = {site:String}"


def tables_sql(raw: bool) -> str:
    """Every table panel but vitals, ordered and cut as the documented queries do."""
    return (f"SELECT panel, key, sum(a) AS sa, sum(b) AS sb FROM {_counts(TABLE_PANELS, raw)}\n"
            f"WHERE day >= {{start_day:Date}} /*site*/\nGROUP BY panel, key\n"
            f"ORDER BY panel, if(panel = 'sources', sa, sb) DESC, key LIMIT 10 BY panel")


def daily_sql(raw: bool) -> str:
    """Visits, page views and bounces per day, both periods."""
    return (f"SELECT day, sum(a) AS visits, sum(b) AS pageviews, sum(c) AS bounces FROM {_counts(['kpis'], raw)}\n"
            f"WHERE 1 /*site*/\nGROUP BY day ORDER BY day")


STATUS = (f"SELECT toDate(ts) AS day, count() AS rows, /*fingerprint*/ AS blocked FROM {_STATS} "
          f"WHERE ts >= {{prev_start:DateTime64(3)}} AND ts < {{end:DateTime64(3)}} GROUP BY day")
FINGERPRINT = "sumIf(cityHash64(consent_id), NOT (" + NOT_BLOCKED + "))"
RECORDS = (f"SELECT day, max(version), argMax(rows, version), argMax(blocked, version) FROM consentmw.{DAYS} "
           f"WHERE day >= {{r_first:Date}} AND day <= {{r_last:Date}} GROUP BY day")
COMPUTE = (f"INSERT INTO consentmw.{DAILY} (day, version, site, panel, key, a, b, c)\n"
           f"SELECT day, {{r_version:UInt64}}, site, panel, key, a, b, c FROM ({PARTS})")
RECORD = f"INSERT INTO consentmw.{DAYS} (day, version, rows, blocked) VALUES"


def applies(filters: Filters) -> bool:
    """Only views whose every panel is a sum of per-day, per-site counts: no filter finer
    than the site (those keep their own one-pass query) and more than one day (hourly)."""
    return not (filters.page or filters.source or filters.country or filters.device or filters.hourly)


def _text(sql: str, database: str, filters: Filters, blocked: bool) -> str:
    if not blocked:
        sql = sql.replace(f"AND {NOT_BLOCKED}", "")
    sql = sql.replace("/*site*/", SITE if filters.site else "")
    return sql.replace("consentmw.", f"{database}.")


def _days_params(days: list[dt.date]) -> dict[str, Any]:
    lo = min(days) if days else dt.date(1970, 1, 2)
    hi = max(days) if days else dt.date(1970, 1, 2)
    return {"r_days": days, "r_lo": dt.datetime.combine(lo, dt.time(0)),
            "r_hi": dt.datetime.combine(hi + dt.timedelta(days=1), dt.time(0))}


def load_counts(query: Callable[[str, dict[str, Any]], list[tuple[Any, ...]]], command: Command | None,
                database: str, filters: Filters, blocked: bool,
                today: dt.date | None = None) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(daily KPI rows, table rows) for `filters`, from the roll-up where it is current.

    Closed days whose roll-up is missing or stale are computed first when `command` may
    write; otherwise (and for today) they are read from the raw rows in the same query."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    params = filters.params()
    status_sql = STATUS.replace("/*fingerprint*/", FINGERPRINT if blocked else "toUInt64(0)")
    status = {r[0]: (int(r[1]), int(r[2])) for r in query(_text(status_sql, database, filters, True), params)}
    first, last = filters.previous[0], filters.end
    records = {r[0]: (int(r[1]), int(r[2]), int(r[3]))
               for r in query(_text(RECORDS, database, filters, blocked), {"r_first": first, "r_last": last})}
    rolled: list[tuple[dt.date, int]] = []
    stale: list[dt.date] = []
    for day, (rows, fingerprint) in sorted(status.items()):
        record = records.get(day)
        if day >= today:
            continue
        if record is not None and record[1:] == (rows, fingerprint):
            rolled.append((day, record[0]))
        else:
            stale.append(day)
    if stale and command is not None:
        version = time.time_ns() // 1000
        command(_text(COMPUTE, database, filters, blocked), {**_days_params(stale), "r_version": version})
        # recorded with the state measured before computing: a row that arrived in between
        # makes the day differ next time, and it is computed again
        values = ", ".join(f"('{d.isoformat()}', {version}, {status[d][0]}, {status[d][1]})" for d in stale)
        command(_text(RECORD, database, filters, blocked) + " " + values, {})
        rolled += [(d, version) for d in stale]
        stale = []
    raw = sorted(stale + [d for d in status if d >= today])
    read = {**params, **_days_params(raw), "r_rolled": rolled}
    kpis = query(_text(daily_sql(bool(raw)), database, filters, blocked), read)
    tables = query(_text(tables_sql(bool(raw)), database, filters, blocked), read)
    return kpis, tables
