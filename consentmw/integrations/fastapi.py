"""FastAPI dependencies for the consent state the middleware puts on every request.

    from consentmw.integrations.fastapi import Consent, require

    @app.get("/")
    async def home(consent: Consent): ...                    # Annotated[ConsentState, Depends(consent)]

    @app.get("/for-you", dependencies=[require("personalisation")])
    async def for_you(): ...                                 # 403 with the reason unless granted
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from consentmw import consent_of
from consentmw.core.consent import ConsentState


def consent(request: Request) -> ConsentState:
    """The visitor's consent state (a dependency). Fails loudly if the middleware is missing:
    a handler that silently saw "no consent" would look like a visitor who refused."""
    state = consent_of(request)
    if state is None:
        raise RuntimeError("no consent state on this request: add ConsentMiddleware to the app "
                           "(app.add_middleware(ConsentMiddleware, ...))")
    return state


Consent = Annotated[ConsentState, Depends(consent)]


def require(*purposes: str) -> Any:
    """A dependency refusing the request with 403 unless every purpose is granted.

    Use it in `dependencies=[require("personalisation")]`, or as a parameter
    `consent: Annotated[ConsentState, require("personalisation")]` to get the state too.
    """
    if not purposes:
        raise ValueError("require() needs at least one purpose id")

    def check(state: Consent) -> ConsentState:
        missing = [p for p in purposes if not state.allows(p)]
        if missing:
            raise HTTPException(status_code=403,
                                detail=f"consent required for: {', '.join(missing)} (not granted by this visitor)")
        return state

    return Depends(check)
