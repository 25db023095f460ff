"""The site a hit belongs to, from its Host header: a valid host name or nothing.

The Host header is whatever the client typed; stored verbatim it lets anyone invent sites
in the statistics (or carry text into them). A value is kept only when it is a host name
(letters, digits, '-', '_' and dots, 1-253 characters), an IPv4 address or a bracketed
IPv6 literal; the port is dropped and the name lower-cased. With `allowed_hosts` set,
only those hosts count (an entry starting with '.' allows the domain and its subdomains).
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Iterable

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


@lru_cache(maxsize=4096)
def host_name(host: str) -> str:
    """The host name of a Host header value, lower-case and without port; "" if not valid."""
    if not host or len(host) > 300:
        return ""
    value = host.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        try:
            ipaddress.IPv6Address(value[1:end])
        except ValueError:
            return ""
        rest = value[end + 1:]
        return value[:end + 1] if not rest or (rest[0] == ":" and rest[1:].isdigit()) else ""
    name, colon, port = value.partition(":")
    if colon and not (port.isdigit() and len(port) <= 5):
        return ""
    if len(name) > 253 or not _NAME.fullmatch(name):
        return ""
    return name.rstrip(".")


class AllowedHosts:
    """`allowed_hosts`: empty means every valid host name."""

    def __init__(self, hosts: Iterable[str] = ()) -> None:
        entries = [h.strip().lower().rstrip(".") for h in hosts if h.strip()]
        self.exact = frozenset(h for h in entries if not h.startswith("."))
        self.suffixes = tuple(h for h in entries if h.startswith("."))
        self.any = not entries

    def site(self, host: str) -> str:
        """The site to store for a Host value: its valid name if allowed, else ""."""
        name = host_name(host)
        if not name or self.any or name in self.exact:
            return name
        if any(name.endswith(s) or name == s[1:] for s in self.suffixes):
            return name
        return ""

    def allows(self, host: str) -> bool:
        return bool(self.site(host))


def check_allowed_hosts(hosts: Iterable[str]) -> list[str]:
    """Validate the setting: each entry a host name, optionally with a leading '.'."""
    out = []
    for h in hosts:
        value = h.strip().lower()
        if not value or not host_name(value.lstrip(".") if value.startswith(".") else value) or ":" in value:
            raise ValueError(f"allowed_hosts: {h[:80]!r} is not a host name (e.g. 'example.com' or '.example.com')")
        out.append(value)
    return out
