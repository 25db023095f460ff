"""The collector: the one object the middleware and API hand hits and ledger records to.

It wires the data flow request → hit → minimise → enrich → batch → sink: the queue and
writer thread from `store`, the minimiser and enrichment from `collect`, the ClickHouse
sink and the spool. Submitting is a non-blocking append; everything else runs on the
writer's threads. It starts on ASGI lifespan startup (or on the first request when a
server sends no lifespan events) and drains on shutdown (or at interpreter exit).
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import logging
import threading
from typing import Any

from .collect.enrich import Enricher
from .collect.hit import Hit
from .collect.minimise import Minimiser
from .ledger import ConsentRecord
from .settings import Settings
from .store.schema import Schema
from .store.sink import ClickHouseSink, SinkError
from .store.spool import Spool
from .store.writer import Stats, Writer

log = logging.getLogger("consentmw")


class Collector:
    def __init__(self, settings: Settings, sink: ClickHouseSink | None = None) -> None:
        self.settings = settings
        self.policy = settings.policy
        proof_key = hashlib.sha256(("consentmw.proof:" + settings.secret_key[0]).encode()).digest()
        self.enricher = Enricher(settings.trusted_proxies, settings.geoip_db, proof_key)
        self.minimiser = Minimiser(self.policy, self.enricher)
        self.sink = sink or ClickHouseSink(settings.clickhouse_dsn, Schema(self.policy, settings.database))
        self.spool = Spool(settings.spool_dir, settings.spool_max_bytes)
        self.stats = Stats()
        self.writer = Writer(self.minimiser.process, self.sink, self.spool, self.stats,
                             batch_size=settings.batch_size, flush_interval=settings.flush_interval,
                             queue_size=settings.queue_size)
        self._started = False
        self._start_lock = threading.Lock()
        self._atexit = False

    @classmethod
    def from_settings(cls, settings: Settings) -> "Collector":
        return cls(settings)

    # -- producer API (event loop; must not block) -------------------------------
    def submit(self, hit: Hit) -> bool:
        self.stats.accepted += 1
        return self.writer.put(hit)

    def record(self, record: ConsentRecord) -> None:
        self.writer.put(record)

    # -- lifecycle ------------------------------------------------------------
    def ensure_started(self) -> None:
        if not self._started:
            self.start()

    def start(self) -> None:
        with self._start_lock:
            if self._started:
                return
            self._started = True
            self.writer.start()
            if not self._atexit:
                atexit.register(self.stop)
                self._atexit = True
            # Connect and migrate off the event loop; failure only means "spool for now".
            threading.Thread(target=self._warm_up, name="consentmw-connect", daemon=True).start()

    def _warm_up(self) -> None:
        try:
            self.sink.client()
        except SinkError as exc:
            log.warning("consentmw: ClickHouse not reachable at start (%s); events will be spooled", exc)
            self.stats.last_error = str(exc)[:300]
            if "in use by another process" in str(exc):
                log.error("%s", exc)

    def stop(self) -> None:
        with self._start_lock:
            if not self._started:
                return
            self._started = False
            self.writer.stop(self.settings.shutdown_timeout)

    async def astart(self) -> None:
        self.start()

    async def astop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    def flush(self) -> None:
        """Write everything queued now (tests and the CLI use it; the server never needs to)."""
        while self.writer.flush():
            pass

    def health(self) -> dict[str, Any]:
        return {
            "queue_depth": len(self.writer.queue),
            "overflow_depth": len(self.writer.overflow),
            "spool_bytes": self.spool.bytes(),
            "spool_segments": len(self.spool.segments()),
            "spool_corrupt": self.spool.stats.corrupt,
            "bots_ignored": self.minimiser.counts.bots,
            "writer_running": self.writer.running,
            **self.stats.as_dict(),
        }
