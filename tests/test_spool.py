"""The disk spool: ordered, durable, locked per process, keeps its place, quarantines damage."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from consentmw.store.spool import MAGIC, Record, Spool, SpoolFull, encode_record, parse_segment

ROOT = Path(__file__).resolve().parents[1]


def rec(i: int, size: int = 100) -> Record:
    return Record("rows", "events_statistics", f"tok-{i}", bytes([i % 256]) * size)


def drain(spool: Spool, stop_after: int | None = None) -> list[str]:
    """Replay, acking every record (or only the first `stop_after`), and return their tokens."""
    got = []
    gen = spool.replay()
    try:
        for _seg, record, ack in gen:
            if stop_after is not None and len(got) >= stop_after:
                break
            got.append(record.token)
            ack()
    finally:
        gen.close()
    return got


def test_round_trip_in_order_and_segments_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(10):
        spool.write(rec(i))
    assert spool.pending() and spool.bytes() > 0
    assert drain(spool) == [f"tok-{i}" for i in range(10)]
    assert not spool.pending() and spool.segments() == []
    assert spool.stats.records_written == spool.stats.records_replayed == 10


def test_order_across_segments_and_writes_after_replay(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(3):
        spool.write(rec(i))
    spool.close()
    for i in range(3, 6):
        spool.write(rec(i))
    assert len(spool.segments()) == 2
    assert drain(spool) == [f"tok-{i}" for i in range(6)]
    spool.write(rec(6))  # the spool keeps working after a replay closed its segment
    assert drain(spool) == ["tok-6"]


def test_partial_replay_keeps_its_place(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(5):
        spool.write(rec(i))
    assert drain(spool, stop_after=2) == ["tok-0", "tok-1"]
    # The two stored records are gone from disk; the rest waits, in order.
    records, bad = parse_segment(spool.segments()[0].read_bytes())
    assert [r.token for r, _ in records] == ["tok-2", "tok-3", "tok-4"] and not bad
    assert drain(spool, stop_after=0) == []
    assert drain(spool) == ["tok-2", "tok-3", "tok-4"]
    assert not spool.pending()


def test_unacked_record_is_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(3):
        spool.write(rec(i))
    gen = spool.replay()
    _seg, first, ack = next(gen)
    ack()
    _seg, second, _ack = next(gen)  # the store failed: not acknowledged
    gen.close()
    assert (first.token, second.token) == ("tok-0", "tok-1")
    assert drain(spool) == ["tok-1", "tok-2"]


def test_torn_tail_is_quarantined_and_the_rest_replays(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(4):
        spool.write(rec(i))
    spool.close()
    seg = spool.segments()[0]
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 40)  # the last record was being written when the power went
    reader = Spool(tmp_path)
    assert drain(reader, stop_after=1) == ["tok-0"]
    assert reader.stats.corrupt == 1 and len(reader.quarantined()) == 1
    assert drain(reader) == ["tok-1", "tok-2"]
    assert reader.stats.corrupt == 1, "damage is counted once, not at every replay"


@pytest.mark.parametrize("damage", ["flip-body", "flip-record-body", "flip-length", "bad-magic", "garbage-between",
                                    "bad-header"])
def test_corrupt_record_in_the_middle(tmp_path: Path, damage: str) -> None:
    spool = Spool(tmp_path)
    blobs = [encode_record(rec(i)) for i in range(5)]
    data = bytearray(b"".join(blobs))
    start = len(blobs[0]) + len(blobs[1])  # record 2
    if damage == "flip-body":
        data[start + 60] ^= 0xFF
    elif damage == "flip-record-body":
        # inside the record's body (its last bytes), past the JSON header: only the CRC notices
        data[start + len(blobs[2]) - 10] ^= 0xFF
    elif damage == "flip-length":
        data[start + 5] ^= 0x7F
    elif damage == "bad-magic":
        data[start:start + 4] = b"XXXX"
    elif damage == "garbage-between":
        data[start:start] = os.urandom(333).replace(MAGIC, b"abcd")
    else:
        payload = b"{not json\n" + b"x" * 10
        import struct
        import zlib
        bad = struct.pack("<4sII", MAGIC, len(payload), zlib.crc32(payload)) + payload
        data[start:start + len(blobs[2])] = bad
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "seg-00000000000000000001-1-000001.spool").write_bytes(bytes(data))
    got = drain(spool)
    expected = ["tok-0", "tok-1", "tok-3", "tok-4"] if damage != "garbage-between" else [f"tok-{i}" for i in range(5)]
    assert got == expected
    assert spool.stats.corrupt == 1
    assert sum(p.stat().st_size for p in spool.quarantined()) > 0
    assert not spool.pending()


def test_segment_of_a_live_writer_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.write(rec(0))
    spool.close()
    seg = spool.segments()[0]
    holder = open(seg, "rb")
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert drain(Spool(tmp_path)) == []
    finally:
        holder.close()
    assert drain(Spool(tmp_path)) == ["tok-0"]


def test_killed_process_segment_replays_in_another_process(tmp_path: Path) -> None:
    """A process holding its segment is skipped while alive; after SIGKILL its records replay."""
    code = textwrap.dedent(f"""
        import sys, time
        from consentmw.store.spool import Record, Spool
        s = Spool({str(tmp_path)!r})
        for i in range(3):
            s.write(Record("rows", "t", f"tok-{{i}}", b"x" * 50))
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        spool = Spool(tmp_path)
        assert spool.pending() and drain(spool) == []  # locked by a live writer
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert drain(Spool(tmp_path)) == ["tok-0", "tok-1", "tok-2"]


def test_size_cap_refuses_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    written = 0
    with pytest.raises(SpoolFull):
        for i in range(100):
            spool.write(rec(i))
            written += 1
    assert 0 < written < 10 and spool.stats.write_errors == 1
    assert spool.bytes() <= 1000
    assert drain(spool) == [f"tok-{i}" for i in range(written)]


def test_disk_full_leaves_no_torn_record(tmp_path: Path) -> None:
    """A real short write (RLIMIT_FSIZE, like a full disk) is cut back to the last whole record."""
    code = textwrap.dedent(f"""
        import json, resource, signal
        from consentmw.store.spool import Record, Spool, SpoolFull
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (5000, 5000))
        s = Spool({str(tmp_path)!r})
        ok = []
        errors = []
        for i in range(100):
            try:
                s.write(Record("rows", "t", f"tok-{{i}}", b"y" * 700))
                ok.append(f"tok-{{i}}")
            except SpoolFull as exc:
                errors.append(str(exc))
                if len(errors) == 3:
                    break
        s.close()
        print(json.dumps({{"ok": ok, "errors": errors}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["ok"]) >= 1 and len(result["errors"]) == 3
    assert any("File too large" in e or "spool write failed" in e for e in result["errors"])
    spool = Spool(tmp_path)
    for seg in spool.segments():
        records, bad = parse_segment(seg.read_bytes())
        assert not bad, "a failed write left a torn record behind"
    # Every acknowledged write is there, in order; every refused one is not (a new segment
    # after a failure may accept the next record: the size limit is per file, like a quota).
    assert drain(spool) == result["ok"]
    assert spool.stats.corrupt == 0


def test_leftover_rewrite_files_are_cleaned(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.write(rec(0))
    spool.close()
    seg = spool.segments()[0]
    tmp = seg.with_name(seg.name + ".tmp")
    tmp.write_bytes(b"half a rewrite")
    assert drain(spool) == ["tok-0"]
    assert not tmp.exists()


def test_empty_and_missing_directory(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "never-created")
    assert not spool.pending() and spool.bytes() == 0 and drain(spool) == []
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "seg-1-1-1.spool").write_bytes(b"")
    spool = Spool(tmp_path / "x")
    assert drain(spool) == [] and spool.segments() == []
