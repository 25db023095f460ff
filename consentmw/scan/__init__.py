"""`consentmw scan`: checks a whole site in headless Chromium before a choice, after Reject
all and after Accept all. Needs the `consentmw[scan]` extra (Playwright)."""

from consentmw.scan.model import MODE_LABELS, MODES, Finding, Observation, PageResult, ScanResult

__all__ = ["MODES", "MODE_LABELS", "Finding", "Observation", "PageResult", "ScanResult"]
