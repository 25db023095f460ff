"""The demo for a newcomer, in real Chromium: the browser's language, no layout shift from the
ad slot, and every panel's data filled in (countries from the demo's own GeoIP database)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from consentmw.demo import page_language

from .conftest import Tab

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("header,query,expected", [
    ("ru-RU,ru;q=0.9,en;q=0.8", "", "ru"),
    ("de-DE,de;q=0.9,kk;q=0.5,en;q=0.4", "", "kk"),
    ("en;q=0.2, ru;q=0.7", "", "ru"),
    ("ru;q=0, kk", "", "kk"),
    ("de-DE", "", "en"),
    ("", "", "en"),
    ("ru;q=abc, zz", "", "en"),
    ("ru-RU", "?lang=kk", "kk"),
    ("ru-RU", "?lang=xx", "ru"),
])
def test_page_language(header: str, query: str, expected: str) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse

        seen.append(page_language(Request(scope, receive)))
        await PlainTextResponse("ok")(scope, receive, send)

    TestClient(app).get("/" + query, headers={"Accept-Language": header} if header else {})
    assert seen == [expected]


@pytest.mark.parametrize("locale,lang,title", [("ru-RU", "ru", "Ваши данные — ваш выбор"),
                                               ("kk-KZ", "kk", "Құпиялылық таңдауыңыз"),
                                               ("de-DE", "en", "Your privacy choices")])
def test_demo_speaks_the_browsers_language(open_tab: Any, locale: str, lang: str, title: str) -> None:
    tab = open_tab(locale=locale)
    tab.goto("/")
    tab.banner().wait_for()
    assert tab.page.evaluate("document.documentElement.lang") == lang
    assert tab.page.locator("#cmw-t").inner_text() == title
    assert not tab.errors, tab.errors


def test_ad_slot_reserves_its_space(open_tab: Any) -> None:
    """Accept all runs the partner script, which fills the ad slot: nothing on the page moves."""
    tab = open_tab(viewport={"width": 1000, "height": 1400})
    page = tab.page
    tab.goto("/")
    tab.banner().wait_for()
    page.wait_for_timeout(300)
    page.evaluate("""window.__shifts = [];
        new PerformanceObserver(l => l.getEntries().forEach(e => __shifts.push(e.value)))
            .observe({type: 'layout-shift', buffered: true});""")
    boxes = "() => ['#ad-slot', 'footer', '#recommended'].map(s => JSON.stringify(document.querySelector(s).getBoundingClientRect()))"
    before = page.evaluate(boxes)
    slot_text = page.locator("#ad-slot").inner_text()
    tab.wait_choice(lambda: tab.button("Accept all").click())
    page.wait_for_function("() => window.demoAdsLoaded === 1")
    page.wait_for_timeout(500)
    assert page.locator("#ad-slot").inner_text() != slot_text  # the partner script did fill it
    assert page.evaluate(boxes) == before
    # every shift counts here, even those within 500 ms of the click that CLS would forgive
    assert page.evaluate("window.__shifts") == []
    assert not tab.errors, tab.errors


def test_a_newcomers_visit_fills_every_panel(tab: Tab) -> None:
    """Countries (from the demo GeoIP database: 127.0.0.1 is placed in Almaty), sources and
    campaigns, outbound links, custom events and web vitals all get rows from one short visit."""
    site = tab.site
    page = tab.page
    tab.goto("/")
    tab.wait_choice(lambda: tab.button("Accept all").click())
    page.wait_for_function("() => consentmw._b === 1")
    page.get_by_role("button", name="Subscribe to the newsletter").click()
    page.locator('a[href*="utm_campaign=launch"]').click()
    page.wait_for_url(lambda url: "utm_source=newsletter" in url)
    page.wait_for_function("() => consentmw._b === 1")
    page.route("https://example.org/**", lambda route: route.fulfill(body="<html lang=en><title>x</title></html>",
                                                                     content_type="text/html"))
    tab.goto("/")
    page.wait_for_function("() => consentmw._b === 1")
    page.get_by_role("link", name="example.org").click()
    page.wait_for_url("https://example.org/")

    def complete(rows: list[dict[str, Any]]) -> bool:
        kinds = {r["event_type"] for r in rows}
        return {"pageview", "vitals", "custom", "click"} <= kinds and any(r["utm_campaign"] for r in rows)

    rows = site.wait_rows("SELECT event_type, country, utm_source, utm_campaign, event_name, link_host "
                          "FROM {db}.events_statistics", complete)
    assert {r["country"] for r in rows} == {"KZ"}
    assert any(r["utm_source"] == "newsletter" and r["utm_campaign"] == "launch" for r in rows)
    assert any(r["event_name"] == "subscribe" for r in rows)
    assert any(r["link_host"] == "example.org" for r in rows)
    cities = site.wait_rows("SELECT city FROM {db}.events_personalisation")
    assert {r["city"] for r in cities} == {"Almaty"}
