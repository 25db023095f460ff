"""Consent state and the signed `consentmw` cookie.

The cookie is the visitor's proof of choice, carried by the browser: a compact,
human-readable payload signed with itsdangerous. The banner script reads the payload
(so a returning visitor needs no request to decide whether to show the banner); the
server trusts it only after checking the signature, the age and the policy version.
A bad cookie of any kind decodes to "no consent, ask again", never to an error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from itsdangerous import BadData, TimestampSigner
from itsdangerous.encoding import base64_decode, base64_encode

from consentmw.core.policy import Policy
from consentmw.core.revocation import Revocations

COOKIE_NAME = "consentmw"
#: the name on HTTPS without a cookie domain: browsers accept a `__Host-` cookie only from
#: this very host (Secure, Path=/, no Domain), so no sibling or parent domain can plant one
HOST_COOKIE_NAME = "__Host-consentmw"
FORMAT = "2"
LEGACY_FORMAT = "1"   # no key id, no name binding: still read until it expires
_SEP = "~"
_NAMED_HOST, _NAMED_PLAIN = "h", "p"

SOURCE_BANNER = "banner"   # an explicit choice made in the banner or through the API
SOURCE_GPC = "gpc"         # an explicit choice made while Global Privacy Control was on
SOURCE_DEFAULT = "default"  # no choice recorded: only required purposes apply


def new_id() -> str:
    """A random 96-bit identifier, URL- and cookie-safe (16 characters).

    Never starts with '-', so an operator can pass it to a command line option as is.
    """
    while True:
        value = base64.urlsafe_b64encode(os.urandom(12)).decode()
        if value[0] != "-":
            return value


@dataclass(frozen=True, slots=True)
class ConsentState:
    """What one visitor has agreed to, as the app and the collector see it."""

    id: str | None
    granted: frozenset[str]
    policy_version: str
    given_at: float | None = None
    expires_at: float | None = None
    source: str = SOURCE_DEFAULT
    visitor_id: str | None = None
    gpc: bool = False
    collecting: frozenset[str] = frozenset()
    prompt: bool = True
    #: issued under the `__Host-` name: refused when it turns up under the plain name
    host_cookie: bool = False

    def allows(self, purpose: str) -> bool:
        """True when the visitor granted `purpose` (required purposes always are)."""
        return purpose in self.granted

    @property
    def recorded(self) -> bool:
        """True when this state comes from an explicit, still valid choice."""
        return self.id is not None

    def public(self) -> dict[str, object] | None:
        if self.id is None:
            return None
        return {
            "id": self.id,
            "granted": sorted(self.granted),
            "given_at": self.given_at,
            "expires_at": self.expires_at,
            "source": self.source,
            "gpc": self.gpc,
        }


def key_id(secret: str) -> str:
    """A short public id of a signing key: a keyed hash of it, so the banner can tell this
    site's cookies from another consentmw site's (on a parent domain) without the secret."""
    return hmac.new(secret.encode(), b"consentmw.key-id", hashlib.sha256).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class CookiePick:
    """Which consent cookie of a request counts.

    `value` is None when there is none, or when several different ones arrived (a sibling
    subdomain or a parent domain can plant a second `consentmw` cookie): then nobody is
    identified and the visitor is asked again. `stray` says that the request carried consent
    cookies besides the one that counts, so the next choice expires them.
    """

    value: str | None
    host: bool = False
    conflict: bool = False
    stray: bool = False


NO_COOKIE = CookiePick(None)


def pick_cookie(header: bytes | str | None) -> CookiePick:
    """Find the consent cookie(s) in a Cookie header (several lines joined with "; ").

    A `__Host-consentmw` cookie wins over plain `consentmw` ones (which are read for
    migration only when it is absent); two different values under the name that counts
    are a conflict.
    """
    if not header:
        return NO_COOKIE
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    if "consentmw" not in text:
        return NO_COOKIE
    host: list[str] = []
    plain: list[str] = []
    for part in text.split(";"):
        name, eq, value = part.strip().partition("=")
        if not eq or (name != COOKIE_NAME and name != HOST_COOKIE_NAME):
            continue
        value = value.strip()
        if value[:1] == '"' and value[-1:] == '"':
            value = value[1:-1]
        if value:
            (host if name == HOST_COOKIE_NAME else plain).append(value)
    if host:
        if len(set(host)) > 1:
            return CookiePick(None, True, conflict=True, stray=True)
        return CookiePick(host[0], True, stray=bool(plain) or len(host) > 1)
    if len(set(plain)) > 1:
        return CookiePick(None, False, conflict=True, stray=True)
    if plain:
        return CookiePick(plain[0], False, stray=len(plain) > 1)
    return NO_COOKIE


class ConsentCodec:
    """Encodes consent into the signed cookie value and back, with a bounded verify cache.

    Payload fields (separated by ``~``): format, consent id, policy version, granted
    purposes (``:``-separated), given-at (unix milliseconds), GPC flag, visitor id or ``-``,
    the signing key's id (`key_id`: the banner compares it with its config to ignore a
    foreign site's cookie), and ``h``/``p``: issued under the `__Host-` or the plain name
    (a `__Host-` cookie copied under the plain name is refused). itsdangerous appends a
    timestamp and an HMAC-SHA1 signature. With several keys the first signs and all verify,
    so secrets can be rotated without logging visitors out. Format 1 cookies (seconds, no
    key id, no name) are still read until they expire.

    `revocations` says which consents were changed, withdrawn or erased since a cookie was
    given: such a cookie is refused although its signature is good (kept in step with the
    store by `consentmw.rights.revocation`).
    """

    def __init__(self, secret_keys: str | Sequence[str], policy: Policy,
                 max_age: int = 180 * 86400, cache_size: int = 10_000) -> None:
        keys = [secret_keys] if isinstance(secret_keys, str) else list(secret_keys)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError("secret_key must be a non-empty string or a non-empty list of them")
        # itsdangerous: the last key signs, all verify. Our API says the first signs.
        self._signer = TimestampSigner(list(reversed(keys)), salt="consentmw.core.consent")
        #: ids of the verifying keys, the signing one first (served to banner.js)
        self.key_ids = [key_id(k) for k in keys]
        self.revocations = Revocations()
        self.policy = policy
        self.max_age = max_age
        self._cache: dict[str, ConsentState] = {}
        self._cache_size = cache_size
        self._collecting_ids = frozenset(p.id for p in policy.collecting)
        self._visitor_id_ids = frozenset(p.id for p in policy.purposes if "visitor_id" in p.categories)
        self.default_state = ConsentState(
            id=None, granted=policy.required_ids, policy_version=policy.version,
            collecting=frozenset(), prompt=True)

    # -- encode ------------------------------------------------------------
    def issue(self, granted: Iterable[str], *, gpc: bool = False, visitor_id: str | None = None,
              consent_id: str | None = None, now: float | None = None,
              host_cookie: bool = False) -> tuple[str, ConsentState]:
        """Sign a new choice; returns the cookie value and the state it stands for.

        `host_cookie`: the value will be set under the `__Host-` name.
        """
        now = time.time() if now is None else now
        given_ms = int(now * 1000)
        granted_set = frozenset(granted) | self.policy.required_ids
        unknown = granted_set - self.policy.ids
        if unknown:
            raise ValueError(f"unknown purpose(s): {', '.join(sorted(unknown))}")
        state = ConsentState(
            id=consent_id or new_id(),
            granted=granted_set,
            policy_version=self.policy.version,
            given_at=given_ms / 1000,
            expires_at=float(int(now) + self.max_age),
            source=SOURCE_GPC if gpc else SOURCE_BANNER,
            visitor_id=visitor_id,
            gpc=gpc,
            collecting=granted_set & self._collecting_ids,
            prompt=False,
            host_cookie=host_cookie,
        )
        payload = _SEP.join((
            FORMAT, state.id or "", self.policy.version,
            ":".join(p.id for p in self.policy.purposes if p.id in granted_set),
            str(given_ms), "1" if gpc else "0", visitor_id or "-", self.key_ids[0],
            _NAMED_HOST if host_cookie else _NAMED_PLAIN,
        ))
        return self._signer.sign(payload).decode("ascii"), state

    # -- decode ------------------------------------------------------------
    def decode(self, value: str | None, *, now: float | None = None, host_name: bool = False) -> ConsentState | None:
        """Verify a cookie value. Returns None for anything not a valid, current choice.

        `host_name`: the value arrived under the `__Host-` name. A withdrawn or erased
        consent (`revoked`) is refused even though its signature is good.
        """
        if not value:
            return None
        cached = self._cache.get(value)
        if cached is not None:
            if cached.expires_at is not None and cached.expires_at > (time.time() if now is None else now):
                return cached if self._admits(cached, host_name) else None
            self._cache.pop(value, None)
            return None
        state = self._verify(value, now)
        if state is not None:
            if len(self._cache) >= self._cache_size:
                # Drop the oldest half: cheap, bounded, and hot cookies come straight back.
                for key in list(self._cache)[: self._cache_size // 2]:
                    del self._cache[key]
            self._cache[value] = state
        return state if state is not None and self._admits(state, host_name) else None

    def _admits(self, state: ConsentState, host_name: bool) -> bool:
        """Whether a verified cookie counts: under the name it was issued for, not revoked."""
        if state.host_cookie and not host_name:
            return False
        return not (self.revocations.before and self.revocations.refuses(state.id, state.given_at))

    def identify(self, value: str | None, *, host_name: bool = False) -> ConsentState | None:
        """Verify a cookie of any policy version: who this browser is, not what it allows.

        The visitor's rights (see, export, erase) outlive a policy change: a cookie signed
        by us under an older policy still proves which consent id and visitor id are theirs.
        Its `granted` holds only purposes the current policy still knows.
        """
        if not value:
            return None
        state = self.decode(value, host_name=host_name)
        if state is not None:
            return state
        state = self._verify(value, None, any_version=True)
        return state if state is not None and self._admits(state, host_name) else None

    def _verify(self, value: str, now: float | None, any_version: bool = False) -> ConsentState | None:
        if len(value) > 512:
            return None
        try:
            # base64 ignores the padding bits of the last character: accept only the
            # canonical spelling of the signature, so no byte of a cookie can change.
            sig = value.rpartition(".")[2].encode("ascii")
            if base64_encode(base64_decode(sig)) != sig:
                return None
            raw, signed_at = self._signer.unsign(value, max_age=self.max_age, return_timestamp=True)
            parts = raw.decode("ascii").split(_SEP)
        except (BadData, UnicodeError, ValueError):
            return None
        if parts[0] == FORMAT and len(parts) == 9:
            if parts[7] not in self.key_ids or parts[8] not in (_NAMED_HOST, _NAMED_PLAIN):
                return None
            scale = 1000
        elif parts[0] == LEGACY_FORMAT and len(parts) == 7:
            scale = 1
        else:
            return None
        if parts[2] != self.policy.version and not any_version:
            return None
        cid, granted_raw, given_raw, gpc_raw, vid = parts[1], parts[3], parts[4], parts[5], parts[6]
        granted = frozenset(g for g in granted_raw.split(":") if g)
        if any_version:
            granted &= self.policy.ids
        if not granted <= self.policy.ids or not cid:
            return None
        try:
            given_at = int(given_raw) / scale
        except ValueError:
            return None
        expires = signed_at.timestamp() + self.max_age
        if expires <= (time.time() if now is None else now):
            return None
        granted |= self.policy.required_ids
        gpc = gpc_raw == "1"
        return ConsentState(
            id=cid, granted=granted, policy_version=parts[2], given_at=given_at,
            expires_at=expires, source=SOURCE_GPC if gpc else SOURCE_BANNER,
            visitor_id=None if vid == "-" else vid, gpc=gpc,
            collecting=granted & self._collecting_ids, prompt=False,
            host_cookie=scale == 1000 and parts[8] == _NAMED_HOST,
        )

    # -- Global Privacy Control ----------------------------------------------
    def apply_gpc(self, state: ConsentState) -> ConsentState:
        """Deny GPC opt-out purposes unless the choice was itself made under GPC.

        A choice made while the signal was on already reflects it (the visitor may have
        switched a purpose on explicitly); an older choice made without the signal is
        narrowed, because the browser now says "do not sell or share".
        """
        if state.gpc:
            return state
        gpc_ids = self.policy.gpc_ids
        if not (state.granted & gpc_ids):
            return state
        granted = state.granted - gpc_ids
        return ConsentState(
            id=state.id, granted=granted, policy_version=state.policy_version,
            given_at=state.given_at, expires_at=state.expires_at, source=state.source,
            visitor_id=state.visitor_id if granted & self._visitor_id_ids else None, gpc=True,
            collecting=granted & self._collecting_ids, prompt=state.prompt, host_cookie=state.host_cookie,
        )

    def needs_visitor_id(self, granted: Iterable[str]) -> bool:
        """True when a granted purpose keeps the stable random visitor id."""
        return bool(self._visitor_id_ids & frozenset(granted))
