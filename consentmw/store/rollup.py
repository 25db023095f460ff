"""DDL of the dashboard's daily roll-up: per closed day, site, visit source, panel and key,
the counts the dashboard shows (page views, visitors, visits, bounces, clicks, events), and which state of
the statistics table each day was computed from.

Only counts: no visitor code, consent id or token is kept here; its keys (paths, campaigns,
link targets, event names) are dropped, day by day, when an erasure deletes statistics rows
(`forget_statements`, run by the rights service), and it expires with the statistics (same retention as
the `statistics` purpose, as a TTL). It is a cache the dashboard fills and checks itself
(`consentmw.dashboard.rollup`): a day whose row count or blocked rows changed since it was
computed is recomputed before it is used, so late rows, expired rows and blocking all show.
Not created on a cluster (the dashboard reads the statistics table there).
"""

from __future__ import annotations

from consentmw.store.layout import Layout

DAILY = "dashboard_daily"
DAYS = "dashboard_days"


def statements(layout: Layout) -> list[str]:
    """Idempotent DDL for both tables (nothing without a collecting `statistics` purpose)."""
    policy = layout.policy
    if layout.cluster or "statistics" not in policy or not policy["statistics"].collects:
        return []
    db = layout.database
    ttl = f"day + toIntervalDay({int(policy['statistics'].retention_days) + 1})"
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.{DAILY} (\n"
        f"  day Date, version UInt64, site String, origin String, panel LowCardinality(String),\n"
        f"  key String, a UInt64, b UInt64, c UInt64\n) ENGINE = MergeTree\n"
        f"ORDER BY (day, version, panel, site, origin, key)\nTTL {ttl}",
        f"ALTER TABLE {db}.{DAILY} MODIFY TTL {ttl}",
        f"CREATE TABLE IF NOT EXISTS {db}.{DAYS} (\n"
        f"  day Date, version UInt64, rows UInt64, blocked UInt64\n"
        f") ENGINE = ReplacingMergeTree(version)\nORDER BY day\nTTL {ttl}",
        f"ALTER TABLE {db}.{DAYS} MODIFY TTL {ttl}",
    ]


#: the statistics table the daily counts are computed from
SOURCE = "events_statistics"


def forget_statements(database: str, days: list[str]) -> list[str]:
    """Drop every version of these days' counts (ISO dates) and their records, so the
    dashboard computes them again from what is left: run after rows of the statistics
    table were erased (a purpose that keeps the visitor id makes them erasable), because
    older versions keep the keys (a page only that visitor saw) until their TTL."""
    if not days:
        return []
    listed = ", ".join(f"'{d}'" for d in days)
    return [f"DELETE FROM {database}.{table} WHERE day IN ({listed})" for table in (DAILY, DAYS)]
