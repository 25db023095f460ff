"""Withdrawn and erased consents, in memory: which cookies the server refuses although their
signature is good (no I/O here; `consentmw.rights.revocation` keeps it in step with the store).

A consent cookie stays valid for its whole lifetime (180 days by default), so a copy of an
old one could otherwise be replayed after the visitor changed their mind. Every new choice
for a consent id (a change, a withdrawal) and every erasure records the time before which
cookies of that consent id are refused; the new cookie, given at that very millisecond,
stays valid. An erasure also tells the writer to drop that consent's hits captured before it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Iterable


class Revocations:
    """consent id -> the time (unix seconds) before which its cookies are refused.

    Look-ups are one dict `get` (the request path and the writer thread read it); updates
    replace single entries, so readers never see a transiently missing one. Entries older
    than the cookie lifetime are pruned (`prune`): no cookie given before them is still valid.
    """

    def __init__(self) -> None:
        self.before: dict[str, float] = {}
        #: consent id -> when it was erased (hits captured before it are dropped)
        self.erased: dict[str, float] = {}
        #: revocations made here and not yet in the store (drained by the store sync)
        self.unsaved: deque[tuple[str, float, bool]] = deque(maxlen=100_000)  # bounded while the store is down
        self.wake: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.before)

    def revoke(self, consent_id: str, before: float, *, erase: bool = False) -> None:
        """Refuse cookies of `consent_id` given before `before` (in this process at once,
        in every other one once the store sync has saved it and they have refreshed)."""
        if not consent_id:
            return
        self.apply(consent_id, before, erase)
        self.unsaved.append((consent_id, before, erase))
        if self.wake is not None:
            self.wake()

    def apply(self, consent_id: str, before: float, erase: bool) -> None:
        """Merge one revocation (from here or from the store): the latest time wins."""
        with self._lock:
            if before > self.before.get(consent_id, float("-inf")):
                self.before[consent_id] = before
            if erase and before > self.erased.get(consent_id, float("-inf")):
                self.erased[consent_id] = before

    def merge(self, rows: Iterable[tuple[str, float, bool]]) -> None:
        for consent_id, before, erase in rows:
            self.apply(consent_id, before, erase)

    def refuses(self, consent_id: str | None, given_at: float | None) -> bool:
        """Whether a cookie of this consent, given at `given_at`, was revoked since."""
        before = self.before.get(consent_id or "")
        return before is not None and (given_at or 0.0) < before

    def erased_at(self, consent_id: str) -> float | None:
        return self.erased.get(consent_id)

    def prune(self, oldest: float) -> None:
        """Forget revocations from before `oldest` (now minus the cookie lifetime)."""
        with self._lock:
            for table in (self.before, self.erased):
                for key in [k for k, t in table.items() if t < oldest]:
                    del table[key]
