"""Enrichment: turn raw header values into the facts purposes may store.

Every step is cached or cheap and runs on the writer thread. Nothing here decides
what is stored; the minimiser asks only for the facts a granted purpose needs.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from typing import Iterable

import ua_parser

from consentmw.core.hosts import AllowedHosts
from consentmw.collect.geo import GeoLocator, Place
from consentmw.collect.ip import TrustedProxies, masked_ip16
from consentmw.collect.salt import DailySalts
from consentmw.collect.useragent import Agent, parse_agent
from consentmw.collect.referrer import Referrer, parse_referrer


_WARM_UP_AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/131.0.0.0 Safari/537.36")


def proof_key(secret: str) -> bytes:
    """The key for consent proofs, derived from one signing secret (never the secret itself)."""
    return hashlib.sha256(("consentmw.rights.proof:" + secret).encode()).digest()


def proof_token(key: bytes, consent_id: str, day: int) -> str:
    """The day-scoped consent proof stored in rows of purposes without a stable id."""
    return hmac.digest(key, f"{consent_id}|{day}".encode(), "sha256").hex()[:20]


class Enricher:
    def __init__(self, trusted_proxies: list[str], geoip_db: str | None, proof_key: bytes,
                 forwarded_header: str = "x-forwarded-for", salts: DailySalts | None = None,
                 allowed_hosts: Iterable[str] = ()) -> None:
        self.proxies = TrustedProxies(trusted_proxies, forwarded_header)
        #: the site a Host value is stored as (valid names only; only allowed ones when set)
        self.hosts = AllowedHosts(allowed_hosts)
        self.geo = GeoLocator(geoip_db)
        #: the daily salts; the collector passes ones kept in the store (shared by every process)
        self.salts = salts or DailySalts()
        self._proof_key = proof_key
        # Visitors send many events a day under one consent: one HMAC per consent and day.
        self._proof = lru_cache(maxsize=65536)(self._compute_proof)

    def warm_up(self) -> None:
        """Build what the first batch would otherwise build while holding the GIL: ua-parser
        compiles its matchers on first use (~300 ms, seen as a 300 ms event-loop stall a
        second into serving), the crawler index, the referrer tables and the GeoIP reader.
        The collector calls it at start-up, before the server accepts requests."""
        ua_parser.parser  # noqa: B018 - reading it builds the global parser (ua-parser's documented way)
        parse_agent(_WARM_UP_AGENT)
        parse_referrer("https://www.google.com/search?q=warm", "example.com")
        self.place("127.0.0.1")

    def client_ip(self, peer: str, forwarded: str) -> str:
        return self.proxies.client_ip(peer, forwarded)

    def agent(self, user_agent: str) -> Agent:
        return parse_agent(user_agent)

    def place(self, ip: str) -> Place:
        return self.geo.locate(ip)

    def referrer(self, value: str, own_host: str) -> Referrer:
        return parse_referrer(value, own_host)

    def visitor_hash(self, ts: float, site: str, ip: str, user_agent: str) -> int:
        return self.salts.visitor_hash(ts, site, ip, user_agent)

    def masked_ip(self, ip: str, v4_bytes: int, v6_prefix: int) -> bytes:
        return masked_ip16(ip, v4_bytes, v6_prefix)

    def consent_proof(self, consent_id: str, ts: float) -> str:
        """A day-scoped token proving which consent authorised a row without linking days.

        Rows of purposes that keep no stable identifier carry this instead of the raw
        consent id: the operator (who holds the secret and the ledger) can recompute it
        for any consent record on that day, while analysts cannot join rows across days.
        """
        return self._proof(consent_id, int(ts // 86400))

    def _compute_proof(self, consent_id: str, day: int) -> str:
        return proof_token(self._proof_key, consent_id, day)


@lru_cache(maxsize=4096)
def language_tag(accept_language: str) -> str:
    """The visitor's first preferred language from Accept-Language (e.g. 'en-US' -> 'en-us')."""
    first = accept_language.split(",", 1)[0].split(";", 1)[0].strip().lower()
    if not first or first == "*" or len(first) > 16 or not all(c.isalnum() or c == "-" for c in first):
        return ""
    return first
