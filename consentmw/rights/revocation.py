"""Keeps the in-memory `Revocations` of every process in step with the `revoked_consents`
table, so a withdrawn or erased consent is refused on every worker and app server.

One daemon thread per process: it saves the revocations made here (retrying while the store
is down; they apply here at once regardless), reads what other processes saved since its last
look every `interval` seconds (an index range on the server's insert time), and every few
minutes reloads the whole window (the cookie lifetime), which also forgets what has expired.
Memory holds one entry per consent id revoked within the cookie lifetime.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from consentmw.core.revocation import Revocations

if TYPE_CHECKING:
    from consentmw.store.sink import ClickHouseSink

log = logging.getLogger("consentmw")
TABLE = "revoked_consents"
FULL_RELOAD_EVERY = 300.0
#: how far back an incremental read looks before the newest insert time it has seen
#: (inserts by other app servers land a little out of order)
OVERLAP_SECONDS = 30


class RevocationSync:
    def __init__(self, sink: "ClickHouseSink", revocations: Revocations, max_age: int,
                 interval: float = 2.0) -> None:
        self.sink = sink
        self.revocations = revocations
        self.max_age = max_age
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._io = threading.Lock()
        self._seen: dt.datetime | None = None   # the newest server insert time read so far
        self._full_at = float("-inf")
        self.loaded = False
        revocations.wake = self._wake.set

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="consentmw-revocations", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            if self.revocations.unsaved:
                self.save()  # last chance for what was revoked just before shutdown
        except Exception:  # noqa: BLE001 - the store is down: logged, and lost only for other processes
            if self.revocations.unsaved:
                log.warning("consentmw: %d revocation(s) could not be saved to the store at shutdown; "
                            "other processes will not refuse those cookies", len(self.revocations.unsaved))

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.is_set():
            try:
                self.sync()
                wait = self.interval
            except Exception as exc:  # noqa: BLE001 - store down or not migrated yet: retry in 5 s
                # (as the writer does: a store that refuses is not asked more often than that,
                # and revocations still reach it within 5 s of its recovery)
                log.debug("consentmw: revocation sync failed (%s)", exc)
                wait = max(self.interval, 5.0)
            self._wake.wait(wait)
            self._wake.clear()

    # -- work -------------------------------------------------------------------
    def sync(self) -> None:
        """Save what was revoked here, then read what is new (everything, now and then)."""
        with self._io:
            self._save()
            full = time.monotonic() - self._full_at >= FULL_RELOAD_EVERY
            self._load(full)

    def save(self) -> None:
        """Write the revocations made here to the store now (raises if it cannot)."""
        with self._io:
            self._save()

    def _save(self) -> None:
        pending = self.revocations.unsaved
        if not pending:
            return
        taken: list[tuple[str, float, bool]] = []
        while pending:
            taken.append(pending.popleft())
        rows = [[cid, dt.datetime.fromtimestamp(before, dt.timezone.utc), 1 if erase else 0]
                for cid, before, erase in taken]
        try:
            self.sink.client().insert(f"{self.sink.database}.{TABLE}", rows,
                                      column_names=["consent_id", "before", "erase"])
        except Exception:
            pending.extendleft(reversed(taken))  # keep them, in order, for the next attempt
            raise

    def _load(self, full: bool) -> None:
        db = self.sink.database
        window = f"before > now64(3) - toIntervalSecond({int(self.max_age)})"
        if full or self._seen is None:
            where = window
        else:
            since = self._seen - dt.timedelta(seconds=OVERLAP_SECONDS)
            where = f"{window} AND ts >= toDateTime64('{since:%Y-%m-%d %H:%M:%S.%f}', 3, 'UTC')"
        result = self.sink.query(
            f"SELECT consent_id, max(before), max(erase), max(ts) FROM {db}.{TABLE} "
            f"WHERE {where} GROUP BY consent_id")
        newest = self._seen
        rows = []
        for cid, before, erase, ts in result.result_rows:
            rows.append((cid, _seconds(before), bool(erase)))
            newest = ts if newest is None or ts > newest else newest
        self.revocations.merge(rows)
        self._seen = newest
        if full:
            self.revocations.prune(time.time() - self.max_age)
            self._full_at = time.monotonic()
        self.loaded = True

    def stats(self) -> dict[str, Any]:
        return {"revoked_consents": len(self.revocations), "revocations_unsaved": len(self.revocations.unsaved)}


def _seconds(value: dt.datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()
