"""The day's visitor salt lives in the store: a restart, a second collector and a second
process on the same store give one visitor one code per day; racing processes store one
salt; salts older than two days are deleted."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from typing import Any, Iterator
from urllib.parse import quote

import pytest

from consentmw.core.policy import Policy
from consentmw.store.salts import SaltStore
from consentmw.store.schema import Schema
from consentmw.store.sink import ClickHouseSink

from tests.chhttp import ChdbHttpServer
from tests.faults.helpers import collector, python_env

VISITOR = ("site.test", "81.2.69.160", "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0")
USER, PASSWORD = "app", "salt-test-pw"


def code(col: Any, ts: float | None = None) -> int:
    if not col.writer.healthy:
        assert col.writer.probe()
    return col.enricher.visitor_hash(time.time() if ts is None else ts, *VISITOR)


def test_a_restart_and_a_second_collector_give_the_same_code(chdb_dsn: str, database: str, tmp_path: Any) -> None:
    first = collector(clickhouse_dsn=chdb_dsn, database=database, spool_dir=str(tmp_path / "s1"))
    before = code(first)
    first.stop()
    first.sink.close()
    restarted = collector(clickhouse_dsn=chdb_dsn, database=database, spool_dir=str(tmp_path / "s2"))
    other = collector(clickhouse_dsn=chdb_dsn, database=database, spool_dir=str(tmp_path / "s3"))
    try:
        assert code(restarted) == before == code(other)
        tomorrow = time.time() + 86_400
        assert code(restarted, tomorrow) == code(other, tomorrow) != before  # a new day, a new salt
    finally:
        restarted.stop()
        other.stop()


def test_while_the_store_is_down_a_provisional_salt_is_used_then_the_shared_one(
        chdb_dsn: str, database: str, tmp_path: Any) -> None:
    shared = collector(clickhouse_dsn=chdb_dsn, database=database, spool_dir=str(tmp_path / "a"))
    late = collector(clickhouse_dsn=chdb_dsn, database=database, spool_dir=str(tmp_path / "b"))
    try:
        stored = code(shared)
        late.enricher.salts._retry_after = 0.0
        provisional = late.enricher.visitor_hash(time.time(), *VISITOR)  # store not probed yet: not asked
        assert provisional != stored
        assert code(late) == stored  # once the store answers, the shared salt replaces it
    finally:
        shared.stop()
        late.stop()


def test_old_salts_are_deleted_after_two_days(chdb_dsn: str, database: str, ch: Any) -> None:
    sink = ClickHouseSink(chdb_dsn, Schema(Policy.default(), database))
    salts = SaltStore(sink)
    day = int(time.time() // 86400)
    first = salts.load(day)
    assert salts.load(day) == first and salts.load(day + 1) != first
    salts.load(day + 2)
    days = [r[0] for r in ch.query(f"SELECT day FROM {database}.daily_salts ORDER BY day").result_rows]
    epoch = dt.date(1970, 1, 1)
    assert days == [epoch + dt.timedelta(days=day + 1), epoch + dt.timedelta(days=day + 2)]


def test_when_both_racers_propose_the_first_stored_salt_wins(chdb_dsn: str, database: str, ch: Any) -> None:
    """The interleaving a race can produce: both read "no salt", both insert a candidate."""
    sink = ClickHouseSink(chdb_dsn, Schema(Policy.default(), database))
    a, b = SaltStore(sink), SaltStore(sink)
    day = int(time.time() // 86400) + 50
    a.propose(day)
    b.propose(day)
    assert a.load(day) == b.load(day)
    day_date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    assert ch.command(f"SELECT count() FROM {database}.daily_salts WHERE day = '{day_date}'") == 1


RACER = """
import json, sys, time
from consentmw.core.policy import Policy
from consentmw.store.salts import SaltStore
from consentmw.store.schema import Schema
from consentmw.store.sink import ClickHouseSink
dsn, database, day, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
sink = ClickHouseSink(dsn, Schema(Policy.default(), database))
sink.client()
while time.time() < start:
    time.sleep(0.001)
print(json.dumps({"salt": SaltStore(sink).load(day).hex()}))
"""


@pytest.fixture(scope="module")
def server(chdb_dsn: str, ch: Any) -> Iterator[ChdbHttpServer]:
    s = ChdbHttpServer(chdb_dsn[len("chdb://"):], USER, PASSWORD)
    yield s
    s.close()


def test_processes_racing_for_a_new_day_store_one_salt(server: ChdbHttpServer, database: str, ch: Any) -> None:
    dsn = f"http://{USER}:{quote(PASSWORD)}@127.0.0.1:{server.port}/"
    ClickHouseSink(dsn, Schema(Policy.default(), database)).client()  # migrate once
    day = int(time.time() // 86400) + 100  # a day nobody has a salt for yet
    start = time.time() + 8
    procs = [subprocess.Popen([sys.executable, "-c", RACER, dsn, database, str(day), str(start)],
                              env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    salts = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        salts.append(json.loads(out.strip().splitlines()[-1])["salt"])
    assert len(set(salts)) == 1, salts
    day_date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    assert ch.command(f"SELECT count() FROM {database}.daily_salts WHERE day = '{day_date}'") == 1
    assert ch.command(f"SELECT salt FROM {database}.daily_salts WHERE day = '{day_date}'") == salts[0]


async def test_the_embedded_store_has_the_days_salt_before_the_first_request(
        chdb_dsn: str, database: str, tmp_path: Any) -> None:
    col = collector(clickhouse_dsn=chdb_dsn, database=database, spool_dir=str(tmp_path / "s"))
    try:
        await col.astart()
        day = int(time.time() // 86400)
        assert day in col.enricher.salts._salts and day not in col.enricher.salts._provisional
        assert col.enricher.salts._salts[day] == SaltStore(col.sink).load(day)
    finally:
        await col.astop()
