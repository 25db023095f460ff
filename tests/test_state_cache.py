"""`GET /_consent/state`: gzip when asked, ETag revalidation, and never another visitor's answer."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import pytest

from consentmw.core.consent import COOKIE_NAME, ConsentCodec
from consentmw.core.policy import Policy
from consentmw.core.settings import Settings
from consentmw.web import assets
from consentmw.web.api import ConsentAPI
from consentmw.web.http import accepts_gzip


class NullCollector:
    def submit(self, hit: Any) -> bool:
        return True

    def submit_many(self, hits: Any) -> int:
        return len(hits)

    def record(self, record: Any) -> None:
        pass


@pytest.fixture
def api() -> ConsentAPI:
    settings = Settings.build({"secret_key": "state-test-secret-0123456789"})
    api = ConsentAPI(settings, ConsentCodec(settings.secret_key, settings.policy), NullCollector())
    assets.register(api)
    return api


def client(api: ConsentAPI, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://site.test", headers=headers)


async def raw_get(c: httpx.AsyncClient, path: str, **headers: str) -> tuple[httpx.Response, bytes]:
    """The response and its body exactly as sent (not decoded)."""
    async with c.stream("GET", path, headers=headers) as r:
        body = b"".join([chunk async for chunk in r.aiter_raw()])
    return r, body


async def test_state_is_gzipped_when_asked_and_plain_otherwise(api: ConsentAPI) -> None:
    async with client(api) as c:
        for lang in ("en", "ru", "kk", None):
            path = "/_consent/state" + (f"?lang={lang}" if lang else "")
            gz, packed = await raw_get(c, path, **{"Accept-Encoding": "gzip, deflate, br"})
            plain, body = await raw_get(c, path, **{"Accept-Encoding": "identity"})
            assert gz.status_code == plain.status_code == 200
            assert gz.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
            assert gzip.decompress(packed) == body
            assert len(packed) < len(body) / 2, (lang, len(packed), len(body))
            assert json.loads(body)["prompt"] is True and json.loads(body)["consent"] is None
            for r in (gz, plain):
                assert r.headers["vary"] == "Accept-Encoding, Cookie, Sec-GPC"
                assert r.headers["cache-control"] == "private, no-cache"
                assert r.headers["content-type"] == "application/json"
            assert gz.headers["etag"] != plain.headers["etag"]
        # gzip refused explicitly
        r, _ = await raw_get(c, "/_consent/state?lang=en", **{"Accept-Encoding": "gzip;q=0, identity"})
        assert "content-encoding" not in r.headers


def test_accepts_gzip() -> None:
    yes = ["gzip", "deflate, gzip", "GZIP;q=0.5", "br;q=1, gzip ; q=1.0", "*"]
    no = [None, "", "identity", "gzip;q=0", "gzip;q=0.000", "br", "gzip;q=oops", "gzipped"]
    assert [accepts_gzip(v) for v in yes] == [True] * len(yes)
    assert [accepts_gzip(v) for v in no] == [False] * len(no)


async def test_etag_revalidation_per_language_and_policy(api: ConsentAPI) -> None:
    async with client(api, **{"Accept-Encoding": "gzip"}) as c:
        tags = {}
        for lang in ("en", "ru", "kk"):
            first = await c.get(f"/_consent/state?lang={lang}")
            tags[lang] = first.headers["etag"]
            again = await c.get(f"/_consent/state?lang={lang}", headers={"If-None-Match": tags[lang]})
            assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tags[lang]
            weak = await c.get(f"/_consent/state?lang={lang}", headers={"If-None-Match": f'"x", W/{tags[lang]}'})
            assert weak.status_code == 304
            stale = await c.get(f"/_consent/state?lang={lang}", headers={"If-None-Match": '"something-else"'})
            assert stale.status_code == 200 and stale.json()["policy"]["version"] == api.policy.version
        assert len(set(tags.values())) == 3
        # another language's tag does not validate this one
        assert (await c.get("/_consent/state?lang=ru", headers={"If-None-Match": tags["en"]})).status_code == 200
    # a new policy version (or new texts) changes the tag
    other = Policy.from_dict({**_policy_dict(), "version": "2027-01-01"})
    settings = Settings.build({"secret_key": "state-test-secret-0123456789", "policy": other})
    api2 = ConsentAPI(settings, ConsentCodec(settings.secret_key, other), NullCollector())
    async with client(api2, **{"Accept-Encoding": "gzip"}) as c:
        r = await c.get("/_consent/state?lang=en", headers={"If-None-Match": tags["en"]})
        assert r.status_code == 200 and r.headers["etag"] != tags["en"]


def _policy_dict() -> dict[str, Any]:
    import tomllib
    from importlib import resources

    return tomllib.loads(resources.files("consentmw.core").joinpath("default_policy.toml").read_text("utf-8"))


async def test_etag_covers_the_visitor_part(api: ConsentAPI) -> None:
    """A visitor's consent is part of the tag: a newcomer's cached copy never validates a
    recorded consent, and one visitor's tag never validates another's answer."""
    async with client(api, **{"Accept-Encoding": "gzip"}) as newcomer:
        anon = await newcomer.get("/_consent/state?lang=en")
        gpc = await newcomer.get("/_consent/state?lang=en", headers={"Sec-GPC": "1"})
        assert anon.headers["etag"] != gpc.headers["etag"] and gpc.json()["gpc"] is True
    answers = []
    for body in ({"all": True}, {"all": False}):
        async with client(api, **{"Accept-Encoding": "gzip"}) as c:
            choice = await c.post("/_consent/choice", json=body)
            assert choice.status_code == 200 and c.cookies.get(COOKIE_NAME)
            r = await c.get("/_consent/state?lang=en", headers={"If-None-Match": anon.headers["etag"]})
            assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
            assert r.json()["consent"]["id"] == choice.json()["consent"]["id"] and r.json()["prompt"] is False
            same = await c.get("/_consent/state?lang=en", headers={"If-None-Match": r.headers["etag"]})
            assert same.status_code == 304
            answers.append(r)
    assert answers[0].headers["etag"] != answers[1].headers["etag"]
    async with client(api, **{"Accept-Encoding": "gzip"}) as newcomer:
        r = await newcomer.get("/_consent/state?lang=en", headers={"If-None-Match": answers[0].headers["etag"]})
        assert r.status_code == 200 and r.json()["consent"] is None


async def test_other_languages_carry_no_english_copy(api: ConsentAPI) -> None:
    async with client(api) as c:
        for lang in ("ru", "kk"):
            policy = (await c.get(f"/_consent/state?lang={lang}")).json()["policy"]
            assert list(policy["texts"]) == [lang]
            assert all(list(p["texts"]) == [lang] for p in policy["purposes"])
            assert all(list(labels) == [lang] for labels in policy["categories"].values())
            # only the categories some purpose lists
            assert set(policy["categories"]) == {c for p in policy["purposes"] for c in p["categories"]}
    # a text the site did not translate falls back to English, and only that one
    data = _policy_dict()
    del data["texts"]["ru"]["save"]
    del data["purposes"][1]["texts"]["ru"]["description"]
    partial = Policy.from_dict(data)
    settings = Settings.build({"secret_key": "state-test-secret-0123456789", "policy": partial})
    api2 = ConsentAPI(settings, ConsentCodec(settings.secret_key, partial), NullCollector())
    async with client(api2) as c:
        policy = (await c.get("/_consent/state?lang=ru")).json()["policy"]
    assert policy["texts"]["en"] == {"save": "Save choices"}
    assert set(policy["purposes"][1]["texts"]["en"]) == {"description"}
    assert "en" not in policy["purposes"][0]["texts"]


async def test_head_and_unknown_language(api: ConsentAPI) -> None:
    async with client(api, **{"Accept-Encoding": "gzip"}) as c:
        head = await c.head("/_consent/state?lang=en")
        assert head.status_code == 200 and head.content == b""
        everything = (await c.get("/_consent/state?lang=zz")).json()["policy"]
        assert set(everything["texts"]) == {"en", "ru", "kk"}
