"""A policy change re-asks every visitor, but their identity and their rights survive it;
the profile is reachable per request; operators reach a visitor by path."""

from __future__ import annotations

from typing import Any

import httpx

from consentmw import Policy
from consentmw.core.consent import COOKIE_NAME
from consentmw.rights.profile import Profile
from tests.conftest import BROWSER_UA

ADMIN = "admin-token-0123456789"


def bumped(version: str = "2027-01-01") -> Policy:
    base = Policy.default()
    return Policy.from_dict({"version": version, "updated": "2027-01-01"}, base=base)


def client(mw: Any, cookies: dict[str, str] | None = None) -> httpx.AsyncClient:
    jar = httpx.Cookies()
    for name, value in (cookies or {}).items():
        jar.set(name, value, domain="site.test")
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=mw, client=("81.2.69.160", 4000)),
                             base_url="http://site.test", headers={"user-agent": BROWSER_UA}, cookies=jar)


def cookie_ids(value: str) -> tuple[str, str]:
    parts = value.split(".")[0].split("~")
    return parts[1], parts[6]


async def test_rights_and_ids_survive_a_policy_bump(make_app: Any) -> None:
    old = make_app()
    async with client(old) as c:
        await c.post("/_consent/choice", json={"all": True})
        await c.get("/articles/before-the-change")
        cookie = c.cookies[COOKIE_NAME]
    old.collector.flush()
    consent_id, visitor_id = cookie_ids(cookie)

    new = make_app(policy=bumped())
    async with client(new, {COOKIE_NAME: cookie}) as c:
        state = (await c.get("/_consent/state")).json()
        assert state["prompt"] is True and state["consent"] is None   # asked again
        page = await c.get("/articles/after-the-change")
        assert "stats=False" in page.text                            # nothing allowed meanwhile
        me = await c.get("/_consent/me")
        assert me.status_code == 200, me.text                        # but their data is still theirs
        assert "/articles/before-the-change" in me.text
        await c.post("/_consent/choice", json={"all": True})
        assert cookie_ids(c.cookies[COOKIE_NAME]) == (consent_id, visitor_id)


async def test_a_forged_cookie_of_an_old_version_proves_nothing(make_app: Any) -> None:
    new = make_app(policy=bumped())
    forged = "1~AAAAAAAAAAAAAAAA~2026-11-21~necessary~1795300000~0~-.aaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbb"
    async with client(new, {COOKIE_NAME: forged}) as c:
        assert (await c.get("/_consent/me")).status_code == 401


async def test_profile_is_bound_per_request_only_with_personalisation(make_app: Any) -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        bound = scope["state"].get("consent_profile")
        seen["profile"] = await bound() if bound else None
        seen["bound"] = bound is not None
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = make_app(app)
    async with client(mw) as c:
        # The accessor is there for every visitor (as documented); without personalisation
        # it answers None.
        await c.get("/a")
        assert seen == {"profile": None, "bound": True}
        await c.post("/_consent/choice", json={"granted": ["statistics"]})
        await c.get("/a")
        assert seen == {"profile": None, "bound": True}
        await c.post("/_consent/choice", json={"granted": ["personalisation"]})
        await c.get("/articles/x")
        mw.collector.flush()
        mw.api.profiles.clear()
        await c.get("/b")
        assert seen["bound"] is True and isinstance(seen["profile"], Profile)
        assert seen["profile"].pageviews == 1 and seen["profile"].recent_pages == ("/articles/x",)


async def test_admin_reaches_a_visitor_by_path(make_app: Any) -> None:
    mw = make_app(admin_token=ADMIN)
    async with client(mw) as c:
        await c.post("/_consent/choice", json={"all": True})
        await c.get("/articles/admin-path")
        _, visitor_id = cookie_ids(c.cookies[COOKIE_NAME])
    mw.collector.flush()
    async with client(mw) as admin:
        auth = {"authorization": f"Bearer {ADMIN}"}
        r = await admin.get(f"/_consent/admin/visitors/{visitor_id}", headers=auth)
        assert r.status_code == 200 and "/articles/admin-path" in r.text
        assert (await admin.get(f"/_consent/admin/visitors/{visitor_id}")).status_code == 401
        assert (await admin.get(f"/_consent/admin/visitors/{visitor_id}/x", headers=auth)).status_code == 404
