"""`POST /_consent/collect`: beacon events from the browser, validated, consent-gated, queued."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from consentmw.web.api import ConsentAPI
from consentmw.collect.beacon import BODY_LIMIT, MAX_EVENTS, BeaconError, validate_batch
from consentmw.collect.beacon_schema import fast_events
from consentmw.collect.hit import Hit, new_hit
from consentmw.collect.useragent import MAX_UA
from consentmw.web.http import HTTPProblem, header, header_bytes, parse_json, read_body
from consentmw.core.ratelimit import TokenBuckets

_TYPES = ("application/json", "text/plain")
#: the 202 answer's body for each batch size, built once
_ACCEPTED = [b'{"accepted":%d}' % n for n in range(MAX_EVENTS + 1)]


def register(api: ConsentAPI) -> None:
    settings = api.settings
    buckets = TokenBuckets(settings.collect_rate, settings.collect_burst)
    collector = api.collector

    async def collect(request: Request) -> Response:
        scope = request.scope
        api.check_origin(scope)
        ctype = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if ctype not in _TYPES:
            raise HTTPProblem(415, "expected Content-Type: application/json or text/plain")
        peer = (scope.get("client") or ("", 0))[0] or ""
        forwarded = api.forwarded(scope)
        if not buckets.allow(api.client(scope).ip):
            _count(collector, "rate_limited")
            return JSONResponse({"error": "too many requests"}, status_code=429, headers={"Retry-After": "1"})
        body = await read_body(request.receive, scope, BODY_LIMIT)
        # msgspec checks the usual batch in C; anything it does not accept goes through the
        # reference validator, which accepts it or says what is wrong.
        events = fast_events(body)
        if events is None:
            try:
                events = validate_batch(parse_json(body))
            except (BeaconError, HTTPProblem) as exc:
                _count(collector, "invalid")
                raise HTTPProblem(400, str(exc) if isinstance(exc, BeaconError) else exc.reason) from None
        state = api.effective(request)
        if not state.collecting:
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        now = time.time()
        # Raw bytes, as the page path keeps them: both are decoded alike on the writer thread.
        # Capped as the page path caps them (a User-Agent over 512 bytes is kept empty: a bot).
        site = header_bytes(scope, b"host")[:300]
        ua = header_bytes(scope, b"user-agent")
        ua = ua if len(ua) <= MAX_UA else b""
        lang = header_bytes(scope, b"accept-language")[:256]
        forwarded = forwarded[-1024:]
        consent_id, version, purposes, visitor = state.id or "", state.policy_version, state.collecting, state.visitor_id
        collector.submit_many([new_hit(Hit, (now, event["type"], site, event["path"], consent_id, version, purposes,
                                             visitor, peer, forwarded, ua, lang, "", None, 0, 0, event))
                               for event in events])
        return Response(_ACCEPTED[len(events)], status_code=202, media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    api.add("POST", "/collect", collect)


def _count(collector: object, name: str) -> None:
    stats = getattr(collector, "stats", None)
    if stats is not None:
        setattr(stats, name, getattr(stats, name) + 1)
