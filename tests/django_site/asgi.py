import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_site.settings")

from consentmw.integrations.django import consent_asgi_application  # noqa: E402

application = consent_asgi_application()
