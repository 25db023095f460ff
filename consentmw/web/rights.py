"""The visitor's rights over HTTP: GET /me, POST /me/block, POST /me/unblock, DELETE /me,
and DELETE /choice?erase=true. The rules themselves live in `consentmw.rights`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any, Callable

from consentmw.core.redact import redact
from consentmw.rights.erasures import ErasureQueue, QueueFull
from consentmw.rights.revocation import RevocationSync
from consentmw.rights.service import Rights, RightsError
from consentmw.web.http import HTTPProblem

log = logging.getLogger("consentmw.rights")
#: seconds a visitor is told to wait after the store failed (the replayer retries meanwhile)
RETRY_AFTER = "30"

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from consentmw.core.consent import ConsentState
    from consentmw.web.api import ConsentAPI


def _truthy(value: str | None) -> bool:
    from consentmw.web.http import HTTPProblem

    if value is None or value.lower() in ("", "0", "false", "no"):
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    raise HTTPProblem(400, "'erase' must be true or false")


class RetryLater(HTTPProblem):
    """503 with a Retry-After hint and no detail: store errors are for the operator's eyes."""

    def __init__(self, reason: str) -> None:
        super().__init__(503, reason)

    def response(self) -> Any:
        response = super().response()
        response.headers["Retry-After"] = RETRY_AFTER
        return response


def erasure_busy() -> RetryLater:
    """The erasure queue is full; the visitor may try again shortly."""
    return RetryLater("too many erasures are queued right now; nothing was changed, please try again shortly")


def store_unavailable() -> RetryLater:
    """The store did not answer; nothing was changed."""
    return RetryLater("the data store is unavailable; nothing was changed, please try again later")


def register(api: "ConsentAPI") -> None:
    """GET /me, POST /me/block, POST /me/unblock, DELETE /me; DELETE /choice?erase=true."""
    from consentmw.core.ledger import ACTION_ERASE, erasure_proof
    from consentmw.core.policy import LANGUAGES
    from consentmw.web.http import HTTPProblem, json_response

    collector = api.collector
    sink = getattr(collector, "sink", None)
    if sink is None:  # a collector without a store (tests, custom pipelines): no rights endpoints
        return
    enricher = getattr(collector, "enricher", None)
    proof = getattr(enricher, "consent_proof", None)
    # Withdrawn and erased consents are refused in every process: kept in step with the store.
    revocations = api.codec.revocations
    sync = RevocationSync(sink, revocations, api.settings.cookie_max_age, api.settings.revocation_refresh)
    companions = getattr(collector, "companions", None)
    if companions is not None:
        companions.append(sync)
    rights = Rights(sink, api.policy, api.settings.secret_key[0], proof=proof, revocations=sync,
                    flush_interval=api.settings.flush_interval)
    api.rights = rights  # type: ignore[attr-defined]
    minimiser = getattr(collector, "minimiser", None)
    if minimiser is not None:
        # Collection stops for blocked browsers: the minimiser skips their hits (writer thread),
        # and the hits of an erased consent that were still in flight when it was erased.
        minimiser.blocked = rights.blocklist.is_blocked
        minimiser.erased = revocations.erased_at
    from consentmw.rights.profile import ProfileService

    api.profiles = ProfileService(sink, api.policy, rights.blocklist)  # type: ignore[attr-defined]
    if hasattr(collector, "on_visitor_view"):
        collector.on_visitor_view = api.profiles.note  # type: ignore[attr-defined]
    original_delete_choice = api.delete_choice

    def _settle() -> None:
        """Write what is queued (and replay what is spooled) so erasure sees every row."""
        flush = getattr(collector, "flush", None)
        if flush is not None:
            flush()
        writer = getattr(collector, "writer", None)
        if writer is not None and writer.spool.pending():
            writer.replay()

    def authenticate(request: "Request") -> "ConsentState":
        api.check_origin(request.scope)
        api.limit(request.scope, "rights")
        state = api.current(request, any_version=True)
        if state is None or not state.id:
            raise HTTPProblem(401, "no valid consent cookie: your data is reachable only from the browser "
                                   "that made the choice")
        return state

    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (RightsError, ValueError):
            raise
        except Exception as exc:  # noqa: BLE001 - store down or refusing
            # The visitor learns only that it failed and when to retry; the operator gets
            # the (redacted) reason in the log and in /health.
            log.warning("consentmw: %s failed, store unavailable: %s", getattr(fn, "__name__", "rights call"),
                        redact(str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__))
            raise store_unavailable() from None

    def _export(state: "ConsentState") -> dict[str, Any]:
        _settle()
        return rights.export(rights.subject_for(state), state=state)

    async def get_me(request: "Request") -> "Response":
        state = authenticate(request)
        data = await run(_export, state)
        day = dt.date.today().isoformat()
        return json_response(data, headers={"Content-Disposition": f'attachment; filename="my-data-{day}.json"'})

    def _block(state: "ConsentState", blocked: bool) -> int:
        _settle()
        return rights.set_blocked(rights.subject_for(state), blocked)

    async def block(request: "Request") -> "Response":
        state = authenticate(request)
        n = await run(_block, state, True)
        api.profiles.forget(state.visitor_id)  # type: ignore[attr-defined]
        return json_response({"blocked": True, "subjects": n, "note":
                      "Processing of your data is suspended: nothing more is collected from this browser and "
                      "your stored data is excluded from personalisation and statistics until you unblock it "
                      "or erase it. Your data is kept meanwhile."})

    async def unblock(request: "Request") -> "Response":
        state = authenticate(request)
        n = await run(_block, state, False)
        return json_response({"blocked": False, "subjects": n, "note": "Processing of your data has resumed."})

    erasures = ErasureQueue(api.settings.erase_queue)
    api.erasures = erasures  # type: ignore[attr-defined]
    if companions is not None:
        companions.append(erasures)

    def _erase_now(state: "ConsentState", requested_by: str, before: float | None) -> dict[str, Any]:
        # Rights.erase stops collection for the subject first, then settles the writer
        # (so every row captured before is in the store), then deletes and verifies.
        return rights.erase(rights.subject_for(state), requested_by=requested_by, settle=_settle, before=before)

    async def _erase(state: "ConsentState", requested_by: str, before: float | None = None) -> dict[str, Any]:
        """Run an erasure through the bounded queue (one at a time; 503 when it is full)."""
        try:
            future = erasures.submit(_erase_now, state, requested_by, before)
        except QueueFull:
            raise erasure_busy() from None
        try:
            return await asyncio.wrap_future(future)
        except (RightsError, ValueError):
            raise
        except Exception as exc:  # noqa: BLE001 - store down or refusing: details go to the log only
            log.warning("consentmw: erasure failed, store unavailable: %s",
                        redact(str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__))
            raise store_unavailable() from None

    async def delete_me(request: "Request") -> "Response":
        state = authenticate(request)
        try:
            receipt = await _erase(state, "visitor")
        except RightsError as exc:
            raise HTTPProblem(500, redact(str(exc))[:300]) from None
        api.profiles.forget(state.visitor_id)  # type: ignore[attr-defined]
        response = json_response({"erased": True, "receipt": receipt, "consent": None, "prompt": True})
        # Erasing ends the consent: the cookie is cleared, so nothing more is collected under
        # it (not even under a fresh visitor id) and the banner asks again. The ledger keeps a
        # bare proof that the erasure happened.
        lang = request.query_params.get("lang", "en")
        api.collector.record(erasure_proof(api.ledger_record(request, state, ACTION_ERASE,
                                                             lang if lang in LANGUAGES else "en", "")))
        api.clear_cookie(response, request)
        return response

    async def delete_choice(request: "Request") -> "Response":
        erase = _truthy(request.query_params.get("erase"))
        previous = api.current(request, any_version=True) if erase else None
        response = await original_delete_choice(request)
        if not erase or response.status_code != 200:
            return response
        try:
            body = json.loads(bytes(response.body))
        except ValueError:
            return response
        status = 200
        if previous is None or not previous.id:
            body["erasure"] = {"erased": False, "reason": "no valid consent cookie: nothing is linked to this browser"}
        else:
            try:
                # cookies given before the withdrawal are refused; the withdrawal's own stays valid
                given = (body.get("consent") or {}).get("given_at")
                body["erasure"] = await _erase(previous, "withdrawal",
                                               float(given) if isinstance(given, (int, float)) else None)
                api.profiles.forget(previous.visitor_id)  # type: ignore[attr-defined]
            except (HTTPProblem, RightsError) as exc:
                status = getattr(exc, "status", 500)
                body["erasure"] = {"erased": False, "error": redact(getattr(exc, "reason", None) or str(exc))}
        merged = json_response(body, status, {"Retry-After": RETRY_AFTER} if status == 503 else None)
        for key, value in response.raw_headers:
            if key == b"set-cookie":
                merged.raw_headers.append((key, value))
        return merged

    api.add("GET", "/me", get_me)
    api.add("POST", "/me/block", block)
    api.add("POST", "/me/unblock", unblock)
    api.add("DELETE", "/me", delete_me)
    api.add("DELETE", "/choice", delete_choice)
