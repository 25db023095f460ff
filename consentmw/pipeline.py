"""The collector: the one object the middleware and API hand hits and ledger records to.

It wires the data flow request → hit → minimise → enrich → batch → sink: the queue and
writer thread from `store`, the minimiser and enrichment from `collect`, the ClickHouse
sink and the spool. Submitting is a non-blocking append; everything else runs on the
writer's threads. It starts on ASGI lifespan startup (or on the first request when a
server sends no lifespan events) and drains on shutdown (or at interpreter exit).

Without lifespan events the drain at exit has two hooks: `atexit` (a normal exit), and,
because a process ended by SIGTERM's default action runs no `atexit` handler (uvicorn
re-raises the SIGTERM it caught once its own graceful shutdown is done), a SIGTERM handler
installed when the first collector is built, only if SIGTERM still has its default
disposition and only from the main thread. It drains every live collector, then restores
the default and re-raises the signal, so the exit status is unchanged. A handler the
application or server installed itself is never replaced.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import signal
import threading
import time
import weakref
from typing import Any, Callable

from consentmw.collect.enrich import Enricher, proof_key
from consentmw.collect.hit import Hit
from consentmw.collect.minimise import Minimiser
from consentmw.collect.minimise_worker import WorkerConfig
from consentmw.collect.offload import OffloadedMinimiser
from consentmw.collect.salt import DailySalts
from consentmw.core.ledger import ConsentRecord
from consentmw.core.settings import Settings
from consentmw.heap import freeze_startup_heap
from consentmw.serving import current_server, several_workers_problem
from consentmw.store.chdb_lock import held_by_a_sibling, locked_elsewhere
from consentmw.store.dsn import choose_database, parse_dsn
from consentmw.store.salts import SaltStore
from consentmw.store.schema import Schema
from consentmw.store.sink import ClickHouseSink, MigrationRefused, SinkError, StoreLockedError
from consentmw.store.spool import Spool
from consentmw.store.writer import Stats, Writer

log = logging.getLogger("consentmw")

#: how long a starting worker waits for the worker it replaces to release the chDB directory
#: (a graceful reload); below gunicorn's default worker timeout (30 s)
LOCK_WAIT = 25.0

_LIVE: "weakref.WeakSet[Collector]" = weakref.WeakSet()
_hook_installed = False


def _on_sigterm(signum: int, frame: Any) -> None:
    """Drain every live collector, then die of SIGTERM as the default action would."""
    for collector in list(_LIVE):
        try:
            collector.stop(blocking=False)
        except Exception:  # noqa: BLE001 - never stand between a process and its exit
            log.exception("consentmw: drain on SIGTERM failed")
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _install_sigterm_hook() -> None:
    global _hook_installed
    if _hook_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
            _hook_installed = True
    except (ValueError, OSError, AttributeError):  # not the main interpreter, or no SIGTERM
        pass


class Collector:
    def __init__(self, settings: Settings, sink: ClickHouseSink | None = None) -> None:
        self.settings = settings
        self.policy = settings.policy
        if sink is None:
            database = choose_database(parse_dsn(settings.clickhouse_dsn), settings.database)
            sink = ClickHouseSink(settings.clickhouse_dsn, Schema(self.policy, database, settings.cluster),
                                  allow_shorter_retention=settings.allow_shorter_retention)
        self.sink = sink
        # The day's visitor salt lives in the store, so every worker and app server (and the
        # next process after a restart) gives one visitor one code per day. It is asked for
        # only while the store answers; otherwise a provisional salt keeps the writer going.
        salts = DailySalts(loader=SaltStore(sink).load, available=lambda: self.stats.sink_healthy)
        proofs = proof_key(settings.secret_key[0])
        self.enricher = Enricher(settings.trusted_proxies, settings.geoip_db, proofs,
                                 settings.forwarded_header, salts=salts, allowed_hosts=settings.allowed_hosts)
        self.minimiser = Minimiser(self.policy, self.enricher)
        # Busy batches are minimised in a worker process, off the event loop's GIL (collect/offload.py).
        self.offload = OffloadedMinimiser(self.minimiser, WorkerConfig(
            self.policy, list(settings.trusted_proxies), settings.geoip_db, proofs,
            settings.forwarded_header, list(settings.allowed_hosts)), mode=settings.minimise_worker)
        self.spool = Spool(settings.spool_dir, settings.spool_max_bytes)
        self.stats = Stats()
        self.writer = Writer(self.offload.process, self.sink, self.spool, self.stats,
                             batch_size=settings.batch_size, max_batch_size=settings.max_batch_size,
                             flush_interval=settings.flush_interval,
                             queue_size=settings.queue_size)
        self.minimiser.pause = self.offload.pause = self.writer.pacer.pace
        # Fetch the day's salt on the replay thread as soon as the store answers, so the
        # writer's first batch of a day does not wait for it.
        self.writer.housekeeping.append(self._warm_salt)
        #: True while the writer threads run (read on every request; `start` sets it under a lock)
        self.started = False
        #: called with each page-view hit of a visitor who has a visitor id, as it is queued
        #: (the profile service shows a visitor their own latest views before they are stored)
        self.on_visitor_view: Callable[[Hit], None] | None = None
        #: background helpers that live as long as the writer (start() / stop(timeout))
        self.companions: list[Any] = []
        self._start_lock = threading.Lock()
        self._atexit = False
        _LIVE.add(self)
        _install_sigterm_hook()

    def _warm_salt(self) -> None:
        if self.stats.sink_healthy:
            self.enricher.salts.salt(int(time.time() // 86400))

    @classmethod
    def from_settings(cls, settings: Settings) -> "Collector":
        return cls(settings)

    # -- producer API (event loop; must not block) -------------------------------
    def submit(self, hit: Hit) -> bool:
        self.stats.accepted += 1
        view = self.on_visitor_view
        # (`type(hit) is Hit`: whatever else is submitted is the writer's to refuse, not ours)
        if view is not None and type(hit) is Hit and hit.visitor_id is not None and hit.event_type == "pageview":
            view(hit)
        return self.writer.put(hit)

    def submit_many(self, hits: list[Hit]) -> int:
        """`submit` for a beacon's batch: one queue operation; returns how many were taken."""
        self.stats.accepted += len(hits)
        view = self.on_visitor_view
        if view is not None:
            for hit in hits:
                if hit.visitor_id is not None and hit.event_type == "pageview" and type(hit) is Hit:
                    view(hit)
        return self.writer.put_many(hits)

    def record(self, record: ConsentRecord) -> None:
        self.writer.put(record)

    # -- lifecycle ------------------------------------------------------------
    def ensure_started(self) -> None:
        """Start on a request's path (no lifespan): nothing slow runs on the event loop."""
        if not self.started:
            self.start(warm_up_now=False)

    def start(self, warm_up_now: bool = True) -> None:
        """Start the writer threads. Never blocks on the store: connecting, migrating and
        replaying what an earlier process left in the spool happen on the replay thread."""
        with self._start_lock:
            if self.started:
                return
            self.started = True
            self.offload.reopen()
            self.writer.start(warm_up_now)
            for companion in self.companions:
                companion.start()
            if self.settings.freeze_gc:
                freeze_startup_heap()  # short full collections from here on (consentmw/heap.py)
            if not self._atexit:
                # Servers that send no lifespan events: drain when the interpreter exits.
                atexit.register(self.stop)
                self._atexit = True

    def stop(self, timeout: float | None = None, blocking: bool = True) -> None:
        """Drain the queue to the store, or to the spool after `shutdown_timeout` seconds.

        `blocking=False` (the signal handler) gives up at once if a stop is already running.
        """
        if not self._start_lock.acquire(blocking):
            return
        try:
            if not self.started and not (self.writer.queue or self.writer.overflow):
                return
            self.started = False
            timeout = self.settings.shutdown_timeout if timeout is None else timeout
            # A batch with a hung minimise worker comes back to the writer in time to be stored.
            self.offload.give_up_by(time.monotonic() + timeout / 2)
            self.writer.stop(timeout)
            self.offload.close()
            for companion in self.companions:
                companion.stop(2.0)
            if self.stats.last_error and not self.stats.sink_healthy:
                log.warning("consentmw: stopped with the store unavailable (%s); %d bytes wait in the spool "
                            "at %s for the next process", self.stats.last_error, self.spool.bytes(),
                            self.spool.dir)
        finally:
            self._start_lock.release()

    async def astart(self) -> None:
        """Lifespan startup. With the embedded store, open it now (off the event loop):
        a chDB directory that several workers would share, or that another process holds,
        is a deployment error that must stop the server with a clear message, not a spool
        that no process can ever replay. The one exception is a graceful reload: while the
        worker being replaced (a sibling under the same server master) still holds the
        directory, wait for it, up to `LOCK_WAIT` seconds."""
        if self.sink.embedded and self.sink.chdb_path is not None:
            problem = several_workers_problem(self.sink.chdb_path)
            if problem is not None:
                raise StoreLockedError(problem)
            await self._wait_for_previous_worker(self.sink.chdb_path)
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._open_embedded)
            except (StoreLockedError, MigrationRefused):
                raise
            except SinkError as exc:  # any other failure: serve anyway, spool, retry
                log.warning("consentmw: embedded store not ready at start (%s); events will be spooled", exc)
        # Before the server accepts requests: the parsers' one-time set-up holds the GIL.
        await asyncio.get_running_loop().run_in_executor(None, self.enricher.warm_up)
        self.start()

    def _open_embedded(self) -> None:
        """Connect and migrate, then fetch the day's salt before the first request, so the
        writer's first batch does not wait for it."""
        self.sink.client()
        self.enricher.salts.preload(int(time.time() // 86400))

    async def _wait_for_previous_worker(self, path: str) -> None:
        """While a sibling worker (the one a graceful reload replaces) holds the directory,
        wait for it to let go, up to LOCK_WAIT seconds; the lock is probed, not chDB."""
        holder = held_by_a_sibling(path) if current_server() is not None else None
        if holder is None:
            return
        log.warning("consentmw: the previous worker (pid %d) still holds %s; waiting up to %d s for it to "
                    "finish", holder, path, LOCK_WAIT)
        deadline = time.monotonic() + LOCK_WAIT
        while locked_elsewhere(path) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def astop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    def flush(self) -> None:
        """Write everything queued now and replay the spool (tests and the CLI use it;
        the server never needs to)."""
        self.writer.flush_all()

    def replay(self) -> int:
        """Replay the spool into the store now; returns the number of rows stored."""
        if not self.writer.healthy and not self.writer.probe():
            return 0
        return self.writer.replay()

    def health(self) -> dict[str, Any]:
        """Queue depth, spool size, last successful flush and the counters (JSON-ready)."""
        spool = self.spool
        stats = self.stats.as_dict()
        return {
            "status": "ok" if stats["sink_healthy"] else ("spooling" if self.started else "stopped"),
            "queue_depth": len(self.writer.queue),
            "queue_capacity": self.writer.queue_size,
            "overflow_depth": len(self.writer.overflow),
            "spool_bytes": spool.bytes(),
            "spool_segments": len(spool.segments()),
            "spool_max_bytes": spool.max_bytes,
            "spool_corrupt": spool.stats.corrupt,
            "spool_quarantined": len(spool.quarantined()),
            "bots_ignored": self.minimiser.counts.bots,
            "hosts_ignored": self.minimiser.counts.hosts,
            "writer_running": self.writer.running,
            **self.offload.health(),
            "store": self.sink.dsn,  # the password is never shown
            **stats,
        }
