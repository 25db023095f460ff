"""Schema DDL: valid for ClickHouse's own parser (cluster too), idempotent, migrates with the policy."""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from consentmw import Policy
from consentmw.core.fields import COLUMNS, LEDGER_COLUMNS, columns_for
from consentmw.store.layout import check_identifier
from consentmw.store.schema import Schema, version_key
from consentmw.core.arrow import arrow_type
from consentmw.store.sink import ClickHouseSink, MigrationRefused, NewerSchema, resolve_dsn


def test_every_statement_parses_on_a_cluster_too(ch: Any) -> None:
    for schema in (Schema(Policy.default(), "consentmw"), Schema(Policy.default(), "consentmw", cluster="main")):
        statements = schema.statements()
        assert statements
        for sql in statements:
            formatted = ch.query("SELECT formatQuery(%(q)s)", parameters={"q": sql}).result_rows[0][0]
            assert formatted
            if schema.cluster:
                assert "ON CLUSTER main" in formatted, sql


def test_cluster_ddl_uses_replicated_engines_and_distributed_tables() -> None:
    text = "\n".join(Schema(Policy.default(), "cmw", cluster="main").statements())
    assert "ReplicatedMergeTree('/clickhouse/tables/{shard}/cmw/events_statistics', '{replica}')" in text
    assert "ENGINE = Distributed(main, cmw, events_statistics_local, rand())" in text


def test_migration_is_idempotent_and_follows_the_policy(chdb_dsn: str, ch: Any, database: str) -> None:
    policy = Policy.default()
    sink = ClickHouseSink(chdb_dsn, Schema(policy, database))
    sink.client()
    sink.migrate()  # twice: nothing changes, nothing fails
    cols = [r[0] for r in ch.query(f"DESCRIBE TABLE {database}.events_statistics").result_rows]
    assert cols == [c.name for c in columns_for(policy["statistics"])]
    create = ch.query(f"SHOW CREATE TABLE {database}.events_statistics").result_rows[0][0]
    assert "toIntervalDay(395)" in create and "non_replicated_deduplication_window = 10000" in create
    assert "PARTITION BY toYYYYMM(ts)" in create

    # A new policy version: statistics now also keeps the language, for 30 days.
    raw = {"version": "v2", "updated": "2026-12-01",
           "purposes": [{"id": "necessary", "required": True},
                        {"id": "statistics", "categories": sorted(policy["statistics"].categories | {"language"}),
                         "retention_days": 30},
                        {"id": "personalisation"}, {"id": "marketing"}]}
    newer = Policy.from_dict(raw, base=policy)
    # 395 -> 30 days would delete every older row: refused without the operator's confirmation.
    with pytest.raises(MigrationRefused, match="statistics from 395 to 30 days"):
        ClickHouseSink(chdb_dsn, Schema(newer, database)).client()
    create = ch.query(f"SHOW CREATE TABLE {database}.events_statistics").result_rows[0][0]
    assert "toIntervalDay(395)" in create  # nothing changed
    ClickHouseSink(chdb_dsn, Schema(newer, database), allow_shorter_retention=True).client()
    cols = [r[0] for r in ch.query(f"DESCRIBE TABLE {database}.events_statistics").result_rows]
    assert "language" in cols
    create = ch.query(f"SHOW CREATE TABLE {database}.events_statistics").result_rows[0][0]
    assert "toIntervalDay(30)" in create
    versions = ch.query(f"SELECT policy_version FROM {database}.schema_migrations ORDER BY policy_version").result_rows
    assert versions == [(policy.version,), ("v2",)]


def test_an_older_policy_never_rewrites_a_newer_schema(chdb_dsn: str, ch: Any, database: str) -> None:
    """A rolling deploy: the new version (longer retention, one more column) migrated first;
    a process still running the old policy starts afterwards and must leave it alone."""
    old = Policy.default()
    raw = {"version": "2099-01-01", "updated": "2099-01-01",
           "purposes": [{"id": "necessary", "required": True},
                        {"id": "statistics", "categories": sorted(old["statistics"].categories | {"language"}),
                         "retention_days": 500},
                        {"id": "personalisation"}, {"id": "marketing"}]}
    new = Policy.from_dict(raw, base=old)
    ClickHouseSink(chdb_dsn, Schema(new, database)).apply_migration()
    stale = ClickHouseSink(chdb_dsn, Schema(old, database))
    with pytest.raises(NewerSchema, match="'2099-01-01', newer than this policy's"):
        stale.apply_migration()
    stale.client()  # the app: a warning, and it serves with the newer schema
    create = ch.query(f"SHOW CREATE TABLE {database}.events_statistics").result_rows[0][0]
    assert "toIntervalDay(500)" in create and "`language`" in create
    versions = ch.query(f"SELECT policy_version FROM {database}.schema_migrations").result_rows
    assert versions == [("2099-01-01",)]


def test_policy_versions_order_naturally() -> None:
    ordered = ["1", "1.9", "1.10", "2026-01-31", "2026-11-21", "2026-12-01", "v2", "v10"]
    assert sorted(reversed(ordered), key=version_key) == ordered


def test_every_column_type_has_an_arrow_type() -> None:
    for column in COLUMNS + LEDGER_COLUMNS:
        assert isinstance(arrow_type(column.ch_type), pa.DataType), column


@pytest.mark.parametrize("bad", ["", "1abc", "a-b", "x;DROP", "a" * 65])
def test_identifiers_are_checked(bad: str) -> None:
    with pytest.raises(ValueError):
        check_identifier(bad, "database")
    with pytest.raises(ValueError):
        Schema(Policy.default(), bad)


def test_dsn_resolution() -> None:
    dsn, path = resolve_dsn("chdb://./data-dir")
    assert dsn.startswith("chdb:///") and path and path.endswith("/data-dir")
    assert resolve_dsn("http://ch:8123/") == ("http://ch:8123/", None)
    with pytest.raises(ValueError, match="unsupported"):
        resolve_dsn("mysql://x")


def test_cluster_setting_reaches_the_schema_and_refuses_chdb(tmp_path: Any) -> None:
    from consentmw.pipeline import Collector
    from consentmw.core.settings import Settings, SettingsError

    settings = Settings.build({"secret_key": "0123456789abcdef0123", "clickhouse_dsn": "http://127.0.0.1:9/",
                               "cluster": "main", "spool_dir": str(tmp_path)})
    assert Collector(settings).sink.schema.cluster == "main"
    with pytest.raises(SettingsError, match="server DSN"):
        Settings.build({"secret_key": "0123456789abcdef0123", "cluster": "main"})


def test_an_older_profile_view_is_migrated_in_place(chdb_dsn: str, ch: Any, database: str) -> None:
    """A store made by an older version (profile fed by every page view, no duration_us)
    is brought up to date by migrate(): the materialized view's query and the new column."""
    sink = ClickHouseSink(chdb_dsn, Schema(Policy.default(), database))
    sink.client()
    ch.command(f"ALTER TABLE {database}.visitor_profile_mv MODIFY QUERY SELECT visitor_id, anyLast(site) AS site "
               f"FROM {database}.events_personalisation WHERE event_type = 'pageview' GROUP BY visitor_id")
    ch.command(f"ALTER TABLE {database}.events_statistics DROP COLUMN duration_us")
    sink.migrate()
    query = ch.query(f"SELECT as_select FROM system.tables WHERE database = '{database}' "
                     f"AND name = 'visitor_profile_mv'").result_rows[0][0]
    assert "status" in query and "page_last" in query
    cols = [r[0] for r in ch.query(f"DESCRIBE TABLE {database}.events_statistics").result_rows]
    assert "duration_us" in cols
    sink.close()


def test_tables_written_every_second_merge_with_fewer_rewrites_and_keep_an_operators_value(
        chdb_dsn: str, ch: Any, database: str) -> None:
    from consentmw.store.schema import MERGE_SELECTOR_BASE

    def base_of(table: str) -> str | None:
        create = ch.query(f"SHOW CREATE TABLE {database}.{table}").result_rows[0][0]
        found = re.search(r"merge_selector_base = (\d+)", create)
        return found.group(1) if found else None

    sink = ClickHouseSink(chdb_dsn, Schema(Policy.default(), database))
    sink.client()
    tuned = ("events_statistics", "events_personalisation", "visitor_profile")
    assert {t: base_of(t) for t in tuned} == {t: str(MERGE_SELECTOR_BASE) for t in tuned}
    assert base_of("consent_log") is None  # a few rows a second: left as ClickHouse has it
    # An operator's own value is theirs: the next start's migration leaves it.
    ch.command(f"ALTER TABLE {database}.events_statistics MODIFY SETTING merge_selector_base = 7")
    ClickHouseSink(chdb_dsn, Schema(Policy.default(), database)).client()
    assert base_of("events_statistics") == "7"
    assert base_of("events_personalisation") == str(MERGE_SELECTOR_BASE)


def test_a_user_not_allowed_to_change_table_settings_still_migrates(
        chdb_dsn: str, ch: Any, database: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    client = ClickHouseSink(chdb_dsn, Schema(Policy.default(), database)).client()
    ch.command(f"ALTER TABLE {database}.events_statistics RESET SETTING merge_selector_base")
    real = client.command

    def command(sql: str, *args: Any, **kwargs: Any) -> Any:
        if "MODIFY SETTING" in sql:  # what ClickHouse answers a user without ALTER MODIFY SETTING
            raise DatabaseError("Code: 497. DB::Exception: default: Not enough privileges. (ACCESS_DENIED)")
        return real(sql, *args, **kwargs)

    monkeypatch.setattr(client, "command", command)
    # The next policy version's start, by that user: the migration goes on to its end.
    newer = Policy.from_dict({"version": "v-next", "updated": "2026-12-01",
                              "purposes": [{"id": "necessary", "required": True}, {"id": "statistics"},
                                           {"id": "personalisation"}, {"id": "marketing"}]}, base=Policy.default())
    with caplog.at_level("WARNING", logger="consentmw"):
        ClickHouseSink(chdb_dsn, Schema(newer, database)).migrate(client)
    assert "merge tuning of the event tables skipped" in caplog.text and "ACCESS_DENIED" in caplog.text
    versions = [r[0] for r in ch.query(f"SELECT policy_version FROM {database}.schema_migrations").result_rows]
    assert "v-next" in versions


def test_a_server_that_does_not_know_the_setting_is_not_asked_to_change_it(
        chdb_dsn: str, ch: Any, database: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """ClickHouse before 24.x has no merge_selector_base: no ALTER that would fail, no warning."""
    sink = ClickHouseSink(chdb_dsn, Schema(Policy.default(), database))
    client = sink.client()
    ch.command(f"ALTER TABLE {database}.events_statistics RESET SETTING merge_selector_base")
    real, sent = client.command, []

    def command(sql: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(sql)
        if "system.merge_tree_settings" in sql:
            return 0  # what an older server's settings table answers
        return real(sql, *args, **kwargs)

    monkeypatch.setattr(client, "command", command)
    with caplog.at_level("WARNING", logger="consentmw"):
        sink.migrate()
    assert any("system.merge_tree_settings" in sql for sql in sent)
    assert not [sql for sql in sent if "MODIFY SETTING" in sql]
    assert "merge tuning" not in caplog.text
