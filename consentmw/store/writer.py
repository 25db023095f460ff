"""The writer thread: batches queued items, turns them into rows, inserts, and never loses them.

Flushes at `batch_size` items or `flush_interval` seconds. A batch the sink refuses is
written to the spool with its dedup token; while the sink is failing, batches go
straight to the spool (no request waits on a dead server) and a replay is attempted
with exponential backoff and jitter. Overflow beyond the in-memory queue is turned into
rows and spooled by a second thread, so the event loop never blocks and raw visitor
data never touches the disk.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.ipc as ipc

from .sink import ClickHouseSink, SinkError, to_arrow
from .spool import Record, Spool, SpoolFull

log = logging.getLogger("consentmw.writer")

Process = Callable[[Iterable[Any]], dict[str, dict[str, list[Any]]]]


@dataclass
class Stats:
    accepted: int = 0
    stored: int = 0
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0
    invalid: int = 0
    rate_limited: int = 0
    last_flush: float | None = None
    last_error: str = ""
    sink_healthy: bool = True
    _last_drop_log: float = field(default=0.0, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


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
                 overflow_size: int = 100_000) -> None:
        self.process = process
        self.sink = sink
        self.spool = spool
        self.stats = stats
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue_size = queue_size
        self.queue: deque[Any] = deque()
        self.overflow: deque[Any] = deque()
        self.overflow_size = overflow_size
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._retry_at = 0.0
        self._backoff = 0.5
        self._flush_lock = threading.Lock()
        self._deadline = float("inf")

    # -- producer side (event loop) --------------------------------------------
    def put(self, item: Any) -> bool:
        """Queue one item without blocking; spill to the overflow, or drop and count."""
        queue = self.queue
        if len(queue) < self.queue_size:
            queue.append(item)
            if len(queue) >= self.batch_size:
                self._wake.set()
            return True
        if len(self.overflow) < self.overflow_size:
            self.overflow.append(item)
            self._wake.set()
            return True
        self._drop(1, "queue and overflow full")
        return False

    # -- lifecycle ------------------------------------------------------------
    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._threads = [threading.Thread(target=self._run, name="consentmw-writer", daemon=True),
                         threading.Thread(target=self._spill_loop, name="consentmw-spill", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Drain: everything queued goes to the store, or to the spool past the deadline."""
        deadline = time.monotonic() + timeout
        self._deadline = deadline
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        # Whatever is still queued (threads gone or too slow) is spooled, never dropped.
        with self._flush_lock:
            while self.queue or self.overflow:
                items = self._take(self.queue) or self._take(self.overflow)
                self._write(items, to_sink=False)
        self.spool.close()

    # -- writer loop -------------------------------------------------------------
    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(min(0.05, self.flush_interval))
            self._wake.clear()
            now = time.monotonic()
            if len(self.queue) >= self.batch_size or (self.queue and now - last >= self.flush_interval):
                self.flush()
                last = time.monotonic()
            if now >= self._retry_at and self.spool.pending():
                self.replay()
        # Final drain within the stop deadline; stop() spools whatever is left after it.
        while self.queue and time.monotonic() < self._deadline:
            self.flush()

    def _spill_loop(self) -> None:
        while not self._stop.is_set() or self.overflow:
            if not self.overflow:
                self._wake.wait(0.05)
                continue
            self._write(self._take(self.overflow), to_sink=False)

    def _take(self, queue: deque[Any]) -> list[Any]:
        items = []
        pop = queue.popleft
        try:
            for _ in range(self.batch_size):
                items.append(pop())
        except IndexError:
            pass
        return items

    def flush(self) -> int:
        """Write one batch from the queue; returns how many items it took."""
        with self._flush_lock:
            items = self._take(self.queue)
            if items:
                self._write(items, to_sink=time.monotonic() >= self._retry_at)
            return len(items)

    def _write(self, items: list[Any], to_sink: bool) -> None:
        try:
            rows = self.process(items)
        except Exception:  # noqa: BLE001 - a bug in enrichment must not kill the writer
            log.exception("consentmw: processing a batch of %d items failed; items dropped", len(items))
            self._drop(len(items), "processing error")
            return
        batch_id = uuid.uuid4().hex
        for table, columns in rows.items():
            data = to_arrow(table, columns)
            token = f"{batch_id}:{table}"
            if to_sink:
                try:
                    self.sink.insert(table, data, token)
                    self.stats.stored += data.num_rows
                    self.stats.last_flush = time.time()
                    self._healthy()
                    continue
                except SinkError as exc:
                    self._failed(exc)
                    to_sink = False
            self._spool(table, data, token)

    def _spool(self, table: str, data: pa.Table, token: str) -> None:
        try:
            self.spool.write(Record("rows", table, token, encode_ipc(data)))
            self.stats.spooled += data.num_rows
        except SpoolFull as exc:
            self._drop(data.num_rows, str(exc))

    # -- health and replay -------------------------------------------------------
    def _healthy(self) -> None:
        self.stats.sink_healthy = True
        self._backoff = 0.5
        self._retry_at = 0.0

    def _failed(self, exc: Exception) -> None:
        self.stats.sink_healthy = False
        self.stats.last_error = str(exc)[:300]
        self._retry_at = time.monotonic() + self._backoff * (0.5 + random.random())
        self._backoff = min(self._backoff * 2, 30.0)
        log.warning("consentmw: store unavailable, spooling (%s)", self.stats.last_error)

    def replay(self) -> int:
        """Move spooled batches into the store, oldest first; stop at the first failure."""
        moved = 0
        for _seg, record, ack in self.spool.replay():
            try:
                data = decode_ipc(record.body)
            except Exception:  # noqa: BLE001 - undecodable despite a valid checksum
                self.spool.stats.corrupt += 1
                ack()
                continue
            try:
                self.sink.insert(record.table, data, record.token)
            except SinkError as exc:
                self._failed(exc)
                break
            ack()
            self._healthy()
            self.stats.replayed += data.num_rows
            self.stats.stored += data.num_rows
            self.stats.last_flush = time.time()
            moved += data.num_rows
        return moved

    def _drop(self, n: int, why: str) -> None:
        self.stats.dropped += n
        now = time.monotonic()
        if now - self.stats._last_drop_log > 10:
            self.stats._last_drop_log = now
            log.error("consentmw: dropped %d event(s): %s (total dropped %d)", n, why, self.stats.dropped)
