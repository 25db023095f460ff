"""The column-wise minimiser against the rules, stated hit by hit with hand-written answers.

The minimiser computes each granted purpose's table column by column over a whole batch
(distinct values once, spread back with `take`). `expected_tables` below says what every
row must hold without asking the code under test anything: the browser, OS and device of
each User-Agent, the client address behind each proxy setting and its masked form at every
masking level, the GeoIP place, the referrer's host and source, the language tag and the
stored host are all literals in the tables below; which columns a purpose's table has comes
from the purpose's categories (read as data: the random policies' own dicts, or the default
policy file) and the category-to-column list written out here.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from consentmw.collect.columnar import group, uuid4_array
from consentmw.collect.enrich import Enricher, proof_key
from consentmw.collect.hit import Hit
from consentmw.collect.ip import ip16_to_str
from consentmw.collect.minimise import Minimiser
from consentmw.core.policy import CATEGORIES, Policy
from tests.collect.test_enrichment import make_mmdb
from tests.test_consent_enforcement import PURPOSE_IDS, make_policy

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
DAY = 1763769600  # 2026-11-22 00:00 UTC; hits span this day and the next (salts keep two days)
DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "consentmw" / "core" / "default_policy.toml"

# -- the answers, written by hand --------------------------------------------------------------
#: User-Agent -> (browser, browser_version, os, os_version, device); None: a bot, never stored
AGENT_ANSWERS: dict[str, tuple[str, str, str, str, str] | None] = {
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
    "Safari/537.36": ("Chrome", "120", "Windows", "10", "desktop"),
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
    "Safari/537.36 Edg/120.0.2210.61": ("Edge", "120", "Windows", "10", "desktop"),
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0": ("Firefox", "120", "Linux", "", "desktop"),
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 "
    "Safari/605.1.15": ("Safari", "17", "Mac OS X", "10", "desktop"),
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1": ("Mobile Safari", "17", "iOS", "17", "mobile"),
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 "
    "Mobile/15E148 Safari/604.1": ("Mobile Safari", "16", "iOS", "16", "tablet"),
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 "
    "Mobile Safari/537.36": ("Chrome Mobile", "120", "Android", "14", "mobile"),
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 "
    "Safari/537.36": ("Chrome", "119", "Android", "13", "tablet"),
    "Googlebot/2.1 (+http://www.google.com/bot.html)": None,
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 "
    "Safari/537.36": None,
    "curl/8.0.1": None,
    "": None,
    "Mozilla/5.0 (Windows NT 10.0) " + "x" * 600: None,  # over 512 characters: a script
}

CHROME, _EDGE, FIREFOX = list(AGENT_ANSWERS)[:3]
AGENTS = [CHROME, FIREFOX]

#: proxy setting -> (networks, [(socket peer, X-Forwarded-For, the client address)])
NETWORKS: dict[str, tuple[list[str], list[tuple[str, str, str]]]] = {
    "none": ([], [
        ("203.0.113.9", "", "203.0.113.9"),
        ("81.2.69.160", "198.51.100.77", "81.2.69.160"),        # a client's own claim: ignored
        ("2a02:1810::99", "", "2a02:1810::99"),
        ("garbage", "", "garbage"),
        ("", "", ""),
    ]),
    "loopback": (["127.0.0.0/8"], [
        ("127.0.0.1", "81.2.69.160", "81.2.69.160"),
        ("127.0.0.1", "198.51.100.77, 10.0.0.1", "10.0.0.1"),   # the rightmost untrusted hop
        ("127.0.0.1", "81.2.69.160, 2001:db8:1:2:3::1", "2001:db8:1:2:3::1"),
        ("127.0.0.1", "2a02:1810::99", "2a02:1810::99"),
        ("127.0.0.1", "for=192.0.2.60", "127.0.0.1"),           # X-Forwarded-For is no RFC 7239
        ("127.0.0.1", "", "127.0.0.1"),
        ("203.0.113.9", "81.2.69.160", "203.0.113.9"),          # the peer is no proxy of ours
    ]),
    "everything": (["0.0.0.0/0", "::/0"], [
        ("203.0.113.9", "198.51.100.77, 10.0.0.1", "198.51.100.77"),  # every hop trusted: the first
        ("2001:db8:1:2:3::1", "81.2.69.160", "81.2.69.160"),
        ("2001:db8:1:2:3::1", "", "2001:db8:1:2:3::1"),
        ("203.0.113.9", "x", "203.0.113.9"),                   # no address: the peer
    ]),
}

#: client address -> {IPv4 bytes masked or IPv6 prefix kept: the address stored}
MASKED: dict[str, dict[int, str]] = {
    "203.0.113.9": {1: "203.0.113.0", 2: "203.0.0.0", 3: "203.0.0.0"},
    "81.2.69.160": {1: "81.2.69.0", 2: "81.2.0.0", 3: "81.0.0.0"},
    "198.51.100.77": {1: "198.51.100.0", 2: "198.51.0.0", 3: "198.0.0.0"},
    "10.0.0.1": {1: "10.0.0.0", 2: "10.0.0.0", 3: "10.0.0.0"},
    "127.0.0.1": {1: "127.0.0.0", 2: "127.0.0.0", 3: "127.0.0.0"},
    "2a02:1810::99": {48: "2a02:1810::", 64: "2a02:1810::"},
    "2001:db8:1:2:3::1": {48: "2001:db8:1::", 64: "2001:db8:1:2::"},
    "garbage": {1: "::", 2: "::", 3: "::", 48: "::", 64: "::"},
    "": {1: "::", 2: "::", 3: "::", 48: "::", 64: "::"},
}

#: client address -> (country, region, city) in the test GeoIP database (`make_mmdb`)
PLACES = {"81.2.69.160": ("GB", "England", "London"), "2a02:1810::99": ("KZ", "", "Almaty")}

#: Host header -> the site stored (a valid host name, lower-case, without port or final dot)
SITES = {"www.Example.com:8000": "www.example.com", "www.example.com": "www.example.com", "site.test": "site.test",
         "Site.Test.": "site.test", "x" * 300: "", "bad host": "", "a..b": "", "site.test:99999999": ""}

#: Referer -> (host, source, url kept: no query, no fragment); external to every site above
REFERRERS = {
    "": ("", "", ""),
    "https://www.google.com/?q=x": ("google.com", "Google", "https://www.google.com/"),
    "https://site.test/a?b=c": ("site.test", "", "https://site.test/a"),
    "https://www.example.com/x#top": ("example.com", "", "https://www.example.com/x"),
    "android-app://com.google.android.gm/": ("com.google.android.gm", "Google", "android-app://com.google.android.gm/"),
    "https://t.co/abc": ("t.co", "Twitter", "https://t.co/abc"),
    "https://news.ycombinator.com/item?id=1": ("news.ycombinator.com", "Hacker News", "https://news.ycombinator.com/item"),
    "https://notgoogle.com/": ("notgoogle.com", "", "https://notgoogle.com/"),
    "ftp://files.example/x": ("", "", ""),
}

#: Accept-Language -> the language stored
LANGUAGES = {"": "", "en-US,en;q=0.9": "en-us", "kk": "kk", "*": "", "ru-RU;q=1": "ru-ru", "x" * 20: "",
             "de_DE": ""}

#: path sent -> path stored (cut to 1,024 characters; NUL and non-characters replaced)
PATHS = {"/": "/", "/a": "/a", "/é" * 600: "/é" * 512, "/a\x00b": "/a\ufffdb", "/\ufdd0": "/\ufffd"}

#: the columns each data category fills (bookkeeping columns are in every table)
BOOKKEEPING = ("event_id", "ts", "site", "event_type", "consent_id", "policy_version")
CATEGORY_COLUMNS = {
    "page": ("path", "status", "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content",
             "click_id_type"),
    "referrer": ("referrer_host", "referrer_source"),          # + referrer at precision "full"
    "browser": ("browser", "browser_version", "os", "os_version", "device"),
    "language": ("language",),
    "location": ("country",),                                  # + region, city at precision "city"
    "ip": ("ip",),
    "timing": ("duration_ms", "duration_us", "ttfb", "dom_interactive", "dom_complete", "load_ms", "fcp", "lcp",
               "inp", "cls"),
    "clicks": ("link_host", "link_path", "event_name", "props"),
    "visitor_id": ("visitor_id",),
    "daily_hash": ("visitor_hash",),
}
#: the data category of each event type: a purpose stores an event only if it lists it
EVENT_CATEGORIES = {"pageview": "page", "timing": "timing", "vitals": "timing", "click": "clicks", "custom": "clicks"}
CLICK_IDS = ("gclid", "fbclid")


def test_the_hand_written_category_columns_cover_every_category() -> None:
    assert set(CATEGORY_COLUMNS) == set(CATEGORIES)


def purpose_columns(spec: dict[str, Any]) -> set[str]:
    """The columns a purpose's table holds, from its declared categories and precisions."""
    columns = set(BOOKKEEPING)
    for category in spec.get("categories", []):
        columns.update(CATEGORY_COLUMNS[category])
    if "referrer" in spec.get("categories", []) and spec.get("referrer_precision", "host") == "full":
        columns.add("referrer")
    if "location" in spec.get("categories", []) and spec.get("location_precision", "country") == "city":
        columns.update(("region", "city"))
    return columns


# -- the rules, one hit at a time ------------------------------------------------------
def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stored_ip(raw: bytes) -> str:
    """A stored 16-byte address as written in MASKED (IPv4 for IPv4-mapped ones)."""
    address = ipaddress.IPv6Address(bytes(raw))
    return str(address.ipv4_mapped) if address.ipv4_mapped else str(address)


def expected_tables(specs: dict[str, dict[str, Any]], hits: list[Hit], clients: dict[int, str],
                    blocked: set[str]) -> dict[str, dict[str, list]]:
    out: dict[str, dict[str, list]] = {}
    for i, hit in enumerate(hits):
        category = EVENT_CATEGORIES[hit.event_type]
        stores = sorted(pid for pid, spec in specs.items() if pid in hit.purposes and category in spec["categories"])
        if not stores or hit.consent_id in blocked or AGENT_ANSWERS[text(hit.user_agent)] is None:
            continue
        for pid in stores:
            row = expected_row(hit, specs[pid], clients[i])
            table = out.setdefault(f"events_{pid}", {})
            for name in purpose_columns(specs[pid]):
                table.setdefault(name, []).append(row[name])
    return out


def expected_row(hit: Hit, spec: dict[str, Any], client: str) -> dict[str, Any]:
    data = hit.data or {}
    site = SITES[text(hit.site)]
    browser, browser_version, os_name, os_version, device = AGENT_ANSWERS[text(hit.user_agent)] or ("",) * 5
    campaign = hit.campaign or {}
    pageview = hit.event_type == "pageview"
    ref = REFERRERS[data.get("referrer", text(hit.referrer))] if pageview else REFERRERS[""]
    if ref[0] and ref[0] == site.removeprefix("www."):  # the site's own pages: internal navigation
        ref = REFERRERS[""]
    country, region, city = PLACES.get(client, ("", "", ""))
    family = 6 if ":" in client else 4
    return {
        "event_id": None, "ts": int(hit.ts * 1000), "site": site, "event_type": hit.event_type,
        "consent_id": hit.consent_id if "visitor_id" in spec["categories"] else ("proof", hit.consent_id,
                                                                                 int(hit.ts // 86400)),
        "policy_version": hit.policy_version, "path": PATHS[hit.path], "status": hit.status,
        "utm_source": campaign.get("utm_source") or campaign.get("ref", ""),
        "utm_medium": campaign.get("utm_medium", ""), "utm_campaign": campaign.get("utm_campaign", ""),
        "utm_term": campaign.get("utm_term", ""), "utm_content": campaign.get("utm_content", ""),
        "click_id_type": next((k for k in campaign if k in CLICK_IDS), ""),
        "referrer_host": ref[0], "referrer_source": ref[1], "referrer": ref[2],
        "browser": browser, "browser_version": browser_version, "os": os_name, "os_version": os_version,
        "device": device, "language": LANGUAGES[text(hit.language)],
        "country": country, "region": region, "city": city,
        "ip": MASKED[client][spec.get("ip_mask_bytes", 2) if family == 4 else spec.get("ipv6_prefix", 48)]
        if client not in ("", "garbage") else "::",
        "duration_ms": round(hit.duration_ms) if pageview and not data else None,
        "duration_us": round(hit.duration_ms * 1000) if pageview and not data else None,
        "ttfb": data.get("ttfb"), "dom_interactive": data.get("dom_interactive"),
        "dom_complete": data.get("dom_complete"), "load_ms": data.get("load"), "fcp": data.get("fcp"),
        "lcp": data.get("lcp"), "inp": data.get("inp"),
        "cls": None if data.get("cls") is None else float(np.float32(data["cls"])),
        "link_host": data.get("link_host", ""), "link_path": data.get("link_path", ""),
        "event_name": data.get("name", ""), "props": data.get("props") or {},
        "visitor_id": hit.visitor_id or "",
        "visitor_hash": ("daily", int(hit.ts // 86400), site, client, text(hit.user_agent)),
    }


def stored_values(table: pa.Table) -> dict[str, list]:
    """Arrow columns back to plain Python values."""
    out: dict[str, list] = {}
    for name, column in zip(table.column_names, table.columns):
        values = column.to_pylist()
        if name == "ts":
            values = column.cast(pa.int64()).to_pylist()  # milliseconds
        elif name == "props":
            values = [dict(v) for v in values]
        elif name == "cls":
            values = [None if v is None else float(np.float32(v)) for v in values]
        elif name == "ip":
            values = [stored_ip(v) for v in values]
        out[name] = values
    return out


def same_partition(keys: list[Any], values: list[Any]) -> bool:
    """True when equal keys have equal values and different keys different values: the
    stored value is a function of the key (a day-scoped proof or visitor code) and tells
    different keys apart."""
    by_key: dict[Any, set[Any]] = {}
    for key, value in zip(keys, values):
        by_key.setdefault(key, set()).add(value)
    seen = [v for vs in by_key.values() for v in vs]
    return all(len(vs) == 1 for vs in by_key.values()) and len(seen) == len(set(seen))


# -- random hits -----------------------------------------------------------------------
# Links from one of the sites above, and the www. sites, are drawn often: internal navigation
# must be told apart from a referral (www. or not) in every run, derandomised or not.
referrer_st = st.one_of(st.sampled_from(sorted(REFERRERS)), st.just("https://www.example.com/x#top"))
site_st = st.one_of(st.sampled_from(sorted(SITES)), st.sampled_from(["www.Example.com:8000", "www.example.com"]))
payload_st = st.one_of(
    st.none(), st.none(),
    st.fixed_dictionaries({"type": st.just("pageview"), "path": st.just("/"),
                           "referrer": referrer_st}),
    st.fixed_dictionaries({"type": st.just("timing"), "path": st.just("/"), "ttfb": st.integers(0, 5000),
                           "load": st.integers(0, 9000)}),
    st.fixed_dictionaries({"type": st.just("vitals"), "path": st.just("/"), "cls": st.floats(0, 5),
                           "lcp": st.integers(0, 100)}),
    st.fixed_dictionaries({"type": st.just("click"), "path": st.just("/"), "link_host": st.just("o.example"),
                           "link_path": st.just("/z")}),
    st.fixed_dictionaries({"type": st.just("custom"), "path": st.just("/"), "name": st.just("evt"),
                           "props": st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["", "x", "é ю"]),
                                                    max_size=2)}),
)
spec_st = st.fixed_dictionaries({
    "categories": st.lists(st.sampled_from(CATEGORIES), unique=True, max_size=len(CATEGORIES)),
    "location_precision": st.sampled_from(["country", "city"]),
    "referrer_precision": st.sampled_from(["host", "full"]),
    "ip_mask_bytes": st.sampled_from([1, 2, 3]),
    "ipv6_prefix": st.sampled_from([48, 64]),
})


def default_specs() -> dict[str, dict[str, Any]]:
    """The default policy file's purposes, read as data (TOML), not through `Policy`."""
    raw = tomllib.loads(DEFAULT_POLICY.read_text())
    return {p["id"]: p for p in raw["purposes"] if p.get("categories")}


@st.composite
def hit_st(draw: Any, pids: tuple[str, ...], peers: list[tuple[str, str, str]]) -> tuple[Hit, str]:
    data = draw(payload_st)
    # The request path hands header values over as raw bytes, the beacon endpoint as text.
    header = (lambda v: v) if draw(st.booleans()) else (lambda v: v.encode())
    peer, forwarded, client = draw(st.sampled_from(peers))
    hit = Hit(
        ts=draw(st.sampled_from([DAY + 0.125, DAY + 86399.999, DAY + 86400 + 5.5, DAY + 400.001])),
        event_type=data["type"] if data else "pageview",
        site=header(draw(site_st)),
        path=draw(st.sampled_from(sorted(PATHS))),
        consent_id=draw(st.sampled_from(["c1", "c2", "c3", "blocked-one"])), policy_version="prop-1",
        purposes=frozenset(draw(st.lists(st.sampled_from(pids + ("necessary", "unknown")), max_size=4))),
        visitor_id=draw(st.sampled_from([None, "", "v1", "v2"])),
        peer_ip=peer, forwarded_for=header(forwarded),
        user_agent=header(draw(st.sampled_from(sorted(AGENT_ANSWERS)))),
        language=header(draw(st.sampled_from(sorted(LANGUAGES)))),
        referrer=header(draw(referrer_st)),
        campaign=draw(st.one_of(st.none(), st.dictionaries(
            st.sampled_from(["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "ref", "gclid",
                             "fbclid"]), st.sampled_from(["", "news", "é", "spring-sale"]), min_size=1, max_size=4))),
        status=draw(st.integers(0, 599)),
        duration_ms=draw(st.one_of(st.integers(0, 100_000), st.floats(0, 100_000, allow_nan=False))), data=data)
    return hit, client


@st.composite
def case_st(draw: Any) -> tuple[dict[str, dict[str, Any]], Policy, str, list[tuple[Hit, str]]]:
    """A policy (random purposes, or the default file), a proxy setting and hits under them."""
    if draw(st.integers(0, 4)) == 0:
        specs, policy = default_specs(), Policy.from_file(DEFAULT_POLICY)
    else:
        drawn = draw(st.lists(spec_st, min_size=1, max_size=3))
        specs = {pid: spec for pid, spec in zip(PURPOSE_IDS, drawn) if spec["categories"]}
        policy = make_policy(drawn)
    trust = draw(st.sampled_from(sorted(NETWORKS)))
    hits = draw(st.lists(hit_st(tuple(specs) or PURPOSE_IDS, NETWORKS[trust][1]), max_size=30))
    return specs, policy, trust, hits


@pytest.fixture(scope="module")
def geoip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_mmdb(tmp_path_factory.mktemp("geo") / "minimiser-geo.mmdb"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(case=case_st(), block=st.booleans())
def test_batch_matches_the_rules_hit_by_hit(geoip: str, case: tuple[dict[str, dict[str, Any]], Policy, str,
                                                                     list[tuple[Hit, str]]], block: bool) -> None:
    specs, policy, trust, drawn = case
    hits = [h for h, _ in drawn]
    clients = {i: client for i, (_, client) in enumerate(drawn)}
    minimiser = Minimiser(policy, Enricher(NETWORKS[trust][0], geoip, proof_key("test-secret")))
    blocked = {"blocked-one"} if block else set()
    minimiser.blocked = blocked.__contains__
    tables = minimiser.process(hits)  # the whole batch at once: the columnar path
    expected = expected_tables(specs, hits, clients, blocked)
    assert set(tables) == set(expected)
    for name, table in tables.items():
        got, want = stored_values(table), expected[name]
        assert set(got) == set(want) == purpose_columns(specs[name.removeprefix("events_")])
        ids = got.pop("event_id")
        want.pop("event_id")
        assert all(UUID4.fullmatch(i) for i in ids) and len(set(ids)) == len(ids)
        if "visitor_hash" in want:  # a keyed daily code: one value per (day, site, address, browser)
            codes, keys = got.pop("visitor_hash"), want.pop("visitor_hash")
            assert all(0 < c < 2**64 for c in codes) and same_partition(keys, codes)
        if "visitor_id" not in want:  # a day-scoped proof instead of the consent id
            proofs, keys = got.pop("consent_id"), want.pop("consent_id")
            assert all(re.fullmatch(r"[0-9a-f]{20}", p) for p in proofs) and same_partition(keys, proofs)
            assert not set(proofs) & {"c1", "c2", "c3"}
        for column in want:
            assert got[column] == want[column], column
    kept = [h for h in hits if h.consent_id not in blocked]
    assert minimiser.counts.rows == sum(t.num_rows for t in tables.values()) <= len(specs) * len(kept)


def test_each_user_agent_is_parsed_once_per_batch_even_beyond_the_parser_cache() -> None:
    """A batch with more distinct browsers than the parser's cache still parses each once."""
    policy = Policy.default()
    enricher = Enricher([], None, proof_key("s"))
    calls: Counter[str] = Counter()
    parse = enricher.agent

    def counting(ua: str) -> Any:
        calls[ua] += 1
        return parse(ua)
    enricher.agent = counting  # type: ignore[method-assign]
    hits = [Hit(DAY + i, "pageview", "example.com", "/", f"c{i}", policy.version,
                frozenset({"statistics", "personalisation"}), f"v{i}", "203.0.113.9", "", AGENTS[0] + f" Build/{i}",
                "en", "", None, 200, 5) for i in range(20_000)]
    tables = Minimiser(policy, enricher).process(hits)
    assert {t: d.num_rows for t, d in tables.items()} == {"events_personalisation": 20_000, "events_statistics": 20_000}
    assert len(calls) == 20_000 and max(calls.values()) == 1
    assert tables["events_statistics"]["browser"].to_pylist() == ["Chrome"] * 20_000


def test_rows_without_a_stable_id_carry_a_day_scoped_proof_of_their_consent() -> None:
    """Statistics keeps no consent id: one proof per consent and UTC day, told apart across
    consents and days, never the id itself."""
    policy = Policy.default()
    minimiser = Minimiser(policy, Enricher([], None, proof_key("s")))
    when = [("c1", DAY + 5), ("c1", DAY + 86399), ("c1", DAY + 86400), ("c2", DAY + 5), ("c2", DAY + 86400 * 2)]
    hits = [Hit(ts, "pageview", "site.test", "/", cid, policy.version, frozenset({"statistics", "personalisation"}),
                "v1", "203.0.113.9", "", CHROME, "en", "") for cid, ts in when]
    tables = minimiser.process(hits)
    assert tables["events_personalisation"]["consent_id"].to_pylist() == ["c1", "c1", "c1", "c2", "c2"]
    proofs = tables["events_statistics"]["consent_id"].to_pylist()
    assert all(re.fullmatch(r"[0-9a-f]{20}", p) for p in proofs)
    assert proofs[0] == proofs[1] and len({proofs[0], *proofs[2:]}) == 4
    other = Minimiser(policy, Enricher([], None, proof_key("another secret"))).process(hits)["events_statistics"]
    assert not set(other["consent_id"].to_pylist()) & set(proofs)  # keyed by the site's secret


def test_uuid4_array_is_random_canonical_version_4() -> None:
    ids = uuid4_array(100_000).to_pylist()
    assert len(set(ids)) == 100_000
    assert all(UUID4.fullmatch(i) for i in ids)
    assert uuid4_array(0).to_pylist() == []


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(0, 2)), min_size=1, max_size=60))
def test_group_numbers_rows_by_their_combined_codes(rows: list[tuple[int, int, int]]) -> None:
    codes, firsts = group(*(np.array(c, dtype=np.int64) for c in zip(*rows)))
    seen: dict[tuple[int, int, int], int] = {}
    for i, row in enumerate(rows):
        number = seen.setdefault(row, len(seen))
        assert codes[i] == number          # numbered in order of first appearance
        assert firsts[number] <= i and rows[firsts[number]] == row
    assert len(firsts) == len(seen)


def test_the_same_referrer_is_judged_against_each_hits_own_site() -> None:
    """Distinct values are worked out per (referrer, site): a link from site.test is internal
    navigation on site.test, and an external referrer everywhere else."""
    policy = Policy.default()
    minimiser = Minimiser(policy, Enricher([], None, proof_key("s")))
    hits = [Hit(DAY + i, "pageview", site, "/", "c1", policy.version, frozenset({"statistics"}), None,
                "203.0.113.9", "", AGENTS[0], "en", "https://site.test/a?q=1", None, 200, 5)
            for i, site in enumerate(["example.com", "site.test", "www.site.test:8443", "example.com"])]
    table = minimiser.process(hits)["events_statistics"]
    assert table["referrer_host"].to_pylist() == ["site.test", "", "", "site.test"]
    assert table["site"].to_pylist() == ["example.com", "site.test", "www.site.test", "example.com"]


def test_raw_header_bytes_are_read_as_utf8_and_bad_bytes_never_cost_the_batch() -> None:
    policy = Policy.default()
    minimiser = Minimiser(policy, Enricher([], None, proof_key("s")))
    ua = AGENTS[1].encode()
    hits = [Hit(DAY, "pageview", host, "/", "c1", policy.version, frozenset({"personalisation"}), "v1",
                "203.0.113.9", b"", ua, lang, b"", None, 200, 5)
            for host, lang in ((b"caf\xc3\xa9.example", b"fr-FR"), (b"bad\xff.example", b"de\xfe"))]
    table = minimiser.process(hits)["events_personalisation"]
    assert table["site"].to_pylist() == ["", ""]  # browsers send IDNA (xn--): these are no host names
    assert table["language"].to_pylist() == ["fr-fr", ""]  # a replaced byte is no language tag
    assert table["browser"].to_pylist() == ["Firefox", "Firefox"]


@pytest.mark.parametrize("mask, prefix, v4, v6", [
    (1, 64, "198.51.100.0", "2001:db8:1:2::"),
    (3, 48, "198.0.0.0", "2001:db8:1::"),
])
def test_a_purposes_configured_masking_is_what_is_stored(mask: int, prefix: int, v4: str, v6: str) -> None:
    """Addresses stored under a purpose's own ip_mask_bytes / ipv6_prefix, not the defaults
    (2 bytes, /48): the expected values are written out by hand."""
    policy = make_policy([{"categories": ["page", "ip"], "ip_mask_bytes": mask, "ipv6_prefix": prefix}])
    minimiser = Minimiser(policy, Enricher([], None, proof_key("s")))
    hits = [Hit(1_796_000_000.0, "pageview", b"site.test", "/", "c1", "prop-1", frozenset({"alpha"}), None, peer,
                b"", b"Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0", b"", b"")
            for peer in ("198.51.100.77", "2001:db8:1:2:3:4:5:6")]
    table = minimiser.process(hits)["events_alpha"]
    stored = [ip16_to_str(bytes(v)) if isinstance(v, (bytes, bytearray)) else str(v)
              for v in table.column("ip").to_pylist()]
    assert stored == [v4, v6]


def test_tables_taking_every_hit_share_common_columns_but_never_ids_or_masks() -> None:
    """Two purposes granted on every hit: columns both compute alike are worked out once per
    batch, but each table masks the address its own way and gives each row its own event id
    (a shared one would link a row of one purpose to the same page view in the other)."""
    policy = make_policy([{"categories": ["page", "ip", "referrer", "browser"], "ip_mask_bytes": 1},
                          {"categories": ["page", "ip", "referrer", "browser"], "ip_mask_bytes": 3}])
    minimiser = Minimiser(policy, Enricher([], None, proof_key("s")))
    hits = [Hit(1_796_000_000.0 + i, "pageview", b"site.test", f"/p{i % 3}", f"c{i}", "prop-1",
                frozenset({"alpha", "beta"}), None, f"198.51.100.{i}", b"", CHROME, b"en",
                b"https://news.example/" if i % 2 else b"", {"utm_source": "mail"} if i == 3 else None)
            for i in range(6)]
    tables = minimiser.process(hits)
    alpha, beta = tables["events_alpha"], tables["events_beta"]
    for name in ("path", "referrer_host", "browser", "utm_source", "ts", "site"):
        assert alpha[name].to_pylist() == beta[name].to_pylist(), name
    assert alpha["utm_source"].to_pylist() == ["", "", "", "mail", "", ""]
    assert not set(alpha["event_id"].to_pylist()) & set(beta["event_id"].to_pylist())
    assert [ip16_to_str(bytes(v)) for v in alpha["ip"].to_pylist()][:2] == ["198.51.100.0", "198.51.100.0"]
    assert [ip16_to_str(bytes(v)) for v in beta["ip"].to_pylist()][:2] == ["198.0.0.0", "198.0.0.0"]
