"""Memory bounded in bytes: RSS while requests carry distinct, huge User-Agent headers.

Each scenario runs in its own process: the real middleware on embedded chDB, every
optional purpose granted, 10,000 page requests driven straight through its ASGI entry
point (a server such as uvicorn/h11 would refuse headers this large before the app sees
them, so this is the harsher test of consentmw's own caches and queue). Scenarios:

* baseline: one ordinary browser User-Agent for every request;
* distinct 100 KB User-Agents (the reported attack: the caches used to keep each one);
* distinct 500-byte User-Agents (just under the 512-byte cap: the worst case for the
  user-agent, visitor-code and bot caches, which keep strings up to that size).

RSS is sampled every 250 requests; growth = peak - RSS after a warm-up of 500 requests.
Goal: 10,000 distinct 100 KB User-Agents grow RSS by less than 64 MiB.

    python benchmarks/bench_memory.py [--quick] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import BROWSER_UA, SECRET, Table, emit, parser, rss_kib  # noqa: E402

GOAL_MIB = 64.0
SCENARIOS = {"baseline": "one browser User-Agent", "ua100k": "distinct 100 KB User-Agents",
             "ua500": "distinct 500-byte User-Agents"}


def user_agent(scenario: str, i: int) -> bytes:
    if scenario == "baseline":
        return BROWSER_UA.encode()
    tag = f" r{i:06d} ".encode()
    if scenario == "ua100k":
        return tag + BROWSER_UA.encode() + b" " + (b"%06d" % i) * (100_000 // 6)
    body = BROWSER_UA.encode() + tag
    return body + b"x" * (500 - len(body))


async def page(mw: Any, headers: list[tuple[bytes, bytes]], path: str) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("203.0.113.7", 40000), "server": ("site.test", 80)}
    status = 0
    done = False

    async def receive() -> dict[str, Any]:
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await mw(scope, receive, send)
    return status


async def html(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
    await send({"type": "http.response.body", "body": b"<html><body>article</body></html>"})


def child(scenario: str, requests: int) -> dict[str, Any]:
    from consentmw import ConsentMiddleware
    from consentmw.core.consent import COOKIE_NAME, new_id

    tmp = tempfile.mkdtemp(prefix="bench-memory-")
    mw = ConsentMiddleware(html, secret_key=SECRET, clickhouse_dsn=f"chdb://{tmp}/data", spool_dir=f"{tmp}/spool",
                           flush_interval=0.2)
    mw.collector.sink.client()  # schema first: its memory is not the caches'
    cookie, _ = mw.codec.issue(set(mw.policy.optional_ids), visitor_id=new_id())
    base = [(b"host", b"site.test"), (b"cookie", f"{COOKIE_NAME}={cookie}".encode()),
            (b"accept-language", b"en-US,en;q=0.9"), (b"referer", b"https://www.example.org/")]

    async def drive() -> tuple[int, int, int]:
        for i in range(500):  # warm-up: imports, first batches, steady caches
            await page(mw, base + [(b"user-agent", BROWSER_UA.encode())], f"/articles/{i % 50}")
        mw.collector.flush()
        gc.collect()
        start = peak = rss_kib()
        for i in range(requests):
            headers = base + [(b"user-agent", user_agent(scenario, i))]
            assert await page(mw, headers, f"/articles/{i % 500}") == 200
            if i % 250 == 249:
                peak = max(peak, rss_kib())
        mw.collector.flush()
        peak = max(peak, rss_kib())
        return start, peak, rss_kib()

    t0 = time.perf_counter()
    start, peak, end = asyncio.run(drive())
    took = time.perf_counter() - t0
    health = mw.collector.health()
    mw.collector.stop()
    return {"scenario": scenario, "requests": requests, "rss_start_kib": start, "rss_peak_kib": peak,
            "rss_end_kib": end, "stored": health["stored"], "bots": health["bots_ignored"],
            "dropped": health["dropped"], "seconds": took}


def main() -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=None, help="requests per scenario (default 10,000)")
    p.add_argument("--child", nargs=2, metavar=("SCENARIO", "REQUESTS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return 0
    requests = args.requests or (300 if args.quick else 10_000)
    runs = {}
    for scenario in SCENARIOS:
        res = subprocess.run([sys.executable, __file__, "--child", scenario, str(requests)],
                             capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            raise SystemExit(f"memory child failed: {res.stderr[-3000:]}")
        runs[scenario] = json.loads(res.stdout.strip().splitlines()[-1])
    mib = 1024.0
    table = Table(f"Memory bounded in bytes: {requests:,} page requests, every purpose granted",
                  ["User-Agent", "RSS start MiB", "RSS peak MiB", "RSS end MiB", "peak growth MiB",
                   "rows stored", "bots ignored", "dropped", "s"])
    for scenario, label in SCENARIOS.items():
        r = runs[scenario]
        table.add(label, r["rss_start_kib"] / mib, r["rss_peak_kib"] / mib, r["rss_end_kib"] / mib,
                  (r["rss_peak_kib"] - r["rss_start_kib"]) / mib, r["stored"], r["bots"], r["dropped"], r["seconds"])
    growth = (runs["ua100k"]["rss_peak_kib"] - runs["ua100k"]["rss_start_kib"]) / mib
    met = growth < GOAL_MIB
    table.note(f"goal: distinct 100 KB User-Agents grow RSS by < {GOAL_MIB:g} MiB: {growth:.1f} MiB, "
               f"{'met' if met else 'MISSED'}")
    table.note("a User-Agent over 512 bytes is a bot: kept empty in the hit, never parsed or cached; "
               "every cache on the path is bounded in entries x a capped key size")
    emit([table], args.markdown)
    return 0 if met or args.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
