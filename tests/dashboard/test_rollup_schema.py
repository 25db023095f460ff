"""The dashboard's daily roll-up tables: made by the schema migration (chDB here; the same
statements run on a server, see tests/store/test_server_http.py), expiring with the
statistics, absent where they cannot be used, and holding counts only."""

from __future__ import annotations

from typing import Any

from consentmw import Policy
from consentmw.store.rollup import DAILY, DAYS
from consentmw.store.schema import Schema
from consentmw.store.sink import ClickHouseSink

from tests.dashboard.test_live import NO_STATS_POLICY


def test_migration_makes_the_tables_with_the_statistics_retention(ch: Any, chdb_dsn: str, database: str) -> None:
    sink = ClickHouseSink(chdb_dsn, Schema(Policy.default(), database))
    sink.client()
    days = Policy.default()["statistics"].retention_days
    for table in (DAILY, DAYS):
        create = ch.query(f"SHOW CREATE TABLE {database}.{table}").result_rows[0][0]
        assert f"toIntervalDay({days + 1})" in create, create
    # counts only: nothing per visitor can outlive an erasure or a retention here
    columns = {r[0] for r in ch.query(f"SELECT name FROM system.columns WHERE database = '{database}' "
                                      f"AND table IN ('{DAILY}', '{DAYS}')").result_rows}
    assert columns == {"day", "version", "site", "origin", "panel", "key", "a", "b", "c", "rows", "blocked"}
    sink.client().command(Schema(Policy.default(), database).statements()[-1])  # idempotent
    sink.close()


def test_no_tables_without_statistics_or_on_a_cluster() -> None:
    names = (DAILY, DAYS)
    assert not any(n in s for s in Schema(Policy.from_dict(NO_STATS_POLICY), "db").statements() for n in names)
    assert not any(n in s for s in Schema(Policy.default(), "db", cluster="main").statements() for n in names)
    assert sum(DAILY in s for s in Schema(Policy.default(), "db").statements()) == 2
