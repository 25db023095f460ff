"""Per-client token buckets, so one client cannot flood `/collect` (and the spool), the
consent choice, or the rights endpoints (each a query, an erasure a mutation, on ClickHouse)."""

from __future__ import annotations

import time


class TokenBuckets:
    def __init__(self, rate: float, burst: int, max_clients: int = 50_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        if len(self._buckets) >= self.max_clients and key not in self._buckets:
            # Forget full buckets first: they are clients at rest.
            for k in [k for k, (t, _) in self._buckets.items() if t >= self.burst][: self.max_clients // 2] or \
                    list(self._buckets)[: self.max_clients // 2]:
                del self._buckets[k]
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def retry_after(self, key: str, now: float | None = None) -> int:
        """Whole seconds until `key` has a token again (at least 1): the Retry-After answer."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        missing = max(0.0, 1.0 - tokens)
        return max(1, int(-(-missing // self.rate))) if self.rate > 0 else 3600
