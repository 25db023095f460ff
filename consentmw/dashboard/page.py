"""The dashboard page: KPI row, time chart, side-by-side tables, filter form.

One renderer for both uses: live (`{prefix}/admin/dashboard`, the stylesheet linked from
`{prefix}/admin/dashboard.css`, no inline style or script, so a strict CSP holds) and as
one self-contained file (`consentmw report`: the stylesheet inlined, no form). No script
at all: filters are a plain GET form and links, the server renders every view.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Sequence

from consentmw.dashboard.charts import NARROW, WIDE, esc, fmt, time_chart
from consentmw.dashboard.filters import DEVICES, FILTERS, RANGES, Filters
from consentmw.dashboard.queries import KPI, Dashboard


def _kpi_value(kpi: KPI) -> str:
    if kpi.value is None:
        return "–"
    if kpi.kind == "percent":
        return f"{100 * kpi.value:.0f}%"
    if kpi.kind == "ratio":
        return f"{kpi.value:.2f}"
    return f"{int(kpi.value):,}"


def _kpi(kpi: KPI, days: int) -> str:
    change = kpi.change
    span = "the previous day" if days == 1 else f"the previous {days} days"
    if change is None:
        said = "was 0 over" if kpi.previous == 0 and kpi.value else "no data for"
        delta = f'<span class="delta flat">{said} {esc(span)}</span>'
    else:
        good = (change > 0) == (kpi.better == "up")
        tone = "flat" if abs(change) < 0.005 else ("good" if good else "bad")
        arrow = "▲" if change > 0 else "▼" if change < 0 else "="
        delta = (f'<span class="delta {tone}"><span aria-hidden="true">{arrow}</span> '
                 f'{"+" if change > 0 else "−" if change < 0 else ""}{abs(change) * 100:.0f}% '
                 f'<span class="vs">vs {esc(span)}</span></span>')
    return f'<div class="kpi"><h2>{esc(kpi.name)}</h2><p class="value">{_kpi_value(kpi)}</p>{delta}</div>'


def _width_class(value: float, top: float) -> str:
    return f"w{int(round(20 * value / top)) * 5 if top else 0}"


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, key: str,
           filters: Filters, live: bool, filter_name: str | None = None, note: str = "",
           empty: str = "Nothing in this period", more: str = "", level: int = 2) -> str:
    """A ranked table: first column the name (a filter link when live), bar behind it
    proportional to the last column."""
    if not rows:
        body = f'<p class="none">{esc(empty)}</p>'
    else:
        top = max(float(r[-1] or 0) for r in rows) or 1.0
        head = "".join(f'<th scope="col"{" class=num" if i else ""}>{esc(h)}</th>' for i, h in enumerate(headers))
        lines = []
        for row in rows:
            name = str(row[0]) if row[0] not in (None, "") else "(unknown)"
            label = esc(name)
            if live and filter_name and row[0] not in (None, "") and not getattr(filters, filter_name):
                label = f'<a href="{esc(filters.query(**{filter_name: str(row[0])}))}">{label}</a>'
            bar = f'<span class="bar {_width_class(float(row[-1] or 0), top)}" aria-hidden="true"></span>'
            cells = "".join(f'<td class="num">{_cell(v)}</td>' for v in row[1:])
            # the full name as a title: long ones are cut with an ellipsis on wide screens
            lines.append(f'<tr><th scope="row">{bar}<span class="name" title="{esc(name)}">{label}</span></th>'
                         f'{cells}</tr>')
        body = f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>'
    note_html = f'<p class="note">{esc(note)}</p>' if note else ""
    if level == 3:  # a second table inside another panel
        return f'<div class="sub-table" id="{key}"><h3>{esc(title)}</h3>{body}{note_html}</div>'
    return f'<section class="card" id="{key}"><h2>{esc(title)}</h2>{body}{note_html}{more}</section>'


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:
            return "–"
        return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.2f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return esc(value)


def _vitals_rows(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    out = []
    for path, samples, lcp, inp, cls, ttfb in rows:
        out.append((path, _ms(lcp), _ms(inp), None if cls is None or cls != cls else round(float(cls), 3),
                    _ms(ttfb), int(samples)))
    return out


def _ms(value: Any) -> int | None:
    return None if value is None or value != value else int(round(float(value)))


def _bucket_label(bucket: dt.datetime, hourly: bool) -> str:
    return bucket.strftime("%H:00") if hourly else bucket.strftime("%d %b").lstrip("0")


def _form(data: Dashboard) -> str:
    f = data.filters
    ranges = "".join(f'<option value="{k}"{" selected" if k == f.range else ""}>{esc(v)}</option>'
                     for k, v in RANGES.items())
    sites = "".join(f'<option value="{esc(s)}"{" selected" if s == f.site else ""}>{esc(s)}</option>'
                    for s in sorted(set(data.sites) | ({f.site} if f.site else set())))
    devices = "".join(f'<option value="{d}"{" selected" if d == f.device else ""}>{d}</option>' for d in DEVICES)
    countries = "".join(f'<option value="{esc(r[0])}"></option>' for r in data.tables.get("countries", []) if r[0])
    sources = "".join(f'<option value="{esc(r[0])}"></option>' for r in data.tables.get("sources", []))
    pages = "".join(f'<option value="{esc(r[0])}"></option>' for r in data.tables.get("pages", []))

    def field(name: str, label: str, control: str) -> str:
        return f'<div class="field"><label for="f-{name}">{label}</label>{control}</div>'

    def text(name: str, label: str, listed: str, placeholder: str) -> str:
        return field(name, label, f'<input id="f-{name}" name="{name}" value="{esc(getattr(f, name))}" '
                                  f'list="{name}-list" placeholder="{placeholder}" autocomplete="off">'
                                  f'<datalist id="{name}-list">{listed}</datalist>')

    active = "".join(f'<a class="chip" href="{esc(f.query(**{k: ""}))}" aria-label="Remove filter {k}: {esc(v)}">'
                     f'{k}: {esc(v)} <span aria-hidden="true">×</span></a>' for k, v in f.active.items())
    return f"""<form class="filters" method="get" aria-label="Date range and filters">
{field("range", "Range", f'<select id="f-range" name="range">{ranges}</select>')}
{field("from", "From", f'<input id="f-from" type="date" name="from" value="{f.start.isoformat()}">')}
{field("to", "To", f'<input id="f-to" type="date" name="to" value="{f.end.isoformat()}">')}
{field("site", "Site", f'<select id="f-site" name="site"><option value="">All sites</option>{sites}</select>')}
{text("page", "Page", pages, "/path")}
{text("source", "Source", sources, "any")}
{text("country", "Country", countries, "DE")}
{field("device", "Device", f'<select id="f-device" name="device"><option value="">All devices</option>{devices}</select>')}
<button type="submit">Apply</button>
</form>{f'<p class="chips">{active}</p>' if active else ""}"""


def render(data: Dashboard, *, title: str = "Dashboard", live: bool = True, stylesheet: str = "",
           generated: dt.datetime | None = None) -> str:
    """The whole page. Live: `stylesheet` is the URL of the CSS; a file: the CSS inlined."""
    f = data.filters
    labels = [_bucket_label(b, f.hourly) for b, _, _ in data.series]
    views = [v for _, v, _ in data.series]
    visitors = [u for _, _, u in data.series]
    chart_title = f"Page views and visitors per {'hour' if f.hourly else 'day'}"
    wide = time_chart("chart-wide", labels, views, visitors, "page views", "visitors", WIDE, chart_title)
    narrow = time_chart("chart-narrow", labels, views, visitors, "page views", "visitors", NARROW, chart_title)
    numbers = "".join(f"<tr><th scope=row>{esc(b.isoformat(sep=' ', timespec='minutes') if f.hourly else b.date().isoformat())}"
                      f"</th><td class=num>{v:,}</td><td class=num>{u:,}</td></tr>" for b, v, u in data.series)
    t = data.tables
    scope = " · ".join(f"{k} {v}" for k, v in f.active.items()) or "all pages, sources, countries and devices"
    kpis = "".join(_kpi(k, f.days) for k in data.kpis)
    cards = [
        _table("Top pages", ("Page", "Visitors", "Views"), t["pages"], key="pages", filters=f, live=live,
               filter_name="page"),
        _table("Sources", ("Source", "Visits", "Views"), t["sources"], key="sources", filters=f, live=live,
               filter_name="source", note="The source of a visit is the referrer or campaign of its first page view."),
        _table("Campaigns", ("Campaign", "Visitors", "Views"), t["campaigns"], key="campaigns", filters=f, live=live,
               empty="No tagged campaign visits in this period"),
        _table("Countries", ("Country", "Visitors", "Views"), t["countries"], key="countries", filters=f, live=live,
               filter_name="country"),
        _table("Devices", ("Device", "Visitors", "Views"), t["devices"], key="devices", filters=f, live=live,
               filter_name="device", more=_table("Browsers", ("Browser", "Visitors", "Views"), t["browsers"],
                                                  key="browsers", filters=f, live=live, level=3)),
        _table("Outbound links", ("Link", "Visitors", "Clicks"), t["links"], key="links", filters=f, live=live,
               empty="No outbound clicks in this period"),
        _table("Custom events", ("Event", "Visitors", "Events"), t["events"], key="events", filters=f, live=live,
               empty="No custom events in this period"),
        _table("Web vitals, 75th percentile", ("Page", "LCP ms", "INP ms", "CLS", "TTFB ms", "Samples"),
               _vitals_rows(t["vitals"]), key="vitals", filters=f, live=live, filter_name="page",
               note="Good: LCP ≤ 2,500 ms, INP ≤ 200 ms, CLS ≤ 0.1 (measured in visitors' browsers)."),
    ]
    when = (generated or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    style = (f'<link rel="stylesheet" href="{esc(stylesheet)}">' if live else f"<style>{CSS}</style>")
    controls = _form(data) if live else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{esc(title)} · {esc(f.label())}</title>
{style}
</head>
<body><main>
<header><h1>{esc(title)}</h1>
<p class="sub">{esc(RANGES[f.range])} · {esc(f.label())} (UTC) · {esc(scope)}</p></header>
{controls}
<section class="kpis" aria-label="Key figures">{kpis}</section>
<section class="card chart" id="traffic"><h2>{esc(chart_title)}</h2>
<div class="wide">{wide}</div><div class="narrow">{narrow}</div>
<p class="legend"><span class="key views" aria-hidden="true"></span>Page views
<span class="key visitors" aria-hidden="true"></span>Visitors</p>
<details><summary>Numbers</summary><table><thead><tr><th scope="col">{'Hour' if f.hourly else 'Day'}</th>
<th scope="col" class="num">Page views</th><th scope="col" class="num">Visitors</th></tr></thead><tbody>{numbers}</tbody></table></details>
</section>
<div class="grid">{"".join(cards)}</div>
<footer><p>Visitors are counted per day: the visitor code changes daily by design, so a visit is one visitor on one day.
Only visitors who consented to statistics are counted, only pages served successfully count as page views, and
visitors who blocked processing are left out. Consent opt-in: the share of consent decisions that granted statistics
(filtered by site only). Generated {esc(when)} by consentmw. The SQL behind every panel is in docs/analysts.md.</p></footer>
</main></body></html>
"""


def notice(heading: str, message: str, *, title: str = "Dashboard", live: bool = True, stylesheet: str = "") -> str:
    """A page that explains why there is no dashboard to show (e.g. no statistics purpose)."""
    style = (f'<link rel="stylesheet" href="{esc(stylesheet)}">' if live else f"<style>{CSS}</style>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{esc(title)} · {esc(heading)}</title>
{style}
</head>
<body><main>
<header><h1>{esc(title)}</h1></header>
<section class="card notice" role="status"><h2>{esc(heading)}</h2><p>{esc(message)}</p></section>
</main></body></html>
"""


_WIDTHS = "".join(f".w{n}{{width:{n}%}}" for n in range(0, 101, 5))

CSS = """
:root{color-scheme:light dark;--bg:#f6f7f9;--fg:#111827;--muted:#4b5563;--card:#fff;--line:#e5e7eb;
--bar:#c7d7fe;--accent:#1d4ed8;--line2:#b45309;--good:#047857;--bad:#b91c1c;--row:#eef2ff}
@media (prefers-color-scheme:dark){:root{--bg:#0b1020;--fg:#e5e7eb;--muted:#9ca3af;--card:#131a2b;--line:#263046;
--bar:#1e3a8a;--accent:#93b4ff;--line2:#fbbf24;--good:#34d399;--bad:#f87171;--row:#1a2440}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1240px;margin:0 auto;padding:20px 16px 32px}
h1{margin:0;font-size:24px}h2{margin:0 0 10px;font-size:15px}
.sub{margin:2px 0 0;color:var(--muted);font-size:14px;overflow-wrap:anywhere}
a{color:var(--accent)}
.filters{display:flex;flex-wrap:wrap;gap:8px 12px;align-items:end;margin:16px 0 8px;padding:12px;
background:var(--card);border:1px solid var(--line);border-radius:10px}
.field,.filters label.field{display:flex;flex-direction:column;gap:2px;min-width:0}
.filters label{font-size:12px;color:var(--muted)}
.filters input,.filters select,.filters button{font:inherit;font-size:14px;padding:5px 8px;border:1px solid var(--line);
border-radius:6px;background:var(--bg);color:var(--fg);min-height:34px}
.filters input{width:8em}.filters input[type=date]{width:auto}
.filters button{background:var(--accent);color:var(--card);border-color:var(--accent);font-weight:600;cursor:pointer}
:focus-visible{outline:3px solid var(--accent);outline-offset:2px}
.chips{display:flex;flex-wrap:wrap;gap:6px;margin:0 0 8px}
.chip{font-size:13px;padding:2px 10px;border:1px solid var(--line);border-radius:999px;background:var(--card);text-decoration:none}
.kpis{display:grid;grid-template-columns:repeat(5,minmax(0,1fr));gap:10px;margin:12px 0}
.kpi{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:10px 14px;min-width:0}
.kpi h2{font-size:13px;font-weight:500;color:var(--muted);margin:0}
.kpi .value{font-size:26px;font-weight:700;margin:2px 0;font-variant-numeric:tabular-nums}
.delta{font-size:12.5px;color:var(--muted)}.delta.good{color:var(--good)}.delta.bad{color:var(--bad)}
.delta .vs{color:var(--muted)}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;min-width:0}
.chart .narrow{display:none}
svg.chart{display:block;width:100%;height:auto}
svg .grid{stroke:var(--line);stroke-width:1}svg .tick{fill:var(--muted);font-size:12px}
svg .bar{fill:var(--bar)}svg .line{fill:none;stroke:var(--line2);stroke-width:2.5}
svg .halo{fill:none;stroke:var(--card);stroke-width:6}
svg .point{fill:var(--line2);stroke:var(--card);stroke-width:1.5}svg .empty{fill:var(--muted);font-size:15px}
.legend{display:flex;gap:8px 16px;flex-wrap:wrap;align-items:center;margin:6px 0 0;font-size:13px;color:var(--muted)}
.key{display:inline-block;width:14px;height:10px;border-radius:2px;margin-right:-8px}
.key.views{background:var(--bar)}.key.visitors{height:3px;background:var(--line2)}
details{margin-top:8px;font-size:13px}summary{cursor:pointer;color:var(--muted)}
.grid{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));grid-auto-flow:dense;gap:12px;margin-top:12px}
.sub-table{margin-top:14px}h3{margin:0 0 6px;font-size:14px}
#vitals{grid-column:span 2}
table{width:100%;border-collapse:collapse;font-size:13.5px;font-variant-numeric:tabular-nums}
th,td{padding:4px 6px;text-align:left;border-bottom:1px solid var(--line)}
thead th{font-size:12px;font-weight:600;color:var(--muted)}
td.num,th.num{text-align:right;white-space:nowrap}
tbody th{font-weight:400;position:relative;max-width:0;width:60%;overflow:hidden}
tbody th .name{position:relative;display:block;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
tbody th .bar{position:absolute;left:0;top:3px;bottom:3px;background:var(--row);border-radius:3px}
.none,.note{color:var(--muted);font-size:13px;margin:6px 0 0}
footer{color:var(--muted);font-size:12.5px;margin-top:18px}
@media (max-width:1000px){.grid{grid-template-columns:repeat(2,minmax(0,1fr))}}
@media (max-width:640px){main{padding:12px 10px 24px}#vitals table{font-size:12.5px}#vitals th,#vitals td{padding:4px 3px}
#vitals thead th.num{white-space:normal}#vitals tbody th{width:40%}
#vitals tbody th .name{white-space:normal;overflow-wrap:anywhere}.grid{grid-template-columns:minmax(0,1fr)}#vitals{grid-column:auto}
.kpis{grid-template-columns:repeat(2,minmax(0,1fr))}.kpi:last-child{grid-column:span 2}.kpi .value{font-size:22px}
.chart .wide{display:none}.chart .narrow{display:block}.filters input{width:8em}h1{font-size:20px}}
""" + _WIDTHS
