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
           "Purpose", "Settings", "SettingsError", "WSGINotSupported", "consent_of"]
__version__ = "0.1.0"


class WSGINotSupported(RuntimeError):
    """consentmw is ASGI middleware: a WSGI request never passed through it."""


def consent_of(request_or_scope: object) -> ConsentState | None:
    """The consent state of a request in any ASGI framework (Starlette, Django's ASGIRequest,
    a raw scope); None when the middleware did not see the request.

    A WSGI request (Django under runserver/gunicorn sync workers, a WSGI environ) raises
    `WSGINotSupported`: answering None there would read as "the visitor refused".
    """
    scope = getattr(request_or_scope, "scope", request_or_scope)
    if isinstance(scope, dict):
        if "wsgi.version" in scope:
            raise WSGINotSupported(_WSGI_MESSAGE)
        return (scope.get("state") or {}).get("consent")
    environ = getattr(request_or_scope, "environ", None)
    if isinstance(environ, dict) and "wsgi.version" in environ:
        raise WSGINotSupported(_WSGI_MESSAGE)
    return None


_WSGI_MESSAGE = ("consentmw works with ASGI only and this is a WSGI request: serve the app through its "
                 "ASGI entry point (Django: asgi.py with consentmw.integrations.django.consent_asgi_application, "
                 "run by uvicorn, hypercorn, daphne or gunicorn -k uvicorn.workers.UvicornWorker)")
