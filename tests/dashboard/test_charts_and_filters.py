"""Chart geometry (nice ticks, labels inside the picture, escaping) and filter validation."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from consentmw.dashboard.charts import NARROW, WIDE, fmt, nice_ticks, time_chart
from consentmw.dashboard.filters import FilterError, parse

TODAY = dt.date(2026, 11, 30)


@pytest.mark.parametrize("top", [1, 3, 7, 9, 10, 12, 17, 23, 49, 87, 101, 999, 1234, 56_789, 1_000_001])
def test_ticks_are_whole_1_2_5_steps_covering_the_top(top: int) -> None:
    ticks = nice_ticks(top)
    step = ticks[1] - ticks[0]
    assert ticks[0] == 0 and ticks[-1] >= top and ticks[-2] < top
    assert all(t == int(t) for t in ticks)                      # counts: no 12.5
    mantissa = step / 10 ** len(str(int(step))[1:])
    assert mantissa in (1, 2, 5), (top, ticks)
    assert (2 if top >= 4 else 1) <= len(ticks) - 1 <= 5
    assert all(abs((b - a) - step) < 1e-9 for a, b in zip(ticks, ticks[1:]))


def test_tick_labels_are_short() -> None:
    assert [fmt(v) for v in (0, 5, 950, 1000, 1500, 12_000, 2_500_000)] == ["0", "5", "950", "1k", "1.5k", "12k", "2.5M"]


def _texts(svg: str) -> list[tuple[float, str, str]]:
    return [(float(x), anchor, label) for x, anchor, label in
            re.findall(r'<text class="tick" x="([\d.]+)" y="[\d.]+" text-anchor="(\w+)">([^<]*)</text>', svg)]


@pytest.mark.parametrize("size", [WIDE, NARROW])
@pytest.mark.parametrize("n", [1, 7, 24, 30, 90, 366])
def test_labels_stay_inside_and_do_not_overlap(size: object, n: int) -> None:
    labels = [(dt.date(2026, 1, 1) + dt.timedelta(days=i)).strftime("%d %b") for i in range(n)]
    views = [(i * 37) % 101 + 1000 for i in range(n)]
    visitors = [v // 3 for v in views]
    svg = time_chart("c", labels, views, visitors, "page views", "visitors", size, "t")  # type: ignore[arg-type]
    width = size.width  # type: ignore[attr-defined]
    x_labels = [t for t in _texts(svg) if t[2] in labels]
    assert x_labels and x_labels[0][2] == labels[0] and x_labels[-1][2] == labels[-1]
    spans = []
    for x, anchor, label in x_labels:
        w = 7.2 * len(label)
        left = x - w / 2 if anchor == "middle" else x if anchor == "start" else x - w
        assert 0 <= left and left + w <= width, (label, x, anchor)
        spans.append((left, left + w))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no two labels touch
    # every y label fits left of the plot, and every column and point is drawn
    assert svg.count('<rect class="bar"') == n and svg.count('<circle class="point"') == n


def test_line_has_a_halo_and_points_so_equal_values_stay_visible() -> None:
    svg = time_chart("c", ["a", "b"], [5, 5], [5, 5], "views", "visitors", WIDE, "t")
    assert svg.index('class="halo"') < svg.index('class="line"') < svg.index('class="point"')


def test_empty_chart_says_so_and_text_is_escaped() -> None:
    assert "No data in this period" in time_chart("c", ["a"], [0], [0], "v", "u", WIDE, "t")
    svg = time_chart("c", ["<b>"], [3], [1], "views", "visitors", WIDE, "<script>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "<b>" not in svg


def test_ranges() -> None:
    assert (parse({}, TODAY).start, parse({}, TODAY).end) == (dt.date(2026, 11, 1), TODAY)
    today = parse({"range": "today"}, TODAY)
    assert today.days == 1 and today.hourly and today.previous == (dt.date(2026, 11, 29), dt.date(2026, 11, 29))
    week = parse({"range": "7d"}, TODAY)
    assert week.start == dt.date(2026, 11, 24) and week.previous == (dt.date(2026, 11, 17), dt.date(2026, 11, 23))
    custom = parse({"from": "2026-10-01", "to": "2026-10-31"}, TODAY)
    assert custom.range == "custom" and custom.days == 31
    assert custom.query(country="DE") == "?range=custom&from=2026-10-01&to=2026-10-31&country=DE"


@pytest.mark.parametrize("params,reason", [
    ({"range": "year"}, "range: one of"),
    ({"range": "custom", "from": "2026-10-01"}, "needs both from and to"),
    ({"from": "2026-13-01", "to": "2026-12-01"}, "from: not a date"),
    ({"from": "2026-11-02", "to": "2026-11-01"}, "from must not be after to"),
    ({"from": "1999-01-01", "to": "2026-11-01"}, "between 2000-01-01 and today"),
    ({"from": "2026-11-01", "to": "2030-01-01"}, "between 2000-01-01 and today"),
    ({"site": "evil.test' OR 1=1 --"}, "site: a host name"),
    ({"page": "no-slash"}, "page: a path"),
    ({"page": "/" + "a" * 1024}, "page: a path"),
    ({"source": "x" * 201}, "source: at most 200"),
    ({"source": "a\x00b"}, "control characters"),
    ({"country": "Germany"}, "country: a two-letter"),
    ({"device": "fridge"}, "device: one of"),
])
def test_bad_values_are_refused_with_a_reason(params: dict[str, str], reason: str) -> None:
    with pytest.raises(FilterError, match=re.escape(reason)):
        parse(params, TODAY)


def test_values_are_normalised() -> None:
    f = parse({"site": "Site.TEST", "country": "gb", "device": "Mobile", "source": " Google "}, TODAY)
    assert (f.site, f.country, f.device, f.source) == ("site.test", "GB", "mobile", "Google")
    # a quote in a value is data, never SQL: it travels as a query parameter
    assert parse({"source": "O'Reilly"}, TODAY).params()["source"] == "O'Reilly"
