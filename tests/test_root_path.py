"""An app below a path prefix: `uvicorn --root-path /shop` and a Starlette `Mount("/shop")`.

Real uvicorn subprocesses, real HTTP: the consent endpoints answer under the prefix, the
banner's generated config points at the prefixed URLs, a choice sets the cookie and is
stored in the ledger, and pages below the prefix are captured with their full path.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import BROWSER_UA
from tests.faults.helpers import ROOT, python_env

SECRET = "root-path-test-secret-0123456789"


class Served:
    """`uvicorn --factory tests.mounted_site:create` on a free port; stopped (drained) by `stop`."""

    def __init__(self, tmp_path: Path, mount: bool, *args: str) -> None:
        env = python_env(CONSENTMW_SECRET_KEY=SECRET, CONSENTMW_CLICKHOUSE_DSN="chdb://" + str(tmp_path / "data"),
                         CONSENTMW_SPOOL_DIR=str(tmp_path / "spool"), CONSENTMW_ADMIN_TOKEN="admin-token-0123456789")
        if mount:
            env["CONSENTMW_TEST_MOUNT"] = "1"
        self.data = tmp_path / "data"
        #: the path prefix on the wire: a Mount sees it; behind `--root-path` the proxy has removed it
        self.wire = "/shop" if mount else ""
        self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "tests.mounted_site:create", "--host", "127.0.0.1",
                                      "--port", "0", *args], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.port = 0
        deadline = time.monotonic() + 60
        while not self.port and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
        assert self.port, "the server did not start"
        self.url = f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, dict[str, str], bytes]:
        data = json.dumps(body).encode() if body is not None else None
        h = {"user-agent": BROWSER_UA, **({"content-type": "application/json"} if data else {}), **headers}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    def stop(self) -> str:
        self.proc.terminate()
        _, rest = self.proc.communicate(timeout=30)
        return rest


def ledger_rows(data: Path) -> list[tuple[Any, ...]]:
    """Read the stopped server's store from a fresh process (chDB: one process per directory)."""
    code = ("import json, sys, clickhouse_connect\n"
            "c = clickhouse_connect.get_client(dsn='chdb://' + sys.argv[1])\n"
            "rows = c.query('SELECT action, granted, page FROM consentmw.consent_log ORDER BY ts').result_rows\n"
            "pages = c.query('SELECT path FROM consentmw.events_statistics ORDER BY ts').result_rows\n"
            "print(json.dumps({'ledger': [list(r) for r in rows], 'pages': [r[0] for r in pages]}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(data)], env=python_env(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(params=["root-path", "mount"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    if request.param == "mount":
        s = Served(tmp_path, True)
    else:
        s = Served(tmp_path, False, "--root-path", "/shop")
    yield s
    if s.proc.poll() is None:
        s.stop()


def test_consent_endpoints_and_banner_answer_under_the_prefix(served: Served) -> None:
    w = served.wire
    status, headers, body = served.request("GET", w + "/_consent/banner.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    text = body.decode()
    config, _ = json.JSONDecoder().raw_decode(text, text.index('{"p":'))  # the generated config
    assert config["p"] == "/shop/_consent"  # what the browser must call, in both set-ups
    status, _, body = served.request("GET", w + "/_consent/state?lang=en")
    assert status == 200 and json.loads(body)["prompt"] is True
    status, headers, body = served.request("POST", w + "/_consent/choice", {"all": True, "page": "/shop/"},
                                           origin=served.url)
    assert status == 200, body
    cookie = headers["set-cookie"].split(";")[0]
    assert cookie.startswith("consentmw=") and "Path=/" in headers["set-cookie"]
    status, _, body = served.request("GET", w + "/items/lamp", cookie=cookie)
    assert status == 200
    assert b"<p id='granted'>marketing,necessary,personalisation,statistics</p>" in body
    assert b"<script src='/shop/_consent/banner.js' defer>" in body
    # The admin API under the prefix too; wait until the ledger row and the page view are
    # stored (a mounted app gets no lifespan events from Starlette: its store opens lazily).
    deadline = time.monotonic() + 60
    while True:
        status, _, body = served.request("GET", w + "/_consent/health", authorization="Bearer admin-token-0123456789")
        assert status == 200, body
        health = json.loads(body)
        if health["status"] == "ok" and health["stored"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert health["status"] == "ok" and health["stored"] >= 2, health
    if w:  # mounted: the outer app's own paths are not consentmw's
        assert served.request("GET", "/")[2] == b"outer site"
        assert served.request("GET", "/_consent/state")[0] == 404
    log = served.stop()
    assert "Traceback" not in log, log
    stored = ledger_rows(served.data)
    assert [row[0] for row in stored["ledger"]] == ["grant"]
    assert stored["ledger"][0][2] == "/shop/"
    assert stored["pages"] == ["/shop/items/lamp"]  # the path the visitor saw
