"""The demo site (`consentmw demo`, `make demo`): a few pages behind `ConsentMiddleware`.

Home, articles, an SPA-style page that navigates with `history.pushState`, and a privacy
page. Every page loads the banner with one tag, carries a consent-gated "third-party"
script (`type="text/plain" data-consent="marketing"`) and a gated inline statistics
script, and is served under a strict nonce-based Content-Security-Policy, which proves
the banner needs no inline script or style. Data goes to the embedded chDB store.
"""

from __future__ import annotations

import json
import os
import secrets
from html import escape
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from consentmw.demo_geo import build_demo_geoip
from consentmw.middleware import ConsentMiddleware
from consentmw.rights.profile import get_profile

# A fixed secret is fine for a demo that runs on localhost only. A real site must use its
# own long random secret (CONSENTMW_SECRET_KEY), or anyone could forge consent cookies.
DEMO_SECRET = "consentmw-demo-secret-not-for-production"

ARTICLES: dict[str, tuple[str, str]] = {
    "clickhouse-for-analytics": (
        "Why ClickHouse suits first-party analytics",
        "Column storage keeps a year of page views small and fast to aggregate. Each purpose "
        "gets its own table with only the columns that purpose needs, and its own retention."),
    "consent-that-holds-up": (
        "Consent that holds up",
        "A choice is recorded server-side with the policy version and a hash of the texts shown. "
        "Each stored event carries the consent id that allowed it, so the lawful basis is provable."),
    "global-privacy-control": (
        "Honouring Global Privacy Control",
        "When a browser sends the GPC signal, sharing-type purposes stay off unless the visitor "
        "switches them on explicitly. The banner says so in plain words."),
}

SPA_SECTIONS: dict[str, tuple[str, str]] = {
    "": ("Overview", "This page changes its address with history.pushState instead of loading a new page."),
    "pricing": ("Pricing", "Client-side navigation: the beacon reports these views once statistics are allowed."),
    "docs": ("Docs", "Back and forward buttons (popstate) are reported as page views too."),
}

DEMO_CSS = """\
body{font:17px/1.55 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
header,main,footer{max-width:46rem;margin:auto;padding:1rem}
header nav a{margin-right:1rem}
a{color:#0b57d0}
#recommended:empty{display:none}
/* the ad slot keeps its size whether or not the partner script fills it: no layout shift */
#ad-slot{box-sizing:border-box;height:4.5rem;overflow:hidden;border:1px dashed #767676;padding:.5rem;margin:1rem 0;color:#4d4d4d}
footer{color:#4d4d4d;font-size:.9em;padding-bottom:4rem}
"""

# Stands in for Google's gtag.js snippet (it loads nothing from Google): the banner sends its
# Consent Mode calls to whatever `gtag`/`dataLayer` the page has, and they land here.
SITE_JS = """\
window.dataLayer = window.dataLayer || [];
function gtag() { dataLayer.push(arguments); }

// SPA-style navigation on /spa: swap the content and push a new address, no page load
// a custom event for the statistics ("Subscribe" on the home page); nothing is sent without consent
document.addEventListener("click", function (e) {
  var b = e.target.closest("[data-track]");
  if (b && window.consentmw) {
    consentmw.track(b.getAttribute("data-track"), {place: location.pathname});
    b.textContent = "Thank you!";
  }
});

document.addEventListener("DOMContentLoaded", function () {
  var box = document.getElementById("spa-content"), data = document.getElementById("spa-data");
  if (!box || !data) return;
  var sections = JSON.parse(data.textContent);
  function render() {
    var key = location.pathname.replace(/^\\/spa\\/?/, ""), s = sections[key] || sections[""];
    box.querySelector("h2").textContent = s[0];
    box.querySelector("p").textContent = s[1];
  }
  document.addEventListener("click", function (e) {
    var a = e.target.closest("a[data-spa]");
    if (!a) return;
    e.preventDefault();
    history.pushState(null, "", a.getAttribute("href"));
    render();
  });
  window.addEventListener("popstate", render);
});
"""

# The "third-party" script: runs only once marketing is granted.
ADS_JS = """\
window.demoAdsLoaded = (window.demoAdsLoaded || 0) + 1;
var slot = document.getElementById("ad-slot");
if (slot) slot.textContent = "Advertising partner script loaded (marketing consent granted).";
"""

STATIC: dict[str, tuple[str, str]] = {
    "demo.css": (DEMO_CSS, "text/css; charset=utf-8"),
    "site.js": (SITE_JS, "text/javascript; charset=utf-8"),
    "ads.js": (ADS_JS, "text/javascript; charset=utf-8"),
}


async def recommended_block(request: Request) -> str:
    """"Recommended for you", built from the visitor profile; "" without personalisation consent.

    The profile comes from the aggregate the materialized view keeps per visitor id, so it
    exists only for visitors who granted personalisation (and is None while they are blocked).
    """
    profile = await get_profile(request)
    if profile is None or not profile.pageviews:
        return ""
    read = set(profile.recent_pages) | {request.url.path}  # never recommend the page being read
    unread = [(slug, title) for slug, (title, _) in ARTICLES.items() if f"/articles/{slug}" not in read]
    items = "".join(f'<li><a href="/articles/{slug}">{escape(title)}</a></li>' for slug, title in unread[:3])
    seen = f"{profile.pageviews} page view{'s' if profile.pageviews != 1 else ''}"
    body = f"<ul>{items}</ul>" if items else "<p>You have read every article. Thank you!</p>"
    return (f'<h2>Recommended for you</h2><p class="muted">Based on your {seen} here '
            f"(personalisation is on; switch it off in Privacy settings).</p>{body}")


LANGUAGES = ("en", "ru", "kk")


def page_language(request: Request) -> str:
    """`?lang=` if given, else the browser's first supported language (Accept-Language, by
    q-value), else English: the page's <html lang> and so the banner's language."""
    asked = request.query_params.get("lang")
    if asked in LANGUAGES:
        return asked
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((request.headers.get("accept-language") or "").split(",")[:32]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        base = tag.strip().lower().split("-")[0]
        if base in LANGUAGES and q > 0:
            ranked.append((-q, i, base))
    return min(ranked)[2] if ranked else "en"


async def page(request: Request, title: str, body: str, status: int = 200) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    lang = page_language(request)
    consent = request.state.consent
    granted = ", ".join(sorted(consent.granted))
    html = f"""<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · consentmw demo</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/demo.css">
<script src="/static/site.js"></script>
<script src="/_consent/banner.js" defer></script>
</head>
<body>
<header><nav aria-label="Main"><a href="/">Home</a><a href="/articles/clickhouse-for-analytics">Articles</a><a href="/spa">SPA</a><a href="/privacy">Privacy</a></nav></header>
<main>
<h1>{escape(title)}</h1>
{body}
<div id="recommended">{await recommended_block(request)}</div>
<div id="ad-slot">Advertising space: a partner's ad appears here only with marketing consent.</div>
</main>
<footer><p>Server-side view of your consent: <span id="server-granted">{escape(granted)}</span>.
<a href="/privacy">Privacy policy</a>.</p></footer>
<script type="text/plain" data-consent="marketing" src="/static/ads.js"></script>
<script type="text/plain" data-consent="statistics" nonce="{nonce}">window.demoStatsInline = (window.demoStatsInline || 0) + 1;</script>
</body>
</html>
"""
    csp = (f"default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self'; img-src 'self' data:; "
           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": csp,
                                                           "Cache-Control": "no-store"})


async def home(request: Request) -> Response:
    items = "".join(f'<li><a href="/articles/{slug}">{escape(title)}</a></li>'
                    for slug, (title, _) in ARTICLES.items())
    return await page(request, "A small site with an honest banner", f"""
<p>This demo records page views only after you allow statistics, and only the fields
the statistics purpose lists. Try the banner, then the "Privacy settings" button.</p>
<h2>Articles</h2><ul>{items}</ul>
<p>From a newsletter (a campaign link):
<a href="/articles/consent-that-holds-up?utm_source=newsletter&amp;utm_medium=email&amp;utm_campaign=launch">Consent that holds up</a>.
An outbound link (counted as a click with statistics consent):
<a href="https://example.org/">example.org</a>.</p>
<p><button type="button" data-track="subscribe">Subscribe to the newsletter</button> (a custom event)</p>""")


async def article(request: Request) -> Response:
    slug = request.path_params["slug"]
    if slug not in ARTICLES:
        return await page(request, "Not found", "<p>No such article.</p>", 404)
    title, text = ARTICLES[slug]
    others = "".join(f'<li><a href="/articles/{s}">{escape(t)}</a></li>' for s, (t, _) in ARTICLES.items() if s != slug)
    return await page(request, title, f"<p>{escape(text)}</p><h2>More articles</h2><ul>{others}</ul>")


async def spa(request: Request) -> Response:
    key = request.path_params.get("section", "")
    if key not in SPA_SECTIONS:
        return await page(request, "Not found", "<p>No such section.</p>", 404)
    heading, text = SPA_SECTIONS[key]
    links = "".join(f'<a data-spa href="/spa{"/" + k if k else ""}">{escape(v[0])}</a> '
                    for k, v in SPA_SECTIONS.items())
    data = json.dumps(SPA_SECTIONS).replace("<", "\\u003c")  # raw text inside <script>: no entities
    return await page(request, "Single-page app", f"""
<nav aria-label="Sections">{links}</nav>
<section id="spa-content" aria-live="polite"><h2>{escape(heading)}</h2><p>{escape(text)}</p></section>
<script type="application/json" id="spa-data">{data}</script>""")


async def privacy(request: Request) -> Response:
    return await page(request, "Privacy policy", """
<p>Strictly necessary: the consent cookie <code>consentmw</code> remembers your choice.
Statistics, personalisation and marketing are optional and off until you switch them on.
The settings list, per purpose, the data collected and how long it is kept.</p>
<p><button type="button" data-consent-open>Change my privacy settings</button></p>""")


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    text, media_type = STATIC[name]
    return Response(text, media_type=media_type, headers={"Cache-Control": "public, max-age=300"})


def site() -> Starlette:
    """The bare site, without the middleware."""
    return Starlette(routes=[
        Route("/", home),
        Route("/articles/{slug}", article),
        Route("/spa", spa),
        Route("/spa/{section}", spa),
        Route("/privacy", privacy),
        Route("/static/{name}", static),
    ])


def create_app(data_dir: str | None = None, dsn: str | None = None, database: str = "consentmw",
               **middleware_options: Any) -> ConsentMiddleware:
    """The demo site wrapped in `ConsentMiddleware`, storing to chDB at `data_dir`
    (default ./consentmw-data) unless `dsn` names another store. Extra keyword
    arguments go to the middleware (e.g. `flush_interval=0.2`, `spool_dir=...`).

    Without a `geoip_db` (argument or CONSENTMW_GEOIP_DB), a tiny demo database that places
    127.0.0.1 and the private ranges in a few cities is built next to the data, so the
    countries fill in for a visitor on localhost (needs mmdb-writer, in the `demo` extra)."""
    data = Path(data_dir or "consentmw-data").resolve()
    options: dict[str, Any] = {
        "secret_key": DEMO_SECRET,
        "clickhouse_dsn": dsn or f"chdb://{data}",
        "database": database,
        "spool_dir": str(data.parent / (data.name + "-spool")),
    }
    options.update(middleware_options)
    if not options.get("geoip_db") and not os.environ.get("CONSENTMW_GEOIP_DB"):
        built = build_demo_geoip(data.parent / (data.name + "-geo.mmdb"))
        if built is not None:
            options["geoip_db"] = str(built)
    return ConsentMiddleware(site(), **options)


def main(host: str = "127.0.0.1", port: int = 8000, data_dir: str | None = None) -> None:
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the demo is served by uvicorn: pip install 'consentmw[demo]'") from None

    app = create_app(data_dir)
    print(f"consentmw demo on http://{host}:{port}/ (data in {Path(data_dir or 'consentmw-data').resolve()})")
    uvicorn.run(app, host=host, port=port, log_level="warning")
