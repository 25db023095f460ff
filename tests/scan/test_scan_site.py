"""`consentmw scan` against the test site: one scan, every kind of finding checked."""

from __future__ import annotations

from typing import Any

import pytest

from consentmw.scan.model import Finding, ScanResult
from consentmw.scan.runner import ScanConfig, run
from tests.scan.conftest import ScanSite

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def scanned(test_site: ScanSite) -> tuple[ScanResult, ScanSite, dict[str, int]]:
    result = run(ScanConfig(url=test_site.url + "/", max_pages=20))
    hits_after = dict(test_site.hits)
    return result, test_site, hits_after


def page(result: ScanResult, path: str) -> Any:
    for p in result.pages:
        if p.url.endswith(path):
            return p
    raise AssertionError(f"{path} not scanned; pages: {[p.url for p in result.pages]}")


def findings(result: ScanResult, path: str, severity: str | None = None, mode: str | None = None) -> list[Finding]:
    return [f for f in page(result, path).findings
            if (severity is None or f.severity == severity) and (mode is None or f.mode == mode)]


def test_crawls_same_origin_pages_breadth_first(scanned: Any) -> None:
    result, site, _ = scanned
    urls = [p.url for p in result.pages]
    assert urls[0] == site.url + "/"
    expected = {"/compliant", "/ungated", "/analytics-cookie", "/iframe", "/gated", "/nobanner", "/bad-gated",
                "/sneaky", "/away", "/feed"}
    assert {u[len(site.url):] for u in urls} == {"/"} | expected   # /hostile is linked from nowhere
    assert all(p.depth == 1 for p in result.pages[1:])
    assert not any(".pdf" in u or "mailto" in u or "#" in u for u in urls)


def test_never_requests_outside_what_pages_load(scanned: Any) -> None:
    result, site, hits = scanned
    assert hits.get("/never", 0) == 0           # linked, but on another origin: never crawled
    hosts = {r.host for p in result.pages for o in p.observations.values() for r in o.requests}
    assert hosts == {"127.0.0.2"}


def test_compliant_page_is_clean(scanned: Any) -> None:
    result, _, _ = scanned
    p = page(result, "/compliant")
    assert [f for f in p.findings if f.severity != "expected"] == []
    none, reject, accept = (p.observations[m] for m in ("none", "reject", "accept"))
    assert none.banner.shown and none.cookies == [] and none.requests == [] and none.storage == []
    assert reject.banner.working and reject.banner.granted == ("necessary",)
    assert [c.name for c in reject.cookies] == ["consentmw"]      # the consent cookie only
    assert accept.banner.working and set(accept.banner.granted) >= {"statistics", "marketing"}
    ran = [f for f in p.findings if f.kind == "gated_script"]
    assert [(f.severity, f.purpose) for f in ran] == [("expected", "statistics")]


def test_ungated_third_party_script_is_a_violation_before_choice_and_after_refusal(scanned: Any) -> None:
    result, site, _ = scanned
    for mode in ("none", "reject"):
        found = findings(result, "/ungated", "violation", mode)
        req = [f for f in found if f.kind == "request"]
        assert len(req) == 1 and "127.0.0.2" in req[0].thing
        assert "<script> in the page HTML (line" in req[0].source, req[0].source
        cookie = [f for f in found if f.kind == "cookie"]
        assert len(cookie) == 1 and cookie[0].thing.startswith("cookie _fbp (127.0.0.1, first-party, 90 days")
        assert cookie[0].known_as == "Meta Pixel"
        assert f"document.cookie in script {site.third}/tracker.js:1" == cookie[0].source
    # the beacon the tracker sends is counted under the same host, initiated by its script
    none = page(result, "/ungated").observations["none"]
    collect = [r for r in none.requests if "/collect" in r.url]
    assert collect and collect[0].initiator == f"<img> added by script {site.third}/tracker.js while it ran (line 7)"


def test_first_party_analytics_cookie_set_by_javascript(scanned: Any) -> None:
    result, _, _ = scanned
    found = findings(result, "/analytics-cookie", "violation", "none")
    cookie = next(f for f in found if f.kind == "cookie")
    assert cookie.thing == "cookie _ga (127.0.0.1, first-party, 2 years)"
    assert cookie.known_as == "Google Analytics"
    assert cookie.source == "document.cookie in an inline <script> (line 8)"
    gid = [f for f in found if f.kind == "cookie" and "_gid" in f.thing]
    assert len(gid) == 1 and gid[0].thing == "cookie _gid (127.0.0.1, first-party, 1 day)"
    assert gid[0].source == "cookieStore.set in an inline <script> (line 10)"
    storage = {f.thing: f.source for f in found if f.kind == "storage"}
    assert storage == {
        "localStorage 'analytics_visitor' (" + page(result, "/analytics-cookie").url.rsplit("/", 1)[0] + ")":
            "an inline <script> (line 9)",
        "sessionStorage 'session_replay' (" + page(result, "/analytics-cookie").url.rsplit("/", 1)[0] + ")":
            "an inline <script> (line 11)",
        "indexedDB 'tracker-db' (" + page(result, "/analytics-cookie").url.rsplit("/", 1)[0] + ")":
            "an inline <script> (line 12)",
    }
    assert {f.kind for f in findings(result, "/analytics-cookie", "violation", "reject")} == {"cookie", "storage"}


def test_iframe_embed_setting_cookies(scanned: Any) -> None:
    result, site, _ = scanned
    found = findings(result, "/iframe", "violation", "none")
    frame = next(f for f in found if f.kind == "request")
    assert "request to 127.0.0.2 (document" in frame.thing and frame.source.startswith("<iframe>")
    cookies = {f.thing.split(" ")[1]: f for f in found if f.kind == "cookie"}
    header = cookies["VISITOR_INFO1_LIVE"]
    # Secure on plain http: Chromium refuses it, and the finding says so (the site still tried)
    assert "(127.0.0.2, third-party, 180 days" in header.thing and header.known_as == "YouTube embed"
    assert header.source == f"Set-Cookie in the response to <iframe src={site.third}/embed>"
    script = cookies["YSC"]
    assert script.source == f"document.cookie in an inline <script> in <iframe src={site.third}/embed> (line 2)"


def test_gated_script_runs_only_after_accept(scanned: Any) -> None:
    result, site, hits = scanned
    p = page(result, "/gated")
    assert [f for f in p.findings if f.severity != "expected"] == []
    # loaded in the Accept context only: after the click, and again after the reload
    assert hits.get("/ads.js") == 2
    for mode in ("none", "reject"):
        assert p.observations[mode].requests == []
    expected = {(f.kind, f.purpose) for f in p.findings if f.severity == "expected"}
    assert ("request", "marketing") in expected and ("gated_script", "marketing") in expected
    cookie = next(f for f in p.findings if f.kind == "cookie")
    assert cookie.thing.startswith("cookie _gcl_au") and cookie.purpose == "marketing"
    assert cookie.known_as == "Google Ads / DoubleClick"


def test_page_without_banner(scanned: Any) -> None:
    result, _, _ = scanned
    p = page(result, "/nobanner")
    assert [(f.severity, f.kind) for f in p.findings] == [("warning", "no_banner")]
    assert p.observations["reject"].skipped == "no consentmw banner to click"


def test_script_with_data_consent_but_no_text_plain_runs_without_consent(scanned: Any) -> None:
    result, _, _ = scanned
    found = findings(result, "/bad-gated", "violation")
    assert {f.mode for f in found} == {"none", "reject"}
    assert all(f.kind == "gated_script" and "statistics" in f.thing for f in found)


def test_site_level_summary(scanned: Any) -> None:
    result, _, _ = scanned
    assert result.consentmw_banner
    assert result.count("violation") == sum(len(findings(result, p, "violation")) for p in
                                            ("/ungated", "/analytics-cookie", "/iframe", "/bad-gated", "/sneaky"))
    assert not result.stopped


def test_reject_all_that_grants_something_is_a_broken_banner(scanned: Any) -> None:
    result, _, _ = scanned
    p = page(result, "/sneaky")
    assert [(f.severity, f.kind, f.mode, f.source) for f in p.findings if f.severity != "expected"] == [
        ("violation", "banner_broken", "reject", "Reject all granted statistics")]
    assert p.observations["reject"].banner.granted == ("necessary", "statistics")


def test_redirect_to_another_origin_and_non_html_are_not_judged(scanned: Any) -> None:
    result, site, hits = scanned
    away = page(result, "/away")
    assert away.observations["none"].error.startswith(f"redirected to another origin: {site.third}/moved")
    assert away.findings == [] and away.observations["reject"].skipped == "the page did not load"
    # the site's own redirect, followed by each visit of /away (one, or three side by side once the
    # site is known to have a banner), and never crawled further
    assert hits.get("/moved") in (1, 3)
    feed = page(result, "/feed")
    assert not feed.observations["none"].is_page and feed.findings == []
    assert feed.observations["accept"].skipped == "not an HTML page"
