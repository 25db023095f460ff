"""Scan results for people and machines: terminal summary, JSON, self-contained HTML.

The HTML report is one file with no scripts and no external resources (it opens offline
and can be attached to a CI run): a summary, then per page the three modes side by side.
Everything a site put in a cookie name, storage key or URL is escaped.
"""

from __future__ import annotations

import html
import json
from typing import Any

from consentmw.scan.cookies import describe_lifetime
from consentmw.scan.model import MODE_LABELS, MODES, SEVERITIES, Finding, Observation, ScanResult


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _clean(text: str, limit: int = 240) -> str:
    """One printable line (a hostile page cannot move the terminal's cursor)."""
    out = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return out if len(out) <= limit else out[: limit - 1] + "…"


# -- terminal -------------------------------------------------------------------------
def summary(result: ScanResult, *, verbose: bool = False) -> str:
    lines = [f"scanned {len(result.pages)} page(s) of {result.origin} in {result.seconds:.1f} s "
             f"(3 contexts each: {', '.join(MODE_LABELS[m] for m in MODES)})"]
    if result.stopped:
        lines.append(f"stopped early: {result.stopped}")
    if not result.consentmw_banner:
        lines.append("this site has no consentmw banner: listing what its pages set before any interaction")
    errors = [(p.url, o) for p in result.pages for o in p.observations.values() if o.error]
    for url, o in errors:
        lines.append(f"  ! {_clean(url)} [{MODE_LABELS[o.mode]}]: {_clean(o.error)}")
    by_sev = {s: [f for f in result.findings if f.severity == s] for s in SEVERITIES}
    for sev, title in (("violation", "VIOLATIONS"), ("warning", "warnings")):
        found = by_sev[sev]
        if not found:
            continue
        lines.append(f"{title} ({len(found)}):")
        # the same thing from the same source in several modes of one page: one entry
        grouped: dict[tuple[str, str, str, str], list[str]] = {}
        for f in found:
            grouped.setdefault((f.page, f.thing, f.source, f.known_as), []).append(MODE_LABELS[f.mode])
        for (page, thing, source, known), modes in grouped.items():
            lines.append(f"  {sev.upper() if sev == 'violation' else sev}  {_clean(page, 120)}  [{', '.join(modes)}]")
            lines.append(f"      {_clean(thing)}" + (f"  = {_clean(known)}" if known else ""))
            if source:
                lines.append(f"      from: {_clean(source)}")
    expected = by_sev["expected"]
    if expected:
        lines.append("after Accept all only (expected), by purpose:")
        per: dict[str, set[str]] = {}
        for f in expected:
            if f.kind in ("request", "cookie") or verbose:
                label = f.thing.split(" (")[0] + (f" = {f.known_as}" if f.known_as else "")
                per.setdefault(f.purpose or "unattributed", set()).add(_clean(label, 120))
        for purpose in sorted(per):
            lines.append(f"  {purpose}: {', '.join(sorted(per[purpose]))}")
        gated = sum(1 for f in expected if f.kind == "gated_script")
        if gated:
            lines.append(f"  gated scripts run after Accept all: {gated}")
    verdict = (f"{len(by_sev['violation'])} violation(s), {len(by_sev['warning'])} warning(s), "
               f"{len(expected)} expected after Accept all")
    lines.append(("FAIL: " if by_sev["violation"] else "clean: ") + verdict)
    return "\n".join(lines)


# -- JSON -------------------------------------------------------------------------------
def to_json(result: ScanResult) -> str:
    return json.dumps(result.as_dict(), ensure_ascii=False, indent=2)


# -- HTML -------------------------------------------------------------------------------
CSS = """
:root{color-scheme:light dark;--bad:#b3261e;--warn:#8a5a00;--ok:#1b6e3a;--line:#c8c8c8;--muted:#5f5f5f}
@media (prefers-color-scheme:dark){:root{--bad:#ff8a80;--warn:#ffcc66;--ok:#7ee2a0;--line:#444;--muted:#aaa}}
body{font:15px/1.45 system-ui,sans-serif;margin:1.5rem auto;max-width:110rem;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin:2rem 0 .5rem;word-break:break-all}h3{font-size:1rem;margin:.2rem 0 .4rem}
.cols{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:.75rem}
.col{border:1px solid var(--line);border-radius:6px;padding:.6rem .75rem;min-width:0}
ul{margin:.2rem 0 .6rem;padding-left:1.1rem}li{word-break:break-word;margin:.15rem 0}
.v{color:var(--bad);font-weight:600}.w{color:var(--warn);font-weight:600}.e{color:var(--ok)}
.muted,.src{color:var(--muted)}.src{font-size:.88em;display:block}
.sum td,.sum th{padding:.2rem .7rem;text-align:left;border-bottom:1px solid var(--line)}
table.sum{border-collapse:collapse;margin:.5rem 0 1rem}
@media (max-width:900px){.cols{grid-template-columns:1fr}}
"""


def _findings_for(findings: list[Finding], mode: str) -> list[Finding]:
    return [f for f in findings if f.mode == mode]


def _col(o: Observation, findings: list[Finding]) -> str:
    parts = [f"<h3>{esc(MODE_LABELS[o.mode])}</h3>"]
    if o.skipped:
        return parts[0] + f'<p class="muted">not run: {esc(o.skipped)}</p>'
    if o.error:
        parts.append(f'<p class="v">error: {esc(o.error)}</p>')
    b = o.banner
    if not b.consentmw:
        banner = "no consentmw banner"
    elif o.mode == "none":
        banner = "banner shown" if b.shown else "banner did not appear"
    else:
        banner = ("choice recorded: " + (", ".join(b.granted) or "nothing")) if b.working else f"banner failed: {b.detail}"
    parts.append(f'<p class="{"e" if b.shown and b.working is not False else "w"}">{esc(banner)}</p>')
    marks = {"violation": ("v", "violation"), "warning": ("w", "warning"), "expected": ("e", "after Accept")}
    if findings:
        items = "".join(
            f'<li><span class="{marks[f.severity][0]}">{marks[f.severity][1]}</span> {esc(f.thing)}'
            + (f" <b>= {esc(f.known_as)}</b>" if f.known_as else "")
            + (f" <i>({esc(f.purpose)})</i>" if f.purpose and f.severity == "expected" else "")
            + (f'<span class="src">from {esc(f.source)}</span>' if f.source else "") + "</li>"
            for f in findings)
        parts.append(f"<ul>{items}</ul>")

    def section(title: str, rows: list[str]) -> None:
        parts.append(f"<p><b>{esc(title)}</b> ({len(rows)})</p>" + (f"<ul>{''.join(rows)}</ul>" if rows else ""))

    section("cookies", [f"<li>{esc(c.name)} <span class=muted>{esc(c.domain)}, {c.party}-party, "
                        f"{esc(describe_lifetime(c.lifetime))}{'' if c.stored else ', refused'}</span>"
                        f'<span class="src">{esc(c.source)}</span></li>' for c in o.cookies])
    section("storage", [f"<li>{esc(s.kind)} {esc(s.key)} <span class=muted>{esc(s.origin)}</span></li>"
                        for s in o.storage])
    section("requests to other hosts", [f"<li>{esc(r.host)} <span class=muted>{esc(r.resource)}</span>"
                                        f'<span class="src">{esc(r.url[:200])} — {esc(r.initiator)}</span></li>'
                                        for r in o.requests])
    if o.gated:
        section("consent-gated scripts", [f"<li>{esc(g.script)} <span class=muted>({esc(' '.join(g.purposes))}): "
                                          f"{'ran' if g.ran else 'did not run'}</span></li>" for g in o.gated])
    return "".join(parts)


def to_html(result: ScanResult, title: str = "consentmw scan") -> str:
    rows = "".join(f"<tr><th>{esc(label)}</th><td>{esc(value)}</td></tr>" for label, value in (
        ("site", result.origin), ("pages", len(result.pages)), ("seconds", f"{result.seconds:.1f}"),
        ("violations", result.count("violation")), ("warnings", result.count("warning")),
        ("expected after Accept all", result.count("expected")),
        ("consentmw banner", "yes" if result.consentmw_banner else "no: only what is set before any interaction"),
        ("stopped early", result.stopped or "no"), ("browser", result.browser),
        ("policy version", result.policy_version)))
    pages = []
    for p in result.pages:
        n = sum(1 for f in p.findings if f.severity == "violation")
        badge = f'<span class="v">{n} violation(s)</span>' if n else '<span class="e">clean</span>'
        cols = "".join(f'<div class="col">{_col(p.observations[m], _findings_for(p.findings, m))}</div>'
                       for m in MODES if m in p.observations)
        pages.append(f"<section><h2>{esc(p.url)} — {badge}</h2><div class=\"cols\">{cols}</div></section>")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            # nothing in the file may load or run anything, whatever a scanned site put in it
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">'
            f"<title>{esc(title)}: {esc(result.origin)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(title)}: {esc(result.origin)}</h1><table class=\"sum\">{rows}</table>"
            f"{''.join(pages)}</body></html>\n")
