"""The minimise worker process: same tables as the in-thread minimiser, and never a way to
lose a batch (a worker that raises, dies, hangs or cannot be fed hands the batch back)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import replace
from typing import Any, Iterator

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from consentmw.collect import offload
from consentmw.collect.enrich import Enricher, proof_key
from consentmw.collect.hit import Hit
from consentmw.collect.minimise import Minimiser
from consentmw.collect.minimise_worker import WorkerConfig
from consentmw.collect.offload import OffloadedMinimiser
from consentmw.collect.salt import DailySalts
from consentmw.core.policy import Policy
from consentmw.core.settings import Settings, SettingsError
from tests.collect.test_minimiser import DEFAULT_POLICY, NETWORKS, hit_st
from tests.faults.helpers import Store, process_gone, wait_gone
from tests.test_isolation import poison_hit, poison_record

KEY = proof_key("offload-test-secret")
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")


def page(i: int, site: str = "www.example.com", **fields: Any) -> Hit:
    base = dict(ts=1763769600.0 + i, event_type="pageview", site=site.encode(), path=f"/p/{i % 7}",
                consent_id=f"c{i % 5}", policy_version="v1", purposes=frozenset({"statistics", "personalisation"}),
                visitor_id=f"v{i % 3}", peer_ip=f"203.0.113.{i % 200}", forwarded_for=b"",
                user_agent=CHROME.encode(), language=b"en-GB,en;q=0.8", referrer=b"https://www.google.com/",
                campaign=None, status=200, duration_ms=1.5, data=None)
    base.update(fields)
    return Hit(**base)


def pair(trusted: list[str], geoip: str | None = None, mode: str = "on",
         timeout: float = 60.0) -> tuple[Minimiser, OffloadedMinimiser]:
    """An in-thread minimiser (the reference) and an offloaded one with the same salts."""
    policy = Policy.from_file(DEFAULT_POLICY)
    salts = DailySalts(loader=lambda day: day.to_bytes(4, "big") * 8)
    reference = Minimiser(policy, Enricher(trusted, geoip, KEY, salts=salts))
    mine = Minimiser(policy, Enricher(trusted, geoip, KEY, salts=salts))
    return reference, OffloadedMinimiser(mine, WorkerConfig(policy, trusted, geoip, KEY), mode=mode, timeout=timeout)


def same_tables(got: dict[str, pa.Table], want: dict[str, pa.Table]) -> None:
    assert set(got) == set(want)
    for name in want:
        a, b = got[name], want[name]
        assert a.schema.equals(b.schema), name
        if "event_id" in a.column_names:  # random per row
            a, b = a.drop_columns(["event_id"]), b.drop_columns(["event_id"])
        assert a.equals(b), name


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Minimiser, OffloadedMinimiser]]]:
    from tests.collect.test_enrichment import make_mmdb

    geoip = str(make_mmdb(tmp_path_factory.mktemp("geo") / "offload-geo.mmdb"))
    made = {trust: pair(nets, geoip) for trust, (nets, _) in NETWORKS.items()}
    yield made
    for _, off in made.values():
        off.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(trust=st.sampled_from(sorted(NETWORKS)), data=st.data(), block=st.booleans(), erase=st.booleans())
def test_the_worker_stores_exactly_what_the_writer_thread_would(workers: Any, trust: str, data: Any, block: bool,
                                                                erase: bool) -> None:
    """Hostile and ordinary hits (bad UTF-8, bots, foreign hosts, every event type, campaign
    tags, beacon payloads) give the same tables, counts and day-keyed codes either way,
    including consents blocked or erased in this process only."""
    reference, off = workers[trust]
    pids = ("statistics", "personalisation", "marketing")
    hits = [h for h, _ in data.draw(st.lists(hit_st(pids, NETWORKS[trust][1]), min_size=1, max_size=40))]
    blocked = {"blocked-one"} if block else set()
    erased = {"c2": hits[0].ts + 0.5} if erase else {}
    for m in (reference, off.minimiser):
        m.blocked = blocked.__contains__ if block else None
        m.erased = erased.get if erase else None
    before = (off.offloaded, off.fallbacks)
    want_counts = (reference.counts.bots, reference.counts.blocked, reference.counts.rows)
    mine_counts = (off.minimiser.counts.bots, off.minimiser.counts.blocked, off.minimiser.counts.rows)
    want = reference.process(hits)
    got = off.process(hits)
    same_tables(got, want)
    assert (off.offloaded, off.fallbacks) == (before[0] + 1, before[1])  # the worker did it
    assert (off.minimiser.counts.bots - mine_counts[0], off.minimiser.counts.blocked - mine_counts[1],
            off.minimiser.counts.rows - mine_counts[2]) == (reference.counts.bots - want_counts[0],
                                                            reference.counts.blocked - want_counts[1],
                                                            reference.counts.rows - want_counts[2])


def test_a_big_batch_goes_over_in_parts_and_comes_back_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offload, "WORKER_BATCH", 7)
    reference, off = pair([])
    try:
        bot = "Googlebot/2.1 (+http://www.google.com/bot.html)".encode()
        batch = [page(i, user_agent=bot) if i % 9 == 0 else page(i) for i in range(60)]
        for m in (reference, off.minimiser):
            m.blocked = {"c3"}.__contains__
        want = reference.process(batch)
        got = off.process(batch)
        same_tables(got, want)
        assert (off.offloaded, off.fallbacks) == (1, 0)
        assert (off.minimiser.counts.bots, off.minimiser.counts.blocked, off.minimiser.counts.rows) == (
            reference.counts.bots, reference.counts.blocked, reference.counts.rows) != (0, 0, 0)
    finally:
        off.close()


def test_ledger_records_in_a_batch_are_written_beside_the_offloaded_hits() -> None:
    reference, off = pair([])
    try:
        record = replace(poison_record("ledger.test"), ts=1763769600.0)  # a valid record once it has a time
        items: list[Any] = [page(i) for i in range(50)] + [record]
        same_tables(off.process(items), reference.process(items))
        assert off.offloaded == 1
    finally:
        off.close()


def test_a_batch_that_raises_in_the_worker_raises_here_too_and_the_worker_carries_on() -> None:
    """A hit no ingress produces fails in the worker; the batch is re-run in the writer's
    thread, where it raises as it always did (the writer then isolates the bad item)."""
    reference, off = pair([])
    try:
        good = [page(i) for i in range(20)]
        off.process(good)
        pid = off.health()["minimise_worker_pid"]
        for n, bad_field in enumerate(({"status": -5}, {"duration_ms": "x"}, {"ts": "not a time"}), 1):
            bad = good + [page(99, **bad_field)]
            with pytest.raises(Exception) as in_thread:
                reference.process(bad)
            with pytest.raises(type(in_thread.value)):
                off.process(bad)
            assert off.fallbacks == n
        same_tables(off.process(good), reference.process(good))
        assert off.health()["minimise_worker_pid"] == pid and off.offloaded == 2
    finally:
        off.close()


def test_text_msgpack_refuses_still_goes_to_the_worker() -> None:
    """A lone surrogate (a hostile beacon can send one) is not valid UTF-8 for msgpack: that
    slice of the batch crosses pickled, so one such event cannot pull every batch back here."""
    reference, off = pair([])
    try:
        batch = [page(i) for i in range(30)] + [page(31, path="/a\ud800b", referrer="https://x.test/\udcff",
                                                    user_agent=CHROME + "\udc80")]
        same_tables(off.process(batch), reference.process(batch))
        assert (off.offloaded, off.fallbacks) == (1, 0)
    finally:
        off.close()


def test_a_hit_that_cannot_be_encoded_is_minimised_here_and_the_next_batch_is_not_polluted() -> None:
    reference, off = pair([])
    try:
        offload.CHUNK, chunk = 10, offload.CHUNK  # the bad hit comes after chunks already sent
        odd = page(40, event_type="custom", data={"type": "custom", "path": "/x", "name": "n", "props": {"k": {1, 2}}})
        batch = [page(i) for i in range(35)] + [odd]
        with pytest.raises(Exception):
            reference.process(batch)
        with pytest.raises(Exception):
            off.process(batch)
        good = [page(i) for i in range(12)]
        got = off.process(good)
        same_tables(got, reference.process(good))
        assert got["events_statistics"].num_rows == 12 and off.offloaded == 1
    finally:
        offload.CHUNK = chunk
        off.close()


def test_a_killed_worker_costs_no_batch_and_is_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offload, "RESTART_AFTER", 0.0)
    reference, off = pair([])
    try:
        batch = [page(i) for i in range(300)]
        off.process(batch)
        first = off.health()["minimise_worker_pid"]
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        same_tables(off.process(batch), reference.process(batch))  # minimised here
        assert off.fallbacks == 1 and off.health()["minimise_worker"] == "idle"
        same_tables(off.process(batch), reference.process(batch))  # a new worker
        second = off.health()["minimise_worker_pid"]
        assert second not in (None, first) and off.health()["minimise_worker"] == "running"
    finally:
        off.close()


def test_a_hung_worker_is_given_up_after_the_timeout_and_killed() -> None:
    reference, off = pair([], timeout=1.5)
    try:
        batch = [page(i) for i in range(100)]
        off.process(batch)
        pid = off.health()["minimise_worker_pid"]
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        same_tables(off.process(batch), reference.process(batch))
        assert time.monotonic() - started < 10
        assert off.fallbacks == 1 and "answer" in off.last_error
        assert process_gone(pid)  # killed, not left stopped
    finally:
        off.close()


def test_auto_mode_waits_for_a_busy_batch_and_cpus_to_spare(monkeypatch: pytest.MonkeyPatch) -> None:
    _, off = pair([], mode="auto")
    try:
        small = [page(i) for i in range(offload.AUTO_MIN_HITS - 1)]
        off.process(small)
        assert off.health()["minimise_worker"] == "idle"  # too small a batch: not started
        monkeypatch.setattr(offload, "_cpus", lambda: offload.AUTO_MIN_CPUS - 1)
        off.process(small + [page(0)])
        assert off.health()["minimise_worker_pid"] is None  # too few CPUs: nothing to gain
        monkeypatch.setattr(offload, "_cpus", lambda: offload.AUTO_MIN_CPUS)
        off.process(small + [page(0)])  # starts it; this batch is minimised here meanwhile
        assert off.health()["minimise_worker_pid"] is not None and off.offloaded == 0
        deadline = time.monotonic() + 30
        while off.offloaded == 0 and time.monotonic() < deadline:
            off.process([page(i) for i in range(offload.MIN_HITS)])
            time.sleep(0.1)
        assert off.offloaded >= 1
    finally:
        off.close()
    _, never = pair([], mode="off")
    never.process([page(i) for i in range(2000)])
    assert never.health()["minimise_worker"] == "off" and never.offloaded == 0


def test_the_worker_ends_when_the_application_process_dies(tmp_path: Any) -> None:
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from tests.collect.test_offload import pair, page
        _, off = pair([])
        off.process([page(i) for i in range(10)])
        print(off.health()["minimise_worker_pid"], flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    assert not process_gone(pid)
    proc.kill()
    proc.wait()
    assert wait_gone(pid), "the worker outlived the application"


def test_the_setting_is_checked() -> None:
    assert Settings.build({"secret_key": "s" * 16}, environ={}).minimise_worker == "auto"
    assert Settings.build({"secret_key": "s" * 16}, environ={"CONSENTMW_MINIMISE_WORKER": "OFF"}).minimise_worker == "off"
    with pytest.raises(SettingsError, match="minimise_worker"):
        Settings.build({"secret_key": "s" * 16, "minimise_worker": "sometimes"}, environ={})


# -- through the collector, into chDB ----------------------------------------------------------
@pytest.fixture(scope="module")
def store(ch: Any, chdb_dsn: str) -> Iterator[Store]:
    s = Store(ch, chdb_dsn)
    yield s
    s.drop()


def test_a_collector_with_the_worker_stores_every_page_once_and_isolates_bad_items(store: Store,
                                                                                   tmp_path: Any) -> None:
    col = store.collector(spool_dir=str(tmp_path / "spool"), flush_interval=3600, batch_size=100_000,
                          minimise_worker="on")
    site = f"offload-{uuid.uuid4().hex[:6]}.test"
    col.start()
    try:
        now = time.time()
        for i in range(3000):
            col.submit(page(i, site=site, ts=now))
            if i in (10, 2000):
                col.submit(poison_hit(site))
        col.flush()
        assert store.count(site) == (3000, 3000)
        assert store.count(site, "events_personalisation") == (3000, 3000)
        health = col.health()
        assert health["minimise_worker"] == "running" and health["quarantined"] == 2
        pid = health["minimise_worker_pid"]
        from consentmw.web.admin import HealthCollector
        metrics = {m.name: m.samples[0].value for m in HealthCollector(col).collect()}
        assert metrics["consentmw_minimise_offloaded_batches"] >= 1
    finally:
        col.stop()
    assert col.health()["minimise_worker_pid"] is None
    assert wait_gone(pid, 5)
