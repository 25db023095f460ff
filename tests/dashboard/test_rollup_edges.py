"""The dashboard's numbers (raw, daily roll-up, read-only) at the edges of a UTC day, on a
ClickHouse whose time zone is not UTC: the documented SQL and the dashboard count UTC days,
as the visitor code and the roll-up's days do, whatever the server's (or session's) zone."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from consentmw import Policy
from consentmw.dashboard.filters import parse
from consentmw.dashboard.queries import load
from consentmw.store.schema import Schema
from consentmw.store.sink import ClickHouseSink

from tests.dashboard.test_documented_sql import expected, run_documented, seeded, shown  # noqa: F401
from tests.test_views import site


class Zoned:
    """A clickhouse-connect client whose session runs in `zone` (a server configured so)."""

    def __init__(self, ch: Any, zone: str) -> None:
        self.ch, self.settings = ch, {"session_timezone": zone}

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return self.ch.query(sql, parameters=parameters, settings=self.settings)

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return self.ch.command(sql, parameters=parameters, settings=self.settings)


def _pageview(ch: Any, database: str, ts: dt.datetime, token: str, path: str, code: int) -> None:
    ch.insert(f"{database}.events_statistics", [[ts, "site.test", "pageview", token, path, 200, code]],
              column_names=["ts", "site", "event_type", "consent_id", "path", "status", "visitor_hash"])


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/Los_Angeles"])
async def test_day_edges_count_in_utc_on_a_server_in_another_zone(seeded: Any, ch: Any, database: str,
                                                                  zone: str) -> None:
    today = dt.datetime.now(dt.timezone.utc).date()
    filters = parse({"range": "7d"}, today)
    prev_start = filters.previous[0]
    edges = [  # just before the previous period, its first instant, a closed day's last one, late today
        (dt.datetime.combine(prev_start - dt.timedelta(days=1), dt.time(23, 59, 59, 999000)), "/before"),
        (dt.datetime.combine(prev_start, dt.time(0)), "/first"),
        (dt.datetime.combine(today - dt.timedelta(days=2), dt.time(23, 59, 59, 999000)), "/last-ms"),
        (dt.datetime.combine(today - dt.timedelta(days=1), dt.time(0)), "/midnight"),
        (dt.datetime.combine(today, dt.time(23, 30)), "/late-today"),
    ]
    for n, (ts, path) in enumerate(edges):
        _pageview(ch, database, ts, f"edge{n}", path, 900 + n)
    zoned = Zoned(ch, zone)
    utc_answer = run_documented(ch, database, filters)
    assert run_documented(zoned, database, filters) == utc_answer  # the documented SQL counts UTC days
    pages = {r[0] for r in utc_answer["pages"]} | {r[0] for r in run_documented(ch, database, parse({"range": "30d"},
                                                                                                    today))["pages"]}
    assert {"/first", "/last-ms", "/midnight", "/late-today"} <= pages and "/before" not in {
        r[0] for r in utc_answer["pages"]}

    def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return zoned.query(sql, params).result_rows

    def command(sql: str, params: dict[str, Any]) -> Any:
        return zoned.command(sql, params)

    for rollup, writes in ((False, None), (True, None), (True, command), (True, command)):
        data = load(query, database, filters, rollup=rollup, command=writes)
        assert shown(data) == expected(utc_answer, filters), (rollup, writes)


def _retention(days: int) -> Policy:
    """The default policy with the statistics kept `days` days."""
    policy = Policy.default()
    return dataclasses.replace(policy, purposes=tuple(
        dataclasses.replace(p, retention_days=days) if p.id == "statistics" else p for p in policy.purposes))


async def test_days_past_the_retention_count_their_rows_until_they_are_gone(ch: Any, chdb_dsn: str,
                                                                             database: str) -> None:
    """Statistics rows past their TTL stay readable until ClickHouse merges them away (hours
    on a busy table), and the documented SQL counts them; the roll-up of such a day is past
    its own TTL (retention + 1 day) and is dropped as it is written. Such days are read from
    the rows, so the numbers still agree, and nothing is computed for them on every load."""
    sink = ClickHouseSink(chdb_dsn, Schema(_retention(30), database))
    sink.client()
    ch.command(f"SYSTEM STOP MERGES {database}.events_statistics")  # the TTL merge has not come yet
    today = dt.datetime.now(dt.timezone.utc).date()
    for back in (34, 33, 32, 31, 30, 29, 3):
        _pageview(ch, database, dt.datetime.combine(today - dt.timedelta(days=back), dt.time(12)), f"t{back}", "/p",
                  100 + back)
    filters = parse({"range": "custom", "from": (today - dt.timedelta(days=40)).isoformat(),
                     "to": today.isoformat()}, today)

    def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return ch.query(sql, parameters=params).result_rows

    def command(sql: str, params: dict[str, Any]) -> Any:
        return ch.command(sql, parameters=params)

    answer = expected(run_documented(ch, database, filters), filters)
    assert answer["kpis"]["Page views"] == 7
    for _ in range(2):
        assert shown(load(query, database, filters, rollup=True, command=command, retention_days=30)) == answer
    records = ch.query(f"SELECT count() FROM {database}.dashboard_days").result_rows[0][0]
    load(query, database, filters, rollup=True, command=command, retention_days=30)
    assert ch.query(f"SELECT count() FROM {database}.dashboard_days").result_rows[0][0] == records
    sink.close()


async def test_a_record_from_a_clock_ahead_does_not_make_every_load_recompute(seeded: Any, ch: Any,
                                                                                database: str) -> None:
    """Two app servers share the store; one's clock runs ahead and stamped a day's roll-up
    with a later version. A recomputation here must still become the day's current one
    (not stay older than that record, which made every later load compute the day again)."""
    today = dt.datetime.now(dt.timezone.utc).date()
    filters = parse({"range": "7d"}, today)
    day = today - dt.timedelta(days=2)
    ahead = int((dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).timestamp() * 1e6)
    ch.command(f"INSERT INTO {database}.dashboard_days (day, version, rows, blocked) "
               f"VALUES ('{day.isoformat()}', {ahead}, 1, 0)")  # stale: the day has more rows

    def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return ch.query(sql, parameters=params).result_rows

    def command(sql: str, params: dict[str, Any]) -> Any:
        return ch.command(sql, parameters=params)

    answer = expected(run_documented(ch, database, filters), filters)
    assert shown(load(query, database, filters, rollup=True, command=command)) == answer
    computed = ch.query(f"SELECT count() FROM {database}.dashboard_days").result_rows[0][0]
    for _ in range(2):
        assert shown(load(query, database, filters, rollup=True, command=command)) == answer
    assert ch.query(f"SELECT count() FROM {database}.dashboard_days").result_rows[0][0] == computed


async def test_two_loads_computing_the_same_day_at_once_do_not_double_it(seeded: Any, ch: Any,
                                                                        database: str) -> None:
    """Two processes (or two requests) find the same day stale at the same moment and both
    compute it. Each must write its own version: a shared one would hold the day twice.
    Here the second load runs inside the first one's compute step, while a record from a
    clock that runs ahead makes both pick their version from it."""
    today = dt.datetime.now(dt.timezone.utc).date()
    filters = parse({"range": "7d"}, today)
    day = today - dt.timedelta(days=2)
    ahead = int((dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).timestamp() * 1e6)
    ch.command(f"INSERT INTO {database}.dashboard_days (day, version, rows, blocked) "
               f"VALUES ('{day.isoformat()}', {ahead}, 1, 0)")

    def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return ch.query(sql, parameters=params).result_rows

    nested: list[Any] = []

    def command(sql: str, params: dict[str, Any]) -> Any:
        if not nested and sql.startswith("INSERT INTO") and "dashboard_daily" in sql:
            nested.append(None)
            nested[0] = load(query, database, filters, rollup=True, command=command)  # the other process
        return ch.command(sql, parameters=params)

    answer = expected(run_documented(ch, database, filters), filters)
    assert shown(load(query, database, filters, rollup=True, command=command)) == answer
    assert nested and shown(nested[0]) == answer
    assert shown(load(query, database, filters, rollup=True, command=command)) == answer  # reads what both wrote


async def test_the_live_route_counts_expired_days_from_their_rows(make_app: Any, ch: Any, database: str) -> None:
    """The same through `/_consent/admin/dashboard`: the route tells the roll-up the policy's
    statistics retention."""
    import re

    from tests.dashboard.test_live import TOKEN, bearer, client, ready

    mw = ready(make_app(site(), admin_token=TOKEN, policy=_retention(30)))
    ch.command(f"SYSTEM STOP MERGES {database}.events_statistics")
    today = dt.datetime.now(dt.timezone.utc).date()
    for back in (34, 33, 32, 31, 3):
        _pageview(ch, database, dt.datetime.combine(today - dt.timedelta(days=back), dt.time(12)), f"t{back}", "/p",
                  100 + back)
    start = (today - dt.timedelta(days=40)).isoformat()
    async with client(mw, **bearer()) as c:
        for _ in range(2):
            r = await c.get(f"/_consent/admin/dashboard?range=custom&from={start}&to={today.isoformat()}")
            assert r.status_code == 200, r.text
            kpis = dict(re.findall(r'<div class="kpi"><h2>([^<]+)</h2><p class="value">([^<]+)</p>', r.text))
            assert kpis["Page views"] == "5"
