"""Start-up builds what the writer's first batch would otherwise build while holding the GIL
(ua-parser compiles its matchers on first use: a ~300 ms event-loop stall a second into
serving, measured with bench_http's loop-lag probe). Runs in a fresh interpreter: the
parser is built once per process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, sys
import ua_parser
from starlette.applications import Starlette
from consentmw import ConsentMiddleware

app = ConsentMiddleware(Starlette(), secret_key="warm-test-secret-0123456789", clickhouse_dsn="chdb://" + sys.argv[1],
                        spool_dir=sys.argv[1] + "-spool")
before = "parser" in vars(ua_parser)

async def lifespan():
    queue = [{"type": "lifespan.startup"}]
    sent = []
    async def receive():
        if queue:
            return queue.pop(0)
        print(before, "parser" in vars(ua_parser), ",".join(sent), flush=True)  # after startup, before shutdown
        return {"type": "lifespan.shutdown"}
    async def send(message):
        sent.append(message["type"])
    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

asyncio.run(lifespan())
"""


def test_lifespan_startup_builds_the_user_agent_parser(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "chdb")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    before, after, sent = out.stdout.split()
    assert (before, after) == ("False", "True")
    assert sent == "lifespan.startup.complete"
