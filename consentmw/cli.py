"""`consentmw` command line: demo, migrate, report, export, erase, replay.

Every command fails with a one-line message and a non-zero exit on bad input.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

Command = Callable[[argparse.Namespace], int]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dsn", help="ClickHouse DSN (default: $CONSENTMW_CLICKHOUSE_DSN or chdb://./consentmw-data)")
    p.add_argument("--database", default=None, help="ClickHouse database (default: consentmw)")
    p.add_argument("--policy", default=None, help="policy TOML file (default: $CONSENTMW_POLICY or the built-in catalog)")


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    demo_main(host=args.host, port=args.port)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from .ops import open_sink

    sink = open_sink(args)
    sink.client()
    print(f"schema up to date in database {sink.database} ({sink.dsn})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consentmw", description="Consent manager and consent-gated analytics for ASGI apps.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("demo", help="run the demo site on the embedded chDB store")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("migrate", help="create or upgrade the ClickHouse schema")
    _add_store_args(p)
    p.set_defaults(func=cmd_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"consentmw: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback, for known failure kinds
        from .policy import PolicyError
        from .settings import SettingsError
        from .store.sink import SinkError

        if isinstance(exc, (PolicyError, SettingsError, SinkError, ValueError, OSError)):
            print(f"consentmw: {exc}", file=sys.stderr)
            return 1
        raise
