"""The embedded store's own cost: CPU per row and per insert of chDB, by batch size and table.

Why it exists: on a small machine the app and its embedded chDB share the same cores, so
what the store spends is taken from the pages (issue 14). This script measures it apart
from everything else, with the real schema and the real sink (`ClickHouseSink.insert`,
i.e. clickhouse-connect's `insert_arrow` with a deduplication token, as the writer calls it):

* each events table, at the batch sizes the writer produces (one insert per table per flush);
* events_personalisation twice: the real table, whose insert also runs the visitor-profile
  materialized view, and a copy of it without the view;
* baseline, the engine's floor: `INSERT … SELECT` of the same rows from a Memory table
  (no client, no file, no Arrow parsing);
* the background merges the inserts cause, measured after the inserts until chDB is idle;
* the steady state of a busy server: inserts at a fixed pace for a while, the second half's
  CPU per row (the insert and every merge meanwhile, which is where most of the store's CPU
  goes), for the statistics table as the schema makes it (`merge_selector_base` =
  `MERGE_SELECTOR_BASE`) against a copy with ClickHouse's default (5);
* how late a 1 ms timer in another thread wakes while the writer inserts (the event loop's
  view of it), against the same probe with the store idle.

CPU is the whole process's (chDB's threads included), so run it on a quiet machine.

    python benchmarks/bench_store.py [--quick] [--repeats R]
"""

from __future__ import annotations

import resource
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import SECRET, Table, emit, median, parser, ratio  # noqa: E402
from benchmarks.bench_writer import ALL, make_hits  # noqa: E402


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Store:
    """A migrated chDB store, its sink, and the rows one batch of N page hits becomes."""

    def __init__(self) -> None:
        from consentmw.core.settings import Settings
        from consentmw.pipeline import Collector

        tmp = tempfile.mkdtemp(prefix="bench-store-")
        self.settings = Settings.build(dict(secret_key=SECRET, clickhouse_dsn=f"chdb://{tmp}/data",
                                            spool_dir=f"{tmp}/spool", database="bench",
                                            minimise_worker="off"), environ={})
        self.collector = Collector(self.settings)
        if not self.collector.writer.probe():
            raise RuntimeError(f"cannot open chDB: {self.collector.stats.last_error}")
        self.sink = self.collector.sink
        self.client = self.sink.client()
        self.client.command("CREATE TABLE bench.personalisation_no_view AS bench.events_personalisation")
        self.client.command("CREATE TABLE bench.floor AS bench.events_statistics")

    def rows(self, n: int) -> dict[str, Any]:
        return self.collector.minimiser.process(make_hits(n, self.settings.policy.version, ALL, cold=False))

    def memory_copy(self, data: Any) -> str:
        """The rows in a Memory table, for the engine-floor baseline."""
        self.client.command("DROP TABLE IF EXISTS bench.memory_rows")
        self.client.command("CREATE TABLE bench.memory_rows ENGINE = Memory AS "
                            "SELECT * FROM bench.events_statistics LIMIT 0")
        self.client.insert_arrow("bench.memory_rows", data)
        return "bench.memory_rows"

    def idle(self, limit: float = 60.0) -> None:
        """Wait until no merge runs, then a little longer (merges are scheduled, not instant)."""
        end = time.monotonic() + limit
        while time.monotonic() < end and int(self.client.command("SELECT count() FROM system.merges")):
            time.sleep(0.05)
        time.sleep(0.3)

    def truncate(self) -> None:
        for table in ("events_statistics", "events_personalisation", "personalisation_no_view", "floor",
                      "visitor_profile"):
            self.client.command(f"TRUNCATE TABLE IF EXISTS bench.{table}")


def measure(store: Store, insert: Callable[[], None], inserts: int, rows: int,
            idle_rate: float) -> tuple[float, float, float]:
    """(µs CPU per row while inserting, µs CPU per row of the merges after, ms CPU per insert);
    `idle_rate` is what the idle engine spends per second, taken off the time spent waiting."""
    store.idle()
    start = process_cpu()
    for _ in range(inserts):
        insert()
    during = process_cpu() - start
    waited = time.monotonic()
    store.idle()
    after = process_cpu() - start - during - (time.monotonic() - waited) * idle_rate
    total_rows = inserts * rows
    return during / total_rows * 1e6, max(0.0, after) / total_rows * 1e6, (during + max(0.0, after)) / inserts * 1e3


def steady(store: Store, data: Any, base: int | None, inserts: int, pace: float) -> tuple[float, int]:
    """(µs process CPU per row over the second half of `inserts` paced inserts, active parts at
    the end) into a fresh copy of events_statistics; `base` None keeps the schema's own setting."""
    table = f"bench.steady_{uuid.uuid4().hex[:8]}"
    store.client.command(f"CREATE TABLE {table} AS bench.events_statistics")
    if base is not None:
        store.client.command(f"ALTER TABLE {table} MODIFY SETTING merge_selector_base = {base}")
    store.idle()
    begin = time.monotonic()
    start = 0.0
    for i in range(inserts):
        if i == inserts // 2:
            start = process_cpu()
        store.sink.insert(table.split(".", 1)[1], data, uuid.uuid4().hex)
        time.sleep(max(0.0, begin + (i + 1) / pace - time.monotonic()))
    cpu = process_cpu() - start
    parts = int(store.client.command(f"SELECT count() FROM system.parts WHERE active AND database = 'bench' "
                                     f"AND table = '{table.split('.', 1)[1]}'"))
    store.client.command(f"DROP TABLE {table} SYNC")
    return cpu / ((inserts - inserts // 2) * data.num_rows) * 1e6, parts


def loop_lag(seconds: float, busy: Callable[[], None] | None) -> tuple[float, float]:
    """(p99, max) in ms of how late a 1 ms sleep wakes, while `busy` runs in another thread."""
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            busy()

    thread = threading.Thread(target=work, daemon=True) if busy else None
    if thread:
        thread.start()
    lags = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        time.sleep(0.001)
        lags.append(time.perf_counter() - t0 - 0.001)
    stop.set()
    if thread:
        thread.join()
    lags.sort()
    return lags[int(len(lags) * 0.99)] * 1e3, lags[-1] * 1e3


def main() -> int:
    p = parser(__doc__.split("\n\n")[0])
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    sizes = (1_000, 5_000) if args.quick else (1_000, 5_000, 20_000, 50_000)
    inserts = 2 if args.quick else 6
    store = Store()
    start = process_cpu()
    time.sleep(1.0)
    idle_rate = process_cpu() - start

    cost = Table(f"Store cost: chDB inserts through the sink, {inserts} inserts per cell x {repeats} (medians), "
                 "process CPU incl. chDB's threads",
                 ["table", "rows per insert", "µs CPU/row inserting", "µs CPU/row merging after",
                  "µs CPU/row in all", "ms CPU per insert", "vs engine floor"])
    for n in sizes:
        data = store.rows(n)
        stats, personal = data["events_statistics"], data["events_personalisation"]
        memory = store.memory_copy(stats)
        cells: dict[str, list[tuple[float, float, float]]] = {}
        targets: list[tuple[str, Callable[[], None], int]] = [
            ("engine floor: INSERT … SELECT from Memory (events_statistics rows)",
             lambda: store.client.command(f"INSERT INTO bench.floor SELECT * FROM {memory}",
                                          settings={"insert_deduplication_token": uuid.uuid4().hex}),
             stats.num_rows),
            ("events_statistics", lambda: store.sink.insert("events_statistics", stats, uuid.uuid4().hex),
             stats.num_rows),
            ("events_personalisation (+ visitor-profile view)",
             lambda: store.sink.insert("events_personalisation", personal, uuid.uuid4().hex), personal.num_rows),
            ("events_personalisation, a copy without the view",
             lambda: store.sink.insert("personalisation_no_view", personal, uuid.uuid4().hex), personal.num_rows),
        ]
        for _ in range(repeats):
            for name, insert, rows in targets:
                store.truncate()
                cells.setdefault(name, []).append(measure(store, insert, inserts, rows, idle_rate))
        floor = None
        for name, _, _ in targets:
            during, after, per_insert = (median(v[i] for v in cells[name]) for i in range(3))
            floor = floor if floor is not None else during + after
            cost.add(name, n, during, after, during + after, per_insert, ratio(during + after, floor))
    cost.note("each page view with every purpose granted is one row in events_statistics and one in "
              "events_personalisation; a beacon event is one statistics row (page views also a personalisation row)")
    cost.note("'merging after' = CPU chDB spent once the inserts returned, until no merge ran "
              f"(the idle engine's own {idle_rate * 1e3:.1f} ms/s subtracted)")

    from consentmw.store.schema import MERGE_SELECTOR_BASE

    inserts, pace = (16, 8.0) if args.quick else (160, 4.0)
    batch = store.rows(15_000)["events_statistics"]
    tuned = Table(f"Store in steady state: {inserts} inserts of {batch.num_rows:,} statistics rows, {pace:g} a second, "
                  f"x {repeats} (medians); CPU per row over the second half, inserts and the merges meanwhile",
                  ["events_statistics", "µs CPU/row", "active parts at the end", "vs ClickHouse's default"])
    runs: dict[int, list[tuple[float, int]]] = {5: [], MERGE_SELECTOR_BASE: []}
    for _ in range(repeats):
        for base in runs:
            runs[base].append(steady(store, batch, None if base == MERGE_SELECTOR_BASE else base, inserts, pace))
    default = median(v[0] for v in runs[5])
    for base, label in ((5, "merge_selector_base 5 (ClickHouse's default; baseline)"),
                        (MERGE_SELECTOR_BASE, f"merge_selector_base {MERGE_SELECTOR_BASE} (the schema's)")):
        cpu = median(v[0] for v in runs[base])
        tuned.add(label, cpu, median(v[1] for v in runs[base]), ratio(cpu, default))
    tuned.note("each insert is a part; merges rewrite rows until parts are large, and a higher base merges more "
               "parts at once, so each row is rewritten fewer times (the price: a few more active parts)")

    lag = Table("Store and the event loop: how late a 1 ms timer in another thread wakes (ms)",
                ["while", "p99 ms", "max ms"])
    data = store.rows(20_000 if not args.quick else 5_000)
    seconds = 2.0 if args.quick else 6.0
    idle = [loop_lag(seconds, None) for _ in range(repeats)]
    busy = [loop_lag(seconds, lambda: [store.sink.insert(t, d, uuid.uuid4().hex) for t, d in data.items()])
            for _ in range(repeats)]
    lag.add("the store idle", median(v[0] for v in idle), median(v[1] for v in idle))
    lag.add(f"the writer inserting {data['events_statistics'].num_rows:,}-row batches back to back",
            median(v[0] for v in busy), median(v[1] for v in busy))
    lag.note("chDB releases the GIL while it inserts; what is left is the client's Python around each insert "
             "and the cores chDB's threads take from the loop's thread")
    emit([cost, tuned, lag], args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
