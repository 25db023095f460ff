"""Behind a TLS-terminating proxy, over real HTTP: a uvicorn subprocess on 127.0.0.1 (its own
proxy-header handling off, so only consentmw's `trusted_proxies` decides), spoken to as a
proxy would speak to it. One setting decides the client address, the scheme and the host, for
the Origin check and the cookie's Secure flag alike."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BROWSER_UA, SECRET
from tests.faults.helpers import HERE, closed_port, python_env

OFFLINE_DSN = "http://127.0.0.1:9"  # HTTP behaviour only: events go to the spool


class Uvicorn:
    def __init__(self, tmp: Path, trusted: str, **env: str) -> None:
        self.port = closed_port()
        self.log_path = tmp / f"uvicorn-{self.port}.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "app_server:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", "--no-proxy-headers"],
            env=python_env(CONSENTMW_SECRET_KEY=SECRET, CONSENTMW_CLICKHOUSE_DSN=OFFLINE_DSN,
                           CONSENTMW_SPOOL_DIR=str(tmp / f"spool-{self.port}"),
                           CONSENTMW_TRUSTED_PROXIES=trusted, **env),
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/_consent/state", [("host", "shop.example")])[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
            assert self.proc.poll() is None, self.log_path.read_text(errors="replace")
        raise AssertionError("uvicorn did not start: " + self.log_path.read_text(errors="replace"))

    def request(self, method: str, path: str, headers: list[tuple[str, str]] | None = None,
                body: bytes | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers or []:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("content-length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            return r.status, r.getheaders(), r.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("proxies")
    trusted = Uvicorn(tmp, "127.0.0.1")        # the test client stands where the proxy would
    untrusted = Uvicorn(tmp, "10.0.0.0/8")     # the same bytes from a peer nobody listed
    yield trusted, untrusted
    trusted.stop()
    untrusted.stop()


def choice(server: Uvicorn, *headers: tuple[str, str]) -> tuple[int, list[str], bytes]:
    body = json.dumps({"all": True}).encode()
    status, got, answer = server.request("POST", "/_consent/choice", [
        ("user-agent", BROWSER_UA), ("content-type", "application/json"), *headers], body)
    return status, [v for k, v in got if k.lower() == "set-cookie"], answer


PROXY = (("host", "shop.example"), ("x-forwarded-proto", "https"), ("x-forwarded-for", "198.51.100.7"),
         ("origin", "https://shop.example"), ("sec-fetch-site", "same-origin"))


def test_trusted_proxy_with_https_origin_is_accepted_and_the_cookie_is_secure(servers: Any) -> None:
    trusted, _ = servers
    status, cookies, body = choice(trusted, *PROXY)
    assert status == 200, body
    consent = [c for c in cookies if "consentmw=" in c and "max-age=0" not in c.lower()]
    assert len(consent) == 1 and "secure" in consent[0].lower(), cookies


def test_the_same_headers_from_an_untrusted_peer_are_refused(servers: Any) -> None:
    _, untrusted = servers
    status, cookies, body = choice(untrusted, *PROXY)
    assert status == 403, body
    assert b"Origin does not match" in body and cookies == []


def test_x_forwarded_proto_from_an_untrusted_peer_never_sets_secure(servers: Any) -> None:
    _, untrusted = servers
    status, cookies, body = choice(untrusted, ("host", "shop.example"), ("x-forwarded-proto", "https"))
    assert status == 200, body
    assert cookies and not any("secure" in c.lower() for c in cookies), cookies
    assert not any(c.startswith("__Host-") for c in cookies)


def test_proxy_that_rewrites_host_passes_the_public_host_in_x_forwarded_host(servers: Any) -> None:
    trusted, untrusted = servers
    headers = (("host", "127.0.0.1:8000"), ("x-forwarded-host", "shop.example"), ("x-forwarded-proto", "https"),
               ("x-forwarded-for", "198.51.100.7"), ("origin", "https://shop.example"))
    assert choice(trusted, *headers)[0] == 200
    assert choice(untrusted, *headers)[0] == 403
