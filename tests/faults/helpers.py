"""Real faults for the store: a closed port, a socket that never answers, an HTTP server
answering 5xx, plus sink wrappers, an in-process ASGI driver and subprocess helpers."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from consentmw.pipeline import Collector
from consentmw.core.settings import Settings
from consentmw.store.schema import Schema
from consentmw.store.sink import ClickHouseSink, SinkError

from tests.conftest import BROWSER_UA, SECRET

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


# -- fake ClickHouse servers ----------------------------------------------------------
def process_gone(pid: int) -> bool:
    """True once a process has exited: no longer in /proc, or a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether the process ends within `timeout` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not process_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return process_gone(pid)


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class SilentServer:
    """Accepts TCP connections and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)  # keep it open, read nothing, answer nothing

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


class ErrorServer:
    """An HTTP server answering every request with one status (500, 503, ...); records queries."""

    def __init__(self, status: int, body: bytes = b"Code: 999. DB::Exception: injected fault") -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                outer.requests.append(self.path)
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                elif self.headers.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        self.rfile.read(size + 2)
                        if size == 0:
                            break
                self.send_response(status)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- sinks with injected faults --------------------------------------------------------
class LostAnswerSink(ClickHouseSink):
    """Performs the real insert, then reports a failure: the answer was lost on the way."""

    def __init__(self, *args: Any, lose: int = 1_000_000, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lose = lose
        self.lost = 0

    def insert(self, table: str, data: Any, token: str) -> None:
        super().insert(table, data, token)
        if table.startswith("events_") and self.lost < self.lose:
            self.lost += 1
            raise SinkError("connection reset while reading the answer (injected)")


class SlowSink(ClickHouseSink):
    """Blocks every insert for `delay` seconds (or until `release` is set) before performing
    it: a store that hangs. `started` is set when an insert begins, `finished` when one has
    been performed, so tests wait on events rather than on guessed sleeps."""

    def __init__(self, *args: Any, delay: float = 3.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    def insert(self, table: str, data: Any, token: str) -> None:
        self.started.set()
        self.release.wait(self.delay)
        super().insert(table, data, token)
        self.finished.set()


class FlakySink(ClickHouseSink):
    """A store that is down (refuses connections and inserts) while `down` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.down = threading.Event()
        self.down.set()

    def client(self) -> Any:
        if self.down.is_set():
            raise SinkError("injected outage: connection refused")
        return super().client()


def settings(**options: Any) -> Settings:
    options.setdefault("secret_key", SECRET)
    options.setdefault("flush_interval", 0.1)
    return Settings.build(options, environ={})


def collector(sink_cls: type = ClickHouseSink, sink_kwargs: dict[str, Any] | None = None,
              sink: ClickHouseSink | None = None, **options: Any) -> Collector:
    s = settings(**options)
    if sink is None:
        sink = sink_cls(s.clickhouse_dsn, Schema(s.policy, s.database), **(sink_kwargs or {}))
    return Collector(s, sink=sink)


class Store:
    """One migrated database shared by a module's tests (migrating costs seconds on chDB);
    each test counts only its own rows, told apart by the `site` (Host) it sends."""

    def __init__(self, ch: Any, chdb_dsn: str) -> None:
        self.ch = ch
        self.dsn = chdb_dsn
        self.database = "f_" + uuid.uuid4().hex[:10]
        s = settings(clickhouse_dsn=chdb_dsn, database=self.database)
        self.sink = ClickHouseSink(chdb_dsn, Schema(s.policy, self.database))
        self.sink.client()

    def collector(self, **options: Any) -> Collector:
        """A collector writing to this store through the shared, already migrated sink."""
        options.setdefault("clickhouse_dsn", self.dsn)
        options.setdefault("database", self.database)
        return collector(sink=self.sink, **options)

    def count(self, site: str, table: str = "events_statistics") -> tuple[int, int]:
        n, d = self.ch.query(f"SELECT count(), uniqExact(event_id) FROM {self.database}.{table} "
                             f"WHERE site = %(s)s", parameters={"s": site}).result_rows[0]
        return int(n), int(d)

    def drop(self) -> None:
        self.ch.command(f"DROP DATABASE IF EXISTS {self.database} SYNC")


# -- a tiny ASGI client (raw bytes, any header) -------------------------------------------
async def asgi_call(app: Any, method: str, path: str, headers: Iterable[tuple[bytes, bytes]] = (),
                    body: bytes = b"", client: tuple[str, int] = ("203.0.113.7", 40000),
                    query: bytes = b"") -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode("utf-8", "surrogatepass"),
             "query_string": query, "root_path": "", "headers": list(headers), "client": client,
             "server": ("site.test", 80)}
    sent = False
    out: dict[str, Any] = {"status": 0, "body": b"", "headers": []}

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = message.get("headers", [])
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return out["status"], out["body"], out["headers"]


def beacon_headers(cookie: str | None, site: str = "site.test", **extra: str) -> list[tuple[bytes, bytes]]:
    h = [(b"host", site.encode()), (b"user-agent", BROWSER_UA.encode()), (b"content-type", b"application/json")]
    if cookie:
        h.append((b"cookie", b"consentmw=" + cookie.encode()))
    h.extend((k.replace("_", "-").encode(), v.encode()) for k, v in extra.items())
    return h


def events_body(n: int, tag: str = "e") -> bytes:
    return json.dumps({"events": [{"type": "custom", "path": f"/p/{tag}/{i}", "name": "fault test"}
                                  for i in range(n)]}).encode()


# -- subprocesses -----------------------------------------------------------------------
def python_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTMW_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def run_script(code: str, timeout: float = 120, **env: str) -> dict[str, Any]:
    """Run Python code in a fresh process (its own chDB directory) and return its last JSON line."""
    proc = subprocess.run([sys.executable, "-c", code], env=python_env(**env), cwd=str(ROOT),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


COUNT_SCRIPT = """
import json, sys, clickhouse_connect
c = clickhouse_connect.get_client(dsn=sys.argv[1] if len(sys.argv) > 1 else {dsn!r})
db = {database!r}
exists = c.command(f"EXISTS TABLE {{db}}.events_statistics")
if not exists:
    print(json.dumps({{"count": 0, "distinct": 0, "paths": 0}}))
else:
    n, d, p = c.query(f"SELECT count(), uniqExact(event_id), uniqExact(path) FROM {{db}}.events_statistics").result_rows[0]
    print(json.dumps({{"count": int(n), "distinct": int(d), "paths": int(p)}}))
"""


def count_in_subprocess(dsn: str, database: str = "consentmw") -> dict[str, int]:
    return run_script(COUNT_SCRIPT.format(dsn=dsn, database=database))


def count(ch: Any, database: str, table: str = "events_statistics") -> tuple[int, int]:
    n, d = ch.query(f"SELECT count(), uniqExact(event_id) FROM {database}.{table}").result_rows[0]
    return int(n), int(d)
