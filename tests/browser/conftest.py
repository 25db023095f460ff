"""Browser tests: the demo site served by uvicorn in this process (so the test reads the
same chDB store), driven by Playwright in Debian's headless chromium."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import uvicorn

from consentmw.demo import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
#: Headless Chromium announces itself as "HeadlessChrome", which the collector rightly
#: treats as automation and does not collect; these tests play a visitor's desktop browser.
VISITOR_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/{version} Safari/537.36")


def launch_as_visitor(playwright: Any) -> Any:
    """Debian's Chromium, headless, presenting the user agent of its desktop build."""
    probe = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    version = probe.version
    probe.close()
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        *CHROMIUM_ARGS, "--user-agent=" + VISITOR_UA.format(version=version)])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: runs in a real headless chromium")


class Site:
    """One demo server on a free port, plus helpers to look at what it stored."""

    def __init__(self, app: Any, ch: Any, database: str) -> None:
        self.app = app
        self.ch = ch
        self.database = database
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> "Site":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("demo server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        # the collector's background (connect/migrate/replay) thread too, before the
        # test's database is dropped
        for t in getattr(self.app.collector.writer, "_threads", None) or ():
            t.join(10)

    # -- the store ------------------------------------------------------------
    def query(self, sql: str) -> list[dict[str, Any]]:
        try:
            result = self.ch.query(sql.replace("{db}", self.database))
        except Exception as exc:  # the table may not exist until the writer creates it
            if "UNKNOWN_TABLE" in str(exc) or "doesn't exist" in str(exc) or "UNKNOWN_DATABASE" in str(exc):
                return []
            raise
        return [dict(zip(result.column_names, row)) for row in result.result_rows]

    def wait_rows(self, sql: str, check: Callable[[list[dict[str, Any]]], bool] = bool,
                  timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll until `check(rows)` holds (the writer flushes every flush_interval)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query(sql)
            if check(rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting on {sql!r}; last rows: {rows!r}")
            time.sleep(0.1)

    def settle(self, seconds: float = 1.0) -> None:
        """Let in-flight beacons arrive, then write everything queued (for "nothing stored")."""
        time.sleep(seconds)
        self.app.collector.flush()

    def count(self, table: str, where: str = "1") -> int:
        rows = self.query(f"SELECT count() AS n FROM {{db}}.{table} WHERE {where}")
        return rows[0]["n"] if rows else 0


@pytest.fixture
def site(chdb_dsn: str, database: str, ch: Any, tmp_path: Path) -> Iterator[Site]:
    app = create_app(dsn=chdb_dsn, database=database, spool_dir=str(tmp_path / "spool"), flush_interval=0.2)
    s = Site(app, ch, database).start()
    yield s
    s.stop()


# Module scope: sync Playwright keeps an event loop running in this thread while it is
# open, and later tests call asyncio.run().
@pytest.fixture(scope="module")
def playwright_instance() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright_instance: Any) -> Iterator[Any]:
    b = launch_as_visitor(playwright_instance)
    yield b
    b.close()


class Tab:
    """A page in a fresh context, recording requests, console errors and page errors."""

    def __init__(self, context: Any, site: Site) -> None:
        self.context = context
        self.site = site
        self.page = context.new_page()
        self.requests: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append((r.method, r.url)))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))

    def goto(self, path: str) -> Any:
        return self.page.goto(self.site.url + path)

    def consent_cookie(self) -> dict[str, Any] | None:
        """The decoded payload of the consentmw cookie, or None."""
        for c in self.context.cookies():
            if c["name"] == "consentmw":
                payload = c["value"].strip('"').rsplit(".", 2)[0].split("~")
                return {"id": payload[1], "version": payload[2], "granted": payload[3].split(":"),
                        "gpc": payload[5] == "1", "raw": c["value"]}
        return None

    def paths(self, fragment: str) -> list[tuple[str, str]]:
        return [(m, u) for m, u in self.requests if fragment in u]

    def banner(self) -> Any:
        return self.page.locator(".cmw-b")

    def button(self, name: str) -> Any:
        return self.page.get_by_role("button", name=name, exact=True)

    def still(self) -> None:
        """Wait until the banner's entrance animation has finished, so boxes measured one
        after another describe the same frame (a fixed sleep is too short on a loaded CI box)."""
        self.page.evaluate("Promise.all(document.getAnimations().map(a => a.finished))")

    def wait_choice(self, action: Callable[[], Any]) -> dict[str, Any]:
        """Run a UI action that records a choice; returns the /choice answer."""
        with self.page.expect_response(lambda r: "/_consent/choice" in r.url) as info:
            action()
        assert info.value.ok, info.value.text()
        return info.value.json()


@pytest.fixture
def open_tab(browser: Any, site: Site) -> Iterator[Callable[..., Tab]]:
    contexts: list[Any] = []

    def make(**context_options: Any) -> Tab:
        context_options.setdefault("viewport", {"width": 1000, "height": 700})
        context_options.setdefault("locale", "en-US")
        ctx = browser.new_context(**context_options)
        contexts.append(ctx)
        return Tab(ctx, site)

    yield make
    for ctx in contexts:
        ctx.close()


@pytest.fixture
def tab(open_tab: Callable[..., Tab]) -> Tab:
    return open_tab()


@pytest.fixture(scope="session")
def axe_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """axe-core from npm, installed into a temporary directory for this run."""
    npm = shutil.which("npm")
    assert npm, "npm is needed to install axe-core for the accessibility audit"
    prefix = tmp_path_factory.mktemp("axe")
    subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent", "axe-core@4"],
                   check=True, timeout=300)
    return (prefix / "node_modules" / "axe-core" / "axe.min.js").read_text("utf-8")


def run_axe(page: Any, axe_source: str) -> list[dict[str, Any]]:
    """Inject axe-core and return its violations (WCAG 2.x A/AA and best practices)."""
    if not page.evaluate("!!window.axe"):
        page.evaluate(axe_source + "\n;0")
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.map(n => n.target.join(' ') + ' :: ' + n.failureSummary)}));
    }""")
    return result


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False, default=str)
