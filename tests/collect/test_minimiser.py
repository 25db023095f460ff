"""The column-wise minimiser against the rules read hit by hit.

`expected_tables` below is the plain statement of what each granted purpose stores for
one hit, written one hit and one column at a time. The minimiser computes the same thing
column by column over a whole batch (distinct values once, spread back with `take`);
for random policies, consents and hits both must give the same rows in the same order.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from consentmw.core.arrow import arrow_schema
from consentmw.collect.beacon import EVENT_CATEGORY
from consentmw.collect.columnar import group, uuid4_array
from consentmw.collect.enrich import Enricher, language_tag, proof_key
from consentmw.collect.hit import CLICK_ID_PARAMS, Hit
from consentmw.collect.ip import ip16_to_str, masked_ip16
from consentmw.collect.minimise import Minimiser
from consentmw.core.fields import columns_for, table_for
from consentmw.core.policy import Policy
from tests.test_consent_enforcement import PURPOSE_IDS, make_policy, purpose_st

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
DAY = 1763769600  # 2026-11-22 00:00 UTC; hits span this day and the next (salts keep two days)
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "Googlebot/2.1 (+http://www.google.com/bot.html)", "curl/8.0", "",
]


# -- the rules, one hit at a time ------------------------------------------------------
def expected_tables(policy: Policy, enricher: Enricher, hits: list[Hit], blocked: set[str]) -> dict[str, dict[str, list]]:
    out: dict[str, dict[str, list]] = {}
    for hit in hits:
        category = EVENT_CATEGORY.get(hit.event_type, "page")
        purposes = [p for p in policy.collecting if p.id in hit.purposes and category in p.categories]
        purposes.sort(key=lambda p: p.id)
        if not purposes or hit.consent_id in blocked or enricher.agent(text(hit.user_agent)).is_bot:
            continue
        for purpose in purposes:
            row = expected_row(hit, purpose, enricher)
            table = out.setdefault(table_for(purpose.id), {})
            for column in columns_for(purpose):
                table.setdefault(column.name, []).append(row[column.name])
    return out


def text(value: str | bytes) -> str:
    """A header value as the writer reads it: raw bytes as UTF-8, invalid bytes replaced."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


_HOST = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.?)+")


def expected_site(raw: str | bytes) -> str:
    """A Host value is stored only as a valid name: ASCII labels, port dropped, lower-case."""
    name, _, port = text(raw).lower().partition(":")
    if (port and not (port.isdigit() and len(port) <= 5)) or not _HOST.fullmatch(name) or ".." in name:
        return ""
    return name.rstrip(".") if len(name) <= 253 else ""


def expected_row(hit: Hit, purpose: Any, enricher: Enricher) -> dict[str, Any]:
    data = hit.data or {}
    site = expected_site(hit.site)
    user_agent = text(hit.user_agent)
    client_ip = enricher.client_ip(hit.peer_ip, text(hit.forwarded_for))
    agent = enricher.agent(user_agent)
    campaign = hit.campaign or {}
    pageview = hit.event_type == "pageview"
    ref = enricher.referrer(data.get("referrer", text(hit.referrer)) if pageview else "", site)
    place = enricher.place(client_ip)
    keeps_id = "visitor_id" in purpose.categories
    return {
        "event_id": None, "ts": int(hit.ts * 1000), "site": site, "event_type": hit.event_type,
        "consent_id": hit.consent_id if keeps_id else enricher.consent_proof(hit.consent_id, hit.ts),
        "policy_version": hit.policy_version, "path": hit.path[:1024], "status": hit.status,
        "utm_source": campaign.get("utm_source") or campaign.get("ref", ""),
        "utm_medium": campaign.get("utm_medium", ""), "utm_campaign": campaign.get("utm_campaign", ""),
        "utm_term": campaign.get("utm_term", ""), "utm_content": campaign.get("utm_content", ""),
        "click_id_type": next((k for k in campaign if k in CLICK_ID_PARAMS), ""),
        "referrer_host": ref.host, "referrer_source": ref.source, "referrer": ref.url,
        "browser": agent.browser, "browser_version": agent.browser_version, "os": agent.os,
        "os_version": agent.os_version, "device": agent.device, "language": language_tag(text(hit.language)),
        "country": place[0], "region": place[1], "city": place[2],
        "ip": masked_ip16(client_ip, purpose.ip_mask_bytes, purpose.ipv6_prefix),
        "duration_ms": round(hit.duration_ms) if pageview and not data else None,
        "duration_us": round(hit.duration_ms * 1000) if pageview and not data else None,
        "ttfb": data.get("ttfb"), "dom_interactive": data.get("dom_interactive"),
        "dom_complete": data.get("dom_complete"), "load_ms": data.get("load"), "fcp": data.get("fcp"),
        "lcp": data.get("lcp"), "inp": data.get("inp"), "cls": data.get("cls"),
        "link_host": data.get("link_host", ""), "link_path": data.get("link_path", ""),
        "event_name": data.get("name", ""), "props": data.get("props") or {},
        "visitor_id": hit.visitor_id or "",
        "visitor_hash": enricher.visitor_hash(hit.ts, site, client_ip, user_agent),
    }


def stored_values(table: pa.Table) -> dict[str, list]:
    """Arrow columns back to the Python values `expected_row` speaks in."""
    out: dict[str, list] = {}
    for name, column in zip(table.column_names, table.columns):
        values = column.to_pylist()
        if name == "ts":
            values = column.cast(pa.int64()).to_pylist()  # milliseconds
        elif name == "props":
            values = [dict(v) for v in values]
        elif name == "cls":
            values = [None if v is None else float(np.float32(v)) for v in values]
        out[name] = values
    return out


# -- random hits -----------------------------------------------------------------------
payload_st = st.one_of(
    st.none(), st.none(),
    st.fixed_dictionaries({"type": st.just("pageview"), "path": st.just("/spa"),
                           "referrer": st.sampled_from(["", "https://ref.example/x?y=1", "https://www.google.com/"])}),
    st.fixed_dictionaries({"type": st.just("timing"), "path": st.just("/"), "ttfb": st.integers(0, 5000),
                           "load": st.integers(0, 9000)}),
    st.fixed_dictionaries({"type": st.just("vitals"), "path": st.just("/"), "cls": st.floats(0, 5),
                           "lcp": st.integers(0, 100)}),
    st.fixed_dictionaries({"type": st.just("click"), "path": st.just("/"), "link_host": st.just("o.example"),
                           "link_path": st.just("/z")}),
    st.fixed_dictionaries({"type": st.just("custom"), "path": st.just("/"), "name": st.just("evt"),
                           "props": st.dictionaries(st.sampled_from(["a", "b"]), st.text(max_size=5), max_size=2)}),
)


@st.composite
def hit_st(draw: Any) -> Hit:
    data = draw(payload_st)
    # The request path hands header values over as raw bytes (sometimes not UTF-8), the
    # beacon endpoint as text.
    header = (lambda v: v) if draw(st.booleans()) else (lambda v: v.encode() + draw(st.sampled_from([b"", b"\xff"])))
    return Hit(
        ts=draw(st.sampled_from([DAY + 0.125, DAY + 86399.999, DAY + 86400 + 5.5, DAY + 400.001])),
        event_type=data["type"] if data else "pageview",
        site=header(draw(st.sampled_from(["www.Example.com:8000", "www.example.com", "site.test", "x" * 300]))),
        path=draw(st.one_of(st.sampled_from(["/", "/a", "/é" * 600]), st.text(max_size=20))),
        consent_id=draw(st.sampled_from(["c1", "c2", "c3", "blocked-one"])), policy_version="prop-1",
        purposes=frozenset(draw(st.lists(st.sampled_from(PURPOSE_IDS + ("necessary", "unknown")), max_size=4))),
        visitor_id=draw(st.sampled_from([None, "", "v1", "v2"])),
        peer_ip=draw(st.sampled_from(["127.0.0.1", "203.0.113.9", "2001:db8:1:2:3::1", "garbage", ""])),
        forwarded_for=header(draw(st.sampled_from(["", "203.0.113.5", "198.51.100.1, 10.0.0.1", "for=192.0.2.60",
                                                   "x"]))),
        user_agent=header(draw(st.sampled_from(AGENTS))),
        language=header(draw(st.sampled_from(["", "en-US,en;q=0.9", "kk", "*", "ru-RU;q=1"]))),
        referrer=header(draw(st.sampled_from(["", "https://www.google.com/?q=x", "https://site.test/a",
                                              "android-app://x"]))),
        campaign=draw(st.one_of(st.none(), st.dictionaries(
            st.sampled_from(["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "ref", "gclid",
                             "fbclid"]), st.text(max_size=4), min_size=1, max_size=4))),
        status=draw(st.integers(0, 599)), duration_ms=draw(st.one_of(st.integers(0, 100_000), st.floats(0, 100_000, allow_nan=False))), data=data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(purposes=st.lists(purpose_st, min_size=1, max_size=3), hits=st.lists(hit_st(), max_size=30),
       block=st.booleans(), trusted=st.sampled_from([[], ["127.0.0.0/8"], ["0.0.0.0/0", "::/0"]]))
def test_batch_matches_the_rules_hit_by_hit(purposes: list[dict[str, Any]], hits: list[Hit], block: bool,
                                            trusted: list[str]) -> None:
    policy = make_policy(purposes)
    enricher = Enricher(trusted, None, proof_key("test-secret"))
    minimiser = Minimiser(policy, enricher)
    blocked = {"blocked-one"} if block else set()
    minimiser.blocked = blocked.__contains__
    tables = minimiser.process(hits)
    expected = expected_tables(policy, enricher, hits, blocked)
    assert set(tables) == set(expected)
    for name, table in tables.items():
        purpose = policy[name.removeprefix("events_")]
        assert table.schema.equals(arrow_schema(columns_for(purpose)))
        got, want = stored_values(table), expected[name]
        ids = got.pop("event_id")
        want.pop("event_id")
        assert all(UUID4.fullmatch(i) for i in ids) and len(set(ids)) == len(ids)
        if "cls" in want:
            want["cls"] = [None if v is None else float(np.float32(v)) for v in want["cls"]]
        assert got == want
    kept = [h for h in hits if h.consent_id not in blocked]
    assert minimiser.counts.rows == sum(t.num_rows for t in tables.values()) <= 3 * len(kept)


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
    ua = AGENTS[2].encode()
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
