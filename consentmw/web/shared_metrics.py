"""`/metrics` for servers with several worker processes (gunicorn -w N, uvicorn --workers N).

Each worker counts for itself, and a scrape reaches one worker at random, so the
per-process exposition (`admin.HealthCollector`) would show one worker's share. With
`PROMETHEUS_MULTIPROC_DIR` set, prometheus-client's multiprocess mode is used instead:
every worker mirrors its counters and gauges into memory-mapped files in that directory
(from its replay thread, every 0.5 s, and just before it answers a scrape), and a scrape
of any worker adds up every worker's files:

* counters (accepted, stored, spooled, ...) are summed over every worker that ever ran
  since the directory was created, so they stay monotonic across worker restarts;
* queue gauges are summed over live workers (`livesum`), spool gauges take the largest
  live value (`livemax`: workers share one spool directory), `sink_healthy` the smallest
  (`livemin`: 1 only when every worker reaches ClickHouse), the last flush the latest.

A worker that exits leaves its `live*` files behind unless the server calls
`prometheus_client.multiprocess.mark_process_dead(pid)`: with gunicorn, set
`child_exit = consentmw.serving.gunicorn_child_exit` in its config file.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Literal

Mode = Literal["livesum", "livemax", "livemin", "max"]
#: how each gauge combines over workers
_GAUGE_MODES: dict[str, Mode] = {
    "queue_depth": "livesum", "queue_capacity": "livesum", "overflow_depth": "livesum",
    "spool_bytes": "livemax", "spool_segments": "livemax", "spool_max_bytes": "livemax",
    "spool_quarantined": "livemax",
}
_lock = threading.Lock()
_metrics: dict[str, Any] = {}


def enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def _process_metrics(counters: dict[str, str], gauges: dict[str, str], prefix: str = "consentmw") -> dict[str, Any]:
    """This process's metric objects (one set, whatever the number of middleware instances)."""
    from prometheus_client import Counter, Gauge

    with _lock:
        if not _metrics:
            for key, doc in counters.items():
                _metrics[key] = Counter(f"{prefix}_{key}", doc, registry=None)
            for key, doc in gauges.items():
                _metrics[key] = Gauge(f"{prefix}_{key}", doc, registry=None,
                                      multiprocess_mode=_GAUGE_MODES.get(key, "livesum"))
            _metrics["sink_healthy"] = Gauge(f"{prefix}_sink_healthy", "1 when every worker's last contact "
                                             "with ClickHouse succeeded", registry=None, multiprocess_mode="livemin")
            _metrics["writer_running"] = Gauge(f"{prefix}_writer_running", "Workers whose writer threads run",
                                               registry=None, multiprocess_mode="livesum")
            _metrics["last_flush"] = Gauge(f"{prefix}_last_flush_timestamp_seconds",
                                           "Unix time of the last successful insert (0: none yet)",
                                           registry=None, multiprocess_mode="max")
        return _metrics


class SharedMetrics:
    """Mirrors one collector's numbers into the multiprocess files; exposes every worker's."""

    def __init__(self, collector: Any, counters: dict[str, str], gauges: dict[str, str]) -> None:
        """`counters` and `gauges`: the health() keys to export, with their help texts."""
        self.collector = collector
        self.counters, self.gauges = counters, gauges
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def sync(self) -> None:
        """Write this worker's current numbers (counters as increments since the last sync)."""
        metrics = _process_metrics(self.counters, self.gauges)
        health = self.collector.health()
        with self._lock:
            for key in self.counters:
                value = health.get(key)
                if isinstance(value, (int, float)):
                    delta = value - self._seen.get(key, 0)
                    if delta > 0:
                        metrics[key].inc(delta)
                    self._seen[key] = value
            for key in self.gauges:
                value = health.get(key)
                if isinstance(value, (int, float)):
                    metrics[key].set(value)
            metrics["sink_healthy"].set(1 if health.get("sink_healthy") else 0)
            metrics["writer_running"].set(1 if health.get("writer_running") else 0)
            metrics["last_flush"].set(health.get("last_flush") or 0)

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        self.sync()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return bytes(generate_latest(registry))
