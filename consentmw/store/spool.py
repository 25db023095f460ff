"""A durable on-disk spool for batches the store could not take.

Append-only segment files of checksummed records, written unbuffered and fsync'd before
a write returns (the directory too when a segment is created), so a batch acknowledged
to the spool survives a crash or power loss. Each segment is locked (flock) by the
process writing it; any process may replay segments nobody holds, oldest first, which
is how a later process picks up what an earlier one left.

Replay keeps its place: when it stops part-way (the store failed again), the records
not yet stored are rewritten into the segment atomically (write, fsync, rename), so
nothing is sent twice and nothing is lost. A torn or corrupt record is counted once,
its bytes moved to `quarantine/`, and the rest of the segment replays. Every record
keeps its deduplication token, so a record sent again after a crash in the middle of
a replay is still stored once.

Record layout: b"CMW1" | payload length (u32) | crc32 (u32) | payload, where payload is
a JSON header line (kind, table, dedup token) followed by the body bytes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
import builtins
from typing import Any, Generator

log = logging.getLogger("consentmw.spool")

MAGIC = b"CMW1"
_HEAD = struct.Struct("<4sII")
SEGMENT_BYTES = 16 << 20
MAX_RECORD = 1 << 30


class SpoolFull(OSError):
    """The spool reached its size cap or the disk is full; the batch was not kept."""


@dataclass
class Record:
    kind: str          # "rows": an Arrow IPC stream for one ClickHouse table
    table: str
    token: str         # the insert deduplication token, kept across every retry
    body: bytes


@dataclass
class SpoolStats:
    records_written: int = 0
    records_replayed: int = 0
    corrupt: int = 0              # torn or corrupt records found (each counted once)
    quarantined_bytes: int = 0
    write_errors: int = 0         # writes refused: cap reached or disk full


def encode_record(record: Record) -> bytes:
    header = json.dumps({"kind": record.kind, "table": record.table, "token": record.token}).encode()
    payload = header + b"\n" + record.body
    return _HEAD.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def parse_segment(data: bytes) -> tuple[list[tuple[Record, bytes]], list[tuple[bytes, str]]]:
    """Split a segment's bytes into (record, raw bytes) pairs and (bad bytes, why) pairs.

    A damaged record is skipped up to the next record boundary that checks out, so one
    bad record never hides the good ones after it.
    """
    good: list[tuple[Record, bytes]] = []
    bad: list[tuple[bytes, str]] = []
    pos, size = 0, len(data)
    while pos < size:
        why = ""
        if size - pos < _HEAD.size:
            why = "torn header"
        else:
            magic, length, crc = _HEAD.unpack_from(data, pos)
            start, end = pos + _HEAD.size, pos + _HEAD.size + length
            if magic != MAGIC:
                why = "bad magic"
            elif end > size:
                why = "torn record"
            elif zlib.crc32(data[start:end]) != crc:
                why = "checksum mismatch"
            else:
                header_raw, sep, body = data[start:end].partition(b"\n")
                try:
                    header: Any = json.loads(header_raw) if sep else None
                    record = Record(str(header["kind"]), str(header["table"]), str(header["token"]), body)
                except (ValueError, KeyError, TypeError):
                    why = "bad header"
                else:
                    good.append((record, data[pos:end]))
                    pos = end
                    continue
        nxt = _next_boundary(data, pos + 1)
        bad.append((data[pos:nxt], why))
        pos = nxt
    return good, bad


def _next_boundary(data: bytes, pos: int) -> int:
    """The offset of the next plausible whole record at or after `pos` (or the end)."""
    size = len(data)
    while True:
        i = data.find(MAGIC, pos)
        if i < 0:
            return size
        if size - i >= _HEAD.size:
            _, length, crc = _HEAD.unpack_from(data, i)
            end = i + _HEAD.size + length
            if end <= size and zlib.crc32(data[i + _HEAD.size:end]) == crc:
                return i
        pos = i + 1


class Spool:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 1 << 30) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.stats = SpoolStats()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._ready = False
        self._seq = 0

    def _ensure_dir(self) -> None:
        """Create the spool and quarantine directories owner-only (0700): they hold visitor data."""
        if not self._ready:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            (self.dir / "quarantine").mkdir(mode=0o700, exist_ok=True)
            self._ready = True

    # -- writing -------------------------------------------------------------
    def write(self, record: Record) -> None:
        """Append a record durably (fsync) or raise SpoolFull (cap reached, disk full, I/O error)."""
        blob = encode_record(record)
        with self._lock:
            try:
                self._ensure_dir()
                if self.bytes() + len(blob) > self.max_bytes:
                    self.stats.write_errors += 1
                    raise SpoolFull(errno.ENOSPC, f"spool cap of {self.max_bytes} bytes reached")
                fd = self._segment()
            except SpoolFull:
                raise
            except OSError as exc:
                self.stats.write_errors += 1
                raise SpoolFull(exc.errno or errno.EIO, f"spool unavailable: {exc}") from exc
            try:
                view = memoryview(blob)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            except OSError as exc:
                # Cut back to the last whole record so a short write leaves no torn tail,
                # and start a fresh segment next time.
                self.stats.write_errors += 1
                try:
                    os.ftruncate(fd, self._size)
                except OSError:
                    pass
                self._close_segment()
                raise SpoolFull(exc.errno or errno.EIO, f"spool write failed: {exc}") from exc
            self._size += len(blob)
            self.stats.records_written += 1
            if self._size >= SEGMENT_BYTES:
                self._close_segment()

    def _segment(self) -> int:
        if self._fd is None:
            self._seq += 1
            path = self.dir / f"seg-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.spool"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise
            _fsync_dir(self.dir)
            self._fd, self._path, self._size = fd, path, 0
        return self._fd

    def _close_segment(self) -> None:
        if self._fd is not None:
            fd, path, size = self._fd, self._path, self._size
            self._fd = None
            try:
                os.close(fd)  # releases the lock
            except OSError:
                pass
            if size == 0 and path is not None:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._close_segment()

    # -- inspection ----------------------------------------------------------
    def segments(self) -> list[Path]:
        if not self.dir.exists():
            return []
        return sorted(self.dir.glob("seg-*.spool"))

    def bytes(self) -> int:
        total = 0
        for seg in self.segments():
            try:
                total += seg.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def pending(self) -> bool:
        for seg in self.segments():
            try:
                if seg.stat().st_size > 0:
                    return True
            except FileNotFoundError:
                pass
        return False

    def quarantined(self) -> list[Path]:
        q = self.dir / "quarantine"
        return sorted(q.glob("*.bad")) if q.exists() else []

    # -- replay --------------------------------------------------------------
    def replay(self) -> Generator[tuple[Path, Record, "Ack"], None, None]:
        """Yield records of every segment no other writer or replayer holds, oldest first.

        Call `ack()` after a record is safely stored. A segment whose records were all
        acknowledged is deleted. Stop iterating (and close the generator) to leave the
        rest for later: the records not acknowledged are kept, in order.
        """
        with self._lock:
            self._close_segment()  # our own segment becomes replayable
        self._clean_tmp()
        for seg in self.segments():
            fd = _lock_existing(seg)
            if fd is None:
                continue
            try:
                with open(fd, "rb", closefd=False) as f:
                    data = f.read()
                if not data:
                    seg.unlink(missing_ok=True)
                    continue
                records, bad = parse_segment(data)
                if bad:
                    for blob, why in bad:
                        self._quarantine(seg, blob, why)
                    fd = self._rewrite(seg, fd, [raw for _, raw in records])
                    if fd is None:
                        continue
                done = 0
                try:
                    for record, _raw in records:
                        ack = Ack()
                        yield seg, record, ack
                        if not ack.done:
                            return
                        done += 1
                        self.stats.records_replayed += 1
                finally:
                    if done < len(records):
                        # Stopped part-way: keep only what was not stored yet.
                        if done:
                            fd = self._rewrite(seg, fd, [raw for _, raw in records[done:]])
                    else:
                        seg.unlink(missing_ok=True)
            finally:
                if fd is not None:
                    os.close(fd)

    def _rewrite(self, seg: Path, fd: int, blobs: list[builtins.bytes]) -> int | None:
        """Atomically replace a segment we hold with `blobs`; returns the lock-holding fd."""
        if not blobs:
            seg.unlink(missing_ok=True)
            os.close(fd)
            return None
        tmp = seg.with_name(seg.name + ".tmp")
        new = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fcntl.flock(new, fcntl.LOCK_EX | fcntl.LOCK_NB)
            data = b"".join(blobs)
            view = memoryview(data)
            while view:
                view = view[os.write(new, view):]
            os.fsync(new)
            os.replace(tmp, seg)  # the lock travels with the new inode
            _fsync_dir(self.dir)
        except OSError:
            log.exception("consentmw: could not rewrite spool segment %s; it will be replayed again", seg)
            os.close(new)
            tmp.unlink(missing_ok=True)
            return fd
        os.close(fd)
        return new

    def _clean_tmp(self) -> None:
        """Remove half-written rewrites left by a crash (the original segment still exists)."""
        if not self.dir.exists():
            return
        for tmp in self.dir.glob("seg-*.spool.tmp"):
            fd = _lock_existing(tmp)
            if fd is not None:
                tmp.unlink(missing_ok=True)
                os.close(fd)

    def _quarantine(self, seg: Path, blob: builtins.bytes, why: str) -> None:
        self.stats.corrupt += 1
        self.keep_bad(seg.stem, blob)
        log.error("consentmw: spool segment %s: %s (%d bytes quarantined)", seg.name, why, len(blob))

    def keep_bad(self, stem: str, blob: builtins.bytes) -> Path | None:
        """Keep bytes nobody could store in `quarantine/` for inspection, owner-only (0600)."""
        self.stats.quarantined_bytes += len(blob)
        try:
            with self._lock:
                self._ensure_dir()
                self._seq += 1
            target = self.dir / "quarantine" / f"{stem}-{time.time_ns()}-{os.getpid()}-{self._seq}.bad"
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as f:
                f.write(blob)
            return target
        except OSError as exc:
            log.error("consentmw: could not quarantine %d bytes (%s): %s", len(blob), stem, exc)
            return None


def _lock_existing(path: Path) -> int | None:
    """Open and exclusively lock a file that still exists under `path`, or return None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # It may have been replaced (rewritten) or removed between open and lock.
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise FileNotFoundError(path)
    except OSError:
        os.close(fd)
        return None
    return fd


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Ack:
    """Marks one replayed record as stored."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def __call__(self) -> None:
        self.done = True
