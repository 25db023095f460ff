"""`consentmw` command line: demo, migrate, report, export, erase, replay, prove, scan.

Every command fails with a one-line message and a non-zero exit on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import IO, Any, Callable, Sequence

from consentmw.core.redact import exception_text, redact, redact_dsn

Command = Callable[[argparse.Namespace], int]


#: set by --quiet: no progress bars, no summary lines (data and errors still go out)
_QUIET = False

EXIT_CODES = """exit status:
  0    done
  1    the work failed or found nothing: store unreachable or refusing, no schema (read
       commands), no such visitor, a row whose consent does not cover it (prove), a replay
       that stopped or quarantined, a migration that would shorten a retention, scan
       findings with --fail-on
  2    bad input or usage: unknown option, invalid value, missing secret key, migrate with a
       policy older than the one that last migrated the schema
  130  interrupted (Ctrl-C)"""


def info(message: str, *, file: IO[str] | None = None) -> None:
    """A summary line for people (suppressed by --quiet; results a command exists for are printed directly)."""
    if not _QUIET:
        print(message, file=file or sys.stdout)


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _add_output_args(p: argparse.ArgumentParser, default: Any) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="no progress bars or summary lines (results and errors still shown)")
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="log what consentmw and the ClickHouse driver do, to stderr")


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dsn", help="ClickHouse DSN (default: $CONSENTMW_CLICKHOUSE_DSN or chdb://./consentmw-data)")
    p.add_argument("--database", default=None, help="ClickHouse database (default: consentmw)")
    p.add_argument("--policy", default=None, help="policy TOML file (default: $CONSENTMW_POLICY or the built-in catalog)")


def cmd_demo(args: argparse.Namespace) -> int:
    from consentmw.demo import main as demo_main

    demo_main(host=args.host, port=args.port, data_dir=args.data_dir)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from consentmw.ops import open_sink
    from consentmw.store.sink import NewerSchema

    sink = open_sink(args, migrate=True)
    try:
        sink.apply_migration()
    except NewerSchema as exc:
        raise CLIError(f"{exc}; run migrate with the newest policy") from None
    info(f"schema up to date in database {sink.database} ({redact_dsn(sink.dsn)})")
    return 0


class Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal, or forced)."""

    def __init__(self, label: str, total: int | None = None, unit: str = "rows", *,
                 stream: IO[str] | None = None, enabled: bool | None = None) -> None:
        self.label, self.total, self.unit, self.done = label, total, unit, 0
        self.stream = stream or sys.stderr
        self.enabled = (self.stream.isatty() and not _QUIET) if enabled is None else enabled
        self._shown = 0.0
        self._start = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._shown > 0.1 or (self.total and self.done >= self.total)):
            self._shown = now
            self._draw()

    def _draw(self, end: str = "") -> None:
        rate = self.done / max(time.monotonic() - self._start, 1e-9)
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            line = f"\r{self.label} [{bar:<30}] {frac * 100:5.1f}% {self.done}/{self.total} {self.unit} ({rate:,.0f}/s)"
        else:
            line = f"\r{self.label} {self.done} {self.unit} ({rate:,.0f}/s)"
        self.stream.write(line + end)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw("\n")


def _visitor_id(value: str) -> str:
    from consentmw.rights import valid_id

    if not valid_id(value):
        raise CLIError(f"--visitor {value[:70]!r} is not a consent id or visitor id (4-64 characters: A-Z a-z 0-9 _ -)")
    return value


def _rights(args: argparse.Namespace, secret: str = "") -> Any:
    from consentmw.ops import open_sink
    from consentmw.rights import Rights

    sink = open_sink(args)
    sink.client()
    return Rights(sink, sink.schema.policy, secret)


def cmd_report(args: argparse.Namespace) -> int:
    from consentmw.ops import load_policy, open_sink
    from consentmw.dashboard.queries import NO_STATISTICS, PANELS, has_statistics
    from consentmw.dashboard.report import build, filters_for

    if not 1 <= args.days <= 3660:
        raise CLIError("--days must be between 1 and 3660")
    try:
        filters = filters_for(args.days, site=args.site)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if not has_statistics(load_policy(getattr(args, "policy", None))):
        raise CLIError(NO_STATISTICS)
    sink = open_sink(args)
    sink.client()
    progress = Progress("report", total=PANELS, unit="queries")

    def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        rows = sink.query(sql, parameters=params).result_rows
        progress.update()
        return rows

    page = build(query, sink.database, filters, title=args.title)
    progress.close()
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(page)
    info(f"wrote {args.out}: the dashboard for {filters.label()} ({args.days} days)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    vid = _visitor_id(args.visitor)
    rights = _rights(args)
    subject = rights.resolve(vid)
    if subject.empty:
        print(f"consentmw: no data stored for {vid}", file=sys.stderr)
        return 1
    total = 0
    for table, cols in rights.tables().items():
        pred = rights._predicate(subject, cols)
        if pred:
            total += int(rights.sink.query(f"SELECT count() FROM {rights.db}.{table} WHERE {pred}").result_rows[0][0])
    progress = Progress("export", total=total)
    data = rights.export(subject, progress=progress.update)
    progress.close()
    text = json.dumps(data, ensure_ascii=False, indent=2, default=str)
    if args.out in (None, "-"):
        sys.stdout.write(text + "\n")
    else:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        rows = sum(len(v) for v in data["tables"].values()) + len(data["consent_history"])
        info(f"wrote {args.out}: {rows} rows of {vid} ({', '.join(sorted(data['tables']))}, consent_log)",
              file=sys.stderr)
    return 0


def cmd_prove(args: argparse.Namespace) -> int:
    from consentmw.ops import open_sink
    from consentmw.rights.proof import prove

    secrets = [k.strip() for k in (os.environ.get("CONSENTMW_SECRET_KEY") or "").split(",") if k.strip()]
    if not secrets:
        raise CLIError("set CONSENTMW_SECRET_KEY (all current and retired keys, comma-separated): "
                       "statistics rows are proven with it")
    try:
        proof = prove(open_sink(args), secrets, args.table, args.event)
    except LookupError as exc:
        raise CLIError(str(exc)) from None
    print(json.dumps(proof.as_dict(), ensure_ascii=False, indent=2, default=str))
    return 0 if proof.granted else 1


def cmd_erase(args: argparse.Namespace) -> int:
    vid = _visitor_id(args.visitor)
    secret = (os.environ.get("CONSENTMW_SECRET_KEY") or "").split(",")[0].strip()
    if not secret:
        raise CLIError("erase needs the site's secret key to salt the receipt: set CONSENTMW_SECRET_KEY")
    rights = _rights(args, secret)
    subject = rights.resolve(vid)
    if subject.empty:
        print(f"consentmw: no data stored for {vid}", file=sys.stderr)
        return 1
    if not args.yes:
        if not sys.stdin.isatty():
            raise CLIError("add --yes to erase without a confirmation prompt")
        answer = input(f"erase every row of {vid} ({len(subject.consent_ids)} consent id(s), "
                       f"{len(subject.visitor_ids)} visitor id(s))? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing erased", file=sys.stderr)
            return 1
    from consentmw.rights import RightsError

    try:
        receipt = rights.erase(subject, requested_by="operator:cli")
    except RightsError as exc:
        print(f"consentmw: {redact(str(exc))}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(receipt, ensure_ascii=False, indent=2, default=str))
    else:
        tables = ", ".join(f"{t}: {n}" for t, n in sorted(receipt["tables"].items()))
        info(f"erased {vid}: {receipt['deleted']} rows deleted, {receipt['scrubbed_ledger_rows']} ledger rows "
              f"scrubbed ({tables}); verified; receipt {receipt['receipt_id']} in erasure_log")
        info(f"not erasable (no stable identifier): {', '.join(receipt['out_of_scope']) or 'none'}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay the spool; say exactly what was stored, what was quarantined (and where), what is left."""
    from consentmw.ops import open_sink
    from consentmw.store.sink import BatchRefused, SinkError
    from consentmw.store.spool import Spool, encode_record
    from consentmw.store.writer import decode_ipc, insert_isolating

    directory = args.spool or os.environ.get("CONSENTMW_SPOOL_DIR") or "./consentmw-spool"
    if not os.path.isdir(directory):
        raise CLIError(f"no spool directory at {directory}")
    spool = Spool(directory)
    total = spool.bytes()
    if not total:
        info(f"spool {directory} is empty: nothing to replay")
        return 0
    sink = open_sink(args)
    sink.client()
    before = set(spool.quarantined())
    progress = Progress("replay", total=total, unit="bytes")
    rows = records = refused = undecodable = 0
    stopped = ""
    try:
        for _seg, record, ack in spool.replay():
            size = len(record.body) + len(record.table) + len(record.token) + 64
            try:
                data = decode_ipc(record.body)
            except Exception:  # noqa: BLE001 - undecodable despite a valid checksum: kept, never deleted
                spool.keep_bad("undecodable", encode_record(record))
                undecodable += 1
                ack()
                progress.update(size)
                continue
            try:
                sink.insert(record.table, data, record.token)  # dedup token: a retried batch is stored once
                stored = data.num_rows
            except BatchRefused:  # values in it refused: store the rest, quarantine those rows
                stored, bad, _path = insert_isolating(sink, spool, record, data, strict=True)
                refused += bad
            except SinkError:
                sink.command("SELECT 1")  # the store is down: stop here, the record stays
                time.sleep(1.0)  # it answers: one more try before blaming the rows
                try:
                    sink.insert(record.table, data, record.token)
                    stored = data.num_rows
                except SinkError:
                    stored, bad, _path = insert_isolating(sink, spool, record, data)
                    refused += bad
            ack()
            rows += stored
            records += 1
            progress.update(size)
    except Exception as exc:  # noqa: BLE001 - the store went away: report, keep the rest
        stopped = redact(str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
    progress.close()
    left = spool.bytes()
    kept = sorted(set(spool.quarantined()) - before)
    corrupt = spool.stats.corrupt
    info(f"replayed {rows} rows in {records} batches from {directory}"
          + (f"; {left} bytes left in the spool" + ("" if stopped else " (segments held by a running process)")
             if left else ""))
    if kept:
        parts = [f"{n} {what}" for n, what in ((corrupt, "corrupt record(s)"), (undecodable, "undecodable record(s)"),
                                              (refused, "row(s) ClickHouse refused")) if n]
        print(f"consentmw: quarantined, not stored: {', '.join(parts)}; kept for inspection in "
              f"{', '.join(str(p) for p in kept)}", file=sys.stderr)
    if stopped:
        print(f"consentmw: replay stopped after {rows} rows: {stopped}", file=sys.stderr)
    return 1 if stopped or kept else 0


def cmd_scan(args: argparse.Namespace) -> int:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        raise CLIError("scan needs Playwright: pip install 'consentmw[scan]' (Chromium: apt-get install chromium)") from None
    from consentmw.core.policy import Policy
    from consentmw.scan import report
    from consentmw.scan.crawl import URLError
    from consentmw.scan.runner import ScanConfig, ScanError, run

    if not 1 <= args.max_pages <= 100_000:
        raise CLIError("--max-pages must be between 1 and 100000")
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise CLIError("--max-seconds must be positive")
    if not 1 <= args.concurrency <= 32:
        raise CLIError("--concurrency must be between 1 and 32")
    policy_file = args.policy or os.environ.get("CONSENTMW_POLICY")
    config = ScanConfig(url=args.url, max_pages=args.max_pages, max_seconds=args.max_seconds,
                        include=tuple(args.include), exclude=tuple(args.exclude), browser=args.browser,
                        concurrency=args.concurrency,
                        policy=Policy.from_file(policy_file) if policy_file else Policy.default())
    config.visit.ignore_https_errors = args.ignore_https_errors
    progress = Progress("scan", total=3, unit="page visits")

    def step(done: int, planned: int) -> None:
        progress.total = max(planned, done)
        progress.update(done - progress.done)

    try:
        result = run(config, step)
    except (ScanError, URLError) as exc:
        raise CLIError(str(exc)) from None
    progress.close()
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(report.to_html(result))
    if args.json == "-":
        sys.stdout.write(report.to_json(result) + "\n")
        print(report.summary(result), file=sys.stderr)
    else:
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(report.to_json(result) + "\n")
        print(report.summary(result))
    fail = {"never": (), "violation": ("violation",), "warning": ("violation", "warning")}[args.fail_on]
    return 1 if any(result.count(s) for s in fail) else 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (the full usage is one `--help` away)."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from consentmw import __version__

    parser = _Parser(prog="consentmw", description="Consent manager and consent-gated analytics for ASGI apps.",
                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"consentmw {__version__}")
    _add_output_args(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    p = sub.add_parser("demo", help="run the demo site on the embedded chDB store",
                       description="Serves the demo site (home, articles, an SPA page, the banner, a consent-gated "
                                   "script, a personalised block) with uvicorn, storing to an embedded chDB "
                                   "directory. Needs the consentmw[demo] and consentmw[embedded] extras.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", default=None, help="chDB data directory (default: ./consentmw-data)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("prove", help="show the consent record that authorised one stored row",
                       description="Finds the row by event_id, then the ledger choice behind it (for statistics rows, "
                                   "through the day-scoped proof token, recomputed with every key in "
                                   "CONSENTMW_SECRET_KEY) and says whether it granted that purpose under that "
                                   "policy version. Exit 1 when it did not.")
    _add_store_args(p)
    p.add_argument("--table", required=True, help="events_<purpose>, e.g. events_statistics")
    p.add_argument("--event", required=True, help="the row's event_id")
    p.set_defaults(func=cmd_prove)
    p = sub.add_parser("migrate", help="create or upgrade the ClickHouse schema",
                       description="Creates the database, the per-purpose event tables, the ledger and the views the "
                                   "policy implies, or upgrades them (new columns, new TTLs). Forward only: a policy "
                                   "older than the one that last migrated is refused, and so is a shorter retention "
                                   "unless --allow-shorter-retention. The only command that changes tables.")
    _add_store_args(p)
    p.add_argument("--allow-shorter-retention", action="store_true",
                   help="apply a policy that shortens a purpose's retention (rows older than the new one are deleted)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("report", help="write the dashboard as one self-contained HTML file",
                       description="The dashboard (KPIs against the previous period, traffic chart, pages, sources, "
                                   "countries, devices, links, events, web vitals) as one HTML file with inline SVG "
                                   "(no scripts, no external resources).")
    _add_store_args(p)
    p.add_argument("--days", type=int, default=30, help="period ending today (default: 30)")
    p.add_argument("--out", default="report.html", help="output file (default: report.html)")
    p.add_argument("--site", default=None, help="only this host name (default: every site)")
    p.add_argument("--title", default="Site report", help="report title")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="export every stored row of one visitor (access request)",
                       description="Prints (or writes) the visitor's rows in every table, their consent history "
                                   "and a per-purpose summary as JSON. Statistics rows carry no stable id and "
                                   "cannot be attributed to a visitor.")
    _add_store_args(p)
    p.add_argument("--visitor", required=True, metavar="ID", help="a consent id or a visitor id")
    p.add_argument("--out", default=None, help="output file (default: standard output)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("erase", help="erase one visitor everywhere, verify, write a receipt",
                       description="Deletes the visitor's rows in every per-purpose and aggregate table, strips "
                                   "IP, user agent and visitor id from their consent records, verifies nothing is "
                                   "left and writes a receipt (no personal data) to erasure_log. Needs "
                                   "CONSENTMW_SECRET_KEY to salt the receipt.")
    _add_store_args(p)
    p.add_argument("--visitor", required=True, metavar="ID", help="a consent id or a visitor id")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print the receipt as JSON")
    p.set_defaults(func=cmd_erase)

    p = sub.add_parser("replay", help="move spooled batches into ClickHouse",
                       description="Replays the durable spool (batches written while ClickHouse was unreachable) "
                                   "in order; each batch keeps its dedup token, so a batch already stored is not "
                                   "stored twice. Segments held by a running process are left to it.")
    _add_store_args(p)
    p.add_argument("--spool", default=None, help="spool directory (default: $CONSENTMW_SPOOL_DIR or ./consentmw-spool)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("scan", help="check a whole site in Chromium: before a choice, after Reject all, after Accept all",
                       description="Crawls same-origin links breadth first and visits every page in three fresh "
                                   "Chromium contexts (no choice yet; after Reject all; after Accept all, clicked "
                                   "in the banner). Reports cookies, storage, requests to other hosts and consent-"
                                   "gated scripts; what goes beyond the policy's strictly necessary purposes before "
                                   "a choice or after refusal is a violation. Needs the consentmw[scan] extra.")
    p.add_argument("url", metavar="URL", help="the page to start from (http or https)")
    p.add_argument("--max-pages", type=int, default=50, help="pages to visit at most (default: 50)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop starting new pages after this long")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only follow links whose path matches (e.g. '/blog/*'; repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="never follow links whose path matches (e.g. '/admin*'; repeatable)")
    p.add_argument("--browser", default=None, metavar="PATH", help="Chromium executable (default: Debian's chromium)")
    p.add_argument("--policy", default=None, help="policy TOML declaring what each purpose uses "
                                                  "(default: $CONSENTMW_POLICY or the built-in catalog)")
    p.add_argument("--concurrency", type=int, default=4, help="pages visited at once (default: 4)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the full result as JSON ('-': standard output)")
    p.add_argument("--html", default=None, metavar="FILE", help="write a self-contained HTML report")
    p.add_argument("--fail-on", choices=("violation", "warning", "never"), default="never",
                   help="exit 1 when the scan finds a violation (or a warning too); default: never")
    p.add_argument("--ignore-https-errors", action="store_true", help="accept self-signed certificates")
    p.set_defaults(func=cmd_scan)
    for name, command in sub.choices.items():
        _add_output_args(command, default=argparse.SUPPRESS)  # also accepted after the command
        command.epilog = ("exit status: 0 done; 1 failed or found nothing; 2 bad input or usage; "
                          "130 interrupted (details: consentmw --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    global _QUIET

    parser = build_parser()
    args = parser.parse_args(argv)
    _QUIET = bool(args.quiet)
    driver_log = logging.getLogger("clickhouse_connect")
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s: %(levelname)s: %(message)s")
        driver_log.setLevel(logging.INFO)
    elif not driver_log.handlers:
        # The driver (and chDB through it) logs its own copy of every error, sometimes several
        # lines; we print one line instead.
        driver_log.addHandler(logging.NullHandler())
        driver_log.propagate = False
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"consentmw: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback, for known failure kinds
        from consentmw.core.policy import PolicyError
        from consentmw.core.settings import SettingsError
        from consentmw.store.sink import SinkError

        driver = type(exc).__module__.startswith("clickhouse_connect")  # the store refused or is away
        if driver or isinstance(exc, (PolicyError, SettingsError, SinkError, ValueError, OSError, ImportError)):
            text = str(exc).strip() or type(exc).__name__
            print(f"consentmw: {redact(text.splitlines()[0][:300] if driver else text)}", file=sys.stderr)
            return 1
        # A bug: the traceback helps, but it may carry what the failing call was given.
        print(f"consentmw: unexpected error\n{exception_text(exc)}", file=sys.stderr, end="")
        return 1
