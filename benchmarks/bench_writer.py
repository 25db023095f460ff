"""Writer pipeline: events/s from the queue through minimise -> enrich -> Arrow -> chDB, on one core.

Uses the real objects (Collector, its Writer, Minimiser, Enricher and ClickHouseSink on an
embedded chDB directory): the queue is filled with N captured page hits, then the writer's
own `flush()` is called until the queue is empty, exactly as its thread would. Beside it,
a raw clickhouse-connect insert of the same rows (`insert_arrow` of the same Arrow tables,
and a plain column-list `insert`) shows what the store alone costs. The process is pinned
to one CPU (chDB's threads too). Goal: >= 150,000 events/s (warm user-agent cache).

    python benchmarks/bench_writer.py [--quick] [--hits N] [--repeats R] [--batch B] [--profile] [--no-pin]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import SECRET, Table, emit, median, parser, ratio  # noqa: E402

GOAL = 150_000
ALL = frozenset({"statistics", "personalisation", "marketing"})
STATS_ONLY = frozenset({"statistics"})

_BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_{m}) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{m} Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{m} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{m} Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel {m}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36 Edg/{v}.0.0.0",
]
UA_POOL = [t.format(v=v, m=m) for t in _BROWSERS for v in range(118, 132) for m in (1, 5)][:200]
REFERRERS = ["", "", "https://www.google.com/search?q=consent", "https://news.ycombinator.com/", "https://t.co/x",
             "https://example.com/articles/2"]
LANGS = ["en-US,en;q=0.9", "ru-RU,ru;q=0.9,en;q=0.8", "kk-KZ,kk;q=0.9", "de-DE,de;q=0.9"]


def make_hits(n: int, version: str, purposes: frozenset[str], cold: bool, seed: int = 0) -> list[Any]:
    """N captured page hits from ~1,000 visitors: 200 browser UA strings (or each unseen if cold)."""
    from consentmw.collect.hit import Hit

    now = time.time()
    hits = []
    for i in range(n):
        v = (i * 7919 + seed) % 1000
        ua = UA_POOL[v % len(UA_POOL)]
        if cold:  # a unique, never-seen UA string per hit (build number varies)
            ua = ua.replace(".0.0.0", f".0.{seed}.{i}", 1) if ".0.0.0" in ua else ua + f" Build/{seed}.{i}"
        campaign = {"utm_source": "newsletter", "utm_medium": "email"} if i % 10 == 0 else None
        hits.append(Hit(now - (n - i) * 0.001, "pageview", "www.example.com", f"/articles/{i % 500}",
                        f"consent{v:04d}", version, purposes, f"visitor{v:04d}" if "personalisation" in purposes else None,
                        f"203.0.{v // 256}.{v % 256}", "", ua, LANGS[v % len(LANGS)], REFERRERS[i % len(REFERRERS)],
                        campaign, 200, 3 + i % 40))
    return hits


def column_lists(data: Any) -> dict[str, list[Any]]:
    """An Arrow table as the plain Python column lists clickhouse-connect's `insert` takes."""
    import pyarrow as pa

    return {name: ([dict(v) for v in col.to_pylist()] if pa.types.is_map(col.type) else col.to_pylist())
            for name, col in zip(data.column_names, data.columns)}


class Timers:
    """Per-stage wall time inside the writer (process, insert)."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {"process": 0.0, "insert": 0.0}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        t = self.t

        def timed(*a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                t[name] += time.perf_counter() - start
        return timed


def main() -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--hits", type=int, default=None, help="hits per run (default 100,000)")
    p.add_argument("--profile", action="store_true", help="also cProfile one warm run and print the top functions")
    p.add_argument("--batch", type=int, default=None,
                   help="largest insert (default: the writer's max_batch_size, as when it drains a backlog)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    args = p.parse_args()
    n = args.hits or (5_000 if args.quick else 100_000)
    repeats = args.repeats or (1 if args.quick else 3)
    pinned = ""
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        cpu = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {cpu})  # before chDB starts its threads: they inherit it
        pinned = f"pinned to CPU {cpu}"

    from consentmw.collect.useragent import parse_agent
    from consentmw.pipeline import Collector
    from consentmw.core.settings import Settings

    tmp = tempfile.mkdtemp(prefix="bench-writer-")
    settings = Settings.build(dict(secret_key=SECRET, clickhouse_dsn=f"chdb://{tmp}/data", spool_dir=f"{tmp}/spool",
                                   database="bench", queue_size=max(n, 100_000), minimise_worker="off",
                                   **({"max_batch_size": args.batch} if args.batch else {})), environ={})
    collector = Collector(settings)
    writer = collector.writer
    if not writer.probe():  # connect + migrate once, outside the timings; marks the store healthy
        raise RuntimeError(f"cannot open chDB: {collector.stats.last_error}")
    client = collector.sink.client()
    version = settings.policy.version
    tables = [plan.table for plan in collector.minimiser.plans.values()]
    timers = Timers()
    writer.process = timers.wrap("process", writer.process)
    sink_insert = collector.sink.insert
    collector.sink.insert = timers.wrap("insert", sink_insert)  # type: ignore[method-assign]

    def truncate() -> None:
        for t in tables:
            client.command(f"TRUNCATE TABLE IF EXISTS bench.{t}")

    def count() -> int:
        return sum(int(client.command(f"SELECT count() FROM bench.{t}")) for t in tables)

    def pipeline(hits: list[Any]) -> dict[str, float]:
        truncate()
        for k in timers.t:
            timers.t[k] = 0.0
        stored0 = collector.stats.stored
        for h in hits:
            writer.put(h)
        start, cpu0 = time.perf_counter(), time.thread_time()
        while writer.flush():
            pass
        elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu0
        rows = collector.stats.stored - stored0
        if count() != rows or collector.stats.spooled or collector.stats.dropped:
            raise RuntimeError(f"pipeline stored {count()} rows, counted {rows}, stats {collector.stats.as_dict()}")
        return {"elapsed": elapsed, "rows": rows, "cpu": cpu, **{k: v for k, v in timers.t.items()}}

    results: dict[str, list[dict[str, float]]] = {}

    def record(key: str, res: dict[str, float]) -> None:
        results.setdefault(key, []).append(res)

    # Warm the UA cache with the pool (a server's steady state), and run once untimed.
    parse_agent.cache_clear()
    for ua in UA_POOL:
        parse_agent(ua)
    pipeline(make_hits(min(n, 5_000), version, ALL, cold=False, seed=99))

    batch = writer.max_batch_size
    for r in range(repeats):
        hits = make_hits(n, version, ALL, cold=False, seed=r)
        record("warm", pipeline(hits))
        # The same rows, inserted raw: rebuild exactly what the writer inserted, batch by batch.
        arrow_batches = []
        column_batches = []
        for i in range(0, n, batch):
            for table, data in collector.minimiser.process(hits[i:i + batch]).items():
                arrow_batches.append((table, data))
                column_batches.append((table, column_lists(data)))
        del hits
        nrows = sum(t.num_rows for _, t in arrow_batches)
        truncate()
        start = time.perf_counter()
        for table, data in arrow_batches:
            client.insert_arrow(f"bench.{table}", data)
        record("raw_arrow", {"elapsed": time.perf_counter() - start, "rows": nrows})
        truncate()
        start = time.perf_counter()
        for table, columns in column_batches:
            client.insert(f"bench.{table}", list(columns.values()), column_names=list(columns),
                          column_oriented=True)
        record("raw_insert", {"elapsed": time.perf_counter() - start, "rows": nrows})
        del arrow_batches, column_batches

        record("stats_only", pipeline(make_hits(n, version, STATS_ONLY, cold=False, seed=r)))
        parse_agent.cache_clear()
        record("cold", pipeline(make_hits(n, version, ALL, cold=True, seed=r)))
        for ua in UA_POOL:
            parse_agent(ua)

    # The same pipeline with the minimise worker (collect/offload.py) on the other CPU: the
    # app's core keeps encoding, the insert and the bookkeeping; minimising moves away.
    offload = collector.offload
    others = sorted(set(range(os.cpu_count() or 1)) - {cpu}) if pinned else []
    worker_peak_mb = 0.0
    if others:
        offload.mode = "on"
        pipeline(make_hits(min(n, 5_000), version, ALL, cold=False, seed=98))  # starts and warms the worker
        pid = offload.health()["minimise_worker_pid"]
        os.sched_setaffinity(pid, {others[0]})
        for r in range(repeats):
            record("offload", pipeline(make_hits(n, version, ALL, cold=False, seed=r)))
        with open(f"/proc/{pid}/status") as f:
            worker_peak_mb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
        offload.mode = "off"
        offload.close()

    def rate(key: str, what: str = "elapsed") -> float:
        return median(n / x[what] for x in results[key])

    warm = rate("warm")
    title = f"Writer pipeline: {n:,} page hits per run x {repeats} (medians), batch {batch:,}, {pinned or 'not pinned'}"
    table = Table(title, ["path", "events/s", "rows/s", "µs/event", "ratio to pipeline (warm)"])
    for key, label in (("warm", "pipeline, warm UA cache, all purposes (2 rows/event)"),
                       ("cold", "pipeline, cold UA cache (every UA unseen), all purposes"),
                       ("stats_only", "pipeline, warm UA cache, statistics only (1 row/event)")):
        ev = rate(key)
        rows_per = median(x["rows"] / x["elapsed"] for x in results[key])
        table.add(label, ev, rows_per, 1e6 / ev, ratio(ev, warm))
    for key, label in (("raw_arrow", "raw clickhouse-connect insert_arrow of the same rows"),
                       ("raw_insert", "raw clickhouse-connect insert (column lists) of the same rows")):
        ev = rate(key)
        rows_per = median(x["rows"] / x["elapsed"] for x in results[key])
        table.add(label, ev, rows_per, 1e6 / ev, ratio(ev, warm))
    if "offload" in results:
        ev = rate("offload")
        table.add("pipeline with the minimise worker on a second CPU (end-to-end)", ev,
                  median(x["rows"] / x["elapsed"] for x in results["offload"]), 1e6 / ev, ratio(ev, warm))
        app_us = median(x["cpu"] / n * 1e6 for x in results["offload"])
        own_us = median(x["cpu"] / n * 1e6 for x in results["warm"])
        table.note(f"with the minimise worker: the app's own thread spends {app_us:.2f} µs CPU per event "
                   f"(encode, read back, insert call) instead of {own_us:.2f} µs in-thread; the worker process "
                   f"peaked at {worker_peak_mb:.0f} MB resident")
    verdict = "met" if warm >= GOAL else "MISSED"
    table.note(f"goal >= {GOAL:,} events/s (warm, one core): {verdict} ({warm:,.0f} events/s)")
    table.note("events = captured hits taken from the queue; with all purposes granted each becomes one row in "
               "events_statistics and one in events_personalisation; raw inserts get the pipeline's own rows, "
               "so 'events/s' there is rows/s / 2 and counts the store alone")

    parts = Table("Writer pipeline: where the time goes (warm, all purposes; medians)",
                  ["stage", "µs/event", "share"])
    stage_us = {k: median(x[k] / n * 1e6 for x in results["warm"]) for k in ("process", "insert")}
    total_us = median(x["elapsed"] / n * 1e6 for x in results["warm"])
    stage_us["writer bookkeeping (queue, tokens, stats)"] = max(0.0, total_us - sum(stage_us.values()))
    for k, v in stage_us.items():
        label = {"process": "minimise + enrich into Arrow tables (Minimiser.process)",
                 "insert": "chDB insert_arrow (2 tables per batch)"}.get(k, k)
        parts.add(label, v, f"{v / total_us * 100:.0f}%" if total_us else "-")
    parts.add("total", total_us, "100%")
    if warm < GOAL:
        biggest = max(stage_us, key=stage_us.get)  # type: ignore[arg-type]
        parts.note(f"the goal needs <= {1e6 / GOAL:.1f} µs/event; the largest stage is '{biggest}' "
                   f"({stage_us[biggest]:.1f} µs/event); the raw insert_arrow of the same rows alone runs at "
                   f"{rate('raw_arrow'):,.0f} events/s")
    tables_out = [table, parts, gil_stretches(collector, version, repeats)]

    if args.profile:
        import cProfile
        import pstats

        hits = make_hits(n, version, ALL, cold=False, seed=7)
        truncate()
        for h in hits:
            writer.put(h)
        prof = cProfile.Profile()
        prof.enable()
        while writer.flush():
            pass
        prof.disable()
        st = pstats.Stats(prof)
        total = st.total_tt  # type: ignore[attr-defined]
        top = Table("Writer pipeline: cProfile, top functions by own time (warm run)",
                    ["function", "calls", "own s", "own share", "cumulative s"])
        entries = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:15]  # type: ignore[attr-defined]
        for (filename, line, func), (cc, nc, tt, ct, _) in entries:
            where = f"{Path(filename).name}:{line}({func})" if line else func
            top.add(where, nc, tt, f"{tt / total * 100:.0f}%", ct)
        top.note("cProfile adds overhead per Python call, which inflates Python-heavy stages relative to chDB")
        tables_out.append(top)

    emit(tables_out, args.markdown)
    collector.sink.close()
    return 0


def gil_stretches(collector: Any, version: str, repeats: int) -> Table:
    """How long the writer computes without offering the GIL back, in CPU time.

    While a thread runs Python code, the event loop waits for the GIL (up to the switch
    interval per callback under uvloop), so the longest stretch of writer CPU between two
    yield points bounds how long a request can be held up by it. Unpaced, a batch is one
    stretch; paced, the minimiser yields between columns. CPU time (not wall time), so a
    busy machine does not lengthen it.
    """
    minimiser = collector.minimiser
    table = Table("Writer and the event loop: longest stretch of writer CPU between GIL yield points "
                  f"(min over {max(3, repeats)} runs)",
                  ["batch", "whole batch ms CPU", "longest stretch ms CPU (paced)", "yield points",
                   "stretch vs whole batch"])
    saved = minimiser.pause
    try:
        for size in (1_000, 5_000, 20_000):
            hits = make_hits(size, version, ALL, cold=False, seed=size)
            minimiser.process(hits[:100])
            best: tuple[float, float, int] | None = None
            for _ in range(max(3, repeats)):
                marks = [time.thread_time()]
                minimiser.pause = lambda: marks.append(time.thread_time())
                minimiser.process(hits)
                marks.append(time.thread_time())
                gaps = [b - a for a, b in zip(marks, marks[1:])]
                run = (max(gaps) * 1e3, (marks[-1] - marks[0]) * 1e3, len(gaps) - 1)
                best = run if best is None or run[0] < best[0] else best
            assert best is not None
            table.add(f"{size:,} hits", best[1], best[0], best[2], ratio(best[0], best[1]))
    finally:
        minimiser.pause = saved
    table.note("unpaced (before), the event loop could wait for a whole batch; paced, for one stretch "
               "(plus the switch interval); a backlog batch (up to max_batch_size) has proportionally longer ones")
    return table


if __name__ == "__main__":
    sys.exit(main())
