"""`ConsentMiddleware`: the pure ASGI middleware a site mounts.

Per request it does a cached cookie look-up, puts the visitor's `ConsentState` at
`scope["state"]["consent"]` (Starlette/FastAPI: `request.state.consent`), and, when a
granted purpose collects data and the answer is an HTML page, appends one raw hit to
the collector's bounded queue after the last body byte is sent. Everything costly
happens on the collector's writer thread. Requests under the prefix go to the consent
API. The ASGI lifespan starts and drains the collector; apps and servers that do not
speak lifespan still work (the collector starts on the first request and drains at exit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from functools import partial
from typing import Any, Awaitable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consentmw.web.api import ConsentAPI
from consentmw.collect.hit import Hit, campaign_params, new_hit
from consentmw.core.consent import ConsentCodec, ConsentState, pick_cookie
from consentmw.web.http import route_path
from consentmw.pipeline import Collector
from consentmw.core.policy import Policy, PolicyError
from consentmw.core.settings import Settings, SettingsError
from consentmw.store.dsn import DsnError
from consentmw.serving import stop_supervisor
from consentmw.store.sink import MigrationRefused, StoreLockedError

log = logging.getLogger("consentmw")
_NOT_SETTINGS = frozenset({"self", "app", "collector"})
#: Page views are GETs: HEAD comes from monitors and link checkers, not from someone reading a page.
_CAPTURE_METHODS = frozenset({"GET"})
_WANTS_CACHE_SIZE = 8192
#: Only paths this short are remembered: the path cache holds at most 8,192 x 256 characters.
_WANTS_MAX_PATH = 256
#: What a hit keeps of each header (bytes): the queue holds up to `queue_size` hits, so each is
#: bounded. A User-Agent longer than MAX_UA is no browser: it is kept empty, which is a bot.
_MAX_UA, _MAX_LANGUAGE, _MAX_REFERRER, _MAX_HOST, _MAX_FORWARDED, _MAX_PATH = 512, 256, 2048, 300, 1024, 2048
_COOKIE_CACHE_SIZE = 4096
#: request headers the middleware reads, and where each goes in its list of found values
#: (the forwarding header in slot 5 is the one `forwarded_header` names)
_HEADER_SLOTS = {b"cookie": 0, b"user-agent": 1, b"accept-language": 2, b"referer": 3, b"host": 4,
                 b"sec-gpc": 6}


class ConsentMiddleware:
    """Consent state for every request, consent endpoints, and consent-gated collection.

    Every keyword is a `Settings` field (see consentmw/core/settings.py); None means "from
    the `CONSENTMW_*` environment, else the default". They are spelled out (no `**options`)
    so type checkers check them, and Starlette's typed `add_middleware` accepts the class.

    Invalid settings raise `SettingsError` at once, except when the middleware is built
    inside a running ASGI app (Starlette builds its middleware stack lazily, during the
    first ASGI call: the lifespan startup). Raising there would read as "lifespan
    unsupported" to uvicorn, which would then serve 500s; instead the startup fails with
    the reason, so the server exits non-zero.
    """

    def __init__(self, app: ASGIApp, /, *, secret_key: str | Sequence[str] | None = None,
                 clickhouse_dsn: str | None = None, policy: Policy | str | os.PathLike[str] | None = None,
                 spool_dir: str | None = None, admin_token: str | None = None, database: str | None = None,
                 cluster: str | None = None, prefix: str | None = None, cookie_domain: str | None = None,
                 cookie_max_age: int | None = None, cookie_secure: bool | None = None,
                 revocation_refresh: float | None = None,
                 trusted_proxies: str | Sequence[str] | None = None, forwarded_header: str | None = None,
                 allowed_origins: str | Sequence[str] | None = None,
                 allowed_hosts: str | Sequence[str] | None = None, collect: bool | None = None,
                 exclude_paths: Sequence[str] | None = None, include_paths: Sequence[str] | None = None,
                 exclude_extensions: Sequence[str] | None = None, geoip_db: str | None = None,
                 batch_size: int | None = None, max_batch_size: int | None = None,
                 flush_interval: float | None = None, queue_size: int | None = None,
                 shutdown_timeout: float | None = None, spool_max_bytes: int | None = None,
                 collect_rate: float | None = None, collect_burst: int | None = None,
                 choice_rate: float | None = None, choice_burst: int | None = None,
                 rights_rate: float | None = None, rights_burst: int | None = None,
                 erase_queue: int | None = None,
                 floating_button: bool | None = None, allow_shorter_retention: bool | None = None,
                 freeze_gc: bool | None = None, minimise_worker: str | None = None,
                 collector: Collector | None = None) -> None:
        self.app = app
        # Every keyword but `app` and `collector` is a setting of the same name.
        options = {name: value for name, value in locals().items() if name not in _NOT_SETTINGS}
        try:
            self._configure(options, collector)
        except (SettingsError, PolicyError, DsnError) as exc:
            if not _inside_running_app():
                raise
            self.__class__ = _Misconfigured
            self.reason = f"consentmw: invalid settings: {exc}"

    def _configure(self, options: dict[str, Any], collector: Collector | None) -> None:
        self.settings = Settings.build(options)
        self.policy = self.settings.policy
        self.codec = ConsentCodec(self.settings.secret_key, self.policy, max_age=self.settings.cookie_max_age)
        self.collector = collector or Collector.from_settings(self.settings)
        self.api = ConsentAPI(self.settings, self.codec, self.collector)
        from consentmw.web.routes import register_all  # the beacon, rights and operator endpoints
        register_all(self.api)
        profiles = getattr(self.api, "profiles", None)
        #: the profile look-up, bound to each request's consent state with functools.partial
        self._profile_of = profiles.get if profiles is not None else None
        prefix = self.settings.prefix
        self._prefix_slash = prefix + "/"
        self._prefix = prefix
        self._collect = self.settings.collect
        self._exclude = tuple(self.settings.exclude_paths)
        self._include = tuple(self.settings.include_paths)
        self._exclude_ext = tuple(e.lower() for e in self.settings.exclude_extensions)
        #: Cookie header -> (consent state, valid until, profile accessor); see `_decode`
        self._states: dict[bytes, tuple[ConsentState, float, Any]] = {}
        self._wants_cache: dict[str, bool] = {}
        self._slots = {**_HEADER_SLOTS, self.settings.forwarded_header.encode(): 5}
        self._forwarded_name = self.settings.forwarded_header.encode()

    # ---------------------------------------------------------------- ASGI entry
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        # Below a mount point (uvicorn --root-path, a Starlette Mount) `path` starts with
        # `root_path`: the consent endpoints and the path filters see what follows it.
        route = route_path(scope) if scope.get("root_path") else path
        if kind == "http" and (route.startswith(self._prefix_slash) or route == self._prefix):
            self.collector.ensure_started()
            await self.api(scope, receive, send)
            return

        headers = scope["headers"]
        by_name = dict(headers)
        if len(by_name) == len(headers):
            # No header name repeated (the usual request): one C call builds the map.
            get = by_name.get
            cookie, user_agent, language = get(b"cookie", b""), get(b"user-agent", b""), get(b"accept-language", b"")
            referrer, host, gpc_header = get(b"referer", b""), get(b"host", b""), get(b"sec-gpc", b"")
            forwarded = get(self._forwarded_name, b"")
        else:
            cookie, user_agent, language, referrer, host, forwarded, gpc_header = self._repeated(headers)
        # Browsers repeat the same Cookie header request after request: what it decodes to
        # (the verified state, until it expires, and its profile accessor) is remembered per
        # header value (bounded: 4096 headers of <= 1 KB), so a returning visitor costs one
        # look-up. A consent withdrawn or erased since is decoded afresh (and refused).
        now = time.time()
        known = self._states.get(cookie)
        revoked = self.codec.revocations
        if known is None or known[1] <= now or (revoked.before and revoked.refuses(known[0].id, known[0].given_at)):
            known = self._decode(cookie, now)
        state, _, profile = known
        if gpc_header == b"1":
            state = self.codec.apply_gpc(state)
            profile = self._profile_for(state)
        scope_state = scope.get("state")
        if scope_state is None:
            scope_state = scope["state"] = {"consent": state}
        else:
            scope_state["consent"] = state
        # `await request.state.consent_profile()`: only visitors with a stable id have a
        # profile; for everyone else it is there all the same and returns None.
        scope_state["consent_profile"] = profile

        if (not state.collecting or not self._collect or kind != "http"
                or scope["method"] not in _CAPTURE_METHODS
                or not (self._wants_cache.get(route) or self._wanted(route))):
            await self.app(scope, receive, send)
            return

        started = now
        collector = self.collector
        status = 0
        is_html = False
        ended = 0.0

        # A plain function returning the server's own awaitable: no coroutine of ours per
        # message. It notes the status, whether the page is HTML, and when the app handed
        # over its last body byte; the hit is queued once the app is done.
        def send_capturing(message: Message) -> Awaitable[None]:
            nonlocal status, is_html, ended
            if message["type"] == "http.response.start":
                status = message["status"]
                for hkey, hvalue in message.get("headers", ()):
                    if hkey == b"content-type" or hkey == b"Content-Type":  # ASGI names are lower-case
                        is_html = hvalue.startswith(b"text/html")
                        break
            elif is_html and not message.get("more_body", False):
                is_html = False  # one hit per response, even if the app misbehaves
                ended = time.time()
            return send(message)

        if not collector.started:
            collector.ensure_started()
        try:
            await self.app(scope, receive, send_capturing)
        finally:
            if ended:  # the whole page went out (even if the app failed afterwards)
                client = scope.get("client")
                query = scope.get("query_string")
                # Header values stay bytes: the writer decodes each distinct value once.
                # Capped (a slice of a short value is the value itself: free in the usual case).
                collector.submit(new_hit(Hit, (
                    started, "pageview", host[:_MAX_HOST], path[:_MAX_PATH], state.id or "",
                    state.policy_version, state.collecting, state.visitor_id, client[0] if client else "",
                    forwarded[-_MAX_FORWARDED:], user_agent if len(user_agent) <= _MAX_UA else b"",
                    language[:_MAX_LANGUAGE], referrer[:_MAX_REFERRER],
                    campaign_params(query) if query else None, status, (ended - started) * 1000, None)))

    def _repeated(self, headers: list[tuple[bytes, bytes]]) -> list[bytes]:
        """The headers this middleware reads, when some header name is repeated: HTTP/2 may
        split cookies over several headers and proxies may add a forwarding line each, which
        are joined into one list as RFC 9110 reads repeated headers; for the others the last
        line counts."""
        found = [b"", b"", b"", b"", b"", b"", b""]
        slot_of = self._slots.get
        for key, value in headers:
            slot = slot_of(key)
            if slot is not None:
                if found[slot] and (slot == 0 or slot == 5):
                    value = found[slot] + (b"; " if slot == 0 else b", ") + value
                found[slot] = value
        return found

    def _decode(self, cookie: bytes, now: float) -> tuple[ConsentState, float, Any]:
        """The consent state a Cookie header stands for, how long that holds, and the state's
        profile accessor; remembered for headers of at most 1 KB. A header without a valid
        consent cookie (none, several different ones, a forged, expired or revoked one) stands
        for the default state for good (the policy and keys of a running middleware do not
        change); a valid one until the cookie expires."""
        picked = pick_cookie(cookie)
        # Several different consent cookies (one planted by a sibling domain): nobody's consent.
        state = self.codec.decode(picked.value, now=now, host_name=picked.host)
        if state is None:
            known = (self.codec.default_state, float("inf"), _no_profile)
        else:
            # A state without an expiry is not remembered (the codec re-verifies it each time).
            known = (state, state.expires_at if state.expires_at is not None else now, self._profile_for(state))
        if len(cookie) <= 1024:
            states = self._states
            if len(states) >= _COOKIE_CACHE_SIZE:
                states.clear()
            states[cookie] = known
        return known

    def _profile_for(self, state: ConsentState) -> Any:
        """`consent_profile` for a state: the profile look-up bound to it for visitors with a
        stable id, else an accessor that returns None."""
        if state.visitor_id is None or self._profile_of is None:
            return _no_profile
        return partial(self._profile_of, state)

    def _wanted(self, path: str) -> bool:
        """`_wants`, remembered per path (bounded): sites serve the same paths again and again."""
        known = self._wants_cache.get(path)
        if known is None:
            known = self._wants(path)
            if len(path) <= _WANTS_MAX_PATH:
                if len(self._wants_cache) >= _WANTS_CACHE_SIZE:
                    self._wants_cache.clear()
                self._wants_cache[path] = known
        return known

    def _wants(self, path: str) -> bool:
        """Whether a path's pages are captured (include/exclude prefixes, static extensions)."""
        if self._include and not path.startswith(self._include):
            return False
        if path.startswith(self._exclude):
            return False
        return not path.lower().endswith(self._exclude_ext)

    # ---------------------------------------------------------------- lifespan
    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the collector at startup and drain it at shutdown, whatever the inner app does.

        The inner app sees the lifespan messages first-hand. If it does not implement
        lifespan (raises or returns without answering, as Django's ASGI handler does),
        this middleware completes the protocol itself so the server still gets its answers.
        A store that can never work here (a chDB directory locked by another process)
        fails the startup with a one-line reason.
        """
        seen: set[str] = set()
        answered: set[str] = set()
        refused: list[str] = []

        async def receive_wrapper() -> Message:
            message = await receive()
            seen.add(message["type"])
            if message["type"] == "lifespan.startup":
                try:
                    await self.collector.astart()
                except (StoreLockedError, MigrationRefused) as exc:
                    refused.append(str(exc))
                    raise _StartupRefused(str(exc)) from None
            elif message["type"] == "lifespan.shutdown":
                await self.collector.astop()
            return message

        async def send_wrapper(message: Message) -> None:
            if refused and message["type"] == "lifespan.startup.failed":
                message = {"type": "lifespan.startup.failed", "message": refused[0]}
            answered.add(message["type"])
            if refused and message["type"] == "lifespan.startup.failed":
                await _fail_startup(send, refused[0])
            else:
                await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except BaseException:
            if refused:
                if "lifespan.startup.failed" not in answered:
                    await _fail_startup(send, refused[0])
                return
            if answered:
                raise
        if "lifespan.shutdown.complete" in answered or "lifespan.startup.failed" in answered:
            return
        # The app did not (fully) speak lifespan: finish the protocol on its behalf.
        try:
            if "lifespan.startup" not in seen:
                await receive_wrapper()
        except _StartupRefused:
            await _fail_startup(send, refused[0])
            return
        if "lifespan.startup.complete" not in answered:
            await send({"type": "lifespan.startup.complete"})
        if "lifespan.shutdown" not in seen:
            await receive_wrapper()
        await send({"type": "lifespan.shutdown.complete"})


async def _fail_startup(send: Send, reason: str) -> None:
    """Fail the lifespan startup with `reason`, and make sure the whole server stops."""
    try:
        await send({"type": "lifespan.startup.failed", "message": reason})
    finally:
        stop_supervisor(reason)


def _inside_running_app() -> bool:
    """Whether we are being built inside a running event loop (lazily, by the ASGI app)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Misconfigured(ConsentMiddleware):
    """What a `ConsentMiddleware` with invalid settings becomes when it could not raise:
    it fails the lifespan startup with the reason (the server exits non-zero), and for
    servers that send no lifespan events it answers every request with a plain 500."""

    reason: str
    _logged = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _fail_startup(send, self.reason)
            return
        if not self._logged:
            self._logged = True
            log.error("%s (answering 500: this server sent no lifespan startup to fail)", self.reason)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"Internal Server Error: the server is misconfigured\n"})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1011})


async def _no_profile() -> None:
    """`consent_profile()` of a visitor without personalisation: no profile."""
    return None


class _StartupRefused(Exception):
    """Raised into the app's lifespan handler when the store cannot be used at all."""
