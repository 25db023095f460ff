"""A uvicorn server (one worker) for the HTTP benchmarks, run as a subprocess.

    python benchmarks/_server.py --app bare|consent|beacon-bare --port N [--data DIR] [--stats FILE]
                                 [--stack standard|plain]

`--stack standard` is uvicorn's production stack (uvloop + httptools, what
`uvicorn[standard]` installs); `plain` is the pure-Python one (asyncio + h11). A loop-lag
probe runs on the server's event loop: a task that asks to wake every millisecond and
records how late it woke. Its lateness is how long the loop could not run anything
(a callback that ran long, or the GIL held by another thread); the stats file reports it.

Every app is wrapped in a tiny ASGI counter of response statuses (the same wrapper for
the baseline and for consentmw, so it costs both the same). On SIGTERM uvicorn runs the
lifespan shutdown, which drains consentmw's collector into chDB; then the counts (and the
collector's own counters) are written to --stats as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import HTMLResponse, JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from benchmarks._common import SECRET  # noqa: E402

HELLO = "<!doctype html><html><head><title>Hello</title></head><body><h1>Hello, world</h1></body></html>"


def bare_app() -> Starlette:
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(HELLO)

    async def collect(request: Request) -> Response:
        # The beacon baseline: read and decode the body, answer 202, store nothing.
        body = json.loads(await request.body())
        return JSONResponse({"accepted": len(body["events"])}, status_code=202)

    return Starlette(routes=[Route("/", page), Route("/_consent/collect", collect, methods=["POST"])])


class StatusCounter:
    """Counts response statuses. `GET /__probe/reset` (answered here, not counted) clears
    the loop-lag probe so the stats cover only the measured run, not the warm-up."""

    def __init__(self, app: Any, probe: LoopLagProbe | None = None) -> None:
        self.app = app
        self.probe = probe
        self.counts: Counter[int] = Counter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/__probe/reset":
            if self.probe is not None:
                self.probe.reset()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        counts = self.counts

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                counts[message["status"]] += 1
            await send(message)

        await self.app(scope, receive, counting_send)


class _Server:
    """uvicorn.Server whose SIGTERM/SIGINT only start a graceful shutdown.

    (uvicorn re-raises the captured signal after shutting down, which would kill this
    process before it writes its counters.)
    """

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, self.handle_exit)
                yield

        return Server(config)


class LoopLagProbe:
    """Wakes every `interval` seconds on the event loop and records how late each wake-up was."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        import time

        clock = time.perf_counter
        sleep = asyncio.sleep
        interval = self.interval
        lags = self.lags
        while True:
            t0 = clock()
            await sleep(interval)
            lags.append(clock() - t0 - interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    def reset(self) -> None:
        self.lags.clear()

    def summary(self) -> dict[str, float]:
        lags = sorted(self.lags)
        if not lags:
            return {}

        def pct(p: float) -> float:
            return lags[min(len(lags) - 1, int(p / 100 * len(lags)))] * 1000

        return {"samples": len(lags), "p50_ms": pct(50), "p99_ms": pct(99), "p999_ms": pct(99.9),
                "max_ms": lags[-1] * 1000, "over_5ms": sum(1 for x in lags if x > 0.005),
                "over_20ms": sum(1 for x in lags if x > 0.020)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--app", choices=["bare", "consent", "beacon-bare"], required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data", default=None, help="chDB directory (consent app)")
    p.add_argument("--stats", default=None, help="write counters here as JSON on exit")
    p.add_argument("--stack", choices=["standard", "plain"], default="standard",
                   help="standard: uvloop + httptools (uvicorn[standard]); plain: asyncio + h11")
    args = p.parse_args()

    import uvicorn

    inner: Any = bare_app()
    collector = None
    if args.app == "consent":
        from consentmw import ConsentMiddleware

        mw = ConsentMiddleware(inner, secret_key=SECRET, clickhouse_dsn="chdb://" + args.data,
                               spool_dir=args.data + "-spool", collect_rate=1e9, collect_burst=10**9,
                               shutdown_timeout=120.0)
        collector = mw.collector
        collector.sink.client()  # connect and migrate before serving: measure a warm server
        inner = mw
    probe = LoopLagProbe()
    app = StatusCounter(inner, probe)
    loop, http = ("uvloop", "httptools") if args.stack == "standard" else ("asyncio", "h11")
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, workers=1, log_level="warning",
                            access_log=False, lifespan="on", timeout_graceful_shutdown=60, loop=loop, http=http)
    server = _Server(config)

    async def serve() -> None:
        probe.start()
        await server.serve()

    from uvicorn._compat import asyncio_run

    asyncio_run(serve(), loop_factory=config.get_loop_factory())
    if args.stats:
        out: dict[str, Any] = {"status": {str(k): v for k, v in app.counts.items()},
                               "loop_lag": probe.summary(), "stack": f"{loop} + {http}"}
        if collector is not None:
            collector.stop()
            out["collector"] = {k: v for k, v in collector.health().items()
                                if isinstance(v, (int, float, str, bool)) or v is None}
        Path(args.stats).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
