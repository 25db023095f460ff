"""Banner size: gzip -9 bytes of our banner + CSS + beacon + English texts beside the npm anchors.

Ours: static/banner.js, static/banner.css, static/beacon.js, each as source and as served
(consentmw.web.assets strips comments and whitespace and embeds the banner's config), plus every
English string the banner can show (policy texts, purposes, data categories) as JSON, the
way /_consent/state delivers them. Anchors are installed by `npm install --prefix <tmp>`
into a temporary directory (skipped with --quick or --no-npm):

  vanilla-cookieconsent  dist/cookieconsent.umd.js + dist/cookieconsent.css (texts come from site config)
  klaro                  dist/klaro.js (CSS and all translations built in; the usual bundle)
                         dist/klaro-no-translations-no-css.js + dist/klaro-no-translations.min.css
  cookieconsent (Osano)  build/cookieconsent.min.js + build/cookieconsent.min.css (English texts built in)

gzip -9 = Python's gzip.compress(data, 9, mtime=0) (the deflate stream of `gzip -9n`).
Goal: ours <= 6,000 bytes in total.

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

from benchmarks._common import ROOT, Table, emit, parser  # noqa: E402

GOAL = 6_000
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


def english_texts_json() -> bytes:
    """Every English string the banner can show, as JSON."""
    from consentmw.core.policy import Policy

    policy = Policy.default()
    try:
        from consentmw.web.assets import english_texts
        texts: Any = english_texts(policy)
    except ImportError:
        public = policy.public(("en",))
        texts = {"texts": public["texts"].get("en", {}),
                 "purposes": [p["texts"].get("en", {}) for p in public["purposes"]]}
    return json.dumps(texts, ensure_ascii=False, separators=(",", ":")).encode()


def served_assets() -> dict[str, bytes]:
    """Our three files exactly as served (stripped, config embedded), if the assets module builds them."""
    try:
        from consentmw.web.assets import build_assets
        from consentmw.core.policy import Policy

        return {name: asset.body for name, asset in build_assets(Policy.default()).items()}
    except Exception:  # noqa: BLE001 - files missing or being written: report source sizes only
        return {}


def ours(table: Table) -> int | None:
    served = served_assets()
    total_src = total_served = 0
    complete = True
    for name in ("banner.js", "banner.css", "beacon.js"):
        path = STATIC / name
        if not path.exists():
            table.add(f"consentmw {name}", "missing", "missing", "missing", "-", "-")
            complete = False
            continue
        src = path.read_bytes()
        body = served.get(name)
        total_src += gz(src)
        total_served += gz(body) if body is not None else gz(src)
        table.add(f"consentmw {name}", len(src), gz(src), gz(body) if body is not None else "-", "", f"static/{name}")
    texts = english_texts_json()
    total_src += gz(texts)
    total_served += gz(texts)
    table.add("consentmw English texts (JSON)", len(texts), gz(texts), gz(texts), "", "default_policy.toml, en")
    table.add("consentmw total", "", total_src, total_served if served else "-", "1.00x" if complete else "-",
              "banner + CSS + beacon + texts")
    if not complete:
        return None
    return total_served if served else total_src


def npm_sizes(table: Table, ours_total: int | None) -> str:
    npm = shutil.which("npm")
    if npm is None:
        for label, _, _ in ANCHORS:
            table.add(label, "-", "npm missing", "-", "-", "")
        return "npm not installed"
    tmp = tempfile.mkdtemp(prefix="bench-banner-npm-")
    try:
        res = subprocess.run([npm, "install", "--prefix", tmp, "--no-audit", "--no-fund", "--ignore-scripts",
                              "--loglevel=error", "vanilla-cookieconsent", "klaro", "cookieconsent"],
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            for label, _, _ in ANCHORS:
                table.add(label, "-", "npm failed", "-", "-", "")
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
                table.add(f"{label} {versions[package]}", "-", "missing " + ", ".join(missing), "-", "-", "")
                continue
            for f in files:
                data = (base / f).read_bytes()
                raw += len(data)
                total += gz(data)
            table.add(f"{label} {versions[package]}", raw, total, "-",
                      f"{total / ours_total:.2f}x" if ours_total else "-", " + ".join(files))
        return ", ".join(f"{k} {v}" for k, v in versions.items())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--no-npm", action="store_true", help="skip installing the npm anchors")
    args = p.parse_args()
    table = Table("Banner size: bytes, gzip -9", ["what", "raw bytes", "gzip -9 (source)", "gzip -9 (as served)", "vs ours", "files"])
    total = ours(table)
    if args.quick or args.no_npm:
        table.note("npm anchors skipped (--quick / --no-npm)")
    else:
        table.note("npm packages: " + npm_sizes(table, total))
    if total is None:
        table.note(f"goal <= {GOAL:,} bytes: not measured (banner files missing)")
    else:
        table.note(f"goal <= {GOAL:,} bytes (ours, total as served): {'met' if total <= GOAL else 'MISSED'} "
                   f"({total:,} bytes); each file is a separate response, so the total is the sum of their gzip sizes")
    table.note("vanilla-cookieconsent ships no texts (the site passes them in its config); Osano cookieconsent "
               "has its English texts built in; ours load texts from /_consent/state when the banner opens")
    emit([table], args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
