"""The live dashboard in real headless chromium: sign-in, its own strict CSP (no violation),
laid out at 1280 px and 390 px in light and dark, filters through the form and links, and an
axe-core audit. Screenshots go to docs/ only with CONSENTMW_WRITE_DOCS=1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from consentmw import ConsentMiddleware

from tests.conftest import SECRET
from tests.dashboard.seed import geo_db, seed
from tests.test_views import site as plain_site

from .conftest import Site, run_axe

pytestmark = pytest.mark.browser

TOKEN = "browser-admin-token-42"
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def dsite(chdb_dsn: str, database: str, ch: Any, tmp_path: Path) -> Iterator[Site]:
    app = ConsentMiddleware(plain_site(), secret_key=SECRET, clickhouse_dsn=chdb_dsn, database=database,
                            spool_dir=str(tmp_path / "spool"), flush_interval=0.2, admin_token=TOKEN,
                            geoip_db=str(geo_db(tmp_path / "geo.mmdb")))
    seed(app, days=30)
    s = Site(app, ch, database).start()
    yield s
    s.stop()


def sign_in(page: Any, site: Site, problems: list[str] | None = None) -> None:
    r = page.goto(site.url + "/_consent/admin/dashboard")
    assert r.status == 401  # the sign-in form (chromium logs the 401 itself)
    if problems is not None:
        problems.clear()
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector(".kpis")


def layout(page: Any) -> dict[str, Any]:
    return page.evaluate("""() => {
        const box = s => { const e = document.querySelector(s); if (!e) return null;
                           const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height}; };
        const kpis = [...document.querySelectorAll('.kpi')].map(e => e.getBoundingClientRect().y);
        const svg = [...document.querySelectorAll('svg.chart')].find(e => e.getBoundingClientRect().width > 0);
        const r = svg.getBoundingClientRect();
        const outside = [...svg.querySelectorAll('text')].filter(t => { const b = t.getBoundingClientRect();
            return b.left < r.left - 0.5 || b.right > r.right + 0.5; }).map(t => t.textContent);
        return {scroll: document.documentElement.scrollWidth, inner: innerWidth, kpis, chart: svg.id, outside,
                pages: box('#pages'), sources: box('#sources'), campaigns: box('#campaigns'),
                bars: svg.querySelectorAll('rect.bar').length, ticks: [...svg.querySelectorAll('text.tick')].map(t => t.textContent)};
    }""")


@pytest.mark.parametrize("width,scheme", [(1280, "light"), (1280, "dark"), (390, "light"), (390, "dark")])
def test_dashboard_layout_and_csp(browser: Any, dsite: Site, width: int, scheme: str, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
    page = context.new_page()
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: m.type in ("error", "warning") and problems.append(m.text))
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    try:
        sign_in(page, dsite, problems)
        assert problems == []  # no CSP violation, nothing refused
        assert all(u.startswith(dsite.url) for u in requests)  # nothing from elsewhere
        box = layout(page)
        assert box["scroll"] <= box["inner"], "the page scrolls sideways"
        assert box["outside"] == [], "chart labels clipped"
        assert box["bars"] >= 20 and all("." not in t for t in box["ticks"] if t[0].isdigit() and "Nov" not in t)
        if width == 1280:
            assert box["chart"] == "chart-wide"
            assert len(set(round(y) for y in box["kpis"])) == 1  # one KPI row
            assert round(box["pages"]["y"]) == round(box["sources"]["y"]) == round(box["campaigns"]["y"])
        else:
            assert box["chart"] == "chart-narrow"
            assert box["pages"]["w"] <= width and box["sources"]["y"] > box["pages"]["y"]
        if os.environ.get("CONSENTMW_WRITE_DOCS") == "1":
            shot = tmp_path / "shot.png"
            page.screenshot(path=str(shot), full_page=True)
            shutil.copyfile(shot, DOCS / f"dashboard-{width}-{scheme}.png")
    finally:
        context.close()


def test_filters_through_the_form_and_links(browser: Any, dsite: Site) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, dsite)
        assert "Last 30 days" in page.locator(".sub").first.inner_text()
        page.get_by_label("Range", exact=True).select_option("7d")
        page.get_by_role("button", name="Apply").click()
        page.wait_for_url("**range=7d**")
        assert "Last 7 days" in page.locator(".sub").first.inner_text()
        # a row of a table is a filter link; the chip removes it again
        page.locator("#countries tbody a", has_text="US").click()
        page.wait_for_url("**country=US**")
        assert [t.strip() for t in page.locator("#countries tbody th").all_inner_texts()] == ["US"]
        page.get_by_role("link", name="Remove filter country: US").click()
        page.wait_for_url(lambda url: "country=" not in url)
        assert page.locator("#countries tbody tr").count() == 2
        # a bad value typed into the form is refused with its reason
        page.get_by_label("Country", exact=True).fill("Germany")
        page.get_by_role("button", name="Apply").click()
        assert "country: a two-letter" in page.locator("body").inner_text()
    finally:
        context.close()


def test_axe_finds_no_violations(browser: Any, dsite: Site, axe_source: str) -> None:
    for scheme in ("light", "dark"):
        # axe is injected by the test, so only this context relaxes the page's CSP
        context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme=scheme, bypass_csp=True)
        page = context.new_page()
        try:
            sign_in(page, dsite)
            assert run_axe(page, axe_source) == [], scheme
            page.set_viewport_size({"width": 390, "height": 900})
            assert run_axe(page, axe_source) == [], f"{scheme} at 390 px"
            page.goto(dsite.url + "/_consent/admin/dashboard")  # the sign-in page, signed out
            context.clear_cookies()
            page.reload()
            assert run_axe(page, axe_source) == [], f"{scheme} sign-in page"
        finally:
            context.close()


LONG_PATHS = ("/articles/2026/11/how-a-consent-banner-should-look-on-a-phone-screen",
              "/docs/" + "x" * 70)   # no place to break at all


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_vitals_paths_fit_at_390_px(browser: Any, dsite: Site, scheme: str) -> None:
    """At phone width every page path of the web-vitals table is shown whole (wrapped in
    its column, never cut off or pushing the table out of its card), and carries its full
    value as a title."""
    from consentmw.collect.hit import Hit

    from tests.conftest import BROWSER_UA
    from tests.dashboard.seed import STATS, midnight

    for n, path in enumerate(LONG_PATHS * 40):  # enough samples to rank among the top pages
        dsite.app.collector.submit(Hit(midnight() + 60 + n, "vitals", "site.test", path, f"long{n}",
                                       dsite.app.policy.version, STATS, None, "81.2.1.1", "", BROWSER_UA, "en", "", None,
                                       0, 0, {"lcp": 1200 + n, "inp": 80, "cls": 0.05, "ttfb": 90}))
    dsite.app.collector.flush()
    context = browser.new_context(viewport={"width": 390, "height": 900}, color_scheme=scheme)
    page = context.new_page()
    try:
        sign_in(page, dsite)
        found = page.evaluate("""() => {
            const card = document.querySelector('#vitals').getBoundingClientRect();
            const table = document.querySelector('#vitals table').getBoundingClientRect();
            const names = [...document.querySelectorAll('#vitals tbody th .name')].map(e => {
                const r = e.getBoundingClientRect();
                return {text: e.textContent, title: e.getAttribute('title'), clipped: e.scrollWidth > e.clientWidth + 1
                        || e.scrollHeight > e.clientHeight + 1, left: r.left, right: r.right};
            });
            const cells = [...document.querySelectorAll('#vitals td, #vitals thead th')].map(e => e.getBoundingClientRect().right);
            return {card: [card.left, card.right], table: [table.left, table.right], names, cells,
                    scroll: document.documentElement.scrollWidth, inner: innerWidth};
        }""")
        if os.environ.get("CONSENTMW_WRITE_DOCS") == "1" and scheme == "light":
            page.locator("#vitals").screenshot(path=str(DOCS / "dashboard-390-vitals.png"))
        assert found["scroll"] <= found["inner"], "the page scrolls sideways"
        assert found["card"][0] <= found["table"][0] and found["table"][1] <= found["card"][1] + 0.5
        assert max(found["cells"]) <= found["card"][1] + 0.5, "a number column sticks out of the card"
        texts = [n["text"] for n in found["names"]]
        assert set(LONG_PATHS) <= set(texts), texts
        for name in found["names"]:
            assert name["title"] == name["text"], name
            assert not name["clipped"], f"{name['text']} is cut off"
            assert found["card"][0] <= name["left"] and name["right"] <= found["card"][1], name
    finally:
        context.close()
