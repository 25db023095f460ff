"""Rights against the dashboard's daily counts (real chDB): when statistics rows are
erasable (a policy whose `statistics` purpose keeps the visitor id), erasing a visitor
leaves nothing of theirs in `dashboard_daily` (its keys are paths, campaigns, link targets
and event names: a page only that visitor saw names them), in no version of any day, and
the numbers still equal the documented SQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from consentmw import Policy
from consentmw.collect.hit import Hit
from consentmw.dashboard.filters import parse
from consentmw.dashboard.queries import load

from tests.conftest import BROWSER_UA
from tests.dashboard.test_documented_sql import expected, run_documented, shown
from tests.test_rights import IP_A, closing, everything_mentioning, site, visitor


def linkable_statistics() -> Policy:
    policy = Policy.default()
    return dataclasses.replace(policy, purposes=tuple(
        dataclasses.replace(p, categories=p.categories | {"visitor_id"}) if p.id == "statistics" else p
        for p in policy.purposes))


async def test_an_erased_visitors_pages_leave_the_daily_counts(make_app: Any, ch: Any, database: str) -> None:
    mw = make_app(site(), policy=linkable_statistics())
    c, who = await visitor(mw, IP_A, ["/articles/a"])
    today = dt.datetime.now(dt.timezone.utc).date()
    everyone = frozenset({"statistics", "personalisation"})
    for back in (3, 2):  # their visits on closed days (as the collector stored them then)
        ts = dt.datetime.combine(today - dt.timedelta(days=back), dt.time(10)).replace(tzinfo=dt.timezone.utc)
        for path in ("/account/alice-private", "/articles/a"):
            mw.collector.submit(Hit(ts.timestamp(), "pageview", "site.test", path, who["consent_id"],
                                    mw.policy.version, everyone, who["visitor_id"], IP_A, "", BROWSER_UA, "en", "",
                                    None, 200, 3.0))
        mw.collector.submit(Hit(ts.timestamp() + 60, "pageview", "site.test", "/articles/a", "someone-else",
                                mw.policy.version, everyone, None, "81.2.69.9", "", BROWSER_UA, "en", "", None, 200,
                                3.0))
    mw.collector.flush()
    filters = parse({"range": "7d"}, today)

    def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return ch.query(sql, parameters=params).result_rows

    def command(sql: str, params: dict[str, Any]) -> Any:
        return ch.command(sql, parameters=params)

    def dashboard() -> Any:
        data = load(query, database, filters, rollup=True, command=command)
        assert shown(data) == expected(run_documented(ch, database, filters), filters)
        return data

    before = dashboard()
    assert ("/account/alice-private", 2, 2) in before.tables["pages"]
    assert "dashboard_daily" in everything_mentioning(ch, database, "alice-private")
    async with closing(c):
        r = await c.delete("/_consent/me")
        assert r.status_code == 200, r.text
    assert r.json()["receipt"]["tables"]["events_statistics"] == 5
    after = dashboard()  # recomputed without them
    assert "/account/alice-private" not in [row[0] for row in after.tables["pages"]]
    assert everything_mentioning(ch, database, "alice-private") == {}  # no older version keeps their page
