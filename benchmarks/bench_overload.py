"""Memory under overload: RSS while hits arrive at 10x a nominal rate and the store is down.

The DSN points at a closed port on 127.0.0.1 (connection refused), so every batch goes to
the durable spool. Each scenario runs in its own process: the same producer submits
captured page hits through `Collector.submit` (what the middleware calls) at the nominal
rate (1x) and at 10x, for a fixed duration, while RSS, queue depth, spooled and dropped
are sampled every 0.25 s. Memory must stay bounded (queue and overflow are capped; the
rest spills to disk) and every hit must be spooled or counted as dropped.

    python benchmarks/bench_overload.py [--quick] [--rate EVENTS_PER_S] [--duration S]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import BROWSER_UA, SECRET, Table, emit, free_port, median, parser, ratio, rss_kib  # noqa: E402


def child(rate: float, duration: float) -> dict[str, Any]:
    from consentmw.collect.hit import Hit
    from consentmw.pipeline import Collector
    from consentmw.core.settings import Settings

    tmp = tempfile.mkdtemp(prefix="bench-overload-")
    closed = free_port()  # nothing listens there: connection refused
    settings = Settings.build(dict(secret_key=SECRET, clickhouse_dsn=f"http://127.0.0.1:{closed}",
                                   spool_dir=f"{tmp}/spool", shutdown_timeout=60.0), environ={})
    collector = Collector(settings)
    version = settings.policy.version
    purposes = frozenset({"statistics"})  # one row per hit: spooled rows count hits
    def hit(i: int) -> Any:
        return Hit(time.time(), "pageview", "www.example.com", f"/articles/{i % 500}", f"consent{i % 1000:04d}",
                   version, purposes, None, f"203.0.113.{i % 250}", "", BROWSER_UA, "en-US,en;q=0.9", "", None, 200, 5)

    # Warm-up (imports, first batch through the spool path), counted like every other hit.
    offered = 0
    for _ in range(1000):
        collector.submit(hit(offered))
        offered += 1
    collector.writer.flush_all()
    rss_start = rss_kib()
    collector.start()
    samples: list[tuple[float, int, int, int, int, int]] = []
    tick = 0.01
    per_tick = rate * tick
    start = time.perf_counter()
    next_sample = start
    owed = 0.0
    while True:
        now = time.perf_counter()
        elapsed = now - start
        if elapsed >= duration:
            break
        owed = rate * elapsed - (offered - 1000)
        for _ in range(int(min(owed, per_tick * 10))):
            collector.submit(hit(offered))
            offered += 1
        if now >= next_sample:
            st = collector.stats
            samples.append((elapsed, rss_kib(), len(collector.writer.queue), len(collector.writer.overflow),
                            st.spooled, st.dropped))
            next_sample += 0.25
        time.sleep(max(0.0, tick - (time.perf_counter() - now)))
    produced_for = time.perf_counter() - start
    rss_end_load = rss_kib()
    t0 = time.perf_counter()
    collector.stop()
    stop_s = time.perf_counter() - t0
    st = collector.stats
    return {
        "rate": rate, "duration": produced_for, "offered": offered, "accepted": st.accepted,
        "spooled": st.spooled, "dropped": st.dropped, "stored": st.stored,
        "rss_start_kib": rss_start, "rss_peak_kib": max([s[1] for s in samples] + [rss_end_load]),
        "rss_end_kib": rss_kib(), "queue_peak": max((s[2] for s in samples), default=0),
        "overflow_peak": max((s[3] for s in samples), default=0), "queue_capacity": collector.writer.queue_size,
        "overflow_capacity": collector.writer.overflow_size, "spool_bytes": collector.spool.bytes(),
        "stop_s": stop_s, "achieved_rate": (offered - 1000) / produced_for,
    }


def main() -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=None, help="nominal events/s (default 10,000; 10x is offered)")
    p.add_argument("--duration", type=float, default=None, help="seconds of load per scenario (default 10)")
    p.add_argument("--child", nargs=2, metavar=("RATE", "DURATION"), help=argparse_suppress())
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(float(args.child[0]), float(args.child[1]))))
        return 0
    rate = args.rate or (2_000 if args.quick else 10_000)
    duration = args.duration or (2.0 if args.quick else 10.0)
    repeats = args.repeats or 1
    runs: dict[str, list[dict[str, Any]]] = {"1x": [], "10x": []}
    for _ in range(repeats):
        for label, mult in (("1x", 1), ("10x", 10)):
            res = subprocess.run([sys.executable, __file__, "--child", str(rate * mult), str(duration)],
                                 capture_output=True, text=True, timeout=duration * 20 + 300)
            if res.returncode != 0:
                raise SystemExit(f"overload child failed: {res.stderr[-3000:]}")
            runs[label].append(json.loads(res.stdout.strip().splitlines()[-1]))

    mib = 1024.0
    table = Table(f"Memory under overload: store down (connection refused), {duration:g} s of load, "
                  f"nominal {rate:,.0f} events/s" + (f", medians of {repeats}" if repeats > 1 else ""),
                  ["load", "offered/s", "achieved/s", "offered", "RSS start MiB", "RSS peak MiB", "peak growth MiB",
                   "vs 1x growth", "queue peak", "overflow peak", "spooled", "dropped", "spool MiB", "all accounted"])
    base_growth = median((r["rss_peak_kib"] - r["rss_start_kib"]) / mib for r in runs["1x"])
    ok = True
    for label in ("1x", "10x"):
        rs = runs[label]
        growth = median((r["rss_peak_kib"] - r["rss_start_kib"]) / mib for r in rs)
        accounted = all(r["offered"] == r["accepted"] == r["spooled"] + r["dropped"] and r["stored"] == 0 for r in rs)
        ok &= accounted
        table.add(label, median(r["rate"] for r in rs), median(r["achieved_rate"] for r in rs),
                  int(median(r["offered"] for r in rs)), median(r["rss_start_kib"] / mib for r in rs),
                  median(r["rss_peak_kib"] / mib for r in rs), growth, ratio(growth, base_growth),
                  int(median(r["queue_peak"] for r in rs)), int(median(r["overflow_peak"] for r in rs)),
                  int(median(r["spooled"] for r in rs)), int(median(r["dropped"] for r in rs)),
                  median(r["spool_bytes"] / mib / mib for r in rs), accounted)
    r10 = runs["10x"][-1]
    table.note(f"queue capacity {r10['queue_capacity']:,} + overflow {r10['overflow_capacity']:,} hits bound the "
               "memory; beyond them hits are counted as dropped (the spill to disk could not keep up)")
    table.note("'achieved/s' below 'offered/s' means the producer itself (Hit objects + submit, sharing the GIL "
               "with the writer threads) could not offer more on this machine")
    table.note("'all accounted': every offered hit was accepted and is now either in the spool or counted as "
               "dropped, after a graceful stop" + ("" if ok else " -- MISMATCH"))
    table.note(f"stopping (drain to the spool) took {median(r['stop_s'] for r in runs['10x']):.2f} s at 10x")
    emit([table], args.markdown)
    return 0 if ok else 1


def argparse_suppress() -> str:
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
