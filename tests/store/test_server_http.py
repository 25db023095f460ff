"""The ClickHouse server path over real HTTP on loopback: a test server (`tests/chhttp.py`)
that checks credentials like ClickHouse and answers from chDB, so every DSN form, TLS with
a private CA, the whole success path (migrate, deduplicated Arrow inserts, rights queries)
and the refusals (wrong password, missing database) run through clickhouse-connect's HTTP
client exactly as against a server."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import httpx
import pyarrow as pa
import pytest

from consentmw import ConsentMiddleware
from consentmw.core.consent import COOKIE_NAME
from consentmw.store.sink import ClickHouseSink, SinkError, StoreConfigError
from consentmw.store.schema import Schema
from consentmw.core.policy import Policy

from tests.chhttp import ChdbHttpServer
from tests.conftest import BROWSER_UA, SECRET, site_app

USER, PASSWORD = "alice", "p@ss:w/rd?&#"
PW = quote(PASSWORD, safe="")
ADMIN = "admin-token-0123456789"


@pytest.fixture(scope="module")
def server(chdb_dsn: str, ch: Any) -> Iterator[ChdbHttpServer]:
    s = ChdbHttpServer(chdb_dsn[len("chdb://"):], USER, PASSWORD)
    yield s
    s.close()


@pytest.fixture(scope="module")
def tls_server(chdb_dsn: str, ch: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChdbHttpServer, Path]]:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    s = ChdbHttpServer(chdb_dsn[len("chdb://"):], USER, PASSWORD, tls=(str(d / "cert.pem"), str(d / "key.pem")))
    yield s, d / "cert.pem"
    s.close()


def sink(dsn: str, database: str) -> ClickHouseSink:
    return ClickHouseSink(dsn, Schema(Policy.default(), database), connect_timeout=2, send_receive_timeout=5)


def test_every_documented_dsn_form_connects(server: ChdbHttpServer, tls_server: tuple[ChdbHttpServer, Path],
                                            ch: Any) -> None:
    tls, ca = tls_server
    ch.command("CREATE DATABASE IF NOT EXISTS dsn_forms")
    forms = [
        f"http://{USER}:{PW}@127.0.0.1:{server.port}/",
        f"http://{USER}:{PW}@127.0.0.1:{server.port}/dsn_forms",
        f"http://127.0.0.1:{server.port}/?user={USER}&password={PW}",
        f"http://127.0.0.1:{server.port}/dsn_forms?user={USER}&password={PW}&compress=false",
        f"https://{USER}:{PW}@127.0.0.1:{tls.port}/?ca_cert={ca}",
        f"http://{USER}:{PW}@127.0.0.1:{tls.port}/dsn_forms?secure=true&ca_cert={ca}",
        f"https://127.0.0.1:{tls.port}/?user={USER}&password={PW}&verify=false",
    ]
    for dsn in forms:
        client = sink(dsn, "dsn_forms")._connect()  # the one place a DSN becomes a client
        try:
            assert client.command("SELECT 42") == 42, dsn
            assert client.command("SELECT currentDatabase()") == ("dsn_forms" if "/dsn_forms" in dsn else "default")
        finally:
            client.close()
    # The private CA is really checked: without it the certificate is refused.
    s = sink(f"https://{USER}:{PW}@127.0.0.1:{tls.port}/", "dsn_forms")
    with pytest.raises(SinkError, match="certificate|SSL"):
        s._connect()
    ch.command("DROP DATABASE IF EXISTS dsn_forms SYNC")


def test_migrate_and_deduplicated_arrow_inserts_over_http(server: ChdbHttpServer, ch: Any, database: str) -> None:
    s = sink(f"http://{USER}:{PW}@127.0.0.1:{server.port}/", database)
    try:
        s.client()  # connect and migrate over HTTP
        assert ch.command(f"EXISTS TABLE {database}.events_statistics") == 1
        assert ch.command(f"SELECT count() FROM {database}.schema_migrations") == 1
        columns = s.query(f"SELECT name, type FROM system.columns WHERE database = '{database}' "
                          f"AND table = 'erasure_log' ORDER BY position").result_rows
        assert columns, "system tables answer over HTTP"
        data = pa.table({"d": pa.array([1, 2, 3], pa.uint32())})
        s.command(f"CREATE TABLE {database}.dedup_probe (d UInt32) ENGINE = MergeTree ORDER BY d "
                  "SETTINGS non_replicated_deduplication_window = 100")
        for _ in range(3):  # a retried batch keeps its token: stored once
            s.insert("dedup_probe", data, "batch-1:dedup_probe")
        s.insert("dedup_probe", data, "batch-2:dedup_probe")
        assert ch.command(f"SELECT count() FROM {database}.dedup_probe") == 6
        assert any(q.startswith(f"INSERT INTO {database}.dedup_probe") and "FORMAT Arrow" in q for q in server.queries)
    finally:
        s.close()


def http_app(server: ChdbHttpServer, database: str, tmp_path: Path, password: str = PASSWORD,
             dsn_database: str = "") -> ConsentMiddleware:
    dsn = f"http://{USER}:{quote(password, safe='')}@127.0.0.1:{server.port}/{dsn_database}"
    return ConsentMiddleware(site_app(), secret_key=SECRET, clickhouse_dsn=dsn, database=database,
                             spool_dir=str(tmp_path / "spool"), flush_interval=0.1, admin_token=ADMIN)


def browser(mw: Any, ip: str = "81.2.69.160") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=mw, client=(ip, 50123)), base_url="http://site.test",
                             headers={"user-agent": BROWSER_UA, "accept-language": "en"})


async def test_collection_and_rights_over_http(server: ChdbHttpServer, ch: Any, database: str, tmp_path: Path) -> None:
    mw = http_app(server, database, tmp_path)
    try:
        async with browser(mw) as c:
            assert (await c.post("/_consent/choice", json={"all": True})).status_code == 200
            for page in ("/articles/a", "/articles/b"):
                assert (await c.get(page)).status_code == 200
            mw.collector.flush()
            assert ch.command(f"SELECT count() FROM {database}.events_personalisation") == 2
            assert ch.command(f"SELECT count() FROM {database}.events_statistics") == 2
            assert ch.command(f"SELECT count() FROM {database}.consent_log") == 1
            me = await c.get("/_consent/me")
            assert me.status_code == 200, me.text
            assert [r["path"] for r in me.json()["tables"]["events_personalisation"]] == ["/articles/a", "/articles/b"]
            gone = await c.delete("/_consent/me")
            assert gone.status_code == 200, gone.text
            assert ch.command(f"SELECT count() FROM {database}.events_personalisation") == 0
            health = (await c.get("/_consent/health", headers={"authorization": f"Bearer {ADMIN}"})).json()
        assert health["status"] == "ok" and health["spool_bytes"] == 0 and health["replayed"] == health["spooled"]
        assert health["store"] == f"http://{USER}:***@127.0.0.1:{server.port}/"
    finally:
        mw.collector.stop()


async def test_wrong_password_is_one_clear_line_spools_and_backs_off(
        server: ChdbHttpServer, ch: Any, database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consentmw")
    wrong = "not-the-password-42"
    mw = http_app(server, database, tmp_path, password=wrong)
    before = server.auth_failures
    started = time.monotonic()
    try:
        async with browser(mw) as c:
            assert (await c.post("/_consent/choice", json={"all": True})).status_code == 200
            assert (await c.get("/articles/a")).status_code == 200
            deadline = time.monotonic() + 10
            while mw.collector.stats.spooled < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(3)  # let the replayer retry as it likes
            health = (await c.get("/_consent/health", headers={"authorization": f"Bearer {ADMIN}"})).json()
            during = server.auth_failures - before
            elapsed = time.monotonic() - started
    finally:
        mw.collector.stop()
    assert health["status"] == "spooling" and health["spooled"] == 3 and health["spool_bytes"] > 0
    assert "refused the credentials" in health["last_error"] and "'alice'" in health["last_error"]
    lines = [r.getMessage() for r in caplog.records if "refused the credentials" in r.getMessage()
             and r.levelno >= logging.ERROR]
    assert len(lines) == 1, lines
    assert "check the user and password" in lines[0]
    assert wrong not in caplog.text and wrong not in str(health)
    # No hot loop: the writer, the revocation and blocklist readers each try once at start, then
    # 5 s between tries (a slow machine may stretch the wait above past 5 s, which allows one
    # more try per 5 s; a hot loop would make hundreds), and stopping tries at most once more.
    assert during <= 3 + int(elapsed // 5), (during, elapsed, server.refused)
    assert server.auth_failures - before - during <= 1
    assert ch.command(f"EXISTS DATABASE {database}") == 0  # nothing was stored or created


async def test_a_missing_database_named_in_the_dsn_is_reported(
        server: ChdbHttpServer, database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consentmw")
    missing = "nope_" + uuid.uuid4().hex[:8]
    mw = http_app(server, "consentmw", tmp_path, dsn_database=missing)
    try:
        async with browser(mw) as c:
            assert (await c.post("/_consent/choice", json={"all": True})).status_code == 200
            deadline = time.monotonic() + 10
            while not mw.collector.stats.last_error and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            health = (await c.get("/_consent/health", headers={"authorization": f"Bearer {ADMIN}"})).json()
    finally:
        mw.collector.stop()
    assert f"database {missing!r}" in health["last_error"] and "UNKNOWN_DATABASE" in health["last_error"]
    assert [r for r in caplog.records if "UNKNOWN_DATABASE" in r.getMessage()]
    assert mw.collector.sink.database == missing
