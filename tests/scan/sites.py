"""The sites `consentmw scan` is tested against: real pages, served by uvicorn on loopback.

`first_party_app` is the scanned site (behind ConsentMiddleware, so it has the banner);
`third_party_app` plays every outside vendor and runs on a second loopback address
(127.0.0.2), a different site to the browser. It counts the requests it gets, so a test
can prove what was (and was not) loaded from outside.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

BANNER = '<script src="/_consent/banner.js" defer></script>'


def _page(title: str, body: str, banner: bool = True) -> HTMLResponse:
    return HTMLResponse(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="/static/site.css">
{BANNER if banner else ""}
</head><body><h1>{title}</h1>
{body}
<p><a href="/">home</a></p>
</body></html>
""", headers={"Cache-Control": "no-store"})


def first_party_app(third: str) -> Starlette:
    """`third` is the third-party origin, e.g. http://127.0.0.2:4567."""
    pages: dict[str, Any] = {}

    def route(path: str, title: str, body: str, banner: bool = True) -> None:
        pages[path] = (title, body, banner)

    route("/compliant", "Compliant", """<p>Only first-party resources; optional scripts are gated.</p>
<script src="/static/site.js"></script>
<script type="text/plain" data-consent="statistics">window.statsRan = true;</script>""")
    route("/ungated", "Ungated tracker", f"""<p>A tracker pasted into the template.</p>
<script src="{third}/tracker.js"></script>""")
    route("/analytics-cookie", "First-party analytics cookie", """<p>Sets its own analytics id at once.</p>
<script>
document.cookie = "_ga=GA1.1.12345.67890; max-age=63072000; path=/";
localStorage.setItem("analytics_visitor", "12345");
cookieStore.set({name: "_gid", value: "GA1.1.1", expires: Date.now() + 86400000});
sessionStorage.setItem("session_replay", "on");
indexedDB.open("tracker-db");
</script>""")
    route("/iframe", "Video embed", f"""<p>An embed from another site.</p>
<iframe src="{third}/embed" title="video" width="300" height="150"></iframe>""")
    route("/gated", "Gated ads", f"""<p>The advertising script waits for marketing consent.</p>
<div id="ad-slot"></div>
<script type="text/plain" data-consent="marketing" src="{third}/ads.js"></script>""")
    route("/nobanner", "No banner", "<p>This template forgot the banner.</p>", banner=False)
    route("/bad-gated", "Mislabelled gate", """<p>data-consent without type="text/plain" runs at once.</p>
<script data-consent="statistics">window.badGate = 1;</script>""")
    # Reject all is quietly turned into a grant of statistics on its way to the server
    route("/sneaky", "Sneaky banner", """<script>
const realFetch = window.fetch;
window.fetch = (url, opts) => {
  if (String(url).includes("/choice") && opts && opts.body) {
    const body = JSON.parse(opts.body);
    if (body.all === false) { delete body.all; body.granted = ["statistics"]; opts = {...opts, body: JSON.stringify(body)}; }
  }
  return realFetch(url, opts);
};
</script>""")
    route("/hostile", "Hostile names", """<script>
localStorage.setItem("<img src=x onerror=alert(1)>", "1");
document.cookie = "\\u001b[2Jevil=1; path=/";
</script>""")

    index = "".join(f'<li><a href="{p}">{t}</a></li>' for p, (t, _b, _n) in pages.items() if p != "/hostile")
    extra = (f'<li><a href="{third}/never">partner site (must never be crawled)</a></li>'
             '<li><a href="/files/report.pdf">a PDF</a></li><li><a href="mailto:x@example.org">mail</a></li>'
             '<li><a href="/compliant#top">same page, a fragment</a></li>'
             '<li><a href="/away">moved to the partner</a></li><li><a href="/feed">a text feed</a></li>')

    async def home(request: Request) -> Response:
        return _page("Test site", f"<ul>{index}{extra}</ul>")

    async def page(request: Request) -> Response:
        title, body, banner = pages[request.url.path]
        return _page(title, body, banner)

    async def static(request: Request) -> Response:
        files = {"site.css": ("body{font-family:sans-serif}", "text/css"),
                 "site.js": ("window.siteJs = true;", "text/javascript")}
        body, media = files[request.path_params["name"]]
        return Response(body, media_type=media)

    async def pdf(request: Request) -> Response:
        return Response(b"%PDF-1.4\n", media_type="application/pdf")

    async def away(request: Request) -> Response:
        return Response(status_code=302, headers={"Location": f"{third}/moved"})

    async def feed(request: Request) -> Response:
        return Response("not a page", media_type="text/plain")

    return Starlette(routes=[Route("/", home), *(Route(p, page) for p in pages),
                             Route("/static/{name}", static), Route("/files/report.pdf", pdf),
                             Route("/away", away), Route("/feed", feed)])


def third_party_app(hits: Counter[str]) -> Starlette:
    """Every outside vendor; counts each path it is asked for."""

    async def counted(request: Request) -> Response:
        hits[request.url.path] += 1
        return await ROUTES[request.url.path](request)

    async def tracker(request: Request) -> Response:
        # a vendor script: sets a first-party cookie in the host page and calls home
        return Response("""document.cookie = "_fbp=fb.1.123.456; max-age=7776000; path=/";
new Image().src = location.protocol + "//" + document.currentScript.src.split("/")[2] + "/collect?e=pageview";
""", media_type="text/javascript")

    async def collect(request: Request) -> Response:
        return Response(b"GIF89a", media_type="image/gif")

    async def embed(request: Request) -> Response:
        return HTMLResponse("""<!doctype html><html><body>video player
<script>document.cookie = "YSC=abc; path=/; SameSite=None; Secure";</script></body></html>""",
                            headers={"Set-Cookie": "VISITOR_INFO1_LIVE=xyz; Max-Age=15552000; Path=/; "
                                                   "SameSite=None; Secure"})

    async def ads(request: Request) -> Response:
        return Response("""document.getElementById("ad-slot").textContent = "ad";
document.cookie = "_gcl_au=1.1.999; max-age=7776000; path=/";
new Image().src = location.protocol + "//" + document.currentScript.src.split("/")[2] + "/collect?e=ad";
""", media_type="text/javascript")

    async def never(request: Request) -> Response:
        return HTMLResponse("<p>partner</p>")

    ROUTES = {"/tracker.js": tracker, "/collect": collect, "/embed": embed, "/ads.js": ads, "/never": never,
              "/moved": never}
    return Starlette(routes=[Route(p, counted) for p in ROUTES])


class Server:
    """uvicorn in a thread on `host`, a free port."""

    def __init__(self, app: Any, host: str = "127.0.0.1", **ssl: Any) -> None:
        with socket.socket() as s:
            s.bind((host, 0))
            self.port = s.getsockname()[1]
        scheme = "https" if ssl else "http"
        self.url = f"{scheme}://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning",
                                                    lifespan="on", **ssl))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(15)
