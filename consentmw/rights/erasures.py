"""A bounded queue for erasures: each is several mutations on ClickHouse (DELETE per table,
an ALTER ... UPDATE on the ledger), so a flood of erasure requests must not pile them up.

Erasures run one at a time on their own thread (waiting ones hold no thread of the shared
pool); at most `size` wait or run in a process, and one more is refused at once (the web
layer answers 503 with Retry-After).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable


class QueueFull(RuntimeError):
    """Too many erasures are waiting: try again later."""


class ErasureQueue:
    def __init__(self, size: int = 8) -> None:
        if size < 1:
            raise ValueError("erase_queue must be at least 1")
        self.size = size
        self._slots = threading.BoundedSemaphore(size)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.pending = 0

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "Future[Any]":
        """Queue `fn(*args, **kwargs)`; raises QueueFull at once when `size` are already queued."""
        if not self._slots.acquire(blocking=False):
            raise QueueFull(f"{self.size} erasures are already queued")
        with self._lock:
            self.pending += 1
        try:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="consentmw-erase")
                executor = self._executor
            future = executor.submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Any) -> None:
        with self._lock:
            self.pending -= 1
        self._slots.release()

    # lifecycle, as a companion of the collector: the thread ends with the writer
    def start(self) -> None:
        pass

    def stop(self, timeout: float = 5.0) -> None:
        """Let queued erasures finish (they are short), then end the thread."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
