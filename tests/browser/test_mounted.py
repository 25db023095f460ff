"""The banner of an app mounted below a path (Starlette `Mount("/shop", ...)`) in Chromium:
every consent request goes to /shop/_consent/..., the choice is stored, the beacon loads
from under the prefix and its events arrive."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from tests.mounted_site import outer_home, page

from .conftest import CHROMIUM_ARGS, CHROMIUM, Site, Tab  # noqa: F401 (CHROMIUM used by the browser fixture)


@pytest.fixture
def mounted(make_app: Any, ch: Any, database: str) -> Iterator[Site]:
    inner = make_app(Starlette(routes=[Route("/", page), Route("/items/{name}", page)]), flush_interval=0.2)
    outer = Starlette(routes=[Route("/", outer_home), Mount("/shop", app=inner)])
    site = Site(outer, ch, database)
    site.app = inner  # the collector lives in the mounted app (Site reads it to settle and stop)
    site.start()
    yield site
    site.stop()


def test_banner_of_a_mounted_app_calls_the_prefixed_urls(browser: Any, mounted: Site) -> None:
    context = browser.new_context(viewport={"width": 1000, "height": 700}, locale="en-US")
    try:
        tab = Tab(context, mounted)
        failed: list[str] = []
        tab.page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
        tab.goto("/shop/")
        tab.banner().wait_for()
        answer = tab.wait_choice(lambda: tab.button("Accept all").click())
        assert tab.banner().count() == 0
        cookie = tab.consent_cookie()
        assert cookie and cookie["id"] == answer["consent"]["id"]
        tab.page.wait_for_function("() => consentmw._b === 1")  # the beacon loaded
        tab.goto("/shop/items/lamp")
        assert tab.page.locator("#granted").inner_text() == "marketing,necessary,personalisation,statistics"
        consent_calls = [url for _, url in tab.requests if "/_consent/" in url]
        assert consent_calls and all(url.startswith(mounted.url + "/shop/_consent/") for url in consent_calls), \
            consent_calls
        assert any("/shop/_consent/beacon.js" in url for url in consent_calls)
        ledger = mounted.wait_rows("SELECT action, page FROM {db}.consent_log")
        assert [(r["action"], r["page"]) for r in ledger] == [("grant", "/shop/")]
        rows = mounted.wait_rows("SELECT event_type, path FROM {db}.events_statistics ORDER BY ts",
                                 lambda rs: {("pageview", "/shop/items/lamp"), ("timing", "/shop/")}
                                 <= {(r["event_type"], r["path"]) for r in rs})  # server and beacon
        assert ("pageview", "/shop/items/lamp") in {(r["event_type"], r["path"]) for r in rows}
        assert not tab.errors, (tab.errors, failed)
    finally:
        context.close()
