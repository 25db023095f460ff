"""FastAPI dependencies: `Consent` (Annotated[ConsentState, Depends(consent)]) and the
`require(...)` guard (403 with the reason), through the real middleware and chDB store."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI

from consentmw.core.consent import ConsentState
from consentmw.integrations.fastapi import Consent, require


def api() -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def home(consent: Consent) -> dict[str, Any]:
        return {"granted": sorted(consent.granted)}

    @app.get("/for-you", dependencies=[require("personalisation")])
    async def for_you() -> dict[str, str]:
        return {"ok": "personalised"}

    @app.get("/both")
    async def both(consent: Annotated[ConsentState, require("statistics", "personalisation")]) -> dict[str, Any]:
        return {"id": consent.id}

    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://site.test")


async def test_consent_dependency_and_require_guard(make_app: Any) -> None:
    mw = make_app(api())
    async with client(mw) as c:
        assert (await c.get("/")).json() == {"granted": ["necessary"]}
        r = await c.get("/for-you")
        assert r.status_code == 403
        assert r.json() == {"detail": "consent required for: personalisation (not granted by this visitor)"}
        assert (await c.post("/_consent/choice", json={"granted": ["statistics"]})).status_code == 200
        assert (await c.get("/")).json() == {"granted": ["necessary", "statistics"]}
        r = await c.get("/both")
        assert r.status_code == 403 and r.json()["detail"].startswith("consent required for: personalisation")
        assert (await c.post("/_consent/choice", json={"all": True})).status_code == 200
        assert (await c.get("/for-you")).json() == {"ok": "personalised"}
        r = await c.get("/both")
        assert r.status_code == 200 and r.json()["id"]
        # Global Privacy Control narrows the grant: the guard follows the effective state.
        assert (await c.get("/for-you", headers={"sec-gpc": "1"})).status_code == 403


async def test_without_the_middleware_the_dependency_fails_loudly() -> None:
    async with client(api()) as c:
        with pytest.raises(RuntimeError, match="add ConsentMiddleware"):
            await c.get("/")


def test_require_needs_a_purpose() -> None:
    with pytest.raises(ValueError):
        require()
