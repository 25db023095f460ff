"""Proving the lawful basis of one stored row: which consent record authorised it.

Rows of purposes that keep a stable id carry the consent id itself. Rows of purposes that
must not be linkable across days (statistics) carry a day-scoped HMAC of it; with the
signing secret(s) and the ledger, the operator recomputes that token for every consent
recorded up to that day and finds the one that matches. Either way the answer is the
ledger's latest choice for that consent at the row's time, and whether it granted the
row's purpose under the row's policy version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from consentmw.collect.enrich import proof_key, proof_token
from consentmw.core.fields import table_for
from consentmw.core.identifiers import check_identifier
from consentmw.store.sink import ClickHouseSink


@dataclass
class Proof:
    table: str
    event_id: str
    row_ts_ms: int
    policy_version: str
    consent_id: str | None          # None: no recorded consent produces this row's token
    record: dict[str, Any] | None   # the ledger's latest choice at the row's time
    purpose: str
    granted: bool                   # that choice granted the purpose, under the same policy version

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def prove(sink: ClickHouseSink, secrets: Sequence[str], table: str, event_id: str) -> Proof:
    """Find the consent behind one row of `events_<purpose>`; raises LookupError if no such row."""
    tables = {table_for(p.id): p.id for p in sink.schema.policy.collecting}
    check_identifier(table, "table")
    if table not in tables:
        raise ValueError(f"table {table!r} is not one of the policy's event tables ({', '.join(sorted(tables))})")
    purpose = tables[table]
    db = sink.database
    found = sink.query(f"SELECT consent_id, toUnixTimestamp64Milli(ts), policy_version "
                       f"FROM {db}.{table} WHERE event_id = toUUIDOrZero(%(e)s) LIMIT 1", parameters={"e": event_id})
    if not found.result_rows:
        raise LookupError(f"no row with event_id {event_id} in {db}.{table}")
    stored, ts_ms, version = found.result_rows[0]
    day = int(ts_ms) // 86_400_000
    before = f"toUnixTimestamp64Milli(ts) <= {int(ts_ms)}"
    candidates = [r[0] for r in sink.query(
        f"SELECT DISTINCT consent_id FROM {db}.consent_log WHERE {before}").result_rows]
    consent_id = stored if stored in candidates else None
    if consent_id is None:
        keys = [proof_key(s) for s in secrets]
        consent_id = next((cid for cid in candidates for key in keys if proof_token(key, cid, day) == stored),
                          None)
    record = None
    if consent_id is not None:
        latest = sink.query(
            f"SELECT * FROM {db}.consent_log WHERE consent_id = %(c)s AND {before} ORDER BY ts DESC LIMIT 1",
            parameters={"c": consent_id})
        if latest.result_rows:
            record = dict(zip(latest.column_names, latest.result_rows[0]))
    granted = bool(record and purpose in record["granted"] and record["policy_version"] == version)
    return Proof(table, event_id, int(ts_ms), version, consent_id, record, purpose, granted)
