"""The central promise, as a property: for random policies, consent states, requests and
beacons, every non-empty stored column belongs to a category of a purpose the visitor
granted, and no row exists for a purpose that was not granted."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings, strategies as st

from consentmw import ConsentMiddleware, Policy
from consentmw.core.fields import BY_NAME
from consentmw.core.policy import CATEGORIES
from tests.collect.test_enrichment import make_mmdb
from tests.conftest import BROWSER_UA, SECRET, site_app

PURPOSE_IDS = ("alpha", "beta", "gamma")

purpose_st = st.fixed_dictionaries({
    "categories": st.lists(st.sampled_from(CATEGORIES), unique=True, max_size=len(CATEGORIES)),
    "location_precision": st.sampled_from(["country", "city"]),
    "referrer_precision": st.sampled_from(["host", "full"]),
})
text_st = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
request_st = st.fixed_dictionaries({
    "path": st.sampled_from(["/", "/articles/a", "/articles/b"]),
    "query": st.sampled_from(["", "utm_source=s&utm_medium=m", "gclid=1&q=secret", "ref=x"]),
    "referrer": st.sampled_from(["", "https://www.google.com/?q=x", "https://site.test/a", "https://ex.org/p?id=1"]),
    "language": st.sampled_from(["", "en-US,en;q=0.9", "kk", "*"]),
    # addresses in the test GeoIP database (London, Almaty), one outside it, and garbage
    "forwarded": st.sampled_from(["", "81.2.69.160", "2a02:1810::99", "203.0.113.5", "garbage"]),
})
event_st = st.one_of(
    st.fixed_dictionaries({"type": st.just("pageview"), "path": st.just("/spa/x"),
                           "referrer": st.sampled_from(["", "https://ref.example/"])}),
    st.fixed_dictionaries({"type": st.just("timing"), "path": st.just("/"), "ttfb": st.integers(0, 5000)}),
    st.fixed_dictionaries({"type": st.just("vitals"), "path": st.just("/"), "cls": st.floats(0, 5)}),
    st.fixed_dictionaries({"type": st.just("click"), "path": st.just("/"), "url": st.just("https://o.example/z")}),
    st.fixed_dictionaries({"type": st.just("custom"), "path": st.just("/"), "name": st.just("evt"),
                           "props": st.dictionaries(st.sampled_from(["a", "b"]), text_st, max_size=2)}),
)


def make_policy(purposes: list[dict[str, Any]]) -> Policy:
    base = Policy.default()
    raw = [{"id": "necessary", "required": True, "categories": [], "retention_days": 30}]
    for pid, spec in zip(PURPOSE_IDS, purposes):
        raw.append({"id": pid, "retention_days": 30, "texts": {"en": {"title": pid}}, **spec})
    return Policy.from_dict({"version": "prop-1", "updated": "2026-11-21", "purposes": raw}, base=base)


def is_empty(value: Any) -> bool:
    if value is None or value in ("", 0, {}, []):
        return True
    if isinstance(value, ipaddress.IPv6Address):
        return value == ipaddress.IPv6Address("::")
    return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(purposes=st.lists(purpose_st, min_size=1, max_size=3),
       granted_mask=st.lists(st.booleans(), min_size=3, max_size=3),
       requests=st.lists(request_st, min_size=1, max_size=4),
       events=st.lists(event_st, max_size=5))
def test_only_granted_purposes_store_only_their_categories(chdb_dsn: str, ch: Any, tmp_path_factory: Any,
                                                           purposes: list[dict[str, Any]], granted_mask: list[bool],
                                                           requests: list[dict[str, Any]],
                                                           events: list[dict[str, Any]]) -> None:
    policy = make_policy(purposes)
    database = "p_" + uuid.uuid4().hex[:12]
    # a real GeoIP database: country and city columns are filled, so precision checks can fail
    geo = tmp_path_factory.getbasetemp() / "enforcement-geo.mmdb"
    if not geo.exists():
        make_mmdb(geo)
    mw = ConsentMiddleware(site_app(), secret_key=SECRET, clickhouse_dsn=chdb_dsn, database=database,
                           policy=policy, spool_dir=str(tmp_path_factory.mktemp("spool")),
                           trusted_proxies=["127.0.0.0/8"], geoip_db=str(geo))
    granted = [pid for pid, on in zip(PURPOSE_IDS[:len(purposes)], granted_mask) if on]

    async def drive() -> None:
        transport = httpx.ASGITransport(app=mw, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://site.test",
                                     headers={"user-agent": BROWSER_UA}) as c:
            r = await c.post("/_consent/choice", json={"granted": granted})
            assert r.status_code == 200
            for req in requests:
                headers = {k: v for k, v in (("referer", req["referrer"]), ("accept-language", req["language"]),
                                             ("x-forwarded-for", req["forwarded"])) if v}
                url = req["path"] + ("?" + req["query"] if req["query"] else "")
                assert (await c.get(url, headers=headers)).status_code == 200
            if events:
                r = await c.post("/_consent/collect", json={"events": events})
                assert r.status_code in (202, 204)

    try:
        asyncio.run(drive())
        mw.collector.flush()
        mw.collector.sink.client()
        for purpose in policy.collecting:
            table = f"{database}.events_{purpose.id}"
            result = ch.query(f"SELECT * FROM {table}")
            stored = [dict(zip(result.column_names, row)) for row in result.result_rows]
            if purpose.id not in granted:
                assert stored == [], f"{purpose.id} was not granted but has rows"
                continue
            for row in stored:
                for name, value in row.items():
                    column = BY_NAME[name]
                    if column.category is None or is_empty(value):
                        continue
                    assert column.category in purpose.categories, (purpose.id, name, value)
                    if column.precision == "city":
                        assert purpose.location_precision == "city", (purpose.id, name)
                    if column.precision == "full":
                        assert purpose.referrer_precision == "full", (purpose.id, name)
            expected = sum(1 for _ in requests) if "page" in purpose.categories else 0
            expected += sum(1 for e in events if {"pageview": "page", "timing": "timing", "vitals": "timing",
                                                  "click": "clicks", "custom": "clicks"}[e["type"]]
                            in purpose.categories)
            assert len(stored) == expected, (purpose.id, len(stored), expected)
    finally:
        mw.collector.stop()
        ch.command(f"DROP DATABASE IF EXISTS {database} SYNC")
