"""Beacon ingest: batches of client events POSTed to /_consent/collect through uvicorn into chDB.

The baseline is the same uvicorn and Starlette answering the same POST by decoding the JSON
and returning 202 without validating or storing anything. Each batch holds 20 events
(pageview, timing, vitals, click, custom), sent as `text/plain` like navigator.sendBeacon.
After SIGTERM (graceful drain), a separate process counts the rows in chDB:
lost = events the server accepted (202) - events stored. Goal: 0 lost.

    python benchmarks/bench_beacon.py [--quick] [--duration S] [--connections N] [--repeats R]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import BROWSER_UA, Table, consent_cookie, count_rows, emit, median, parser, ratio, stop_server  # noqa: E402
from benchmarks._load import load, wrk_available  # noqa: E402
from benchmarks.bench_http import STACKS, TABLES, serve, stack_available  # noqa: E402

BATCH = [
    {"type": "pageview", "path": "/articles/1", "referrer": "https://duckduckgo.com/"},
    {"type": "timing", "path": "/articles/1", "ttfb": 42, "dom_interactive": 310, "dom_complete": 620, "load": 700},
    {"type": "vitals", "path": "/articles/1", "lcp": 1200, "inp": 80, "cls": 0.02, "fcp": 650, "ttfb": 42},
    {"type": "click", "path": "/articles/1", "url": "https://example.org/outbound?x=1"},
    {"type": "custom", "path": "/articles/1", "name": "signup", "props": {"plan": "pro", "step": 2}},
] * 4
SPEED_GOAL = 0.6
PAGEVIEWS = sum(1 for e in BATCH if e["type"] == "pageview")


def one_run(app: str, tmp: str, tag: str, headers: dict[str, str], body: bytes, duration: float,
            connections: int, use_wrk: bool) -> dict[str, Any]:
    proc, port, data, stats_file = serve(app, tmp, tag)
    try:
        url = f"http://127.0.0.1:{port}/_consent/collect"
        hdrs = dict(headers, Origin=f"http://127.0.0.1:{port}")
        warm = load(url, duration=1, connections=connections, headers=hdrs, method="POST", body=body, use_wrk=use_wrk)
        res = load(url, duration=duration, connections=connections, headers=hdrs, method="POST", body=body,
                   use_wrk=use_wrk)
    finally:
        res_code = stop_server(proc, timeout=180)
    res["exit"] = res_code
    res["client_ok_total"] = warm["ok"] + res["ok"]
    stats = json.loads(Path(stats_file).read_text()) if Path(stats_file).exists() else {}
    res["status"] = stats.get("status", {})
    res["collector"] = stats.get("collector", {})
    if app == "consent":
        res["stored_at_exit"] = count_rows(data, "consentmw", TABLES)
        res["stored"] = res["stored_at_exit"]
        # What the writer had spilled to the spool and not replayed yet when the server stopped
        # is on disk, not lost: the next process replays it. Do what that start would do.
        spool = Path(data + "-spool")
        left = [seg for seg in spool.glob("seg-*.spool") if seg.stat().st_size > 0] if spool.is_dir() else []
        res["spool_segments_at_exit"] = len(left)
        if left:
            subprocess.run([sys.executable, "-m", "consentmw", "replay", "--dsn", "chdb://" + data,
                            "--spool", str(spool), "-q"], check=False, capture_output=True, timeout=600)
            res["stored"] = count_rows(data, "consentmw", TABLES)
    return res


def main() -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=None, help="seconds per measured run (default 10)")
    p.add_argument("--connections", type=int, default=None, help="keep-alive connections (default 16)")
    p.add_argument("--python-client", action="store_true", help="use the asyncio client even if wrk exists")
    args = p.parse_args()
    duration = args.duration or (1.0 if args.quick else 10.0)
    repeats = args.repeats or (1 if args.quick else 3)
    connections = args.connections or (4 if args.quick else 16)
    use_wrk = wrk_available() and not args.python_client

    body = json.dumps({"events": BATCH}).encode()
    headers = {"User-Agent": BROWSER_UA, "Content-Type": "text/plain;charset=UTF-8",
               "Accept-Language": "en-US,en;q=0.9", "Cookie": f"consentmw={consent_cookie()}"}
    results: dict[str, list[dict[str, Any]]] = {"beacon-bare": [], "consent": []}
    with tempfile.TemporaryDirectory(prefix="bench-beacon-") as tmp:
        for r in range(repeats):
            order = ("beacon-bare", "consent") if r % 2 == 0 else ("consent", "beacon-bare")
            for app in order:
                results[app].append(one_run(app, tmp, f"{app}{r}", headers, body, duration, connections, use_wrk))

    n = len(BATCH)
    tool = results["consent"][0]["tool"]
    stack = STACKS["standard" if stack_available() else "plain"]
    speed = Table(f"Beacon ingest: POST /_consent/collect, {n} events per batch, uvicorn 1 worker ({stack}), {tool}, "
                  f"{connections} connections, {duration:g} s x {repeats} (medians)",
                  ["endpoint", "batches/s", "events/s", "p50 ms", "p99 ms", "ratio to baseline"])
    base = median(x["rps"] for x in results["beacon-bare"])
    for app, label in (("beacon-bare", "baseline: Starlette route, json.loads + 202, stores nothing"),
                       ("consent", "consentmw: validate, consent-gate, queue, write to chDB")):
        rps = median(x["rps"] for x in results[app])
        speed.add(label, rps, rps * n, median(x["p50_ms"] for x in results[app]),
                  median(x["p99_ms"] for x in results[app]), ratio(rps, base))

    check = Table("Beacon ingest: events accepted vs stored (consentmw runs)",
                  ["run", "202 answers", "events accepted", "stored statistics", "stored personalisation",
                   "non-202", "spooled", "dropped", "in the spool at exit", "lost"])
    total_lost = 0
    ok = True
    for i, res in enumerate(results["consent"]):
        status = res["status"]
        accepted_batches = status.get("202", 0)
        accepted = accepted_batches * n
        stored = res["stored"]
        lost = accepted - stored["events_statistics"]
        total_lost += abs(lost)
        others = sum(v for k, v in status.items() if k != "202")
        col = res["collector"]
        ok &= (lost == 0 and stored["events_personalisation"] == accepted_batches * PAGEVIEWS and others == 0
               and col.get("accepted", accepted) == accepted and res["exit"] == 0)
        at_exit = res["stored_at_exit"]["events_statistics"]
        check.add(f"#{i + 1}", accepted_batches, accepted, stored["events_statistics"],
                  stored["events_personalisation"], others, col.get("spooled", "-"), col.get("dropped", "-"),
                  stored["events_statistics"] - at_exit, lost)
    check.note("every event type is stored in events_statistics (all purposes granted); pageviews also in "
               "events_personalisation; rows counted by a separate process after SIGTERM (graceful drain)")
    check.note("'spooled' = rows the writer spilled to its disk spool while the queue was full, replayed while "
               "serving; 'in the spool at exit' = of those, rows not yet replayed when the server stopped, stored "
               "by `consentmw replay` as the next start would (counted in 'stored'); 'lost' = accepted - stored")
    check.note(f"goal 0 lost: {'met' if total_lost == 0 else 'MISSED'} ({total_lost} lost)")
    got = median(x["rps"] for x in results["consent"]) / base if base else 0.0
    speed.note(f"goal events/s >= {SPEED_GOAL}x the decode-only baseline: {'met' if got >= SPEED_GOAL else 'MISSED'} "
               f"({got:.2f}x)")
    emit([speed, check], args.markdown)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
