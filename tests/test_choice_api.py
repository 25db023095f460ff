"""The consent endpoints: GET /_consent/state, POST and DELETE /_consent/choice, and the ledger."""

from __future__ import annotations

import json
from typing import Any, Callable

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consentmw import ConsentMiddleware
from consentmw.core.policy import LANGUAGES
from tests._asgi import OFFLINE_DSN, _quiet_writers, offline, client, cookie_attrs, req, run  # noqa: F401

Factory = Callable[..., ConsentMiddleware]

STATE = "/_consent/state"
CHOICE = "/_consent/choice"
HALF_YEAR = 180 * 86400


def post(mw: ConsentMiddleware, body: Any, *, headers: dict[str, str] | None = None,
         base_url: str = "http://testserver", cookies: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        async with client(mw, base_url, cookies=cookies or {}) as c:
            if isinstance(body, (bytes, str)):
                return await c.post(CHOICE, content=body,
                                    headers={"content-type": "application/json", **(headers or {})})
            return await c.post(CHOICE, json=body, headers=headers or {})
    return run(go())


def the_cookie(r: httpx.Response) -> tuple[str, dict[str, str]]:
    headers = r.headers.get_list("set-cookie")
    assert len(headers) == 1, headers
    first, attrs = cookie_attrs(headers[0])
    name, _, value = first.partition("=")
    assert name in ("consentmw", "__Host-consentmw") and value
    return value, attrs


# -- GET /state --------------------------------------------------------------------------------
def test_state_without_cookie(offline: Factory) -> None:
    mw = offline()
    r = req(mw, "GET", STATE)
    assert r.status_code == 200 and r.headers["cache-control"] == "private, no-cache"  # revalidated by ETag
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) >= {"policy", "consent", "prompt"}
    assert body["consent"] is None and body["prompt"] is True and body["gpc"] is False
    pol = body["policy"]
    assert pol["version"] == mw.policy.version and pol["updated"] == "2026-11-21"
    assert [p["id"] for p in pol["purposes"]] == ["necessary", "statistics", "personalisation", "marketing"]
    for p in pol["purposes"]:
        assert set(p) >= {"id", "required", "categories", "retention_days", "texts"}
        assert set(p["texts"]) == set(LANGUAGES)
        assert isinstance(p["retention_days"], int) and isinstance(p["categories"], list)
    assert [p["required"] for p in pol["purposes"]] == [True, False, False, False]
    assert "set-cookie" not in r.headers


def test_state_with_lang_and_cookie(offline: Factory) -> None:
    mw = offline()
    value, issued = mw.codec.issue(["statistics"])
    r = req(mw, "GET", STATE + "?lang=kk", cookies={"consentmw": value})
    body = r.json()
    assert body["prompt"] is False
    c = body["consent"]
    assert c["id"] == issued.id and c["granted"] == ["necessary", "statistics"]
    assert c["source"] == "banner" and c["given_at"] == issued.given_at
    assert set(body["policy"]["purposes"][1]["texts"]) == {"kk"}  # complete: no English copy
    assert body["policy"]["purposes"][1]["texts"]["kk"]["title"] == "Статистика"
    # an unknown language gets every language
    assert set(req(mw, "GET", STATE + "?lang=xx").json()["policy"]["texts"]) == set(LANGUAGES)


def test_state_is_read_only_and_head_works(offline: Factory) -> None:
    mw = offline()
    assert req(mw, "HEAD", STATE).status_code == 200
    r = req(mw, "PUT", STATE)
    assert r.status_code == 405 and "GET" in r.headers["allow"]
    assert req(mw, "GET", "/_consent/nope").status_code == 404
    assert req(mw, "GET", "/_consent").status_code == 404
    assert req(mw, "GET", CHOICE).status_code == 405


def test_state_with_gpc_narrows(offline: Factory) -> None:
    mw = offline()
    value, _ = mw.codec.issue(["statistics", "personalisation", "marketing"])
    body = req(mw, "GET", STATE, cookies={"consentmw": value}, headers={"Sec-GPC": "1"}).json()
    assert body["gpc"] is True and body["consent"]["granted"] == ["necessary", "statistics"]


def test_state_with_bad_cookie_prompts(offline: Factory) -> None:
    r = req(offline(), "GET", STATE, cookies={"consentmw": "1~forged~x.y.z"})
    assert r.status_code == 200 and r.json()["prompt"] is True and r.json()["consent"] is None


def test_custom_prefix(offline: Factory) -> None:
    mw = offline(prefix="/privacy-api")
    assert req(mw, "GET", "/privacy-api/state").status_code == 200
    assert req(mw, "GET", STATE).status_code == 404  # now a site page, and the site has none


# -- POST /choice: happy paths and cookie attributes -----------------------------------------------
def test_choice_sets_cookie_with_attributes(offline: Factory) -> None:
    mw = offline()
    r = post(mw, {"granted": ["statistics"]})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    value, attrs = the_cookie(r)
    assert attrs["samesite"].lower() == "lax"
    assert attrs["path"] == "/"
    assert attrs["max-age"] == str(HALF_YEAR)
    assert "secure" not in attrs and "domain" not in attrs
    assert "httponly" not in attrs  # the banner reads the (non-secret) payload
    assert len(r.headers["set-cookie"]) < 300
    state = mw.codec.decode(value)
    assert state is not None and state.granted == {"necessary", "statistics"}
    body = r.json()
    assert body["consent"]["granted"] == ["necessary", "statistics"] and body["prompt"] is False


def test_cookie_secure_on_https_and_domain_and_max_age(offline: Factory) -> None:
    mw = offline(cookie_domain=".example.com", cookie_max_age=3600)
    r = post(mw, {"all": False}, base_url="https://www.example.com",
             headers={"origin": "https://www.example.com"})
    assert r.status_code == 200, r.text
    _, attrs = the_cookie(r)
    assert "secure" in attrs
    assert attrs["domain"].lstrip(".") == "example.com"
    assert attrs["max-age"] == "3600"
    assert attrs["samesite"].lower() == "lax" and attrs["path"] == "/"
    # X-Forwarded-Proto counts only from a trusted proxy (the ASGI test client's peer is 127.0.0.1)
    _, attrs = the_cookie(post(mw, {"all": False}, headers={"x-forwarded-proto": "https"}))
    assert "secure" not in attrs
    behind = offline(cookie_domain=".example.com", trusted_proxies=["127.0.0.1"])
    _, attrs = the_cookie(post(behind, {"all": False}, headers={"x-forwarded-proto": "https"}))
    assert "secure" in attrs
    behind = offline(cookie_domain=".example.com", trusted_proxies=["10.0.0.0/8"])
    _, attrs = the_cookie(post(behind, {"all": False}, headers={"x-forwarded-proto": "https"}))
    assert "secure" not in attrs


def test_cookie_secure_setting_overrides(offline: Factory) -> None:
    r = post(offline(cookie_secure=True), {"all": False})
    _, attrs = the_cookie(r)
    assert "secure" in attrs and r.headers["set-cookie"].startswith("__Host-consentmw=")
    _, attrs = the_cookie(post(offline(cookie_secure=False), {"all": False},
                               base_url="https://testserver", headers={"origin": "https://testserver"}))
    assert "secure" not in attrs


def test_cookie_from_choice_is_honoured_on_next_page(offline: Factory) -> None:
    mw = offline()

    async def scenario() -> str:
        async with client(mw) as c:
            assert (await c.post(CHOICE, json={"granted": ["statistics"]})).status_code == 200
            return (await c.get("/")).text

    assert "stats=True granted=necessary,statistics<" in run(scenario())


def test_required_purposes_cannot_be_refused(offline: Factory) -> None:
    mw = offline()
    for body in ({"granted": []}, {"all": False}, {"granted": ["marketing"]}):
        r = post(mw, body)
        assert r.status_code == 200
        assert "necessary" in r.json()["consent"]["granted"]
        state = mw.codec.decode(the_cookie(r)[0])
        assert state is not None and state.allows("necessary")


def test_all_true_and_false(offline: Factory) -> None:
    mw = offline()
    assert post(mw, {"all": True}).json()["consent"]["granted"] == [
        "marketing", "necessary", "personalisation", "statistics"]
    assert post(mw, {"all": False}).json()["consent"]["granted"] == ["necessary"]


def test_all_true_under_gpc_excludes_gpc_purposes(offline: Factory) -> None:
    mw = offline()
    r = post(mw, {"all": True}, headers={"Sec-GPC": "1"})
    assert r.status_code == 200
    c = r.json()["consent"]
    assert c["granted"] == ["necessary", "statistics"] and c["source"] == "gpc" and c["gpc"] is True
    state = mw.codec.decode(the_cookie(r)[0])
    assert state is not None and state.visitor_id is None and not state.allows("marketing")


def test_explicit_grant_under_gpc_is_kept(offline: Factory) -> None:
    mw = offline()
    r = post(mw, {"granted": ["personalisation", "marketing"]}, headers={"Sec-GPC": "1"})
    assert r.json()["consent"]["granted"] == ["marketing", "necessary", "personalisation"]
    value, _ = the_cookie(r)
    page = req(mw, "GET", "/", cookies={"consentmw": value}, headers={"Sec-GPC": "1"})
    assert "granted=marketing,necessary,personalisation<" in page.text
    state = req(mw, "GET", STATE, cookies={"consentmw": value}, headers={"Sec-GPC": "1"}).json()
    assert state["consent"]["granted"] == ["marketing", "necessary", "personalisation"]


def test_visitor_id_only_with_personalisation_and_stable_across_changes(offline: Factory) -> None:
    mw = offline()
    v1, _ = the_cookie(post(mw, {"granted": ["statistics"]}))
    s1 = mw.codec.decode(v1)
    assert s1 is not None and s1.visitor_id is None
    v2, _ = the_cookie(post(mw, {"granted": ["personalisation"]}, cookies={"consentmw": v1}))
    s2 = mw.codec.decode(v2)
    assert s2 is not None and s2.visitor_id and s2.id == s1.id  # same consent id across a change
    v3, _ = the_cookie(post(mw, {"all": True}, cookies={"consentmw": v2}))
    s3 = mw.codec.decode(v3)
    assert s3 is not None and s3.visitor_id == s2.visitor_id and s3.id == s1.id
    v4, _ = the_cookie(post(mw, {"granted": ["statistics"]}, cookies={"consentmw": v3}))
    s4 = mw.codec.decode(v4)
    assert s4 is not None and s4.visitor_id is None


def test_delete_withdraws_everything_optional(offline: Factory) -> None:
    mw = offline()
    v1, _ = the_cookie(post(mw, {"all": True}))

    async def delete() -> httpx.Response:
        async with client(mw, cookies={"consentmw": v1}) as c:
            return await c.delete(CHOICE)

    r = run(delete())
    assert r.status_code == 200
    assert r.json()["consent"]["granted"] == ["necessary"]
    value, attrs = the_cookie(r)
    state = mw.codec.decode(value)
    assert state is not None and state.granted == {"necessary"} and state.visitor_id is None
    assert attrs["max-age"] == str(HALF_YEAR)


# -- POST /choice: refusals ----------------------------------------------------------------------
@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data", "application/jsonp"])
def test_json_only(offline: Factory, ctype: str | None) -> None:
    mw = offline()

    async def go() -> httpx.Response:
        async with client(mw) as c:
            headers = {"content-type": ctype} if ctype else {}
            return await c.post(CHOICE, content=b'{"all": true}', headers=headers)

    r = run(go())
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    assert "set-cookie" not in r.headers


def test_json_with_charset_accepted(offline: Factory) -> None:
    r = post(offline(), b'{"all": false}', headers={"content-type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 200


def test_body_over_8kb_is_413(offline: Factory) -> None:
    mw = offline()
    big = json.dumps({"granted": ["statistics"], "page": "x" * 9000}).encode()
    r = post(mw, big)
    assert r.status_code == 413 and "set-cookie" not in r.headers
    ok = json.dumps({"granted": ["statistics"], "page": "x" * 8000}).encode()
    assert len(ok) <= 8192 and post(mw, ok).status_code == 200


def test_streamed_body_over_8kb_is_413_without_content_length(offline: Factory) -> None:
    mw = offline()

    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"page": "'
        for _ in range(20):
            yield b"x" * 1000
        yield b'"}'

    async def go() -> httpx.Response:
        async with client(mw) as c:
            return await c.post(CHOICE, content=chunks(), headers={"content-type": "application/json"})

    r = run(go())
    assert r.status_code == 413


@pytest.mark.parametrize("body, reason", [
    (b"", "empty"),
    (b"{", "invalid JSON"),
    (b"{'all': true}", "invalid JSON"),
    (b'{"all": NaN}', "invalid JSON"),
    (b"\xff\xfe{}", "invalid JSON"),
    (b"[" * 50 + b"]" * 50, "nested"),
    (b'["statistics"]', "JSON object"),
    (b"null", "JSON object"),
    (b"{}", "expected 'granted'"),
    (b'{"all": "yes"}', "'all' must be"),
    (b'{"all": 1}', "'all' must be"),
    (b'{"all": true, "granted": []}', "not both"),
    (b'{"granted": "statistics"}', "list"),
    (b'{"granted": [1]}', "list"),
    (b'{"granted": ["statistics"], "page": 5}', "'page'"),
])
def test_bad_bodies_are_400(offline: Factory, body: bytes, reason: str) -> None:
    r = post(offline(), body)
    assert r.status_code == 400
    assert reason in r.json()["error"]
    assert "set-cookie" not in r.headers


def test_unknown_purpose_is_400_with_reason(offline: Factory) -> None:
    r = post(offline(), {"granted": ["statistics", "advertising"]})
    assert r.status_code == 400
    assert r.json()["error"] == "unknown purpose 'advertising'"


def test_unknown_key_is_400(offline: Factory) -> None:
    r = post(offline(), {"granted": ["statistics"], "tracking": True})
    assert r.status_code == 400 and "tracking" in r.json()["error"]


@pytest.mark.parametrize("headers", [
    {"origin": "https://evil.example"},
    {"origin": "http://testserver.evil.example"},
    {"origin": "null"},
    {"origin": "https://testserver"},              # scheme differs
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "cross-site", "origin": "http://testserver"},
    {"sec-fetch-site": "same-site", "origin": "http://shop.testserver"},
])
def test_cross_origin_is_403(offline: Factory, headers: dict[str, str]) -> None:
    mw = offline()
    r = post(mw, {"all": True}, headers=headers)
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]
    assert "set-cookie" not in r.headers

    async def delete() -> httpx.Response:
        async with client(mw) as c:
            return await c.delete(CHOICE, headers=headers)

    assert run(delete()).status_code == 403


@pytest.mark.parametrize("headers", [
    {},
    {"origin": "http://testserver"},
    {"sec-fetch-site": "same-origin", "origin": "http://testserver"},
    {"sec-fetch-site": "none"},
])
def test_same_origin_is_allowed(offline: Factory, headers: dict[str, str]) -> None:
    assert post(offline(), {"all": False}, headers=headers).status_code == 200


def test_allowed_origins_for_sibling_sites(offline: Factory) -> None:
    mw = offline(allowed_origins=["https://shop.example.com"])
    h = {"sec-fetch-site": "same-site", "origin": "https://shop.example.com"}
    assert post(mw, {"all": False}, headers=h).status_code == 200
    h = {"sec-fetch-site": "same-site", "origin": "https://other.example.com"}
    assert post(mw, {"all": False}, headers=h).status_code == 403


def test_refusals_write_no_ledger(offline: Factory) -> None:
    mw = offline()
    post(mw, {"granted": ["bogus"]})
    post(mw, {"all": True}, headers={"origin": "https://evil.example"})
    post(mw, b"{")
    assert len(mw.collector.writer.queue) == 0


# -- the ledger in ClickHouse ------------------------------------------------------------------------
def ledger(ch: Any, database: str) -> list[dict[str, Any]]:
    result = ch.query(f"SELECT action, consent_id, policy_version, granted, denied, source, gpc, language, "
                      f"texts_hash, page, site, IPv6NumToString(ip) AS ip, user_agent, visitor_id "
                      f"FROM {database}.consent_log ORDER BY ts, action")
    return [dict(zip(result.column_names, row)) for row in result.result_rows]


def test_ledger_grant_change_withdraw(make_app: Factory, ch: Any, database: str) -> None:
    mw = make_app()

    async def scenario() -> None:
        async with client(mw, headers={"x-forwarded-for": "203.0.113.77"}) as c:
            r = await c.post(CHOICE, json={"granted": ["statistics"], "lang": "ru", "page": "/start"})
            assert r.status_code == 200
            r = await c.post(CHOICE, json={"all": True}, headers={"sec-gpc": "1"})
            assert r.status_code == 200
            r = await c.request("DELETE", CHOICE + "?lang=kk", headers={"referer": "http://testserver/p"})
            assert r.status_code == 200

    run(scenario())
    mw.collector.flush()
    rows = ledger(ch, database)
    by_action = {r["action"]: r for r in rows}
    assert len(rows) == 3 and set(by_action) == {"grant", "change", "withdraw"}
    assert len({r["consent_id"] for r in rows}) == 1 and rows[0]["consent_id"]
    grant, change, withdraw = by_action["grant"], by_action["change"], by_action["withdraw"]
    assert grant["granted"] == ["necessary", "statistics"]
    assert sorted(grant["denied"]) == ["marketing", "personalisation"]
    assert grant["source"] == "banner" and grant["gpc"] is False
    assert grant["language"] == "ru" and grant["texts_hash"] == mw.policy.texts_hash("ru")
    assert grant["page"] == "/start" and grant["site"] == "testserver"
    assert grant["policy_version"] == mw.policy.version
    assert "77" not in grant["ip"]  # the ledger never holds a full IP
    assert "Mozilla" in grant["user_agent"]
    assert change["granted"] == ["necessary", "statistics"] and change["source"] == "gpc" and change["gpc"]
    assert withdraw["granted"] == ["necessary"]
    assert sorted(withdraw["denied"]) == ["marketing", "personalisation", "statistics"]
    assert withdraw["language"] == "kk" and withdraw["page"] == "http://testserver/p"


def test_ledger_records_visitor_id_when_personalisation_granted(make_app: Factory, ch: Any,
                                                                database: str) -> None:
    mw = make_app()
    value, _ = the_cookie(post(mw, {"granted": ["personalisation"]}))
    state = mw.codec.decode(value)
    assert state is not None and state.visitor_id
    mw.collector.flush()
    rows = ledger(ch, database)
    assert len(rows) == 1 and rows[0]["visitor_id"] == state.visitor_id
    assert rows[0]["consent_id"] == state.id


def test_new_browser_each_grant(make_app: Factory, ch: Any, database: str) -> None:
    mw = make_app()
    for _ in range(3):
        post(mw, {"all": False})
    mw.collector.flush()
    rows = ledger(ch, database)
    assert [r["action"] for r in rows] == ["grant"] * 3
    assert len({r["consent_id"] for r in rows}) == 3


# -- properties: nothing a client sends gives a 5xx -------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
purpose_ids = st.sampled_from(["necessary", "statistics", "personalisation", "marketing", "x", "", "NECESSARY"])
choice_like = st.fixed_dictionaries({}, optional={
    "granted": st.one_of(st.lists(purpose_ids, max_size=6), json_values),
    "all": st.one_of(st.booleans(), json_values),
    "lang": st.one_of(st.sampled_from(["en", "ru", "kk", "de"]), json_values),
    "page": st.one_of(st.text(max_size=50), json_values),
    "extra": json_values,
})
bodies = st.one_of(
    choice_like.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
header_sets = st.fixed_dictionaries({}, optional={
    "content-type": st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1", ""]),
    "sec-gpc": st.sampled_from(["1", "0", ""]),
    "origin": st.sampled_from(["http://testserver", "https://evil.example", "null"]),
    "sec-fetch-site": st.sampled_from(["same-origin", "cross-site", "same-site", "none", "bogus"]),
    "content-length": st.sampled_from(["abc", "-1", "99999"]),
})


@pytest.fixture
def fuzz_app(offline: Factory) -> ConsentMiddleware:
    return offline(choice_burst=10**6)  # hundreds of examples from one client: the rate limit is tested apart


async def asgi_call(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]],
                    body: bytes) -> int:
    sent: list[dict[str, Any]] = []
    chunks = [body[:len(body) // 2], body[len(body) // 2:]]

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "scheme": "http", "server": ("testserver", 80), "client": ("198.51.100.7", 5000),
             "headers": [(b"host", b"testserver"), *headers], "asgi": {"version": "3.0"},
             "http_version": "1.1", "root_path": ""}
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    return int(sent[0]["status"])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, headers=header_sets, method=st.sampled_from(["POST", "POST", "POST", "DELETE", "PUT"]))
def test_property_random_bodies_never_5xx(fuzz_app: ConsentMiddleware, body: bytes, headers: dict[str, str],
                                          method: str) -> None:
    raw_headers = [(k.encode(), v.encode("latin-1")) for k, v in headers.items()]
    status = run(asgi_call(fuzz_app, method, CHOICE, raw_headers, body))
    assert status < 500
    assert status in (200, 400, 403, 405, 413, 415)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=choice_like)
def test_property_json_choices_through_httpx(fuzz_app: ConsentMiddleware, body: dict[str, Any]) -> None:
    r = post(fuzz_app, body)
    assert r.status_code in (200, 400)
    if r.status_code == 200:
        granted = set(r.json()["consent"]["granted"])
        assert "necessary" in granted
        if isinstance(body.get("granted"), list) and "all" not in body:
            assert granted == set(body["granted"]) | {"necessary"}
    else:
        assert r.json()["error"]
