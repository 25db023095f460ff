"""Reading cookie strings (Set-Cookie headers, document.cookie writes) without keeping values."""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class CookieWrite:
    name: str
    domain: str              # the Domain attribute without its dot, or the setting host
    lifetime: int | None     # seconds from now; None: a session cookie
    deletes: bool            # an expiry in the past or Max-Age <= 0: removes the cookie


def parse(text: str, host: str, now: float) -> CookieWrite | None:
    """One cookie string as a browser reads it; None when it has no name=value pair."""
    first, _, attrs = text.partition(";")
    name, eq, _value = first.partition("=")
    name = name.strip() if eq else ""   # a bare "value" sets a nameless cookie: reported as ""
    if not eq and not first.strip():
        return None
    domain, lifetime, max_age = host.lower(), None, None
    for attr in attrs.split(";"):
        key, _, val = attr.partition("=")
        key, val = key.strip().lower(), val.strip()
        if key == "domain" and val:
            domain = val.lower().lstrip(".")
        elif key == "max-age":
            try:
                max_age = int(val)
            except ValueError:
                pass
        elif key == "expires" and val:
            try:
                lifetime = int(parsedate_to_datetime(val).timestamp() - now)
            except (TypeError, ValueError, IndexError, OverflowError):
                pass
    if max_age is not None:   # Max-Age wins over Expires
        lifetime = max_age
    return CookieWrite(name=name[:256], domain=domain[:256], lifetime=lifetime,
                       deletes=lifetime is not None and lifetime <= 0)


def describe_lifetime(seconds: int | None) -> str:
    if seconds is None:
        return "session"
    for unit, size in (("year", 365 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size * 0.95:   # a clock tick short of a day is still "1 day"
            n = round(seconds / size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{max(seconds, 0)} s"
