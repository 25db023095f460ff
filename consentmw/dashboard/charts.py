"""Inline SVG for the dashboard's time chart: nice axis ticks, no clipped labels.

Pure functions from numbers to markup (no I/O). Colours come from CSS classes, so the
chart follows the page's light or dark scheme; nothing needs a style attribute (the
dashboard runs under a CSP without 'unsafe-inline').
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Sequence

CHAR_W = 7.2          # average glyph width of the 12 px axis font, for layout
FONT_H = 12


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def nice_ticks(top: float, count: int = 4, integers: bool = True) -> list[float]:
    """Axis ticks from 0 in steps of 1, 2 or 5 × 10^n covering `top` with about `count`
    intervals; whole numbers only when the values are counts."""
    if top <= 0 or not math.isfinite(top):
        return [0, 1] if integers else [0, 0.5, 1]
    raw = top / count
    exp = 10 ** math.floor(math.log10(raw))
    step = next(m * exp for m in (1, 2, 5, 10) if m * exp >= raw)
    if integers:
        step = max(1, round(step))
    n = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def fmt(value: float) -> str:
    """Short number for labels: 950, 1.2k, 12k, 3.4M; decimals only when needed."""
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:.1f}M".replace(".0M", "M")
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k"
    if abs(value) >= 1000:
        return f"{value / 1000:.1f}k".replace(".0k", "k")
    if value == int(value):
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Size:
    width: int
    height: int


WIDE = Size(1100, 280)
NARROW = Size(360, 230)


def time_chart(chart_id: str, labels: Sequence[str], bars: Sequence[int], line: Sequence[int],
               bar_name: str, line_name: str, size: Size, title: str) -> str:
    """Columns for `bars` with a line for `line` drawn over them (the line has points and a
    halo, so where the values meet neither hides the other). Empty: a visible message."""
    w, h = size.width, size.height
    head = (f'<svg class="chart" id="{chart_id}" viewBox="0 0 {w} {h}" role="img" '
            f'aria-labelledby="{chart_id}-t {chart_id}-d"><title id="{chart_id}-t">{esc(title)}</title>')
    if not bars or max(max(bars), max(line, default=0)) <= 0:
        return (head + f'<desc id="{chart_id}-d">No data in this period.</desc>'
                f'<text class="empty" x="{w / 2:.0f}" y="{h / 2:.0f}" text-anchor="middle">No data in this period</text></svg>')
    ticks = nice_ticks(max(max(bars), max(line, default=0)))
    top = ticks[-1]
    tick_labels = [fmt(t) for t in ticks]
    pad_l = 10 + CHAR_W * max(len(t) for t in tick_labels)
    pad_r, pad_t, pad_b = 12, 10, 26
    plot_w, plot_h = w - pad_l - pad_r, h - pad_t - pad_b
    n = len(bars)
    slot = plot_w / n
    parts = [head, f'<desc id="{chart_id}-d">{esc(_describe(labels, bars, line, bar_name, line_name))}</desc>']
    for value, text in zip(ticks, tick_labels):
        y = pad_t + plot_h * (1 - value / top)
        parts.append(f'<line class="grid" x1="{pad_l:.1f}" x2="{w - pad_r}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{pad_l - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">{esc(text)}</text>')
    bar_w = max(1.0, slot * 0.72)
    for i, value in enumerate(bars):
        if value <= 0:
            continue
        bh = plot_h * value / top
        x = pad_l + slot * i + (slot - bar_w) / 2
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{pad_t + plot_h - bh:.1f}" width="{bar_w:.1f}" '
                     f'height="{bh:.1f}"><title>{esc(labels[i])}: {value:,} {esc(bar_name)}</title></rect>')
    points = [(pad_l + slot * (i + 0.5), pad_t + plot_h * (1 - v / top)) for i, v in enumerate(line)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    parts.append(f'<polyline class="halo" points="{path}"/><polyline class="line" points="{path}"/>')
    radius = 3 if slot >= 8 else 2
    for (x, y), label, value in zip(points, labels, line):
        parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="{radius}">'
                     f'<title>{esc(label)}: {value:,} {esc(line_name)}</title></circle>')
    # x labels: as many as fit without touching, always the first and the last
    widest = CHAR_W * max(len(label) for label in labels) + 10
    every = max(1, math.ceil(widest / slot))
    shown = sorted(set(range(0, n, every)) | {n - 1})
    if len(shown) > 1 and shown[-1] - shown[-2] < every:
        shown.pop(-2)
    base = pad_t + plot_h + FONT_H + 6
    for i in shown:
        x = pad_l + slot * (i + 0.5)
        anchor = "middle"
        half = CHAR_W * len(labels[i]) / 2
        if x - half < 0:
            x, anchor = 0.0, "start"
        elif x + half > w:
            x, anchor = float(w), "end"
        parts.append(f'<text class="tick" x="{x:.1f}" y="{base:.1f}" text-anchor="{anchor}">{esc(labels[i])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _describe(labels: Sequence[str], bars: Sequence[int], line: Sequence[int], bar_name: str, line_name: str) -> str:
    peak = max(range(len(bars)), key=lambda i: bars[i])
    return (f"{sum(bars):,} {bar_name} from {labels[0]} to {labels[-1]}; the busiest was {labels[peak]} "
            f"with {bars[peak]:,} {bar_name} and {line[peak]:,} {line_name}.")
