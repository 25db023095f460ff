"""Several workers on the embedded store, with real servers: uvicorn --workers, gunicorn -w
(uvicorn workers) and hypercorn -w must stop with a non-zero status and one line naming the
fix; a gunicorn graceful reload (HUP) during a request keeps the site up, the new worker
waiting for the old one to release the chDB directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import SECRET
from tests.faults.helpers import python_env

BIN = Path(sys.executable).parent

APP = """
import asyncio, os
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from consentmw import ConsentMiddleware

async def home(request):
    return PlainTextResponse(f"pid={os.getpid()}")

async def slow(request):
    await asyncio.sleep(float(request.query_params.get("s", "3")))
    return PlainTextResponse(f"slow pid={os.getpid()}")

app = ConsentMiddleware(Starlette(routes=[Route("/", home), Route("/slow", slow)]))
"""

SERVERS = {
    "uvicorn": [sys.executable, "-m", "uvicorn", "wapp:app", "--host", "127.0.0.1", "--port", "0", "--workers", "2"],
    "gunicorn": [str(BIN / "gunicorn"), "-w", "2", "-k", "uvicorn_worker.UvicornWorker", "-b", "127.0.0.1:0",
                 "--no-control-socket", "wapp:app"],
    "hypercorn": [str(BIN / "hypercorn"), "-w", "2", "-b", "127.0.0.1:0", "wapp:app"],
}


def site(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "wapp.py").write_text(APP)
    return python_env(CONSENTMW_SECRET_KEY=SECRET, CONSENTMW_CLICKHOUSE_DSN=f"chdb://{tmp_path / 'data'}",
                      CONSENTMW_SPOOL_DIR=str(tmp_path / "spool"))


def processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is `directory` (our servers' leftovers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd") == str(directory):
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_several_workers_on_the_embedded_store_exit_non_zero_with_the_fix(tmp_path: Path, server: str) -> None:
    proc = subprocess.run(SERVERS[server], cwd=tmp_path, env=site(tmp_path), capture_output=True, text=True,
                          timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    lines = [line for line in output.splitlines() if f"consentmw: {server} runs 2 worker processes" in line]
    assert lines, output[-3000:]
    assert "run one worker" in lines[0] and "ClickHouse server" in lines[0]
    # Our refusal is never a traceback. (gunicorn may print one for its other worker, stopped
    # by the master while still importing the app: its SystemExit, not our refusal.)
    assert "_StartupRefused" not in output and "StoreLockedError" not in output
    if server != "gunicorn":
        assert "Traceback" not in output
    deadline = time.monotonic() + 15
    while processes_in(tmp_path) and time.monotonic() < deadline:  # no worker is left behind
        time.sleep(0.2)
    assert not processes_in(tmp_path)


def get(url: str, timeout: float = 60) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200
        return response.read().decode()


def test_a_gunicorn_reload_during_a_request_keeps_the_site_up(tmp_path: Path) -> None:
    log = open(tmp_path / "gunicorn.log", "w+")
    master = subprocess.Popen([str(BIN / "gunicorn"), "-w", "1", "-k", "uvicorn_worker.UvicornWorker",
                               "-b", "127.0.0.1:0", "--no-control-socket", "wapp:app"],
                              cwd=tmp_path, env=site(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        port = None
        while port is None or "Application startup complete" not in (tmp_path / "gunicorn.log").read_text():
            assert master.poll() is None and time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", (tmp_path / "gunicorn.log").read_text())
            port = int(found.group(1)) if found else None
            time.sleep(0.2)
        base = f"http://127.0.0.1:{port}"
        old = get(base + "/")
        slow: list[str] = []
        request = threading.Thread(target=lambda: slow.append(get(base + "/slow?s=6")))
        request.start()
        time.sleep(0.5)  # the request is in flight in the old worker
        master.send_signal(signal.SIGHUP)
        request.join(60)
        assert slow == [f"slow {old}"]  # the old worker finished its request
        new = get(base + "/", timeout=60)  # queued until the new worker has the store
        assert new != old and master.poll() is None
        assert get(base + "/") == new
        text = (tmp_path / "gunicorn.log").read_text()
        assert "still holds" in text and "exited with code 3" not in text
    finally:
        master.send_signal(signal.SIGTERM)
        code = master.wait(60)
        log.close()
    assert code == 0
