"""consentmw: consent management and consent-gated, first-party analytics for ASGI apps.

    from consentmw import ConsentMiddleware, Policy
    app.add_middleware(ConsentMiddleware, secret_key="...", policy=Policy.default())

In a handler, `request.state.consent.allows("statistics")`.
"""

from consentmw.core.consent import COOKIE_NAME, ConsentState
from consentmw.middleware import ConsentMiddleware
from consentmw.core.policy import CATEGORIES, Policy, PolicyError, Purpose
from consentmw.core.settings import Settings, SettingsError

__all__ = ["CATEGORIES", "COOKIE_NAME", "ConsentMiddleware", "ConsentState", "Policy", "PolicyError",
           "Purpose", "Settings", "SettingsError", "consent_of"]
__version__ = "0.1.0"


def consent_of(request_or_scope: object) -> ConsentState | None:
    """The consent state of a request in any framework (Starlette, Django's ASGIRequest, a scope)."""
    scope = getattr(request_or_scope, "scope", request_or_scope)
    if isinstance(scope, dict):
        return (scope.get("state") or {}).get("consent")
    return None
