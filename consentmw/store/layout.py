"""Where tables live: database name, cluster placement, engines.

Shared by the table DDL (`schema`) and the analyst views (`views`), so neither has to
import the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from consentmw.core.identifiers import check_identifier
from consentmw.core.policy import Policy

__all__ = ["Layout", "check_identifier"]


@dataclass(frozen=True)
class Layout:
    """A policy placed in one database, optionally spread over a cluster."""

    policy: Policy
    database: str = "consentmw"
    cluster: str | None = None

    def __post_init__(self) -> None:
        check_identifier(self.database, "database")
        if self.cluster:
            check_identifier(self.cluster, "cluster")

    # -- helpers -------------------------------------------------------------
    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER {self.cluster}" if self.cluster else ""

    def local(self, table: str) -> str:
        """The table rows physically live in (the `_local` shard table on a cluster)."""
        return f"{self.database}.{table}_local" if self.cluster else f"{self.database}.{table}"

    def engine(self, table: str, kind: str = "MergeTree", *args: str) -> str:
        """A MergeTree-family engine; replicated through Keeper when running on a cluster."""
        if self.cluster:
            path = f"'/clickhouse/tables/{{shard}}/{self.database}/{table}', '{{replica}}'"
            return f"Replicated{kind}({', '.join((path, *args))})"
        return f"{kind}({', '.join(args)})"

    def distributed(self, table: str) -> list[str]:
        """The Distributed table in front of a `_local` table on a cluster; nothing otherwise."""
        if not self.cluster:
            return []
        return [f"CREATE TABLE IF NOT EXISTS {self.database}.{table}{self.on_cluster} "
                f"AS {self.local(table)} ENGINE = Distributed({self.cluster}, {self.database}, "
                f"{table}_local, rand())"]
