"""The multi-day dashboard, unfiltered or by site and/or source, from daily counts.

Why it is exact: the visitor code (`visitor_hash`) is keyed by site and UTC day (a new salt
every day, the site hashed in), so one code never spans two days or two sites. Hence the
distinct visitors of a range are the sum of each day's and site's distinct visitors, a
visit lies within one day, and every panel below is a sum of per-day, per-site counts,
kept apart by each visit's source (`origin`) so that the source filter is a sum too.
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
import logging
import random
import time
from typing import Any, Callable

from consentmw.dashboard.filters import Filters
from consentmw.dashboard.queries import NOT_BLOCKED, PAGEVIEW, SOURCE
from consentmw.store.rollup import DAILY, DAYS

log = logging.getLogger("consentmw.dashboard")

#: runs a statement that returns nothing (the roll-up's INSERT … SELECT)
Command = Callable[[str, dict[str, Any]], Any]

RANGE = ("ts >= {r_lo:DateTime64(3, 'UTC')} AND ts < {r_hi:DateTime64(3, 'UTC')} AND toDate(ts) IN {r_days:Array(Date)}")
_STATS = "consentmw.events_statistics"
#: Each visit's source as the source filter sees it: the source of its first page view,
#: blocked rows included (as in the documented filter); '' for a visitor without one.
_ORIGIN = (f"(SELECT visitor_hash, argMin({SOURCE}, ts) AS origin FROM {_STATS} "
           f"WHERE {RANGE} AND {PAGEVIEW} GROUP BY visitor_hash)")
#: How the raw rows get their `origin`: "join" (every visit's own, to store), "none" (''
#: for all: the reader sums over origins), "filter" (only the visits of the filtered source).
Origin = str
_KEEP_SOURCE = (f"visitor_hash IN (SELECT visitor_hash FROM {_STATS} WHERE {RANGE} AND {PAGEVIEW} "
                f"GROUP BY visitor_hash HAVING argMin({SOURCE}, ts) = {{source:String}})")


def _rows(where: str, origin: Origin) -> tuple[str, str]:
    """(FROM clause, origin expression) for the statistics rows matching `where`."""
    if origin == "join":
        return (f"(SELECT * FROM {_STATS} WHERE {where}) AS e LEFT JOIN {_ORIGIN} AS o USING visitor_hash",
                "origin")
    if origin == "filter":
        return f"{_STATS} WHERE {where} AND {_KEEP_SOURCE}", "{source:String}"
    return f"{_STATS} WHERE {where}", "''"


def _visits(origin: Origin) -> str:
    rows, expr = _rows(f"{RANGE} AND {PAGEVIEW} AND {NOT_BLOCKED}", origin)
    return (f"(SELECT toDate(ts) AS day, site, visitor_hash, {expr} AS origin, count() AS views, "
            f"argMin({SOURCE}, ts) AS source FROM {rows} GROUP BY day, site, visitor_hash, origin)")


def _by(panel: str, key: str, where: str, origin: Origin) -> str:
    rows, expr = _rows(f"{RANGE} AND {where} AND {NOT_BLOCKED}", origin)
    return (f"SELECT toDate(ts) AS day, site, {expr} AS origin, '{panel}' AS panel, CAST({key} AS String) AS key, "
            f"uniqExact(visitor_hash) AS a, count() AS b, toUInt64(0) AS c FROM {rows} "
            f"GROUP BY day, site, origin, key")


def panels(origin: Origin) -> dict[str, str]:
    """(day, site, origin, panel, key, a, b, c) from the raw rows of the days `r_days`, one
    SELECT per panel; `origin` is the visit's source for the source filter. kpis: a visits,
    b page views, c bounces; sources: a visits, b page views; the others: a visitors, b page
    views / clicks / events."""
    visits = _visits(origin)
    return {
        "kpis": f"SELECT day, site, origin, 'kpis' AS panel, '' AS key, count() AS a, sum(views) AS b, "
                f"countIf(views = 1) AS c FROM {visits} GROUP BY day, site, origin",
        "sources": f"SELECT day, site, origin, 'sources' AS panel, source AS key, count() AS a, sum(views) AS b, "
                   f"toUInt64(0) AS c FROM {visits} GROUP BY day, site, origin, source",
        "pages": _by("pages", "path", PAGEVIEW, origin),
        "campaigns": _by("campaigns", "utm_campaign", f"{PAGEVIEW} AND utm_campaign != ''", origin),
        "countries": _by("countries", "country", PAGEVIEW, origin),
        "devices": _by("devices", "device", PAGEVIEW, origin),
        "browsers": _by("browsers", "browser", PAGEVIEW, origin),
        "links": _by("links", "concat(link_host, link_path)", "event_type = 'click'", origin),
        "events": _by("events", "event_name", "event_type = 'custom'", origin),
    }


PARTS = "\nUNION ALL\n".join(panels("join").values())
TABLE_PANELS = [name for name in panels("none") if name != "kpis"]


def _counts(names: list[str], raw: Origin | None) -> str:
    """The roll-up's rows of the panels `names` for the current versions of the rolled
    days, plus (when some days are read raw) those days' rows from the statistics table."""
    listed = ", ".join(f"'{p}'" for p in names)
    rolled = (f"SELECT day, site, origin, panel, key, a, b, c FROM consentmw.{DAILY} "
              f"WHERE (day, version) IN {{r_rolled:Array(Tuple(Date, UInt64))}} AND panel IN ({listed})")
    fresh = panels(raw) if raw else {}
    return "(" + "\nUNION ALL\n".join([rolled] + [fresh[p] for p in names if p in fresh]) + ")"


SITE = "AND site = {site:String}"
ORIGIN = "AND origin = {source:String}"


def tables_sql(raw: Origin | None) -> str:
    """Every table panel but vitals, ordered and cut as the documented queries do."""
    return (f"SELECT panel, key, sum(a) AS sa, sum(b) AS sb FROM {_counts(TABLE_PANELS, raw)}\n"
            f"WHERE day >= {{start_day:Date}} /*site*/ /*origin*/\nGROUP BY panel, key\n"
            f"ORDER BY panel, if(panel = 'sources', sa, sb) DESC, key LIMIT 10 BY panel")


def daily_sql(raw: Origin | None) -> str:
    """Visits, page views and bounces per day, both periods."""
    return (f"SELECT day, sum(a) AS visits, sum(b) AS pageviews, sum(c) AS bounces FROM {_counts(['kpis'], raw)}\n"
            f"WHERE 1 /*site*/ /*origin*/\nGROUP BY day ORDER BY day")


STATUS = (f"SELECT toDate(ts) AS day, count() AS rows, /*fingerprint*/ AS blocked FROM {_STATS} "
          f"WHERE ts >= {{prev_start:DateTime64(3, 'UTC')}} AND ts < {{end:DateTime64(3, 'UTC')}} GROUP BY day")
FINGERPRINT = "sumIf(cityHash64(consent_id), NOT (" + NOT_BLOCKED + "))"
RECORDS = (f"SELECT day, max(version), argMax(rows, version), argMax(blocked, version) FROM consentmw.{DAYS} "
           f"WHERE day >= {{r_first:Date}} AND day <= {{r_last:Date}} GROUP BY day")
COMPUTE = (f"INSERT INTO consentmw.{DAILY} (day, version, site, origin, panel, key, a, b, c)\n"
           f"SELECT day, {{r_version:UInt64}}, site, origin, panel, key, a, b, c FROM ({PARTS})")
RECORD = f"INSERT INTO consentmw.{DAYS} (day, version, rows, blocked) VALUES"


def applies(filters: Filters) -> bool:
    """Only views whose every panel is a sum of per-day, per-site, per-visit-source counts:
    no page, country or device filter (those keep their own one-pass query), more than one
    day (hourly)."""
    return not (filters.page or filters.country or filters.device or filters.hourly)


def _text(sql: str, database: str, filters: Filters, blocked: bool) -> str:
    if not blocked:
        sql = sql.replace(f"AND {NOT_BLOCKED}", "")
    sql = sql.replace("/*site*/", SITE if filters.site else "")
    sql = sql.replace("/*origin*/", ORIGIN if filters.source else "")
    return sql.replace("consentmw.", f"{database}.")


def _days_params(days: list[dt.date]) -> dict[str, Any]:
    lo = min(days) if days else dt.date(1970, 1, 2)
    hi = max(days) if days else dt.date(1970, 1, 2)
    return {"r_days": days, "r_lo": dt.datetime.combine(lo, dt.time(0)),
            "r_hi": dt.datetime.combine(hi + dt.timedelta(days=1), dt.time(0))}


def load_counts(query: Callable[[str, dict[str, Any]], list[tuple[Any, ...]]], command: Command | None,
                database: str, filters: Filters, blocked: bool,
                today: dt.date | None = None,
                retention_days: int | None = None) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(daily KPI rows, table rows) for `filters`, from the roll-up where it is current.

    Closed days whose roll-up is missing or stale are computed first when `command` may
    write; otherwise (and for today) they are read from the raw rows in the same query.
    So are days older than `retention_days` (the statistics' retention): their rows are
    expired but stay readable until ClickHouse merges them away, while their roll-up is
    past its own TTL and may be dropped as soon as it is written."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    expired = today - dt.timedelta(days=retention_days) if retention_days is not None else dt.date.min
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
        if day >= today or day < expired:
            continue
        if record is not None and record[1:] == (rows, fingerprint):
            rolled.append((day, record[0]))
        else:
            stale.append(day)
    if stale and command is not None:
        # newer than every record of these days, even one from a process whose clock is ahead
        # (else that record stays the current one and every load computes the day again), and
        # apart from a version another process computes at the same time from the same record
        # (a shared version would hold the day twice): random low bits
        newest = max((records[d][0] for d in stale if d in records), default=0)
        version = max(time.time_ns() // 1000, newest + 1) + random.getrandbits(16)
        try:
            command(_text(COMPUTE, database, filters, blocked), {**_days_params(stale), "r_version": version})
            # recorded with the state measured before computing: a row that arrived in
            # between makes the day differ next time, and it is computed again
            values = ", ".join(f"('{d.isoformat()}', {version}, {status[d][0]}, {status[d][1]})" for d in stale)
            command(_text(RECORD, database, filters, blocked) + " " + values, {})
        except Exception as exc:  # noqa: BLE001 - e.g. a read-only user: count these days from the rows
            log.warning("consentmw: could not store the dashboard's daily counts (%s)",
                        str(exc).splitlines()[0][:200] if str(exc) else exc)
        else:
            rolled += [(d, version) for d in stale]
            stale = []
    raw = sorted(stale + [d for d in status if d >= today or d < expired])
    read = {**params, **_days_params(raw), "r_rolled": rolled}
    origin = ("filter" if filters.source else "none") if raw else None
    kpis = query(_text(daily_sql(origin), database, filters, blocked), read)
    tables = query(_text(tables_sql(origin), database, filters, blocked), read)
    return kpis, tables
