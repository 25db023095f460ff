"""Small HTTP helpers for the consent endpoints: capped body reading, origin checks, cookies.

These run only on `/_consent/*` requests, never on the site's own pages.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope


class HTTPProblem(Exception):
    """A request we refuse, with the status and the reason we tell the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.reason}, status_code=self.status,
                            headers={"Cache-Control": "no-store"})


def route_path(scope: Scope) -> str:
    """The request path below the app's mount point.

    ASGI servers and routers put the mount point in `root_path` *and* at the front of
    `path` (uvicorn `--root-path`, a Starlette `Mount`); the consent endpoints are routed
    on what follows it, as Starlette's own routing does.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path") or ""
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):]
    return path


class TooManyRequests(HTTPProblem):
    """429 with the seconds to wait (a client over its per-client rate)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(429, f"too many requests: try again in {retry_after} s")
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        response = super().response()
        response.headers["Retry-After"] = str(self.retry_after)
        return response


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a header, decoded as latin-1 (as HTTP header bytes are)."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def header_bytes(scope: Scope, name: bytes) -> bytes:
    """The first value of a header as sent (b"" when absent): what a hit keeps for the writer."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return b""


def cookie_value(raw: bytes | None, name: bytes) -> str | None:
    """Find one cookie in a Cookie header without parsing all of them."""
    if not raw:
        return None
    start = 0
    needle = name + b"="
    while True:
        i = raw.find(needle, start)
        if i < 0:
            return None
        if i == 0 or raw[i - 1] in b"; \t":
            j = raw.find(b";", i)
            value = raw[i + len(needle): j if j >= 0 else len(raw)].strip()
            if value[:1] == b'"' and value[-1:] == b'"':
                value = value[1:-1]
            return value.decode("latin-1")
        start = i + 1


async def read_body(receive: Receive, scope: Scope, limit: int) -> bytes:
    """Read the whole body, refusing (413) anything over `limit` bytes without buffering it."""
    length = header(scope, b"content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise HTTPProblem(413, f"body too large (limit {limit} bytes)")
        except ValueError:
            raise HTTPProblem(400, "invalid Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPProblem(400, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"body too large (limit {limit} bytes)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_json(body: bytes, max_depth: int = 8) -> Any:
    """Decode a JSON body strictly (UTF-8, no NaN, bounded nesting).

    The C decoder does the work (~40 µs for a 32 KB body); it stops itself with a
    RecursionError on absurd nesting, and the shallow limit is checked on the result.
    """
    if not body:
        raise HTTPProblem(400, "empty body: expected JSON")
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise HTTPProblem(400, f"JSON nested deeper than {max_depth} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPProblem(400, f"invalid JSON: {exc}"[:200]) from None
    if _depth_exceeds(value, max_depth):
        raise HTTPProblem(400, f"JSON nested deeper than {max_depth} levels")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than `limit` (iterative: visits containers only)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def origin_of(scope: Scope) -> str:
    """This request's own origin (scheme://host[:port]) as the browser would write it."""
    scheme = scope.get("scheme", "http")
    host = header(scope, b"host") or ""
    if not host and scope.get("server"):
        h, p = scope["server"]
        host = h if (scheme, p) in (("http", 80), ("https", 443)) else f"{h}:{p}"
    ws = {"ws": "http", "wss": "https"}
    return f"{ws.get(scheme, scheme)}://{host.lower()}"


def check_same_origin(scope: Scope, allowed: Iterable[str] = (), own: str | None = None) -> None:
    """Refuse (403) a request a browser marked as coming from another site.

    Browsers send `Origin` on every POST/DELETE and `Sec-Fetch-Site` on every request;
    clients without them (curl, server-to-server) cannot carry a visitor's cookie
    across sites, so their absence is not a CSRF risk. `own` is this request's origin as
    the trusted proxies describe it (default: the connection's scheme and Host).
    """
    site = header(scope, b"sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        origin = header(scope, b"origin")
        if not (site == "same-site" and origin is not None and origin in allowed):
            raise HTTPProblem(403, f"cross-origin request refused (Sec-Fetch-Site: {site[:20]})")
    origin = header(scope, b"origin")
    if origin is not None and origin != (own or origin_of(scope)) and origin not in allowed:
        raise HTTPProblem(403, "cross-origin request refused (Origin does not match)")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON that is never cached: every rights and admin answer is personal."""
    h = {"Cache-Control": "no-store"}
    h.update(headers or {})
    return Response(json.dumps(body, ensure_ascii=False, default=str), status_code=status,
                    media_type="application/json", headers=h)


def accepts_gzip(value: str | None) -> bool:
    """Whether an Accept-Encoding header allows gzip (`gzip;q=0` refuses it)."""
    for part in (value or "").lower().split(","):
        coding, _, params = part.partition(";")
        if coding.strip() in ("gzip", "x-gzip", "*"):
            q = params.replace(" ", "")
            try:
                return not q.startswith("q=") or float(q[2:]) > 0
            except ValueError:
                return False
    return False


def etag_matches(value: str | None, etag: str) -> bool:
    """`If-None-Match` compared weakly (RFC 9110 13.1.2), `*` included."""
    if not value:
        return False
    tags = [t.strip() for t in value.split(",")]
    return "*" in tags or any((t[2:] if t.startswith("W/") else t) == etag for t in tags)
