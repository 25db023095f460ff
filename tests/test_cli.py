"""`consentmw` CLI: report, export, erase, replay on real chDB, --help, one-line errors, progress."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from consentmw.cli import Progress, main
from consentmw.core.arrow import to_arrow
from consentmw.store.spool import Record, Spool
from consentmw.store.writer import encode_ipc

from tests.conftest import SECRET
from tests.test_views import seed_today, site

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONSENTMW_CLICKHOUSE_DSN": "http://127.0.0.1:9/"}
    return subprocess.run([sys.executable, "-m", "consentmw", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)


def test_help_lists_every_command() -> None:
    r = run("--help")
    assert r.returncode == 0
    for command in ("demo", "migrate", "report", "export", "erase", "replay"):
        assert command in r.stdout
    for command in ("report", "export", "erase", "replay"):
        r = run(command, "--help")
        assert r.returncode == 0 and "--dsn" in r.stdout, command


@pytest.mark.parametrize("args,message", [
    (("export",), "required: --visitor"),
    (("erase", "--visitor", "not an id!"), "is not a consent id or visitor id"),
    (("report", "--days", "0"), "--days must be between 1 and 3660"),
    (("report", "--days", "many"), "invalid int value"),
    (("replay", "--spool", "/nonexistent/spool"), "no spool directory"),
    (("nonsense",), "invalid choice"),
])
def test_bad_input_is_one_line_and_non_zero(args: tuple[str, ...], message: str) -> None:
    r = run(*args)
    assert r.returncode != 0
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_unreachable_store_is_one_line() -> None:
    r = run("export", "--visitor", "abcdEFGH1234")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_progress_bar() -> None:
    out = io.StringIO()
    bar = Progress("export", total=200, stream=out, enabled=True)
    for _ in range(4):
        bar.update(50)
        bar._shown = 0.0
    bar.close()
    text = out.getvalue()
    assert "100.0% 200/200 rows" in text and text.endswith("\n") and "[" + "#" * 30 + "]" in text
    quiet = io.StringIO()
    Progress("x", total=10, stream=quiet).update(10)  # not a terminal: nothing drawn
    assert quiet.getvalue() == ""


async def test_report_export_erase(make_app: Any, ch: Any, chdb_dsn: str, database: str, tmp_path: Path,
                                   capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    mw = make_app(site())
    cookies = await seed_today(mw)
    parts = cookies["a"].split(".")[0].split("~")
    cid, vid = parts[1], parts[6]
    store = ["--dsn", chdb_dsn, "--database", database]

    out = tmp_path / "report.html"
    assert main(["report", *store, "--days", "7", "--out", str(out)]) == 0
    assert "the dashboard for" in capsys.readouterr().out
    page = out.read_text()
    assert page.count("<svg") == 2 and '<p class="value">4</p>' in page  # the narrow and the wide chart; 4 page views

    export = tmp_path / "a.json"
    assert main(["export", *store, "--visitor", vid, "--out", str(export)]) == 0
    data = json.loads(export.read_text())
    assert data["subject"] == {"consent_ids": [cid], "visitor_ids": [vid]}
    assert [r["path"] for r in data["tables"]["events_personalisation"]] == ["/", "/articles/a"]
    assert main(["export", *store, "--visitor", "nobodyHere123"]) == 1
    assert "no data stored" in capsys.readouterr().err

    monkeypatch.delenv("CONSENTMW_SECRET_KEY", raising=False)
    assert main(["erase", *store, "--visitor", cid, "--yes"]) == 2
    assert "CONSENTMW_SECRET_KEY" in capsys.readouterr().err
    monkeypatch.setenv("CONSENTMW_SECRET_KEY", SECRET)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["erase", *store, "--visitor", cid]) == 2   # not a terminal and no --yes
    assert "--yes" in capsys.readouterr().err
    assert main(["erase", *store, "--visitor", cid, "--yes", "--json"]) == 0
    receipt = json.loads(capsys.readouterr().out)
    assert receipt["verified"] and receipt["requested_by"] == "operator:cli"
    assert receipt["tables"]["events_personalisation"] == 2
    assert ch.query(f"SELECT count() FROM {database}.events_personalisation WHERE visitor_id = '{vid}'").result_rows == [(0,)]
    # the app's receipts and the CLI's use the same salt: one id, one hash
    assert mw.api.rights.subject_hash(cid) in receipt["subject_hash"].split()
    assert main(["export", *store, "--visitor", vid]) == 1  # gone


def test_replay_moves_the_spool_into_the_store(make_app: Any, ch: Any, chdb_dsn: str, database: str,
                                               tmp_path: Path, capsys: Any) -> None:
    mw = make_app()
    mw.collector.sink.client()
    spool = Spool(tmp_path / "spool")
    now = int(time.time() * 1000)
    for batch in range(3):
        columns = {"record_id": [f"00000000-0000-4000-8000-00000000000{batch}"], "consent_id": [f"spooled{batch}"],
                   "ts": [now], "action": ["grant"], "policy_version": ["v"], "granted": [["necessary"]],
                   "denied": [[]], "source": ["banner"], "gpc": [False], "language": ["en"], "texts_hash": ["h"],
                   "page": ["/"], "site": ["s"], "ip": [bytes(16)], "user_agent": ["ua"], "visitor_id": [""]}
        spool.write(Record("rows", "consent_log", f"token-{batch}", encode_ipc(to_arrow("consent_log", columns))))
    spool.close()
    store = ["--dsn", chdb_dsn, "--database", database]
    assert main(["replay", *store, "--spool", str(tmp_path / "spool")]) == 0
    assert "replayed 3 rows in 3 batches" in capsys.readouterr().out
    assert ch.query(f"SELECT count() FROM {database}.consent_log WHERE consent_id LIKE 'spooled%'").result_rows == [(3,)]
    assert main(["replay", *store, "--spool", str(tmp_path / "spool")]) == 0
    assert "empty" in capsys.readouterr().out


def test_replay_says_what_it_quarantined_and_deletes_nothing_it_did_not_store(
        make_app: Any, ch: Any, chdb_dsn: str, database: str, tmp_path: Path, capsys: Any) -> None:
    """A good batch, a batch with two rows ClickHouse refuses (malformed UUIDs), an undecodable
    record and a torn tail: the good rows are stored, everything else is kept and named."""
    from consentmw.store.spool import parse_segment
    from consentmw.store.writer import decode_ipc

    mw = make_app()
    mw.collector.sink.client()
    spool = Spool(tmp_path / "spool")
    now = int(time.time() * 1000)

    def ledger(ids: list[str], tag: str) -> bytes:
        n = len(ids)
        columns = {"record_id": ids, "consent_id": [f"{tag}{i}" for i in range(n)], "ts": [now] * n,
                   "action": ["grant"] * n, "policy_version": ["v"] * n, "granted": [["necessary"]] * n,
                   "denied": [[]] * n, "source": ["banner"] * n, "gpc": [False] * n, "language": ["en"] * n,
                   "texts_hash": ["h"] * n, "page": ["/"] * n, "site": ["s"] * n, "ip": [bytes(16)] * n,
                   "user_agent": ["ua"] * n, "visitor_id": [""] * n}
        return encode_ipc(to_arrow("consent_log", columns))

    good_ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(10)]
    spool.write(Record("rows", "consent_log", "t-good", ledger(good_ids[:4], "truthA")))
    mixed = good_ids[4:] [:3] + ["not-a-uuid"] + good_ids[7:] + ["nope"]
    spool.write(Record("rows", "consent_log", "t-mixed", ledger(mixed, "truthB")))
    spool.write(Record("rows", "consent_log", "t-junk", b"this is not an Arrow stream"))
    spool.close()
    [segment] = spool.segments()
    with open(segment, "ab") as f:
        f.write(b"CMW1\x00\x00\x01\x00torn")  # a record cut off mid-write
    store = ["--dsn", chdb_dsn, "--database", database]
    assert main(["replay", *store, "--spool", str(tmp_path / "spool")]) == 1
    out, err = capsys.readouterr()
    assert "replayed 10 rows in 2 batches" in out
    assert "1 corrupt record(s), 1 undecodable record(s), 2 row(s) ClickHouse refused" in err
    stored = ch.query(f"SELECT count() FROM {database}.consent_log WHERE consent_id LIKE 'truth%'").result_rows[0][0]
    assert stored == 10
    kept = Spool(tmp_path / "spool").quarantined()
    assert len(kept) == 3 and all(str(p) in err for p in kept)
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in kept)
    [refused] = [p for p in kept if p.name.startswith("rows-")]
    [(record, _)], _ = parse_segment(refused.read_bytes())
    assert sorted(decode_ipc(record.body).column("record_id").to_pylist()) == ["nope", "not-a-uuid"]
    [junk] = [p for p in kept if p.name.startswith("undecodable-")]
    assert b"this is not an Arrow stream" in junk.read_bytes()
    assert not Spool(tmp_path / "spool").pending()


def test_report_without_a_statistics_purpose_says_why(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('version = "nostats-1"\nupdated = "2026-11-30"\n'
                      '[[purposes]]\nid = "necessary"\nrequired = true\ncategories = []\n'
                      '[[purposes]]\nid = "personalisation"\ncategories = ["visitor_id", "page"]\n')
    out = tmp_path / "report.html"
    r = run("report", "--policy", str(policy), "--dsn", f"chdb://{tmp_path}/data", "--out", str(out))
    assert r.returncode != 0 and not out.exists()
    assert "policy has no statistics purpose" in r.stderr and "nothing to show" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
