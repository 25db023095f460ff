"""The dashboard's numbers (raw, daily roll-up, read-only) at the edges of a UTC day, on a
ClickHouse whose time zone is not UTC: the documented SQL and the dashboard count UTC days,
as the visitor code and the roll-up's days do, whatever the server's (or session's) zone."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from consentmw.dashboard.filters import parse
from consentmw.dashboard.queries import load

from tests.dashboard.test_documented_sql import expected, run_documented, seeded, shown  # noqa: F401


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
