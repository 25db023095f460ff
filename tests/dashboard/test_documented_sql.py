"""Every dashboard panel agrees with the SQL documented in docs/analysts.md: the documented
copies are run on real chDB (with the documented filter fragments) and compared with what
the dashboard shows, for several ranges and filter combinations."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from consentmw.dashboard.filters import Filters, parse
from consentmw.dashboard.queries import SQL, Dashboard, load

from tests.dashboard.seed import geo_db, seed
from tests.test_views import site

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysts.md"


def documented() -> tuple[dict[str, str], dict[str, str]]:
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text("utf-8"), flags=re.S)
    panels, fragments = {}, {}
    for block in blocks:
        first, _, rest = block.partition("\n")
        if m := re.fullmatch(r"-- dashboard: (\w+)", first):
            panels[m.group(1)] = rest
        elif m := re.fullmatch(r"-- dashboard filter: (\w+)", first):
            fragments[m.group(1)] = rest.strip()
    return panels, fragments


def run_documented(ch: Any, database: str, filters: Filters) -> dict[str, list[tuple[Any, ...]]]:
    panels, fragments = documented()
    active = " ".join(fragments[name] for name in fragments if name in filters.active)
    site_only = fragments["site"] if filters.site else ""
    out = {}
    for name, sql in panels.items():
        sql = sql.replace("/*filters*/", active).replace("/*site*/", site_only).replace("consentmw.", f"{database}.")
        out[name] = ch.query(sql, parameters=filters.params()).result_rows
    return out


def shown(data: Dashboard) -> dict[str, Any]:
    """What the dashboard shows, in the shape of the documented queries' answers."""
    return {
        "kpis": {k.name: k.value for k in data.kpis},
        "previous": {k.name: k.previous for k in data.kpis},
        "series": [(b, v, u) for b, v, u in data.series if v or u],
        **data.tables,
        "sites": data.sites,
    }


def expected(rows: dict[str, list[tuple[Any, ...]]], filters: Filters) -> dict[str, Any]:
    periods = {bool(r[0]): r[1:] for r in rows["kpis"]}
    consent = {bool(r[0]): r[1:] for r in rows["consent"]}

    def kpis(current: bool) -> dict[str, Any]:
        visits, views, bounces = periods.get(current, (0, 0, 0))
        decisions, opt_ins = consent.get(current, (0, 0))
        return {"Visitors": visits, "Page views": views, "Views per visit": views / visits if visits else None,
                "Bounce rate": bounces / visits if visits else None,
                "Consent opt-in": opt_ins / decisions if decisions else None}

    def bucket(value: Any) -> dt.datetime:
        value = value if isinstance(value, dt.datetime) else dt.datetime.combine(value, dt.time(0))
        return value.replace(tzinfo=None)

    series = rows["hourly" if filters.hourly else "daily"]
    return {
        "kpis": kpis(True), "previous": kpis(False),
        "series": [(bucket(b), v, u) for b, v, u in series],
        **{name: rows[name] for name in ("pages", "sources", "campaigns", "countries", "devices", "browsers",
                                         "links", "events", "vitals")},
        "sites": [r[0] for r in rows["sites"]],
    }


@pytest.fixture
def seeded(make_app: Any, tmp_path: Path) -> Any:
    mw = make_app(site(), geoip_db=str(geo_db(tmp_path / "geo.mmdb")))
    seed(mw, days=20)
    return mw


VIEWS = [
    {}, {"range": "today"}, {"range": "7d"},
    {"range": "30d", "site": "site.test"},
    {"range": "30d", "country": "GB", "device": "desktop"},
    {"range": "7d", "source": "Google"},
    {"range": "30d", "source": "(direct)", "site": "site.test"},
    {"range": "30d", "page": "/pricing", "site": "site.test"},
    {"range": "custom", "from": "2000-01-01", "to": "2000-01-31"},
]


def test_the_documentation_has_every_panel_and_filter() -> None:
    panels, fragments = documented()
    assert set(panels) == set(SQL)
    assert set(fragments) == {"site", "page", "source", "country", "device"}


def loader(ch: Any, database: str, mode: str) -> Any:
    """`load` as the live route runs it (`rollup`: the daily roll-up, computed on demand),
    as `consentmw report` runs it (`raw`), or reading the roll-up without writing (`read`)."""

    def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return ch.query(sql, parameters=params).result_rows

    def command(sql: str, params: dict[str, Any]) -> Any:
        return ch.command(sql, parameters=params)

    def run(filters: Filters) -> Dashboard:
        return load(query, database, filters, rollup=mode != "raw", command=command if mode == "rollup" else None)

    return run


@pytest.mark.parametrize("mode", ["raw", "rollup", "read"])
async def test_every_panel_agrees_with_the_documented_sql(seeded: Any, ch: Any, database: str, mode: str) -> None:
    today = dt.datetime.now(dt.timezone.utc).date()
    run = loader(ch, database, mode)
    non_empty = 0
    for params in VIEWS:
        filters = parse(params, today)
        data = run(filters)
        assert shown(data) == expected(run_documented(ch, database, filters), filters), params
        non_empty += bool(data.tables["pages"])
    assert non_empty >= 6  # the comparisons were about real numbers, not empty panels
    days = ch.query(f"SELECT count() FROM {database}.dashboard_days").result_rows[0][0]
    assert (days > 0) == (mode == "rollup")  # only the live route writes the roll-up


async def test_the_rollup_follows_late_rows_and_blocking(seeded: Any, ch: Any, database: str) -> None:
    """A closed day's roll-up is recomputed when its rows change: a late page view (a spool
    replayed after an outage), a visitor blocked, the same visitor unblocked. Every time
    the panels agree with the documented SQL."""
    today = dt.datetime.now(dt.timezone.utc).date()
    run = loader(ch, database, "rollup")
    filters = parse({"range": "7d"}, today)

    def check() -> Dashboard:
        data = run(filters)
        assert shown(data) == expected(run_documented(ch, database, filters), filters)
        return data

    first = check()
    versions = ch.query(f"SELECT count() FROM {database}.dashboard_days").result_rows[0][0]
    assert check().kpis == first.kpis  # nothing changed: nothing recomputed
    assert ch.query(f"SELECT count() FROM {database}.dashboard_days").result_rows[0][0] == versions
    # a late page view on a closed day, by a new visitor, on a page nobody else saw
    late = dt.datetime.combine(today - dt.timedelta(days=3), dt.time(12, 0))
    ch.insert(f"{database}.events_statistics", [[late, "site.test", "pageview", "late-token", "/late", 200, 424242]],
              column_names=["ts", "site", "event_type", "consent_id", "path", "status", "visitor_hash"])
    after = check()
    assert after.kpis[0].value == first.kpis[0].value + 1 and after.kpis[1].value == first.kpis[1].value + 1
    assert ("/late", 1, 1) in after.tables["pages"]
    # blocking that visitor's day token takes the page view out again; unblocking brings it back
    now = dt.datetime.now(dt.timezone.utc)
    ch.insert(f"{database}.blocked_visitors", [["late-token", 1, now]], column_names=["subject", "blocked", "ts"])
    assert check().kpis[1].value == first.kpis[1].value
    ch.insert(f"{database}.blocked_visitors", [["late-token", 0, now + dt.timedelta(seconds=1)]],
              column_names=["subject", "blocked", "ts"])
    assert check().kpis[1].value == first.kpis[1].value + 1


async def test_filters_narrow_every_panel(seeded: Any, ch: Any, database: str) -> None:
    today = dt.datetime.now(dt.timezone.utc).date()

    def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return ch.query(sql, parameters=params).result_rows

    everything = load(query, database, parse({}, today))
    mobile = load(query, database, parse({"device": "mobile"}, today))
    assert [r[0] for r in mobile.tables["devices"]] == ["mobile"]
    assert {r[0] for r in mobile.tables["browsers"]} == {"Mobile Safari"}
    assert 0 < mobile.kpis[1].value < everything.kpis[1].value
    gb = load(query, database, parse({"country": "GB"}, today))
    assert [r[0] for r in gb.tables["countries"]] == ["GB"]
    google = load(query, database, parse({"source": "Google"}, today))
    assert [r[0] for r in google.tables["sources"]] == ["Google"]
    # the source filter keeps whole visits: their later (internal) page views count too
    assert google.kpis[1].value > google.kpis[0].value
    pricing = load(query, database, parse({"page": "/pricing"}, today))
    assert [r[0] for r in pricing.tables["pages"]] == ["/pricing"]
    assert [r[0] for r in pricing.tables["vitals"]] == ["/pricing"]
    assert [r[0] for r in pricing.tables["events"]] == ["signup"]
    other = load(query, database, parse({"site": "other.test"}, today))
    assert other.tables["vitals"] == [] and other.kpis[0].value == 20
    # error pages are never page views
    assert "/nope/" not in [r[0] for r in everything.tables["pages"]]


@pytest.mark.parametrize("mode", ["raw", "rollup"])
async def test_panels_agree_while_a_visitor_is_blocked(seeded: Any, ch: Any, database: str, mode: str) -> None:
    """The dashboard leaves the blocked-visitor condition out only while nobody is blocked:
    once a visitor's day token is blocked, every panel (plain and with the source filter,
    which takes the one-pass path) still matches the documented SQL, and their page views
    are gone from the numbers."""
    today = dt.datetime.now(dt.timezone.utc).date()
    run = loader(ch, database, mode)
    before = run(parse({}, today))
    token, views = ch.query(f"SELECT consent_id, count() FROM {database}.events_statistics "
                            f"WHERE event_type = 'pageview' AND status = 200 AND consent_id != '' "
                            f"GROUP BY consent_id ORDER BY count() DESC, consent_id LIMIT 1").result_rows[0]
    ch.insert(f"{database}.blocked_visitors", [[token, 1, dt.datetime.now(dt.timezone.utc)]],
              column_names=["subject", "blocked", "ts"])
    for params in ({}, {"source": "Google"}, {"range": "7d"}):
        filters = parse(params, today)
        data = run(filters)
        assert shown(data) == expected(run_documented(ch, database, filters), filters), params
    assert run(parse({}, today)).kpis[1].value == before.kpis[1].value - views


async def test_without_the_rollup_tables_the_dashboard_reads_the_rows(seeded: Any, ch: Any, database: str,
                                                                      caplog: Any) -> None:
    """A store migrated by an older version (auto-migration off) has no roll-up tables yet:
    the live dashboard still shows the documented numbers, from the statistics table."""
    ch.command(f"DROP TABLE {database}.dashboard_days")
    today = dt.datetime.now(dt.timezone.utc).date()
    for params in ({}, {"source": "Google"}):
        filters = parse(params, today)
        assert shown(loader(ch, database, "rollup")(filters)) == expected(run_documented(ch, database, filters),
                                                                          filters)
    assert "daily counts are unavailable" in caplog.text


async def test_a_store_that_refuses_writes_still_gets_the_numbers(seeded: Any, ch: Any, database: str,
                                                                  caplog: Any) -> None:
    """The roll-up cannot be written (a read-only user, a full disk): closed days are counted
    from the rows in the same query, and nothing is recorded as computed."""
    today = dt.datetime.now(dt.timezone.utc).date()

    def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return ch.query(sql, parameters=params).result_rows

    def refusing(sql: str, params: dict[str, Any]) -> Any:  # ClickHouse refuses the write itself
        return ch.command(sql.replace(f"INSERT INTO {database}.", "INSERT INTO no_such_database."),
                          parameters=params)

    filters = parse({"range": "7d"}, today)
    data = load(query, database, filters, rollup=True, command=refusing)
    assert shown(data) == expected(run_documented(ch, database, filters), filters)
    assert "could not store the dashboard's daily counts" in caplog.text
    assert ch.query(f"SELECT count() FROM {database}.dashboard_days").result_rows[0][0] == 0
