"""Enrichment steps on their own: IP resolution and masking, user agents, GeoIP, referrers, salts."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from consentmw.collect.enrich import language_tag
from consentmw.collect.geo import GeoLocator, NOWHERE
from consentmw.collect.hit import campaign_params
from consentmw.collect.ip import (ClientView, TrustedProxies, ip16_to_str, joined_header, masked_ip16, parse_forwarded,
                                  parse_ip)
from consentmw.collect.referrer import parse_referrer
from consentmw.collect.salt import DailySalts
from consentmw.collect.useragent import parse_agent


def make_mmdb(path: Path) -> Path:
    """A tiny GeoIP2-City database built here (no download)."""
    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", languages=["en"], ipv4_compatible=True)
    writer.insert_network(IPSet(["81.2.69.0/24"]), {
        "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
        "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
        "city": {"names": {"en": "London"}}})
    writer.insert_network(IPSet(["2a02:1810::/32"]), {
        "country": {"iso_code": "KZ", "names": {"en": "Kazakhstan"}}, "city": {"names": {"en": "Almaty"}}})
    writer.to_db_file(str(path))
    return path


@pytest.mark.parametrize("ip,v4,v6,expected", [
    ("192.168.17.43", 1, 48, "192.168.17.0"),
    ("192.168.17.43", 2, 48, "192.168.0.0"),
    ("192.168.17.43", 3, 48, "192.0.0.0"),
    ("2001:db8:abcd:1234:5678::1", 2, 48, "2001:db8:abcd::"),
    ("2001:db8:abcd:1234:5678::1", 2, 64, "2001:db8:abcd:1234::"),
    ("::ffff:10.1.2.3", 2, 48, "10.1.0.0"),
    ("fe80::1%eth0", 2, 64, "fe80::"),
    ("not-an-ip", 2, 48, "::"),
    ("", 2, 48, "::"),
])
def test_ip_masking_levels(ip: str, v4: int, v6: int, expected: str) -> None:
    assert ip16_to_str(masked_ip16(ip, v4, v6)) == expected


def test_forwarded_for_only_from_trusted_proxies() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "::1"])
    assert proxies.client_ip("10.0.0.5", "198.51.100.7") == "198.51.100.7"
    assert proxies.client_ip("10.0.0.5", "198.51.100.7, 10.0.0.9") == "198.51.100.7"
    # a client cannot spoof: the rightmost untrusted hop wins
    assert proxies.client_ip("10.0.0.5", "1.2.3.4, 198.51.100.7") == "198.51.100.7"
    assert proxies.client_ip("203.0.113.9", "198.51.100.7") == "203.0.113.9"
    assert proxies.client_ip("10.0.0.5", "garbage, ###") == "10.0.0.5"
    # X-Forwarded-For is never read as RFC 7239, whatever a client writes into it
    assert proxies.client_ip("10.0.0.5", "for=192.0.2.60") == "10.0.0.5"
    assert TrustedProxies([]).client_ip("10.0.0.5", "198.51.100.7") == "10.0.0.5"
    rfc = TrustedProxies(["10.0.0.0/8", "::1"], "forwarded")
    assert rfc.client_ip("::1", 'for="[2001:db8::7]:4711";proto=https') == "2001:db8::7"
    assert rfc.client_ip("10.0.0.5", "for=192.0.2.60;proto=http;by=203.0.113.43") == "192.0.2.60"
    # a plain X-Forwarded-For list is not a Forwarded value
    assert rfc.client_ip("10.0.0.5", "198.51.100.7") == "10.0.0.5"


@pytest.mark.parametrize("lines, expected", [
    ([b"6.6.6.6", b"198.51.100.7"], "198.51.100.7"),           # two lines: one list, rightmost wins
    ([b"6.6.6.6, 198.51.100.7", b"10.0.0.9"], "198.51.100.7"),  # trusted hop on its own line is skipped
    ([b"198.51.100.7", b"10.0.0.9, 10.0.0.8"], "198.51.100.7"),
    ([b"6.6.6.6", b"garbage"], "10.0.0.5"),                    # unparseable hop: stop at the proxy
])
def test_x_forwarded_for_lines_are_one_list(lines: list[bytes], expected: str) -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    headers = [(b"x-forwarded-for", line) for line in lines]
    assert proxies.view("10.0.0.5", headers).ip == expected
    assert proxies.client_ip("10.0.0.5", joined_header(headers, b"x-forwarded-for").decode()) == expected


@pytest.mark.parametrize("value, expected", [
    ('for="[2001:db8:cafe::17]:4711"', [{"for": "[2001:db8:cafe::17]:4711"}]),
    ('for=192.0.2.60;proto=http;by=203.0.113.43', [{"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}]),
    ('for=192.0.2.43, for=198.51.100.17', [{"for": "192.0.2.43"}, {"for": "198.51.100.17"}]),
    ('For="_gazonk"; HOST="a,b;c" ,for=unknown', [{"for": "_gazonk", "host": "a,b;c"}, {"for": "unknown"}]),
    ('for="\\"quoted\\"";proto=https', [{"for": '"quoted"', "proto": "https"}]),
    ('junk;for=192.0.2.1', [{"for": "192.0.2.1"}]),
    ('', []),
])
def test_forwarded_header_parsed_per_rfc_7239(value: str, expected: list[dict[str, str]]) -> None:
    assert parse_forwarded(value) == expected


def test_forwarded_quotes_ports_and_brackets_resolve_the_client() -> None:
    rfc = TrustedProxies(["10.0.0.0/8", "2001:db8:ffff::/48"], "forwarded")
    headers = [(b"forwarded", b'for="[2001:db8:cafe::17]:4711";proto=https;host="shop.example:8443"'),
               (b"forwarded", b'for="10.1.1.1:80";proto=http')]
    view = rfc.view("2001:db8:ffff::1", headers)
    assert view == ClientView("2001:db8:cafe::17", "https", "shop.example:8443")
    # the same chain from a peer nobody trusts: the peer itself, and no scheme or host
    assert rfc.view("2001:db8:eeee::1", headers) == ClientView("2001:db8:eeee::1")
    # obfuscated / unknown nodes end the walk at the last trusted proxy
    assert rfc.view("10.0.0.5", [(b"forwarded", b"for=unknown;proto=https")]).ip == "10.0.0.5"


def test_x_forwarded_proto_and_host_only_from_trusted_proxies() -> None:
    proxies = TrustedProxies(["127.0.0.1"])
    headers = [(b"x-forwarded-for", b"198.51.100.7"), (b"x-forwarded-proto", b"https"),
               (b"x-forwarded-host", b"shop.example")]
    assert proxies.view("127.0.0.1", headers) == ClientView("198.51.100.7", "https", "shop.example")
    assert proxies.view("127.0.0.2", headers) == ClientView("127.0.0.2")
    # values that are not a scheme or a host name are ignored
    bad = [(b"x-forwarded-for", b"198.51.100.7"), (b"x-forwarded-proto", b"javascript"),
           (b"x-forwarded-host", b"evil.example/path?x")]
    assert proxies.view("127.0.0.1", bad) == ClientView("198.51.100.7")


def test_parse_ip_rejects_garbage() -> None:
    assert parse_ip("1.2.3.4") == ipaddress.ip_address("1.2.3.4")
    for bad in ("", "1.2.3", "x" * 100, "1.2.3.4.5", "::g"):
        assert parse_ip(bad) is None


def test_user_agent_classification() -> None:
    chrome = parse_agent("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                         "Chrome/131.0.0.0 Safari/537.36")
    assert (chrome.browser, chrome.browser_version, chrome.os, chrome.device, chrome.is_bot) == \
        ("Chrome", "131", "Windows", "desktop", False)
    iphone = parse_agent("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
                         "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1")
    assert (iphone.os, iphone.device) == ("iOS", "mobile")
    ipad = parse_agent("Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                       "Version/17.0 Mobile/15E148 Safari/604.1")
    assert ipad.device == "tablet"
    for bot in ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                "curl/8.5.0", "python-httpx/0.27.0", "", "Mozilla/5.0 (compatible; bingbot/2.0)"):
        assert parse_agent(bot).is_bot, bot


def test_geoip_from_a_built_database(tmp_path: Path) -> None:
    geo = GeoLocator(str(make_mmdb(tmp_path / "city.mmdb")))
    assert geo.locate("81.2.69.160") == ("GB", "England", "London")
    assert geo.locate("2a02:1810::1").country == "KZ"
    assert geo.locate("8.8.8.8") == NOWHERE
    assert geo.locate("garbage") == NOWHERE
    assert GeoLocator(None).locate("81.2.69.160") == NOWHERE


def test_referrer_parsing() -> None:
    ref = parse_referrer("https://www.google.com/search?q=secret+terms", "site.test")
    assert ref.host == "google.com" and ref.source == "Google"
    assert "secret" not in ref.url and ref.url == "https://www.google.com/search"
    assert parse_referrer("https://site.test/other", "site.test:8000").host == ""
    assert parse_referrer("https://news.ycombinator.com/item", "a.test").source == "Hacker News"
    assert parse_referrer("javascript:alert(1)", "a.test").host == ""
    assert parse_referrer("http://[::1", "a.test").host == ""
    assert parse_referrer("https://blog.example.org/post", "a.test") == ("blog.example.org", "", "https://blog.example.org/post")


def test_campaign_params_keep_only_tags() -> None:
    assert campaign_params(b"q=private&utm_source=news&utm_medium=email&gclid=abc") == \
        {"utm_source": "news", "utm_medium": "email", "gclid": "abc"}
    assert campaign_params(b"q=private&page=2") is None
    assert campaign_params(b"") is None


def test_daily_salt_changes_every_day_and_forgets() -> None:
    salts = DailySalts()
    day = 20_000 * 86400.0
    a = salts.visitor_hash(day + 10, "s", "1.2.3.4", "ua")
    assert a == salts.visitor_hash(day + 80_000, "s", "1.2.3.4", "ua")
    assert a != salts.visitor_hash(day + 86_400 + 10, "s", "1.2.3.4", "ua")
    assert a != salts.visitor_hash(day + 10, "other", "1.2.3.4", "ua")
    assert a == salts.visitor_hash(day + 10, "s", "1.2.3.4", "ua")  # remembered, same code
    salts.visitor_hash(day + 2 * 86_400, "s", "x", "y")
    assert 20_000 not in salts._salts  # two days later the first day's salt is gone
    assert not any(key[0] == 20_000 for key in salts._codes)  # and every code made with it
    assert a != salts.visitor_hash(day + 10, "s", "1.2.3.4", "ua")  # a late event gets a new, unlinkable code


@pytest.mark.parametrize("header,tag", [("en-US,en;q=0.9", "en-us"), ("kk", "kk"), ("*", ""), ("", ""),
                                        ("x" * 40, ""), ("ru-RU;q=0.8", "ru-ru"), ("<script>", "")])
def test_language_tag(header: str, tag: str) -> None:
    assert language_tag(header) == tag
