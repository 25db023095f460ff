"""Per-client rate limits on the consent choice and the rights endpoints (issue 11.10), keyed
by the client address the trusted proxies resolve; erasures through a bounded queue."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

import httpx
import pytest

from consentmw import ConsentMiddleware
from consentmw.rights.erasures import ErasureQueue, QueueFull

from tests._asgi import _quiet_writers, offline  # noqa: F401
from tests.conftest import BROWSER_UA

Factory = Callable[..., ConsentMiddleware]


def client(mw: Any, peer: str = "198.51.100.1", **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=mw, client=(peer, 5000)),
                             base_url="http://site.test", headers={"user-agent": BROWSER_UA, **headers})


@pytest.mark.parametrize("method, path", [("POST", "/_consent/choice"), ("DELETE", "/_consent/choice")])
async def test_choice_is_rate_limited_per_client(offline: Factory, method: str, path: str) -> None:
    mw = offline(choice_rate=0.5, choice_burst=3)
    async with client(mw) as c, client(mw, "198.51.100.2") as other:
        kwargs = {"json": {"all": False}} if method == "POST" else {}
        codes = [(await c.request(method, path, **kwargs)).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = await c.request(method, path, **kwargs)
        assert r.status_code == 429 and r.headers["retry-after"] == "2" and "too many requests" in r.json()["error"]
        assert (await other.request(method, path, **kwargs)).status_code == 200  # another client is not affected


@pytest.mark.parametrize("method, path", [("GET", "/_consent/me"), ("POST", "/_consent/me/block"),
                                          ("POST", "/_consent/me/unblock"), ("DELETE", "/_consent/me")])
async def test_rights_endpoints_are_rate_limited_per_client(offline: Factory, method: str, path: str) -> None:
    """Counted before the cookie is looked at: a flood of 401s costs as much as real requests."""
    mw = offline(rights_rate=0.1, rights_burst=2)
    async with client(mw) as c:
        codes = [(await c.request(method, path)).status_code for _ in range(4)]
        assert codes == [401, 401, 429, 429]
        assert (await c.request(method, path)).headers["retry-after"] == "10"


async def test_the_limit_follows_the_client_the_trusted_proxy_names(offline: Factory) -> None:
    """Behind a trusted proxy every visitor shares the proxy's address: the limit is per
    forwarded client, the rightmost untrusted hop (a spoofed leftmost entry changes nothing)."""
    mw = offline(trusted_proxies=["10.0.0.0/8"], choice_rate=0.01, choice_burst=2)
    async with client(mw, "10.0.0.1") as proxy:
        async def choose(*lines: str) -> int:
            headers = httpx.Headers([("x-forwarded-for", line) for line in lines])
            return (await proxy.post("/_consent/choice", json={"all": False}, headers=headers)).status_code
        assert [await choose("203.0.113.7") for _ in range(3)] == [200, 200, 429]
        assert await choose("203.0.113.8") == 200            # another visitor behind the same proxy
        assert await choose("1.1.1.1", "203.0.113.7") == 429  # a spoofed first line does not reset it
        assert await choose("1.1.1.1, 203.0.113.7") == 429


def test_erasures_run_one_at_a_time_through_a_bounded_queue() -> None:
    queue = ErasureQueue(2)
    running, most = [0], [0]
    release = threading.Event()
    lock = threading.Lock()

    def erase() -> str:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(10)
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return "done"

    first, second = queue.submit(erase), queue.submit(erase)
    with pytest.raises(QueueFull):
        queue.submit(erase)  # the third is refused at once, nothing queued
    release.set()
    assert first.result(10) == second.result(10) == "done"
    assert most[0] == 1 and queue.pending == 0
    assert queue.submit(lambda: "again").result(10) == "again"  # room again
    queue.stop()


async def test_a_flood_of_erasures_gets_503_with_retry_after(make_app: Factory) -> None:
    """More concurrent DELETE /me than the queue holds: the extra ones are refused at once."""
    mw = make_app(erase_queue=1, rights_burst=100)
    gate = threading.Event()
    rights = mw.api.rights  # type: ignore[attr-defined]
    real = rights.erase

    def slow_erase(*args: Any, **kwargs: Any) -> Any:
        gate.wait(10)
        return real(*args, **kwargs)

    rights.erase = slow_erase
    visitors = [client(mw, f"198.51.100.{i}") for i in range(3)]
    try:
        for c in visitors:
            assert (await c.post("/_consent/choice", json={"all": True})).status_code == 200
        tasks = [asyncio.create_task(c.delete("/_consent/me")) for c in visitors]
        # The queue holds one erasure, held at the gate: the other two must be answered while
        # it is held. Wait for that (not a fixed time: a busy machine may not even have sent
        # them yet); if they queue instead, the wait runs out and the codes below tell.
        deadline = time.monotonic() + 15
        while sum(t.done() for t in tasks) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        gate.set()
        answers = await asyncio.gather(*tasks)
    finally:
        for c in visitors:
            await c.aclose()
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 503, 503], [r.text for r in answers]
    busy = [r for r in answers if r.status_code == 503]
    assert all(r.headers["retry-after"] and "erasures are queued" in r.json()["error"] for r in busy)
