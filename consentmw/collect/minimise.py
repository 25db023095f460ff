"""The minimiser: a batch of raw hits in, one Arrow table per granted purpose out, each
holding only the columns that purpose's data categories allow.

This is where consent is enforced on the server. A purpose's plan (its table and
columns) is derived from the policy once. Per batch, each hit is routed by its granted
purposes and event type to the plans that may store it; hits of blocked visitors and of
bots are dropped; then each table's columns are computed over exactly the hits routed
to it (`columns.TableColumns`), column by column rather than hit by hit. Rows carry the
consent that authorised them (`consent_id`, or a day-scoped proof of it) and the policy
version.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa

from consentmw.core.arrow import arrow_schema, to_arrow
from consentmw.core.fields import LEDGER_COLUMNS as _LEDGER, Column, columns_for, table_for
from consentmw.core.ledger import ConsentRecord
from consentmw.core.policy import Policy, Purpose
from consentmw.collect.beacon import EVENT_CATEGORY
from consentmw.collect.columnar import HitColumns, Selection, encode
from consentmw.collect.columns import AGENTS, TableColumns, buildable
from consentmw.collect.enrich import Enricher
from consentmw.collect.hit import Hit
from consentmw.collect.ip import masked_ip16

LEDGER_TABLE = "consent_log"
#: consent_log keeps IPs masked this far, whatever the purposes say.
LEDGER_V4_MASK, LEDGER_V6_PREFIX = 2, 48
LEDGER_COLUMNS = tuple(c.name for c in _LEDGER)

Tables = dict[str, pa.Table]


def _no_pause() -> None:
    """The default yield point: work that nobody waits on never pauses."""


@dataclass
class Plan:
    purpose: Purpose
    table: str
    columns: tuple[Column, ...]
    names: tuple[str, ...] = field(init=False)
    schema: pa.Schema = field(init=False)

    def __post_init__(self) -> None:
        self.names = tuple(c.name for c in self.columns)
        self.schema = arrow_schema(self.columns)
        missing = [n for n in self.names if not buildable(n)]
        if missing:
            raise ValueError(f"no way to compute column(s) {missing} of {self.table}")


@dataclass
class Counts:
    bots: int = 0
    hosts: int = 0                  # hits for a Host not in allowed_hosts (not stored)
    rows: int = 0
    blocked: int = 0


class _Routes(dict[tuple[frozenset[str], str], int]):
    """(granted purposes, event type) -> a small number, given out in order of first appearance."""

    def __missing__(self, key: tuple[frozenset[str], str]) -> int:
        number = self[key] = len(self)
        return number


class Minimiser:
    def __init__(self, policy: Policy, enricher: Enricher) -> None:
        self.policy = policy
        self.enricher = enricher
        self.plans = {p.id: Plan(p, table_for(p.id), columns_for(p)) for p in policy.collecting}
        self._plan_cache: dict[tuple[frozenset[str], str], tuple[Plan, ...]] = {}
        self.counts = Counts()
        #: Set by `consentmw.rights`: True for a consent id whose visitor blocked processing.
        self.blocked: Callable[[str], bool] | None = None
        #: Called between steps of a batch (each column of each table); the writer sets it to
        #: its GIL pacer so the event loop is never kept waiting for a whole batch.
        self.pause: Callable[[], None] = _no_pause
        #: Set by `consentmw.rights`: when a consent id was erased (None: never). Its hits and
        #: ledger details captured before then are dropped: they were in flight during the erasure.
        self.erased: Callable[[str], float | None] | None = None

    def process(self, items: Iterable[Hit | ConsentRecord]) -> Tables:
        """Minimise and enrich a batch into one Arrow table per ClickHouse table (empty ones omitted)."""
        hits: list[Hit] = []
        records: list[ConsentRecord] = []
        for item in items:
            if isinstance(item, ConsentRecord):
                records.append(item)
            else:
                hits.append(item)
        counts = replace(self.counts)
        try:
            out: Tables = self._hits(hits) if hits else {}
            if records:
                out[LEDGER_TABLE] = self._ledger(records)
        except BaseException:
            self.counts = counts  # the writer splits a failed batch and tries again: count once
            raise
        return out

    # -- events --------------------------------------------------------------
    def _plans(self, purposes: frozenset[str], event_type: str) -> tuple[Plan, ...]:
        """The plans that store an event of this type for these granted purposes."""
        key = (purposes, event_type)
        found = self._plan_cache.get(key)
        if found is None:
            category = EVENT_CATEGORY.get(event_type, "page")
            found = tuple(plan for pid in sorted(purposes)
                          if (plan := self.plans.get(pid)) is not None and category in plan.purpose.categories)
            if len(self._plan_cache) < 4096:
                self._plan_cache[key] = found
        return found

    def _hits(self, hits: list[Hit]) -> Tables:
        pause = self.pause
        batch = HitColumns(hits)
        routes = _Routes()
        route = np.fromiter(map(routes.__getitem__, zip(batch.objects("purposes"), batch.objects("event_type"))),
                            dtype=np.int64, count=batch.size)
        plans_of = [self._plans(*key) for key in routes]  # by route number (dicts keep insertion order)
        stored = np.array([bool(p) for p in plans_of])[route]
        pause()
        stored &= ~self._blocked(batch, stored)
        pause()
        stored &= ~self._foreign_hosts(batch, stored)
        pause()
        stored &= ~self._bots(batch, stored)
        tables: Tables = {}
        for plan in {plan.table: plan for plans in plans_of for plan in plans}.values():
            takes = np.array([plan in plans for plans in plans_of])[route] & stored
            rows = np.flatnonzero(takes)
            if len(rows):
                columns = TableColumns(Selection(batch, rows), plan.purpose, self.enricher, pause)
                arrays = []
                for name in plan.names:
                    pause()
                    arrays.append(columns.column(name))
                pause()
                tables[plan.table] = pa.Table.from_arrays(arrays, schema=plan.schema)
                self.counts.rows += len(rows)
        return tables

    def _blocked(self, batch: HitColumns, candidates: np.ndarray) -> np.ndarray:
        """Hits of visitors who blocked processing, and hits captured before their consent was
        erased (asked once per consent id in the batch)."""
        blocked, erased = self.blocked, self.erased
        if (blocked is None and erased is None) or not candidates.any():
            return np.zeros(batch.size, dtype=bool)
        codes, ids = encode(batch.array("consent_id", pa.string()))
        found = np.zeros(batch.size, dtype=bool)
        if blocked is not None:
            found |= np.array([blocked(i) for i in ids], dtype=bool)[codes]
        if erased is not None:
            cutoff = np.array([erased(i) or float("-inf") for i in ids], dtype=np.float64)[codes]
            found |= batch.numbers("ts", np.float64) < cutoff
        found &= candidates
        self.counts.blocked += int(found.sum())
        return found

    def _foreign_hosts(self, batch: HitColumns, candidates: np.ndarray) -> np.ndarray:
        """Hits for a Host outside `allowed_hosts` (when set): not this site's traffic."""
        hosts = self.enricher.hosts
        if hosts.any or not candidates.any():
            return np.zeros(batch.size, dtype=bool)
        codes, values = encode(batch.array("site", pa.string()))
        found = np.array([not hosts.allows(v) for v in values], dtype=bool)[codes] & candidates
        self.counts.hosts += int(found.sum())
        return found

    def _bots(self, batch: HitColumns, candidates: np.ndarray) -> np.ndarray:
        """Hits sent by bots and scripts (one user-agent parse per distinct string)."""
        if not candidates.any():
            return np.zeros(batch.size, dtype=bool)
        rows = np.flatnonzero(candidates)
        codes, strings = encode(Selection(batch, rows).array("user_agent", pa.string()))
        agents = list(map(self.enricher.agent, strings))
        # Kept for the tables' browser columns: each string is parsed once per batch, even
        # when a batch holds more distinct strings than the parser's cache.
        every = np.full(batch.size, -1, dtype=np.int64)
        every[rows] = codes
        batch.shared[AGENTS] = (every, agents)
        bots = np.zeros(batch.size, dtype=bool)
        bots[rows] = np.array([a.is_bot for a in agents], dtype=bool)[codes]
        self.counts.bots += int(bots.sum())
        return bots

    # -- ledger --------------------------------------------------------------
    def _ledger(self, records: list[ConsentRecord]) -> pa.Table:
        """consent_log rows: the proof of each choice, with the address masked (ledger volume is tiny)."""
        client_ip = self.enricher.client_ip
        if self.erased is not None:
            records = [self._scrubbed(r) for r in records]
        columns: dict[str, list[Any]] = {name: [getattr(r, name) for r in records] for name in _LEDGER_AS_IS}
        columns["ts"] = [int(r.ts * 1000) for r in records]
        columns["granted"] = [list(r.granted) for r in records]
        columns["denied"] = [list(r.denied) for r in records]
        columns["ip"] = [masked_ip16(client_ip(r.peer_ip, r.forwarded_for), LEDGER_V4_MASK, LEDGER_V6_PREFIX)
                         for r in records]
        columns["visitor_id"] = [r.visitor_id or "" for r in records]
        return to_arrow(LEDGER_TABLE, {name: columns[name] for name in LEDGER_COLUMNS})


    def _scrubbed(self, record: ConsentRecord) -> ConsentRecord:
        """A record of a consent erased after it was made keeps the choice, not the person."""
        at = self.erased(record.consent_id) if self.erased is not None else None
        if at is None or record.ts >= at:
            return record
        return replace(record, peer_ip="", forwarded_for="", user_agent="", visitor_id=None)


#: consent_log columns stored exactly as the record holds them
_LEDGER_AS_IS = ("record_id", "consent_id", "action", "policy_version", "source", "gpc", "language",
                 "texts_hash", "page", "site", "user_agent")
