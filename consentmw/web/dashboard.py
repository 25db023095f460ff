"""`GET {prefix}/admin/dashboard`: the live dashboard, behind the admin token.

Who may see it: a request with `Authorization: Bearer <admin_token>` (scripts, curl), or
a browser holding the dashboard cookie. A browser cannot send a bearer header when it
opens a page, so a visit without either gets a small sign-in form; posting the right
token sets `consentmw_admin` (HttpOnly, SameSite=Strict, scoped to `{prefix}/admin`) whose
value is an HMAC of the token, never the token itself: changing the token signs
everyone out. Disabled (404) while no admin token is configured.

The page carries its own strict Content-Security-Policy (no script at all; the stylesheet
is `{prefix}/admin/dashboard.css`, same origin). Filters are query parameters, validated
(`consentmw.dashboard.filters`): a bad one is a 400 with the reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.responses import HTMLResponse, RedirectResponse, Response

from consentmw.web.http import HTTPProblem, read_body

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request

    from consentmw.web.api import ConsentAPI

PATH = "/admin/dashboard"
COOKIE = "consentmw_admin"
SESSION_SECONDS = 12 * 3600
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "same-origin"}


def session_value(token: str) -> str:
    """What the dashboard cookie holds: proof of the token, not the token."""
    return hmac.new(token.encode("utf-8"), b"consentmw dashboard session v1", hashlib.sha256).hexdigest()


def _authorised(request: "Request", token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given:
        return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8"))
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode("utf-8", "replace"), session_value(token).encode())


def _sign_in_page(stylesheet: str, message: str = "") -> str:
    from consentmw.dashboard.charts import esc

    note = f'<p class="none" role="alert">{esc(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>Sign in · consentmw dashboard</title>
<link rel="stylesheet" href="{esc(stylesheet)}"></head>
<body><main><h1>consentmw dashboard</h1>
<form class="filters" method="post"><div class="field"><label for="token">Admin token</label>
<input id="token" type="password" name="token" autocomplete="current-password" required></div>
<button type="submit">Sign in</button></form>{note}
<p class="sub">The token is the site's <code>admin_token</code> (<code>CONSENTMW_ADMIN_TOKEN</code>).</p></main></body></html>
"""


def register(api: "ConsentAPI") -> None:
    from consentmw.dashboard.filters import FilterError, parse
    from consentmw.dashboard.page import CSS, notice, render
    from consentmw.dashboard.queries import NO_STATISTICS, has_statistics, load

    settings = api.settings
    stylesheet = api.prefix + PATH + ".css"
    css_etag = '"' + hashlib.sha256(CSS.encode()).hexdigest()[:16] + '"'

    def enabled() -> str:
        if not settings.admin_token:
            raise HTTPProblem(404, "not found (set admin_token / CONSENTMW_ADMIN_TOKEN to enable)")
        return settings.admin_token

    def _render(params: dict[str, str]) -> str:
        if not has_statistics(api.policy):
            # Nothing is wrong and nothing will change by retrying: say why the page is empty.
            return notice("No statistics are collected", NO_STATISTICS, stylesheet=stylesheet)
        sink = getattr(api.collector, "sink", None)
        if sink is None:
            raise HTTPProblem(503, "no data store is configured")
        today = dt.datetime.now(dt.timezone.utc).date()
        try:
            filters = parse(params, today)
        except FilterError as exc:
            raise HTTPProblem(400, str(exc)) from None

        def query(sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
            return sink.query(sql, parameters=parameters).result_rows

        def command(sql: str, parameters: dict[str, Any]) -> Any:
            return sink.command(sql, parameters=parameters)

        # the daily roll-up (kept current by the dashboard itself) exists on a single server
        cluster = bool(getattr(getattr(sink, "schema", None), "cluster", None))
        data = load(query, sink.database, filters, rollup=not cluster, command=command,
                    retention_days=api.policy["statistics"].retention_days)
        return render(data, title="Dashboard", stylesheet=stylesheet)

    async def dashboard(request: "Request") -> Response:
        token = enabled()
        if not _authorised(request, token):
            return HTMLResponse(_sign_in_page(stylesheet), status_code=401, headers=HEADERS)
        try:
            page = await asyncio.to_thread(_render, dict(request.query_params))
        except HTTPProblem:
            raise
        except Exception as exc:  # noqa: BLE001 - the store is down or refused the query
            from consentmw.core.redact import redact  # a DSN in the driver's message keeps its password

            first = redact(str(exc).splitlines()[0][:150]) if str(exc) else type(exc).__name__
            raise HTTPProblem(503, f"the data store is unavailable: {first}") from None
        return HTMLResponse(page, headers=HEADERS)

    async def sign_in(request: "Request") -> Response:
        token = enabled()
        api.check_origin(request.scope)
        body = await read_body(request.receive, request.scope, 4096)
        given = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0]
        if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8")):
            return HTMLResponse(_sign_in_page(stylesheet, "That is not the admin token."), status_code=401,
                                headers=HEADERS)
        response = RedirectResponse(api.prefix + PATH, status_code=303, headers={"Cache-Control": "no-store"})
        secure = settings.cookie_secure if settings.cookie_secure is not None else api.scheme(request.scope) == "https"
        response.set_cookie(COOKIE, session_value(token), max_age=SESSION_SECONDS, path=api.prefix + "/admin",
                            secure=secure, httponly=True, samesite="strict")
        return response

    async def css(request: "Request") -> Response:
        if request.headers.get("if-none-match") == css_etag:
            return Response(status_code=304, headers={"ETag": css_etag})
        return Response(CSS, media_type="text/css; charset=utf-8",
                        headers={"ETag": css_etag, "Cache-Control": "public, max-age=3600",
                                 "X-Content-Type-Options": "nosniff"})

    api.add("GET", PATH, dashboard)
    api.add("POST", PATH, sign_in)
    api.add("GET", PATH + ".css", css)
