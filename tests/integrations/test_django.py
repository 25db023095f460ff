"""Django integration with a real Django ASGI project under uvicorn: configuration from
settings.CONSENTMW, the consent endpoints, consent_of in views, `{% consent_banner %}` (also
below a --root-path), clear failures for a bad CONSENTMW and for WSGI requests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import BROWSER_UA
from tests.faults.helpers import ROOT, python_env


def _serve(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.django_site.asgi:application", "--host",
                             "127.0.0.1", "--port", "0", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env=python_env(TEST_CHDB_DIR=str(tmp_path / "data"), **env))
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
        if found:
            return proc, int(found.group(1))
    proc.kill()
    raise AssertionError("the Django site did not start: " + (proc.stderr.read() or ""))


def _get(port: int, path: str, method: str = "GET", body: bytes | None = None,
         **headers: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                 headers={"user-agent": BROWSER_UA, **headers})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


@pytest.fixture
def django_site(tmp_path: Path) -> Iterator[int]:
    proc, port = _serve(tmp_path)
    yield port
    proc.terminate()
    proc.communicate(timeout=30)


def test_django_asgi_site_with_settings_and_template_tag(django_site: int) -> None:
    port = django_site
    status, _, body = _get(port, "/")
    assert status == 200
    assert b'<script src="/_consent/banner.js" defer></script>' in body
    assert b'<script src="/_consent/banner.js" nonce="n0nce" defer></script>' in body
    assert _get(port, "/_consent/banner.js")[0] == 200
    assert json.loads(_get(port, "/granted")[2]) == {"granted": ["necessary"]}
    status, headers, body = _get(port, "/_consent/choice", "POST", json.dumps({"all": True}).encode(),
                                 **{"content-type": "application/json"})
    assert status == 200, body
    cookie = headers["set-cookie"].split(";")[0]
    granted = json.loads(_get(port, "/granted", cookie=cookie)[2])
    assert granted == {"granted": ["marketing", "necessary", "personalisation", "statistics"]}


def test_template_tag_below_a_root_path(tmp_path: Path) -> None:
    proc, port = _serve(tmp_path, "--root-path", "/blog")
    try:
        status, _, body = _get(port, "/")
        assert status == 200 and b'<script src="/blog/_consent/banner.js" defer></script>' in body
        status, _, body = _get(port, "/_consent/banner.js")
        assert status == 200 and b'"p":"/blog/_consent"' in body
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.parametrize(("env", "message"), [
    ({"TEST_CONSENTMW_EXTRA": "secret_kee"}, "settings.CONSENTMW: got an unexpected keyword argument 'secret_kee'"),
    ({"TEST_CONSENTMW_SECRET": "short"}, "secret_key: each key must be at least 16 characters"),
])
def test_bad_consentmw_settings_stop_the_server(tmp_path: Path, env: dict[str, str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "uvicorn", "tests.django_site.asgi:application", "--port", "0"],
                          cwd=ROOT, env=python_env(TEST_CHDB_DIR=str(tmp_path / "data"), **env),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]


WSGI = textwrap.dedent("""
    import os, sys
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.django_site.settings"
    import django
    django.setup()
    from django.test import RequestFactory
    from consentmw import WSGINotSupported, consent_of
    request = RequestFactory().get("/")          # a WSGIRequest, as runserver or a WSGI server makes
    for what in (request, request.environ):
        try:
            consent_of(what)
        except WSGINotSupported as exc:
            print("refused:", exc)
""")


def test_wsgi_requests_are_refused_clearly(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", WSGI], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=python_env(TEST_CHDB_DIR=str(tmp_path / "data")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("refused: consentmw works with ASGI only") for line in lines)
