"""The minimise worker attacked from outside: ids the store repairs, odd types, two writer
threads at once, a stop while a batch is out, stray output in the child, salts that change.
Each test compares the worker with the in-thread minimiser (`Minimiser.process`)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from consentmw.collect.salt import DailySalts
from tests.collect.test_offload import page, pair, same_tables
from tests.faults.helpers import wait_gone


@pytest.mark.parametrize("cid", ["c1\x00", "c1\ufdd0", b"c1\xff", "c1\ud800", b"c1"])
def test_blocked_and_erased_consents_are_matched_as_the_store_spells_them(cid: Any) -> None:
    """The minimiser asks `blocked`/`erased` about consent ids as stored (repaired text); the
    worker must be told about the same ids, or a blocked visitor's hits get stored."""
    reference, off = pair([])
    try:
        batch = [page(i, consent_id=f"ok{i % 5}") for i in range(20)] + [page(30 + k, consent_id=cid) for k in range(3)]
        for blocked, erased in ((lambda i: i == "c1\ufffd" or i == "c1", None),
                                (None, lambda i: 1e12 if i in ("c1\ufffd", "c1") else None)):
            for m in (reference, off.minimiser):
                m.blocked, m.erased = blocked, erased
            before = (reference.counts.blocked, off.minimiser.counts.blocked)
            want = reference.process(batch)
            got = off.process(batch)
            same_tables(got, want)
            assert want["events_statistics"].num_rows == 20
            assert off.minimiser.counts.blocked - before[1] == reference.counts.blocked - before[0] == 3
        assert off.fallbacks == 0
    finally:
        off.close()


@pytest.mark.parametrize("purposes", [["statistics"], {"statistics"}])
def test_purposes_the_minimiser_refuses_are_refused_with_the_worker_too(purposes: Any) -> None:
    """msgpack carries any collection as a list; the worker must not turn a list (which the
    in-thread minimiser refuses) into the frozenset it expects and store it."""
    reference, off = pair([])
    try:
        batch = [page(i) for i in range(20)] + [page(40)._replace(purposes=purposes)]
        with pytest.raises(TypeError):
            reference.process(batch)
        with pytest.raises(TypeError):
            off.process(batch)
        same_tables(off.process(batch[:20]), reference.process(batch[:20]))
    finally:
        off.close()


def test_two_writer_threads_at_once_one_offloads_the_other_minimises_here() -> None:
    """The writer and spill threads both call `process`: one batch goes to the worker, the
    other is minimised in its own thread; neither waits for the other's batch."""
    reference, off = pair([])
    try:
        batches = [[page(i, site=f"t{n}.example.com") for i in range(3000)] for n in range(2)]
        wants = [reference.process(b) for b in batches]
        off.process(batches[0][:10])  # the worker is up
        got: dict[int, Any] = {}
        errors: list[BaseException] = []

        def run(n: int) -> None:
            try:
                for _ in range(3):
                    got[n] = off.process(batches[n])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads) and not errors
        for n in range(2):
            same_tables(got[n], wants[n])
        assert off.fallbacks == 0 and off.offloaded >= 2
    finally:
        off.close()


def test_closing_while_a_batch_is_out_never_closes_the_pipes_under_it() -> None:
    """`close` (the collector's stop) while the writer waits on the worker: the batch is
    still stored exactly as in-thread, and the descriptors the batch is using are not
    closed under it (a number reused by a socket accepted meanwhile would have its bytes read)."""
    reference, off = pair([], timeout=3.0)
    batch = [page(i) for i in range(200)]
    want = reference.process(batch)
    off.process(batch)
    worker = off._worker
    assert worker is not None
    os.kill(worker.pid, signal.SIGSTOP)  # the batch below waits on it
    got: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: got.update(tables=off.process(batch)))
    thread.start()
    time.sleep(0.3)
    closer = threading.Thread(target=off.close)
    closer.start()
    time.sleep(0.05)
    # What the application opens meanwhile takes the lowest free numbers.
    taken = [os.pipe() for _ in range(20)]
    for r, w in taken:
        os.write(w, b"visitor bytes")
    try:
        thread.join(30)
        closer.join(30)
        assert not thread.is_alive() and not closer.is_alive()
        same_tables(got["tables"], want)
        for r, w in taken:
            os.set_blocking(r, False)
            assert os.read(r, 100) == b"visitor bytes", "the batch read from a descriptor it no longer owned"
    finally:
        for r, w in taken:
            os.close(r)
            os.close(w)
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while worker.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker.proc.poll() is not None, "the worker outlived close()"


def test_stray_output_at_the_childs_start_does_not_corrupt_the_protocol(tmp_path: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A sitecustomize (or any start-up hook) that prints must not be read as a frame."""
    offloaded, fallbacks, why = batch_with_sitecustomize(
        tmp_path, monkeypatch,
        "import os, sys\nprint('hello from sitecustomize')\nsys.stdout.flush()\nos.write(1, b'raw fd 1 noise\\n')\n")
    assert (offloaded, fallbacks) == (1, 0), why


def batch_with_sitecustomize(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, source: str) -> tuple[int, int, str]:
    """One batch through a worker whose interpreter runs `source` at start-up (a
    sitecustomize): it must come out as the in-thread minimiser's, whoever minimised it.
    Returns (batches offloaded, batches that fell back, the last worker error)."""
    (tmp_path / "sitecustomize.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    reference, off = pair([])
    try:
        batch = [page(i) for i in range(50)]
        same_tables(off.process(batch), reference.process(batch))
        return off.offloaded, off.fallbacks, off.last_error
    finally:
        off.close()


def test_visitor_codes_match_while_the_stored_salt_arrives_late() -> None:
    """A provisional salt (the store did not answer) that later becomes the stored one, over a
    batch that spans midnight: the worker's visitor codes equal the in-thread ones each time."""
    calls = {"n": 0}

    def loader(day: int) -> bytes:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError("store down")
        return day.to_bytes(4, "big") * 8

    reference, off = pair([])
    salts = DailySalts(loader=loader, retry_after=3600.0)
    reference.enricher.salts = off.minimiser.enricher.salts = salts
    try:
        midnight = 1763856000.0
        days = (int(midnight // 86400) - 1, int(midnight // 86400))
        batch = [page(i, ts=midnight - 30 + i) for i in range(60)]
        codes = []
        for round_ in range(2):
            if round_:  # the store answers now (the collector's warm-up preloads the day)
                assert all(salts.preload(day) for day in days)
            got = off.process(batch)
            want = reference.process(batch)
            same_tables(got, want)
            codes.append(got["events_statistics"].column("visitor_hash").to_pylist())
        assert codes[0] != codes[1]  # the provisional salts were replaced
        assert off.offloaded == 2 and off.fallbacks == 0
    finally:
        off.close()


def test_the_worker_forgets_a_days_salt_as_the_parent_does() -> None:
    """Salts are forgotten after two days so codes of different days can never be linked;
    the worker (a long-lived process) must not keep every salt it was ever handed."""
    import msgspec

    from consentmw.collect.minimise_worker import Worker

    reference, off = pair([])
    off.close()
    worker = Worker(off.config)
    encode = msgspec.msgpack.Encoder().encode
    first = 1763769600.0
    for n in range(5):
        ts = first + n * 86400
        worker.add(encode([page(i, ts=ts) for i in range(5)]))
        day = int(ts // 86400)
        worker.finish(encode({"salts": {str(day): day.to_bytes(4, "big") * 8}, "blocked": [], "erased": {}}))
    newest = int((first + 4 * 86400) // 86400)
    kept = set(worker._salts) | set(worker.enricher.salts._salts)
    assert kept <= {newest - 1, newest}, f"the worker still holds the salts of days {sorted(kept)}"


def test_a_stopping_collector_stops_waiting_for_a_hung_worker_at_its_give_up_time() -> None:
    """The collector's stop has a deadline (shutdown_timeout); a batch waiting on a stopped
    worker must come back to the writer thread well before it, not after the worker's own
    60 s, or the process exits with the batch still in the writer's hands (lost)."""
    reference, off = pair([], timeout=60.0)
    try:
        batch = [page(i) for i in range(100)]
        off.process(batch)
        pid = off.health()["minimise_worker_pid"]
        os.kill(pid, signal.SIGSTOP)
        got: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: got.update(tables=off.process(batch)))
        thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        off.give_up_by(time.monotonic() + 1.0)  # what Collector.stop does first
        thread.join(10)
        assert not thread.is_alive() and time.monotonic() - started < 3
        same_tables(got["tables"], reference.process(batch))
        assert off.fallbacks == 1
        off.process(batch)  # while stopping, batches are minimised here
        assert off.fallbacks == 1 and off.offloaded == 1
    finally:
        off.close()


def test_a_forked_child_neither_keeps_the_worker_alive_nor_talks_to_it(tmp_path: Any) -> None:
    """An app that forks (multiprocessing, a pre-fork server) copies the worker's pipe ends
    into the child: the child must drop them, or the worker never sees its app end (its pipe
    stays open) and the child could write frames into the parent's batch."""
    import subprocess
    import sys
    import textwrap


    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from tests.collect.test_offload import pair, page, same_tables
        reference, off = pair([])
        off.process([page(i) for i in range(10)])
        child = os.fork()
        if child == 0:
            # the child minimises in its own thread, never through the parent's worker
            batch = [page(i) for i in range(30)]
            same_tables(off.process(batch), reference.process(batch))
            print("child", off.health()["minimise_worker_pid"], off.offloaded, flush=True)
            time.sleep(60)
            os._exit(0)
        print(off.health()["minimise_worker_pid"], child, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = [proc.stdout.readline().split(), proc.stdout.readline().split()]
    mine = next(line for line in lines if line[0] != "child")
    theirs = next(line for line in lines if line[0] == "child")
    pid, child = int(mine[0]), int(mine[1])
    try:
        assert theirs[1:] != [str(pid), "2"], "the forked child used the parent's worker"
        proc.kill()
        proc.wait()
        assert wait_gone(pid), "the worker outlived its app (a forked child kept its pipe open)"
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass


def _hostile_batches() -> dict[str, list[Any]]:
    from dataclasses import replace

    from tests.test_isolation import poison_record

    base = [page(i) for i in range(20)]
    foreign = [page(i, site="elsewhere.test") for i in range(5)]
    bot = [page(90, user_agent=b"Googlebot/2.1 (+http://www.google.com/bot.html)"), page(91, user_agent=b"curl/8.0")]

    def event(kind: str, **data: Any) -> dict[str, Any]:
        return {"type": kind, "path": "/x", **data}

    record = replace(poison_record("ledger.test"), ts=1763769600.0)
    return {
        "huge text": base + [page(50, path="/" + "a" * 2_000_000, user_agent=b"U" * 500_000,
                                  referrer="https://x.test/" + "b" * 300_000)],
        "invalid utf-8": base + [page(51, user_agent=b"\xff\xfe\xc3(", language=b"\xc0\x80", referrer=b"\xed\xa0\x80",
                                      forwarded_for=b"\xff", path=b"/\xff")._replace(site=b"ex\xffample.com")],
        "lone surrogates": base + [page(52, consent_id="c\ud800", path="/\udfff", user_agent="UA\ud800")],
        "nan time": base + [page(55, ts=float("nan"))],
        "inf time": base + [page(56, ts=float("inf"))],
        "negative time": base + [page(57, ts=-1.5)],
        "int time": base + [page(58, ts=1763769600)],
        "huge int time": base + [page(58, ts=10**17 + 1)],
        "negative status": base + [page(60, status=-1)],
        "huge status": base + [page(61, status=2**70)],
        "nan duration": base + [page(62, duration_ms=float("nan"))],
        "inf duration": base + [page(63, duration_ms=float("-inf"))],
        "nested props": base + [page(64, event_type="custom", data=event("custom", name="n", props={"k": {"a": 1}}))],
        "list props": base + [page(66, event_type="custom", data=event("custom", name="n", props={"k": ["a"]}))],
        "int key props": base + [page(68, event_type="custom", data=event("custom", name="n", props={1: "v"}))],
        "good props": base + [page(69, event_type="custom", data=event("custom", name="n", props={"k": "v", "é": "\x00"}))],
        "timing text": base + [page(70, event_type="timing", data=event("timing", ttfb="12"))],
        "timing huge": base + [page(71, event_type="timing", data=event("timing", ttfb=2**80))],
        "bots and foreign hosts": base + foreign + bot,
        "empty": [],
        "only ledger": [record],
        "hits and ledger": base + [record, record],
        "spans midnight": [page(i, ts=1763856000.0 - 10 + i) for i in range(20)],
        "years apart": [page(i, ts=1763769600.0 + 86400 * 365 * i) for i in range(20)],
    }


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN times, both ways
def test_hostile_values_in_every_field_give_the_in_thread_outcome_and_counts() -> None:
    """Each batch: the same tables, or the same exception (then the writer isolates the bad
    item in-thread as before), and the same bot / host / row / blocked counts."""
    from consentmw.collect.enrich import Enricher
    from consentmw.collect.minimise import Minimiser
    from consentmw.collect.minimise_worker import WorkerConfig
    from consentmw.collect.offload import OffloadedMinimiser
    from tests.collect.test_offload import KEY

    reference, plain = pair([])
    plain.close()
    hosts = ["www.example.com"]
    salts = reference.enricher.salts
    reference = Minimiser(reference.policy, Enricher([], None, KEY, salts=salts, allowed_hosts=hosts))
    off = OffloadedMinimiser(Minimiser(reference.policy, Enricher([], None, KEY, salts=salts, allowed_hosts=hosts)),
                             WorkerConfig(reference.policy, [], None, KEY, allowed_hosts=hosts), mode="on")
    blocked = {"c3"}
    for m in (reference, off.minimiser):
        m.blocked = blocked.__contains__
    try:
        for name, batch in _hostile_batches().items():
            counts = [(m.counts.bots, m.counts.hosts, m.counts.rows, m.counts.blocked)
                      for m in (reference, off.minimiser)]
            try:
                want: Any = reference.process(batch)
            except Exception as exc:  # noqa: BLE001 - the outcome compared
                want = type(exc)
            try:
                got: Any = off.process(batch)
            except Exception as exc:  # noqa: BLE001 - the outcome compared
                got = type(exc)
            if isinstance(want, type):
                assert got is want, name
            else:
                assert isinstance(got, dict), (name, got)
                same_tables(got, want)
            after = [(m.counts.bots, m.counts.hosts, m.counts.rows, m.counts.blocked)
                     for m in (reference, off.minimiser)]
            deltas = [tuple(a - b for a, b in zip(after[k], counts[k])) for k in range(2)]
            assert deltas[0] == deltas[1], name
        assert off.offloaded >= 12 and reference.counts.bots and reference.counts.hosts and reference.counts.blocked
    finally:
        off.close()


def test_the_worker_is_not_handed_the_apps_consentmw_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker needs only the consent-proof key (in its config); the signing secret, the
    store's password and the admin token in the app's environment stay out of its own."""
    monkeypatch.setenv("CONSENTMW_SECRET_KEY", "the-signing-secret-xyz")
    monkeypatch.setenv("CONSENTMW_CLICKHOUSE_DSN", "clickhouse://u:hunter2@db:8123/x")
    monkeypatch.setenv("CONSENTMW_ADMIN_TOKEN", "admin-token-xyz")
    reference, off = pair([])
    try:
        batch = [page(i) for i in range(30)]
        same_tables(off.process(batch), reference.process(batch))
        with open(f"/proc/{off.health()['minimise_worker_pid']}/environ", "rb") as f:
            environ = f.read()
        names = [entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry]
        leaked = b"hunter2" in environ or b"admin-token-xyz" in environ  # no environment in the report
        assert [n for n in names if n.startswith("CONSENTMW_")] == [] and not leaked
        assert off.offloaded == 1
    finally:
        off.close()


def test_an_app_without_stderr_still_gets_its_worker() -> None:
    """A daemonised app may run with fd 2 closed: the worker's stdout (normally the app's
    stderr) must then go nowhere, not stop the worker from starting."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.getcwd()!r})
        out = os.dup(1)
        from tests.collect.test_offload import pair, page, same_tables
        reference, off = pair([])
        os.close(2)
        batch = [page(i) for i in range(30)]
        same_tables(off.process(batch), reference.process(batch))
        os.write(out, f"{{off.offloaded}} {{off.fallbacks}}\\n".encode())
        off.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          timeout=120, text=True)
    assert done.stdout.split() == ["1", "0"], done.stdout


def test_several_collectors_in_one_process_each_have_their_own_worker() -> None:
    """Two apps mounted in one process (or a reload that builds a second collector before the
    first stops): each minimiser has its own worker, and stopping one leaves the other."""
    (ref_a, a), (ref_b, b) = pair([]), pair([])
    try:
        batch = [page(i) for i in range(40)]
        same_tables(a.process(batch), ref_a.process(batch))
        same_tables(b.process(batch), ref_b.process(batch))
        pid_a, pid_b = a.health()["minimise_worker_pid"], b.health()["minimise_worker_pid"]
        assert None not in (pid_a, pid_b) and pid_a != pid_b
        a.close()
        same_tables(b.process(batch), ref_b.process(batch))
        assert b.offloaded == 2 and b.health()["minimise_worker_pid"] == pid_b
        same_tables(a.process(batch), ref_a.process(batch))  # closed: minimised in-thread
        assert a.offloaded == 1 and a.health()["minimise_worker_pid"] is None
    finally:
        a.close()
        b.close()


def test_a_worker_that_answers_garbage_costs_no_batch(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker whose tables do not parse (a bug there, a broken library) is a failed worker:
    the batch is minimised here, not raised to the writer, which would split it and
    quarantine good items."""
    offloaded, fallbacks, why = batch_with_sitecustomize(
        tmp_path, monkeypatch,
        "from consentmw.collect import minimise_worker\n"
        "def finish(self, meta):\n"
        "    self.hits = []\n"
        "    return [('events_statistics', b'not arrow')], b'\\x80'\n"
        "minimise_worker.Worker.finish = finish\n")
    assert (offloaded, fallbacks) == (0, 1), why


def test_a_dead_worker_does_not_kill_an_app_that_does_not_ignore_sigpipe() -> None:
    """Python ignores SIGPIPE, but an embedding server or the app may restore its default
    (terminate): writing a batch to a worker that died must then cost the batch's trip to
    the worker, not the whole application."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {os.getcwd()!r})
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        from tests.collect.test_offload import pair, page, same_tables
        reference, off = pair([])
        off.process([page(i) for i in range(50)])
        os.kill(off.health()["minimise_worker_pid"], signal.SIGKILL)
        time.sleep(0.3)
        batch = [page(i) for i in range(3000)]
        same_tables(off.process(batch), reference.process(batch))
        print("survived", off.fallbacks, flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, timeout=120, text=True)
    assert (done.returncode, done.stdout.split()) == (0, ["survived", "1"])
