"""Minimising off the application's GIL: the writer hands big batches to a worker process.

Why: minimising and enriching cost the writer ~5–9 µs of Python per event. In the
application's process that is GIL time the event loop waits for, so at a few thousand
pages a second a site's own analytics showed up as slower pages and a lower ceiling (see
BENCHMARKS.md, "The production stack"). `OffloadedMinimiser` has the minimiser's
`process(items) -> tables` signature; for a batch of hits it encodes them with msgspec (a
C call, ~0.7 µs a hit, in slices with the writer's GIL pacing in between), streams them to
a `minimise_worker` process on another core, and reads the finished Arrow tables back
zero-copy. The writer, its spool, dedup tokens and isolation of bad rows are unchanged:
the worker replaces only the CPU work, never the store.

The worker is a help, never a dependency:

* it starts on the first batch big enough to be worth it (`auto`: `AUTO_MIN_HITS` hits,
  and only with `AUTO_MIN_CPUS` CPUs or more), off the event loop, and batches are minimised
  in the writer's thread until it says it is ready;
* a batch the worker cannot finish (it raised, died, or did not answer in
  `timeout` seconds) is minimised in the writer's thread, exactly as without a worker, so
  a bad item raises there and is isolated as before; a worker that died or hung is
  killed and started again no sooner than `RESTART_AFTER` seconds later;
* what only this process knows travels with each batch: the daily salts (read from the
  store here) and which of the batch's consents are blocked or erased.

`mode`: "auto" (the default), "on" (any batch with a hit, even on one CPU: tests), "off".
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from operator import attrgetter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: the worker is never used there (see `_wanted`)
    fcntl = None  # type: ignore[assignment]

import msgspec
import numpy as np
import pyarrow as pa

from consentmw.collect.columnar import HitColumns, encode
from consentmw.collect.hit import Hit
from consentmw.collect.minimise import Minimiser, Tables
from consentmw.collect.minimise_worker import HEADER, MAX_FRAME, WorkerConfig, frame

log = logging.getLogger("consentmw")

MODES = ("auto", "on", "off")
#: `auto` starts the worker for a batch of at least this many hits (a site at ~1,000 pages a
#: second); once it runs, batches of `MIN_HITS` or more go to it
AUTO_MIN_HITS = 1_000
#: ... and with at least this many CPUs. The worker spends more CPU per event than the writer
#: thread (it decodes what the app encoded), and on two vCPUs shared with the app, its
#: proxy and whatever else runs there, that outweighed the GIL it saves: measured on a
#: 2-vCPU machine, 0.76x -> 0.69x of the bare app's req/s with it (BENCHMARKS.md). With
#: cores to spare the app keeps only encoding and inserting (~2.5 of ~5.5 µs per event).
AUTO_MIN_CPUS = 4
MIN_HITS = 64
#: hits encoded per slice: ~0.7 ms of GIL, then the pacer may hand the GIL to the event loop
CHUNK = 1_000
#: the most hits the worker minimises at once (a bigger batch goes over in parts): its memory
#: stays near ~250 MB resident however large the writer's batch
WORKER_BATCH = 10_000
#: the pipes' size asked for (Linux allows up to /proc/sys/fs/pipe-max-size, 1 MiB by default)
PIPE_SIZE = 1 << 20
#: a dead or hung worker is started again no sooner than this
RESTART_AFTER = 10.0
_FROZENSET = {frozenset}


class WorkerFailed(Exception):
    """The worker could not finish a batch (died, hung, or broke the protocol)."""


class NotOffloadable(WorkerFailed):
    """This batch cannot be minimised by the worker (it raised there, or a hit does not
    encode); the worker itself is fine."""


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextmanager
def _sigpipe_blocked() -> Iterator[None]:
    """Writes to a worker that died fail with EPIPE, never with a SIGPIPE that terminates
    the app (Python ignores SIGPIPE, but an embedding server or the app may restore it)."""
    if signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN:
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
    try:
        yield
    finally:
        if signal.SIGPIPE not in old:
            while signal.SIGPIPE in signal.sigpending():  # raised by our write: consume it
                signal.sigtimedwait([signal.SIGPIPE], 0)
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


class WorkerProcess:
    """The parent's handle on one worker process: start, one batch at a time, close."""

    def __init__(self, config: WorkerConfig, timeout: float) -> None:
        self.timeout = timeout
        package_root = str(Path(__file__).resolve().parent.parent.parent)
        # The app's own settings stay out of the worker's environment (/proc/PID/environ):
        # it is configured by `config` alone and holds no secret but the consent-proof key.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTMW_")}
        env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # The protocol has pipes of its own, passed by number: the child's stdout is the
        # app's stderr, so whatever prints in it (a sitecustomize, a library, a traceback)
        # can never be read as a frame. A session of its own: a Ctrl-C in the terminal stops
        # the server, which then drains through the worker; the worker ends when the server
        # closes its pipe (or dies).
        try:  # a daemonised app may have no fd 2: then the child's stdout goes nowhere
            os.fstat(2)
            stdout: int = 2
        except OSError:
            stdout = subprocess.DEVNULL
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from consentmw.collect.minimise_worker import main; main()",
                 str(to_child), str(from_child)],
                stdin=subprocess.DEVNULL, stdout=stdout, env=env, start_new_session=True, close_fds=True,
                pass_fds=(to_child, from_child))
        except BaseException:
            os.close(self._w)
            os.close(self._r)
            raise
        finally:
            os.close(to_child)
            os.close(from_child)
        for fd in (self._w, self._r):
            os.set_blocking(fd, False)
            try:  # bigger pipes: a batch crosses in fewer system calls (Linux; best effort)
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # type: ignore[union-attr]
            except (OSError, AttributeError):
                pass
        self.ready = False
        #: when the application stops: no wait on the worker goes past it (see `give_up_by`)
        self.give_up_at = float("inf")
        # the frame being read: its header, then its body, and how much of either arrived
        self._head = bytearray(HEADER.size)
        self._body: bytearray | None = None
        self._kind = b""
        self._got = 0
        self._send([frame(b"C", pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL))],
                   time.monotonic() + timeout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def poll_ready(self) -> bool:
        """True once the worker has finished starting (never blocks)."""
        if not self.ready:
            got = self._recv(time.monotonic(), wait=False)
            if got is not None:
                if got[0] != b"R":
                    raise WorkerFailed(f"unexpected frame {got[0]!r} at start")
                self.ready = True
        return self.ready

    # -- one batch ---------------------------------------------------------------
    def run(self, chunks: Iterable[tuple[bytes, bytes]], meta: bytes) -> tuple[Tables, dict[str, int]]:
        """Send a batch (its hit chunks, each msgpack or pickled, then its metadata) and
        wait for its tables."""
        deadline = time.monotonic() + self.timeout
        try:
            for kind, chunk in chunks:
                self._send([frame(kind, chunk)], deadline)
        except NotOffloadable:
            self._send([frame(b"X")], deadline)  # forget the chunks sent so far
            raise
        self._send([frame(b"B", meta)], deadline)
        tables: Tables = {}
        while True:
            got = self._recv(deadline)
            assert got is not None
            kind, payload = got
            if kind == b"T" or kind == b"D":
                try:
                    if kind == b"D":
                        counts = msgspec.msgpack.decode(payload, type=dict[str, int])
                        return tables, counts
                    view = memoryview(payload)
                    cut = payload.index(b"\0")
                    name = bytes(view[:cut]).decode()
                    tables[name] = pa.ipc.open_stream(pa.py_buffer(view[cut + 1:])).read_all()
                except Exception as exc:  # noqa: BLE001 - a worker that answers garbage is a failed worker
                    raise WorkerFailed(f"a {kind.decode()} frame did not parse: {exc}") from None
            elif kind == b"E":
                raise NotOffloadable("the batch raised in the worker: " + bytes(payload).decode("utf-8", "replace"))
            else:
                raise WorkerFailed(f"unexpected frame {kind!r}")

    # -- pipes -------------------------------------------------------------------
    def _send(self, frames: list[list[bytes | memoryview]], deadline: float) -> None:
        with _sigpipe_blocked():
            self._send_unguarded(frames, deadline)

    def _send_unguarded(self, frames: list[list[bytes | memoryview]], deadline: float) -> None:
        for pieces in frames:
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    try:
                        n = os.write(self._w, view)
                    except BlockingIOError:
                        n = 0
                    except OSError as exc:  # EPIPE: the worker is gone
                        raise WorkerFailed(f"worker pipe: {exc}") from None
                    view = view[n:]
                    if view:
                        self._wait(self._w, deadline, f"the worker took no input for {self.timeout:g} s")

    def _wait(self, fd: int, deadline: float, why: str) -> None:
        """Wait until `fd` (our write or read end) is ready, at most until the batch's
        deadline or the application's give-up time, whichever comes first."""
        left = min(deadline, self.give_up_at) - time.monotonic()
        if left <= 0:
            raise WorkerFailed(why if deadline <= self.give_up_at else "the application is stopping")
        if fd == self._w:
            select.select([], [fd], [], min(left, 0.25))
        else:
            select.select([fd], [], [], min(left, 0.25))

    def _recv(self, deadline: float, wait: bool = True) -> tuple[bytes, bytearray] | None:
        """One frame, read straight into its own buffer; None only when `wait` is false and
        no whole frame has arrived yet (what was read so far is kept for the next call)."""
        while True:
            if self._body is None:
                head = self._head
                n = self._read_into(memoryview(head)[self._got:], deadline, wait)
                if n is None:
                    return None
                self._got += n
                if self._got < HEADER.size:
                    continue
                kind, size = HEADER.unpack(head)
                if size > MAX_FRAME:
                    raise WorkerFailed(f"frame of {size} bytes")
                self._kind, self._body, self._got = kind, bytearray(size), 0
            body = self._body
            view = memoryview(body)
            while self._got < len(body):
                n = self._read_into(view[self._got:], deadline, wait)
                if n is None:
                    return None
                self._got += n
            self._body, self._got = None, 0
            return self._kind, body

    def _read_into(self, view: memoryview, deadline: float, wait: bool) -> int | None:
        while True:
            try:
                n = os.readv(self._r, [view])
            except BlockingIOError:
                if not wait:
                    return None
                self._wait(self._r, deadline, f"no answer from the worker in {self.timeout:g} s")
                continue
            except OSError as exc:
                raise WorkerFailed(f"worker pipe: {exc}") from None
            if n == 0:
                raise WorkerFailed(f"the worker exited (status {self.proc.poll()})")
            return n

    def forget(self) -> None:
        """Close this process's ends of the pipes and leave the worker be: in a forked child
        (the worker is the parent's; a copy kept open would keep it waiting after the parent
        ends), and as the first step of `close`."""
        for fd in (self._w, self._r):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._w = self._r = -1

    def close(self, wait: float = 2.0) -> None:
        """Close its pipes (it exits at once), kill it if it does not. Only the thread that
        owns the worker may call it: a descriptor closed under another thread's read or
        write can be reused at once by a socket or file, whose bytes that thread would take."""
        self.forget()
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class OffloadedMinimiser:
    """`Minimiser.process` that minimises big batches of hits in a worker process."""

    def __init__(self, minimiser: Minimiser, config: WorkerConfig, mode: str = "auto",
                 timeout: float = 60.0) -> None:
        if mode not in MODES:
            raise ValueError(f"minimise_worker must be one of {', '.join(MODES)}")
        self.minimiser = minimiser
        self.config = config
        self.mode = mode
        self.timeout = timeout
        #: called between slices of encoding (the writer's GIL pacer)
        self.pause: Callable[[], None] = lambda: None
        self._worker: WorkerProcess | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._retry_at = 0.0
        self._give_up_at = float("inf")
        self._encode = msgspec.msgpack.Encoder().encode
        #: batches the worker minimised / batches it could not (then minimised here)
        self.offloaded = 0
        self.fallbacks = 0
        self.last_error = ""
        _instances.add(self)

    # -- the writer's `process` --------------------------------------------------
    def process(self, items: Iterable[Any]) -> Tables:
        if self.mode == "off":
            return self.minimiser.process(items)
        items = items if isinstance(items, list) else list(items)
        hits = [i for i in items if type(i) is Hit]
        if not self._wanted(len(hits)) or not self._lock.acquire(blocking=False):
            return self.minimiser.process(items)  # small, no worker, or the other thread has it
        try:
            worker = self._ready_worker(len(hits))
            if worker is None:
                return self.minimiser.process(items)
            try:
                tables = self._offload(worker, hits)
            except WorkerFailed as exc:
                self.fallbacks += 1
                self._failed(worker, exc)
                return self.minimiser.process(items)
            self.offloaded += 1
            if len(hits) != len(items):  # ledger records and anything else: minimised here
                tables.update(self.minimiser.process([i for i in items if type(i) is not Hit]))
            return tables
        finally:
            self._lock.release()
            if self._closed and self._worker is not None:
                self._close_worker()  # `close` came while this batch was out

    def _wanted(self, hits: int) -> bool:
        if self.mode == "off" or self._closed or not hits or time.monotonic() >= self._give_up_at or os.name != "posix" or not sys.executable:
            return False
        if self.mode == "on":
            return True
        return hits >= (MIN_HITS if self._worker is not None else AUTO_MIN_HITS) and _cpus() >= AUTO_MIN_CPUS

    def _ready_worker(self, hits: int) -> WorkerProcess | None:
        """The running worker if it is ready; else start one (when due) and return None."""
        worker = self._worker
        if worker is not None:
            try:
                if worker.poll_ready():
                    return worker
            except WorkerFailed as exc:
                self._failed(worker, exc)
                return None
            if not worker.alive():
                self._failed(worker, WorkerFailed(f"the worker exited at start (status {worker.proc.poll()})"))
            return None
        if time.monotonic() < self._retry_at:
            return None
        try:
            self._worker = WorkerProcess(self.config, self.timeout)
            self._worker.give_up_at = self._give_up_at
        except (OSError, ValueError, WorkerFailed) as exc:
            self._retry_at = time.monotonic() + RESTART_AFTER
            self.last_error = str(exc)[:300]
            log.warning("consentmw: the minimise worker could not start (%s); minimising in-process", exc)
            return None
        if self.mode == "on":  # tests and small deployments that asked for it: wait for it once
            deadline = min(time.monotonic() + self.timeout, self._give_up_at)
            while time.monotonic() < deadline and self._worker.alive():
                try:
                    if self._worker.poll_ready():
                        return self._worker
                except WorkerFailed as exc:
                    self._failed(self._worker, exc)
                    return None
                select.select([self._worker._r], [], [], 0.05)
        return None

    def _offload(self, worker: WorkerProcess, hits: list[Hit]) -> Tables:
        minimiser = self.minimiser
        if not set(map(type, map(attrgetter("purposes"), hits))) <= _FROZENSET:
            # msgpack carries any collection as a list and the worker makes it a frozenset:
            # purposes the minimiser would refuse (a list) must not be accepted there.
            raise NotOffloadable("a hit's purposes are not a frozenset")
        try:
            meta = self._meta(hits)
        except (TypeError, ValueError, OverflowError) as exc:  # a hit no ingress makes: minimise it here
            raise NotOffloadable(f"a hit could not be prepared: {exc}") from None
        encode, pause = self._encode, self.pause

        def chunks(part_of_batch: list[Hit]) -> Iterable[tuple[bytes, bytes]]:
            for start in range(0, len(part_of_batch), CHUNK):
                part = part_of_batch[start:start + CHUNK]
                try:
                    yield b"H", encode(part)
                except (TypeError, ValueError, OverflowError):
                    # msgpack refuses some text a hostile client can send (a lone surrogate):
                    # this slice goes pickled; what pickle cannot carry either is minimised here.
                    try:
                        yield b"P", pickle.dumps([tuple(h) for h in part], protocol=pickle.HIGHEST_PROTOCOL)
                    except Exception as exc:  # noqa: BLE001 - any object at all may be in a hit
                        raise NotOffloadable(f"a hit could not be encoded: {exc}") from None
                pause()

        # A backlog batch (up to max_batch_size) goes over in parts, so the worker's memory is
        # bounded by WORKER_BATCH hits; the parts' tables are joined without copying.
        parts: dict[str, list[pa.Table]] = {}
        totals: dict[str, int] = {}
        for first in range(0, len(hits), WORKER_BATCH):
            tables, counts = worker.run(chunks(hits[first:first + WORKER_BATCH]), meta)
            for name, table in tables.items():
                parts.setdefault(name, []).append(table)
            for key, n in counts.items():
                totals[key] = totals.get(key, 0) + n
        own = minimiser.counts  # counted once the whole batch is done (a failure re-runs it here)
        for key, n in totals.items():
            setattr(own, key, getattr(own, key) + n)
        return {name: found[0] if len(found) == 1 else pa.concat_tables(found) for name, found in parts.items()}

    def _meta(self, hits: list[Hit]) -> bytes:
        """What the worker needs that only this process knows: the salts of the batch's days,
        and which of its consents are blocked or were erased (with when)."""
        minimiser = self.minimiser
        stamps = np.fromiter(map(attrgetter("ts"), hits), dtype=np.float64, count=len(hits))
        days = [int(d) for d in np.unique(np.floor_divide(stamps, 86400))]
        salts = {str(day): minimiser.enricher.salts.salt(day) for day in days}
        blocked_ids: list[str] = []
        erased_at: dict[str, float] = {}
        if minimiser.blocked is not None or minimiser.erased is not None:
            # The ids as the minimiser asks about them (and stores them): text, repaired.
            # The raw values may be bytes or hold a NUL; asking about those would miss a block.
            ids = encode(HitColumns(hits).array("consent_id", pa.string()))[1]
            if minimiser.blocked is not None:
                blocked_ids = [i for i in ids if minimiser.blocked(i)]
            if minimiser.erased is not None:
                for i in ids:
                    at = minimiser.erased(i)
                    if at is not None:
                        erased_at[i] = at
        return self._encode({"salts": salts, "blocked": blocked_ids, "erased": erased_at})

    def _failed(self, worker: WorkerProcess, exc: Exception) -> None:
        """A worker that raised on a batch stays (the batch is re-run here); one that died,
        hung or garbled a frame is killed and replaced later."""
        self.last_error = str(exc)[:300]
        if isinstance(exc, NotOffloadable):
            return
        if not self._closed:
            log.warning("consentmw: minimise worker failed (%s); minimising in-process, restarting it in %d s",
                        self.last_error, RESTART_AFTER)
        self._worker = None
        self._retry_at = time.monotonic() + RESTART_AFTER
        try:
            worker.proc.kill()
        except OSError:
            pass
        worker.close(0.5)

    # -- lifecycle and health ----------------------------------------------------
    def close(self) -> None:
        """Stop the worker (the collector calls it after its final drain). A batch still
        with the worker (past the drain's deadline) is not waited for: the worker is killed,
        the batch's thread sees it end, minimises the batch itself and closes the pipes."""
        self._closed = True
        self._close_worker()

    def _close_worker(self) -> None:
        if not self._lock.acquire(blocking=False):
            worker = self._worker
            if worker is not None:
                try:
                    worker.proc.kill()  # a signal only: the pipes belong to the batch's thread
                except OSError:
                    pass
            return
        try:
            worker, self._worker = self._worker, None
        finally:
            self._lock.release()
        if worker is not None:
            worker.close()

    def _forked(self) -> None:
        """In a child forked from this process: the worker is the parent's, so forget it
        (a child that needs one starts its own); the lock may have been held at the fork."""
        worker, self._worker = self._worker, None
        self._lock = threading.Lock()
        if worker is not None:
            worker.forget()

    def give_up_by(self, deadline: float) -> None:
        """The application is stopping (`time.monotonic()` deadline): a batch still waiting
        on the worker then comes back to the writer's thread, which minimises and stores it
        itself before the process exits; later batches are minimised there too. Without
        this a hung worker held the writer's batch past the drain, and it was lost."""
        self._give_up_at = deadline
        worker = self._worker
        if worker is not None:
            worker.give_up_at = deadline

    def reopen(self) -> None:
        """Allow a worker again (a collector started after a stop)."""
        self._closed = False
        self.give_up_by(float("inf"))

    def health(self) -> dict[str, Any]:
        worker = self._worker
        state = "off" if self.mode == "off" else (
            "idle" if worker is None else ("running" if worker.ready and worker.alive() else "starting"))
        return {"minimise_worker": state, "minimise_worker_pid": worker.pid if worker is not None else None,
                "minimise_offloaded_batches": self.offloaded, "minimise_fallback_batches": self.fallbacks}


#: every OffloadedMinimiser of this process, for the fork hook below
_instances: "weakref.WeakSet[OffloadedMinimiser]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for offloaded in list(_instances):
        offloaded._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
