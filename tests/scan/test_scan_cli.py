"""`consentmw scan` on the command line: exit codes, outputs, bounds, one-line errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.scan.conftest import ScanSite
from tests.scan.sites import Server

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 240, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "consentmw", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


# -- no browser needed ---------------------------------------------------------------
def test_without_playwright_says_what_to_install() -> None:
    code = ("import sys; sys.modules['playwright'] = None; sys.modules['playwright.async_api'] = None\n"
            "from consentmw.cli import main; sys.exit(main(['scan', 'http://127.0.0.1:9/']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2
    assert "pip install 'consentmw[scan]'" in one_line(res.stderr)


@pytest.mark.parametrize("args, message", [
    (["ftp://example.org/"], "not an http(s) URL"),
    (["javascript:alert(1)"], "not an http(s) URL"),
    (["http://127.0.0.1:99999/"], "bad port"),
    (["http://127.0.0.1/", "--browser", "/nonexistent/chromium"], "--browser /nonexistent/chromium: not an executable"),
    (["http://127.0.0.1/", "--max-pages", "0"], "--max-pages must be between"),
    (["http://127.0.0.1/", "--max-seconds", "-1"], "--max-seconds must be positive"),
    (["http://127.0.0.1/", "--concurrency", "0"], "--concurrency must be between"),
    (["http://127.0.0.1/", "--fail-on", "sometimes"], "invalid choice"),
])
def test_bad_input_is_one_line(args: list[str], message: str) -> None:
    res = cli("scan", *args, timeout=60)
    assert res.returncode == 2
    assert message in one_line(res.stderr)


@pytest.mark.browser
def test_unreachable_site_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # closed again: nothing listens there
    res = cli("scan", f"http://127.0.0.1:{port}/", timeout=120)
    assert res.returncode == 2
    assert "could not load" in one_line(res.stderr) and "ERR_CONNECTION_REFUSED" in res.stderr


# -- against the test site ----------------------------------------------------------------


@pytest.mark.browser
def test_fail_on_violation_exits_non_zero_with_json_and_html(test_site: ScanSite, tmp_path: Path) -> None:
    out_json, out_html = tmp_path / "scan.json", tmp_path / "scan.html"
    res = cli("scan", test_site.url + "/ungated", "--max-pages", "1", "--fail-on", "violation",
              "--json", str(out_json), "--html", str(out_html))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "VIOLATIONS (4):" in res.stdout and "FAIL: 4 violation(s)" in res.stdout
    # one entry per thing and source, naming both modes it happened in
    assert res.stdout.count("/ungated  [no choice yet, after Reject all]") == 2
    assert "= Meta Pixel" in res.stdout and f"from: document.cookie in script {test_site.third}/tracker.js:1" in res.stdout
    data = json.loads(out_json.read_text())
    assert data["summary"]["violation"] == 4 and data["summary"]["pages"] == 1
    kinds = sorted((f["mode"], f["kind"]) for f in data["pages"][0]["findings"] if f["severity"] == "violation")
    assert kinds == [("none", "cookie"), ("none", "request"), ("reject", "cookie"), ("reject", "request")]
    assert set(data["pages"][0]["observations"]) == {"none", "reject", "accept"}
    page = out_html.read_text()
    assert page.count('<div class="col">') == 3     # three columns side by side
    assert "no choice yet" in page and "after Reject all" in page and "after Accept all" in page
    assert "<script" not in page.lower() and "http-equiv=\"Content-Security-Policy\"" in page
    # without --fail-on the same scan exits 0; --json - prints JSON on stdout, the summary on stderr
    res = cli("scan", test_site.url + "/ungated", "--max-pages", "1", "--json", "-")
    assert res.returncode == 0 and json.loads(res.stdout)["summary"]["violation"] == 4
    assert "FAIL: 4 violation(s)" in res.stderr


@pytest.mark.browser
def test_warning_level_fails_on_a_page_without_banner(test_site: ScanSite) -> None:
    res = cli("scan", test_site.url + "/nobanner", "--max-pages", "1", "--fail-on", "violation")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no consentmw banner on this page" in res.stdout
    res = cli("scan", test_site.url + "/nobanner", "--max-pages", "1", "--fail-on", "warning")
    assert res.returncode == 1


@pytest.mark.browser
def test_include_exclude_and_max_pages(test_site: ScanSite, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    res = cli("scan", test_site.url + "/", "--include", "/gate*", "--include", "/compliant", "--exclude", "/gated",
              "--json", str(out))
    assert res.returncode == 0, res.stderr
    pages = [p["url"][len(test_site.url):] for p in json.loads(out.read_text())["pages"]]
    assert pages == ["/", "/compliant"]
    res = cli("scan", test_site.url + "/", "--max-pages", "3", "--json", str(out))
    data = json.loads(out.read_text())
    assert len(data["pages"]) == 3 and data["stopped"].startswith("--max-pages 3 reached")
    assert "stopped early: --max-pages 3 reached" in res.stdout


@pytest.mark.browser
def test_max_seconds_stops_starting_pages(test_site: ScanSite, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    cli("scan", test_site.url + "/", "--max-seconds", "0.01", "--concurrency", "1", "--json", str(out))
    data = json.loads(out.read_text())
    assert len(data["pages"]) == 1 and data["stopped"] == "--max-seconds 0.01 reached"


@pytest.mark.browser
def test_hostile_names_are_escaped(test_site: ScanSite, tmp_path: Path) -> None:
    html_out = tmp_path / "h.html"
    res = cli("scan", test_site.url + "/hostile", "--max-pages", "1", "--html", str(html_out))
    assert res.returncode == 0
    assert "\x1b" not in res.stdout                    # no terminal escapes from the page
    page = html_out.read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


# -- any site, not only consentmw ones -----------------------------------------------------
@pytest.mark.browser
def test_site_without_consentmw_lists_what_is_set_before_interaction(test_site: ScanSite) -> None:
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    async def home(request: Any) -> HTMLResponse:
        return HTMLResponse(f"""<!doctype html><html><head><title>Shop</title>
<script src="{test_site.third}/tracker.js"></script></head><body><a href="/about">about</a></body></html>""",
                            headers={"Set-Cookie": "sessionid=abc; Path=/; HttpOnly"})

    async def about(request: Any) -> HTMLResponse:
        return HTMLResponse("<!doctype html><html><body>about us</body></html>")

    with Server(Starlette(routes=[Route("/", home), Route("/about", about)])) as plain:
        res = cli("scan", plain.url + "/", "--fail-on", "violation")
    assert res.returncode == 1
    out = res.stdout
    assert "this site has no consentmw banner: listing what its pages set before any interaction" in out
    assert "cookie sessionid (127.0.0.1, first-party, session)" in out and "Set-Cookie in the response to" in out
    assert "cookie _fbp" in out and "request to 127.0.0.2" in out
    assert "after Reject all]" not in out    # nothing to click: only the first visit is judged


@pytest.mark.browser
def test_declared_necessary_cookie_is_not_a_violation(test_site: ScanSite, tmp_path: Path) -> None:
    policy = tmp_path / "consent.toml"
    policy.write_text('version = "t1"\nupdated = 2026-11-30\n'
                      '[[purposes]]\nid = "necessary"\nrequired = true\ncookies = ["_ga", "_g?d"]\nstorage = ["analytics_*", "session_*", "tracker-db"]\n'
                      '[purposes.texts.en]\ntitle = "Necessary"\n'
                      '[[purposes]]\nid = "statistics"\n[purposes.texts.en]\ntitle = "Statistics"\n')
    res = cli("scan", test_site.url + "/analytics-cookie", "--max-pages", "1", "--policy", str(policy),
              "--fail-on", "violation")
    assert res.returncode == 0, res.stdout + res.stderr


# -- the demo site scans clean --------------------------------------------------------------
@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "consentmw", "demo", "--port", str(port),
                             "--data-dir", str(tmp_path / "data")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"demo did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(30)


@pytest.mark.browser
def test_demo_site_scans_clean(demo_server: str, tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    res = cli("scan", demo_server, "--fail-on", "violation", "--json", str(out), timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(out.read_text())
    assert data["summary"]["violation"] == 0 and data["summary"]["warning"] == 0
    assert len(data["pages"]) >= 6 and data["consentmw_banner"]
    # every page: banner shown, Reject and Accept recorded; gated scripts ran only after Accept
    for page in data["pages"]:
        obs = page["observations"]
        assert obs["none"]["banner"]["shown"] and obs["reject"]["banner"]["working"] and obs["accept"]["banner"]["working"]
        assert not any(g["ran"] for m in ("none", "reject") for g in obs[m]["gated"])
        assert {g["purposes"][0] for g in obs["accept"]["gated"] if g["ran"]} == {"marketing", "statistics"}
    assert "clean: 0 violation(s), 0 warning(s)" in res.stdout


@pytest.mark.browser
def test_progress_bar_on_a_terminal(test_site: ScanSite) -> None:
    import pty

    master, slave = pty.openpty()
    try:
        res = subprocess.run([sys.executable, "-m", "consentmw", "scan", test_site.url + "/compliant", "--max-pages", "1"],
                             stdout=subprocess.PIPE, stderr=slave, text=True, timeout=240, cwd=ROOT)
    finally:
        os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    assert res.returncode == 0
    text = drawn.decode()
    assert "scan [" in text and "100.0% 3/3 page visits" in text, text
    assert "scan [" not in res.stdout     # the bar goes to the terminal, the summary to stdout


@pytest.mark.browser
def test_scans_localhost_by_name(test_site: ScanSite, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    port = test_site.url.rsplit(":", 1)[1]
    res = cli("scan", f"http://localhost:{port}/compliant", "--max-pages", "1", "--fail-on", "violation",
              "--browser", "/usr/bin/chromium",
              "--json", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    reject = json.loads(out.read_text())["pages"][0]["observations"]["reject"]
    assert [(c["name"], c["domain"], c["party"]) for c in reject["cookies"]] == [("consentmw", "localhost", "first")]
