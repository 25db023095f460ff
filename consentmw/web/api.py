"""The consent endpoints under the configured prefix (default `/_consent`).

`GET /state` and `POST|DELETE /choice` are the consent core; the collection beacon,
the visitor's rights and the operator endpoints register themselves on the same router.
They are plain ASGI handlers built on Starlette's request/response objects: only
`/_consent/*` requests reach them, so the site's own pages never pay for them.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from consentmw.collect.hit import Hit
from consentmw.collect.ip import ClientView, TrustedProxies, joined_header
from consentmw.core.consent import (COOKIE_NAME, HOST_COOKIE_NAME, ConsentCodec, ConsentState, CookiePick,
                                    new_id, pick_cookie)
from consentmw.core import text
from consentmw.core.hosts import AllowedHosts
from consentmw.core.ratelimit import TokenBuckets
from consentmw.web.http import (HTTPProblem, TooManyRequests, check_same_origin, header, header_bytes, origin_of, parse_json,
                                read_body, route_path)
from consentmw.core.ledger import ACTION_CHANGE, ACTION_GRANT, ACTION_WITHDRAW, ConsentRecord
from consentmw.core.policy import LANGUAGES, Policy
from consentmw.core.settings import Settings
from consentmw.web.state import StateAnswers, public_policy

CHOICE_BODY_LIMIT = 8 * 1024
_CHOICE_KEYS = frozenset({"granted", "all", "lang", "page"})

Handler = Callable[[Request], Awaitable[Response]]


class Collector(Protocol):
    """What the API needs from the collection pipeline."""

    def submit(self, hit: Hit) -> bool: ...
    def submit_many(self, hits: list[Hit]) -> int: ...
    def record(self, record: ConsentRecord) -> None: ...


class ConsentAPI:
    """Routes `/_consent/*` requests to their handlers and turns refusals into 4xx answers."""

    def __init__(self, settings: Settings, codec: ConsentCodec, collector: Collector) -> None:
        self.settings = settings
        self.policy: Policy = settings.policy
        self.codec = codec
        self.collector = collector
        self.prefix = settings.prefix
        #: decides client address, scheme and host alike for every endpoint (origin checks,
        #: the cookie's Secure flag, rate limits, the ledger)
        self.proxies = TrustedProxies(settings.trusted_proxies, settings.forwarded_header)
        #: the site a ledger record names: a valid host name (an allowed one, when allowed_hosts is set)
        self.hosts = AllowedHosts(settings.allowed_hosts)
        #: per-client rates (the client as the trusted proxies resolve it), by endpoint family
        self.buckets = {"choice": TokenBuckets(settings.choice_rate, settings.choice_burst),
                        "rights": TokenBuckets(settings.rights_rate, settings.rights_burst)}
        self.routes: dict[tuple[str, str], Handler] = {}
        self.prefix_routes: list[tuple[str, str, Handler]] = []
        self._policy_cache: dict[str, dict[str, Any]] = {}
        self.state_answers = StateAnswers(self.policy_public)
        self.add("GET", "/state", self.get_state)
        self.add("POST", "/choice", self.post_choice)
        self.add("DELETE", "/choice", self.delete_choice)

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, self.prefix + path)] = handler
        if method == "GET":
            self.routes[("HEAD", self.prefix + path)] = handler

    def add_prefix(self, method: str, path_prefix: str, handler: Handler) -> None:
        """Route `prefix + path_prefix + {one path segment}` (e.g. /admin/visitors/{id})."""
        self.prefix_routes.append((method, self.prefix + path_prefix, handler))

    def _match_prefix(self, method: str, path: str) -> Handler | None:
        for m, p, h in self.prefix_routes:
            if m == method and path.startswith(p) and path[len(p):] and "/" not in path[len(p):]:
                return h
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope)
        handler = self.routes.get((scope["method"], path)) or self._match_prefix(scope["method"], path)
        if handler is None:
            allowed = sorted(m for m, p in self.routes if p == path)
            if allowed:
                response: Response = JSONResponse({"error": f"method not allowed (allowed: {', '.join(allowed)})"},
                                                  status_code=405, headers={"Allow": ", ".join(allowed)})
            else:
                response = JSONResponse({"error": "not found"}, status_code=404)
        else:
            try:
                response = await handler(Request(scope, receive))
            except HTTPProblem as problem:
                response = problem.response()
        await response(scope, receive, send)

    # -- helpers shared by handlers ------------------------------------------
    def client(self, scope: Scope) -> ClientView:
        """The client as the trusted proxies describe it (computed once per request)."""
        view = scope.get("consentmw.client")
        if view is None:
            peer = (scope.get("client") or ("", 0))[0] or ""
            view = scope["consentmw.client"] = self.proxies.view(peer, scope["headers"])
        return view

    def scheme(self, scope: Scope) -> str:
        """http or https: what the browser used, as far as a trusted proxy vouches for it."""
        scheme = self.client(scope).scheme or scope.get("scheme", "http")
        return {"ws": "http", "wss": "https"}.get(scheme, scheme)

    def own_origin(self, scope: Scope) -> str:
        view = self.client(scope)
        if view.scheme is None and view.host is None:
            return origin_of(scope)
        host = (view.host or header(scope, b"host") or "").lower()
        return f"{self.scheme(scope)}://{host}"

    def limit(self, scope: Scope, family: str) -> None:
        """Refuse (429, Retry-After) a client over its rate for `family` ("choice", "rights")."""
        buckets = self.buckets[family]
        client = self.client(scope).ip
        if not buckets.allow(client):
            stats = getattr(self.collector, "stats", None)
            if stats is not None and hasattr(stats, "rate_limited"):
                stats.rate_limited += 1
            raise TooManyRequests(buckets.retry_after(client))

    def check_origin(self, scope: Scope) -> None:
        """Refuse cross-origin requests (403), comparing with the origin the proxies vouch for."""
        check_same_origin(scope, self.settings.allowed_origins, self.own_origin(scope))

    def forwarded(self, scope: Scope) -> str:
        """The configured forwarding header, all its lines as one list (resolved on the writer thread)."""
        return joined_header(scope["headers"], self.proxies.header_name).decode("latin-1")

    def current(self, request: Request, *, any_version: bool = False) -> ConsentState | None:
        """The visitor's valid recorded consent (before GPC narrowing), or None.

        With `any_version`, a cookie from an older policy version still identifies the
        visitor (for their rights, and to keep their ids when they choose again).
        """
        picked = self.cookie_pick(request.scope)
        if any_version:
            return self.codec.identify(picked.value, host_name=picked.host)
        return self.codec.decode(picked.value, host_name=picked.host)

    def cookie_pick(self, scope: Scope) -> CookiePick:
        """The consent cookie that counts (none if several differ), from every Cookie line."""
        return pick_cookie(b"; ".join(value for key, value in scope["headers"] if key == b"cookie"))

    def effective(self, request: Request) -> ConsentState:
        state = self.current(request) or self.codec.default_state
        return self.codec.apply_gpc(state) if header(request.scope, b"sec-gpc") == "1" else state

    def state_body(self, state: ConsentState, gpc: bool, lang: str | None) -> dict[str, Any]:
        return {
            "policy": self.policy_public(lang),
            "consent": state.public(),
            "prompt": not state.recorded,
            "gpc": gpc,
        }

    def policy_public(self, lang: str | None) -> dict[str, Any]:
        """The policy as shown, per language, built once (callers only serialise it)."""
        key = lang if lang in LANGUAGES else "*"
        cached = self._policy_cache.get(key)
        if cached is None:
            cached = self._policy_cache[key] = public_policy(self.policy, lang)
        return cached

    def cookie_secure(self, scope: Scope) -> bool:
        secure = self.settings.cookie_secure
        if secure is None:
            # Only the connection or a trusted proxy says https: a client's own X-Forwarded-Proto never does.
            secure = self.scheme(scope) == "https"
        return secure

    def cookie_host(self, scope: Scope) -> bool:
        """Whether this request's cookie goes under the `__Host-` name (Secure, no cookie domain)."""
        return self.settings.cookie_domain is None and self.cookie_secure(scope)

    def set_cookie(self, response: Response, request: Request, value: str, max_age: int | None = None) -> None:
        """Set the consent cookie, and expire any other consent cookie the request carried
        (a planted one, or the plain-named cookie of before the `__Host-` name)."""
        scope = request.scope
        host = self.cookie_host(scope)
        picked = self.cookie_pick(scope)
        name = HOST_COOKIE_NAME if host else COOKIE_NAME
        domain = None if host else self.settings.cookie_domain
        if picked.stray or (picked.value is not None and picked.host != host):
            self._expire_others(response, scope, keep=(name, domain))
        # Not HttpOnly on purpose: the banner reads the (signed, non-secret) payload so a
        # returning visitor needs no request to know their choice. It holds no personal data.
        response.set_cookie(name, value, path="/",
                            max_age=self.settings.cookie_max_age if max_age is None else max_age,
                            domain=domain,
                            secure=self.cookie_secure(scope), httponly=False, samesite="lax")

    def _expire_others(self, response: Response, scope: Scope, keep: tuple[str, str | None] | None) -> None:
        """Expire every consent cookie this site or its parent domains could have set, except
        `keep` (the (name, domain) about to be set). A cookie planted for a parent domain is
        expired there too; one planted with another path cannot be reached (it keeps the
        request in conflict, i.e. asking, never granting)."""
        secure = self.cookie_secure(scope)
        variants: list[tuple[str, str | None]] = [(COOKIE_NAME, None)]
        if secure:
            variants.append((HOST_COOKIE_NAME, None))
        domains = [self.settings.cookie_domain.lstrip(".")] if self.settings.cookie_domain else []
        host = (self.client(scope).host or header(scope, b"host") or "").lower()
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        labels = host.strip(".").split(".")
        if len(labels) >= 2 and not labels[-1].isdigit() and not host.startswith("["):
            domains += [".".join(labels[i:]) for i in range(len(labels) - 1)]
        variants += [(COOKIE_NAME, d) for d in dict.fromkeys(domains)]
        kept = (keep[0], keep[1].lstrip(".") if keep[1] else None) if keep else None
        for name, domain in variants:
            if (name, domain) != kept:
                response.set_cookie(name, "", path="/", max_age=0, expires=0, domain=domain,
                                    secure=secure or name == HOST_COOKIE_NAME, httponly=False, samesite="lax")

    def clear_cookie(self, response: Response, request: Request) -> None:
        """End the visitor's consent in this browser (empty, expired cookies): the banner asks again."""
        self._expire_others(response, request.scope, keep=None)

    def ledger_record(self, request: Request, state: ConsentState, action: str, lang: str,
                      page: str) -> ConsentRecord:
        scope = request.scope
        client = scope.get("client") or ("", 0)
        return ConsentRecord(
            consent_id=state.id or "", ts=time.time(), action=action,
            policy_version=self.policy.version, granted=sorted(state.granted),
            denied=sorted(self.policy.ids - state.granted), source=state.source, gpc=state.gpc,
            language=lang, texts_hash=self.policy.texts_hash(lang), page=text.decode(page, 512),
            peer_ip=client[0] or "", forwarded_for=text.decode(self.forwarded(scope), 512),
            user_agent=text.decode(header_bytes(scope, b"user-agent"), 512),
            site=self.hosts.site(text.decode(header_bytes(scope, b"host"), 300)), visitor_id=state.visitor_id,
        )

    # -- handlers ------------------------------------------------------------
    async def get_state(self, request: Request) -> Response:
        lang = request.query_params.get("lang")
        gpc = header(request.scope, b"sec-gpc") == "1"
        state = self.effective(request)
        return self.state_answers.response(request, lang, lang if lang in LANGUAGES else "*",
                                           {"consent": state.public(), "prompt": not state.recorded, "gpc": gpc})

    async def post_choice(self, request: Request) -> Response:
        scope = request.scope
        self.check_origin(scope)
        self.limit(scope, "choice")
        ctype = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HTTPProblem(415, "expected Content-Type: application/json")
        body = parse_json(await read_body(request.receive, scope, CHOICE_BODY_LIMIT))
        if not isinstance(body, dict):
            raise HTTPProblem(400, "expected a JSON object")
        extra = set(body) - _CHOICE_KEYS
        if extra:
            raise HTTPProblem(400, f"unknown key {sorted(extra)[0]!r}"[:120])
        gpc = header(scope, b"sec-gpc") == "1"
        if "all" in body:
            if "granted" in body:
                raise HTTPProblem(400, "give either 'all' or 'granted', not both")
            if not isinstance(body["all"], bool):
                raise HTTPProblem(400, "'all' must be true or false")
            granted = set(self.policy.optional_ids) if body["all"] else set()
            if gpc:
                # "Accept all" is not an explicit grant of what the browser's GPC signal refuses.
                granted -= self.policy.gpc_ids
        elif "granted" in body:
            raw = body["granted"]
            if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
                raise HTTPProblem(400, "'granted' must be a list of purpose ids")
            if len(raw) > 64:
                raise HTTPProblem(400, "'granted' lists too many purposes")
            unknown = [p for p in raw if p not in self.policy]
            if unknown:
                raise HTTPProblem(400, f"unknown purpose {unknown[0][:40]!r}")
            granted = set(raw)
        else:
            raise HTTPProblem(400, "expected 'granted' (a list of purpose ids) or 'all' (true/false)")
        lang = body.get("lang", "en")
        if lang not in LANGUAGES:
            lang = "en"
        page = body.get("page", "")
        if not isinstance(page, str):
            raise HTTPProblem(400, "'page' must be a string")
        return self._decide(request, granted, gpc, ACTION_GRANT, lang, page)

    async def delete_choice(self, request: Request) -> Response:
        self.check_origin(request.scope)
        self.limit(request.scope, "choice")
        gpc = header(request.scope, b"sec-gpc") == "1"
        lang = request.query_params.get("lang", "en")
        return self._decide(request, set(), gpc, ACTION_WITHDRAW, lang if lang in LANGUAGES else "en",
                            request.headers.get("referer", ""))

    def _decide(self, request: Request, granted: set[str], gpc: bool, action: str,
                lang: str, page: str) -> Response:
        previous = self.current(request, any_version=True)
        keep_vid = self.codec.needs_visitor_id(granted)
        visitor_id = None
        if keep_vid:
            visitor_id = previous.visitor_id if previous and previous.visitor_id else new_id()
        if action == ACTION_GRANT and previous is not None:
            action = ACTION_CHANGE
        value, state = self.codec.issue(granted, gpc=gpc, visitor_id=visitor_id,
                                        consent_id=previous.id if previous else None,
                                        host_cookie=self.cookie_host(request.scope))
        if previous is not None and previous.id:
            # Every older cookie of this consent is refused from now on (a copy replayed after a
            # withdrawal or a narrower choice must not collect); the new one, given now, counts.
            self.codec.revocations.revoke(previous.id, state.given_at or 0.0)
        self.collector.record(self.ledger_record(request, state, action, lang, page))
        response = JSONResponse(self.state_body(state, gpc, lang), headers={"Cache-Control": "no-store"})
        self.set_cookie(response, request, value)
        return response

