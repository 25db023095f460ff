"""Daily salts for the statistics visitor hash (unique visitors without a stable id).

A fresh random salt per UTC day lives only in memory and is discarded after 48 hours,
so a hash from one day can never be linked to another day's, or back to the visitor,
once its salt is gone. A restart loses the salt: unique counts of that day may double
count across the restart, which is the price of never persisting it.
"""

from __future__ import annotations

import hashlib
import os
import threading


class DailySalts:
    def __init__(self, keep_days: int = 2, cache_size: int = 65_536) -> None:
        self._salts: dict[int, bytes] = {}
        self._keep = keep_days
        self._lock = threading.Lock()
        # A visitor's page views repeat (day, site, ip, user agent): remember their codes.
        # Forgotten with the salts, so no code outlives the salt it came from.
        self._codes: dict[tuple[int, str, str, str], int] = {}
        self._cache_size = cache_size

    def salt(self, day: int) -> bytes:
        salt = self._salts.get(day)
        if salt is None:
            with self._lock:
                salt = self._salts.setdefault(day, os.urandom(16))
                for old in [d for d in self._salts if d <= day - self._keep]:
                    del self._salts[old]
                    self._codes.clear()
        return salt

    def visitor_hash(self, ts: float, site: str, ip: str, user_agent: str) -> int:
        """A 64-bit pseudonymous code for one visitor on one site on one day."""
        day = int(ts // 86400)
        key = (day, site, ip, user_agent)
        code = self._codes.get(key)
        if code is None:
            digest = hashlib.blake2b(f"{site}\x00{ip}\x00{user_agent}".encode("utf-8", "replace"),
                                     digest_size=8, key=self.salt(day)).digest()
            code = int.from_bytes(digest, "big")
            if len(self._codes) >= self._cache_size:
                self._codes.clear()
            self._codes[key] = code
        return code
