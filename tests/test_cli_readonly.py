"""Read-only means read-only: report, export, prove, replay and erase never create or migrate
the schema (a different --policy, or none, must not touch the TTLs of a live store), a
missing store is an error, and only `consentmw migrate` changes tables, forward only, with
an explicit flag to shorten a retention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consentmw.cli import main
from consentmw.core.policy import Policy
from consentmw.store.schema import Schema
from consentmw.store.sink import ClickHouseSink


def short_policy_file(tmp_path: Path, days: int = 30, version: str = "2026-11-22") -> Path:
    """The default catalog with statistics kept `days` days."""
    path = tmp_path / f"consent-{days}.toml"
    path.write_text(f'version = "{version}"\nupdated = "2026-11-22"\n'
                    '[[purposes]]\nid = "necessary"\nrequired = true\n'
                    f'[[purposes]]\nid = "statistics"\nretention_days = {days}\n'
                    '[[purposes]]\nid = "personalisation"\n[[purposes]]\nid = "marketing"\n')
    return path


def ttl_days(ch: Any, database: str, table: str = "events_statistics") -> int:
    create = ch.query(f"SHOW CREATE TABLE {database}.{table}").result_rows[0][0]
    return int(create.split("toIntervalDay(")[1].split(")")[0])


def tables(ch: Any, database: str) -> list[str]:
    return [r[0] for r in ch.query(f"SELECT name FROM system.tables WHERE database = '{database}'").result_rows]


def test_read_commands_never_migrate(ch: Any, chdb_dsn: str, database: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    policy = short_policy_file(tmp_path)
    store = ["--dsn", chdb_dsn, "--database", database]
    assert main(["migrate", *store, "--policy", str(policy)]) == 0
    assert ttl_days(ch, database) == 30
    before = ch.query(f"SELECT count() FROM {database}.schema_migrations").result_rows[0][0]
    monkeypatch.setenv("CONSENTMW_SECRET_KEY", "cli-readonly-secret-0123456789")
    spool = tmp_path / "spool"
    spool.mkdir()
    # Without --policy these commands load the built-in catalog (statistics: 395 days).
    main(["report", *store, "--days", "7", "--out", str(tmp_path / "r.html")])
    main(["export", *store, "--visitor", "nobodyHere123"])
    main(["erase", *store, "--visitor", "nobodyHere123", "--yes"])
    main(["prove", *store, "--table", "events_statistics", "--event", "00000000-0000-0000-0000-000000000000"])
    main(["replay", *store, "--spool", str(spool)])
    assert ttl_days(ch, database) == 30  # was rewritten to 395 by each of them
    assert ch.query(f"SELECT count() FROM {database}.schema_migrations").result_rows[0][0] == before
    capsys.readouterr()


def test_report_against_a_missing_store_is_an_error(ch: Any, chdb_dsn: str, database: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CONSENTMW_SECRET_KEY", "cli-readonly-secret-0123456789")
    out = tmp_path / "r.html"
    assert main(["report", "--dsn", chdb_dsn, "--database", database, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"consentmw: no consentmw schema in database {database}") and err.count("\n") == 1
    assert not out.exists()
    assert database not in [r[0] for r in ch.query("SHOW DATABASES").result_rows]  # nothing was created
    for command in (["export", "--visitor", "nobodyHere123"], ["erase", "--visitor", "nobodyHere123", "--yes"]):
        assert main([command[0], "--dsn", chdb_dsn, "--database", database, *command[1:]]) == 1
    assert database not in [r[0] for r in ch.query("SHOW DATABASES").result_rows]


def test_a_chdb_directory_that_does_not_exist_is_not_created(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "typo-data"
    assert main(["report", "--dsn", f"chdb://{missing}", "--out", str(tmp_path / "r.html")]) == 1
    assert capsys.readouterr().err.startswith(f"consentmw: no chDB store at {missing}")
    assert not missing.exists()


def test_migrate_shortens_a_retention_only_when_told(ch: Any, chdb_dsn: str, database: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    store = ["--dsn", chdb_dsn, "--database", database]
    assert main(["migrate", *store]) == 0
    assert ttl_days(ch, database) == 395
    shorter = short_policy_file(tmp_path, 30)
    assert main(["migrate", *store, "--policy", str(shorter)]) == 1
    err = capsys.readouterr().err
    assert "shortens the retention of statistics from 395 to 30 days" in err and "--allow-shorter-retention" in err
    assert ttl_days(ch, database) == 395
    assert main(["migrate", *store, "--policy", str(shorter), "--allow-shorter-retention"]) == 0
    assert ttl_days(ch, database) == 30
    # An older policy version (the built-in one) never rewrites the newer schema.
    assert main(["migrate", *store]) == 2
    assert "newer than this policy's" in capsys.readouterr().err
    assert ttl_days(ch, database) == 30


async def test_the_app_refuses_to_shorten_at_startup(chdb_dsn: str, database: str, tmp_path: Path) -> None:
    """Embedded store: the lifespan startup fails with the reason; with the setting it proceeds."""
    from starlette.applications import Starlette

    from consentmw import ConsentMiddleware

    ClickHouseSink(chdb_dsn, Schema(Policy.default(), database)).apply_migration()
    shorter = Policy.from_file(short_policy_file(tmp_path, 30))
    answers: list[dict[str, Any]] = []

    async def lifespan(mw: Any) -> None:
        sent = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> dict[str, Any]:
            return next(sent)

        async def send(message: dict[str, Any]) -> None:
            answers.append(message)

        await mw({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    common = dict(secret_key="startup-shorten-secret-0123456789", clickhouse_dsn=chdb_dsn, database=database,
                  spool_dir=str(tmp_path / "spool"), policy=shorter)
    refused = ConsentMiddleware(Starlette(), **common)
    await lifespan(refused)
    assert answers[0]["type"] == "lifespan.startup.failed"
    assert "statistics from 395 to 30 days" in answers[0]["message"]
    refused.collector.stop()
    answers.clear()
    allowed = ConsentMiddleware(Starlette(), **common, allow_shorter_retention=True)
    await lifespan(allowed)
    assert [a["type"] for a in answers] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    allowed.collector.stop()
