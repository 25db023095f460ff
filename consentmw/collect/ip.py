"""Client IP resolution behind trusted proxies, and IP masking (Matomo-style levels).

Only a proxy the operator listed may tell us the client's address; any other
`X-Forwarded-For` is a claim by the client itself and is ignored.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

_V4_ZERO = b"\x00" * 10 + b"\xff\xff"  # IPv4-mapped IPv6 prefix (ClickHouse stores IPv4 this way)
UNSPECIFIED = b"\x00" * 16


#: the forwarding headers an operator may choose to trust (`forwarded_header` setting)
FORWARDED_HEADERS = ("x-forwarded-for", "forwarded")
_HOST_RE = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class ClientView:
    """Who sent a request and how, as far as the trusted proxies vouch for it.

    `scheme` and `host` are None unless a trusted proxy said so: callers then use the
    connection's own scheme and Host header.
    """

    ip: str
    scheme: str | None = None
    host: str | None = None


def joined_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes:
    """Every line of a list-valued header as one comma-separated value (RFC 9110 5.3)."""
    found = [value for key, value in headers if key == name]
    if len(found) <= 1:
        return found[0] if found else b""
    return b", ".join(found)


class TrustedProxies:
    """Resolves the client address, scheme and host from the peer and forwarding headers.

    Only one forwarding header is read, the one the proxies set (`X-Forwarded-For`, with
    `X-Forwarded-Proto` / `X-Forwarded-Host`, or RFC 7239 `Forwarded`): a client can add
    the other one itself, and a proxy passes it through untouched.
    """

    def __init__(self, networks: Iterable[str], header: str = "x-forwarded-for") -> None:
        if header not in FORWARDED_HEADERS:
            raise ValueError(f"forwarded_header must be one of {', '.join(FORWARDED_HEADERS)}")
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self.header = header
        self.header_name = header.encode()
        self.rfc7239 = header == "forwarded"

    @property
    def enabled(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str) -> bool:
        ip = parse_ip(address)
        return ip is not None and any(ip in net for net in self._networks if net.version == ip.version)

    def client_ip(self, peer: str, forwarded: str) -> str:
        """Walk the forwarding chain from the right, stopping at the first untrusted hop."""
        if not forwarded or not self._networks or not self.trusts(peer):
            return peer
        return self._walk(peer, self._elements(forwarded))[0]

    def view(self, peer: str, headers: Iterable[tuple[bytes, bytes]]) -> ClientView:
        """Client address, scheme and host of a request: the peer's own unless it is a trusted proxy."""
        if not self._networks or not self.trusts(peer):
            return ClientView(peer)
        headers = list(headers)
        value = joined_header(headers, self.header_name).decode("latin-1")
        elements = self._elements(value) if value else []
        ip, index = self._walk(peer, elements)
        if self.rfc7239:
            chosen = elements[index] if 0 <= index < len(elements) else {}
            scheme, host = chosen.get("proto"), chosen.get("host")
        else:
            scheme = _pick(joined_header(headers, b"x-forwarded-proto"), index, len(elements))
            host = _pick(joined_header(headers, b"x-forwarded-host"), index, len(elements))
        scheme = scheme.lower() if scheme and scheme.lower() in ("http", "https") else None
        host = host if host and _HOST_RE.fullmatch(host) else None
        return ClientView(ip, scheme, host)

    def _elements(self, value: str) -> list[dict[str, str]]:
        if self.rfc7239:
            return parse_forwarded(value)
        return [{"for": h.strip()} for h in value.split(",") if h.strip()]

    def _walk(self, peer: str, elements: list[dict[str, str]]) -> tuple[str, int]:
        """(client address, index of the element naming it; len(elements) for the peer itself)."""
        client, index = peer, len(elements)
        for i in range(len(elements) - 1, -1, -1):
            hop = _node_address(elements[i].get("for", ""))
            if hop is None:
                break
            client, index = hop, i
            if not self.trusts(hop):
                break
        return client, index


def _pick(raw: bytes, index: int, count: int) -> str | None:
    """The X-Forwarded-Proto/Host value for the chosen hop: aligned with the address list
    when both have one entry per hop, else the one the nearest proxy wrote (rightmost)."""
    values = [v.strip() for v in raw.decode("latin-1").split(",") if v.strip()]
    if not values:
        return None
    if len(values) == count and 0 <= index < count:
        return values[index]
    return values[-1]


def _node_address(node: str) -> str | None:
    """An address from an X-Forwarded-For entry or an RFC 7239 node (`1.2.3.4:80`, `[v6]:80`)."""
    if node.startswith("["):
        end = node.find("]")
        node = node[1:end] if end > 0 else ""
    elif node.count(":") == 1:
        node = node.split(":")[0]
    ip = parse_ip(node)
    return None if ip is None else node


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """RFC 7239 `Forwarded`: comma-separated elements of `;`-separated `name=value` pairs,
    values a token or a quoted string (with `\\` escapes; `,` and `;` allowed inside).
    Malformed pairs are skipped; names are case-insensitive."""
    elements: list[dict[str, str]] = []
    current: dict[str, str] = {}
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch in " \t;":
            i += 1
            continue
        if ch == ",":
            elements.append(current)
            current = {}
            i += 1
            continue
        eq = value.find("=", i)
        stop = min((p for p in (value.find(";", i), value.find(",", i)) if p >= 0), default=n)
        if eq < 0 or eq > stop:
            i = stop  # a pair without '=': skip it
            continue
        name = value[i:eq].strip().lower()
        i = eq + 1
        if i < n and value[i] == '"':
            i += 1
            out = []
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(value[i])
                i += 1
            i += 1  # the closing quote
            val = "".join(out)
        else:
            end = min((p for p in (value.find(";", i), value.find(",", i)) if p >= 0), default=n)
            val = value[i:end].strip()
            i = end
        if name and name not in current:
            current[name] = val
    elements.append(current)
    return [e for e in elements if e] if any(elements) else []


@lru_cache(maxsize=65536)
def parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse an address, tolerating zone ids (`fe80::1%eth0`) and mapped IPv4; None if invalid."""
    if not value or len(value) > 64:
        return None
    try:
        ip = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=65536)
def masked_ip16(value: str, v4_mask_bytes: int = 2, v6_prefix: int = 48) -> bytes:
    """The address as 16 bytes (IPv4-mapped for v4) with its last bytes zeroed.

    IPv4 loses 1–3 trailing bytes; IPv6 keeps only its /48 or /64 prefix. Invalid
    input becomes `::` so nothing unparsed ever reaches storage.
    """
    ip = parse_ip(value)
    if ip is None:
        return UNSPECIFIED
    if ip.version == 4:
        packed = ip.packed[: 4 - v4_mask_bytes] + b"\x00" * v4_mask_bytes
        return _V4_ZERO + packed
    keep = v6_prefix // 8
    return ip.packed[:keep] + b"\x00" * (16 - keep)


def ip16_to_str(packed: bytes) -> str:
    ip = ipaddress.IPv6Address(packed)
    return str(ip.ipv4_mapped or ip)
