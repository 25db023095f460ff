"""What the CLI says: a description for every command, exit codes in --help, --quiet and
--verbose, and failures as exactly one line on stderr (nothing of the driver's before it),
checked on real processes."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from consentmw.cli import build_parser

from tests.faults.helpers import closed_port

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTMW_")}
    return subprocess.run([sys.executable, "-m", "consentmw", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**clean, **env}, timeout=120)


def test_every_command_has_a_description_and_exit_codes() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        assert command.description and len(command.description) > 40, name
        assert "exit status" in (command.epilog or ""), name
    top = cli("--help").stdout
    assert "exit status:" in top and "130  interrupted" in top and "-q, --quiet" in top and "-v, --verbose" in top


def test_quiet_and_verbose(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'data'}"
    loud = cli("migrate", "--dsn", dsn)
    assert loud.returncode == 0 and loud.stdout.startswith("schema up to date")
    quiet = cli("migrate", "--dsn", dsn, "--quiet")   # after the command as well as before it
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    report = tmp_path / "r.html"
    quiet = cli("-q", "report", "--dsn", dsn, "--out", str(report))
    assert quiet.returncode == 0 and quiet.stdout == "" and report.stat().st_size > 1000
    both = cli("-q", "-v", "migrate", "--dsn", dsn)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    port = closed_port()
    verbose = cli("-v", "report", "--dsn", f"http://127.0.0.1:{port}/", "--out", str(report))
    assert verbose.returncode == 1
    lines = verbose.stderr.strip().splitlines()
    assert len(lines) > 1 and any(line.startswith("clickhouse_connect") for line in lines)  # the driver's view
    assert lines[-1].startswith(f"consentmw: cannot connect to ClickHouse at http://127.0.0.1:{port}/")


@pytest.mark.parametrize("case", ["server down", "table missing", "no schema", "bad DSN"])
def test_a_failure_is_one_line_on_stderr(tmp_path: Path, case: str) -> None:
    dsn = f"chdb://{tmp_path / 'data'}"
    if case == "table missing":
        assert cli("migrate", "--dsn", dsn).returncode == 0
        drop = subprocess.run([sys.executable, "-c", "import clickhouse_connect, sys\n"
                               "clickhouse_connect.get_client(dsn=sys.argv[1]).command('DROP TABLE consentmw.consent_log')",
                               dsn], capture_output=True, text=True, timeout=120)
        assert drop.returncode == 0, drop.stderr
        args = ["export", "--dsn", dsn, "--visitor", "abcdEFGH1234"]
    elif case == "server down":
        args = ["report", "--dsn", f"http://user:s3cret@127.0.0.1:{closed_port()}/", "--out", str(tmp_path / "r.html")]
    elif case == "no schema":
        assert cli("migrate", "--dsn", dsn, "--database", "other").returncode == 0
        args = ["report", "--dsn", dsn, "--out", str(tmp_path / "r.html")]
    else:
        args = ["report", "--dsn", "postgres://db/x"]
    result = cli(*args)
    assert result.returncode in (1, 2)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("consentmw: "), result.stderr
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
