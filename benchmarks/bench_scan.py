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


def child(kind: str, url: str, pages: int, concurrency: int) -> int:
    """One measured run in its own process, so its CPU time (Chromium and the Playwright
    driver included) can be read from the parent's wait4()."""
    import json

    from consentmw.scan.runner import ScanConfig, run

    if kind == "baseline":
        elapsed = asyncio.run(bare_loads(url, [f"{url}p/{n % pages}" for n in range(3 * pages)], concurrency))
        print(json.dumps({"seconds": elapsed, "pages": pages, "visits": 3 * pages, "violations": []}))
        return 0
    result = run(ScanConfig(url=url, max_pages=pages, concurrency=concurrency))
    visits = sum(1 for pr in result.pages for o in pr.observations.values() if not o.skipped)
    bad = [f"{f.page} [{f.mode}] {f.thing}: {f.source}" for f in result.findings if f.severity == "violation"]
    print(json.dumps({"seconds": result.seconds, "pages": len(result.pages), "visits": visits, "violations": bad}))
    return 0


def measured(kind: str, url: str, pages: int, concurrency: int) -> tuple[dict[str, object], float]:
    """(the child's answer, CPU seconds of the child and everything it waited for)."""
    import json
    import subprocess

    proc = subprocess.Popen([sys.executable, __file__, "--child", kind, "--url", url, "--pages", str(pages),
                             "--concurrency", str(concurrency)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{kind} run failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_utime + usage.ru_stime


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--pages", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=None, help="pages at once (default: the scanner's default)")
    p.add_argument("--child", choices=("baseline", "scan"), help=argparse_hidden())
    p.add_argument("--url", help=argparse_hidden())
    args = p.parse_args()
    pages = args.pages or (6 if args.quick else 50)
    from consentmw.scan.runner import ScanConfig

    concurrency = args.concurrency or ScanConfig(url="http://x/").concurrency
    if args.child:
        return child(args.child, args.url, pages, concurrency)
    import uvicorn

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(bench_site(pages, tmp), host="127.0.0.1", port=port,  # type: ignore[arg-type]
                                               log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}/"
        load_before = os.getloadavg()[0]
        base, base_cpu = measured("baseline", url, pages, concurrency)
        scan, scan_cpu = measured("scan", url, pages, concurrency)
        load_after = os.getloadavg()[0]
        server.should_exit = True
        thread.join(10)
    cores = os.cpu_count() or 1
    t = Table(f"scan: {pages} pages x 3 contexts ({cores} cores, {concurrency} pages at once)",
              ["run", "pages", "page visits", "seconds", "CPU seconds", "CPU s / core", "vs baseline (CPU)"])
    bs, ss = float(base["seconds"]), float(scan["seconds"])  # type: ignore[arg-type]
    t.add("baseline: bare page loads, fresh context each", pages, base["visits"], bs, base_cpu, base_cpu / cores, "1.00x")
    t.add("consentmw scan", scan["pages"], scan["visits"], ss, scan_cpu, scan_cpu / cores, f"{scan_cpu / base_cpu:.2f}x")
    goal = GOAL_SECONDS * pages / 50
    t.note(f"goal: 50 pages x 3 contexts in < {GOAL_SECONDS:.0f} s (scaled: {goal:.0f} s): wall {ss:.0f} s "
           f"{'met' if ss < goal else 'MISSED'}; CPU / cores {scan_cpu / cores:.0f} s "
           f"{'met' if scan_cpu / cores < goal else 'MISSED'} (the wall time on an otherwise idle machine is about "
           "the CPU time over the cores when the work keeps them busy)")
    t.note(f"load average (1 min) {load_before:.1f} before, {load_after:.1f} after: other work on the machine "
           "stretches both wall times alike; CPU seconds are this run's own (Chromium, Playwright's driver, Python)")
    t.note("the scan clicks the banner and reloads each page in the Reject and Accept contexts: about 5 page loads "
           "per page against the baseline's 3")
    bad = list(scan["violations"])  # type: ignore[call-overload]
    ok = scan["pages"] == pages and scan["visits"] == 3 * pages and not bad
    if not ok:
        t.note(f"CHECK FAILED: {scan['pages']} pages, {scan['visits']} visits, violations: {bad[:3]}")
    emit([t], args.markdown)
    return 0 if ok else 1


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
