"""The Django app that provides `{% load consentmw %}`."""

from django.apps import AppConfig


class ConsentmwConfig(AppConfig):
    name = "consentmw.integrations.django"
    label = "consentmw"
    verbose_name = "consentmw"
