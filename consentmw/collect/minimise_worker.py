"""The minimise worker: a child process that turns batches of raw hits into Arrow tables.

Run by `consentmw.collect.offload` as a child Python calling `main()`; it
talks to its parent over two pipes of its own (their numbers are its arguments), nothing
else: what it prints goes to stderr, never into a frame. Why a process: the minimiser
is Python code, and in the application's process every millisecond of it holds the GIL
the event loop needs, so a busy site's pages wait on its own analytics. In a process of
its own it runs on another core and the application only encodes hits (a C call) and
reads back finished tables (zero-copy).

The worker holds no secrets beyond the consent-proof key, opens no database, writes no
file and keeps nothing between batches but caches (parsed user agents, the day's visitor
codes). What it needs per batch that only the parent knows (the daily salts from the
store, which consents are blocked or erased) comes with the batch.

Frames, both ways: one kind byte, a 4-byte big-endian length, the payload.

    parent -> worker   C pickled WorkerConfig (once, first)
                       H msgpack list of hits (one chunk of a batch; several per batch)
                       P the same, pickled (a chunk msgpack cannot carry: lone surrogates)
                       B msgpack {"salts", "blocked", "erased"}: the batch is complete
                       X forget the chunks of this batch (the parent gave up on it)
    worker -> parent   R ready (after start-up and warm-up)
                       T table name, NUL, Arrow IPC stream (one per table of the batch)
                       D msgpack counts: the batch is done
                       E error text: the batch raised (the parent re-runs it itself,
                         so a bad item is isolated exactly as without the worker)
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

HEADER = struct.Struct(">cI")
#: a frame larger than this is a broken peer, not a batch (a 50,000-hit batch of 8 KB hits
#: is 400 MB; nothing the request path caps can reach it)
MAX_FRAME = 1 << 30


@dataclass(frozen=True)
class WorkerConfig:
    """What the worker needs to build the parent's minimiser (picklable)."""

    policy: Any                              # consentmw.core.policy.Policy
    trusted_proxies: list[str]
    geoip_db: str | None
    proof_key: bytes
    forwarded_header: str = "x-forwarded-for"
    allowed_hosts: list[str] = field(default_factory=list)


def frame(kind: bytes, *parts: bytes | memoryview) -> list[bytes | memoryview]:
    """The pieces of one frame (header, then the payload's parts), to be written in order."""
    return [HEADER.pack(kind, sum(len(p) for p in parts)), *parts]


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not k:
            return None
        got += k
    return bytes(buf) if n < 4096 else buf  # type: ignore[return-value]


def read_frame(stream: BinaryIO) -> tuple[bytes, bytes] | None:
    """One frame from a blocking stream; None at end of input."""
    head = _read_exact(stream, HEADER.size)
    if head is None:
        return None
    kind, size = HEADER.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    payload = _read_exact(stream, size) if size else b""
    if payload is None:
        return None
    return kind, payload


class Worker:
    """The worker's state: the minimiser built from the parent's config, and its batch."""

    def __init__(self, config: WorkerConfig) -> None:
        import msgspec

        from consentmw.collect.enrich import Enricher
        from consentmw.collect.minimise import Minimiser
        from consentmw.collect.salt import DailySalts

        self._salts: dict[int, bytes] = {}
        salts = DailySalts(loader=self._salts.__getitem__)
        self.enricher = Enricher(config.trusted_proxies, config.geoip_db, config.proof_key,
                                 config.forwarded_header, salts=salts, allowed_hosts=config.allowed_hosts)
        self.minimiser = Minimiser(config.policy, self.enricher)
        self.enricher.warm_up()
        self._decode = msgspec.msgpack.Decoder().decode
        self._encode = msgspec.msgpack.Encoder().encode
        self._purposes: dict[tuple[str, ...], frozenset[str]] = {}
        self.hits: list[Any] = []
        #: why the batch being gathered cannot be processed (a chunk that did not decode)
        self.broken: str | None = None

    def add(self, chunk: bytes, pickled: bool = False) -> None:
        """Decode one chunk of hits (lists in Hit's field order) back into Hits."""
        from consentmw.collect.hit import Hit, new_hit

        known = self._purposes
        hits = self.hits
        rows = [list(row) for row in pickle.loads(chunk)] if pickled else self._decode(chunk)
        for row in rows:
            granted = tuple(row[6])
            purposes = known.get(granted)
            if purposes is None:
                purposes = known[granted] = frozenset(granted)
            row[6] = purposes
            hits.append(new_hit(Hit, row))

    def finish(self, meta_bytes: bytes) -> tuple[list[tuple[str, Any]], bytes]:
        """Minimise the batch gathered so far: (table name, Arrow IPC) pairs and the counts."""
        import pyarrow as pa

        meta = self._decode(meta_bytes)
        hits, self.hits = self.hits, []
        salts = self.enricher.salts
        days = [int(day) for day in meta["salts"]]
        for day, salt in zip(days, meta["salts"].values()):
            self._salts[day] = salt
            salts.preload(day)  # the parent's salt for the day (it may have changed)
        if days:  # keep no salt longer than the parent does (two days: see collect/salt.py)
            oldest = min(min(days), max(days) - 1)
            for day in [d for d in self._salts if d < oldest]:
                del self._salts[day]
            salts.forget_before(oldest)
        blocked = frozenset(meta["blocked"])
        erased = {k: float(v) for k, v in meta["erased"].items()}
        minimiser = self.minimiser
        minimiser.blocked = blocked.__contains__ if blocked else None
        minimiser.erased = erased.get if erased else None
        before = minimiser.counts
        minimiser.counts = type(before)()
        try:
            tables = minimiser.process(hits)
            counts = minimiser.counts
        finally:
            minimiser.counts = before
        out = []
        for name, table in tables.items():
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            out.append((name, sink.getvalue()))  # written to the pipe as it is, not copied
        done = self._encode(asdict(counts))
        del tables, hits
        pa.default_memory_pool().release_unused()  # a batch's Arrow buffers go back, not kept for the next
        return out, done


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """The worker's loop: read frames until the parent closes the pipe."""
    first = read_frame(inp)
    if first is None or first[0] != b"C":
        return
    worker = Worker(pickle.loads(first[1]))

    def send(kind: bytes, *parts: Any) -> None:
        for piece in frame(kind, *parts):
            out.write(piece)

    send(b"R")
    out.flush()
    while True:
        got = read_frame(inp)
        if got is None:
            return
        kind, payload = got
        if kind == b"X":  # the parent gave up on the batch being gathered
            worker.hits, worker.broken = [], None
            continue
        if kind == b"H" or kind == b"P":
            if worker.broken:
                continue
            try:
                worker.add(payload, pickled=kind == b"P")
            except Exception as exc:  # noqa: BLE001 - reported with the batch's end
                worker.hits = []
                worker.broken = f"{type(exc).__name__}: {exc}"
            continue
        if kind != b"B":
            continue
        if worker.broken:
            send(b"E", worker.broken.encode("utf-8", "replace")[:2000])
            worker.broken = None
            worker.hits = []
        else:
            try:
                tables, done = worker.finish(payload)
            except Exception as exc:  # noqa: BLE001 - the parent re-runs the batch itself
                send(b"E", f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:2000])
            else:
                for name, ipc in tables:
                    send(b"T", name.encode() + b"\0", ipc)
                send(b"D", done)
        out.flush()


def main() -> None:
    """Serve on the two pipes whose numbers the parent passed (`main IN OUT`). Nothing else
    writes to them: the parent made fd 1 its stderr (or /dev/null)."""
    inp = os.fdopen(int(sys.argv[1]), "rb", buffering=1 << 16)
    out = os.fdopen(int(sys.argv[2]), "wb", buffering=1 << 16)
    try:
        serve(inp, out)
    except (BrokenPipeError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
