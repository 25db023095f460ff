"""Daily salts for the statistics visitor hash (unique visitors without a stable id).

A visitor's daily code is a keyed hash of (site, address, browser) under a random salt
for that UTC day. Each salt is forgotten after 48 hours, so a code from one day can never
be linked to another day's, or back to the visitor, once its salt is gone.

Where the salt comes from: a `loader(day) -> bytes` (the collector passes one that keeps
the day's salt in the store, created once per day and shared by every worker, restart and
app server, so one person is one visitor per day however many processes saw them). Without
a loader, or while the store cannot be asked (`available()` is false, or the loader
fails), a provisional random salt is used and the stored one is fetched again every
`retry_after` seconds; visitors hashed meanwhile may count twice that day, the price of
never blocking on a store that is down.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from typing import Callable

log = logging.getLogger("consentmw")

#: fetches (or creates) the shared salt of one UTC day number; raises if the store cannot answer
SaltLoader = Callable[[int], bytes]


#: Python's own cost of one remembered code (tuple, ints, dict slot), roughly
_ENTRY_OVERHEAD = 200


class DailySalts:
    def __init__(self, keep_days: int = 2, cache_size: int = 65_536, max_bytes: int = 8 << 20,
                 loader: SaltLoader | None = None,
                 available: Callable[[], bool] = lambda: True, retry_after: float = 5.0) -> None:
        self._salts: dict[int, bytes] = {}
        self._keep = keep_days
        self._lock = threading.Lock()
        # A visitor's page views repeat (day, site, ip, user agent): remember their codes.
        # Forgotten with the salts, so no code outlives the salt it came from.
        self._codes: dict[tuple[int, str, str, str], int] = {}
        self._cache_size = cache_size
        #: bounded in bytes as well: a key holds a site, an address and a user agent (each capped)
        self._max_bytes = max_bytes
        self._code_bytes = 0
        self._loader = loader
        self._available = available
        self._retry_after = retry_after
        #: days whose salt is local only, and when to ask the store again
        self._provisional: dict[int, float] = {}

    def salt(self, day: int) -> bytes:
        salt = self._salts.get(day)
        if salt is None or day in self._provisional:
            with self._lock:
                salt = self._salt_locked(day)
        return salt

    def _salt_locked(self, day: int) -> bytes:
        salt = self._salts.get(day)
        retry_at = self._provisional.get(day)
        if salt is not None and (retry_at is None or time.monotonic() < retry_at):
            return salt
        shared = self._load(day)
        if shared is not None:
            if salt is not None and salt != shared:
                self._clear_codes()  # codes made with the provisional salt are not reused
            self._provisional.pop(day, None)
            salt = shared
        elif salt is None:
            salt = os.urandom(16)
            if self._loader is not None:
                self._provisional[day] = time.monotonic() + self._retry_after
        else:
            self._provisional[day] = time.monotonic() + self._retry_after
        self._salts[day] = salt
        for old in [d for d in self._salts if d <= day - self._keep]:
            del self._salts[old]
            self._provisional.pop(old, None)
            self._clear_codes()
        return salt

    def preload(self, day: int) -> bool:
        """Fetch the day's shared salt now (a caller that knows the store just answered, at
        start-up), so the first events of the day need not wait for it. False if it failed."""
        with self._lock:
            shared = self._load(day, force=True)
            if shared is None:
                return False
            if self._salts.get(day) not in (None, shared):
                self._codes.clear()
            self._salts[day] = shared
            self._provisional.pop(day, None)
            return True

    def forget_before(self, day: int) -> None:
        """Forget the salts of days before `day` (and every code made meanwhile): for a
        process that is handed its salts, so it keeps none longer than the one that owns them."""
        with self._lock:
            old = [d for d in self._salts if d < day]
            for d in old:
                del self._salts[d]
                self._provisional.pop(d, None)
            if old:
                self._clear_codes()

    def _load(self, day: int, force: bool = False) -> bytes | None:
        if self._loader is None or not (force or self._available()):
            return None
        try:
            salt = self._loader(day)
        except Exception as exc:  # noqa: BLE001 - never lose events over a salt
            if day not in self._provisional:
                log.warning("consentmw: the day's visitor salt could not be read from the store (%s); "
                            "using a provisional one until it can", str(exc).splitlines()[0][:200] if str(exc) else exc)
            return None
        if len(salt) < 16:
            raise ValueError("a daily salt must be at least 16 bytes")
        return salt

    def visitor_hash(self, ts: float, site: str, ip: str, user_agent: str) -> int:
        """A 64-bit pseudonymous code for one visitor on one site on one day."""
        day = int(ts // 86400)
        key = (day, site, ip, user_agent)
        code = self._codes.get(key)
        if code is None or day in self._provisional:
            digest = hashlib.blake2b(f"{site}\x00{ip}\x00{user_agent}".encode("utf-8", "replace"),
                                     digest_size=8, key=self.salt(day)).digest()
            code = int.from_bytes(digest, "big")
            size = len(site) + len(ip) + len(user_agent) + _ENTRY_OVERHEAD
            if len(self._codes) >= self._cache_size or self._code_bytes + size > self._max_bytes:
                self._clear_codes()
            self._codes[key] = code
            self._code_bytes += size
        return code

    def _clear_codes(self) -> None:
        self._codes.clear()
        self._code_bytes = 0
