"""The HTML report: renders from the views with non-empty charts, is self-contained, and
renders in headless Chromium (the screenshot is saved as docs/report.png for the README)."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from consentmw.dashboard.report import bars, build, columns, lines

from tests.test_views import seed_history, seed_today, site

DOCS = Path(__file__).resolve().parent.parent / "docs"
CHROMIUM = "/usr/bin/chromium"


async def seeded(make_app: Any, days: int = 28) -> Any:
    mw = make_app(site())
    await seed_today(mw)
    seed_history(mw, days)
    return mw


def query_fn(ch: Any) -> Any:
    return lambda sql: ch.query(sql).result_rows


async def test_report_renders_every_chart_with_data(make_app: Any, ch: Any, database: str) -> None:
    await seeded(make_app, 14)
    page, charts = build(query_fn(ch), database, days=30)
    assert [c.id for c in charts] == ["views", "pages", "sources", "consent", "vitals"]
    for chart in charts:
        assert chart.marks > 0, chart.id
        assert "No data in this period" not in chart.svg
    views = charts[0]
    assert views.marks == 30                       # one column per day, empty days included
    assert len(re.findall(r'<rect class="bar"', views.svg)) == 30
    assert "/articles/a" in charts[1].svg and "Bing" in charts[2].svg and "(direct)" in charts[2].svg
    assert "personalisation" in charts[3].svg and "statistics" in charts[3].svg
    assert "LCP" in charts[4].svg
    # self-contained: no scripts, no external resources
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=|url\(|@import""", page)
    assert page.count("<svg") == 5 and "<details>" in page


async def test_report_of_an_empty_period_says_so(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(site())
    mw.collector.sink.client()
    page, charts = build(query_fn(ch), database, days=7, today=dt.date(2001, 1, 1))
    assert all(c.marks == 0 for c in charts)
    assert page.count(">No data in this period<") == 5  # one visible message per chart


def test_chart_primitives_escape_and_scale() -> None:
    svg, n = bars("b", "t", [("<script>alert(1)</script>", 5.0), ("/b", 2.5)])
    assert n == 2 and "<script>" not in svg and "&lt;script&gt;" in svg
    svg, n = columns("c", "t", ["1", "2"], [0, 0])
    assert n == 0 and "No data" in svg
    svg, n = lines("l", "t", ["a", "b", "c"], {"x": [1.0, None, 3.0]})
    assert n == 2 and svg.count("<polyline") == 0  # a gap: no segment has two points


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make browser)")
async def test_report_in_headless_chromium(make_app: Any, ch: Any, database: str, tmp_path: Path) -> None:
    await seeded(make_app, 28)
    page_html, _ = build(query_fn(ch), database, days=30, title="consentmw demo site")
    out = tmp_path / "report.html"
    out.write_text(page_html, encoding="utf-8")

    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900}, color_scheme="light")
            requests: list[str] = []
            errors: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(out.as_uri())
            assert requests == [out.as_uri()]    # nothing fetched besides the file itself
            assert errors == []
            assert await page.locator("svg.chart").count() == 5
            for section in ("views", "pages", "sources"):
                drawn = await page.locator(f"#{section} rect.bar").evaluate_all(
                    "els => els.filter(e => { const r = e.getBoundingClientRect(); "
                    "return r.width > 0 && r.height > 0; }).length")
                assert drawn > 0, section
            for section in ("consent", "vitals"):
                assert await page.locator(f"#{section} polyline.line").count() >= 1, section
            DOCS.mkdir(exist_ok=True)
            shot = tmp_path / "report.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
            shutil.copyfile(shot, DOCS / "report.png")
        finally:
            await browser.close()
