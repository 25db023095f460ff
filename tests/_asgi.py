"""Helpers for the ASGI-level tests: httpx clients over ASGITransport and a lifespan driver."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Awaitable, Callable, Iterator

import httpx
import pytest

from consentmw import ConsentMiddleware
from tests.conftest import BROWSER_UA

Message = dict[str, Any]

#: A store that refuses connections at once: for tests about HTTP behaviour, not storage.
#: The middleware must serve normally while ClickHouse is down (events go to the spool),
#: and these tests then pay for no schema migration.
OFFLINE_DSN = "http://127.0.0.1:9"


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def client(app: Any, base_url: str = "http://testserver", **kwargs: Any) -> httpx.AsyncClient:
    headers = {"user-agent": BROWSER_UA, **kwargs.pop("headers", {})}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url,
                             headers=headers, **kwargs)


async def request(app: Any, method: str, url: str, *, base_url: str = "http://testserver",
                  **kwargs: Any) -> httpx.Response:
    async with client(app, base_url, cookies=kwargs.pop("cookies", None) or {}) as c:
        return await c.request(method, url, **kwargs)


def req(app: Any, method: str, url: str, **kwargs: Any) -> httpx.Response:
    return run(request(app, method, url, **kwargs))


def set_cookie_headers(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def cookie_attrs(set_cookie: str) -> tuple[str, dict[str, str]]:
    """Parse one Set-Cookie header: (name=value, {lower-case attribute: value})."""
    first, *rest = [p.strip() for p in set_cookie.split(";")]
    attrs: dict[str, str] = {}
    for part in rest:
        key, _, value = part.partition("=")
        attrs[key.strip().lower()] = value.strip()
    return first, attrs


async def drive_lifespan(app: Any, between: Callable[[], Awaitable[None]] | None = None,
                         timeout: float = 20.0) -> tuple[list[Message], dict[str, Any]]:
    """Run one ASGI lifespan (startup, then shutdown) the way a server does.

    Returns the messages the app sent, and observations taken between startup and shutdown.
    """
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    sent: list[Message] = []
    started = asyncio.Event()
    seen: dict[str, Any] = {}

    async def receive() -> Message:
        return await inbox.get()

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"].startswith("lifespan.startup."):
            started.set()

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(app(scope, receive, send))
    done, _ = await asyncio.wait({task, asyncio.create_task(started.wait())}, timeout=timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    seen["startup_sent"] = [m["type"] for m in sent]
    if between is not None and started.is_set() and not task.done():
        await between()
    await inbox.put({"type": "lifespan.shutdown"})
    try:
        await asyncio.wait_for(task, timeout)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        seen["error"] = exc
    return sent, seen


def wait_stopped(writer: Any, timeout: float = 5.0) -> bool:
    """Poll until every writer thread has exited (the replay thread notices stop within ~0.5 s)."""
    deadline = time.monotonic() + timeout
    while writer.running and time.monotonic() < deadline:
        time.sleep(0.01)
    return not writer.running


@pytest.fixture(autouse=True)
def _quiet_writers(database: str) -> Iterator[None]:
    """Set up after `database` and before `make_app`, so torn down between them: once the
    collectors are stopped, wait for their threads so none migrates a database being dropped."""
    yield
    # One deadline for all: a collector a failed test never stopped must not hang the run.
    deadline = time.monotonic() + 15.0
    for thread in threading.enumerate():
        if thread.name.startswith("consentmw-") and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


@pytest.fixture
def offline(make_app: Callable[..., ConsentMiddleware]) -> Callable[..., ConsentMiddleware]:
    """make_app with the store unreachable: HTTP behaviour only, no schema migration."""
    def factory(app: Any = None, **options: Any) -> ConsentMiddleware:
        options.setdefault("clickhouse_dsn", OFFLINE_DSN)
        return make_app(app, **options)
    return factory
