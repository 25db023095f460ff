"""A loopback ClickHouse HTTP interface answered by chDB, for testing the server path.

No modern ClickHouse server binary is installable here, so this stands in for one: a
`ThreadingHTTPServer` on 127.0.0.1 that checks credentials the way ClickHouse does (HTTP
Basic, `X-ClickHouse-User`/`X-ClickHouse-Key`, or `user`/`password` URL parameters; a
wrong one gets exception 516 AUTHENTICATION_FAILED), takes the query from the URL and/or
the body, applies URL settings, runs it in chDB in this process and answers in the format
the client asked for (`FORMAT x` in the query, else `default_format`), with ClickHouse's
response headers (`X-ClickHouse-Format`, `X-ClickHouse-Exception-Code`, ...).

Inserts with data (`INSERT INTO t (cols) FORMAT Native|Arrow` plus the data, as the body or
after the statement's first line) are written to a temporary file and run as
`INSERT ... FROM INFILE`, the way clickhouse-connect's own chDB backend does it. Request
bodies compressed with lz4/zstd/gzip are decompressed; answers are never compressed
(the client reads an identity answer whatever it offered).

Not covered: sessions, external data, progress headers, cancellation.

    python -m tests.chhttp DIR USER PASSWORD   # prints the port, serves until killed
"""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import os
import re
import ssl
import sys
import tempfile
import threading
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

#: URL parameters of ClickHouse's HTTP interface that are not query settings
_TRANSPORT = frozenset({
    "query", "database", "user", "password", "default_format", "query_id", "session_id",
    "session_timeout", "session_check", "compress", "decompress", "enable_http_compression",
    "http_zlib_compression_level", "wait_end_of_query", "send_progress_in_http_headers",
    "http_headers_progress_interval_ms", "buffer_size", "quota_key", "client_protocol_version",
    "cancel_http_readonly_queries_on_client_close", "max_result_bytes", "result_overflow_mode",
    "http_response_buffer_size", "date_time_output_format",
})
_INSERT_WITH_DATA = re.compile(r"^\s*INSERT\s+INTO\s+(?P<target>.+?)\s+FORMAT\s+(?P<fmt>\w+)\s*$",
                               re.IGNORECASE | re.DOTALL)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE = re.compile(r"Code: (\d+)")


class ClickHouseError(Exception):
    def __init__(self, code: int, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.code, self.status = code, status


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(body))
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    raise ClickHouseError(1, f"Code: 1. DB::Exception: unsupported Content-Encoding {encoding!r}", 400)


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


class ChdbHttpServer:
    """Serves ClickHouse's HTTP interface from the chDB directory `path` (this process's)."""

    def __init__(self, path: str, user: str = "default", password: str = "",
                 tls: tuple[str, str] | None = None) -> None:
        """`tls=(certfile, keyfile)` serves HTTPS instead of HTTP."""
        import chdb

        self.user, self.password = user, password
        self.conn = chdb.connect(path)
        self.lock = threading.Lock()
        self.queries: list[str] = []
        self.auth_failures = 0
        self.refused: list[str] = []  # what each refused request asked, for a failing test's message
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer._handle(self)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.conn.close()

    # -- one request ------------------------------------------------------------
    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(request.headers.get("content-length") or 0)
        body = request.rfile.read(length) if length else self._read_chunked(request)
        try:
            if url.path in ("/ping", "/"):
                if url.path == "/ping" or (not params.get("query") and not body):
                    return self._answer(request, 200, b"Ok.\n", {})
            self._authenticate(request, params, body)
            body = _decompress(body, request.headers.get("content-encoding", ""))
            out, fmt = self._execute(params, body)
            self._answer(request, 200, out, {"X-ClickHouse-Format": fmt} if fmt else {})
        except ClickHouseError as exc:
            self._answer(request, exc.status, (str(exc) + "\n").encode(),
                         {"X-ClickHouse-Exception-Code": str(exc.code)})

    @staticmethod
    def _read_chunked(request: http.server.BaseHTTPRequestHandler) -> bytes:
        if request.headers.get("transfer-encoding", "").lower() != "chunked":
            return b""
        parts = []
        while True:
            size = int(request.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                request.rfile.readline()
                return b"".join(parts)
            parts.append(request.rfile.read(size))
            request.rfile.readline()

    @staticmethod
    def _answer(request: http.server.BaseHTTPRequestHandler, status: int, body: bytes,
                headers: dict[str, str]) -> None:
        request.send_response(status)
        request.send_header("Content-Type", "text/plain; charset=UTF-8")
        request.send_header("Content-Length", str(len(body)))
        request.send_header("X-ClickHouse-Server-Display-Name", "chhttp-test")
        request.send_header("X-ClickHouse-Timezone", "UTC")
        request.send_header("X-ClickHouse-Summary", json.dumps({"read_rows": "0", "written_rows": "0"}))
        for key, value in headers.items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(body)

    def _authenticate(self, request: http.server.BaseHTTPRequestHandler, params: dict[str, str],
                      body: bytes = b"") -> None:
        user, key = params.get("user"), params.get("password")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                user, key = "", None
        if request.headers.get("x-clickhouse-user") is not None:
            user, key = request.headers["x-clickhouse-user"], request.headers.get("x-clickhouse-key", "")
        user = user or "default"
        if user != self.user or (key or "") != self.password:
            self.auth_failures += 1
            self.refused.append(f"{time.monotonic():.2f} {(params.get('query') or body)[:100]!r}")
            raise ClickHouseError(516, f"Code: 516. DB::Exception: {user}: Authentication failed: password is "
                                       "incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)", 403)

    def _execute(self, params: dict[str, str], body: bytes) -> tuple[bytes, str]:
        query = params.get("query", "")
        data = b""
        if query:
            data = body
        else:
            text, _, rest = body.partition(b"\n")
            if _INSERT_WITH_DATA.match(text.decode("utf-8", "replace")):
                query, data = text.decode(), rest
            else:
                query = body.decode("utf-8", "replace")
        settings = {k: v for k, v in params.items() if k not in _TRANSPORT and not k.startswith("param_")}
        bind = {k[len("param_"):]: v for k, v in params.items() if k.startswith("param_")}
        self.queries.append(query)
        with self.lock:
            self._use(params.get("database") or "default")
            applied = self._set(settings)
            try:
                insert = _INSERT_WITH_DATA.match(query)
                if insert and data:
                    return self._insert(insert["target"], insert["fmt"], data), ""
                fmt_match = _TRAILING_FORMAT.search(query)
                fmt = fmt_match.group(1) if fmt_match else params.get("default_format", "TabSeparated")
                if fmt_match:
                    query = query[:fmt_match.start()]
                result = self._run(query, fmt, bind)
                return result.bytes() or b"", fmt
            finally:
                for name in applied:
                    self._run(f"SET {name} = DEFAULT", "TabSeparated")

    def _use(self, database: str) -> None:
        self._run(f"USE `{database.replace('`', '')}`", "TabSeparated")

    def _set(self, settings: dict[str, str]) -> list[str]:
        applied = []
        for name, value in settings.items():
            if not _SETTING_NAME.match(name):
                raise ClickHouseError(115, f"Code: 115. DB::Exception: Unknown setting {name}. (UNKNOWN_SETTING)")
            self._run(f"SET {name} = {_quote(value)}", "TabSeparated")
            applied.append(name)
        return applied

    def _insert(self, target: str, fmt: str, data: bytes) -> bytes:
        with tempfile.NamedTemporaryFile(suffix=".data", delete=False) as tmp:
            tmp.write(data)
        try:
            self._run(f"INSERT INTO {target} FROM INFILE {_quote(tmp.name)} FORMAT {fmt}", "TabSeparated")
        finally:
            os.unlink(tmp.name)
        return b""

    def _run(self, sql: str, fmt: str, bind: dict[str, str] | None = None) -> Any:
        try:
            return self.conn.query(sql, fmt, params=bind or {})
        except Exception as exc:  # noqa: BLE001 - chDB raises plain RuntimeErrors
            message = str(exc)
            start = message.find("Code: ")
            message = message[start:].strip() if start >= 0 else message.strip()
            code_match = _CODE.search(message)
            code = int(code_match.group(1)) if code_match else 1
            status = {81: 404, 60: 404, 62: 400, 516: 403, 497: 403}.get(code, 500)
            raise ClickHouseError(code, message, status) from None


def main() -> None:
    path, user, password = sys.argv[1], sys.argv[2], sys.argv[3]
    server = ChdbHttpServer(path, user, password)
    print(server.port, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
