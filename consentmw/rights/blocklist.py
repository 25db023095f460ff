"""Which subjects have asked to suspend processing (GDPR art. 18), cached for the writer thread."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from consentmw.store.sink import ClickHouseSink


class Blocklist:
    """Blocked subjects, kept in memory and refreshed from `blocked_visitors` every `ttl` s.

    `is_blocked` is a set look-up; a refresh (one small query) happens only when the copy
    is older than `ttl`, on whichever thread asks (the writer thread, or a worker thread
    for the async callers). A failed refresh keeps the last known set. Blocks made in this
    process apply at once; blocks made by another process apply within `ttl` seconds.
    """

    def __init__(self, sink: "ClickHouseSink", ttl: float = 30.0) -> None:
        self.sink = sink
        self.ttl = ttl
        self._subjects: frozenset[str] = frozenset()
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    @property
    def stale(self) -> bool:
        return time.monotonic() - self._loaded_at > self.ttl

    def refresh(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is refreshing; use the current copy
        try:
            attempted = time.monotonic()
            try:
                rows = self.sink.query(
                    f"SELECT subject FROM {self.sink.database}.blocked_visitors "
                    f"GROUP BY subject HAVING argMax(blocked, ts) = 1").result_rows
            except Exception:  # noqa: BLE001 - store down: keep the last known set, retry later
                self._loaded_at = attempted - self.ttl / 2
                return
            self._subjects = frozenset(r[0] for r in rows)
            self._loaded_at = attempted
        finally:
            self._lock.release()

    def is_blocked(self, subject: str | None, *, refresh: bool = True) -> bool:
        if not subject:
            return False
        if refresh and self.stale:
            self.refresh()
        return subject in self._subjects

    def any_blocked(self, subjects: Iterable[str | None], *, refresh: bool = True) -> bool:
        if refresh and self.stale:
            self.refresh()
        current = self._subjects
        return any(s in current for s in subjects if s)

    def _apply(self, subjects: Iterable[str], blocked: bool) -> None:
        subjects = set(subjects)
        self._subjects = (self._subjects | subjects) if blocked else (self._subjects - subjects)


# ---------------------------------------------------------------------------- engine
