"""The scanner's pure parts: URLs and the frontier, cookie strings, the tracker list,
classification rules, the policy's browser declarations."""

from __future__ import annotations

import pytest

from consentmw.core.policy import Policy, PolicyError
from consentmw.scan.classify import Rules, classify
from consentmw.scan.cookies import describe_lifetime, parse
from consentmw.scan.crawl import Frontier, PathFilter, URLError, normalise, origin_of, party, site_of, start_url
from consentmw.scan.model import Banner, CookieSet, GatedScript, Observation, PageResult, Request, StorageKey
from consentmw.scan.trackers import bundled, host_matches, parse as parse_trackers


# -- URLs and the frontier ----------------------------------------------------------
def test_origin_and_normalise() -> None:
    assert origin_of("HTTPS://Example.COM:443/a?b#c") == "https://example.com"
    assert origin_of("http://127.0.0.1:8000/x") == "http://127.0.0.1:8000"
    assert origin_of("http://[::1]:80/") == "http://[::1]"
    assert normalise("https://example.com#top") == "https://example.com/"
    assert normalise("https://example.com/a?x=1#y") == "https://example.com/a?x=1"
    assert normalise("mailto:a@b.c") is None and normalise("javascript:void(0)") is None
    with pytest.raises(URLError):
        start_url("example.com")


def test_site_and_party() -> None:
    assert site_of("www.shop.example.com") == "example.com"
    assert site_of("shop.example.co.uk") == "example.co.uk"
    assert site_of("127.0.0.2") == "127.0.0.2"
    assert party("example.com", "www.example.com") == "first"
    assert party("tracker.net", "www.example.com") == "third"
    assert party("127.0.0.2", "127.0.0.1") == "third"


def test_frontier_is_breadth_first_same_origin_and_bounded() -> None:
    f = Frontier("http://s.test/", max_pages=4, filter=PathFilter(exclude=("/admin*",)))
    assert f.pop() == ("http://s.test/", 0)
    added = f.offer(["/a", "http://s.test/b#x", "http://other.test/c", "http://s.test/admin/users",
                     "http://s.test/file.PDF", "https://s.test/d", "http://s.test/b", "http://s.test/e",
                     "http://s.test/f"], 0)
    # /a is relative: links reach the frontier absolute (the browser resolves them), so it is dropped
    assert added == 3 and [u for u, _ in f.queue] == ["http://s.test/b", "http://s.test/e", "http://s.test/f"]
    assert f.offer(["http://s.test/g", "http://s.test/b"], 1) == 0 and f.skipped == 1   # max_pages reached
    assert f.pop() == ("http://s.test/b", 1)
    assert f.admitted == 4


def test_path_filter() -> None:
    f = PathFilter(include=("/blog/*",), exclude=("*/draft*",))
    assert f.allows("http://s/blog/post") and not f.allows("http://s/shop")
    assert not f.allows("http://s/blog/draft-1")
    assert PathFilter(exclude=("/search?*",)).allows("http://s/search") is True
    assert PathFilter(exclude=("/search?*",)).allows("http://s/search?q=x") is False


# -- cookie strings -----------------------------------------------------------------------
def test_parse_cookie_strings() -> None:
    w = parse("_ga=GA1.2.3; Max-Age=63072000; Domain=.Example.com; Path=/", "www.example.com", 0)
    assert w is not None and (w.name, w.domain, w.lifetime, w.deletes) == ("_ga", "example.com", 63072000, False)
    w = parse("sid=1; Expires=Thu, 01 Jan 1970 00:00:10 GMT", "h", 0)
    assert w is not None and w.lifetime == 10
    assert parse("x=1; max-age=0", "h", 0).deletes                                  # type: ignore[union-attr]
    assert parse("x=1; expires=Thu, 01 Jan 1970 00:00:00 GMT", "h", 100).deletes   # type: ignore[union-attr]
    assert parse("x=1; max-age=10; expires=garbage", "h", 0).lifetime == 10        # type: ignore[union-attr]
    assert parse("", "h", 0) is None
    assert describe_lifetime(None) == "session" and describe_lifetime(2 * 365 * 86400) == "2 years"
    assert describe_lifetime(90 * 86400) == "90 days" and describe_lifetime(30) == "30 s"
    assert describe_lifetime(86399) == "1 day" and describe_lifetime(3600 * 20) == "20 hours"


# -- the tracker list ---------------------------------------------------------------------
def test_tracker_list() -> None:
    t = bundled()
    assert t.by_host("www.google-analytics.com").name == "Google Analytics"    # type: ignore[union-attr]
    assert t.by_host("mc.yandex.ru").name == "Yandex Metrica"                  # type: ignore[union-attr]
    assert t.by_host("notgoogle-analytics.com") is None
    assert t.by_cookie("_hjSessionUser_123").name == "Hotjar"                  # type: ignore[union-attr]
    assert t.by_cookie("consentmw") is None
    assert all(tr.source and tr.purpose in ("statistics", "marketing", "personalisation", "necessary")
               for tr in t.trackers)
    assert host_matches("a.b.c", "b.c") and not host_matches("ab.c", "b.c")
    with pytest.raises(ValueError, match="lacks 'source'"):
        parse_trackers('[[tracker]]\nname="x"\nvendor="y"\ncategory="z"\npurpose="statistics"\n')


# -- classification -----------------------------------------------------------------------
def _obs(mode: str, **kw: object) -> Observation:
    o = Observation(mode=mode, url="http://s/", banner=Banner(consentmw=True, shown=True, working=mode != "none" or None))
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def test_classify_before_choice_after_refusal_and_after_accept() -> None:
    ga = CookieSet("_ga", "s", "first", 86400, "script", "document.cookie in script http://t/x.js:1")
    consent = CookieSet("consentmw", "s", "first", 86400, "header", "Set-Cookie")
    cf = CookieSet("__cf_bm", "s", "first", 1800, "header", "Set-Cookie")
    ads = Request("http://ads.test/a.js", "ads.test", "script", "<script> added by script http://s/gated.js:1")
    page = PageResult("http://s/", 0, {
        "none": _obs("none", cookies=[ga, cf], storage=[StorageKey("localStorage", "http://s", "k")]),
        "reject": _obs("reject", cookies=[consent]),
        "accept": _obs("accept", cookies=[consent, ga], requests=[ads],
                       gated=[GatedScript(("marketing",), "http://s/gated.js", True),
                              GatedScript(("unknownpurpose",), "inline: x()", False)]),
    })
    found = classify(page, Rules.from_policy(Policy.default()))
    got = sorted((f.severity, f.kind, f.mode, f.purpose) for f in found)
    assert got == [
        ("expected", "gated_script", "accept", "marketing"),
        ("expected", "request", "accept", "marketing"),      # loaded by the gated marketing script
        ("violation", "cookie", "none", ""),                 # _ga before a choice (__cf_bm is necessary)
        ("violation", "storage", "none", ""),
        ("warning", "gated_not_run", "accept", "unknownpurpose"),
    ]
    assert next(f for f in found if f.kind == "cookie").known_as == "Google Analytics"


def test_classify_broken_and_missing_banner() -> None:
    page = PageResult("http://s/", 0, {
        "none": _obs("none"),
        "reject": _obs("reject", banner=Banner(True, True, "reject", False, ("necessary", "statistics"),
                                               "Reject all granted statistics")),
        "accept": _obs("accept")})
    found = classify(page, Rules())
    assert [(f.severity, f.kind, f.mode, f.source) for f in found] == [
        ("violation", "banner_broken", "reject", "Reject all granted statistics")]
    page = PageResult("http://s/", 0, {"none": _obs("none", banner=Banner()), "reject": Observation("reject", "http://s/", skipped="x")})
    assert [(f.severity, f.kind) for f in classify(page, Rules())] == [("warning", "no_banner")]
    page = PageResult("http://s/", 0, {"none": _obs("none", banner=Banner(consentmw=True, shown=False, detail="slow"))})
    assert [(f.severity, f.kind, f.source) for f in classify(page, Rules())] == [("violation", "banner_broken", "slow")]


def test_declared_hosts_cookies_and_storage() -> None:
    policy = Policy.from_dict({"version": "v", "updated": "2026-11-30", "purposes": [
        {"id": "necessary", "required": True, "cookies": ["sessionid", "csrf*"], "hosts": ["cdn.example.net"],
         "storage": ["cart"], "texts": {"en": {"title": "N"}}},
        {"id": "statistics", "hosts": ["stats.example.net"], "texts": {"en": {"title": "S"}}}]})
    rules = Rules.from_policy(policy)
    obs = _obs("none", cookies=[CookieSet("csrftoken", "s", "first", None, "header", "")],
               storage=[StorageKey("localStorage", "http://s", "cart")],
               requests=[Request("https://cdn.example.net/x.js", "cdn.example.net", "script", ""),
                         Request("https://stats.example.net/c", "stats.example.net", "fetch", "")])
    found = classify(PageResult("http://s/", 0, {"none": obs}), rules)
    assert [(f.kind, f.purpose) for f in found] == [("request", "statistics")]


def test_policy_browser_declarations_are_validated() -> None:
    with pytest.raises(PolicyError, match=r"purposes\[0\].cookies: expected a list"):
        Policy.from_dict({"version": "v", "updated": "2026-11-30", "purposes": [
            {"id": "necessary", "required": True, "cookies": "sessionid", "texts": {"en": {"title": "N"}}}]})
    # the public policy (what /state shows and the texts hash covers) is unchanged by them
    assert "cookies" not in Policy.default().public()["purposes"][0]
