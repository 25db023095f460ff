"""Django: configuration from settings.py, the ASGI application, a `{% consent_banner %}` tag.

settings.py:

    INSTALLED_APPS = [..., "consentmw.integrations.django"]     # for {% load consentmw %}
    CONSENTMW = {"secret_key": "...", "clickhouse_dsn": "chdb://./consentmw-data"}   # any setting

asgi.py:

    from consentmw.integrations.django import consent_asgi_application
    application = consent_asgi_application()

Views read `consentmw.consent_of(request)`. consentmw is ASGI only: under WSGI (runserver
without an ASGI server, gunicorn's sync workers, mod_wsgi) there is no middleware to set the
state, and `consent_of` raises `WSGINotSupported` rather than answering None.
"""

from __future__ import annotations

from typing import Any, Mapping

from consentmw.middleware import ConsentMiddleware

DEFAULT_PREFIX = "/_consent"


def configured_options() -> dict[str, Any]:
    """`settings.CONSENTMW`, checked to be a dict of setting names."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    options = getattr(settings, "CONSENTMW", {})
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured("settings.CONSENTMW must be a dict of consentmw settings, e.g. "
                                   "{'secret_key': '...', 'clickhouse_dsn': 'chdb://./consentmw-data'}")
    return dict(options)


def consent_asgi_application(app: Any = None) -> ConsentMiddleware:
    """Django's ASGI application (or `app`) behind ConsentMiddleware configured from
    `settings.CONSENTMW` (the `CONSENTMW_*` environment fills what it leaves out)."""
    from django.core.exceptions import ImproperlyConfigured

    if app is None:
        from django.core.asgi import get_asgi_application

        app = get_asgi_application()  # sets Django up, so settings can be read
    options = configured_options()
    try:
        return ConsentMiddleware(app, **options)
    except TypeError as exc:  # a key that is not a setting
        raise ImproperlyConfigured(f"settings.CONSENTMW: {exc}".replace("ConsentMiddleware.__init__() ", "")) from None


def banner_src(request: Any) -> str:
    """The banner's URL for this request: mount point (ASGI root_path) + prefix + /banner.js."""
    prefix = configured_options().get("prefix") or DEFAULT_PREFIX
    scope = getattr(request, "scope", None)
    root = (scope.get("root_path") or "") if isinstance(scope, dict) else ""
    return f"{root}{prefix}/banner.js"
