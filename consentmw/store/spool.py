"""A durable on-disk spool for batches the store could not take.

Append-only segment files of checksummed records, fsync'd before a write returns, so a
batch acknowledged to the spool survives a crash or power loss. Each segment is locked
(flock) by the process writing it; any process may replay segments nobody holds, in
order, which is how a later process picks up what an earlier one left. A torn or
corrupt record is counted and its bytes moved to `quarantine/`; the rest replays.

Record layout: b"CMW1" | payload length (u32) | crc32 (u32) | payload, where payload is
a JSON header line (kind, table, dedup token) followed by the body bytes.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MAGIC = b"CMW1"
_HEAD = struct.Struct("<4sII")
SEGMENT_BYTES = 16 << 20


class SpoolFull(OSError):
    """The spool reached its size cap or the disk is full; the batch was not kept."""


@dataclass
class Record:
    kind: str          # "rows" (an Arrow table for one ClickHouse table) or "hits" (raw overflow)
    table: str
    token: str
    body: bytes


@dataclass
class SpoolStats:
    records_written: int = 0
    records_replayed: int = 0
    corrupt: int = 0


class Spool:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 1 << 30) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.stats = SpoolStats()
        self._lock = threading.Lock()
        self._file: object | None = None
        self._path: Path | None = None
        self._size = 0
        self._ready = False

    def _ensure_dir(self) -> None:
        if not self._ready:
            (self.dir / "quarantine").mkdir(parents=True, exist_ok=True)
            self._ready = True

    # -- writing -------------------------------------------------------------
    def write(self, record: Record) -> None:
        """Append a record durably (fsync) or raise SpoolFull."""
        header = json.dumps({"kind": record.kind, "table": record.table, "token": record.token}).encode()
        payload = header + b"\n" + record.body
        blob = _HEAD.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            self._ensure_dir()
            if self.bytes() + len(blob) > self.max_bytes:
                raise SpoolFull(f"spool cap of {self.max_bytes} bytes reached")
            f = self._segment()
            try:
                f.write(blob)  # type: ignore[attr-defined]
                f.flush()  # type: ignore[attr-defined]
                os.fsync(f.fileno())  # type: ignore[attr-defined]
            except OSError as exc:
                # Cut back to the last whole record so a short write leaves no torn tail.
                try:
                    f.truncate(self._size)  # type: ignore[attr-defined]
                except OSError:
                    pass
                raise SpoolFull(f"spool write failed: {exc}") from exc
            self._size += len(blob)
            self.stats.records_written += 1
            if self._size >= SEGMENT_BYTES:
                self._close_segment()

    def _segment(self) -> object:
        if self._file is None:
            self._path = self.dir / f"seg-{time.time_ns():020d}-{os.getpid()}.spool"
            f = open(self._path, "ab")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file, self._size = f, 0
        return self._file

    def _close_segment(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)  # type: ignore[attr-defined]
            self._file.close()  # type: ignore[attr-defined]
            self._file = None

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
        return any(seg.stat().st_size > 0 for seg in self.segments() if seg.exists())

    # -- replay --------------------------------------------------------------
    def replay(self) -> Iterator[tuple[Path, Record, "Ack"]]:
        """Yield records of every segment no other process holds, oldest first.

        Call `ack()` after a record is safely stored; a segment whose records were all
        acknowledged is deleted. Stop iterating to leave the rest for later.
        """
        with self._lock:
            self._close_segment()  # our own segment becomes replayable
        for seg in self.segments():
            try:
                f = open(seg, "r+b")
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # another live process is writing or replaying it
                if not seg.exists():
                    continue
                acked = {"n": 0}
                records = list(self._read(seg, f))
                for record in records:
                    ack = Ack(acked)
                    yield seg, record, ack
                    if not ack.done:
                        return
                    self.stats.records_replayed += 1
                seg.unlink(missing_ok=True)
            finally:
                f.close()

    def _read(self, seg: Path, f: object) -> Iterator[Record]:
        data = f.read()  # type: ignore[attr-defined]
        pos = 0
        while pos < len(data):
            if len(data) - pos < _HEAD.size:
                self._quarantine(seg, data[pos:], "torn header")
                return
            magic, length, crc = _HEAD.unpack_from(data, pos)
            start, end = pos + _HEAD.size, pos + _HEAD.size + length
            if magic != MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
                # Resynchronise at the next record boundary, if any.
                nxt = data.find(MAGIC, pos + 1)
                self._quarantine(seg, data[pos: nxt if nxt >= 0 else len(data)], "corrupt record")
                if nxt < 0:
                    return
                pos = nxt
                continue
            payload = data[start:end]
            header_raw, _, body = payload.partition(b"\n")
            try:
                header = json.loads(header_raw)
                yield Record(header["kind"], header["table"], header["token"], body)
            except (ValueError, KeyError):
                self._quarantine(seg, data[pos:end], "bad header")
            pos = end

    def _quarantine(self, seg: Path, blob: bytes, why: str) -> None:
        self.stats.corrupt += 1
        self._ensure_dir()
        target = self.dir / "quarantine" / f"{seg.stem}-{time.time_ns()}.bad"
        target.write_bytes(blob)


class Ack:
    """Marks one replayed record as stored."""

    __slots__ = ("done", "_shared")

    def __init__(self, shared: dict[str, int]) -> None:
        self.done = False
        self._shared = shared

    def __call__(self) -> None:
        self.done = True
        self._shared["n"] += 1
