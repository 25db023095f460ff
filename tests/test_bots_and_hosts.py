"""What is not a visitor's page view is not stored: automation user agents (from CrawlerDetect's
maintained list), oversized user agents, HEAD requests; Host values are stored only as valid
host names, and only allowed ones when `allowed_hosts` is set."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from consentmw import ConsentMiddleware
from consentmw.collect.useragent import parse_agent
from consentmw.core.settings import Settings, SettingsError

from tests.conftest import BROWSER_UA, SECRET
from tests.faults.helpers import Store, asgi_call
from tests.test_isolation import html_app

AUTOMATION = {
    "HeadlessChrome": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 "
                      "Safari/537.36",
    "Lighthouse": "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/119.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse",
    "PhantomJS": "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) PhantomJS/2.1.1 "
                 "Safari/538.1",
    "GPTBot": "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
}
BROWSERS = [BROWSER_UA,
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.5 Mobile/15E148 Safari/604.1"]


@pytest.fixture(scope="module")
def store(ch: Any, chdb_dsn: str) -> Any:
    s = Store(ch, chdb_dsn)
    yield s
    s.drop()


def app(store: Store, tmp_path: Any, **options: Any) -> tuple[ConsentMiddleware, str]:
    col = store.collector(spool_dir=str(tmp_path / "spool"), **options)
    mw = ConsentMiddleware(html_app, secret_key=SECRET, clickhouse_dsn=store.dsn, database=store.database,
                           collector=col, **options)
    cookie, _ = mw.codec.issue({"statistics"})
    return mw, cookie


def get(mw: Any, cookie: str, path: str, host: bytes, ua: bytes = BROWSER_UA.encode(), method: str = "GET") -> int:
    h = [(b"host", host), (b"user-agent", ua), (b"cookie", b"consentmw=" + cookie.encode())]
    status, _, _ = asyncio.run(asgi_call(mw, method, path, h))
    return status


def paths(store: Store, marker: str) -> list[tuple[str, str]]:
    return [tuple(r) for r in store.ch.query(
        f"SELECT path, site FROM {store.database}.events_statistics WHERE path LIKE %(m)s ORDER BY path",
        parameters={"m": marker + "%"}).result_rows]


@pytest.mark.parametrize("name", sorted(AUTOMATION))
def test_automation_user_agents_are_bots(name: str) -> None:
    assert parse_agent(AUTOMATION[name]).is_bot


def test_browsers_are_not_bots_and_oversized_agents_are() -> None:
    for ua in BROWSERS:
        assert not parse_agent(ua).is_bot, ua
    assert parse_agent(BROWSER_UA + " x" * 300).is_bot  # over 512 characters: no browser sends that


def test_automation_head_requests_and_oversized_agents_store_nothing(store: Store, tmp_path: Any) -> None:
    mw, cookie = app(store, tmp_path)
    m = f"/bots-{uuid.uuid4().hex[:8]}/"
    for name, ua in AUTOMATION.items():
        assert get(mw, cookie, m + name, b"site.test", ua.encode()) == 200
    assert get(mw, cookie, m + "head", b"site.test", method="HEAD") == 200
    assert get(mw, cookie, m + "huge", b"site.test", (BROWSER_UA + " x" * 5000).encode()) == 200
    for i, ua in enumerate(BROWSERS):
        assert get(mw, cookie, f"{m}browser{i}", b"site.test", ua.encode()) == 200
    mw.collector.flush()
    assert [p for p, _ in paths(store, m)] == [f"{m}browser{i}" for i in range(len(BROWSERS))]
    assert mw.collector.health()["bots_ignored"] == len(AUTOMATION) + 1
    mw.collector.stop()


def test_host_values_are_stored_only_as_valid_host_names(store: Store, tmp_path: Any) -> None:
    mw, cookie = app(store, tmp_path)
    m = f"/hosts-{uuid.uuid4().hex[:8]}/"
    hosts = {"a": b"Site.Test:8443", "b": b"evil host<script>", "c": b"x" * 280, "d": b"[2001:db8::1]:80",
             "e": b"caf\xc3\xa9.test", "f": b"a..b"}
    for key, host in hosts.items():
        get(mw, cookie, m + key, host)
    status, _, _ = asyncio.run(asgi_call(mw, "POST", "/_consent/choice",
                                         [(b"host", b"bad host\x00"), (b"content-type", b"application/json")],
                                         f'{{"all": true, "page": "{m}"}}'.encode()))
    assert status == 200
    mw.collector.flush()
    assert dict(paths(store, m)) == {m + "a": "site.test", m + "b": "", m + "c": "", m + "d": "[2001:db8::1]",
                                     m + "e": "", m + "f": ""}
    [(site,)] = store.ch.query(f"SELECT site FROM {store.database}.consent_log WHERE page = %(p)s",
                               parameters={"p": m}).result_rows
    assert site == ""
    mw.collector.stop()


def test_allowed_hosts_keep_other_hosts_out(store: Store, tmp_path: Any) -> None:
    mw, cookie = app(store, tmp_path, allowed_hosts=["site.test", ".shop.test"])
    m = f"/allowed-{uuid.uuid4().hex[:8]}/"
    for key, host in {"a": b"site.test", "b": b"evil.test", "c": b"eu.shop.test:443", "d": b"shop.test",
                      "e": b"site.test.evil.test", "f": b"notshop.test"}.items():
        get(mw, cookie, m + key, host)
    mw.collector.flush()
    assert dict(paths(store, m)) == {m + "a": "site.test", m + "c": "eu.shop.test", m + "d": "shop.test"}
    assert mw.collector.health()["hosts_ignored"] == 3
    mw.collector.stop()


@pytest.mark.parametrize("value", ["example.com:80", "http://example.com", "bad host", "*.example.com"])
def test_allowed_hosts_setting_is_checked(value: str) -> None:
    with pytest.raises(SettingsError, match="allowed_hosts"):
        Settings.build({"secret_key": SECRET, "allowed_hosts": [value]}, environ={})
    s = Settings.build({"secret_key": SECRET}, environ={"CONSENTMW_ALLOWED_HOSTS": "a.test, .b.test"})
    assert s.allowed_hosts == ["a.test", ".b.test"]


# -- the indexed crawler list agrees with the list's own matcher ------------------------------
def test_required_literals_are_read_conservatively() -> None:
    from consentmw.collect.crawlers import required_literal

    assert required_literal("Googlebot\\/") == "Googlebot/"
    assert required_literal("AdsBot-Google([^-]|$)") == "AdsBot-Google"
    assert required_literal("S[eE][mM]rushBot") == "rushBot"
    assert required_literal("^Seekbot") == "Seekbot"
    assert required_literal("Yandex(Bot|Images)?x") == "Yandex"
    assert required_literal("colou?rBot") in ("colo", "rBot")  # the optional u breaks the run
    assert required_literal("Automaton|Newsify") == ""  # top-level alternatives: nothing is required


def test_indexed_list_matches_exactly_what_the_list_matches() -> None:
    import crawleruseragents
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from consentmw.collect.crawlers import crawler_list

    index = crawler_list()
    instances = [i for d in crawleruseragents.CRAWLER_USER_AGENTS_DATA for i in d["instances"]]
    assert len(instances) > 1000
    for ua in instances + BROWSERS + list(AUTOMATION.values()):
        assert index.matches(ua) == crawleruseragents.is_crawler(ua), ua

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(base=st.sampled_from(instances + BROWSERS), cut=st.integers(0, 400), noise=st.text(max_size=30))
    def agree(base: str, cut: int, noise: str) -> None:
        ua = base[:cut] + noise + base[cut:]
        assert index.matches(ua) == crawleruseragents.is_crawler(ua)

    agree()
