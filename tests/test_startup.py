"""Invalid settings stop the server at start-up, with the reason, under real uvicorn.

Starlette builds its middleware stack lazily, inside the first ASGI call (the lifespan
startup). A middleware that raised there used to read as "lifespan unsupported" to
uvicorn, which then served a 500 with a traceback to every request and exited 0 at the
end. Each case below is a real `uvicorn` subprocess that must exit non-zero, promptly,
naming what is wrong.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.faults.helpers import python_env

SECRET = "startup-test-secret-0123456789"

STARLETTE_APP = textwrap.dedent("""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from consentmw import ConsentMiddleware

    async def home(request):
        return PlainTextResponse("home")

    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(ConsentMiddleware)   # every setting from CONSENTMW_* variables
""")

DIRECT_APP = textwrap.dedent("""
    from starlette.applications import Starlette
    from consentmw import ConsentMiddleware
    app = ConsentMiddleware(Starlette())    # built at import: raises there
""")


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = python_env(CONSENTMW_SPOOL_DIR=str(tmp_path / "spool"),
                     CONSENTMW_CLICKHOUSE_DSN="chdb://" + str(tmp_path / "data"))
    env.update(settings)
    return {k: v for k, v in env.items() if v != ""}


def _uvicorn(tmp_path: Path, source: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "siteapp.py").write_text(source)
    return subprocess.run([sys.executable, "-m", "uvicorn", "siteapp:app", "--host", "127.0.0.1", "--port", "0",
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


BAD = {
    "missing secret": ({"CONSENTMW_SECRET_KEY": ""}, "secret_key is required"),
    "short secret": ({"CONSENTMW_SECRET_KEY": "short"}, "at least 16 characters"),
    "missing policy file": ({"CONSENTMW_POLICY": "/nonexistent/consent.toml"}, "policy file not found"),
    "invalid policy": ({"CONSENTMW_POLICY": "@bad.toml"}, "retention_days"),
    "unknown DSN scheme": ({"CONSENTMW_CLICKHOUSE_DSN": "postgres://db/consent"}, "unsupported scheme 'postgres'"),
    "bad DSN port": ({"CONSENTMW_CLICKHOUSE_DSN": "http://clickhouse:81x23/"}, "is not a valid URL"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_settings_fail_the_lifespan_startup(tmp_path: Path, case: str) -> None:
    settings, reason = BAD[case]
    settings = {"CONSENTMW_SECRET_KEY": SECRET, **settings}
    if settings.get("CONSENTMW_POLICY") == "@bad.toml":
        bad = tmp_path / "bad.toml"
        bad.write_text('version = "1"\nupdated = "2026-01-01"\n[[purposes]]\nid = "statistics"\n'
                       'categories = ["page"]\nretention_days = 0\n')
        settings["CONSENTMW_POLICY"] = str(bad)
    started = time.monotonic()
    proc = _uvicorn(tmp_path, STARLETTE_APP, _env(tmp_path, **settings))
    assert time.monotonic() - started < 30
    log = proc.stderr
    assert proc.returncode != 0, log
    assert reason in log, log
    assert "Application startup failed" in log
    assert "appears unsupported" not in log and "Uvicorn running" not in log
    assert "Traceback" not in log  # one reason, not a stack


def test_direct_construction_raises_at_import(tmp_path: Path) -> None:
    proc = _uvicorn(tmp_path, DIRECT_APP, _env(tmp_path, CONSENTMW_SECRET_KEY="short"))
    assert proc.returncode != 0
    assert "SettingsError: secret_key: each key must be at least 16 characters" in proc.stderr


def test_without_lifespan_every_request_gets_a_plain_500(tmp_path: Path) -> None:
    """`--lifespan off`: nothing to fail at start-up, so requests get a short 500 (no traceback
    to the client) and the reason is logged once."""
    (tmp_path / "siteapp.py").write_text(STARLETTE_APP)
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "siteapp:app", "--host", "127.0.0.1", "--port", "0",
                               "--lifespan", "off"], cwd=tmp_path, env=_env(tmp_path, CONSENTMW_SECRET_KEY="short"),
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        port = 0
        deadline = time.monotonic() + 30
        while not port and time.monotonic() < deadline:
            line = server.stderr.readline()
            if "Uvicorn running on" in line:
                port = int(line.split("http://127.0.0.1:")[1].split()[0])
        assert port
        for _ in range(2):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
            assert err.value.code == 500
            assert err.value.read() == b"Internal Server Error: the server is misconfigured\n"
    finally:
        server.terminate()
        _, rest = server.communicate(timeout=30)
    assert rest.count("at least 16 characters") == 1 and "Traceback" not in rest


def test_valid_settings_start_and_serve(tmp_path: Path) -> None:
    """The control: the same app with valid settings starts and answers."""
    (tmp_path / "siteapp.py").write_text(STARLETTE_APP)
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "siteapp:app", "--host", "127.0.0.1", "--port", "0"],
                              cwd=tmp_path, env=_env(tmp_path, CONSENTMW_SECRET_KEY=SECRET),
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        port = 0
        deadline = time.monotonic() + 60
        seen = []
        while not port and time.monotonic() < deadline:
            line = server.stderr.readline()
            seen.append(line)
            if "Uvicorn running on" in line:
                port = int(line.split("http://127.0.0.1:")[1].split()[0])
        assert port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200 and r.read() == b"home"
    finally:
        server.terminate()
        _, rest = server.communicate(timeout=30)
    log = "".join(seen) + rest
    assert "Application startup complete" in log and "Traceback" not in log
