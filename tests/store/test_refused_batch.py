"""A batch ClickHouse refuses for values in it costs only the refused rows, at once; a store
that is down or overloaded costs nothing (the batch spools whole, nothing is quarantined).

Real chDB throughout: the refusal is a CHECK constraint the engine enforces on insert, or a
malformed UUID it cannot parse; the overload is ClickHouse's own "too many parts" guard;
"down" is a server DSN on a closed port.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pyarrow as pa

from consentmw.collect.hit import Hit
from consentmw.store.spool import Record, parse_segment
from consentmw.store.writer import decode_ipc, encode_ipc

from tests.conftest import BROWSER_UA
from tests.faults.helpers import Store, closed_port, collector
from tests.test_isolation import ADMIN, browser, call, env, rows, store  # noqa: F401 - env and store: its fixtures


def admin_get(mw: Any, path: str) -> bytes:
    _status, body = call(mw, "GET", path, [(b"authorization", f"Bearer {ADMIN}".encode())])
    return body


def hit(site: str, i: int) -> Hit:
    return Hit(time.time(), "pageview", site, f"/page/{i}", f"cid-{i % 7}", "2026-11-21", frozenset({"statistics"}),
               None, "203.0.113.9", "", BROWSER_UA, "en", "", None, 200, 12)


def test_values_the_store_refuses_on_the_direct_insert_cost_only_their_rows(env: Any, store: Store) -> None:
    mw, cookie = env
    col = mw.collector
    site = f"refused-{uuid.uuid4().hex[:6]}.test"
    table = f"{store.database}.events_statistics"
    # ClickHouse itself refuses these rows on insert (VIOLATED_CONSTRAINT), nothing mocked.
    store.ch.command(f"ALTER TABLE {table} ADD CONSTRAINT no_refuse_me CHECK path NOT LIKE '/refuse-me/%'")
    try:
        h = browser(site, cookie)
        for i in range(300):
            call(mw, "GET", f"/refuse-me/{i}" if i in (41, 250) else f"/ok/{i}", h)
        status, _ = call(mw, "POST", "/_consent/choice", h, b'{"all": true}')
        assert status == 200
        assert len(col.writer.queue) == 301  # one batch: 300 page views and a ledger record
        assert col.writer.probe()
        col.writer.flush()  # one direct insert per table, no replay
    finally:
        store.ch.command(f"ALTER TABLE {table} DROP CONSTRAINT no_refuse_me")
    s = col.stats
    # Split at once: nothing went to the spool, the store was never thought down.
    assert (s.spooled, s.dropped, s.quarantined, s.insert_failures) == (0, 0, 0, 0), s.as_dict()
    assert s.sink_healthy and not col.spool.pending()
    stats_rows = rows(store, "site = %(s)s", s=site)
    assert len(stats_rows) == 298 and len({r["event_id"] for r in stats_rows}) == 298
    assert sorted(r["path"] for r in stats_rows) == sorted(f"/ok/{i}" for i in range(300) if i not in (41, 250))
    # The other purpose's table and the ledger, in the same batch, lose nothing.
    assert len(rows(store, "site = %(s)s", "events_personalisation", s=site)) == 300
    assert len(rows(store, "site = %(s)s", "consent_log", s=site)) == 1
    assert (s.poisoned, s.stored) == (2, 298 + 300 + 1)
    [kept] = col.spool.quarantined()
    assert kept.name.startswith("rows-") and kept.stat().st_mode & 0o777 == 0o600
    [(record, _raw)], bad = parse_segment(kept.read_bytes())
    assert not bad and record.table == "events_statistics"
    assert decode_ipc(record.body).column("path").to_pylist() == ["/refuse-me/41", "/refuse-me/250"]
    health = json.loads(admin_get(mw, "/_consent/health"))
    assert (health["poisoned"], health["quarantined"], health["spooled"], health["stored"]) == (2, 0, 0, 599)
    metrics = admin_get(mw, "/_consent/metrics")
    assert b"consentmw_poisoned_total 2.0" in metrics and b"consentmw_spooled_total 0.0" in metrics


def test_a_spooled_batch_with_refused_values_is_split_on_its_first_replay(store: Store, tmp_path: Any) -> None:
    """No five attempts first: the error names bad values, so the first replay splits it."""
    site = f"respool-{uuid.uuid4().hex[:6]}.test"
    col = store.collector(spool_dir=str(tmp_path / "spool"))
    data = col.minimiser.process([hit(site, i) for i in range(40)])["events_statistics"]
    ids = data.column("event_id").to_pylist()
    ids[5] = "not-a-uuid"  # ClickHouse cannot parse it (CANNOT_PARSE_UUID)
    data = data.set_column(data.schema.get_field_index("event_id"), "event_id", pa.array(ids, pa.string()))
    col.spool.write(Record("rows", "events_statistics", "respool-1", encode_ipc(data)))
    assert col.writer.probe()
    assert col.writer.replay() == 39
    assert not col.spool.pending() and store.count(site) == (39, 39)
    assert (col.stats.poisoned, col.stats.insert_failures) == (1, 0) and col.stats.sink_healthy


def test_an_overloaded_store_spools_the_whole_batch_and_quarantines_nothing(store: Store, tmp_path: Any) -> None:
    """"Too many parts" is the store asking us to slow down, not a verdict on the rows."""
    site = f"overload-{uuid.uuid4().hex[:6]}.test"
    table = f"{store.database}.events_statistics"
    col = store.collector(spool_dir=str(tmp_path / "spool"), flush_interval=3600, batch_size=100_000)
    assert col.writer.probe()
    col.submit(hit(site, 0))
    col.writer.flush()  # a part in this month's partition
    store.ch.command(f"SYSTEM STOP MERGES {table}")
    store.ch.command(f"ALTER TABLE {table} MODIFY SETTING parts_to_throw_insert = 1")
    try:
        for i in range(1, 101):
            col.submit(hit(site, i))
        col.writer.flush()
        s = col.stats
        assert (s.spooled, s.poisoned, s.quarantined, s.dropped) == (100, 0, 0, 0), s.as_dict()
        assert not s.sink_healthy and "TOO_MANY_PARTS" in s.last_error
        assert col.spool.quarantined() == [] and store.count(site) == (1, 1)
    finally:
        store.ch.command(f"ALTER TABLE {table} RESET SETTING parts_to_throw_insert")
        store.ch.command(f"SYSTEM START MERGES {table}")
    assert col.writer.probe() and col.writer.replay() == 100
    assert store.count(site) == (101, 101) and not col.spool.pending() and col.stats.poisoned == 0


def test_an_unreachable_store_spools_the_whole_batch_and_quarantines_nothing(store: Store, tmp_path: Any) -> None:
    """The store was up a moment ago and now refuses connections: the direct insert fails, the
    batch spools whole, and a healthy store later takes every row once."""
    site = f"gone-{uuid.uuid4().hex[:6]}.test"
    spool_dir = str(tmp_path / "spool")
    col = collector(sink_kwargs={"connect_timeout": 1, "send_receive_timeout": 1},
                    clickhouse_dsn=f"http://127.0.0.1:{closed_port()}", database=store.database,
                    spool_dir=spool_dir, flush_interval=3600, batch_size=100_000)
    col.writer._healthy()  # it answered a moment ago
    for i in range(120):
        col.submit(hit(site, i))
    col.writer.flush()
    s = col.stats
    assert (s.spooled, s.stored, s.poisoned, s.quarantined, s.dropped) == (120, 0, 0, 0, 0), s.as_dict()
    assert not s.sink_healthy and s.insert_failures == 1 and col.spool.quarantined() == []
    col.spool.close()
    healthy = store.collector(spool_dir=spool_dir)
    assert healthy.replay() == 120 and store.count(site) == (120, 120)
    assert healthy.stats.poisoned == 0 and healthy.spool.quarantined() == []


def test_an_outage_in_the_middle_of_a_split_spools_the_batch_and_stores_nothing_twice(
        store: Store, tmp_path: Any) -> None:
    """The store refuses a value, then goes away while the batch is being split: the whole batch
    is spooled with its token, and its replay stores the slices already stored no second time."""
    from consentmw.store.sink import ClickHouseSink, SinkError

    class GoesAway(ClickHouseSink):
        """The real store, unreachable for the `outage_at`-th insert only."""
        calls = 0
        outage_at = 4

        def insert(self, table: str, data: Any, token: str) -> None:
            GoesAway.calls += 1
            if GoesAway.calls == self.outage_at:
                raise SinkError("injected outage: connection reset")
            super().insert(table, data, token)

    sink = GoesAway(store.dsn, store.sink.schema)
    sink._client, sink._migrated = store.sink.client(), True
    site = f"split-outage-{uuid.uuid4().hex[:6]}.test"
    table = f"{store.database}.events_statistics"
    col = collector(sink=sink, clickhouse_dsn=store.dsn, database=store.database, spool_dir=str(tmp_path / "spool"),
                    flush_interval=3600, batch_size=100_000)
    store.ch.command(f"ALTER TABLE {table} ADD CONSTRAINT no_refuse_me2 CHECK path NOT LIKE '/refuse-me/%'")
    try:
        for i in range(300):
            col.submit(hit(site, i)._replace(path="/refuse-me/200") if i == 200 else hit(site, i))
        col.writer._healthy()
        # 1: the whole batch, refused; 2: rows 0-149, stored; 3: rows 150-299, refused; 4: the outage
        col.writer.flush()
        s = col.stats
        assert GoesAway.calls == 4 and store.count(site) == (150, 150)
        assert (s.spooled, s.poisoned, s.quarantined) == (300, 0, 0) and not s.sink_healthy
        assert col.spool.quarantined() == []
        assert col.writer.probe() and col.writer.replay() == 299
    finally:
        store.ch.command(f"ALTER TABLE {table} DROP CONSTRAINT no_refuse_me2")
    assert store.count(site) == (299, 299) and not col.spool.pending()
    assert col.stats.poisoned == 1 and len(col.spool.quarantined()) == 1
