"""HTTP throughput: uvicorn (1 worker) serving a bare Starlette HTML page vs the same app
behind ConsentMiddleware with a valid all-purposes consent cookie (collecting every request).

Each server runs in its own subprocess on a free 127.0.0.1 port and is driven by `wrk`
(one thread, fixed connections, fixed duration; an asyncio client if wrk is missing).
After SIGTERM (uvicorn's lifespan shutdown drains the collector), a separate process
counts rows in that server's chDB directory: stored events must equal the 2xx responses
the server sent. Goal: consentmw >= 0.6x the bare app's requests/s.

    python benchmarks/bench_http.py [--quick] [--duration S] [--connections N] [--repeats R]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (BENCH_DIR, BROWSER_UA, Table, consent_cookie, count_rows, emit, free_port,  # noqa: E402
                                median, parser, ratio, stop_server, wait_port)
from benchmarks._load import load, wrk_available  # noqa: E402

GOAL = 0.6
TABLES = ("events_statistics", "events_personalisation")


def serve(app: str, tmp: str, tag: str) -> tuple[subprocess.Popen[Any], int, str, str]:
    port = free_port()
    data = f"{tmp}/{tag}-data"
    stats = f"{tmp}/{tag}-stats.json"
    proc = subprocess.Popen([sys.executable, str(BENCH_DIR / "_server.py"), "--app", app, "--port", str(port),
                             "--data", data, "--stats", stats])
    wait_port(port, proc)
    return proc, port, data, stats


def one_run(app: str, tmp: str, tag: str, headers: dict[str, str], duration: float, connections: int,
            use_wrk: bool) -> dict[str, Any]:
    proc, port, data, stats_file = serve(app, tmp, tag)
    try:
        url = f"http://127.0.0.1:{port}/"
        warm = load(url, duration=1, connections=connections, headers=headers, use_wrk=use_wrk)
        res = load(url, duration=duration, connections=connections, headers=headers, use_wrk=use_wrk)
    finally:
        code = stop_server(proc, timeout=180)
    res["client_ok_total"] = warm["ok"] + res["ok"]
    res["exit"] = code
    stats = json.loads(Path(stats_file).read_text()) if Path(stats_file).exists() else {}
    res["server_2xx"] = sum(v for k, v in stats.get("status", {}).items() if k.startswith("2"))
    res["collector"] = stats.get("collector", {})
    if app == "consent":
        res["stored"] = count_rows(data, "consentmw", TABLES)
    return res


def main() -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=None, help="seconds per measured run (default 10)")
    p.add_argument("--connections", type=int, default=None, help="keep-alive connections (default 32)")
    p.add_argument("--python-client", action="store_true", help="use the asyncio client even if wrk exists")
    args = p.parse_args()
    duration = args.duration or (1.0 if args.quick else 10.0)
    repeats = args.repeats or (1 if args.quick else 3)
    connections = args.connections or (8 if args.quick else 32)
    use_wrk = wrk_available() and not args.python_client

    cookie = consent_cookie()
    base_headers = {"User-Agent": BROWSER_UA, "Accept-Language": "en-US,en;q=0.9",
                    "Referer": "https://www.google.com/search?q=hello"}
    consent_headers = dict(base_headers, Cookie=f"consentmw={cookie}")
    results: dict[str, list[dict[str, Any]]] = {"bare": [], "consent": []}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        for r in range(repeats):
            order = ("bare", "consent") if r % 2 == 0 else ("consent", "bare")
            for app in order:
                headers = consent_headers if app == "consent" else base_headers
                results[app].append(one_run(app, tmp, f"{app}{r}", headers, duration, connections, use_wrk))

    tool = results["bare"][0]["tool"]
    speed = Table(f"HTTP throughput: uvicorn 1 worker, {tool}, {connections} connections, "
                  f"{duration:g} s x {repeats} (medians)",
                  ["app", "req/s", "p50 ms", "p99 ms", "ratio to bare"])
    bare_rps = median(x["rps"] for x in results["bare"])
    for app, label in (("bare", "bare Starlette HTML hello world"),
                       ("consent", "+ ConsentMiddleware, all purposes granted, collecting")):
        rps = median(x["rps"] for x in results[app])
        speed.add(label, rps, median(x["p50_ms"] for x in results[app]),
                  median(x["p99_ms"] for x in results[app]), ratio(rps, bare_rps))
    got = median(x["rps"] for x in results["consent"]) / bare_rps if bare_rps else 0.0
    speed.note(f"goal >= {GOAL}x bare: {'met' if got >= GOAL else 'MISSED'} ({got:.2f}x)")
    speed.note("load generator and server share the machine's cores (loopback); "
               "uvicorn " + ("with httptools" if _has("httptools") else "with h11 (httptools not installed)")
               + ", " + ("uvloop" if _has("uvloop") else "asyncio event loop (uvloop not installed)"))

    check = Table("HTTP throughput: stored events vs 2xx responses (consentmw runs)",
                  ["run", "client 2xx", "server 2xx", "stored statistics", "stored personalisation",
                   "spooled", "dropped", "exact"])
    all_exact = True
    for i, res in enumerate(results["consent"]):
        stored = res["stored"]
        col = res["collector"]
        exact = (stored["events_statistics"] == res["server_2xx"] == stored["events_personalisation"]
                 and res["client_ok_total"] <= res["server_2xx"] <= res["client_ok_total"] + 2 * connections
                 and res["exit"] == 0)
        all_exact &= exact
        check.add(f"#{i + 1}", res["client_ok_total"], res["server_2xx"], stored["events_statistics"],
                  stored["events_personalisation"], col.get("spooled", "-"), col.get("dropped", "-"), exact)
    check.note("stored rows counted in the server's chDB directory by a separate process after SIGTERM "
               "(graceful drain); 'exact' = every 2xx page the server sent is stored once per purpose, "
               "and the client saw all of them but the requests in flight when each load run "
               f"(warm-up, measured) stopped (at most {connections} each)")
    check.note("all runs exact" if all_exact else "MISMATCH: events lost or duplicated")
    emit([speed, check], args.markdown)
    return 0 if all_exact else 1


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
