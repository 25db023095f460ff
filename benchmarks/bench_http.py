"""HTTP throughput and tail latency: uvicorn (1 worker) serving a bare Starlette HTML page vs
the same app behind ConsentMiddleware with a valid all-purposes consent cookie (collecting
every request).

Each server runs in its own subprocess on a free 127.0.0.1 port and is driven by `wrk`
(one thread, fixed connections, fixed duration; an asyncio client if wrk is missing).
Two server stacks: uvicorn's production stack (uvloop + httptools, `uvicorn[standard]`)
and the pure-Python one (asyncio + h11). Bare and consentmw runs alternate. A loop-lag
probe in the server reports the longest event-loop stall of each measured run.
After SIGTERM (uvicorn's lifespan shutdown drains the collector), a separate process
counts rows in that server's chDB directory: stored events must equal the 2xx responses
the server sent. Goals (production stack): requests/s >= 0.8x bare, p99 <= 1.5x bare.

    python benchmarks/bench_http.py [--quick] [--duration S] [--connections N] [--repeats R]
                                    [--stack standard|plain|both]
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

GOAL = 0.8
P99_GOAL = 1.5
TABLES = ("events_statistics", "events_personalisation")
STACKS = {"standard": "uvloop + httptools", "plain": "asyncio + h11"}


def stack_available() -> bool:
    """True when uvicorn's production stack (uvloop + httptools) is installed."""
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("uvloop", "httptools"))


def serve(app: str, tmp: str, tag: str, stack: str | None = None) -> tuple[subprocess.Popen[Any], int, str, str]:
    stack = stack or ("standard" if stack_available() else "plain")
    port = free_port()
    data = f"{tmp}/{tag}-data"
    stats = f"{tmp}/{tag}-stats.json"
    proc = subprocess.Popen([sys.executable, str(BENCH_DIR / "_server.py"), "--app", app, "--port", str(port),
                             "--data", data, "--stats", stats, "--stack", stack])
    wait_port(port, proc)
    return proc, port, data, stats


def reset_probe(port: int) -> None:
    """Clear the server's loop-lag probe: its numbers then cover the measured run only."""
    import urllib.request
    urllib.request.urlopen(f"http://127.0.0.1:{port}/__probe/reset", timeout=10).read()


def one_run(app: str, tmp: str, tag: str, headers: dict[str, str], duration: float, connections: int,
            use_wrk: bool, stack: str = "standard") -> dict[str, Any]:
    proc, port, data, stats_file = serve(app, tmp, tag, stack)
    try:
        url = f"http://127.0.0.1:{port}/"
        warm = load(url, duration=1, connections=connections, headers=headers, use_wrk=use_wrk)
        reset_probe(port)
        res = load(url, duration=duration, connections=connections, headers=headers, use_wrk=use_wrk)
    finally:
        code = stop_server(proc, timeout=180)
    res["client_ok_total"] = warm["ok"] + res["ok"]
    res["exit"] = code
    stats = json.loads(Path(stats_file).read_text()) if Path(stats_file).exists() else {}
    res["server_2xx"] = sum(v for k, v in stats.get("status", {}).items() if k.startswith("2"))
    res["collector"] = stats.get("collector", {})
    res["loop_lag"] = stats.get("loop_lag", {})
    if app == "consent":
        res["stored"] = count_rows(data, "consentmw", TABLES)
    return res


def main() -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=None, help="seconds per measured run (default 10)")
    p.add_argument("--connections", type=int, default=None, help="keep-alive connections (default 32)")
    p.add_argument("--python-client", action="store_true", help="use the asyncio client even if wrk exists")
    p.add_argument("--stack", choices=["standard", "plain", "both"], default=None,
                   help="server stack(s) to measure (default both; --quick: standard)")
    args = p.parse_args()
    duration = args.duration or (1.0 if args.quick else 10.0)
    repeats = args.repeats or (1 if args.quick else 3)
    connections = args.connections or (8 if args.quick else 32)
    use_wrk = wrk_available() and not args.python_client
    choice = args.stack or ("standard" if args.quick else "both")
    stacks = ["standard", "plain"] if choice == "both" else [choice]
    if "standard" in stacks and not stack_available():
        print("uvloop/httptools missing: install uvicorn[standard] (make bench does); measuring asyncio + h11 only")
        stacks = ["plain"]

    cookie = consent_cookie()
    base_headers = {"User-Agent": BROWSER_UA, "Accept-Language": "en-US,en;q=0.9",
                    "Referer": "https://www.google.com/search?q=hello"}
    consent_headers = dict(base_headers, Cookie=f"consentmw={cookie}")
    results: dict[tuple[str, str], list[dict[str, Any]]] = {(s, a): [] for s in stacks for a in ("bare", "consent")}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        for r in range(repeats):
            for stack in stacks:
                order = ("bare", "consent") if r % 2 == 0 else ("consent", "bare")
                for app in order:
                    headers = consent_headers if app == "consent" else base_headers
                    results[stack, app].append(one_run(app, tmp, f"{stack}-{app}{r}", headers, duration,
                                                       connections, use_wrk, stack))

    tool = results[stacks[0], "bare"][0]["tool"]
    speed = Table(f"HTTP throughput and latency: uvicorn 1 worker, {tool}, {connections} connections, "
                  f"{duration:g} s x {repeats} (medians)",
                  ["stack", "app", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max loop stall ms",
                   "req/s vs bare", "p99 vs bare"])
    verdicts = []
    for stack in stacks:
        base = results[stack, "bare"]
        bare_rps = median(x["rps"] for x in base)
        bare_p99 = median(x["p99_ms"] for x in base)
        for app, label in (("bare", "bare Starlette HTML hello world"),
                           ("consent", "+ ConsentMiddleware, all purposes granted, collecting")):
            runs = results[stack, app]
            rps = median(x["rps"] for x in runs)
            p99 = median(x["p99_ms"] for x in runs)
            speed.add(STACKS[stack], label, rps, median(x["p50_ms"] for x in runs),
                      median(x.get("p90_ms", float("nan")) for x in runs), p99,
                      median(x.get("p999_ms", float("nan")) for x in runs),
                      median(x["loop_lag"].get("max_ms", float("nan")) for x in runs),
                      ratio(rps, bare_rps), ratio(p99, bare_p99))
        consent = results[stack, "consent"]
        got = median(x["rps"] for x in consent) / bare_rps if bare_rps else 0.0
        tail = median(x["p99_ms"] for x in consent) / bare_p99 if bare_p99 else float("inf")
        if stack == "standard":
            verdicts.append(f"goal req/s >= {GOAL}x bare ({STACKS[stack]}): "
                            f"{'met' if got >= GOAL else 'MISSED'} ({got:.2f}x)")
            verdicts.append(f"goal p99 <= {P99_GOAL}x bare ({STACKS[stack]}): "
                            f"{'met' if tail <= P99_GOAL else 'MISSED'} ({tail:.2f}x; per run: "
                            + ", ".join(f"{c['p99_ms'] / b['p99_ms']:.2f}x" for c, b in zip(consent, base)) + ")")
        else:
            verdicts.append(f"{STACKS[stack]}: req/s {got:.2f}x bare, p99 {tail:.2f}x bare (reference row)")
    for v in verdicts:
        speed.note(v)
    speed.note("load generator and server share the machine's cores (loopback); latencies are wrk's "
               "(coordinated omission not corrected); 'max loop stall' = the longest a 1 ms timer on the "
               "server's event loop woke late during the measured run")

    check = Table("HTTP throughput: stored events vs 2xx responses (consentmw runs)",
                  ["run", "client 2xx", "server 2xx", "stored statistics", "stored personalisation",
                   "spooled", "dropped", "exact"])
    all_exact = True
    for stack in stacks:
        for i, res in enumerate(results[stack, "consent"]):
            stored = res["stored"]
            col = res["collector"]
            exact = (stored["events_statistics"] == res["server_2xx"] == stored["events_personalisation"]
                     and res["client_ok_total"] <= res["server_2xx"] <= res["client_ok_total"] + 2 * connections
                     and res["exit"] == 0)
            all_exact &= exact
            check.add(f"{STACKS[stack]} #{i + 1}", res["client_ok_total"], res["server_2xx"],
                      stored["events_statistics"], stored["events_personalisation"], col.get("spooled", "-"),
                      col.get("dropped", "-"), exact)
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
