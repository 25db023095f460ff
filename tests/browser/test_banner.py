"""The banner and the beacon in real headless chromium, against the demo site and chDB."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from itsdangerous import TimestampSigner

from consentmw.demo import DEMO_SECRET

from .conftest import Tab, dump, run_axe

pytestmark = pytest.mark.browser

DOCS = Path(__file__).resolve().parents[2] / "docs"
EVENTS = ("events_statistics", "events_personalisation")


def granted_of(tab: Tab) -> list[str]:
    return sorted(tab.page.evaluate("consentmw.get() && consentmw.get().granted") or [])


def consent_mode_calls(tab: Tab) -> list[list[Any]]:
    return tab.page.evaluate(
        "Array.from(dataLayer).map(a => Array.from(a)).filter(a => a[0] === 'consent')")


def no_errors(tab: Tab) -> None:
    assert not tab.errors, tab.errors


def test_first_visit_shows_banner_and_tracks_nothing(tab: Tab) -> None:
    tab.goto("/")
    banner = tab.banner()
    banner.wait_for()
    assert banner.get_attribute("role") == "dialog"
    assert tab.page.locator("#cmw-t").inner_text() == "Your privacy choices"
    # focus moved into the banner
    assert tab.page.evaluate("!!document.activeElement.closest('.cmw-b')")
    # accept and reject: same element, size, style and weight
    accept, reject = tab.button("Accept all"), tab.button("Reject all")
    style = "e => { const s = getComputedStyle(e); return [e.tagName, s.fontWeight, s.fontSize, s.backgroundColor, " \
            "s.color, s.borderTopWidth, s.paddingTop, Math.round(e.getBoundingClientRect().height)] }"
    assert accept.evaluate(style) == reject.evaluate(style)
    # the banner slides in: measure both buttons once its animation has finished, in one frame
    tab.still()
    a, r = tab.page.evaluate(
        "[...document.querySelectorAll('.cmw-b button')].filter(b => /^(Accept|Reject) all$/.test(b.textContent.trim()))"
        ".map(b => { const x = b.getBoundingClientRect(); return {width: x.width, y: x.y}; })")
    # side by side, same size (layout may place them a sub-pixel apart)
    assert abs(a["width"] - r["width"]) <= 1 and abs(a["y"] - r["y"]) <= 1
    # "Settings" is a secondary button: not filled like the two choices
    settings = tab.button("Settings")
    assert settings.evaluate("e => getComputedStyle(e).backgroundColor") != accept.evaluate(
        "e => getComputedStyle(e).backgroundColor")
    # scrolling and clicking elsewhere is not consent
    tab.page.mouse.wheel(0, 600)
    tab.page.locator("h1").click()
    tab.page.wait_for_timeout(500)
    assert tab.consent_cookie() is None
    assert tab.context.cookies() == []
    assert banner.is_visible()
    # no tracking request, no beacon, and nothing stored or recorded
    assert not tab.paths("/collect") and not tab.paths("beacon.js")
    tab.goto("/articles/consent-that-holds-up")
    tab.banner().wait_for()
    tab.site.settle()
    for table in (*EVENTS, "consent_log"):
        assert tab.site.count(table) == 0, table
    assert tab.page.evaluate("consentmw.get()") is None
    assert tab.page.evaluate("consentmw.allows('statistics')") is False
    assert tab.page.evaluate("consentmw.allows('necessary')") is True
    no_errors(tab)


def test_accept_all_records_and_collects(tab: Tab) -> None:
    site = tab.site
    tab.goto("/")
    answer = tab.wait_choice(lambda: tab.button("Accept all").click())
    assert tab.banner().count() == 0
    cookie = tab.consent_cookie()
    assert cookie and set(cookie["granted"]) == {"necessary", "statistics", "personalisation", "marketing"}
    assert cookie["id"] == answer["consent"]["id"]
    ledger = site.wait_rows("SELECT consent_id, action, granted, denied, language, page FROM {db}.consent_log")
    assert len(ledger) == 1
    assert ledger[0]["consent_id"] == cookie["id"] and ledger[0]["action"] == "grant"
    assert set(ledger[0]["granted"]) == set(cookie["granted"]) and list(ledger[0]["denied"]) == []
    assert ledger[0]["language"] == "en" and ledger[0]["page"] == "/"
    # the beacon is loaded at once, without a reload, and the gated scripts ran
    tab.page.wait_for_function("() => consentmw._b === 1")
    tab.page.wait_for_function("() => window.demoAdsLoaded === 1 && window.demoStatsInline === 1")
    # a full page load is counted by the server; SPA views, timing and vitals by the beacon
    tab.goto("/spa")
    tab.page.wait_for_function("() => consentmw._b === 1")
    tab.page.get_by_role("link", name="Pricing").click()
    tab.page.get_by_role("link", name="Docs").click()
    tab.page.go_back()
    tab.page.evaluate("consentmw.track('signup', {plan: 'pro'})")
    tab.page.route("https://example.org/**", lambda route: route.fulfill(
        body="<html lang=en><title>x</title><p>elsewhere</p></html>", content_type="text/html"))
    tab.goto("/")
    tab.page.wait_for_function("() => consentmw._b === 1")
    tab.page.get_by_role("link", name="example.org").click()
    tab.page.wait_for_url("https://example.org/")
    sql = ("SELECT ts, event_type, path, consent_id, referrer_host, ttfb, dom_complete, load_ms, fcp, link_host, "
           "event_name, props FROM {db}.events_statistics ORDER BY ts")

    def complete(rows: list[dict[str, Any]]) -> bool:
        kinds = {(r["event_type"], r["path"]) for r in rows}
        return {("pageview", "/spa"), ("pageview", "/spa/pricing"), ("pageview", "/spa/docs"),
                ("timing", "/spa"), ("vitals", "/spa"), ("custom", "/spa/pricing"), ("pageview", "/"),
                ("click", "/")} <= kinds

    rows = site.wait_rows(sql, complete)
    # every row carries the consent that allowed it (statistics keeps a daily proof, not the id)
    proof = site.app.collector.enricher.consent_proof(cookie["id"], rows[0]["ts"].timestamp())
    assert {r["consent_id"] for r in rows} == {proof}, dump([rows, cookie])
    views = [r["path"] for r in rows if r["event_type"] == "pageview"]
    # the initial full load of /spa is counted once (by the server), not again by the beacon
    assert views.count("/spa") == 1, views
    assert views.count("/spa/pricing") == 2, views  # pushState to it, then back (popstate)
    timing = next(r for r in rows if r["event_type"] == "timing")
    assert timing["dom_complete"] is not None and timing["load_ms"] >= timing["dom_complete"] >= 0
    vitals = next(r for r in rows if r["event_type"] == "vitals")
    assert vitals["ttfb"] is not None and vitals["fcp"] is not None and vitals["fcp"] > 0
    click = next(r for r in rows if r["event_type"] == "click")
    assert click["link_host"] == "example.org"
    custom = next(r for r in rows if r["event_type"] == "custom")
    assert custom["event_name"] == "signup" and dict(custom["props"]) == {"plan": "pro"}
    # personalisation keeps its own table: page views only, with the visitor id
    pers = site.wait_rows("SELECT event_type, path, visitor_id, consent_id FROM {db}.events_personalisation",
                          lambda rs: any(r["path"] == "/spa/docs" for r in rs))
    assert {r["event_type"] for r in pers} == {"pageview"}
    assert all(r["visitor_id"] and r["consent_id"] in (cookie["id"], proof) for r in pers)
    no_errors(tab)


def test_reject_all_collects_nothing(tab: Tab) -> None:
    site = tab.site
    tab.goto("/")
    answer = tab.wait_choice(lambda: tab.button("Reject all").click())
    assert answer["consent"]["granted"] == ["necessary"]
    assert tab.consent_cookie()["granted"] == ["necessary"]
    ledger = site.wait_rows("SELECT granted, denied FROM {db}.consent_log")
    assert set(ledger[0]["denied"]) == {"statistics", "personalisation", "marketing"}
    # browse: full loads, SPA navigation, an attempt to track
    for path in ("/articles/consent-that-holds-up", "/spa"):
        tab.goto(path)
    tab.page.get_by_role("link", name="Pricing").click()
    tab.page.evaluate("consentmw.track('signup')")
    tab.goto("/privacy")
    assert tab.banner().count() == 0  # the choice is remembered
    site.settle()
    assert [site.count(t) for t in EVENTS] == [0, 0]
    assert not tab.paths("/collect") and not tab.paths("beacon.js")
    assert tab.page.evaluate("window.demoAdsLoaded") is None
    assert tab.page.evaluate("window.demoStatsInline") is None
    no_errors(tab)


def test_settings_layer_is_granular(tab: Tab) -> None:
    site = tab.site
    tab.goto("/")
    tab.button("Settings").click()
    dialog = tab.page.locator("dialog.cmw-s")
    dialog.wait_for()
    assert tab.banner().count() == 0
    # nothing optional pre-ticked; the required purpose on and locked
    boxes = {pid: tab.page.locator(f"#cmw-{pid}") for pid in ("necessary", "statistics", "personalisation", "marketing")}
    assert boxes["necessary"].is_checked() and boxes["necessary"].is_disabled()
    assert [boxes[p].is_checked() for p in ("statistics", "personalisation", "marketing")] == [False] * 3
    text = dialog.inner_text()
    # description, version and date, links; what is collected and for how long folded away
    assert "Counts visits to improve the site" in text
    assert "Pages visited" not in text
    assert dialog.locator("details").count() == 3  # marketing stores nothing here: no details to show
    for summary in dialog.locator("summary").all():
        summary.click()
    text = dialog.inner_text()
    assert re.search(r"What is collected:\s+Browser, operating system and device type\s", text)
    assert "Pages visited and campaign tags" in text
    assert "Kept for 395 days." in text and "Kept for 180 days." in text
    assert "Only your choice is stored, for 180 days." in text
    assert "Kept for 90 days" not in text  # marketing: this site stores nothing, so no retention
    assert text.count("Always on") == 1
    assert "Policy version 2026-11-21, last updated 2026-11-21" in text
    assert dialog.get_by_role("link", name="Privacy policy").get_attribute("href") == "/privacy"
    # the label names the switch; the description describes it
    assert tab.page.get_by_role("switch", name="Statistics").count() == 1
    boxes["statistics"].check()
    tab.wait_choice(lambda: tab.button("Save choices").click())
    assert granted_of(tab) == ["necessary", "statistics"]
    assert sorted(tab.consent_cookie()["granted"]) == ["necessary", "statistics"]
    tab.goto("/articles/global-privacy-control")
    site.wait_rows("SELECT path FROM {db}.events_statistics",
                   lambda rs: any(r["path"] == "/articles/global-privacy-control" for r in rs))
    site.settle(0.5)
    assert site.count("events_personalisation") == 0
    assert tab.page.evaluate("window.demoAdsLoaded") is None
    assert tab.page.evaluate("window.demoStatsInline") == 1
    # reopened, the settings show the recorded choice, with the rights links
    tab.page.locator(".cmw-f").click()
    dialog.wait_for()
    assert boxes["statistics"].is_checked() and not boxes["marketing"].is_checked()
    assert dialog.get_by_role("link", name="Download my data").get_attribute("href") == "/_consent/me"
    assert tab.button("Delete my data").count() == 1
    no_errors(tab)


def test_withdraw_from_floating_button_stops_collection(tab: Tab) -> None:
    site = tab.site
    tab.goto("/spa")
    tab.wait_choice(lambda: tab.button("Accept all").click())
    tab.page.wait_for_function("() => consentmw._b === 1")
    tab.page.get_by_role("link", name="Pricing").click()      # queued by the beacon (not yet sent)
    tab.goto("/articles/consent-that-holds-up")                # pagehide sends it; the server counts this load
    site.wait_rows("SELECT path FROM {db}.events_statistics",
                   lambda rs: {"/spa/pricing", "/articles/consent-that-holds-up"} <= {r["path"] for r in rs})
    # queue more, then withdraw at once from the floating button on this page
    tab.page.wait_for_function("() => consentmw._b === 1")
    tab.page.evaluate("consentmw.track('before-withdraw')")
    floating = tab.page.locator(".cmw-f")
    assert floating.inner_text() == "Privacy settings"
    floating.click()
    answer = tab.wait_choice(lambda: tab.button("Withdraw all consent").click())
    assert answer["consent"]["granted"] == ["necessary"]
    assert granted_of(tab) == ["necessary"]
    assert tab.page.evaluate("consentmw.allows('statistics')") is False
    site.settle(0.5)
    before = [site.count(t) for t in EVENTS]
    requests_before = len(tab.paths("/collect"))
    tab.page.evaluate("consentmw.track('after-withdraw')")
    tab.goto("/spa")
    tab.page.get_by_role("link", name="Docs").click()
    tab.goto("/")
    site.settle()
    assert [site.count(t) for t in EVENTS] == before
    assert site.count("events_statistics", "event_name LIKE '%withdraw%'") == 0
    assert len(tab.paths("/collect")) == requests_before
    actions = [r["action"] for r in site.query("SELECT action FROM {db}.consent_log ORDER BY ts")]
    assert actions == ["grant", "withdraw"]
    no_errors(tab)


def test_keyboard_only(tab: Tab) -> None:
    page = tab.page
    tab.goto("/")
    tab.banner().wait_for()
    active = "document.activeElement"
    assert page.evaluate(f"{active}.classList.contains('cmw-b')")
    seen = []
    for _ in range(4):
        page.keyboard.press("Tab")
        seen.append(page.evaluate(f"{active}.getAttribute('aria-label') || {active}.textContent"))
    assert seen == ["Close", "Accept all", "Reject all", "Settings"]
    # the focus ring is visible
    assert page.evaluate(f"getComputedStyle({active}).outlineStyle") != "none"
    assert float(page.evaluate(f"parseFloat(getComputedStyle({active}).outlineWidth)")) >= 2
    page.keyboard.press("Enter")
    page.locator("dialog.cmw-s").wait_for()
    inside = f"!!{active}.closest('dialog.cmw-s')"
    assert page.evaluate(inside)
    # Tab cycles inside the dialog: more presses than it has controls, never leaving it
    count = page.evaluate("document.querySelectorAll('dialog.cmw-s button, dialog.cmw-s a, dialog.cmw-s summary, "
                          "dialog.cmw-s input:not(:disabled)').length")
    names = []
    for _ in range(count + 2):
        page.keyboard.press("Tab")
        assert page.evaluate(inside)
        names.append(page.evaluate(f"{active}.id || {active}.textContent"))
    assert names[count] == names[0], names  # wrapped around
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    assert page.evaluate(inside)
    # reach the statistics switch, toggle it with Space, save with Enter
    for _ in range(count + 1):
        if page.evaluate(f"{active}.id") == "cmw-statistics":
            break
        page.keyboard.press("Tab")
    page.keyboard.press("Space")
    assert page.locator("#cmw-statistics").is_checked()
    while page.evaluate(f"{active}.textContent") != "Save choices":
        page.keyboard.press("Tab")
    tab.wait_choice(lambda: page.keyboard.press("Enter"))
    assert granted_of(tab) == ["necessary", "statistics"]
    # focus is not lost: it lands on the floating button, which reopens the settings
    page.wait_for_function(f"() => {active}.classList.contains('cmw-f')")
    page.keyboard.press("Enter")
    page.locator("dialog.cmw-s").wait_for()
    assert page.locator("#cmw-statistics").is_checked()
    # Esc closes without changing a recorded choice, focus returns to the button
    page.keyboard.press("Escape")
    page.locator("dialog.cmw-s").wait_for(state="detached")
    assert page.evaluate(f"{active}.classList.contains('cmw-f')")
    assert granted_of(tab) == ["necessary", "statistics"]
    no_errors(tab)


def test_escape_and_close_refuse(open_tab: Any) -> None:
    for key in ("escape", "close"):
        tab = open_tab()
        tab.goto("/")
        tab.banner().wait_for()
        action = (lambda: tab.page.keyboard.press("Escape")) if key == "escape" else (lambda: tab.button("Close").click())
        answer = tab.wait_choice(action)
        assert answer["consent"]["granted"] == ["necessary"], key
        assert tab.banner().count() == 0
        # closing the settings layer before any choice refuses too
    tab = open_tab()
    tab.goto("/")
    tab.button("Settings").click()
    tab.page.locator("dialog.cmw-s").wait_for()
    answer = tab.wait_choice(lambda: tab.page.keyboard.press("Escape"))
    assert answer["consent"]["granted"] == ["necessary"]
    ledger = tab.site.wait_rows("SELECT granted FROM {db}.consent_log", lambda rs: len(rs) == 3)
    assert all(list(r["granted"]) == ["necessary"] for r in ledger)


def test_axe_finds_no_violations(open_tab: Any, axe_source: str) -> None:
    # axe is injected by the test itself, so only this context relaxes the demo's CSP
    tab = open_tab(bypass_csp=True)
    page = tab.page
    tab.goto("/")
    tab.banner().wait_for()
    tab.still()  # the entrance animation
    assert run_axe(page, axe_source) == [], "first layer"
    tab.button("Settings").click()
    page.locator("dialog.cmw-s").wait_for()
    violations = run_axe(page, axe_source)
    assert violations == [], dump(violations)
    tab.wait_choice(lambda: tab.button("Accept all").click())
    page.locator(".cmw-f").wait_for()
    assert run_axe(page, axe_source) == [], "floating button"
    # dark colour scheme too
    page.emulate_media(color_scheme="dark")
    page.locator(".cmw-f").click()
    page.locator("dialog.cmw-s").wait_for()
    violations = run_axe(page, axe_source)
    assert violations == [], dump(violations)
    # every purpose's details unfolded, and the confirmation step of "Delete my data"
    for summary in page.locator("dialog.cmw-s summary").all():
        summary.click()
    tab.button("Delete my data").click()
    violations = run_axe(page, axe_source)
    assert violations == [], dump(violations)
    # after the erasure, the first layer again (with its news), in the dark scheme
    tab.button("Delete my data").click()
    tab.banner().wait_for()
    page.wait_for_timeout(300)
    violations = run_axe(page, axe_source)
    assert violations == [], dump(violations)


def test_gpc_is_honoured(open_tab: Any) -> None:
    tab = open_tab(extra_http_headers={"Sec-GPC": "1"})
    tab.context.add_init_script("Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})")
    tab.goto("/")
    note = tab.page.locator(".cmw-b .cmw-n")
    note.wait_for()
    assert "Global Privacy Control" in note.inner_text()
    answer = tab.wait_choice(lambda: tab.button("Accept all").click())
    # "Accept all" under GPC does not switch on the purposes the signal refuses
    assert answer["consent"]["granted"] == ["necessary", "statistics"]
    cookie = tab.consent_cookie()
    assert cookie["gpc"] and sorted(cookie["granted"]) == ["necessary", "statistics"]
    ledger = tab.site.wait_rows("SELECT gpc, source, denied FROM {db}.consent_log")
    assert ledger[0]["gpc"] is True and set(ledger[0]["denied"]) == {"personalisation", "marketing"}
    assert tab.page.evaluate("window.demoAdsLoaded") is None
    # the settings say so too, and an explicit switch still works
    tab.page.locator(".cmw-f").click()
    tab.page.locator("dialog.cmw-s .cmw-n").wait_for()
    assert not tab.page.locator("#cmw-personalisation").is_checked()
    tab.page.locator("#cmw-personalisation").check()
    tab.wait_choice(lambda: tab.button("Save choices").click())
    assert granted_of(tab) == ["necessary", "personalisation", "statistics"]  # sorted by granted_of
    assert tab.page.evaluate("consentmw.get().gpc") is True


def test_script_gating_without_reload(tab: Tab) -> None:
    page = tab.page
    tab.goto("/")
    tab.banner().wait_for()
    assert page.locator('script[type="text/plain"][data-consent]').count() == 2
    assert page.evaluate("window.demoAdsLoaded") is None and page.evaluate("window.demoStatsInline") is None
    changes = page.evaluate_handle("""(() => { const seen = [];
        consentmw.on('change', c => seen.push(['on', c.granted.join()]));
        document.addEventListener('consentmw:change', e => seen.push(['event', e.detail.granted.join()]));
        return seen; })()""")
    tab.button("Settings").click()
    dialog = page.locator("dialog.cmw-s")
    dialog.wait_for()
    page.locator("#cmw-statistics").check()
    tab.wait_choice(lambda: tab.button("Save choices").click())
    dialog.wait_for(state="detached")
    # the inline script ran (with the page's CSP nonce), the marketing one did not
    page.wait_for_function("() => window.demoStatsInline === 1")
    assert page.evaluate("window.demoAdsLoaded") is None
    assert page.locator('script[type="text/plain"][data-consent="marketing"]').count() == 1
    # granting marketing later, still without a reload, runs the src script once
    page.locator(".cmw-f").click()
    dialog.wait_for()
    page.locator("#cmw-marketing").check()
    tab.wait_choice(lambda: tab.button("Save choices").click())
    dialog.wait_for(state="detached")
    page.wait_for_function("() => window.demoAdsLoaded === 1")
    assert "marketing consent granted" in page.locator("#ad-slot").inner_text()
    assert page.evaluate("window.demoStatsInline") == 1  # nothing ran twice
    assert page.locator('script[type="text/plain"][data-consent]').count() == 0
    assert changes.json_value() == [["on", "necessary,statistics"], ["event", "necessary,statistics"],
                                    ["on", "necessary,statistics,marketing"], ["event", "necessary,statistics,marketing"]]  # policy order
    csp = [e for e in tab.errors if "Content Security Policy" in e]
    assert not csp, csp
    no_errors(tab)


def test_consent_mode_signals(tab: Tab) -> None:
    tab.goto("/")
    tab.banner().wait_for()
    calls = consent_mode_calls(tab)
    denied = {"ad_storage": "denied", "ad_user_data": "denied", "ad_personalization": "denied",
              "analytics_storage": "denied", "personalization_storage": "denied",
              "functionality_storage": "granted", "security_storage": "granted"}
    assert calls == [["consent", "default", denied]]
    assert tab.page.evaluate("Array.from(dataLayer[0])[1]") == "default"  # before anything else
    tab.button("Settings").click()
    tab.page.locator("#cmw-statistics").check()
    tab.wait_choice(lambda: tab.button("Save choices").click())
    assert consent_mode_calls(tab)[-1] == ["consent", "update", {**denied, "analytics_storage": "granted"}]
    tab.page.locator(".cmw-f").click()
    tab.wait_choice(lambda: tab.button("Accept all").click())
    everything = {k: "granted" for k in denied}
    assert consent_mode_calls(tab)[-1] == ["consent", "update", everything]
    # a returning visitor: default first, then the recorded choice
    tab.goto("/privacy")
    tab.page.wait_for_function("() => dataLayer.length >= 2")
    assert consent_mode_calls(tab) == [["consent", "default", denied], ["consent", "update", everything]]


def test_russian_and_kazakh(open_tab: Any) -> None:
    tab = open_tab()
    tab.goto("/?lang=ru")
    tab.banner().wait_for()
    assert tab.page.locator("#cmw-t").inner_text() == "Ваши данные — ваш выбор"
    assert tab.button("Принять все").count() == 1 and tab.button("Отклонить все").count() == 1
    tab.button("Настроить").click()
    tab.page.locator("dialog.cmw-s summary").first.click()
    tab.page.locator("dialog.cmw-s summary").nth(1).click()
    text = tab.page.locator("dialog.cmw-s").inner_text()
    assert "Срок хранения: 395 дн." in text and "дн.." not in text and "Хранится только ваш выбор, 180 дн." in text
    tab.wait_choice(lambda: tab.button("Отклонить все").click())
    assert tab.page.locator(".cmw-f").inner_text() == "Конфиденциальность"
    # Kazakh from the browser's languages when the page declares none
    kk = open_tab(locale="kk-KZ")
    kk.page.route(kk.site.url + "/", lambda route: route.fulfill(
        response=route.fetch(), body=re.sub(r'<html lang="\w+">', "<html>", route.fetch().text())))
    kk.goto("/")
    kk.banner().wait_for()
    assert kk.page.evaluate("document.documentElement.lang") == ""
    assert kk.page.locator("#cmw-t").inner_text() == "Құпиялылық таңдауыңыз"
    kk.wait_choice(lambda: kk.button("Бәрін қабылдау").click())
    rows = kk.site.wait_rows("SELECT language FROM {db}.consent_log ORDER BY ts", lambda rs: len(rs) == 2)
    assert [r["language"] for r in rows] == ["ru", "kk"]


def test_returning_visitor_costs_no_request(tab: Tab) -> None:
    tab.goto("/")
    tab.wait_choice(lambda: tab.button("Reject all").click())
    tab.requests.clear()
    tab.goto("/articles/consent-that-holds-up")
    tab.page.locator(".cmw-f").wait_for()
    tab.page.wait_for_load_state("networkidle")
    assert tab.banner().count() == 0
    assert not tab.paths("/_consent/state") and not tab.paths("/_consent/choice")
    # a choice made under another policy version asks again
    signer = TimestampSigner([DEMO_SECRET], salt="consentmw.core.consent")
    old = signer.sign("1~abcdefabcdefabcd~2020-01-01~necessary:statistics~1600000000~0~-").decode()
    tab.context.add_cookies([{"name": "consentmw", "value": old, "url": tab.site.url}])
    tab.goto("/")
    tab.banner().wait_for()
    assert tab.page.evaluate("consentmw.get()") is None


def test_no_layout_shift_and_small_screens(open_tab: Any) -> None:
    for viewport, scale in (({"width": 320, "height": 640}, 1), ({"width": 640, "height": 360}, 2)):
        # 320 px wide, and 1280x720 at 200 % zoom (640x360 CSS pixels)
        tab = open_tab(viewport=viewport, device_scale_factor=scale)
        page = tab.page
        tab.goto("/")
        tab.banner().wait_for()
        tab.still()
        shift = page.evaluate("""new Promise(ok => new PerformanceObserver(l => ok(l.getEntries()
            .reduce((s, e) => s + e.value, 0))).observe({type: 'layout-shift', buffered: true})
            || setTimeout(() => ok(0), 300))""")
        assert shift == 0
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        box = tab.banner().bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"]
        for name in ("Accept all", "Reject all", "Settings"):
            tab.button(name).scroll_into_view_if_needed()
            b = tab.button(name).bounding_box()
            assert b["x"] >= 0 and b["x"] + b["width"] <= viewport["width"] and b["height"] >= 24
        tab.button("Settings").click()
        dialog = page.locator("dialog.cmw-s")
        dialog.wait_for()
        d = dialog.bounding_box()
        assert d["x"] >= 0 and d["x"] + d["width"] <= viewport["width"] and d["height"] <= viewport["height"]
        page.locator("#cmw-marketing").check()
        tab.wait_choice(lambda: tab.button("Save choices").click())
        assert granted_of(tab) == ["marketing", "necessary"]


WRITE_DOCS = os.environ.get("CONSENTMW_WRITE_DOCS") == "1"


def test_screenshots(open_tab: Any, tmp_path: Path) -> None:
    """The README's pictures and the "after" set beside docs/before/; written to docs/ only with
    CONSENTMW_WRITE_DOCS=1 (otherwise to a temporary directory, so a test run never rewrites them)."""
    out = DOCS if WRITE_DOCS else tmp_path
    tab = open_tab()
    page = tab.page
    tab.goto("/")
    tab.banner().wait_for()
    page.wait_for_timeout(400)
    page.evaluate("document.activeElement.blur()")
    page.screenshot(path=str(out / "banner.png"))
    tab.button("Settings").click()
    page.locator("dialog.cmw-s").wait_for()
    page.set_viewport_size({"width": 1000, "height": 1000})
    page.locator("dialog.cmw-s summary").nth(1).click()
    page.evaluate("document.activeElement.blur()")
    page.screenshot(path=str(out / "settings.png"))
    shots = ["banner.png", "settings.png"]
    (out / "after").mkdir(exist_ok=True)
    for lang in ("en", "ru", "kk"):
        small = open_tab(viewport={"width": 360, "height": 740}, locale=lang)
        small.goto(f"/?lang={lang}")
        small.banner().wait_for()
        small.page.wait_for_timeout(400)
        small.page.evaluate("document.activeElement.blur()")
        small.page.screenshot(path=str(out / "after" / f"mobile-first-{lang}.png"))
        small.page.locator(".cmw-b .cmw-2").click()
        small.page.locator("dialog.cmw-s").wait_for()
        small.page.evaluate("document.activeElement.blur()")
        small.page.screenshot(path=str(out / "after" / f"mobile-settings-{lang}.png"))
        shots += [f"after/mobile-first-{lang}.png", f"after/mobile-settings-{lang}.png"]
    assert all((out / name).stat().st_size > 5000 for name in shots)


# ------------------------------------------------------------------ look and feel (issue 13)
@pytest.mark.parametrize("lang", ["en", "ru", "kk"])
def test_first_layer_is_compact_on_a_phone(open_tab: Any, lang: str) -> None:
    """At 360x740 the first layer covers at most 35 % of the screen, with Accept, Reject and
    Settings all visible without scrolling (Reject is never hidden to make it fit)."""
    tab = open_tab(viewport={"width": 360, "height": 740}, locale=lang)
    page = tab.page
    tab.goto(f"/?lang={lang}")
    banner = tab.banner()
    banner.wait_for()
    tab.still()  # the entrance animation
    box = banner.bounding_box()
    assert box["height"] <= 0.35 * 740, (lang, box)
    assert banner.evaluate("e => e.scrollHeight <= e.clientHeight"), "the first layer scrolls"
    buttons = banner.locator(".cmw-a button")
    assert buttons.count() == 3
    for i in range(3):
        b = buttons.nth(i)
        assert b.is_visible()
        r = b.bounding_box()
        assert box["y"] <= r["y"] and r["y"] + r["height"] <= box["y"] + box["height"] <= 740
        assert r["x"] >= 0 and r["x"] + r["width"] <= 360 and r["height"] >= 32
    accept, reject = buttons.nth(0).bounding_box(), buttons.nth(1).bounding_box()
    assert (accept["width"], accept["height"], accept["y"]) == (reject["width"], reject["height"], reject["y"])
    no_errors(tab)


def test_settings_footer_stays_in_view_on_a_phone(open_tab: Any) -> None:
    tab = open_tab(viewport={"width": 360, "height": 740})
    page = tab.page
    tab.goto("/")
    tab.button("Settings").click()
    dialog = page.locator("dialog.cmw-s")
    dialog.wait_for()
    for summary in dialog.locator("summary").all():
        summary.click()  # everything unfolded: the body is far taller than the screen
    body = dialog.locator(".cmw-sb")
    assert body.evaluate("e => e.scrollHeight > e.clientHeight + 200")
    for where in ("top", "bottom"):
        body.evaluate(f"e => e.scrollTop = {'0' if where == 'top' else 'e.scrollHeight'}")
        for name in ("Accept all", "Reject all", "Save choices"):
            b = tab.button(name).bounding_box()
            assert 0 <= b["y"] and b["y"] + b["height"] <= 740 and b["x"] + b["width"] <= 360, (where, name, b)
    # Save is a secondary button; Accept and Reject are the same
    style = "e => [getComputedStyle(e).backgroundColor, e.getBoundingClientRect().width]"
    assert tab.button("Accept all").evaluate(style) == tab.button("Reject all").evaluate(style)
    assert tab.button("Save choices").evaluate(style)[0] != tab.button("Accept all").evaluate(style)[0]
    page.locator("#cmw-statistics").check()
    tab.wait_choice(lambda: tab.button("Save choices").click())
    assert granted_of(tab) == ["necessary", "statistics"]


def test_focus_ring_only_for_keyboard_focus(tab: Tab) -> None:
    page = tab.page
    tab.goto("/")
    tab.banner().wait_for()
    page.wait_for_timeout(300)
    outline = "getComputedStyle(document.activeElement).outlineStyle"
    # focus was moved into the banner on load, but no ring appears for it
    assert page.evaluate("document.activeElement.classList.contains('cmw-b')")
    assert page.evaluate(outline) == "none"
    # a mouse click on a button shows no ring either
    tab.button("Settings").hover()
    page.mouse.down()
    assert page.evaluate("document.activeElement.textContent") == "Settings"
    assert page.evaluate(outline) == "none"
    page.mouse.up()
    page.locator("dialog.cmw-s").wait_for()
    page.mouse.click(5, 5)  # the backdrop: nothing changes
    # the keyboard shows it
    page.keyboard.press("Tab")
    assert page.evaluate("!!document.activeElement.closest('dialog.cmw-s')")
    assert page.evaluate(outline) == "solid"
    assert page.evaluate("parseFloat(getComputedStyle(document.activeElement).outlineWidth)") >= 2
    no_errors(tab)


def test_delete_my_data_asks_first_and_ends_the_consent(tab: Tab) -> None:
    site = tab.site
    page = tab.page
    tab.goto("/")
    first = tab.wait_choice(lambda: tab.button("Accept all").click())
    old_id = first["consent"]["id"]
    for path in ("/articles/consent-that-holds-up", "/articles/global-privacy-control"):
        tab.goto(path)
    rows = site.wait_rows("SELECT visitor_id FROM {db}.events_personalisation", lambda rs: len(rs) == 2)
    visitor = rows[0]["visitor_id"]
    page.locator(".cmw-f").click()
    dialog = page.locator("dialog.cmw-s")
    dialog.wait_for()
    # the first click only asks; Cancel keeps everything
    tab.button("Delete my data").click()
    assert "cannot be undone" in dialog.inner_text()
    assert page.evaluate("document.activeElement.textContent") == "Cancel"
    tab.button("Cancel").click()
    assert page.evaluate("document.activeElement.textContent") == "Delete my data"
    assert dialog.get_by_role("link", name="Download my data").count() == 1 and tab.button("Cancel").count() == 0
    page.wait_for_timeout(300)
    assert not [u for m, u in tab.requests if m == "DELETE"]
    assert site.count("events_personalisation", f"visitor_id = '{visitor}'") == 2
    # confirmed: erased, and the consent ends with it
    tab.button("Delete my data").click()
    with page.expect_response(lambda r: r.url.endswith("/_consent/me?lang=en") and r.request.method == "DELETE") as info:
        tab.button("Delete my data").click()
    assert info.value.ok  # (its body is not read by the page, so not here either)
    assert [r["verified"] for r in site.wait_rows("SELECT verified FROM {db}.erasure_log")] == [True]
    dialog.wait_for(state="detached")
    # the banner asks again, saying why
    tab.banner().wait_for()
    assert "Your data has been deleted" in tab.banner().inner_text()
    assert tab.consent_cookie() is None
    assert page.evaluate("consentmw.get()") is None and page.evaluate("consentmw.allows('statistics')") is False
    assert site.count("events_personalisation", f"visitor_id = '{visitor}'") == 0
    # browsing on collects nothing, under no visitor id, old or new
    site.settle(0.5)
    before = [site.count(t) for t in EVENTS]
    tab.goto("/articles/clickhouse-for-analytics")
    tab.banner().wait_for()
    site.settle()
    assert [site.count(t) for t in EVENTS] == before
    erased = site.query("SELECT consent_id, user_agent, toString(ip) AS ip, visitor_id FROM {db}.consent_log "
                        "WHERE action = 'erase'")
    assert erased == [{"consent_id": old_id, "user_agent": "", "ip": "::", "visitor_id": ""}]
    no_errors(tab)


def test_withdraw_and_delete(tab: Tab) -> None:
    site = tab.site
    page = tab.page
    tab.goto("/")
    tab.wait_choice(lambda: tab.button("Accept all").click())
    tab.goto("/articles/consent-that-holds-up")
    site.wait_rows("SELECT visitor_id FROM {db}.events_personalisation", lambda rs: len(rs) == 1)
    page.locator(".cmw-f").click()
    page.locator("dialog.cmw-s").wait_for()
    # offered beside withdrawal, as a link-like control (not a fourth solid button)
    withdraw, both = tab.button("Withdraw all consent"), tab.button("Withdraw and delete my data")
    assert withdraw.is_visible() and both.is_visible()
    solid = tab.button("Accept all").evaluate("e => getComputedStyle(e).backgroundColor")
    assert withdraw.evaluate("e => getComputedStyle(e).backgroundColor") != solid
    both.click()
    page.wait_for_timeout(200)
    assert not tab.paths("erase=true")
    answer = tab.wait_choice(lambda: tab.button("Withdraw and delete my data").click())
    assert any("erase=true" in u for _, u in tab.paths("/_consent/choice"))
    assert answer["consent"]["granted"] == ["necessary"] and answer["erasure"]["verified"] is True
    assert granted_of(tab) == ["necessary"]
    assert site.count("events_personalisation") == 0
    assert tab.page.locator("dialog.cmw-s").count() == 0 and tab.banner().count() == 0
    no_errors(tab)


def test_state_is_compressed_and_revalidated_in_the_browser(tab: Tab) -> None:
    page = tab.page
    with page.expect_response(lambda r: "/_consent/state" in r.url) as info:
        tab.goto("/?lang=ru")
    tab.banner().wait_for()
    assert info.value.headers.get("content-encoding") == "gzip"
    assert info.value.headers.get("etag", "").startswith('"') and "private" in info.value.headers["cache-control"]
    entry = "u => performance.getEntriesByType('resource').filter(e => e.name.includes('/_consent/state'))" \
            ".map(e => [e.transferSize, e.encodedBodySize, e.decodedBodySize])"
    [(transfer, encoded, decoded)] = page.evaluate(entry)
    assert encoded < decoded / 2, (encoded, decoded)
    # the next page asks again with If-None-Match and gets a 304: headers only, the body from the cache
    tab.goto("/privacy?lang=ru")
    tab.banner().wait_for()
    page.wait_for_timeout(200)
    [(transfer, encoded, decoded)] = page.evaluate(entry)
    assert transfer < 600 and encoded > 1000, (transfer, encoded, decoded)
