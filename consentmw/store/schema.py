"""ClickHouse DDL: per-purpose event tables, the consent ledger, erasure receipts, views.

Migration is idempotent and derived from the policy: a purpose gets its table with the
columns of its categories and its retention as TTL; a policy that adds a category adds
columns; a changed retention changes the TTL. Columns are never dropped automatically
(old rows keep what they were collected with until their TTL removes them).
With `cluster` set, every statement runs `ON CLUSTER` with Replicated engines and a
Distributed table in front, for several ClickHouse servers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from consentmw.core.fields import LEDGER_COLUMNS, Column, columns_for, table_for
from consentmw.store.layout import Layout
from consentmw.store.rollup import statements as rollup_statements  # the dashboard's daily counts
from consentmw.store.views import PROFILE_TABLE, profile_purpose
from consentmw.store.views import statements as view_statements  # analyst views, visitor profile

SCHEMA_VERSION = 1
_TTL_DAYS = re.compile(r"\bTTL\s+toDateTime\(ts\)\s*\+\s*toIntervalDay\((\d+)\)")
_RUNS = re.compile(r"(\d+)|(\D+)")


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Order policy versions naturally: "2026-11-21" < "2026-12-01", "1.9" < "1.10", "v2" < "v10"."""
    return tuple((0, int(digits), "") if digits else (1, 0, text) for digits, text in _RUNS.findall(version))


def current_retention(client: Any, database: str, table: str) -> int | None:
    """The TTL in days an existing event table has now (None: no such table)."""
    rows = client.query("SELECT create_table_query FROM system.tables WHERE database = %(d)s AND name = %(t)s",
                        parameters={"d": database, "t": table}).result_rows
    found = _TTL_DAYS.search(rows[0][0]) if rows else None
    return int(found.group(1)) if found else None
LEDGER_RETENTION_DAYS = 1826   # proof of consent is kept five years
REVOCATION_RETENTION_DAYS = 400  # the longest cookie lifetime browsers allow (cookie_max_age is capped to it)
DEDUP_WINDOW = 10_000
SALT_TABLE = "daily_salts"   # the visitor-hash salt of each day (store/salts.py)
#: How many parts of about one size a merge waits for (ClickHouse's `merge_selector_base`,
#: default 5). Every merge rewrites its rows, and each insert is a part, so the base sets how
#: often a row is rewritten on its way into a large part. On the tables written every second
#: those merges are most of the store's CPU: at 10 a statistics row costs ~7.7 µs in all
#: instead of ~11-13 (`benchmarks/bench_store.py`, steady state), for a few more active parts.
MERGE_SELECTOR_BASE = 10


@dataclass(frozen=True)
class Schema(Layout):
    """Every DDL statement the policy implies: event tables, ledger, views."""

    @staticmethod
    def _column_ddl(columns: tuple[Column, ...]) -> str:
        return ",\n  ".join(f"`{c.name}` {c.ch_type}" for c in columns)

    # -- statements ----------------------------------------------------------
    def statements(self) -> list[str]:
        """Every DDL statement, in order; each is safe to run again."""
        out = [f"CREATE DATABASE IF NOT EXISTS {self.database}{self.on_cluster}",
               f"CREATE TABLE IF NOT EXISTS {self.database}.schema_migrations{self.on_cluster} (\n"
               f"  version UInt32, policy_version String, applied_at DateTime DEFAULT now()\n"
               f") ENGINE = {self.engine('schema_migrations')} ORDER BY version"]
        for purpose in self.policy.collecting:
            out.extend(self.event_table(table_for(purpose.id), columns_for(purpose), purpose.retention_days,
                                        "visitor_id" in purpose.categories))
        out.extend(self.ledger_tables())
        # One salt table for the whole cluster (no {shard} in its Keeper path): every app
        # server must see the same salt of the day.
        salt_engine = (f"ReplicatedMergeTree('/clickhouse/tables/all/{self.database}/{SALT_TABLE}', '{{replica}}')"
                       if self.cluster else "MergeTree")
        out.append(f"CREATE TABLE IF NOT EXISTS {self.database}.{SALT_TABLE}{self.on_cluster} (\n"
                   f"  day Date, salt String, created DateTime64(6, 'UTC') DEFAULT now64(6), writer String\n)"
                   f" ENGINE = {salt_engine}\nORDER BY day\nTTL day + toIntervalDay(2)\n"
                   f"SETTINGS non_replicated_deduplication_window = 1000")
        out.extend(view_statements(self))
        out.extend(rollup_statements(self))
        return out

    def merge_tuned_tables(self) -> list[str]:
        """The tables every batch writes (one part per insert each): the purposes' event tables
        and the visitor profile their view feeds; where they physically live."""
        tables = [self.local(table_for(p.id)) for p in self.policy.collecting]
        if profile_purpose(self.policy) is not None:
            tables.append(self.local(PROFILE_TABLE))
        return tables

    def event_table(self, table: str, columns: tuple[Column, ...], retention_days: int,
                    has_visitor: bool) -> list[str]:
        indexes = ["INDEX idx_consent consent_id TYPE bloom_filter GRANULARITY 4"]
        if has_visitor:
            indexes.append("INDEX idx_visitor visitor_id TYPE bloom_filter GRANULARITY 4")
        body = self._column_ddl(columns) + ",\n  " + ",\n  ".join(indexes)
        ttl = f"toDateTime(ts) + toIntervalDay({int(retention_days)})"
        stmts = [
            f"CREATE TABLE IF NOT EXISTS {self.local(table)}{self.on_cluster} (\n  {body}\n)"
            f" ENGINE = {self.engine(table)}\nPARTITION BY toYYYYMM(ts)\n"
            f"ORDER BY (site, toDate(ts), event_type, ts)\nTTL {ttl}\n"
            f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}",
        ]
        # Columns added to the policy later, and a retention that changed.
        for column in columns:
            stmts.append(f"ALTER TABLE {self.local(table)}{self.on_cluster} "
                         f"ADD COLUMN IF NOT EXISTS `{column.name}` {column.ch_type}")
        stmts.append(f"ALTER TABLE {self.local(table)}{self.on_cluster} MODIFY TTL {ttl}")
        stmts.extend(self.distributed(table))
        return stmts

    def ledger_tables(self) -> list[str]:
        ledger = (
            f"CREATE TABLE IF NOT EXISTS {self.local('consent_log')}{self.on_cluster} (\n"
            f"  {self._column_ddl(LEDGER_COLUMNS)},\n"
            f"  INDEX idx_visitor visitor_id TYPE bloom_filter GRANULARITY 4\n)"
            f" ENGINE = {self.engine('consent_log')}\nPARTITION BY toYYYYMM(ts)\n"
            f"ORDER BY (consent_id, ts)\n"
            f"TTL toDateTime(ts) + toIntervalDay({LEDGER_RETENTION_DAYS})\n"
            f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}")
        erasure = (
            f"CREATE TABLE IF NOT EXISTS {self.local('erasure_log')}{self.on_cluster} (\n"
            f"  receipt_id UUID, ts DateTime64(3, 'UTC'), subject_hash String,\n"
            f"  requested_by LowCardinality(String), tables Map(String, UInt64),\n"
            f"  verified Bool, note String\n)"
            f" ENGINE = {self.engine('erasure_log')}\nORDER BY ts")
        blocked = (
            f"CREATE TABLE IF NOT EXISTS {self.local('blocked_visitors')}{self.on_cluster} (\n"
            f"  subject String, blocked UInt8, ts DateTime64(3, 'UTC')\n)"
            f" ENGINE = {self.engine('blocked_visitors', 'ReplacingMergeTree', 'ts')}\n"
            f"ORDER BY subject")
        # Consents changed, withdrawn or erased: cookies of `consent_id` given before `before`
        # are refused by every process (see consentmw.rights.revocation). `ts` is the
        # server's clock, so processes read what is new since their last look.
        revoked = (
            f"CREATE TABLE IF NOT EXISTS {self.local('revoked_consents')}{self.on_cluster} (\n"
            f"  consent_id String, before DateTime64(3, 'UTC'), erase UInt8,\n"
            f"  ts DateTime64(3, 'UTC') DEFAULT now64(3)\n)"
            f" ENGINE = {self.engine('revoked_consents')}\nORDER BY (ts, consent_id)\n"
            f"TTL toDateTime(before) + toIntervalDay({REVOCATION_RETENTION_DAYS})")
        out = [ledger, erasure, blocked, revoked]
        for table in ("consent_log", "erasure_log", "blocked_visitors", "revoked_consents"):
            out.extend(self.distributed(table))
        return out
