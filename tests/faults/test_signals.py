"""A real uvicorn subprocess under a bounded load on 127.0.0.1, stopped by SIGTERM or SIGKILL.

SIGTERM: uvicorn finishes in-flight requests, sends lifespan shutdown, the collector drains:
every event acknowledged with a 2xx is stored. SIGKILL: at most what arrived within one
flush interval (plus the one insert in flight) is lost; the spool is replayed by the next
process; nothing is stored twice.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.ipc as ipc
import pytest

from consentmw.core.consent import ConsentCodec
from consentmw.core.policy import Policy
from consentmw.store.spool import parse_segment

from tests.conftest import BROWSER_UA, SECRET

from .helpers import HERE, closed_port, count_in_subprocess, python_env

TOKEN = "admin-token-for-fault-tests"
FLUSH = 0.5


class Server:
    def __init__(self, tmp: Path, **env: str) -> None:
        self.port = closed_port()
        self.tmp = tmp
        self.dsn = "chdb://" + str(tmp / "chdb")
        self.env = python_env(CONSENTMW_SECRET_KEY=SECRET, CONSENTMW_CLICKHOUSE_DSN=self.dsn,
                              CONSENTMW_SPOOL_DIR=str(tmp / "spool"), CONSENTMW_ADMIN_TOKEN=TOKEN,
                              CMWTEST_FLUSH=str(FLUSH), **env)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *uvicorn_args: str) -> "Server":
        self.log = open(self.tmp / f"server-{time.time_ns()}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "app_server:app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
             "--timeout-graceful-shutdown", "10", *uvicorn_args],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.get("/_consent/state")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.1)
            assert self.proc.poll() is None, self.output()
        raise AssertionError("server did not start\n" + self.output())

    def output(self) -> str:
        self.log.flush()
        return "".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("server-*.log")))[-5000:]

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def health(self) -> dict[str, Any]:
        status, body = self.get("/_consent/health", {"authorization": f"Bearer {TOKEN}"})
        assert status == 200, body
        return json.loads(body)

    def wait_healthy_under_load(self) -> None:
        """Until the store is connected and migrated (30 s at most), then 1.5 s more of load."""
        deadline = time.monotonic() + 30
        while not self.health()["sink_healthy"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


class Load:
    """A bounded load: `threads` keep-alive clients posting 5-event beacons until told to stop,
    each at most `limit` requests. Counts events sent and events acknowledged (2xx), with times."""

    def __init__(self, port: int, cookie: str, threads: int = 3, limit: int = 4000) -> None:
        self.port, self.cookie, self.limit = port, cookie, limit
        self.stop = threading.Event()
        self.sent = 0
        self.acks: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        self.refused: tuple[int, bytes] | None = None
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    @property
    def acked(self) -> int:
        return sum(n for _, n in self.acks)

    def wait_acked(self, n: int, timeout: float = 60) -> None:
        """Until more than `n` events were acknowledged: a busy machine serves the load slower."""
        deadline = time.monotonic() + timeout
        while self.acked <= n and time.monotonic() < deadline and any(t.is_alive() for t in self.threads):
            time.sleep(0.05)

    def _run(self, worker: int) -> None:
        headers = {"content-type": "text/plain", "user-agent": BROWSER_UA, "host": f"load{worker}.test",
                   "cookie": f"consentmw={self.cookie}", "origin": f"http://load{worker}.test"}
        conn: http.client.HTTPConnection | None = None
        failures = 0
        for i in range(self.limit):
            if self.stop.is_set():
                break
            body = json.dumps({"events": [{"type": "custom", "path": f"/w{worker}/{i}/{k}", "name": "load"}
                                          for k in range(5)]})
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                with self.lock:
                    self.sent += 5
                conn.request("POST", "/_consent/collect", body=body, headers=headers)
                r = conn.getresponse()
                answer = r.read()
                if 200 <= r.status < 300:
                    with self.lock:
                        self.acks.append((time.monotonic(), json.loads(answer)["accepted"]))
                else:
                    self.refused = (r.status, answer)
                failures = 0
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                failures += 1
                if failures > 20:
                    break
                time.sleep(0.05)
            time.sleep(0.002)


@pytest.fixture
def cookie() -> str:
    value, _ = ConsentCodec(SECRET, Policy.default()).issue({"statistics"})
    return value


def spooled_rows(spool_dir: Path) -> int:
    rows = 0
    for seg in spool_dir.glob("seg-*.spool"):
        records, _ = parse_segment(seg.read_bytes())
        for record, _raw in records:
            if record.table == "events_statistics":
                import io
                rows += ipc.open_stream(io.BytesIO(record.body)).read_all().num_rows
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("lifespan", ["on", "off"])
def test_sigterm_stores_every_acknowledged_event(tmp_path: Path, cookie: str, lifespan: str) -> None:
    """With lifespan the middleware drains on lifespan shutdown; without it (`--lifespan off`,
    servers that never send lifespan events) the collector started on the first request and
    drains at interpreter exit, including uvicorn's exit by re-raised SIGTERM."""
    server = Server(tmp_path).start("--lifespan", lifespan)
    with Load(server.port, cookie, limit=20000) as load:
        server.wait_healthy_under_load()
        load.wait_acked(500)
        health = server.health()
        server.signal(signal.SIGTERM)
        t = time.monotonic()
        code = server.wait(30)
        stopped_in = time.monotonic() - t
    assert code in (0, -signal.SIGTERM), server.output()  # uvicorn re-raises the signal after a clean shutdown
    acked, sent = load.acked, load.sent
    result = count_in_subprocess(server.dsn)
    left = spooled_rows(tmp_path / "spool")
    print(f"\n[SIGTERM lifespan={lifespan}] sent={sent} acked={acked} stored={result['count']} distinct={result['distinct']} "
          f"left_in_spool={left} spooled_during_run={health['spooled']} shutdown={stopped_in:.2f}s")
    assert acked > 500
    assert result["count"] == result["distinct"], "duplicates"
    # Every acknowledged event is stored (the store was up: nothing is left in the spool).
    assert health["sink_healthy"] and left == 0
    assert result["count"] >= acked
    assert result["count"] + left <= sent
    assert stopped_in < 15


@pytest.mark.slow
def test_sigkill_loses_at_most_one_flush_and_replays_on_restart(tmp_path: Path, cookie: str) -> None:
    server = Server(tmp_path, CMWTEST_QUEUE="300").start()
    with Load(server.port, cookie, limit=20000) as load:
        # Load from the start: while the store connects and migrates, events spool; then
        # they go straight in (and the small queue overflows into the spool under load).
        server.wait_healthy_under_load()
        load.wait_acked(500)
        health = server.health()
        killed_at = time.monotonic()
        server.signal(signal.SIGKILL)
        server.wait(10)
    acked, sent = load.acked, load.sent
    in_spool = spooled_rows(tmp_path / "spool")
    # What may be lost: the queue since the last flush, and the batch whose insert was running.
    window = FLUSH + 0.25
    at_risk = sum(n for t, n in load.acks if t >= killed_at - window)

    restarted = Server(tmp_path, CMWTEST_QUEUE="300")
    restarted.port = closed_port()
    restarted.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        h = restarted.health()
        if h["sink_healthy"] and h["spool_segments"] == 0:
            break
        time.sleep(0.2)
    restarted.signal(signal.SIGTERM)
    assert restarted.wait(30) in (0, -signal.SIGTERM), restarted.output()
    result = count_in_subprocess(restarted.dsn)
    print(f"\n[SIGKILL] sent={sent} acked={acked} stored={result['count']} distinct={result['distinct']} "
          f"lost={max(0, acked - result['count'])} at_risk_window={at_risk} "
          f"spool_rows_at_kill={in_spool} replayed_on_restart={h['replayed']} "
          f"spooled_before_kill={health['spooled']} stored_before_kill={health['stored']}")
    assert acked > 500
    assert result["count"] == result["distinct"], "duplicates"
    assert result["count"] <= sent
    assert result["count"] >= acked - at_risk
    assert h["replayed"] >= in_spool
    assert spooled_rows(tmp_path / "spool") == 0
