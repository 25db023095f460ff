"""`consentmw report`: the live dashboard's page as one self-contained file."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from consentmw.dashboard.queries import load
from consentmw.dashboard.report import build, filters_for

from tests.dashboard.seed import geo_db, seed
from tests.test_views import site


def query_fn(ch: Any) -> Any:
    return lambda sql, params: ch.query(sql, parameters=params).result_rows


async def test_report_is_the_dashboard_in_one_file(make_app: Any, ch: Any, database: str, tmp_path: Path) -> None:
    mw = make_app(site(), geoip_db=str(geo_db(tmp_path / "geo.mmdb")))
    seed(mw, days=10)
    filters = filters_for(30)
    page = build(query_fn(ch), database, filters, title="Example")
    data = load(query_fn(ch), database, filters)
    # self-contained: no scripts, no links, no external resources, no form
    assert "<script" not in page.lower() and "<form" not in page
    assert not re.search(r"""(src|href)\s*=|url\(|@import""", page)
    assert "<style>" in page and ".kpis" in page
    # the same numbers as the live dashboard
    assert f'<p class="value">{int(data.kpis[1].value):,}</p>' in page
    for section in ("pages", "sources", "campaigns", "countries", "devices", "browsers", "links", "events", "vitals"):
        assert f'id="{section}"' in page
    assert "No data in this period" not in page


def test_report_days_are_checked() -> None:
    with pytest.raises(ValueError, match="--days"):
        filters_for(0)
    assert filters_for(7, today=dt.date(2026, 11, 30)).start == dt.date(2026, 11, 24)
    with pytest.raises(ValueError, match="site"):
        filters_for(7, site="bad site")
