"""Operator endpoints: `GET /health` (JSON) and `GET /metrics` (Prometheus text format).

Both need `Authorization: Bearer <admin_token>` (setting `admin_token`, environment
`CONSENTMW_ADMIN_TOKEN`). Without a configured token they answer 404, so a site that
never set one exposes nothing. The Prometheus exposition reads `collector.health()` at
scrape time through a custom collector on a private registry: nothing is registered
globally, and several middleware instances in one process do not clash.
"""

from __future__ import annotations

import hmac
from typing import Any, Iterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from consentmw.web.api import ConsentAPI
from consentmw.web.http import HTTPProblem, header
from consentmw.web.shared_metrics import SharedMetrics, enabled as shared_metrics_enabled

#: health() keys exported as Prometheus counters (monotonic) and gauges.
COUNTERS = {
    "accepted": "Events accepted by the collector",
    "stored": "Rows stored in ClickHouse (directly or by replay)",
    "spooled": "Rows written to the disk spool",
    "replayed": "Rows moved from the spool into ClickHouse",
    "dropped": "Rows or events dropped (spool full or disk full)",
    "invalid": "Beacon requests refused as invalid",
    "rate_limited": "Beacon requests refused by the rate limit",
    "insert_failures": "Failed inserts or connection attempts to ClickHouse",
    "poisoned": "Rows quarantined because ClickHouse refused values in them",
    "quarantined": "Queued items quarantined because no batch could process them",
    "bots_ignored": "Hits ignored because the user agent is a bot",
    "spool_corrupt": "Torn or corrupt spool records quarantined",
    "minimise_offloaded_batches": "Batches minimised by the minimise worker process",
    "minimise_fallback_batches": "Batches the minimise worker could not take, minimised in the app process",
}
GAUGES = {
    "queue_depth": "Items waiting in the in-memory queue",
    "queue_capacity": "Capacity of the in-memory queue",
    "overflow_depth": "Items waiting to be spilled to the spool",
    "spool_bytes": "Bytes waiting in the spool",
    "spool_segments": "Spool segment files waiting to be replayed",
    "spool_max_bytes": "Spool size cap in bytes",
    "spool_quarantined": "Quarantined spool files kept for inspection",
}


def _authorised(request: Request, token: str) -> bool:
    value = header(request.scope, b"authorization") or ""
    scheme, _, given = value.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8"))


class HealthCollector:
    """A prometheus-client custom collector reading `health()` at scrape time."""

    def __init__(self, collector: Any, prefix: str = "consentmw") -> None:
        self.collector = collector
        self.prefix = prefix

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        health = self.collector.health()
        p = self.prefix
        for key, doc in COUNTERS.items():
            if isinstance(health.get(key), (int, float)):
                yield CounterMetricFamily(f"{p}_{key}", doc, value=health[key])
        for key, doc in GAUGES.items():
            if isinstance(health.get(key), (int, float)):
                yield GaugeMetricFamily(f"{p}_{key}", doc, value=health[key])
        yield GaugeMetricFamily(f"{p}_sink_healthy", "1 when the last contact with ClickHouse succeeded",
                                value=1 if health.get("sink_healthy") else 0)
        yield GaugeMetricFamily(f"{p}_writer_running", "1 when the writer threads run",
                                value=1 if health.get("writer_running") else 0)
        last = health.get("last_flush")
        yield GaugeMetricFamily(f"{p}_last_flush_timestamp_seconds",
                                "Unix time of the last successful insert (0: none yet)", value=last or 0)


def register(api: ConsentAPI) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    settings = api.settings
    collector = api.collector
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HealthCollector(collector))  # type: ignore[arg-type]
    # Several worker processes (PROMETHEUS_MULTIPROC_DIR set): every worker's numbers, summed.
    shared = SharedMetrics(collector, COUNTERS, GAUGES) if shared_metrics_enabled() else None
    if shared is not None and hasattr(collector, "writer"):
        collector.writer.housekeeping.append(shared.sync)

    def guard(request: Request) -> None:
        token = settings.admin_token
        if not token:
            raise HTTPProblem(404, "not found (set admin_token / CONSENTMW_ADMIN_TOKEN to enable)")
        if not _authorised(request, token):
            raise HTTPProblem(401, "admin bearer token required")

    def _unauthorised(problem: HTTPProblem) -> Response:
        response = problem.response()
        if problem.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="consentmw"'
        return response

    async def health(request: Request) -> Response:
        try:
            guard(request)
        except HTTPProblem as problem:
            return _unauthorised(problem)
        body = collector.health() if hasattr(collector, "health") else {}
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def metrics(request: Request) -> Response:
        try:
            guard(request)
        except HTTPProblem as problem:
            return _unauthorised(problem)
        # Multiprocess mode reads every worker's files: off the event loop.
        body = await run_in_threadpool(shared.exposition) if shared is not None else generate_latest(registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

    api.add("GET", "/health", health)
    api.add("GET", "/metrics", metrics)
