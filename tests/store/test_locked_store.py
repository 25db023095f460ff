"""chDB allows one process per data directory: a second server must refuse to start with
a one-line reason, not a traceback and not a silent spool nobody can replay."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HOLDER = textwrap.dedent("""
    import sys, time, clickhouse_connect
    client = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
    client.query("SELECT 1")
    print("ready", flush=True)
    time.sleep(60)
""")

APP = textwrap.dedent("""
    from starlette.applications import Starlette
    from consentmw import ConsentMiddleware
    app = ConsentMiddleware(Starlette())
""")


def test_a_second_process_on_the_same_chdb_directory_fails_clearly(tmp_path: Path) -> None:
    data = tmp_path / "chdb"
    (tmp_path / "lockapp.py").write_text(APP)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(data)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        env = {**os.environ, "CONSENTMW_SECRET_KEY": "0123456789abcdef0123",
               "CONSENTMW_CLICKHOUSE_DSN": f"chdb://{data}", "CONSENTMW_SPOOL_DIR": str(tmp_path / "spool")}
        started = time.monotonic()
        server = subprocess.run([sys.executable, "-m", "uvicorn", "lockapp:app", "--port", "0"], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=60)
        assert time.monotonic() - started < 30
        assert server.returncode != 0
        assert "is in use by another process" in server.stderr
        assert "ClickHouse server" in server.stderr
        assert "Traceback" not in server.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_second_chdb_directory_in_one_process_fails_at_start(chdb_dsn: str, ch: object, tmp_path: Path) -> None:
    import pytest
    from starlette.applications import Starlette

    from consentmw import ConsentMiddleware
    from consentmw.store.sink import EmbeddedStoreConflict

    from tests.conftest import SECRET

    same = [ConsentMiddleware(Starlette(), secret_key=SECRET, clickhouse_dsn=chdb_dsn, database=db,
                              spool_dir=str(tmp_path / "spool")) for db in ("one_site", "another_site")]
    assert all(mw.collector.sink.chdb_path == same[0].collector.sink.chdb_path for mw in same)
    with pytest.raises(EmbeddedStoreConflict) as refused:
        ConsentMiddleware(Starlette(), secret_key=SECRET, clickhouse_dsn=f"chdb://{tmp_path / 'other'}",
                          spool_dir=str(tmp_path / "spool"))
    message = str(refused.value)
    assert chdb_dsn[len("chdb://"):] in message and str(tmp_path / "other") in message
    assert "one data directory per process" in message and "same clickhouse_dsn" in message
    assert not (tmp_path / "other").exists()  # refused before anything was opened
