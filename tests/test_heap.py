"""What the lifespan start-up does once per process, before requests: it freezes the heap
(short full collections while serving) unless `freeze_gc` is off, and builds the user-agent
parser (ua-parser compiles its matchers on first use, a ~300 ms GIL hold that was a 300 ms
event-loop stall a second into serving). Each case runs in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from consentmw.core.settings import Settings, SettingsError

SCRIPT = """
import asyncio, gc, sys
import ua_parser
from starlette.applications import Starlette
from consentmw import ConsentMiddleware

app = ConsentMiddleware(Starlette(), secret_key="heap-test-secret-0123456789", clickhouse_dsn="chdb://" + sys.argv[1],
                        spool_dir=sys.argv[1] + "-spool")
before = gc.get_freeze_count()
parser_before = "parser" in vars(ua_parser)

async def lifespan():
    queue = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = []
    async def receive():
        return queue.pop(0)
    async def send(message):
        sent.append(message["type"])
    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent

sent = asyncio.run(lifespan())
print(before, gc.get_freeze_count(), ",".join(sent), parser_before, "parser" in vars(ua_parser))
"""


def run(tmp_path: Path, **env: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "chdb")], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_startup_freezes_the_heap_once(tmp_path: Path) -> None:
    before, after, sent, *_ = run(tmp_path)
    assert int(before) == 0
    # everything built at start-up (modules, the chDB client, the policy) is out of the collector's way
    assert int(after) > 10_000
    assert sent == "lifespan.startup.complete,lifespan.shutdown.complete"


def test_freeze_gc_off_leaves_the_collector_alone(tmp_path: Path) -> None:
    before, after, *_ = run(tmp_path, CONSENTMW_FREEZE_GC="0")
    assert int(before) == int(after) == 0


def test_startup_builds_the_user_agent_parser(tmp_path: Path) -> None:
    # no hit is submitted, so only the start-up can have built it
    *_, parser_before, parser_after = run(tmp_path)
    assert (parser_before, parser_after) == ("False", "True")


@pytest.mark.parametrize("value", ["maybe", "2", ""])
def test_freeze_gc_from_the_environment_is_checked(value: str) -> None:
    env = {"CONSENTMW_FREEZE_GC": value}
    if not value:  # empty: unset, the default
        assert Settings.build({"secret_key": "heap-test-secret-0123456789"}, env).freeze_gc is True
        return
    with pytest.raises(SettingsError, match="CONSENTMW_FREEZE_GC must be"):
        Settings.build({"secret_key": "heap-test-secret-0123456789"}, env)


CYCLE = """
import gc, sys, weakref
from starlette.applications import Starlette
from consentmw import ConsentMiddleware

class Node:
    pass

config = Node(); config.me = config  # the host app's cyclic start-up state
finalized = []
weakref.finalize(config, finalized.append, "config")
app = ConsentMiddleware(Starlette(), secret_key="heap-test-secret-0123456789", clickhouse_dsn=sys.argv[2],
                        spool_dir=sys.argv[1] + "-spool")  # a store that is down: nothing to write here
app.collector.start()
del config  # replaced later (a reloaded configuration)
later = Node(); later.me = later
weakref.finalize(later, finalized.append, "later")
del later
gc.collect()
app.collector.stop(2)
print(",".join(finalized) or "-")
"""


@pytest.mark.parametrize("freeze, finalized", [("1", "later"), ("0", "config,later")])
def test_what_the_freeze_keeps_as_the_readme_says(tmp_path: Path, freeze: str, finalized: str) -> None:
    """The host app's start-up cycles are frozen too: one dropped after start is never
    collected (README, `freeze_gc`); whatever is allocated later is collected as before."""
    from tests.faults.helpers import closed_port

    down = f"http://127.0.0.1:{closed_port()}"
    out = subprocess.run([sys.executable, "-c", CYCLE, str(tmp_path / "app"), down], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "CONSENTMW_FREEZE_GC": freeze})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == finalized


EXIT = """
import sys
from starlette.applications import Starlette
from consentmw import ConsentMiddleware

app = ConsentMiddleware(Starlette(), secret_key="heap-test-secret-0123456789", clickhouse_dsn="chdb://" + sys.argv[1],
                        spool_dir=sys.argv[1] + "-spool")
app.collector.start()
app.collector.sink.client()  # the embedded engine is up
print("ok")
"""


def test_a_process_that_froze_its_heap_exits_cleanly(tmp_path: Path) -> None:
    """The frozen heap is thawed at exit: left frozen, chDB's objects outlived its engine and
    about one exit in three ended in SIGSEGV (seen as -11 in the packaging test)."""
    for i in range(6):
        out = subprocess.run([sys.executable, "-c", EXIT, str(tmp_path / f"chdb{i}")], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "CONSENTMW_FREEZE_GC": "1"})
        assert out.returncode == 0 and out.stdout.split()[-1] == "ok", (i, out.returncode, out.stderr[-500:])
