"""Banner size: what a first visit downloads for the banner, gzip, per language, beside the npm anchors.

Ours, measured through the real endpoints (ConsentAPI with its assets, no store), with
`Accept-Encoding: gzip` and counting the bytes on the wire: `banner.js`, `banner.css?v=`
and `/state?lang=xx` (the policy texts the banner fetches to draw itself), for en, ru and
kk. The beacon is listed apart: it is loaded only once statistics or personalisation is
granted. Anchors are installed by `npm install --prefix <tmp>` into a temporary directory
(skipped with --quick or --no-npm):

  vanilla-cookieconsent  dist/cookieconsent.umd.js + dist/cookieconsent.css (texts come from site config)
  klaro                  dist/klaro.js (CSS and all translations built in; the usual bundle)
                         dist/klaro-no-translations-no-css.js + dist/klaro-no-translations.min.css
  cookieconsent (Osano)  build/cookieconsent.min.js + build/cookieconsent.min.css (English texts built in)

Anchor files are counted at gzip -9 (Python's gzip.compress(data, 9, mtime=0)); ours as served.
Goal: a first visit (banner.js + banner.css + /state) <= 6,000 bytes in en, <= 7,500 in ru and kk.

    python benchmarks/bench_banner_size.py [--quick] [--no-npm]
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import ROOT, SECRET, Table, emit, parser  # noqa: E402

GOALS = {"en": 6_000, "ru": 7_500, "kk": 7_500}
STATIC = ROOT / "static"
ANCHORS: list[tuple[str, str, list[str]]] = [
    ("vanilla-cookieconsent", "vanilla-cookieconsent", ["dist/cookieconsent.umd.js", "dist/cookieconsent.css"]),
    ("klaro (klaro.js, CSS + translations built in)", "klaro", ["dist/klaro.js"]),
    ("klaro (no translations, no CSS + min CSS)", "klaro",
     ["dist/klaro-no-translations-no-css.js", "dist/klaro-no-translations.min.css"]),
    ("cookieconsent (Osano v3)", "cookieconsent", ["build/cookieconsent.min.js", "build/cookieconsent.min.css"]),
]


def gz(data: bytes) -> int:
    return len(gzip.compress(data, 9, mtime=0))


class _NoStore:
    """Serving the banner needs no store."""

    def submit(self, hit: Any) -> bool:
        return True

    def record(self, record: Any) -> None:
        pass


def served() -> dict[str, tuple[int, int]]:
    """(bytes on the wire, decoded bytes) of each response a first visit makes, through the real endpoints."""
    import httpx

    from consentmw.core.consent import ConsentCodec
    from consentmw.core.settings import Settings
    from consentmw.web import assets
    from consentmw.web.api import ConsentAPI

    settings = Settings.build({"secret_key": SECRET})
    api = ConsentAPI(settings, ConsentCodec(settings.secret_key, settings.policy), _NoStore())
    built = assets.register(api)
    out: dict[str, tuple[int, int]] = {}
    transport = httpx.ASGITransport(app=api)

    async def fetch() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://site.test",
                                     headers={"Accept-Encoding": "gzip"}) as c:
            paths = {"banner.js": "/_consent/banner.js",
                     "banner.css": f"/_consent/banner.css?v={built['banner.css'].digest}",
                     "beacon.js": f"/_consent/beacon.js?v={built['beacon.js'].digest}"}
            paths.update({f"state ({lang})": f"/_consent/state?lang={lang}" for lang in GOALS})
            for name, path in paths.items():
                r = await c.get(path)
                assert r.status_code == 200 and r.headers.get("content-encoding") == "gzip", (path, r.headers)
                out[name] = (r.num_bytes_downloaded, len(r.content))

    import asyncio

    asyncio.run(fetch())
    return out


def ours(table: Table) -> dict[str, int]:
    """Rows for our responses and the first-visit total per language; returns the totals."""
    got = served()
    table.add("consentmw banner.js", got["banner.js"][1], got["banner.js"][0], "", "static/banner.js, config embedded")
    table.add("consentmw banner.css", got["banner.css"][1], got["banner.css"][0], "", "static/banner.css")
    for lang in GOALS:
        name = f"state ({lang})"
        table.add(f"consentmw /state?lang={lang}", got[name][1], got[name][0], "", "policy texts, newcomer's answer")
    totals = {lang: got["banner.js"][0] + got["banner.css"][0] + got[f"state ({lang})"][0] for lang in GOALS}
    for lang, total in totals.items():
        table.add(f"consentmw first visit ({lang})", "", total, "1.00x" if lang == "en" else "",
                  "banner.js + banner.css + /state")
    table.add("consentmw beacon.js (after consent only)", got["beacon.js"][1], got["beacon.js"][0], "", "static/beacon.js")
    return totals


def npm_sizes(table: Table, ours_total: int | None) -> str:
    npm = shutil.which("npm")
    if npm is None:
        for label, _, _ in ANCHORS:
            table.add(label, "-", "npm missing", "-", "")
        return "npm not installed"
    tmp = tempfile.mkdtemp(prefix="bench-banner-npm-")
    try:
        res = subprocess.run([npm, "install", "--prefix", tmp, "--no-audit", "--no-fund", "--ignore-scripts",
                              "--loglevel=error", "vanilla-cookieconsent", "klaro", "cookieconsent"],
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            for label, _, _ in ANCHORS:
                table.add(label, "-", "npm failed", "-", "")
            return "npm install failed: " + res.stderr.strip()[-300:]
        versions = {}
        for label, package, files in ANCHORS:
            base = Path(tmp) / "node_modules" / package
            try:
                versions[package] = json.loads((base / "package.json").read_text())["version"]
            except (OSError, ValueError, KeyError):
                versions[package] = "?"
            raw = total = 0
            missing = [f for f in files if not (base / f).exists()]
            if missing:
                table.add(f"{label} {versions[package]}", "-", "missing " + ", ".join(missing), "-", "")
                continue
            for f in files:
                data = (base / f).read_bytes()
                raw += len(data)
                total += gz(data)
            table.add(f"{label} {versions[package]}", raw, total,
                      f"{total / ours_total:.2f}x" if ours_total else "-", " + ".join(files))
        return ", ".join(f"{k} {v}" for k, v in versions.items())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--no-npm", action="store_true", help="skip installing the npm anchors")
    args = p.parse_args()
    table = Table("Banner size: a first visit's bytes, gzip",
                  ["what", "raw bytes", "gzip bytes", "vs ours (en)", "files"])
    totals = ours(table)
    if args.quick or args.no_npm:
        table.note("npm anchors skipped (--quick / --no-npm)")
    else:
        table.note("npm packages: " + npm_sizes(table, totals["en"]))
    verdict = "; ".join(f"{lang} {totals[lang]:,} <= {goal:,}: {'met' if totals[lang] <= goal else 'MISSED'}"
                        for lang, goal in GOALS.items())
    table.note(f"goal, a first visit as served (banner.js + banner.css + /state, gzip): {verdict}")
    table.note("ours are bytes on the wire as served (gzip -9 for the files, gzip for /state); anchors at gzip -9. "
               "vanilla-cookieconsent ships no texts (the site passes them in its config); Osano cookieconsent "
               "has its English texts built in; klaro.js has every translation built in")
    emit([table], args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
