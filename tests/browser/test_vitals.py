"""Web vitals from the beacon in real headless chromium: a stable page stores CLS 0 (not
NULL), a page that shifts stores its largest session window, INP is the slowest interaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from consentmw import ConsentMiddleware

from tests.conftest import SECRET

from .conftest import Site, launch_as_visitor

pytestmark = pytest.mark.browser

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script src="/_consent/banner.js" defer></script></head>
<body><main><h1>{title}</h1><p id="text">Some text that stays in place.</p>
<button id="slow" type="button">Slow</button>{script}</main></body></html>"""

# After load, push the text down twice (two shifts 100 ms apart: one session window).
SHIFT = """<script>
addEventListener("load", () => setTimeout(() => {
  const add = () => { const d = document.createElement("div"); d.style.height = "120px";
                      document.querySelector("main").insertBefore(d, document.getElementById("text")); };
  add(); setTimeout(add, 100);
}, 200));
</script>"""

# A click whose handler blocks the main thread ~150 ms: a slow interaction.
SLOW = """<script>
document.getElementById("slow").addEventListener("click", () => { const t = performance.now();
  while (performance.now() - t < 150) {} document.getElementById("text").textContent = "clicked"; });
</script>"""


def vitals_app(**options: Any) -> ConsentMiddleware:
    async def stable(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.format(title="Stable", script=SLOW))

    async def shifting(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.format(title="Shifting", script=SHIFT))

    async def blank(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.format(title="Next", script=""))

    app = Starlette(routes=[Route("/stable", stable), Route("/shifting", shifting), Route("/next", blank)])
    return ConsentMiddleware(app, secret_key=SECRET, floating_button=False, **options)


@pytest.fixture
def vsite(chdb_dsn: str, database: str, ch: Any, tmp_path: Path) -> Iterator[Site]:
    app = vitals_app(clickhouse_dsn=chdb_dsn, database=database, spool_dir=str(tmp_path / "spool"),
                     flush_interval=0.2)
    s = Site(app, ch, database).start()
    yield s
    s.stop()


@pytest.fixture
def page(vsite: Site) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_as_visitor(p)
        context = browser.new_context(viewport={"width": 1000, "height": 700})
        answer = context.request.post(vsite.url + "/_consent/choice", data={"all": True},
                                      headers={"origin": vsite.url})
        assert answer.ok, answer.text()
        yield context.new_page()
        context.close()
        browser.close()


# Whether the page has seen what the beacon measures: `want` maps an entry type to how many
# entries (for "event": interactions of 140 ms or more) must have been observed.
SEEN = """want => {
  if (!window.__seen) {
    const seen = window.__seen = {"layout-shift": 0, "event": 0};
    new PerformanceObserver(l => { seen["layout-shift"] += l.getEntries().length; })
      .observe({type: "layout-shift", buffered: true});
    new PerformanceObserver(l => { seen.event += l.getEntries().filter(e => e.duration >= 140).length; })
      .observe({type: "event", buffered: true, durationThreshold: 16});
  }
  return Object.entries(want).every(([type, n]) => window.__seen[type] >= n);
}"""


def visit(page: Any, site: Site, path: str, action: Any = None, until: dict[str, int] | None = None) -> None:
    page.goto(site.url + path)
    page.wait_for_function("window.consentmw && window.consentmw._b === 1")
    page.wait_for_load_state("load")
    if action:
        action()
    # Until the shifts or the slow interaction have happened (timers run late on a busy
    # machine), then a little longer for the beacon's own observers to be told.
    page.wait_for_function(SEEN, arg=until or {}, timeout=30_000)
    page.wait_for_timeout(400)
    page.goto(site.url + "/next")  # page hidden: the vitals event leaves with sendBeacon


def test_a_stable_page_stores_cls_zero_and_a_shifting_page_its_shift(page: Any, vsite: Site) -> None:
    visit(page, vsite, "/stable", lambda: page.click("#slow"), until={"event": 1})
    visit(page, vsite, "/shifting", until={"layout-shift": 1})
    rows = vsite.wait_rows("SELECT path, cls, lcp, inp, fcp FROM {db}.events_statistics WHERE event_type = 'vitals' "
                           "ORDER BY path", lambda r: {"/stable", "/shifting"} <= {x["path"] for x in r})
    by_path = {r["path"]: r for r in rows}
    assert by_path["/stable"]["cls"] == 0  # stored as 0, not NULL
    assert by_path["/shifting"]["cls"] > 0
    assert by_path["/stable"]["lcp"] and by_path["/shifting"]["lcp"]
    # the click blocked the main thread ~150 ms: INP is at least that; no interaction, no INP
    assert by_path["/stable"]["inp"] is not None and by_path["/stable"]["inp"] >= 140
    assert by_path["/shifting"]["inp"] is None
    # the view's p75 now covers stable pages too
    p75 = vsite.query("SELECT path, cls_p75 FROM {db}.stats_daily WHERE path IN ('/stable', '/shifting') ORDER BY path")
    assert {r["path"]: r["cls_p75"] for r in p75}["/stable"] == 0
