"""`{% load consentmw %}` then `{% consent_banner %}` (or `{% consent_banner nonce=csp_nonce %}`):
the banner's script tag, with the mount point and prefix this request needs."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.html import format_html

from consentmw.integrations.django import banner_src

register = template.Library()


@register.simple_tag(takes_context=True)
def consent_banner(context: Any, nonce: str | None = None) -> str:
    request = context.get("request")
    src = banner_src(request) if request is not None else banner_src(None)
    if nonce:
        return format_html('<script src="{}" nonce="{}" defer></script>', src, nonce)
    return format_html('<script src="{}" defer></script>', src)
