"""Consent cookies that cannot be tossed (issue 11.6): a second `consentmw` cookie planted by a
sibling subdomain or a parent domain grants nothing and identifies nobody; the next choice
expires the extras; on HTTPS without a cookie domain the cookie is `__Host-consentmw`, which
no other host can set, and a `__Host-` value copied under the plain name is refused."""

from __future__ import annotations

from typing import Any, Callable

import httpx

from consentmw import ConsentMiddleware
from consentmw.core.consent import COOKIE_NAME, HOST_COOKIE_NAME, ConsentCodec, pick_cookie
from consentmw.core.policy import Policy

from tests._asgi import _quiet_writers, cookie_attrs, offline, req, set_cookie_headers  # noqa: F401
from tests.conftest import BROWSER_UA, SECRET

Factory = Callable[..., ConsentMiddleware]
HTTPS = {"base_url": "https://www.shop.example", "headers": {"origin": "https://www.shop.example"}}


def issue(mw: ConsentMiddleware, *granted: str, host: bool = False) -> str:
    return mw.codec.issue(granted, visitor_id="V" * 16 if "personalisation" in granted else None,
                          host_cookie=host)[0]


def cookie_header(*pairs: tuple[str, str]) -> dict[str, str]:
    return {"cookie": "; ".join(f"{n}={v}" for n, v in pairs)}


def state(mw: ConsentMiddleware, headers: dict[str, str], base_url: str = "http://www.shop.example") -> Any:
    r = req(mw, "GET", "/_consent/state", headers=headers, base_url=base_url)
    assert r.status_code == 200
    return r.json()


def test_pick_cookie_rules() -> None:
    assert pick_cookie(b"a=1; consentmw=X").value == "X"
    assert pick_cookie(b"consentmw=X; other=1; consentmw=X").value == "X"         # the same value twice
    assert pick_cookie(b"consentmw=X; consentmw=Y").conflict                          # two different: nobody
    assert pick_cookie(b"consentmw=X; consentmw=Y").value is None
    both = pick_cookie(b"consentmw=Y; __Host-consentmw=X")
    assert (both.value, both.host, both.stray, both.conflict) == ("X", True, True, False)  # __Host- wins
    assert pick_cookie(b"__Host-consentmw=X; __Host-consentmw=Z").value is None
    assert pick_cookie(b"xconsentmw=X; consentmw_old=Y").value is None                # names match exactly
    assert pick_cookie(b'consentmw="X"').value == "X"
    assert pick_cookie(b"consentmw=").value is None                                  # an expired leftover


def test_two_different_cookies_grant_nothing_and_identify_nobody(offline: Factory) -> None:
    mw = offline()
    mine, planted = issue(mw, "statistics", "personalisation"), issue(mw, "statistics", "marketing")
    for cookie in (mine, planted):
        assert state(mw, cookie_header((COOKIE_NAME, cookie)))["prompt"] is False
    tossed = cookie_header((COOKIE_NAME, planted), (COOKIE_NAME, mine))
    body = state(mw, tossed)
    assert body["consent"] is None and body["prompt"] is True
    page = req(mw, "GET", "/", headers=tossed, base_url="http://www.shop.example")
    assert "stats=False granted=necessary<" in page.text
    assert req(mw, "GET", "/_consent/me", headers=tossed).status_code == 401
    # the same over two Cookie lines (HTTP/2 splits them)
    two_lines = httpx.Headers([("cookie", f"{COOKIE_NAME}={planted}"), ("cookie", f"{COOKIE_NAME}={mine}")])
    assert req(mw, "GET", "/_consent/me", headers=two_lines).status_code == 401


def test_next_choice_starts_afresh_and_expires_the_extras(offline: Factory) -> None:
    mw = offline(cookie_domain=".shop.example")
    mine, planted = issue(mw, "statistics"), issue(mw, "marketing")
    r = req(mw, "POST", "/_consent/choice", json={"all": False}, base_url="http://www.shop.example",
            headers=cookie_header((COOKIE_NAME, planted), (COOKIE_NAME, mine)))
    assert r.status_code == 200
    body = r.json()
    assert body["consent"]["id"] not in (mw.codec.decode(mine).id, mw.codec.decode(planted).id)
    cookies = [cookie_attrs(h) for h in set_cookie_headers(r)]
    expired = {(first.split("=")[0], attrs.get("domain", "").lstrip(".") or None)
               for first, attrs in cookies if attrs.get("max-age") == "0"}
    kept = [(first, attrs) for first, attrs in cookies if attrs.get("max-age") != "0"]
    # the host-only plain cookie and the parent domains' ones are expired; the new one is set last
    assert {(COOKIE_NAME, None), (COOKIE_NAME, "www.shop.example")} <= expired
    assert (COOKIE_NAME, "shop.example") not in expired  # that is the one being set
    assert len(kept) == 1 and kept[0][1]["domain"].lstrip(".") == "shop.example"
    assert set_cookie_headers(r)[-1] == [h for h in set_cookie_headers(r) if "Max-Age=0" not in h][0]


def test_https_without_cookie_domain_uses_the_host_prefix(offline: Factory) -> None:
    mw = offline()
    r = req(mw, "POST", "/_consent/choice", json={"all": True}, **HTTPS)
    [header] = set_cookie_headers(r)
    first, attrs = cookie_attrs(header)
    assert first.startswith(HOST_COOKIE_NAME + "=")
    assert "secure" in attrs and attrs["path"] == "/" and "domain" not in attrs
    value = first.split("=", 1)[1]
    assert state(mw, cookie_header((HOST_COOKIE_NAME, value)), HTTPS["base_url"])["prompt"] is False
    # over plain http, or with a cookie domain, the plain name (a __Host- cookie needs both)
    first, _ = cookie_attrs(set_cookie_headers(req(mw, "POST", "/_consent/choice", json={"all": True}))[0])
    assert first.startswith(COOKIE_NAME + "=")
    shared = offline(cookie_domain=".shop.example")
    first, attrs = cookie_attrs(set_cookie_headers(req(shared, "POST", "/_consent/choice", json={"all": True},
                                                       **HTTPS))[0])
    assert first.startswith(COOKIE_NAME + "=") and attrs["domain"].lstrip(".") == "shop.example"


def test_a_host_cookie_copied_under_the_plain_name_is_refused(offline: Factory) -> None:
    """An attacker takes their own __Host- cookie and plants it as `consentmw` on the parent domain."""
    mw = offline()
    theirs = issue(mw, "statistics", "marketing", host=True)
    assert state(mw, cookie_header((HOST_COOKIE_NAME, theirs)), HTTPS["base_url"])["prompt"] is False
    body = state(mw, cookie_header((COOKIE_NAME, theirs)), HTTPS["base_url"])
    assert body["consent"] is None and body["prompt"] is True
    assert req(mw, "GET", "/_consent/me", headers=cookie_header((COOKIE_NAME, theirs)),
               base_url=HTTPS["base_url"]).status_code == 401


def test_the_host_cookie_wins_over_a_planted_plain_one_and_the_choice_expires_it(offline: Factory) -> None:
    mw = offline()
    mine, planted = issue(mw, "statistics", host=True), issue(mw, "marketing")
    my_id = mw.codec.decode(mine, host_name=True).id
    headers = cookie_header((COOKIE_NAME, planted), (HOST_COOKIE_NAME, mine))
    body = state(mw, headers, HTTPS["base_url"])
    assert body["consent"]["granted"] == ["necessary", "statistics"]
    r = req(mw, "POST", "/_consent/choice", json={"all": False}, base_url=HTTPS["base_url"],
            headers={**headers, **HTTPS["headers"]})
    assert r.json()["consent"]["id"] == my_id  # still the visitor's own
    names = [(cookie_attrs(h)[0].split("=")[0], cookie_attrs(h)[1].get("max-age")) for h in set_cookie_headers(r)]
    assert (COOKIE_NAME, "0") in names and names[-1][0] == HOST_COOKIE_NAME and names[-1][1] != "0"


def test_plain_cookies_of_before_the_host_prefix_still_count_and_migrate(offline: Factory) -> None:
    """A visitor who chose before the site moved to __Host- keeps their choice (same consent id);
    their next choice sets the __Host- cookie and expires the plain one. Format 1 cookies too."""
    mw = offline()
    old = issue(mw, "statistics")
    legacy_codec = ConsentCodec(SECRET, Policy.default())
    legacy = legacy_codec.issue(["statistics"])[0]
    # a format 1 payload: what earlier versions issued (no key id, no name, seconds)
    payload = legacy_codec._signer.unsign(legacy).decode().split("~")
    v1 = legacy_codec._signer.sign("~".join(["1", payload[1], payload[2], payload[3], payload[4][:-3],
                                             payload[5], payload[6]])).decode()
    for value in (old, v1):
        body = state(mw, cookie_header((COOKIE_NAME, value)), HTTPS["base_url"])
        assert body["consent"]["granted"] == ["necessary", "statistics"], value
        r = req(mw, "POST", "/_consent/choice", json={"granted": ["statistics"]}, base_url=HTTPS["base_url"],
                headers={**cookie_header((COOKIE_NAME, value)), **HTTPS["headers"]})
        assert r.json()["consent"]["id"] == body["consent"]["id"]
        firsts = [cookie_attrs(h)[0] for h in set_cookie_headers(r)]
        assert firsts[0] == f'{COOKIE_NAME}=""' and firsts[-1].startswith(HOST_COOKIE_NAME + "=")


async def test_pages_under_tossed_cookies_are_not_collected(make_app: Factory, ch: Any, database: str) -> None:
    """The reported attack: the victim's page views stored under the attacker's consent and
    visitor id, visible in the attacker's /me export."""
    mw = make_app()
    transport = httpx.ASGITransport(app=mw, client=("81.2.69.160", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://www.shop.example",
                                 headers={"user-agent": BROWSER_UA}) as attacker, \
            httpx.AsyncClient(transport=transport, base_url="http://www.shop.example",
                              headers={"user-agent": BROWSER_UA}) as victim:
        assert (await attacker.post("/_consent/choice", json={"all": True})).status_code == 200
        assert (await victim.post("/_consent/choice", json={"all": False})).status_code == 200
        planted = attacker.cookies[COOKIE_NAME]
        own = victim.cookies[COOKIE_NAME]
        for i in range(3):
            r = await victim.get(f"/articles/victim-{i}",
                                 headers={"cookie": f"{COOKIE_NAME}={planted}; {COOKIE_NAME}={own}"})
            assert r.status_code == 200
        mw.collector.flush()
        export = (await attacker.get("/_consent/me")).json()
    mw.collector.flush()
    stored = ch.query(f"SELECT count() FROM {database}.events_personalisation WHERE path LIKE '/articles/victim-%'")
    assert stored.result_rows[0][0] == 0
    assert "victim-" not in str(export)
