"""Client IP resolution behind trusted proxies, and IP masking (Matomo-style levels).

Only a proxy the operator listed may tell us the client's address; any other
`X-Forwarded-For` is a claim by the client itself and is ignored.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Iterable

_V4_ZERO = b"\x00" * 10 + b"\xff\xff"  # IPv4-mapped IPv6 prefix (ClickHouse stores IPv4 this way)
UNSPECIFIED = b"\x00" * 16


class TrustedProxies:
    """Resolves the client address from the peer and forwarding headers."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def trusts(self, address: str) -> bool:
        ip = parse_ip(address)
        return ip is not None and any(ip in net for net in self._networks if net.version == ip.version)

    def client_ip(self, peer: str, forwarded: str) -> str:
        """Walk the forwarding chain from the right, stopping at the first untrusted hop."""
        if not forwarded or not self._networks or not self.trusts(peer):
            return peer
        hops = _forwarded_hops(forwarded)
        client = peer
        for hop in reversed(hops):
            if parse_ip(hop) is None:
                break
            client = hop
            if not self.trusts(hop):
                break
        return client


def _forwarded_hops(value: str) -> list[str]:
    """Addresses from `X-Forwarded-For: a, b` or RFC 7239 `Forwarded: for=a;proto=..., for="[b]:1"`."""
    if "for=" in value.lower():
        hops = []
        for element in value.split(","):
            for pair in element.split(";"):
                key, _, val = pair.strip().partition("=")
                if key.lower() == "for":
                    val = val.strip('"')
                    if val.startswith("["):
                        val = val[1:].split("]")[0]
                    elif val.count(":") == 1:
                        val = val.split(":")[0]
                    hops.append(val)
        return hops
    return [h.strip() for h in value.split(",") if h.strip()]


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
