"""Operator helpers shared by the CLI commands: open the store from flags and environment."""

from __future__ import annotations

import argparse
import os

from consentmw.core.policy import Policy
from consentmw.core.settings import DEFAULT_DSN
from consentmw.store.dsn import choose_database, parse_dsn
from consentmw.store.schema import Schema
from consentmw.store.sink import ClickHouseSink


def load_policy(path: str | None) -> Policy:
    path = path or os.environ.get("CONSENTMW_POLICY")
    return Policy.from_file(path) if path else Policy.default()


def open_sink(args: argparse.Namespace, *, migrate: bool = False) -> ClickHouseSink:
    """The store named by the flags or the environment. Read-only for the schema unless
    `migrate` (only `consentmw migrate` changes tables; the other commands read or delete rows)."""
    dsn = getattr(args, "dsn", None) or os.environ.get("CONSENTMW_CLICKHOUSE_DSN") or DEFAULT_DSN
    database = getattr(args, "database", None) or os.environ.get("CONSENTMW_DATABASE") or "consentmw"
    cluster = os.environ.get("CONSENTMW_CLICKHOUSE_CLUSTER") or None
    database = choose_database(parse_dsn(dsn), database)
    return ClickHouseSink(dsn, Schema(load_policy(getattr(args, "policy", None)), database, cluster),
                          migrate=migrate, allow_shorter_retention=bool(getattr(args, "allow_shorter_retention", False)))
