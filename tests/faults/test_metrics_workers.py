"""/metrics under gunicorn with two workers (ClickHouse server store over loopback HTTP):
with PROMETHEUS_MULTIPROC_DIR every scrape, whichever worker answers, reports the events
of both workers; without it a scrape shows one worker's share (documented)."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest

from consentmw.core.consent import ConsentCodec
from consentmw.core.policy import Policy

from tests.chhttp import ChdbHttpServer
from tests.conftest import BROWSER_UA, SECRET
from tests.faults.helpers import python_env

BIN = Path(sys.executable).parent
ADMIN = "admin-token-0123456789"
USER, PASSWORD = "metrics", "metrics-pw-123"

APP = """
import os
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from consentmw import ConsentMiddleware

async def home(request):
    return PlainTextResponse(str(os.getpid()))

site = ConsentMiddleware(Starlette(routes=[Route("/", home)]), collect_rate=1e6, collect_burst=1_000_000)

async def app(scope, receive, send):  # names the worker that answered
    async def send_named(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"x-worker", str(os.getpid()).encode())]}
        await send(message)
    await site(scope, receive, send_named if scope["type"] == "http" else send)
"""


@pytest.fixture(scope="module")
def store(chdb_dsn: str, ch: Any) -> Iterator[ChdbHttpServer]:
    s = ChdbHttpServer(chdb_dsn[len("chdb://"):], USER, PASSWORD)
    yield s
    s.close()


def request(port: int, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # a new connection: any worker
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read(), r.getheader("x-worker", "")
    finally:
        conn.close()


def scrape(port: int) -> dict[str, float]:
    status, body, _ = request(port, "GET", "/_consent/metrics", authorization=f"Bearer {ADMIN}")
    assert status == 200, body
    return {m[0]: float(m[1]) for m in re.findall(r"^(consentmw_\w+) ([0-9.e+]+)$", body.decode(), re.M)}


def gunicorn(tmp_path: Path, store: ChdbHttpServer, database: str, multiproc: bool) -> tuple[subprocess.Popen[bytes], int]:
    (tmp_path / "mapp.py").write_text(APP)
    (tmp_path / "gunicorn.conf.py").write_text("from consentmw.serving import gunicorn_child_exit as child_exit\n")
    env = python_env(CONSENTMW_SECRET_KEY=SECRET, CONSENTMW_ADMIN_TOKEN=ADMIN, CONSENTMW_DATABASE=database,
                     CONSENTMW_CLICKHOUSE_DSN=f"http://{USER}:{quote(PASSWORD)}@127.0.0.1:{store.port}/",
                     CONSENTMW_SPOOL_DIR=str(tmp_path / "spool"))
    if multiproc:
        (tmp_path / "prom").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prom")
    log = open(tmp_path / "gunicorn.log", "w")
    proc = subprocess.Popen([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-w", "2", "-k",
                             "uvicorn_worker.UvicornWorker", "-b", "127.0.0.1:0", "--no-control-socket", "mapp:app"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while True:
        text = (tmp_path / "gunicorn.log").read_text()
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", text)
        if found and text.count("Application startup complete") >= 2:
            return proc, int(found.group(1))
        assert proc.poll() is None and time.monotonic() < deadline, text
        time.sleep(0.2)


def send_events(port: int, at_least: int, at_most: int = 400) -> tuple[set[str], int]:
    """Beacons (one event each) on new connections, at least `at_least`, and on until both
    workers have taken some (the kernel hands connections out unevenly on a busy machine),
    at most `at_most`. Returns the workers that answered and how many events were sent."""
    cookie, _ = ConsentCodec(SECRET, Policy.default()).issue({"statistics"})
    workers: set[str] = set()
    i = 0
    while i < at_least or (len(workers) < 2 and i < at_most):
        body = json.dumps({"events": [{"type": "custom", "path": f"/m/{i}", "name": "metrics"}]}).encode()
        status, answer, worker = request(port, "POST", "/_consent/collect", body, **{
            "content-type": "text/plain", "user-agent": BROWSER_UA, "host": "metrics.test",
            "origin": "http://metrics.test", "cookie": f"consentmw={cookie}"})
        assert status == 202, answer
        workers.add(worker)
        i += 1
    return workers, i


@pytest.mark.parametrize("multiproc", [True, False], ids=["multiprocess", "per-process"])
def test_metrics_count_every_worker_in_multiprocess_mode(tmp_path: Path, store: ChdbHttpServer, database: str,
                                                         multiproc: bool) -> None:
    proc, port = gunicorn(tmp_path, store, database, multiproc)
    try:
        workers, sent = send_events(port, 40)
        assert len(workers) == 2, f"both workers took events ({sent} sent)"
        deadline = time.monotonic() + 20
        seen = []
        while time.monotonic() < deadline:
            seen = [scrape(port).get("consentmw_accepted_total", 0) for _ in range(6)]
            if multiproc and set(seen) == {sent}:
                break
            time.sleep(0.5)
        if multiproc:
            assert set(seen) == {sent}, seen   # every scrape, whichever worker answered
            assert scrape(port)["consentmw_writer_running"] == 2
        else:
            assert all(v < sent for v in seen), seen  # one worker's share: why the mode exists
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
