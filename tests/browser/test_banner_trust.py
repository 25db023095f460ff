"""What banner.js believes, in real headless chromium against the demo site: only a cookie
the server would honour runs gated scripts (issue 11.7), GPC narrows an older choice in the
page as it does on the server, and a script gated on several purposes needs all of them
(issue 11.18)."""

from __future__ import annotations

from typing import Any

import pytest

from consentmw.core.consent import ConsentCodec

from .conftest import Tab

pytestmark = pytest.mark.browser
EVERYTHING = ("statistics", "personalisation", "marketing")


def plant(tab: Tab, value: str, path: str = "/") -> None:
    tab.context.add_cookies([{"name": "consentmw", "value": value, "domain": "127.0.0.1", "path": path}])


def codec(tab: Tab, secret: str | None = None) -> ConsentCodec:
    own: ConsentCodec = tab.site.app.codec
    return ConsentCodec(secret, own.policy) if secret else own


def issue(c: ConsentCodec, *, host_cookie: bool = False) -> str:
    return c.issue(EVERYTHING, visitor_id="V" * 16, host_cookie=host_cookie)[0]


def asks_and_runs_nothing(tab: Tab, path: str = "/") -> None:
    tab.goto(path)
    tab.banner().wait_for()
    page = tab.page
    page.wait_for_load_state("networkidle")
    assert page.evaluate("consentmw.get()") is None
    assert page.evaluate("window.demoAdsLoaded") is None and page.evaluate("window.demoStatsInline") is None
    assert not tab.paths("/static/ads.js") and not tab.paths("/beacon.js")
    # and the server agrees: it sees no optional consent either
    assert page.locator("#server-granted").inner_text() == "necessary"


def test_an_own_cookie_is_believed(tab: Tab) -> None:
    """The control: the same planting with a cookie this site issued runs the gated scripts."""
    plant(tab, issue(codec(tab)))
    tab.goto("/")
    tab.page.wait_for_function("() => window.demoAdsLoaded === 1 && window.demoStatsInline === 1")
    assert tab.banner().count() == 0
    assert tab.page.locator("#server-granted").inner_text() == "marketing, necessary, personalisation, statistics"


def test_a_foreign_sites_cookie_runs_nothing_and_shows_the_banner(tab: Tab) -> None:
    """Another consentmw site (on a parent domain) with the same default policy version:
    a correctly signed cookie, but not by this site's key."""
    plant(tab, issue(codec(tab, "another-site-secret-0123456789abcdef")))
    asks_and_runs_nothing(tab)


def test_a_forged_cookie_runs_nothing_and_shows_the_banner(tab: Tab) -> None:
    """A cookie written by hand: this site's real payload with every purpose granted, another
    key id and a made-up signature."""
    own = codec(tab)
    payload = own._signer.unsign(issue(own)).decode().split("~")
    payload[7] = "0badc0de"
    plant(tab, "~".join(payload) + ".AAAAAA.forgedsignatureforgedsignatur")
    asks_and_runs_nothing(tab)


def test_a_second_planted_cookie_means_ask_again(tab: Tab) -> None:
    """The visitor's own cookie plus one planted for a narrower path (sent first by the browser)."""
    own = codec(tab)
    plant(tab, own.issue(["statistics"])[0])
    plant(tab, issue(own), path="/articles")
    asks_and_runs_nothing(tab, "/articles/consent-that-holds-up")


def test_a_host_prefixed_cookie_copied_under_the_plain_name_runs_nothing(tab: Tab) -> None:
    plant(tab, issue(codec(tab), host_cookie=True))
    asks_and_runs_nothing(tab)


def consent_mode(tab: Tab) -> list[list[Any]]:
    return tab.page.evaluate("Array.from(dataLayer).map(a => Array.from(a)).filter(a => a[0] === 'consent')")


def test_gpc_in_a_browser_narrows_a_choice_made_without_it(open_tab: Any) -> None:
    """Accept all without GPC; later the browser sends GPC: marketing scripts stop, Consent Mode
    says denied for ads and personalisation, as the server narrows the same cookie."""
    before = open_tab()
    before.goto("/")
    before.wait_choice(lambda: before.button("Accept all").click())
    [cookie] = [c for c in before.context.cookies() if c["name"] == "consentmw"]
    after = open_tab(extra_http_headers={"Sec-GPC": "1"})
    after.context.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})")
    after.context.add_cookies([cookie])
    after.goto("/")
    page = after.page
    page.wait_for_function("() => window.demoStatsInline === 1")   # statistics is not a GPC purpose
    page.wait_for_load_state("networkidle")
    assert page.evaluate("window.demoAdsLoaded") is None
    assert sorted(page.evaluate("consentmw.get().granted")) == ["necessary", "statistics"]
    assert page.evaluate("consentmw.allows('marketing')") is False
    assert page.locator("#server-granted").inner_text() == "necessary, statistics"
    update = consent_mode(after)[-1]
    assert update[:2] == ["consent", "update"]
    assert {k: update[2][k] for k in ("ad_storage", "ad_user_data", "ad_personalization",
                                      "personalization_storage", "analytics_storage")} == {
        "ad_storage": "denied", "ad_user_data": "denied", "ad_personalization": "denied",
        "personalization_storage": "denied", "analytics_storage": "granted"}


GATED_PAGE = """<!doctype html><html lang="en"><head><title>gated</title>
<script src="/_consent/banner.js" defer></script></head><body><main><h1>Gated</h1>
<script type="text/plain" data-consent="statistics marketing">window.both = (window.both || 0) + 1;</script>
<script type="text/plain" data-consent="statistics">window.stats = (window.stats || 0) + 1;</script>
</main></body></html>"""


def test_a_script_gated_on_several_purposes_runs_only_when_all_are_granted(tab: Tab) -> None:
    page = tab.page
    page.route("**/gated-test", lambda route: route.fulfill(status=200, content_type="text/html", body=GATED_PAGE))
    tab.goto("/gated-test")
    tab.banner().wait_for()
    tab.button("Settings").click()
    page.locator("#cmw-statistics").check()
    tab.wait_choice(lambda: tab.button("Save choices").click())
    page.wait_for_function("() => window.stats === 1")
    assert page.evaluate("window.both") is None
    page.locator(".cmw-f").click()
    page.locator("#cmw-marketing").check()
    page.locator("#cmw-statistics").uncheck()
    tab.wait_choice(lambda: tab.button("Save choices").click())
    page.wait_for_timeout(200)
    assert page.evaluate("window.both") is None   # marketing alone is not enough either
    page.locator(".cmw-f").click()
    page.locator("#cmw-statistics").check()
    tab.wait_choice(lambda: tab.button("Save choices").click())
    page.wait_for_function("() => window.both === 1")
