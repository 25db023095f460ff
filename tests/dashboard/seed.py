"""A known history for the dashboard tests: written through the real collector into chDB."""

from __future__ import annotations

import time
from typing import Any

from pathlib import Path

from consentmw.collect.hit import Hit
from consentmw.core.ledger import ConsentRecord

from tests.conftest import BROWSER_UA

DAY = 86400
IPHONE_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Version/17.1 Mobile/15E148 Safari/604.1")
STATS = frozenset({"statistics"})


def midnight(days_back: int = 0) -> int:
    return int(time.time()) // DAY * DAY - days_back * DAY


def seed(mw: Any, days: int = 20) -> None:
    """`days` days of traffic ending today: visitors with one to four page views, from
    Google, Bing, a campaign or directly, desktop and mobile, GB and US, plus vitals,
    outbound clicks, custom events, 404s (not page views) and consent decisions."""
    v = mw.policy.version
    submit = mw.collector.submit
    for back in range(days - 1, -1, -1):
        day = midnight(back) + 3600 * 2
        for i in range(2 + (back * 7) % 5):
            ip = f"81.2.{back % 250}.{i + 1}" if i % 3 else f"2.16.{back % 250}.{i + 1}"  # GB / US ranges in the mmdb
            ua = IPHONE_UA if i % 4 == 1 else BROWSER_UA
            ts = day + i * 300
            views = 1 + (i + back) % 4
            referrer = ("https://www.google.com/", "https://www.bing.com/", "", "https://news.ycombinator.com/")[i % 4]
            campaign = {"utm_source": "newsletter", "utm_campaign": f"spring{i % 2}"} if (i + back) % 5 == 0 else None
            paths = ("/", "/articles/a", "/articles/b", "/pricing")
            for n in range(views):
                path = paths[(i + n) % 4]
                submit(Hit(ts + n * 20, "pageview", "site.test", path, f"c{back}-{i}", v, STATS, None, ip, "", ua, "en",
                           referrer if n == 0 else "http://site.test/", campaign if n == 0 else None, 200, 3.5 + n))
                submit(Hit(ts + n * 20 + 5, "vitals", "site.test", path, f"c{back}-{i}", v, STATS, None, ip, "", ua,
                           "en", "", None, 0, 0,
                           {"lcp": 900 + 37 * i + 11 * n, "inp": 40 + 9 * i, "cls": 0.01 * (i % 3), "ttfb": 80 + n}))
            if i % 2 == 0:
                submit(Hit(ts + 200, "click", "site.test", paths[i % 4], f"c{back}-{i}", v, STATS, None, ip, "", ua,
                           "en", "", None, 0, 0, {"link_host": "docs.example", "link_path": "/guide" if i % 4 else "/api"}))
            if i % 3 == 1:
                submit(Hit(ts + 210, "custom", "site.test", "/pricing", f"c{back}-{i}", v, STATS, None, ip, "", ua,
                           "en", "", None, 0, 0, {"name": "signup", "props": {"plan": "pro"}}))
            submit(Hit(ts + 250, "pageview", "site.test", "/nope/", f"c{back}-{i}", v, STATS, None, ip, "", ua, "en",
                       "", None, 404, 0.3))
            granted = ["necessary", "statistics"] + (["personalisation"] if i % 2 else [])
            mw.collector.record(ConsentRecord(
                consent_id=f"c{back}-{i}", ts=ts - 5, action="grant" if i % 5 else "change", policy_version=v,
                granted=granted if i % 3 else ["necessary"], denied=[], source="banner", gpc=False, language="en",
                texts_hash="", page="/", peer_ip=ip, forwarded_for="", user_agent=ua, site="site.test"))
        # another site, to be filtered out
        submit(Hit(day + 4000, "pageview", "other.test", "/", f"o{back}", v, STATS, None, "81.2.200.1", "", BROWSER_UA,
                   "en", "", None, 200, 1.0))
    mw.collector.flush()


def geo_db(path: Path) -> Path:
    """A tiny GeoIP2-City database: 81.2.0.0/16 in GB, 2.16.0.0/16 in the US."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", languages=["en"], ipv4_compatible=True)
    writer.insert_network(IPSet(["81.2.0.0/16"]), {"country": {"iso_code": "GB", "names": {"en": "United Kingdom"}}})
    writer.insert_network(IPSet(["2.16.0.0/16"]), {"country": {"iso_code": "US", "names": {"en": "United States"}}})
    writer.to_db_file(str(path))
    return path
