"""Operator endpoints for rights requests that arrive by letter, behind the admin bearer token.

    GET    /_consent/admin/visitors/{id}    export (id: a consent id or a visitor id)
    DELETE /_consent/admin/visitors/{id}    erase, verify, write a receipt
    GET    /_consent/admin/visitors?id=...  the same, for routers without path parameters
    DELETE /_consent/admin/visitors?id=...

Disabled (404) unless `admin_token` is set; a missing or wrong token answers 401.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING, Any

from consentmw.core.redact import redact
from consentmw.web.http import HTTPProblem

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request
    from starlette.responses import Response

    from consentmw.web.api import ConsentAPI

BASE = "/admin/visitors"


def check_token(request: "Request", token: str | None) -> None:
    if not token:
        raise HTTPProblem(404, "admin API disabled: set admin_token (CONSENTMW_ADMIN_TOKEN) to enable it")
    auth = request.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise _Unauthorized()


class _Unauthorized(HTTPProblem):
    def __init__(self) -> None:
        super().__init__(401, "missing or wrong admin bearer token")

    def response(self) -> Any:
        response = super().response()
        response.headers["WWW-Authenticate"] = 'Bearer realm="consentmw"'
        return response


def register(api: "ConsentAPI") -> None:
    from consentmw.rights.service import RightsError, valid_id
    from consentmw.web.http import json_response, route_path

    prefix = api.prefix + BASE + "/"

    def visitor_id(request: "Request") -> str:
        value = request.query_params.get("id")
        path = route_path(request.scope)
        if value is None and path.startswith(prefix):
            value = path[len(prefix):]
        if not value:
            raise HTTPProblem(400, "give the visitor: /admin/visitors/{id} or ?id=")
        if not valid_id(value):
            raise HTTPProblem(400, "not a valid consent or visitor id")
        return value

    def rights() -> Any:
        engine = getattr(api, "rights", None)
        if engine is None:
            raise HTTPProblem(503, "the rights module is not loaded")
        return engine

    async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (HTTPProblem, RightsError):
            raise
        except ValueError as exc:
            raise HTTPProblem(400, str(exc)[:200]) from None
        except Exception as exc:  # noqa: BLE001
            reason = redact(str(exc).splitlines()[0][:150] if str(exc) else type(exc).__name__)
            raise HTTPProblem(503, f"the data store is unavailable: {reason}") from None

    def _export(vid: str) -> dict[str, Any] | None:
        engine = rights()
        flush = getattr(api.collector, "flush", None)
        if flush:
            flush()
        subject = engine.resolve(vid)
        return None if subject.empty else engine.export(subject)

    def _erase(vid: str) -> dict[str, Any] | None:
        engine = rights()
        flush = getattr(api.collector, "flush", None)
        if flush:
            flush()
        subject = engine.resolve(vid)
        if subject.empty:
            return None
        result = engine.erase(subject, requested_by="operator:api")
        profiles = getattr(api, "profiles", None)
        if profiles is not None:
            for v in subject.visitor_ids:
                profiles.forget(v)
        return result

    async def export(request: "Request") -> "Response":
        check_token(request, api.settings.admin_token)
        data = await call(_export, visitor_id(request))
        if data is None:
            raise HTTPProblem(404, "no data stored for this id")
        return json_response(data)

    async def erase(request: "Request") -> "Response":
        check_token(request, api.settings.admin_token)
        try:
            data = await call(_erase, visitor_id(request))
        except RightsError as exc:
            raise HTTPProblem(500, redact(str(exc))[:300]) from None
        if data is None:
            raise HTTPProblem(404, "no data stored for this id")
        return json_response({"erased": True, "receipt": data})

    api.add("GET", BASE, export)
    api.add("DELETE", BASE, erase)
    add_prefix = getattr(api, "add_prefix", None)
    if add_prefix is not None:  # routers with path parameters: /admin/visitors/{id}
        add_prefix("GET", BASE + "/", export)
        add_prefix("DELETE", BASE + "/", erase)
