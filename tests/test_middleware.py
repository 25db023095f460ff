"""ConsentMiddleware mounted in real ASGI apps: Starlette, FastAPI, Django, a raw callable; lifespan."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

import consentmw
from consentmw import ConsentMiddleware, ConsentState, consent_of
from tests.conftest import SECRET, site_app
from tests._asgi import OFFLINE_DSN, _quiet_writers, offline, client, drive_lifespan, req, request, run, wait_stopped  # noqa: F401

Factory = Callable[..., ConsentMiddleware]



def cookie_for(mw: ConsentMiddleware, granted: list[str], **kw: Any) -> dict[str, str]:
    value, _ = mw.codec.issue(granted, **kw)
    return {"consentmw": value}


def count(ch: Any, database: str, table: str, where: str = "1") -> int:
    return int(ch.query(f"SELECT count() FROM {database}.{table} WHERE {where}").result_rows[0][0])


# -- Starlette: request.state.consent ------------------------------------------------------
def test_starlette_no_cookie_gets_default_state(offline: Factory) -> None:
    r = req(offline(), "GET", "/")
    assert r.status_code == 200
    assert "stats=False granted=necessary<" in r.text
    assert "set-cookie" not in r.headers  # no cookie without a choice


def test_starlette_valid_cookie_reaches_handler(offline: Factory) -> None:
    mw = offline()
    r = req(mw, "GET", "/articles/x", cookies=cookie_for(mw, ["statistics", "marketing"]))
    assert "stats=True granted=marketing,necessary,statistics<" in r.text


def test_cookie_among_other_cookies_and_split_headers(offline: Factory) -> None:
    mw = offline()
    value = cookie_for(mw, ["statistics"])["consentmw"]

    async def raw() -> tuple[int, bytes]:
        out: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(m: dict[str, Any]) -> None:
            out.append(m)

        scope = {"type": "http", "method": "GET", "path": "/", "raw_path": b"/", "query_string": b"",
                 "scheme": "http", "server": ("testserver", 80), "client": ("127.0.0.1", 1),
                 "headers": [(b"host", b"testserver"), (b"cookie", b"a=1; xconsentmw=junk"),
                             (b"cookie", b"b=2; consentmw=" + value.encode() + b"; c=3")],
                 "asgi": {"version": "3.0"}, "http_version": "1.1", "root_path": ""}
        await mw(scope, receive, send)
        return out[0]["status"], b"".join(m.get("body", b"") for m in out[1:])

    status, body = run(raw())
    assert status == 200 and b"stats=True" in body


def test_tampered_cookie_is_no_consent_not_an_error(offline: Factory) -> None:
    mw = offline()
    value = cookie_for(mw, ["statistics"])["consentmw"]
    for bad in (value[:-2] + "xx", value.replace("statistics", "marketing"), "nonsense", "a" * 4000):
        r = req(mw, "GET", "/", cookies={"consentmw": bad})
        assert r.status_code == 200 and "stats=False granted=necessary<" in r.text


def test_a_remembered_cookie_header_stops_counting_when_the_cookie_expires(offline: Factory) -> None:
    """The middleware remembers what a Cookie header decodes to, but only until it expires."""
    import time

    mw = offline(cookie_max_age=2)
    value, state = mw.codec.issue(["statistics"])
    r = req(mw, "GET", "/", cookies={"consentmw": value})
    assert "stats=True" in r.text
    time.sleep(max(0.0, (state.expires_at or 0) - time.time()) + 1.1)
    r = req(mw, "GET", "/", cookies={"consentmw": value})
    assert "stats=False granted=necessary<" in r.text


def test_gpc_header_narrows_state_for_the_app(offline: Factory) -> None:
    mw = offline()
    all_cookie = cookie_for(mw, ["statistics", "personalisation", "marketing"])
    r = req(mw, "GET", "/", cookies=all_cookie, headers={"Sec-GPC": "1"})
    assert "granted=necessary,statistics<" in r.text
    r = req(mw, "GET", "/", cookies=all_cookie)
    assert "granted=marketing,necessary,personalisation,statistics<" in r.text
    # a choice made under GPC keeps its explicit grants
    r = req(mw, "GET", "/", cookies=cookie_for(mw, ["personalisation"], gpc=True), headers={"Sec-GPC": "1"})
    assert "granted=necessary,personalisation<" in r.text


def test_other_middleware_sees_state_after_consent(offline: Factory) -> None:
    seen: list[ConsentState | None] = []

    class Peek(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: Any) -> Any:
            seen.append(getattr(request.state, "consent", None))
            return await call_next(request)

    inner = site_app()
    inner.add_middleware(Peek)
    mw = offline(inner)
    req(mw, "GET", "/", cookies=cookie_for(mw, ["statistics"]))
    assert seen and seen[0] is not None and seen[0].allows("statistics")


def test_consent_of_helper() -> None:
    state = ConsentState(id="x", granted=frozenset({"necessary"}), policy_version="v")
    assert consent_of({"state": {"consent": state}}) is state
    assert consent_of({"type": "http"}) is None
    assert consent_of(object()) is None

    class Req:
        scope = {"state": {"consent": state}}
    assert consent_of(Req()) is state


def test_unknown_settings_refused(offline: Factory) -> None:
    with pytest.raises(TypeError, match="bogus"):  # explicit keyword parameters: Python names it
        offline(bogus=1)
    with pytest.raises(consentmw.SettingsError, match="secret_key"):
        offline(secret_key="short")


# -- FastAPI --------------------------------------------------------------------------------
def _find_mw(app: Any) -> ConsentMiddleware:
    node = app.middleware_stack
    while node is not None and not isinstance(node, ConsentMiddleware):
        node = getattr(node, "app", None)
    assert isinstance(node, ConsentMiddleware)
    return node


def test_fastapi_add_middleware(chdb_dsn: str, database: str, tmp_path: Any, ch: Any) -> None:
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/")
    async def home(request: Request) -> dict[str, Any]:
        c = request.state.consent
        return {"stats": c.allows("statistics"), "granted": sorted(c.granted)}

    @api.get("/page", response_class=HTMLResponse)
    async def page(request: Request) -> str:
        return f"<p>{request.state.consent.allows('statistics')}</p>"

    api.add_middleware(ConsentMiddleware, secret_key=SECRET, clickhouse_dsn=chdb_dsn, database=database,
                       spool_dir=str(tmp_path / "spool"), flush_interval=0.1)

    async def scenario() -> None:
        async with client(api) as c:
            assert (await c.get("/")).json() == {"stats": False, "granted": ["necessary"]}
            r = await c.post("/_consent/choice", json={"granted": ["statistics"]})
            assert r.status_code == 200 and "consentmw" in r.cookies
            assert (await c.get("/")).json() == {"stats": True, "granted": ["necessary", "statistics"]}
            assert (await c.get("/page")).text == "<p>True</p>"

    run(scenario())
    mw = _find_mw(api)
    try:
        mw.collector.flush()
        assert count(ch, database, "events_statistics", "path = '/page'") == 1
        assert count(ch, database, "events_statistics", "path = '/'") == 0  # JSON answers are not page views
        assert count(ch, database, "consent_log") == 1
    finally:
        mw.collector.stop()


# -- Django ---------------------------------------------------------------------------------
def _django_view(request: Any) -> Any:
    from django.http import HttpResponse, JsonResponse

    state = consent_of(request)
    if request.path == "/json":
        return JsonResponse({"granted": sorted(state.granted) if state else None})
    return HttpResponse(f"<p>stats={state.allows('statistics') if state else None}</p>")


def _urlpatterns() -> list[Any]:
    from django.urls import path
    return [path("", _django_view), path("json", _django_view), path("page", _django_view)]


urlpatterns: list[Any] = []


@pytest.fixture(scope="module")
def django_app() -> Any:
    import django
    from django.conf import settings

    global urlpatterns
    urlpatterns = _urlpatterns()
    if not settings.configured:
        settings.configure(DEBUG=False, SECRET_KEY="django-test-" + "x" * 40, ROOT_URLCONF=__name__,
                           ALLOWED_HOSTS=["*"], INSTALLED_APPS=[], MIDDLEWARE=[], USE_TZ=True)
        django.setup()
    from django.core.asgi import get_asgi_application
    from django.test.utils import override_settings

    with override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"]):
        yield get_asgi_application()


def test_django_asgi_app(make_app: Factory, django_app: Any, ch: Any, database: str) -> None:
    mw = make_app(django_app)

    async def scenario() -> None:
        async with client(mw) as c:
            r = await c.get("/json")
            assert r.status_code == 200 and r.json() == {"granted": ["necessary"]}
            assert (await c.get("/page")).text == "<p>stats=False</p>"
            r = await c.post("/_consent/choice", json={"all": True})
            assert r.status_code == 200
            assert (await c.get("/json")).json() == {
                "granted": ["marketing", "necessary", "personalisation", "statistics"]}
            assert (await c.get("/page")).text == "<p>stats=True</p>"

    run(scenario())
    mw.collector.flush()
    assert count(ch, database, "events_statistics", "path = '/page'") == 1
    assert count(ch, database, "events_personalisation", "path = '/page'") == 1


def test_django_lifespan_completed_by_middleware(offline: Factory, django_app: Any) -> None:
    mw = offline(django_app)
    assert_lifespan_completed_for_the_app(mw)


# -- a raw ASGI callable ------------------------------------------------------------------------
async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        raise RuntimeError("this app does not do lifespan")
    state = scope["state"]["consent"]
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": ",".join(sorted(state.granted))})
        await send({"type": "websocket.close"})
        return
    body = f"<b>{','.join(sorted(state.granted))}</b>".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/html; charset=utf-8")]})
    await send({"type": "http.response.body", "body": body[:3], "more_body": True})
    await send({"type": "http.response.body", "body": body[3:]})


def test_raw_asgi_app_http(make_app: Factory, ch: Any, database: str) -> None:
    mw = make_app(raw_app)
    assert req(mw, "GET", "/x").text == "<b>necessary</b>"
    r = req(mw, "GET", "/x?utm_source=news&secret=1", cookies=cookie_for(mw, ["statistics"]))
    assert r.text == "<b>necessary,statistics</b>"
    mw.collector.flush()
    assert count(ch, database, "events_statistics", "path = '/x'") == 1  # one hit for a chunked body


def test_raw_asgi_app_websocket_gets_state(offline: Factory) -> None:
    mw = offline(raw_app)
    value = cookie_for(mw, ["statistics"])["consentmw"]
    out: list[dict[str, Any]] = []

    async def scenario() -> None:
        msgs = [{"type": "websocket.connect"}]

        async def receive() -> dict[str, Any]:
            return msgs.pop(0) if msgs else {"type": "websocket.disconnect"}

        async def send(m: dict[str, Any]) -> None:
            out.append(m)

        scope = {"type": "websocket", "path": "/ws", "headers": [(b"cookie", f"consentmw={value}".encode())],
                 "query_string": b"", "scheme": "ws", "asgi": {"version": "3.0"}}
        await mw(scope, receive, send)

    run(scenario())
    assert out[1] == {"type": "websocket.send", "text": "necessary,statistics"}


def test_unknown_scope_type_passes_through(offline: Factory) -> None:
    got: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append(scope)

    run(offline(app)({"type": "custom.thing"}, None, None))
    assert got == [{"type": "custom.thing"}]


# -- collection on the page path ----------------------------------------------------------------
def test_collects_only_html_pages_with_consent(make_app: Factory, ch: Any, database: str) -> None:
    mw = make_app()
    stats = cookie_for(mw, ["statistics"])

    async def scenario() -> None:
        async with client(mw) as c:
            await c.get("/articles/no-consent")
            c.cookies.update(stats)
            await c.get("/articles/yes")
            await c.get("/api/data")          # JSON
            await c.get("/plain")             # text/plain
            await c.get("/static/app.css")    # excluded prefix
            await c.post("/articles/yes")     # not GET/HEAD (405 from Starlette, not captured)
            await c.get("/articles/bot", headers={"user-agent": "curl/8.0"})

    run(scenario())
    mw.collector.flush()
    rows = ch.query(f"SELECT path, consent_id, policy_version FROM {database}.events_statistics").result_rows
    assert [r[0] for r in rows] == ["/articles/yes"]
    assert rows[0][1] and rows[0][2] == mw.policy.version  # each row carries its lawful basis
    assert count(ch, database, "events_personalisation") == 0  # not granted


def streamed_page(chunks: int, pause: float, fail_after: int | None = None) -> Any:
    """A raw ASGI app sending an HTML page in `chunks` parts, `pause` seconds apart, and
    raising after `fail_after` parts when that is set."""
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")]})
        for i in range(chunks):
            if fail_after is not None and i == fail_after:
                raise RuntimeError("the app failed")
            await asyncio.sleep(pause)
            await send({"type": "http.response.body", "body": b"<p>part</p>", "more_body": i < chunks - 1})
        if fail_after == chunks:
            raise RuntimeError("the app failed after the page went out")
    return app


@pytest.mark.parametrize("fail_after, captured", [(None, True), (1, False), (3, True)])
def test_a_page_is_captured_once_its_last_byte_went_out(offline: Factory, fail_after: int | None,
                                                        captured: bool) -> None:
    """One hit per streamed page, timed to its last body byte; none when the page never
    finished; kept when the app fails only after the whole page was sent."""
    mw = offline(streamed_page(3, 0.05, fail_after))
    hits: list[Any] = []
    mw.collector.submit = hits.append  # type: ignore[method-assign]
    try:
        req(mw, "GET", "/streamed?utm_source=news&secret=1", cookies=cookie_for(mw, ["statistics"]))
    except RuntimeError:
        assert fail_after is not None
    assert len(hits) == (1 if captured else 0)
    if captured:
        hit = hits[0]
        assert hit.path == "/streamed" and hit.status == 200 and hit.campaign == {"utm_source": "news"}
        assert 150 <= hit.duration_ms < 2000  # three 50 ms pauses before the last byte


def test_collect_false_captures_nothing(offline: Factory) -> None:
    mw = offline(collect=False)
    r = req(mw, "GET", "/", cookies=cookie_for(mw, ["statistics"]))
    assert "stats=True" in r.text
    mw.collector.flush()
    assert mw.collector.stats.accepted == 0


# -- lifespan ------------------------------------------------------------------------------------
def test_lifespan_starlette_app_with_its_own_lifespan(offline: Factory) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        events.append("app-startup")
        yield
        events.append("app-shutdown")

    inner = Starlette(routes=[Route("/", lambda r: HTMLResponse("hi"))], lifespan=lifespan)
    mw = offline(inner)
    assert not mw.collector.writer.running
    running: list[bool] = []

    async def between() -> None:
        running.append(mw.collector.writer.running)

    sent, seen = run(drive_lifespan(mw, between))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == ["app-startup", "app-shutdown"]
    assert running == [True]
    assert wait_stopped(mw.collector.writer) and "error" not in seen


@pytest.mark.parametrize("kind", ["raises", "returns", "receives-then-raises"])
def test_lifespan_app_without_lifespan(offline: Factory, kind: str) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if kind == "raises":
            raise ValueError("no lifespan here")
        if kind == "receives-then-raises":
            await receive()
            raise ValueError("no lifespan here")

    mw = offline(app)
    assert_lifespan_completed_for_the_app(mw)


def test_lifespan_startup_failure_is_passed_on(offline: Factory) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "db down"})

    mw = offline(app)
    sent, seen = run(drive_lifespan(mw))
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "error" not in seen


def test_lifespan_error_after_answering_propagates(offline: Factory) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        raise RuntimeError("boom in shutdown")

    mw = offline(app)
    sent, seen = run(drive_lifespan(mw))
    assert isinstance(seen.get("error"), RuntimeError)
    assert wait_stopped(mw.collector.writer)  # the drain ran before the app failed


def test_shutdown_drains_queued_hits_and_ledger(make_app: Factory, ch: Any, database: str) -> None:
    # A long flush interval: only the shutdown drain can write these rows.
    mw = make_app(flush_interval=60.0, shutdown_timeout=60.0)

    async def between() -> None:
        # Started by lifespan: wait (polling) until the writer has connected and migrated.
        for _ in range(3000):
            if mw.collector.stats.sink_healthy and mw.collector.stats.last_error == "":
                break
            await asyncio.sleep(0.01)
        assert mw.collector.stats.sink_healthy
        async with client(mw) as c:
            r = await c.post("/_consent/choice", json={"granted": ["statistics"]})
            assert r.status_code == 200
            for i in range(5):
                assert (await c.get(f"/articles/{i}")).status_code == 200
        assert len(mw.collector.writer.queue) == 6  # 1 ledger record + 5 hits, none written yet

    sent, seen = run(drive_lifespan(mw, between))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert len(mw.collector.writer.queue) == 0
    assert mw.collector.stats.dropped == 0 and mw.collector.stats.spooled == 0
    assert count(ch, database, "events_statistics") == 5, str(mw.collector.health())
    assert count(ch, database, "consent_log") == 1


def test_first_request_starts_collector_without_lifespan(offline: Factory) -> None:
    mw = offline()
    req(mw, "GET", "/")  # no consent: nothing to collect, the writer stays off
    assert not mw.collector.writer.running
    req(mw, "GET", "/", cookies=cookie_for(mw, ["statistics"]))
    assert mw.collector.writer.running


def test_a_start_on_the_request_path_leaves_the_slow_pyarrow_warm_up_to_the_writer(
        offline: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow's first conversion imports pandas (1 s on an idle machine, 4 s seen on a busy
    one): the first request of a server without lifespan must not run it on the event loop.
    A lifespan (or explicit) start still runs it before it returns, before serving."""
    import threading
    import time

    from consentmw.store import writer as writer_module

    ran_in: list[str] = []
    monkeypatch.setattr(writer_module, "warm_up_pyarrow", lambda: ran_in.append(threading.current_thread().name))
    mw = offline()
    req(mw, "GET", "/", cookies=cookie_for(mw, ["statistics"]))
    assert mw.collector.writer.running
    deadline = time.monotonic() + 10
    while not ran_in and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran_in == ["consentmw-writer"]
    mw.collector.stop()
    ran_in.clear()
    mw.collector.start()
    assert ran_in == [threading.current_thread().name]
    mw.collector.stop()


def test_concurrent_requests_each_see_their_own_state(offline: Factory) -> None:
    mw = offline()
    cookies = [cookie_for(mw, g) for g in (["statistics"], [], ["marketing"], ["statistics", "marketing"])]

    async def scenario() -> list[str]:
        async def one(i: int) -> str:
            r = await request(mw, "GET", "/", cookies=cookies[i % 4])
            return r.text

        return await asyncio.gather(*(one(i) for i in range(40)))

    texts = run(scenario())
    expected = ["granted=necessary,statistics<", "granted=necessary<", "granted=marketing,necessary<",
                "granted=marketing,necessary,statistics<"]
    for i, text in enumerate(texts):
        assert expected[i % 4] in text


def assert_lifespan_completed_for_the_app(mw: ConsentMiddleware) -> None:
    """The server gets both answers, the collector runs in between and stops after."""
    running: list[bool] = []

    async def between() -> None:
        running.append(mw.collector.writer.running)

    sent, seen = run(drive_lifespan(mw, between))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert running == [True] and wait_stopped(mw.collector.writer)
    assert "error" not in seen
