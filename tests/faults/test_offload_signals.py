"""A real uvicorn server with the minimise worker on (CONSENTMW_MINIMISE_WORKER=on), under
load, stopped by SIGTERM: every acknowledged event is stored exactly once, also when the
worker was killed or stopped (SIGSTOP) mid-load, and the worker does not outlive the server."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from .helpers import count_in_subprocess, wait_gone
from .test_signals import Load, Server, cookie, spooled_rows  # noqa: F401 - `cookie` is a fixture


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["none", "SIGKILL", "SIGSTOP"])
def test_sigterm_with_the_worker_stores_every_acknowledged_event_once(tmp_path: Path, cookie: str,
                                                                       attack: str) -> None:
    server = Server(tmp_path, CONSENTMW_MINIMISE_WORKER="on").start()
    try:
        _drive(server, cookie, attack, tmp_path)
    finally:
        if server.proc is not None and server.proc.poll() is None:  # a failed check: no server left behind
            server.proc.kill()
            server.proc.wait(10)


def _drive(server: Server, cookie: str, attack: str, tmp_path: Path) -> None:
    with Load(server.port, cookie, limit=20000) as load:
        server.wait_healthy_under_load()
        load.wait_acked(500)
        health = server.health()
        deadline = time.monotonic() + 20
        while health["minimise_offloaded_batches"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            health = server.health()
        pid = health["minimise_worker_pid"]
        assert health["minimise_worker"] == "running" and health["minimise_offloaded_batches"] > 0, health
        if attack != "none":
            os.kill(pid, getattr(signal, attack))
            time.sleep(1.5)  # batches meet the dead or stopped worker
        server.signal(signal.SIGTERM)
        t = time.monotonic()
        code = server.wait(60)
        stopped_in = time.monotonic() - t
    assert code in (0, -signal.SIGTERM), server.output()
    acked, sent = load.acked, load.sent
    result = count_in_subprocess(server.dsn)
    left = spooled_rows(tmp_path / "spool")
    print(f"\n[worker {attack}] sent={sent} acked={acked} stored={result['count']} distinct={result['distinct']} "
          f"left_in_spool={left} shutdown={stopped_in:.2f}s")
    assert acked > 500
    assert result["count"] == result["distinct"], "duplicates"
    assert result["count"] + left >= acked, "acknowledged events lost"
    assert result["count"] + left <= sent
    assert stopped_in < 20
    assert wait_gone(pid), "the minimise worker outlived the server"
