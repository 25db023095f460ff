"""The visitor's rights as domain logic (no HTTP): export, block, erase, the profile, proofs."""

from consentmw.rights.blocklist import Blocklist
from consentmw.rights.service import Rights, RightsError, Subject, valid_id

__all__ = ["Blocklist", "Rights", "RightsError", "Subject", "valid_id"]
