"""`consentmw scan` speed: a 50-page site, every page in three fresh Chromium contexts.

The site: 50 pages behind ConsentMiddleware (uvicorn in this process, chDB in a temporary
directory), each with a stylesheet, a script, an image, the banner, a consent-gated script
and links to five other pages. Side by side in the same run:

  baseline  the same number of bare page loads (a fresh context each, `load` event, nothing
            recorded, no clicks), with the same concurrency: the floor a scanner cannot beat
  scan      `consentmw scan` (crawl, record, click Reject all / Accept all, reload, classify)

Goal: 50 pages x 3 contexts in under 2 minutes on this 2-core machine.

    python benchmarks/bench_scan.py [--quick] [--pages N] [--concurrency N]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Table, emit, free_port, parser  # noqa: E402

GOAL_SECONDS = 120.0


def bench_site(pages: int, data_dir: str) -> object:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route

    from consentmw.middleware import ConsentMiddleware

    async def page(request: Request) -> HTMLResponse:
        n = int(request.path_params["n"])
        links = "".join(f'<li><a href="/p/{(n * 7 + k) % pages}">page {(n * 7 + k) % pages}</a></li>' for k in range(1, 6))
        return HTMLResponse(f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Page {n}</title>
<link rel="stylesheet" href="/static/site.css"><script src="/static/site.js"></script>
<script src="/_consent/banner.js" defer></script></head>
<body><h1>Page {n}</h1><img src="/static/pixel.svg" alt="" width="10" height="10"><ul>{links}</ul>
<p>{"Lorem ipsum dolor sit amet. " * 40}</p>
<script type="text/plain" data-consent="statistics" src="/static/stats.js"></script></body></html>""")

    assets = {"site.css": ("body{font:16px sans-serif;max-width:40rem;margin:auto}", "text/css"),
              "site.js": ("window.siteReady = true;", "text/javascript"),
              "stats.js": ("window.statsRan = (window.statsRan || 0) + 1;", "text/javascript"),
              "pixel.svg": ('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "image/svg+xml")}

    async def static(request: Request) -> Response:
        body, media = assets[request.path_params["name"]]
        return Response(body, media_type=media, headers={"Cache-Control": "max-age=300"})

    async def home(request: Request) -> HTMLResponse:
        return await page(type("R", (), {"path_params": {"n": 0}})())  # type: ignore[arg-type]

    app = Starlette(routes=[Route("/", home), Route("/p/{n:int}", page), Route("/static/{name}", static)])
    return ConsentMiddleware(app, secret_key="bench-scan-secret-0123456789", clickhouse_dsn=f"chdb://{data_dir}/db",
                             spool_dir=f"{data_dir}/spool")


async def bare_loads(url: str, urls: list[str], concurrency: int) -> float:
    from playwright.async_api import async_playwright

    from consentmw.scan.runner import CHROMIUM_ARGS, find_browser

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=find_browser(None), args=CHROMIUM_ARGS)
        todo = list(urls)
        start = time.monotonic()

        async def worker() -> None:
            while todo:
                target = todo.pop()
                ctx = await browser.new_context()
                page = await ctx.new_page()
                await page.goto(target, wait_until="load")
                await ctx.close()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - start
        await browser.close()
    return elapsed


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--pages", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=None, help="pages at once (default: the scanner's default)")
    args = p.parse_args()
    pages = args.pages or (6 if args.quick else 50)
    import uvicorn

    from consentmw.scan.runner import ScanConfig, run

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(bench_site(pages, tmp), host="127.0.0.1", port=port,  # type: ignore[arg-type]
                                               log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}/"
        config = ScanConfig(url=url, max_pages=pages)
        if args.concurrency:
            config.concurrency = args.concurrency
        base = asyncio.run(bare_loads(url, [f"{url}p/{n % pages}" for n in range(3 * pages)], config.concurrency))
        result = run(config)
        server.should_exit = True
        thread.join(10)
    visits = sum(1 for pr in result.pages for o in pr.observations.values() if not o.skipped)
    t = Table(f"scan: {pages} pages x 3 contexts ({os.cpu_count()} cores, {config.concurrency} pages at once)",
              ["run", "pages", "page visits", "seconds", "visits/s", "vs baseline"])
    t.add("baseline: bare page loads, fresh context each", pages, 3 * pages, base, 3 * pages / base, "1.00x")
    t.add("consentmw scan", len(result.pages), visits, result.seconds, visits / result.seconds,
          f"{result.seconds / base:.2f}x")
    ok = len(result.pages) == pages and visits == 3 * pages and result.count("violation") == 0
    goal = "met" if result.seconds < GOAL_SECONDS * pages / 50 else "MISSED"
    t.note(f"goal: 50 pages x 3 contexts in < {GOAL_SECONDS:.0f} s (scaled to {pages} pages): {goal}")
    t.note("the scan also clicks the banner and reloads each page in the Reject and Accept contexts, "
           "so it makes about 5 page loads per page against the baseline's 3")
    if not ok:
        t.note(f"CHECK FAILED: {len(result.pages)} pages, {visits} visits, {result.count('violation')} violations")
    emit([t], args.markdown)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
