"""A spool left by one process is replayed by the next: a new process, its own chDB directory."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from consentmw import ConsentMiddleware

from tests.conftest import SECRET, site_app

from .helpers import asgi_call, beacon_headers, closed_port, events_body, run_script

REPLAY_SCRIPT = """
import json, os, time
from consentmw.core.settings import Settings
from consentmw.pipeline import Collector
s = Settings.build({"flush_interval": 0.1})
col = Collector(s)
col.start()  # the replayer connects, migrates and drains the spool on its own
deadline = time.monotonic() + 60
while (col.spool.pending() or not col.stats.sink_healthy) and time.monotonic() < deadline:
    time.sleep(0.1)
col.stop()
c = col.sink.client()
n, d = c.query("SELECT count(), uniqExact(event_id) FROM consentmw.events_statistics").result_rows[0]
print(json.dumps({"count": int(n), "distinct": int(d), "replayed": col.stats.replayed,
                  "corrupt": col.spool.stats.corrupt, "left": col.spool.bytes()}))
"""


def test_a_new_process_replays_the_spool(tmp_path: Any) -> None:
    spool_dir = tmp_path / "spool"
    dsn = f"http://127.0.0.1:{closed_port()}"
    mw = ConsentMiddleware(site_app(), secret_key=SECRET, clickhouse_dsn=dsn, spool_dir=str(spool_dir),
                           flush_interval=0.05)
    mw.collector.writer.sink._connect_timeout = 1  # whole seconds (clickhouse-connect truncates)
    cookie, _ = mw.codec.issue({"statistics"})

    async def traffic() -> int:
        acked = 0
        for i in range(40):
            status, body, _ = await asgi_call(mw, "POST", "/_consent/collect", beacon_headers(cookie),
                                              events_body(10, f"r{i}"))
            assert status == 202
            acked += json.loads(body)["accepted"]
        return acked

    acked = asyncio.run(traffic())
    mw.collector.stop()  # what atexit does for a server that sends no lifespan events
    assert mw.collector.stats.spooled == acked == 400
    assert "failed to establish a new connec" in mw.collector.stats.last_error.lower()
    segs = sorted(spool_dir.glob("seg-*.spool"))
    assert segs
    result = run_script(REPLAY_SCRIPT, CONSENTMW_SECRET_KEY=SECRET,
                        CONSENTMW_CLICKHOUSE_DSN="chdb://" + str(tmp_path / "chdb"),
                        CONSENTMW_SPOOL_DIR=str(spool_dir))
    assert result == {"count": acked, "distinct": acked, "replayed": acked, "corrupt": 0, "left": 0}
    print(f"\n[restart] accepted={acked} spooled={mw.collector.stats.spooled} replayed_by_new_process="
          f"{result['replayed']} stored={result['count']} distinct={result['distinct']}")


def test_a_new_process_quarantines_damage_and_replays_the_rest(tmp_path: Any) -> None:
    spool_dir = tmp_path / "spool"
    dsn = f"http://127.0.0.1:{closed_port()}"
    mw = ConsentMiddleware(site_app(), secret_key=SECRET, clickhouse_dsn=dsn, spool_dir=str(spool_dir),
                           flush_interval=0.05, batch_size=10, max_batch_size=10)
    cookie, _ = mw.codec.issue({"statistics"})

    async def traffic() -> None:
        for i in range(10):
            await asgi_call(mw, "POST", "/_consent/collect", beacon_headers(cookie), events_body(10, f"q{i}"))

    mw.collector.start()
    asyncio.run(traffic())
    mw.collector.stop()
    from consentmw.store.spool import parse_segment

    seg = sorted(spool_dir.glob("seg-*.spool"))[0]
    data = bytearray(seg.read_bytes())
    records, _ = parse_segment(bytes(data))
    assert len(records) >= 3
    offset = len(records[0][1]) + 200  # inside the second record
    data[offset] ^= 0xFF
    lost = records[1][0]
    seg.write_bytes(bytes(data))
    import io

    import pyarrow.ipc as ipc

    lost_rows = ipc.open_stream(io.BytesIO(lost.body)).read_all().num_rows
    total = 100
    result = run_script(REPLAY_SCRIPT, CONSENTMW_SECRET_KEY=SECRET,
                        CONSENTMW_CLICKHOUSE_DSN="chdb://" + str(tmp_path / "chdb"),
                        CONSENTMW_SPOOL_DIR=str(spool_dir))
    assert result["corrupt"] == 1 and result["left"] == 0
    assert result["count"] == result["distinct"] == total - lost_rows
    assert len(list((spool_dir / "quarantine").glob("*.bad"))) == 1
    print(f"\n[corrupt] accepted={total} quarantined_rows={lost_rows} replayed={result['count']}")
