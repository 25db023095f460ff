"""Visitor rights: export (access), block (restriction), erase, and erase-on-withdrawal.

A *subject* is everything that links stored rows to one browser: its consent id (stable
across choice changes) and every visitor id that consent id ever carried (the ledger
records each one). Visitors reach only their own subject, authenticated by the signed
consent cookie; operators reach any subject through the CLI or the admin API.

What each right covers:

* **export** — every row of the subject in every table that keeps an identifier (the
  per-purpose tables of purposes that keep a visitor id, the profile aggregate, any other
  table with a `visitor_id`/`consent_id` column), the consent history from the ledger,
  whether processing is blocked, and a plain per-purpose summary of what is kept and
  until when.
* **erase** — deletes those rows, including materialized-view targets (ClickHouse does
  not propagate deletes to them), strips the ledger rows of IP, user agent and visitor id
  (the choice itself is kept as proof of consent, GDPR art. 7(1)), verifies that nothing
  is left and writes a receipt to `erasure_log` (time, tables, row counts, a salted hash
  of the subject's ids; no personal data).
* **block** — stops collection for the browser (the minimiser asks `is_blocked`) and
  hides its rows from the profile and the analyst views until unblocked; data is kept.

Statistics rows carry no stable identifier (only a day-scoped proof token), so they
cannot be attributed to a visitor and are out of scope for export and erasure by
design. Blocking still hides them from the views: the operator's key recomputes the
visitor's day tokens, which are listed in `blocked_visitors` like any other subject.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from consentmw.core.fields import table_for
from consentmw.core.policy import Policy
from consentmw.store.rollup import DAILY as ROLLUP, SOURCE as ROLLUP_SOURCE, forget_statements
from consentmw.store.schema import LEDGER_RETENTION_DAYS
from consentmw.store.views import PROFILE_READ, PROFILE_TABLE
from consentmw.rights.blocklist import Blocklist
from consentmw.rights.revocation import TABLE as REVOCATIONS

if TYPE_CHECKING:  # pragma: no cover
    from consentmw.core.consent import ConsentState
    from consentmw.rights.revocation import RevocationSync
    from consentmw.store.sink import ClickHouseSink

#: Consent and visitor ids are URL-safe base64 (consent.new_id); anything else is refused.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{4,64}")
LEDGER = "consent_log"
OUT_OF_SCOPE_NOTE = ("Statistics rows carry no stable identifier: only a code that changes every day and "
                     "cannot be linked back to you without the site's secret key. They cannot be attributed to "
                     "you, so they are not part of this export or erasure; they are deleted automatically "
                     "{days} days after collection.")
LEDGER_NOTE = ("Your consent records (what you chose, when, under which policy version and texts) are kept for "
               f"{LEDGER_RETENTION_DAYS // 365} years as proof of consent (GDPR art. 7(1)). Erasure removes the "
               "IP address, browser details and visitor id from them.")
_ZERO_IP = "::"
ERASE_RETRIES = 2  # deletions repeated when rows of another process arrived meanwhile


class RightsError(RuntimeError):
    """The store could not complete a rights request (nothing was half-done silently)."""


def valid_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value or ""))


def _in(column: str, values: Iterable[str]) -> str | None:
    vals = sorted(set(v for v in values if v))
    if not vals:
        return None
    for v in vals:
        if not valid_id(v):
            raise ValueError(f"not a valid consent or visitor id: {v[:70]!r}")
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in vals) + ")"


def _where(*parts: str | None) -> str | None:
    parts_ = [p for p in parts if p]
    return " OR ".join(f"({p})" for p in parts_) if parts_ else None


@dataclass
class Subject:
    """The ids that link stored rows to one browser."""

    consent_ids: set[str] = field(default_factory=set)
    visitor_ids: set[str] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not self.consent_ids and not self.visitor_ids

    def ids(self) -> list[str]:
        return sorted(self.consent_ids | self.visitor_ids)

    def public(self) -> dict[str, list[str]]:
        return {"consent_ids": sorted(self.consent_ids), "visitor_ids": sorted(self.visitor_ids)}


def jsonable(value: Any) -> Any:
    """ClickHouse result values to JSON-ready ones (UTC ISO times, IPs as text)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, ipaddress.IPv6Address):
        return str(value.ipv4_mapped or value)
    if isinstance(value, ipaddress.IPv4Address | uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def latest_grants(history: list[dict[str, Any]]) -> set[str]:
    """The purposes the subject's most recent ledger choice granted (an operator export has
    no cookie to read them from; a withdrawal's row grants only the required purposes)."""
    return set(history[-1].get("granted") or ()) if history else set()  # history is ordered by ts


# ---------------------------------------------------------------------------- blocklist
class Rights:
    """Export, erase, block and unblock a subject in one ClickHouse database."""

    def __init__(self, sink: "ClickHouseSink", policy: Policy, secret: str, *,
                 proof: Callable[[str, float], str] | None = None,
                 blocklist: Blocklist | None = None, revocations: "RevocationSync | None" = None,
                 flush_interval: float = 1.0) -> None:
        self.sink = sink
        self.policy = policy
        self.db = sink.database
        self.schema = sink.schema
        self._receipt_key = hashlib.sha256(("consentmw.erasure:" + secret).encode()).digest()
        self.proof = proof
        self.blocklist = blocklist or Blocklist(sink)
        #: the running app's revocation list: an erasure refuses the subject's cookies first
        self.revocations = revocations
        #: seconds for every other process to learn of an erasure and flush what it holds
        self.retry_after = (revocations.interval if revocations is not None else 2.0) + flush_interval + 0.5
        #: tables whose rows carry no stable id (purposes that keep no visitor id)
        self.unlinkable = {table_for(p.id): p for p in policy.collecting if "visitor_id" not in p.categories}

    # -- helpers --------------------------------------------------------------
    def _q(self, sql: str) -> Any:
        return self.sink.query(sql)

    def _local(self, table: str) -> str:
        return self.schema.local(table)

    def subject_hash(self, subject_id: str) -> str:
        """The salted hash a receipt stores for one id (recompute it to find a receipt)."""
        return hmac.new(self._receipt_key, subject_id.encode(), hashlib.sha256).hexdigest()[:32]

    def tables(self) -> dict[str, set[str]]:
        """Every stored table (MergeTree family) with a consent_id or visitor_id column.

        Discovered from the server, so materialized-view targets added later are covered.
        On a cluster these are the `_local` shard tables; names are returned without it.
        """
        rows = self._q(
            "SELECT c.table, groupArray(c.name) FROM system.columns AS c "
            "INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table "
            f"WHERE c.database = '{self.db}' AND c.name IN ('consent_id', 'visitor_id') "
            "AND t.engine LIKE '%MergeTree' GROUP BY c.table ORDER BY c.table").result_rows
        out: dict[str, set[str]] = {}
        for table, cols in rows:
            name = table[:-len("_local")] if self.schema.cluster and table.endswith("_local") else table
            if name == REVOCATIONS:
                continue  # the tombstones that keep an erased consent's cookies refused: not personal data
            linkable = set(cols)
            if name in self.unlinkable:
                linkable.discard("consent_id")  # a day-scoped proof token there, not an id
            if linkable:
                out[name] = linkable
        return out

    def _predicate(self, subject: Subject, cols: set[str]) -> str | None:
        return _where(_in("consent_id", subject.consent_ids) if "consent_id" in cols else None,
                      _in("visitor_id", subject.visitor_ids) if "visitor_id" in cols else None)

    # -- subjects -------------------------------------------------------------
    def resolve(self, any_id: str) -> Subject:
        """The subject an operator means by a consent id or a visitor id."""
        if not valid_id(any_id):
            raise ValueError(f"not a valid consent or visitor id: {any_id[:70]!r}")
        subject = Subject()
        rows = self._q(f"SELECT DISTINCT consent_id FROM {self.db}.{LEDGER} "
                       f"WHERE consent_id = '{any_id}' OR visitor_id = '{any_id}'").result_rows
        subject.consent_ids.update(r[0] for r in rows if r[0])
        if not subject.consent_ids:
            # Not in the ledger (e.g. scrubbed or expired): look in the tables themselves.
            for table, cols in self.tables().items():
                if table == LEDGER:
                    continue
                pred = _where(f"consent_id = '{any_id}'" if "consent_id" in cols else None,
                              f"visitor_id = '{any_id}'" if "visitor_id" in cols else None)
                if pred and self._q(f"SELECT count() FROM {self.db}.{table} WHERE {pred}").result_rows[0][0]:
                    if "visitor_id" in cols and self._q(
                            f"SELECT count() FROM {self.db}.{table} WHERE visitor_id = '{any_id}'").result_rows[0][0]:
                        subject.visitor_ids.add(any_id)
                    else:
                        subject.consent_ids.add(any_id)
            if subject.empty:
                return subject
        return self.expand(subject)

    def expand(self, subject: Subject) -> Subject:
        """Add every visitor id the ledger and the tables link to the subject's consent ids."""
        pred = _in("consent_id", subject.consent_ids)
        if pred:
            rows = self._q(f"SELECT DISTINCT visitor_id FROM {self.db}.{LEDGER} WHERE {pred}").result_rows
            subject.visitor_ids.update(r[0] for r in rows if r[0])
            for table, cols in self.tables().items():
                if table in self.unlinkable or table == LEDGER or not {"consent_id", "visitor_id"} <= cols:
                    continue
                rows = self._q(f"SELECT DISTINCT visitor_id FROM {self.db}.{table} WHERE {pred}").result_rows
                subject.visitor_ids.update(r[0] for r in rows if r[0])
        return subject

    def subject_for(self, state: "ConsentState") -> Subject:
        """The subject of a verified consent cookie."""
        subject = Subject({state.id} if state.id else set(), {state.visitor_id} if state.visitor_id else set())
        return self.expand(subject)

    # -- export ---------------------------------------------------------------
    def export(self, subject: Subject, *, state: "ConsentState | None" = None,
               progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Every stored row of the subject, their consent history and a per-purpose summary."""
        now = dt.datetime.now(dt.timezone.utc)
        tables: dict[str, list[dict[str, Any]]] = {}
        history: list[dict[str, Any]] = []
        found = self.tables()
        for table, cols in found.items():
            pred = self._predicate(subject, cols)
            if pred is None:
                continue
            if table == PROFILE_TABLE:
                sql = ("SELECT visitor_id, " + ", ".join(f"{e} AS {n}" for n, e in PROFILE_READ.items()) +
                       f" FROM {self.db}.{table} WHERE {pred} GROUP BY visitor_id ORDER BY first_seen")
            else:
                columns = self._q(f"SELECT name FROM system.columns WHERE database = '{self.db}' "
                                  f"AND table = '{self._local(table).split('.', 1)[1]}' "
                                  "AND type NOT LIKE '%AggregateFunction(%' ORDER BY position").result_rows
                names = ", ".join(f"`{r[0]}`" for r in columns)
                order = " ORDER BY ts" if any(r[0] == "ts" for r in columns) else ""
                sql = f"SELECT {names} FROM {self.db}.{table} WHERE {pred}{order}"
            rows = self._rows(sql, progress)
            if table == LEDGER:
                history = rows
            else:
                tables[table] = rows
        blocked = self.blocklist.any_blocked(subject.ids())
        granted = set(state.granted) if state is not None else latest_grants(history)
        return {
            "exported_at": jsonable(now),
            "subject": subject.public(),
            "blocked": blocked,
            "summary": self.summary(tables, granted, now),
            "consent_history": history,
            "tables": tables,
            "not_included": {
                table: OUT_OF_SCOPE_NOTE.format(days=p.retention_days) for table, p in self.unlinkable.items()},
            "consent_records": LEDGER_NOTE,
        }

    def _rows(self, sql: str, progress: Callable[[int], None] | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self.sink.client().query_row_block_stream(sql) as stream:
            names = stream.source.column_names
            for block in stream:
                out.extend({n: jsonable(v) for n, v in zip(names, row)} for row in block)
                if progress is not None:
                    progress(len(block))
        return out

    def summary(self, tables: dict[str, list[dict[str, Any]]], granted: set[str],
                now: dt.datetime) -> list[dict[str, Any]]:
        """Per purpose: granted or not, what it keeps, how many rows, and until when."""
        out = []
        labels = self.policy.category_texts
        for purpose in self.policy.purposes:
            table = table_for(purpose.id)
            entry: dict[str, Any] = {
                "purpose": purpose.id,
                "title": purpose.text("en", "title"),
                "granted": purpose.id in granted,
                "keeps": [labels.get(c, {}).get("en", c) for c in sorted(purpose.categories)],
                "retention_days": purpose.retention_days,
            }
            if not purpose.collects:
                entry["stored"] = "nothing: this purpose stores no data on this site"
            elif table in self.unlinkable:
                entry["stored"] = OUT_OF_SCOPE_NOTE.format(days=purpose.retention_days)
            else:
                rows = tables.get(table, [])
                entry["rows"] = len(rows)
                if rows:
                    times = sorted(r["ts"] for r in rows)
                    keep = dt.timedelta(days=purpose.retention_days)
                    oldest = dt.datetime.fromisoformat(times[0].replace("Z", "+00:00"))
                    newest = dt.datetime.fromisoformat(times[-1].replace("Z", "+00:00"))
                    entry.update(oldest=times[0], newest=times[-1],
                                 next_deletion=jsonable(oldest + keep), kept_until=jsonable(newest + keep),
                                 stored=f"{len(rows)} row(s); each is deleted {purpose.retention_days} days "
                                        f"after it was collected, the last one on {(newest + keep).date()}")
                else:
                    entry["stored"] = "nothing stored"
            out.append(entry)
        return out

    # -- erase ----------------------------------------------------------------
    def erase(self, subject: Subject, *, requested_by: str, settle: Callable[[], None] | None = None,
              before: float | None = None) -> dict[str, Any]:
        """Stop collection for the subject, delete it everywhere it is linkable, verify, and
        write a receipt.

        Order matters while the visitor keeps browsing: first their consent ids are revoked
        (cookies given before `before`, default now, are refused from here on, in this process
        at once and in every other one once they refresh; hits of theirs still in flight are
        dropped by the writer), then `settle` writes what the writer holds, then the rows are
        deleted and the deletion verified.
        """
        if subject.empty:
            raise ValueError("nothing identifies this visitor: no consent id or visitor id")
        started = time.perf_counter()
        if self.revocations is not None:
            at = time.time() if before is None else before
            for consent_id in sorted(subject.consent_ids):
                self.revocations.revocations.revoke(consent_id, at, erase=True)
            self.revocations.save()  # other processes learn it from the store: must be there first
        if settle is not None:
            settle()
        counts: dict[str, int] = {}
        ledger_pred = self._predicate(subject, {"consent_id", "visitor_id"})
        dirty = f"({ledger_pred}) AND (visitor_id != '' OR user_agent != '' OR ip != toIPv6('{_ZERO_IP}'))"
        left: dict[str, int] = {}
        for attempt in range(1 + ERASE_RETRIES):
            if attempt:
                # Rows left over: another app server wrote hits it captured before it learnt
                # of the erasure. Wait until it has (a revocation refresh and a writer flush), again.
                time.sleep(self.retry_after)
            self._delete(subject, dirty, ledger_pred, counts)
            left = self._left(subject, dirty)
            if not left:
                break
        verified = not left
        out_of_scope = sorted(self.unlinkable)
        note = ("statistics rows carry no stable identifier and are out of scope: "
                + ", ".join(out_of_scope) + "; consent_log rows kept as proof of consent without IP, "
                "user agent or visitor id" + ("" if verified else f"; NOT VERIFIED, rows left: {left}"))
        receipt = {
            "receipt_id": str(uuid.uuid4()),
            "ts": dt.datetime.now(dt.timezone.utc),
            "subject_hash": " ".join(self.subject_hash(i) for i in subject.ids()),
            "requested_by": requested_by,
            "tables": counts,
            "verified": verified,
            "note": note,
        }
        self.sink.client().insert(f"{self.db}.erasure_log", [list(receipt.values())], column_names=list(receipt))
        result = {k: jsonable(v) for k, v in receipt.items()}
        result.update(deleted=sum(v for k, v in counts.items() if k != LEDGER), scrubbed_ledger_rows=counts[LEDGER],
                      left=left, out_of_scope=out_of_scope, seconds=round(time.perf_counter() - started, 4),
                      statistics=OUT_OF_SCOPE_NOTE.format(
                          days=max((p.retention_days for p in self.unlinkable.values()), default=0)),
                      consent_records=LEDGER_NOTE)
        if not verified:
            raise RightsError(f"erasure could not be verified, rows left: {left}")
        return result

    def _delete(self, subject: Subject, dirty: str, ledger_pred: str | None, counts: dict[str, int]) -> None:
        """Delete the subject's rows in every linkable table and scrub its ledger rows
        (adding to `counts`)."""
        on_cluster = self.schema.on_cluster
        for table, cols in self.tables().items():
            if table == LEDGER:
                continue
            pred = self._predicate(subject, cols)
            if pred is None:
                continue
            n = self._q(f"SELECT count() FROM {self.db}.{table} WHERE {pred}").result_rows[0][0]
            counts[table] = counts.get(table, 0) + int(n)
            if n:
                days = self._rolled_days(table, pred)
                self.sink.command(f"DELETE FROM {self._local(table)}{on_cluster} WHERE {pred}")
                for statement in forget_statements(self.db, days):
                    self.sink.command(statement)
        # The ledger keeps the choices as proof of consent, stripped of personal details.
        n = self._q(f"SELECT count() FROM {self.db}.{LEDGER} WHERE {dirty}").result_rows[0][0]
        counts[LEDGER] = counts.get(LEDGER, 0) + int(n)
        if n:
            self.sink.command(
                f"ALTER TABLE {self._local(LEDGER)}{on_cluster} UPDATE visitor_id = '', user_agent = '', "
                f"ip = toIPv6('{_ZERO_IP}') WHERE {ledger_pred} SETTINGS mutations_sync = 2")

    def _rolled_days(self, table: str, pred: str) -> list[str]:
        """The days of the subject's statistics rows when the dashboard keeps daily counts
        (`consentmw.store.rollup`): their counts are dropped with the rows."""
        if table != ROLLUP_SOURCE or self.schema.cluster or not self.sink.command(
                f"EXISTS TABLE {self.db}.{ROLLUP}"):
            return []
        rows = self._q(f"SELECT DISTINCT toString(toDate(ts)) FROM {self.db}.{table} WHERE {pred}").result_rows
        return sorted(r[0] for r in rows)

    def _left(self, subject: Subject, dirty: str) -> dict[str, int]:
        """Verify: what of the subject is still in any linkable table (empty: nothing)."""
        left: dict[str, int] = {}
        for table, cols in self.tables().items():
            pred = dirty if table == LEDGER else self._predicate(subject, cols)
            if pred is None:
                continue
            remaining = int(self._q(f"SELECT count() FROM {self.db}.{table} WHERE {pred}").result_rows[0][0])
            if remaining:
                left[table] = remaining
        return left

    # -- block ----------------------------------------------------------------
    def block_subjects(self, subject: Subject) -> set[str]:
        """What to list as blocked: the ids, plus the subject's statistics day tokens."""
        subjects = set(subject.ids())
        if self.proof is not None and subject.consent_ids:
            pred = _in("consent_id", subject.consent_ids)
            first = self._q(f"SELECT min(ts) FROM {self.db}.{LEDGER} WHERE {pred}").result_rows[0][0]
            now = time.time()
            longest = max((p.retention_days for p in self.unlinkable.values()), default=0)
            start = now - longest * 86400
            if first is not None and first.year > 1970:
                first_ts = first.replace(tzinfo=dt.timezone.utc).timestamp()
                start = max(start, first_ts)
            else:
                start = now
            day = int(start // 86400)
            while day <= int(now // 86400):
                for cid in subject.consent_ids:
                    subjects.add(self.proof(cid, day * 86400 + 1))
                day += 1
        return subjects

    def set_blocked(self, subject: Subject, blocked: bool) -> int:
        if subject.empty:
            raise ValueError("nothing identifies this visitor: no consent id or visitor id")
        subjects = self.block_subjects(subject)
        now = dt.datetime.now(dt.timezone.utc)
        rows = [[s, 1 if blocked else 0, now] for s in sorted(subjects)]
        self.sink.client().insert(f"{self.db}.blocked_visitors", rows, column_names=["subject", "blocked", "ts"])
        self.blocklist._apply(subjects, blocked)
        return len(subjects)
