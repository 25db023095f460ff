"""The writer: batches queued items, turns them into rows, inserts them, and never loses them.

Three daemon threads, none of them on the event loop:

* the **writer** flushes the queue every `batch_size` items or `flush_interval` seconds.
  While the store is healthy a batch is inserted directly; a batch the store cannot take
  (down, slow, full) is written to the spool with its dedup token, and while the store is
  unhealthy batches go straight to the spool, so no batch waits on a dead or silent server.
  A batch the store answers but refuses for the values in it (`BatchRefused`) is split at
  once: the rows it takes are stored, only the refused ones are quarantined;
* the **spiller** turns overflow (items beyond the bounded in-memory queue) into rows and
  spools them, so a burst never blocks a request or grows memory (raw visitor data never
  touches the disk: only minimised rows are spooled);
* the **replayer** probes the store (connect and migrate) with exponential backoff and
  jitter while it is unhealthy, and drains the spool in order whenever it has records.

Every insert carries a deduplication token that stays with the batch through the spool,
so a batch whose insert succeeded but whose answer was lost is stored once.

`stop(timeout)` drains: the queue goes to the store, or to the spool once the deadline
passes. Batches still in flight at the deadline (an insert blocked on a silent server)
are spooled too, with their token: if the insert completes after all, the replay is a
no-op. Only a full spool (size cap or disk) drops rows, and every drop is counted.
"""

from __future__ import annotations

import io
import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from contextlib import closing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.ipc as ipc

from consentmw.core.redact import exception_text, redact
from consentmw.store.pacing import Pacer
from consentmw.store.sink import BatchRefused, ClickHouseSink, SinkError, StoreConfigError
from consentmw.store.spool import Record, Spool, SpoolFull, encode_record

log = logging.getLogger("consentmw.writer")

#: Minimise and enrich a batch of items into one Arrow table per ClickHouse table.
Process = Callable[[Iterable[Any]], dict[str, pa.Table]]

#: A spooled record the store keeps failing while it answers everything else, with an error
#: that names no bad value (a refused value is split at once), is split after this many
#: attempts, so one bad batch cannot block the spool.
POISON_ATTEMPTS = 5
#: A batch that fails for a reason other than the store being down is split to find its bad
#: items; after this many failed tries the rest of it is quarantined whole (bounded work).
MAX_SPLIT_FAILURES = 64
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
#: A store that refuses us (credentials, rights, missing database) waits for an operator:
#: retry it no faster than this.
BACKOFF_REFUSED = 5.0


@dataclass
class Stats:
    """Counters. `accepted` counts events; stored/spooled/replayed/dropped count rows
    (an event granted to two collecting purposes is two rows; ledger records are rows)."""

    accepted: int = 0
    stored: int = 0
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0
    invalid: int = 0
    rate_limited: int = 0
    insert_failures: int = 0
    poisoned: int = 0
    quarantined: int = 0
    last_flush: float | None = None
    last_error: str = ""
    sink_healthy: bool = False
    _last_drop_log: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


def bisect(items: list[Any], attempt: Callable[[list[Any]], bool],
           max_failures: int) -> Iterator[tuple[list[Any], bool]]:
    """Split a batch that failed as a whole into (part, failed) pieces, depth first, in order.

    `attempt(part)` tries a part and, when it works, has done the work. A part that fails
    is halved until single items fail alone. After `max_failures` failed tries the parts
    not tried yet are given up as failed whole: a batch of nothing but bad items costs a
    bounded number of tries, not two per item.
    """
    if len(items) <= 1:
        yield items, True
        return
    failures = 1  # the whole batch
    half = len(items) // 2
    stack = [items[half:], items[:half]]
    while stack:
        part = stack.pop()
        if failures >= max_failures:
            yield part, True
        elif attempt(part):
            yield part, False
        else:
            failures += 1
            if len(part) == 1:
                yield part, True
            else:
                half = len(part) // 2
                stack.extend((part[half:], part[:half]))


def insert_isolating(sink: ClickHouseSink, spool: Spool, record: Record,
                     data: pa.Table, strict: bool = False) -> tuple[int, int, Path | None]:
    """Insert the slices of a refused batch the store takes; quarantine the rest in one file.

    Returns (rows stored, rows quarantined, the quarantine file). Each slice keeps a token
    derived from the batch's and its position, so a split cut short by an outage and
    repeated later stores every slice once. Raises SinkError when the store stops
    answering (then nothing is quarantined and the caller keeps the record). A slice is
    blamed when the store refuses its values (BatchRefused); with `strict` only then, else
    also for any other failure while the store still answers `SELECT 1`.
    """
    def fits(part: list[int]) -> bool:
        start, stop = part[0], part[-1] + 1
        try:
            sink.insert(record.table, data.slice(start, stop - start), f"{record.token}:{start}-{stop}")
        except BatchRefused:
            return False
        except SinkError:
            if strict:  # not the rows: the store failed (full, slow, gone) in the middle
                raise
            try:
                sink.command("SELECT 1")
            except Exception as exc:  # noqa: BLE001 - the store is down: not the rows' fault
                raise SinkError(redact(str(exc))[:300]) from None
            return False
        return True

    pieces = list(bisect(list(range(data.num_rows)), fits, MAX_SPLIT_FAILURES))
    bad = [part for part, failed in pieces if failed]
    refused = sum(len(part) for part in bad)
    path = None
    if bad:
        kept = pa.concat_tables([data.slice(part[0], len(part)) for part in bad])
        path = spool.keep_bad("rows", encode_record(Record("rows", record.table, record.token, encode_ipc(kept))))
        log.error("consentmw: the store refused %d of %d rows for %s; those rows are quarantined in %s, "
                  "the rest is stored", refused, data.num_rows, record.table, path)
    return data.num_rows - refused, refused, path


def _describe(item: Any) -> Any:
    """A JSON-ready view of a queued item (a hit or a ledger record) for the quarantine file."""
    if is_dataclass(item) and not isinstance(item, type):
        return {f.name: getattr(item, f.name) for f in fields(item)}
    return item


class _Deadline:
    """Set once the monotonic clock reaches `at`: a stop signal for `Writer.replay` that
    needs no thread to set it."""

    def __init__(self, at: float) -> None:
        self.at = at

    def is_set(self) -> bool:
        return time.monotonic() >= self.at


def warm_up_pyarrow() -> None:
    """pyarrow's first conversion, which imports pandas when it is installed (seconds)."""
    pa.array(["warm-up"], type=pa.string())


def encode_ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def decode_ipc(body: bytes) -> pa.Table:
    return ipc.open_stream(io.BytesIO(body)).read_all()


class Writer:
    def __init__(self, process: Process, sink: ClickHouseSink, spool: Spool, stats: Stats, *,
                 batch_size: int = 5000, flush_interval: float = 1.0, queue_size: int = 100_000,
                 overflow_size: int = 100_000, max_batch_size: int | None = None) -> None:
        self.process = process
        self.sink = sink
        self.spool = spool
        self.stats = stats
        self.batch_size = batch_size
        # A flush starts at `batch_size` items but takes whatever has queued up, to this cap:
        # ClickHouse inserts cost per insert as much as per row (measured on chDB: 5,000-row
        # inserts ~280k rows/s, 50,000-row inserts ~620k rows/s), so a backlog is cleared in
        # fewer, larger inserts.
        self.max_batch_size = max(batch_size, max_batch_size or batch_size * 10)
        self.flush_interval = flush_interval
        self.queue_size = queue_size
        self.queue: deque[Any] = deque()
        self.overflow: deque[Any] = deque()
        self.overflow_size = overflow_size
        self._wake = threading.Event()
        self._spill_wake = threading.Event()
        self._replay_wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN
        self._flush_lock = threading.Lock()
        self._replay_lock = threading.Lock()
        self._deadline = float("inf")
        self._inflight: dict[str, tuple[str, pa.Table]] = {}
        self._inflight_lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._ever_healthy = False
        #: quick tasks the replay thread runs every loop (at most every 0.5 s), off the
        #: writer's path: the collector warms the day's salt here
        self.housekeeping: list[Callable[[], None]] = []
        # Flush early when the queue is half full, so a burst the store keeps up with
        # is inserted rather than spilled.
        self._early = max(1, min(batch_size, queue_size // 2))
        #: the writer's threads give the GIL back to the event loop between short slices of work
        #: while requests keep arriving (see `pacing`); `process` should call it between steps
        self.pacer = Pacer(lambda: stats.accepted, lambda: len(self.queue) / self.queue_size)

    # -- producer side (event loop) --------------------------------------------
    def put(self, item: Any) -> bool:
        """Queue one item without blocking; spill to the overflow, or drop and count."""
        queue = self.queue
        if len(queue) < self.queue_size:
            queue.append(item)
            # (Event.set takes a lock and notifies: only the first put past the mark pays it)
            if len(queue) >= self._early and not self._wake.is_set():
                self._wake.set()
            return True
        if len(self.overflow) < self.overflow_size:
            self.overflow.append(item)
            self._spill_wake.set()
            return True
        self._drop(1, "queue and overflow full")
        return False

    def put_many(self, items: list[Any]) -> int:
        """Queue a batch (a beacon's events) in one step; returns how many were taken
        (the rest spilled or dropped and counted, item by item, as `put` does)."""
        queue = self.queue
        if len(queue) + len(items) <= self.queue_size:
            queue.extend(items)
            if len(queue) >= self._early and not self._wake.is_set():
                self._wake.set()
            return len(items)
        return sum(self.put(item) for item in items)

    # -- lifecycle ------------------------------------------------------------
    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def healthy(self) -> bool:
        return self.stats.sink_healthy

    def start(self, warm_up_now: bool = True) -> None:
        """Start the threads. `warm_up_now=False` (a start on the event loop's path) leaves
        pyarrow's first conversion to the writer thread, which does it before anything else."""
        if self._threads and not self._stop.is_set():
            return
        # A fresh stop event per start: a thread of an earlier run still blocked on the
        # store finishes its call and exits instead of joining this run.
        stop = self._stop = threading.Event()
        self._deadline = float("inf")
        # pyarrow imports optional modules (pandas) on its first conversion; doing that at
        # interpreter exit fails ("can't register atexit after shutdown") and would cost the
        # last batch, so the first conversion happens at start. It takes a second or more
        # (4 s seen on a busy machine): too long to hold up the event loop.
        if warm_up_now:
            warm_up_pyarrow()
        self._threads = [threading.Thread(target=self._run, args=(stop, not warm_up_now), name="consentmw-writer",
                                          daemon=True),
                         threading.Thread(target=self._spill_loop, args=(stop,), name="consentmw-spill", daemon=True),
                         threading.Thread(target=self._replay_loop, args=(stop,), name="consentmw-replay", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Drain within `timeout` seconds: the queue to the store, then (the store being up)
        the spool too; past the deadline what is left goes to (or stays in) the spool. Never drops."""
        deadline = time.monotonic() + timeout
        self._deadline = deadline
        self._stop.set()
        for event in (self._wake, self._spill_wake, self._replay_wake):
            event.set()
        writer, spiller, replayer = self._threads if self._threads else (None, None, None)
        for t in (writer, spiller, replayer):
            if t is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        # Past the deadline (or the threads are done): whatever is still queued goes to the
        # spool. The writer's own flush may be blocked on the store, so no flush lock here.
        while self.queue or self.overflow:
            items = self._take(self.queue) or self._take(self.overflow)
            if items:
                self._write(items, to_sink=False)
        # Batches in flight to a store that has not answered: spool them with their token.
        with self._inflight_lock:
            stuck, self._inflight = self._inflight, {}
        for token, (table, data) in stuck.items():
            log.warning("consentmw: insert into %s still running at the shutdown deadline; spooling it", table)
            self._spool(table, data, token)
        if spiller is not None and spiller.is_alive():
            spiller.join(2.0)  # it only writes to local disk
        self.spool.close()

    # -- threads -----------------------------------------------------------------
    def _run(self, stop: threading.Event, warm_up: bool = False) -> None:
        if warm_up:
            warm_up_pyarrow()
        self.pacer.enter()
        last = time.monotonic()
        while not stop.is_set():
            self._wake.wait(min(0.05, self.flush_interval))
            self._wake.clear()
            now = time.monotonic()
            if len(self.queue) >= self._early or (self.queue and now - last >= self.flush_interval):
                self.flush()
                last = time.monotonic()
        # Final drain within the stop deadline (unpaced); stop() spools whatever is left after it.
        self.pacer.leave()
        while self.queue and time.monotonic() < self._deadline:
            self.flush()

    def _spill_loop(self, stop: threading.Event) -> None:
        self.pacer.enter()
        while True:
            if not self.overflow:
                if stop.is_set():
                    return
                self._spill_wake.wait(0.05)
                self._spill_wake.clear()
                continue
            # Gather a while (bounded by the overflow's size) so the spool gets fewer,
            # larger records: each record is one insert when it is replayed.
            deadline = time.monotonic() + 0.2
            while (len(self.overflow) < min(self.batch_size, self.overflow_size // 2)
                   and not stop.is_set() and time.monotonic() < deadline):
                time.sleep(0.01)
            self._write(self._take(self.overflow), to_sink=False)

    def _replay_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if time.monotonic() >= self._retry_at:
                try:
                    if not self.healthy:
                        self.probe()
                    if self.healthy and self.spool.pending():
                        self.replay(stop)
                    for task in self.housekeeping:
                        task()
                except Exception as exc:  # noqa: BLE001 - the replayer must outlive any bug
                    log.error("consentmw: replay failed unexpectedly: %s", exception_text(exc))
                    self._failed(RuntimeError("replay error"), quiet=True)
            wait = max(0.05, min(0.5, self._retry_at - time.monotonic()))
            self._replay_wake.wait(wait)
            self._replay_wake.clear()
        self._replay_at_stop()

    def _replay_at_stop(self) -> None:
        """Stopping with the store up: what was spilled while serving is replayed too, after
        the queue's own drain and the spill thread's last write, until the stop's deadline.
        A clean stop then leaves the spool empty instead of to the next process; a record
        still being inserted at the deadline stays in the spool (its token dedups a retry)."""
        me = threading.current_thread()
        for thread in self._threads:
            if thread is not me:
                thread.join(max(0.0, self._deadline - time.monotonic()))
        if time.monotonic() >= self._deadline or not self.healthy or not self.spool.pending():
            return
        try:
            self.replay(_Deadline(self._deadline))
        except Exception as exc:  # noqa: BLE001 - the records stay in the spool for the next process
            log.error("consentmw: replay at shutdown failed: %s", exception_text(exc))

    # -- batches -----------------------------------------------------------------
    def _take(self, queue: deque[Any]) -> list[Any]:
        items = []
        pop = queue.popleft
        try:
            for _ in range(self.max_batch_size):
                items.append(pop())
        except IndexError:
            pass
        return items

    def flush(self) -> int:
        """Write one batch from the queue; returns how many items it took."""
        with self._flush_lock:
            items = self._take(self.queue)
            if items:
                self._write(items, to_sink=self.healthy)
            return len(items)

    def flush_all(self) -> None:
        """Synchronously write everything queued and replay the spool (tests, CLI, shutdown hooks)."""
        if not self.healthy:
            self.probe()
        while self.flush():
            pass
        while self.overflow:
            self._write(self._take(self.overflow), to_sink=self.healthy)
        if self.healthy and self.spool.pending():
            self.replay()

    def _write(self, items: list[Any], to_sink: bool) -> None:
        try:
            rows = self.process(items)
        except Exception as exc:  # noqa: BLE001 - a bug or a bad item must not kill the writer
            # Not the store's fault: split the batch; only items that fail alone are kept aside.
            log.error("consentmw: processing a batch of %d items failed (%s); isolating the bad ones",
                      len(items), redact(str(exc))[:200] or type(exc).__name__)
            errors = [exc]

            def attempt(part: list[Any]) -> bool:
                try:
                    done = self.process(part)
                except Exception as exc:  # noqa: BLE001 - the question asked
                    errors.append(exc)
                    return False
                self._emit(done, to_sink)
                return True

            for part, failed in bisect(items, attempt, MAX_SPLIT_FAILURES):
                if failed:
                    self._quarantine_items(part, errors[-1])
            return
        self._emit(rows, to_sink)

    def _emit(self, rows: dict[str, pa.Table], to_sink: bool) -> None:
        """Insert one processed batch (one table at a time), or spool it."""
        batch_id = uuid.uuid4().hex
        for table, data in rows.items():
            self.pacer()
            token = f"{batch_id}:{table}"
            if to_sink and self.healthy:
                self._insert(table, data, token)
            else:
                self._spool(table, data, token)

    def _quarantine_items(self, items: list[Any], why: Exception | str) -> None:
        """Keep items no batch could process for inspection (0600) and count them; never raises."""
        self.stats.add("quarantined", len(items))
        reason = redact(str(why))[:300] or type(why).__name__
        try:
            blob = "\n".join(json.dumps({"why": reason, "item": _describe(item)}, default=repr) for item in items)
        except Exception:  # noqa: BLE001 - describing a broken item may fail too
            blob = "\n".join(repr(item) for item in items)
        path = self.spool.keep_bad("items", blob.encode("utf-8", "backslashreplace"))
        log.error("consentmw: %d item(s) could not be processed (%s); kept in %s", len(items), reason, path)

    def _insert(self, table: str, data: pa.Table, token: str) -> None:
        """Insert directly; on failure spool the batch (unless shutdown already spooled it)."""
        with self._inflight_lock:
            self._inflight[token] = (table, data)
        stored = data.num_rows
        try:
            try:
                self.sink.insert(table, data, token)
            except BatchRefused:
                # The store is up and refused values in the batch: retrying it whole cannot
                # help, so split it now, store every row it takes, quarantine the rest.
                stored = self._isolate_rows(Record("rows", table, token, b""), data, strict=True)
        except SinkError as exc:
            self._failed(exc)
            with self._inflight_lock:
                mine = self._inflight.pop(token, None) is not None
            if mine:
                self._spool(table, data, token)
            return
        with self._inflight_lock:
            self._inflight.pop(token, None)
        self.stats.add("stored", stored)
        self.stats.last_flush = time.time()
        self._healthy()

    def _spool(self, table: str, data: pa.Table, token: str) -> None:
        try:
            self.spool.write(Record("rows", table, token, encode_ipc(data)))
            self.stats.add("spooled", data.num_rows)
        except SpoolFull as exc:
            self._drop(data.num_rows, redact(str(exc)))
        self._replay_wake.set()

    # -- health and replay -------------------------------------------------------
    def _healthy(self) -> None:
        if not self.stats.sink_healthy:
            log.info("consentmw: store reachable%s", " again" if self._ever_healthy else "")
        self.stats.sink_healthy = True
        self._ever_healthy = True
        self._backoff = BACKOFF_MIN
        self._retry_at = 0.0

    def _failed(self, exc: Exception, quiet: bool = False) -> None:
        was_healthy = self.stats.sink_healthy
        self.stats.sink_healthy = False
        self.stats.add("insert_failures", 1)
        self.stats.last_error = redact(str(exc))[:300]
        refused = isinstance(exc, StoreConfigError)
        if refused:
            self._backoff = max(self._backoff, BACKOFF_REFUSED)
        wait = self._backoff * (0.5 + random.random())  # jitter: collectors don't retry in step
        # The floor holds after the jitter, or a refusing server is asked again after 2.5 s.
        self._retry_at = time.monotonic() + (max(wait, BACKOFF_REFUSED) if refused else wait)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        if was_healthy and not quiet:
            log.warning("consentmw: store unavailable, spooling (%s)", self.stats.last_error)

    def probe(self) -> bool:
        """Connect (and migrate) now; marks the store healthy or schedules the next try."""
        try:
            self.sink.client()
        except SinkError as exc:
            if isinstance(exc, StoreConfigError):
                if self.stats.last_error != str(exc)[:300]:  # once per distinct refusal
                    log.error("consentmw: %s; events are spooled until it is fixed", exc)
            elif not self._ever_healthy and not self.stats.last_error:
                log.warning("consentmw: ClickHouse not reachable (%s); events will be spooled", exc)
            self._failed(exc, quiet=True)
            return False
        self._healthy()
        return True

    def replay(self, stop: threading.Event | _Deadline | None = None) -> int:
        """Move spooled batches into the store, oldest first; stop at the first failure
        (or once `stop` is set: past the shutdown deadline the rest stays for the next process).

        Returns the number of rows stored. Safe to call from any thread and any process:
        segments are locked while being replayed.
        """
        moved = 0
        with self._replay_lock, closing(self.spool.replay()) as records:
            for _seg, record, ack in records:
                if stop is not None and stop.is_set():
                    break
                try:
                    data = decode_ipc(record.body)
                except Exception:  # noqa: BLE001 - undecodable despite a valid checksum
                    self.spool._quarantine(_seg, record.body, "undecodable batch")
                    ack()
                    continue
                stored = data.num_rows
                try:
                    self.sink.insert(record.table, data, record.token)
                except BatchRefused:
                    # The store refused values in it: split at once, store every row it takes.
                    try:
                        stored = self._isolate_rows(record, data, strict=True)
                    except SinkError as again:  # down in the middle: the record stays, in order
                        self._failed(again)
                        break
                except SinkError as exc:
                    if not self._poisoned(record, data, exc):
                        self._failed(exc)
                        break
                    # The store answers everything else but keeps failing this batch (an error
                    # that names no bad value, say a dropped table): store every row it takes.
                    try:
                        stored = self._isolate_rows(record, data)
                    except SinkError as again:  # down in the middle: the record stays, in order
                        self._failed(again)
                        break
                ack()
                self._attempts.pop(record.token, None)
                self._healthy()
                self.stats.add("replayed", stored)
                self.stats.add("stored", stored)
                self.stats.last_flush = time.time()
                moved += stored
        return moved

    def _isolate_rows(self, record: Record, data: pa.Table, strict: bool = False) -> int:
        """Store the rows of a refused batch the store takes; count the quarantined rest."""
        stored, refused, _path = insert_isolating(self.sink, self.spool, record, data, strict)
        if refused:
            self.stats.add("poisoned", refused)
        return stored

    def _poisoned(self, record: Record, data: pa.Table, exc: SinkError) -> bool:
        """True when the store answers but keeps refusing this one record."""
        n = self._attempts.get(record.token, 0) + 1
        self._attempts[record.token] = n
        if n < POISON_ATTEMPTS:
            return False
        try:
            self.sink.command("SELECT 1")
        except Exception:  # noqa: BLE001 - the store is down: not the record's fault
            return False
        log.error("consentmw: the store refused a spooled batch of %d rows for %s %d times (%s); quarantined",
                  data.num_rows, record.table, n, exc)
        self._attempts.pop(record.token, None)
        return True

    def _drop(self, n: int, why: str) -> None:
        self.stats.add("dropped", n)
        now = time.monotonic()
        if now - self.stats._last_drop_log > 10:
            self.stats._last_drop_log = now
            log.error("consentmw: dropped %d event(s): %s (total dropped %d)", n, why, self.stats.dropped)
