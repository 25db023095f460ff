"""No credential ever leaves the process: with a password-carrying DSN pointing at a closed
port, a canary password is searched for in every HTTP answer, every log record and every
line the CLI prints, and the visitor's answers are a generic 503 with Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from consentmw import ConsentMiddleware
from consentmw.cli import main
from consentmw.core.redact import redact, redact_dsn, remember_dsn
from consentmw.store.spool import Record, Spool
from consentmw.store.writer import encode_ipc

from tests.conftest import SECRET, site_app
from tests.faults.helpers import asgi_call, closed_port

CANARY = "Canary-Pw-7f3a9c"
ADMIN = "admin-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent


def test_redact_masks_userinfo_query_passwords_and_remembered_secrets() -> None:
    assert redact_dsn("http://user:s3cr%40t@db:8123/x") == "http://user:***@db:8123/x"
    assert redact("connect https://u:p/w@h:8443 failed") == "connect https://u:***@h:8443 failed"
    assert redact("http://db:8123/?user=u&password=hunter22&x=1") == "http://db:8123/?user=u&password=***&x=1"
    remember_dsn("http://u:Remembered%2Bpw@h/")
    assert redact("auth failed for Remembered+pw and Remembered%2Bpw") == "auth failed for *** and ***"
    assert redact("no secret here: chdb:///var/data") == "no secret here: chdb:///var/data"


@pytest.fixture
def dsn() -> str:
    return f"http://analyst:{CANARY}@127.0.0.1:{closed_port()}/"


def test_a_fault_run_leaks_the_password_nowhere(dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    mw = ConsentMiddleware(site_app(), secret_key=SECRET, clickhouse_dsn=dsn, spool_dir=str(tmp_path / "spool"),
                           admin_token=ADMIN, flush_interval=0.05)
    cookie, _ = mw.codec.issue({"statistics", "personalisation"})
    base = [(b"host", b"site.test"), (b"cookie", b"consentmw=" + cookie.encode())]
    admin = [(b"host", b"site.test"), (b"authorization", f"Bearer {ADMIN}".encode())]
    json_ct = [(b"content-type", b"application/json")]
    calls = [("GET", "/", base, b""), ("GET", "/_consent/me", base, b""), ("POST", "/_consent/me/block", base, b""),
             ("POST", "/_consent/me/unblock", base, b""), ("DELETE", "/_consent/me", base, b""),
             ("DELETE", "/_consent/choice", base, b""),
             ("POST", "/_consent/collect", base + json_ct, b'{"events": [{"type": "pageview", "path": "/"}]}'),
             ("POST", "/_consent/choice", base + json_ct, b'{"all": true}'),
             ("GET", "/_consent/admin/visitors/abcdEFGH1234", admin, b""),
             ("DELETE", "/_consent/admin/visitors/abcdEFGH1234", admin, b"")]
    answers: list[tuple[str, int, bytes, list[tuple[bytes, bytes]]]] = []

    async def drive() -> None:
        for method, path, headers, body in calls:
            status, answer, sent = await asgi_call(mw, method, path, headers, body)
            answers.append((path, status, answer, sent))
        status, answer, sent = await asgi_call(mw, "DELETE", "/_consent/choice", base, b"", query=b"erase=true")
        answers.append(("/_consent/choice?erase=true", status, answer, sent))
        mw.collector.flush()
        for path in ("/_consent/health", "/_consent/metrics"):
            status, answer, sent = await asgi_call(mw, "GET", path, admin)
            answers.append((path, status, answer, sent))

    try:
        asyncio.run(drive())
    finally:
        mw.collector.stop(timeout=1)
    by_path = {path: (status, answer, sent) for path, status, answer, sent in answers}
    for path in ("/_consent/me", "/_consent/me/block", "/_consent/me/unblock", "/_consent/me"):
        status, answer, sent = by_path[path]
        assert status == 503, (path, answer)
        assert (b"retry-after", b"30") in sent
        assert b"127.0.0.1" not in answer and b"analyst" not in answer  # generic: no store detail at all
    status, answer, sent = by_path["/_consent/choice?erase=true"]
    # after the withdrawal above the old cookie may no longer name anyone (nothing to erase);
    # if the erasure was attempted, the store's failure is a generic 503 with a retry hint
    assert status in (200, 503) and b"analyst" not in answer
    if status == 503:
        assert (b"retry-after", b"30") in sent
    health = by_path["/_consent/health"][1]
    assert b"last_error" in health and b"127.0.0.1" in health  # the operator still learns where it failed
    for path, status, answer, sent in answers:
        assert CANARY.encode() not in answer, path
        assert all(CANARY.encode() not in value for _, value in sent), path
    records = caplog.records
    assert records, "the fault run should have logged the outage"
    for record in records:
        assert CANARY not in record.getMessage(), record.getMessage()
        if record.exc_info:
            assert CANARY not in logging.Formatter().formatException(record.exc_info)
    assert CANARY not in mw.collector.stats.last_error


def test_cli_output_never_carries_the_password(dsn: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    Spool(spool).write(Record("rows", "events_statistics", "t-1", encode_ipc(__import__("pyarrow").table({"a": [1]}))))
    commands = [["migrate"], ["export", "--visitor", "abcdEFGH1234"], ["report", "--out", str(tmp_path / "r.html")],
                ["replay", "--spool", str(spool)], ["prove", "--table", "events_statistics", "--event", "x"]]
    for args in commands:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*args, "--dsn", dsn])
        assert code != 0, args
        assert CANARY not in out.getvalue() + err.getvalue(), (args, err.getvalue())
        assert "Traceback" not in err.getvalue()
    # and through the environment, in a real subprocess
    env = {**os.environ, "CONSENTMW_CLICKHOUSE_DSN": dsn, "CONSENTMW_SECRET_KEY": SECRET}
    r = subprocess.run([sys.executable, "-m", "consentmw", "erase", "--visitor", "abcdEFGH1234", "--yes"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert r.returncode != 0 and r.stderr.strip()
    assert CANARY not in r.stdout + r.stderr
