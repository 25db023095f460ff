"""`GET <prefix>/state`, compressed and revalidated.

The answer has a public part (the policy as shown in one language: the same for every
visitor until the policy changes) and a visitor part (their consent, whether to prompt,
GPC). The public part is serialised and hashed once per language; the visitor part is a
few dozen bytes. The ETag covers both: a digest of the policy JSON, the language, and the
visitor part, so a browser that asks again with `If-None-Match` gets a `304` until either
changes, and no visitor is ever answered with another's consent. A newcomer's answer (no
consent recorded) is the same for everyone, so its gzip body is built once per language;
other answers are compressed as they are made.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import Response

from consentmw.core.policy import LANGUAGES, Policy
from consentmw.web.http import accepts_gzip, etag_matches

#: Revalidate on every use (the visitor part may change with any choice), but keep a copy
#: in the browser's own cache only (it carries the visitor's consent id).
STATE_CACHE = "private, no-cache"
VARY = "Accept-Encoding, Cookie, Sec-GPC"
#: Answers this large or larger are worth compressing.
GZIP_MIN = 256


def public_policy(policy: Policy, lang: str | None) -> dict[str, Any]:
    """The policy as `/state?lang=` shows it: one language (all of them without `lang`),
    with English filling any text the site did not translate."""
    langs = (lang,) if lang in LANGUAGES else LANGUAGES
    if lang in LANGUAGES and lang != "en":
        langs = (lang, "en")
    public = policy.public(langs)
    _trim(public, langs)
    return public


def _trim(public: dict[str, Any], langs: tuple[str, ...]) -> None:
    """Keep of the data categories only those a purpose lists and, when English is there as
    the fallback of another language, only the English texts that language lacks: the
    banner needs no second copy of what it shows (half of a ru/kk answer was English)."""
    used = {c for purpose in public["purposes"] for c in purpose["categories"]}
    public["categories"] = {c: labels for c, labels in public["categories"].items() if c in used}
    if len(langs) != 2:
        return
    lang = langs[0]

    def prune(texts: dict[str, Any]) -> None:
        own = texts.get(lang) or {}
        rest = {k: v for k, v in (texts.get("en") or {}).items() if not own.get(k)}
        if rest:
            texts["en"] = rest
        else:
            texts.pop("en", None)

    prune(public["texts"])
    for purpose in public["purposes"]:
        prune(purpose["texts"])
    for labels in public["categories"].values():
        if labels.get(lang):
            labels.pop("en", None)


@dataclass(frozen=True)
class _Public:
    """The policy part of one language's answer, ready to splice into the body."""

    json: bytes
    digest: str
    newcomer: dict[bool, tuple[bytes, bytes, str]]  # gpc -> (plain body, gzip body, tag)


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class StateAnswers:
    """Builds `/state` answers from the cached public policy of each language."""

    def __init__(self, policy_public: Callable[[str | None], dict[str, Any]]) -> None:
        self._policy_public = policy_public
        self._cache: dict[str, _Public] = {}

    def _public(self, lang: str | None, key: str) -> _Public:
        cached = self._cache.get(key)
        if cached is None:
            body = _dump(self._policy_public(lang))
            digest = hashlib.sha256(body).hexdigest()[:12]
            newcomer = {}
            for gpc in (False, True):
                plain = self._body(body, {"consent": None, "prompt": True, "gpc": gpc})
                newcomer[gpc] = (plain, gzip.compress(plain, 9, mtime=0), self._tag(digest, key, plain))
            cached = self._cache[key] = _Public(body, digest, newcomer)
        return cached

    def newcomer(self, lang: str) -> tuple[bytes, bytes]:
        """A first visit's answer in `lang`, plain and gzip (what the banner downloads)."""
        plain, packed, _ = self._public(lang, lang).newcomer[False]
        return plain, packed

    @staticmethod
    def _body(policy: bytes, visitor: dict[str, Any]) -> bytes:
        return b'{"policy":' + policy + b"," + _dump(visitor)[1:]

    @staticmethod
    def _tag(digest: str, key: str, body: bytes) -> str:
        # the policy digest and language in clear (readable in logs), the visitor part hashed
        return f"{digest}-{key}-{hashlib.sha256(body).hexdigest()[:10]}"

    def response(self, request: Request, lang: str | None, key: str, visitor: dict[str, Any]) -> Response:
        """The answer for `visitor` ({"consent", "prompt", "gpc"}), gzip if accepted, 304 if unchanged."""
        public = self._public(lang, key)
        newcomer = visitor["consent"] is None and visitor["prompt"] is True and isinstance(visitor["gpc"], bool)
        if newcomer:
            plain, packed, tag = public.newcomer[visitor["gpc"]]
        else:
            plain, packed = self._body(public.json, visitor), b""
            tag = self._tag(public.digest, key, plain)
        use_gz = len(plain) >= GZIP_MIN and accepts_gzip(request.headers.get("accept-encoding"))
        etag = f'"{tag}-gz"' if use_gz else f'"{tag}"'  # each representation its own strong tag
        headers = {"ETag": etag, "Cache-Control": STATE_CACHE, "Vary": VARY, "X-Content-Type-Options": "nosniff"}
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        if use_gz:
            headers["Content-Encoding"] = "gzip"
            body = packed or gzip.compress(plain, 6, mtime=0)
        else:
            body = plain
        return Response(body, media_type="application/json", headers=headers)
