"""The consent ledger record: the append-only proof of every choice a visitor made."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import uuid


ACTION_GRANT = "grant"          # first choice from this browser
ACTION_CHANGE = "change"        # a later, different or repeated choice
ACTION_WITHDRAW = "withdraw"    # every optional purpose withdrawn at once
ACTION_ERASE = "erase"          # the visitor's data erased; the consent ended with it


def erasure_proof(record: "ConsentRecord") -> "ConsentRecord":
    """The ledger row for an erasure keeps only what proves it happened: which consent, when,
    under which policy, on which site. No address, user agent, visitor id or page, and no
    purposes (the consent ended: it grants nothing)."""
    return replace(record, action=ACTION_ERASE, granted=[], denied=[], page="", peer_ip="",
                   forwarded_for="", user_agent="", visitor_id=None)


@dataclass(slots=True)
class ConsentRecord:
    """One row of `consent_log`. Holds a masked IP only; never a raw one."""

    consent_id: str
    ts: float
    action: str
    policy_version: str
    granted: list[str]
    denied: list[str]
    source: str                 # banner | gpc | api | admin
    gpc: bool
    language: str
    texts_hash: str
    page: str
    peer_ip: str
    forwarded_for: str
    user_agent: str
    site: str
    visitor_id: str | None = None
    record_id: str = field(default_factory=lambda: str(uuid.uuid4()))
