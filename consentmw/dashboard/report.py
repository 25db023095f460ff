"""`consentmw report`: a self-contained HTML report with inline SVG charts.

One file, no scripts, no external CSS, fonts or images: it can be mailed, archived or
opened offline. Charts: page views and unique visitors per day, top pages, traffic
sources, consent opt-in rate per purpose per day, and web-vitals p75 per day. Every chart
has a text alternative and its numbers in a table under it. Data comes from the analyst
views, so blocked visitors are left out.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, cast

PALETTE = ("#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#be185d")
W, H = 720, 260
PAD_L, PAD_R, PAD_T, PAD_B = 56, 16, 16, 40


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def _fmt(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    if value == int(value):
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass
class Chart:
    id: str
    title: str
    svg: str
    table: str
    marks: int           # bars / points drawn (0: the chart is empty)
    note: str = ""


def _frame(chart_id: str, title: str, desc: str, body: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="{chart_id}-t {chart_id}-d" '
            f'xmlns="http://www.w3.org/2000/svg"><title id="{chart_id}-t">{esc(title)}</title>'
            f'<desc id="{chart_id}-d">{esc(desc)}</desc>{body}</svg>')


def _empty(chart_id: str, title: str) -> str:
    return _frame(chart_id, title, "No data in this period.",
                  f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="empty">No data in this period</text>')


def _y_axis(top: float, unit: str = "") -> str:
    parts = []
    for i in range(5):
        value = top * i / 4
        y = PAD_T + (H - PAD_T - PAD_B) * (1 - i / 4)
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" class="gl"/>'
                     f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{esc(_fmt(value))}{unit}</text>')
    return "".join(parts)


def _x_labels(labels: Sequence[str], xs: Sequence[float]) -> str:
    every = max(1, math.ceil(len(labels) / 10))
    return "".join(f'<text x="{x:.1f}" y="{H - PAD_B + 16}" text-anchor="middle" class="tick">{esc(label)}</text>'
                   for i, (label, x) in enumerate(zip(labels, xs)) if i % every == 0)


def columns(chart_id: str, title: str, labels: Sequence[str], values: Sequence[float],
            overlay: tuple[str, Sequence[float]] | None = None, name: str = "value") -> tuple[str, int]:
    """Vertical bars (one per label), optionally with a line over them."""
    if not values or not any(values):
        return _empty(chart_id, title), 0
    top = _nice_max(max(list(values) + list(overlay[1] if overlay else [])))
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    step = plot_w / len(values)
    bar_w = max(2.0, step * 0.7)
    parts = [_y_axis(top)]
    xs = []
    for i, (label, value) in enumerate(zip(labels, values)):
        x = PAD_L + step * i + (step - bar_w) / 2
        h = plot_h * value / top
        xs.append(x + bar_w / 2)
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{PAD_T + plot_h - h:.1f}" width="{bar_w:.1f}" '
                     f'height="{h:.1f}" fill="{PALETTE[0]}"><title>{esc(label)}: {esc(_fmt(value))} {esc(name)}'
                     f'</title></rect>')
    if overlay:
        points = " ".join(f"{x:.1f},{PAD_T + plot_h * (1 - v / top):.1f}" for x, v in zip(xs, overlay[1]))
        parts.append(f'<polyline class="line" points="{points}" fill="none" stroke="{PALETTE[1]}" stroke-width="2.5"/>')
    parts.append(_x_labels(labels, xs))
    desc = f"{name} per day, from {labels[0]} to {labels[-1]}; highest {_fmt(max(values))}."
    return _frame(chart_id, title, desc, "".join(parts)), len(values)


def bars(chart_id: str, title: str, items: Sequence[tuple[str, float]], unit: str = "") -> tuple[str, int]:
    """Horizontal bars, largest first."""
    if not items:
        return _empty(chart_id, title), 0
    items = list(items)[:10]
    top = max(v for _, v in items) or 1
    row_h = (H - 16) / max(len(items), 5)
    label_w = 230
    parts = []
    for i, (label, value) in enumerate(items):
        y = 8 + i * row_h
        w = (W - label_w - 70) * value / top
        short = label if len(label) <= 34 else label[:33] + "…"
        parts.append(f'<text x="{label_w - 8}" y="{y + row_h * 0.62:.1f}" text-anchor="end" class="label">'
                     f'{esc(short)}</text>'
                     f'<rect class="bar" x="{label_w}" y="{y + row_h * 0.15:.1f}" width="{max(w, 1):.1f}" '
                     f'height="{row_h * 0.7:.1f}" fill="{PALETTE[i % len(PALETTE)] if unit == "%" else PALETTE[0]}">'
                     f'<title>{esc(label)}: {esc(_fmt(value))}{unit}</title></rect>'
                     f'<text x="{label_w + max(w, 1) + 6:.1f}" y="{y + row_h * 0.62:.1f}" class="value">'
                     f'{esc(_fmt(value))}{unit}</text>')
    desc = "; ".join(f"{label}: {_fmt(value)}{unit}" for label, value in items[:5])
    return _frame(chart_id, title, desc, "".join(parts)), len(items)


def lines(chart_id: str, title: str, labels: Sequence[str], series: Mapping[str, Sequence[float | None]],
          unit: str = "", top: float | None = None) -> tuple[str, int]:
    """One line per series over the same days; gaps where a value is missing."""
    values = [v for s in series.values() for v in s if v is not None]
    if not values:
        return _empty(chart_id, title), 0
    top = top or _nice_max(max(values))
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    step = plot_w / max(len(labels) - 1, 1)
    xs = [PAD_L + step * i if len(labels) > 1 else PAD_L + plot_w / 2 for i in range(len(labels))]
    parts = [_y_axis(top, unit)]
    marks = 0
    for n, (name, vals) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        segment: list[str] = []
        segments: list[list[str]] = []
        for x, v in zip(xs, vals):
            if v is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            y = PAD_T + plot_h * (1 - min(v, top) / top)
            segment.append(f"{x:.1f},{y:.1f}")
            parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                         f'<title>{esc(name)}: {esc(_fmt(v))}{unit}</title></circle>')
            marks += 1
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) > 1:
                parts.append(f'<polyline class="line" points="{" ".join(seg)}" fill="none" stroke="{colour}" '
                             f'stroke-width="2.5"/>')
    parts.append(_x_labels(labels, xs))
    legend = "".join(f'<span class="key"><i style="background:{PALETTE[n % len(PALETTE)]}"></i>{esc(name)}</span>'
                     for n, name in enumerate(series))
    desc = "; ".join(f"{name}: latest {_fmt(next((v for v in reversed(s) if v is not None), 0))}{unit}"
                     for name, s in series.items())
    return _frame(chart_id, title, desc, "".join(parts)) + f'<div class="legend">{legend}</div>', marks


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<details><summary>Numbers</summary><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></details>'


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:
            return "–"
        return _fmt(round(value, 3))
    return str(value)


# ----------------------------------------------------------------------------- data
@dataclass
class ReportData:
    days: list[dt.date]
    pageviews: list[int]
    visitors: list[int]
    top_pages: list[tuple[str, int]]
    sources: list[tuple[str, int]]
    consent: dict[str, list[float | None]]
    consent_totals: list[tuple[str, int, int, float, float]]
    vitals: dict[str, list[float | None]]
    vitals_overall: dict[str, float | None]
    choices: tuple[int, int, int, int] = (0, 0, 0, 0)
    sites: list[str] = field(default_factory=list)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if value != value else value


def collect(query: Callable[[str], list[tuple[Any, ...]]], database: str, days: int,
            today: dt.date | None = None, site: str | None = None) -> ReportData:
    """Read everything the report shows from the views (`query` returns result rows)."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    start = today - dt.timedelta(days=days - 1)
    span = [start + dt.timedelta(days=i) for i in range(days)]
    where = f"day BETWEEN toDate('{start}') AND toDate('{today}')"
    if site:
        if not all(ch.isalnum() or ch in ".-" for ch in site):
            raise ValueError(f"not a site host name: {site!r}")
        where += f" AND site = '{site}'"
    db = database
    daily = {d: (int(pv), int(v)) for d, pv, v in query(
        f"SELECT day, sum(pageviews), sum(visitors) FROM {db}.stats_daily_site WHERE {where} GROUP BY day")}
    top_pages = [(p, int(v)) for p, v in query(
        f"SELECT path, sum(pageviews) AS v FROM {db}.stats_daily WHERE {where} AND pageviews > 0 "
        f"GROUP BY path ORDER BY v DESC, path LIMIT 10")]
    sources = [(s, int(v)) for s, v in query(
        f"SELECT source, sum(pageviews) AS v FROM {db}.traffic_sources WHERE {where} "
        f"GROUP BY source ORDER BY v DESC, source LIMIT 10")]
    consent_rows = query(f"SELECT day, purpose, sum(opt_ins) / sum(decisions) FROM {db}.consent_daily "
                         f"WHERE {where} GROUP BY day, purpose ORDER BY purpose, day")
    consent: dict[str, dict[dt.date, float]] = {}
    for d, purpose, rate in consent_rows:
        consent.setdefault(purpose, {})[d] = float(rate) * 100
    totals = [(p, int(n), int(o), float(r) * 100, float(g) * 100) for p, n, o, r, g in query(
        f"SELECT purpose, sum(decisions) AS n, sum(opt_ins), sum(opt_ins) / n, sum(gpc_decisions) / n "
        f"FROM {db}.consent_daily WHERE {where} GROUP BY purpose ORDER BY purpose")]
    vitals_rows = {d: (lcp, inp, fcp, ttfb) for d, lcp, inp, fcp, ttfb in query(
        f"SELECT day, max(lcp_p75), max(inp_p75), max(fcp_p75), max(ttfb_p75) FROM {db}.stats_daily_site "
        f"WHERE {where} GROUP BY day")}
    vitals = {name: [_num(vitals_rows.get(d, (None,) * 4)[i]) for d in span]
              for i, name in enumerate(("LCP", "INP", "FCP", "TTFB"))}
    overall_where = where.replace("day BETWEEN", "toDate(ts) BETWEEN")
    from consentmw.store.views import blocked_subjects  # the same filter as the views
    overall = query(
        f"SELECT quantileExactInclusive(0.75)(lcp), quantileExactInclusive(0.75)(inp), "
        f"quantileExactInclusive(0.75)(cls), quantileExactInclusive(0.75)(fcp), quantileExactInclusive(0.75)(ttfb) "
        f"FROM {db}.events_statistics WHERE {overall_where} AND event_type IN ('vitals', 'timing') "
        f"AND consent_id NOT IN {blocked_subjects(db)}") if _has_table(query, db, "events_statistics") else [(None,) * 5]
    choices = query(f"SELECT sum(decisions), sum(accept_all), sum(reject_all), sum(custom) "
                    f"FROM {db}.consent_choices_daily WHERE {where}")
    sites = [r[0] for r in query(f"SELECT site FROM {db}.stats_daily_site WHERE {where} GROUP BY site "
                                 f"ORDER BY sum(pageviews) DESC LIMIT 5")]
    return ReportData(
        days=span, pageviews=[daily.get(d, (0, 0))[0] for d in span],
        visitors=[daily.get(d, (0, 0))[1] for d in span], top_pages=top_pages, sources=sources,
        consent={p: [v.get(d) for d in span] for p, v in consent.items()}, consent_totals=totals,
        vitals=vitals, vitals_overall=dict(zip(("LCP", "INP", "CLS", "FCP", "TTFB"), map(_num, overall[0]))),
        choices=cast("tuple[int, int, int, int]", tuple(int(x or 0) for x in choices[0])) if choices else (0, 0, 0, 0),
        sites=sites)


def _has_table(query: Callable[[str], list[tuple[Any, ...]]], db: str, table: str) -> bool:
    return bool(query(f"SELECT 1 FROM system.tables WHERE database = '{db}' AND name = '{table}'"))


# ----------------------------------------------------------------------------- render
def render(data: ReportData, title: str = "Site report") -> tuple[str, list[Chart]]:
    labels = [d.strftime("%d %b") for d in data.days]
    charts: list[Chart] = []
    svg, marks = columns("views", "Page views per day", labels, data.pageviews,
                         overlay=("unique visitors", data.visitors), name="page views")
    charts.append(Chart("views", "Page views per day", svg + '<div class="legend"><span class="key"><i style="background:'
                        f'{PALETTE[0]}"></i>page views</span><span class="key"><i style="background:{PALETTE[1]}">'
                        '</i>unique daily visitors</span></div>',
                        table(("day", "page views", "unique visitors"),
                              [(d.isoformat(), p, v) for d, p, v in zip(data.days, data.pageviews, data.visitors)]),
                        marks))
    svg, marks = bars("pages", "Top pages", data.top_pages)
    charts.append(Chart("pages", "Top pages", svg, table(("page", "views"), data.top_pages), marks))
    svg, marks = bars("sources", "Traffic sources", data.sources)
    charts.append(Chart("sources", "Traffic sources", svg, table(("source", "page views"), data.sources), marks))
    svg, marks = lines("consent", "Consent opt-in rate per purpose", labels, data.consent, unit="%", top=100)
    charts.append(Chart("consent", "Consent opt-in rate per purpose (% of decisions)", svg,
                        table(("purpose", "decisions", "opt-ins", "opt-in rate %", "GPC share %"), data.consent_totals),
                        marks))
    svg, marks = lines("vitals", "Web vitals p75 per day", labels, data.vitals, unit=" ms")
    charts.append(Chart("vitals", "Web vitals, 75th percentile per day (ms)", svg,
                        table(("day", *data.vitals), [(d.isoformat(), *(s[i] for s in data.vitals.values()))
                                                      for i, d in enumerate(data.days)]), marks))
    total_pv, total_decisions = sum(data.pageviews), data.choices[0]
    accept = f"{100 * data.choices[1] / total_decisions:.0f}%" if total_decisions else "–"
    reject = f"{100 * data.choices[2] / total_decisions:.0f}%" if total_decisions else "–"
    v = data.vitals_overall
    tiles = [("Page views", _fmt(total_pv)), ("Visitor-days", _fmt(sum(data.visitors))),
             ("Consent decisions", _fmt(total_decisions)), ("Accept all", accept), ("Reject all", reject),
             ("LCP p75", f"{v['LCP']:,.0f} ms" if v.get("LCP") is not None else "–"),
             ("INP p75", f"{v['INP']:,.0f} ms" if v.get("INP") is not None else "–"),
             ("CLS p75", _fmt(round(float(v["CLS"] or 0), 3)) if v.get("CLS") is not None else "–")]
    period = f"{data.days[0].isoformat()} – {data.days[-1].isoformat()}"
    sites = ", ".join(data.sites) if data.sites else "all sites"
    body = "".join(f'<section id="{c.id}"><h2>{esc(c.title)}</h2>{c.svg}{c.table}</section>' for c in charts)
    tiles_html = "".join(f'<div class="tile"><span>{esc(k)}</span><b>{esc(val)}</b></div>' for k, val in tiles)
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · {esc(period)}</title>
<style>{CSS}</style></head>
<body><main>
<header><h1>{esc(title)}</h1><p>{esc(period)} · {esc(sites)} · generated {esc(generated)} by consentmw.
Only visitors who consented to statistics are counted; visitors who blocked processing are left out.</p></header>
<div class="tiles">{tiles_html}</div>
<div class="grid">{body}</div>
<footer>Unique visitors are counted per day with a daily-changing hash and cannot be joined across days.
Percentiles are exact. No scripts, no external resources.</footer>
</main></body></html>
"""
    return page, charts


CSS = """
:root{color-scheme:light dark;--bg:#f8fafc;--fg:#0f172a;--muted:#475569;--card:#fff;--line:#e2e8f0}
@media (prefers-color-scheme:dark){:root{--bg:#0b1120;--fg:#e2e8f0;--muted:#94a3b8;--card:#111827;--line:#1f2937}}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1500px;margin:0 auto;padding:24px}h1{margin:0 0 4px;font-size:26px}
header p{margin:0;color:var(--muted)}h2{font-size:16px;margin:0 0 8px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin:20px 0}
.tile{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:10px 14px}
.tile span{display:block;color:var(--muted);font-size:13px}.tile b{font-size:22px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(620px,1fr));gap:16px}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px}
svg.chart{width:100%;height:auto;display:block}
line.gl{stroke:var(--line);stroke-width:1}.tick,.label,.value,.empty{fill:var(--muted);font-size:12px}
.label{fill:var(--fg)}.empty{font-size:15px}
.legend{display:flex;gap:16px;flex-wrap:wrap;font-size:13px;color:var(--muted);margin-top:4px}
.key i{display:inline-block;width:12px;height:12px;border-radius:3px;margin-right:6px;vertical-align:-1px}
details{margin-top:8px;font-size:13px}summary{cursor:pointer;color:var(--muted)}
table{border-collapse:collapse;width:100%;margin-top:6px}td,th{border-bottom:1px solid var(--line);padding:3px 8px;text-align:left}
footer{color:var(--muted);font-size:13px;margin-top:20px}
"""


def build(query: Callable[[str], list[tuple[Any, ...]]], database: str, days: int = 30,
          today: dt.date | None = None, site: str | None = None, title: str = "Site report") -> tuple[str, list[Chart]]:
    if days < 1 or days > 3660:
        raise ValueError("--days must be between 1 and 3660")
    return render(collect(query, database, days, today, site), title)
