"""Settings of the test Django project: consentmw configured through CONSENTMW."""

import os
from pathlib import Path

SECRET_KEY = "django-test-" + "x" * 40
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.django_site.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "consentmw.integrations.django"]
MIDDLEWARE: list[str] = []
USE_TZ = True
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [Path(__file__).resolve().parent / "templates"],
    "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
}]
CONSENTMW = {
    "secret_key": os.environ.get("TEST_CONSENTMW_SECRET", "django-consent-secret-0123456789"),
    "clickhouse_dsn": "chdb://" + os.environ["TEST_CHDB_DIR"],
    "spool_dir": os.environ["TEST_CHDB_DIR"] + "-spool",
    "flush_interval": 0.2,
}
if os.environ.get("TEST_CONSENTMW_EXTRA"):
    CONSENTMW[os.environ["TEST_CONSENTMW_EXTRA"]] = 1
