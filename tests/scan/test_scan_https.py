"""`consentmw scan` on an HTTPS site (self-signed certificate made with openssl for the test)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from consentmw import ConsentMiddleware
from tests.scan.sites import Server, first_party_app
from tests.scan.test_scan_cli import cli, one_line

pytestmark = pytest.mark.browser


@pytest.fixture
def https_site(chdb_dsn: str, database: str, tmp_path: Path) -> Iterator[str]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the test certificate"
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    app = ConsentMiddleware(first_party_app("https://127.0.0.2:9"), secret_key="https-scan-secret-0123456789",
                            clickhouse_dsn=chdb_dsn, database=database, spool_dir=str(tmp_path / "spool"),
                            flush_interval=0.2)
    with Server(app, ssl_keyfile=str(key), ssl_certfile=str(cert)) as server:
        yield server.url
    for t in getattr(app.collector.writer, "_threads", None) or ():
        t.join(10)


def test_scans_an_https_site(https_site: str, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    res = cli("scan", https_site + "/compliant", "--max-pages", "1", "--ignore-https-errors",
              "--fail-on", "violation", "--json", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    page: Any = json.loads(out.read_text())["pages"][0]
    reject = page["observations"]["reject"]
    # the consent cookie only (CONTRACT.md names it __Host-consentmw on HTTPS; either name is necessary)
    assert reject["banner"]["working"] and len(reject["cookies"]) == 1
    assert reject["cookies"][0]["name"] in ("consentmw", "__Host-consentmw")
    assert page["observations"]["accept"]["banner"]["working"]


def test_untrusted_certificate_is_one_line(https_site: str) -> None:
    res = cli("scan", https_site + "/compliant", "--max-pages", "1")
    assert res.returncode == 2
    assert "ERR_CERT_AUTHORITY_INVALID" in one_line(res.stderr)
