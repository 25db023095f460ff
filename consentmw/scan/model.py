"""What a scan records and concludes: plain dataclasses, no I/O, JSON-ready via `asdict`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: The three ways every page is visited, in report order.
MODES: tuple[str, ...] = ("none", "reject", "accept")
MODE_LABELS: dict[str, str] = {"none": "no choice yet", "reject": "after Reject all", "accept": "after Accept all"}

#: Severities, most serious first. `expected` lists what a visitor allowed by accepting.
SEVERITIES: tuple[str, ...] = ("violation", "warning", "expected")


@dataclass
class CookieSet:
    """One cookie a page set (or tried to set) during an observation."""

    name: str
    domain: str            # without a leading dot
    party: str             # "first" | "third"
    lifetime: int | None   # seconds; None for a session cookie
    via: str               # "header" (Set-Cookie) | "script" (document.cookie / cookieStore) | "jar"
    source: str            # which request or script set it, in words
    stored: bool = True    # False when the browser refused it (e.g. SameSite rules)


@dataclass
class StorageKey:
    """A localStorage / sessionStorage key or an IndexedDB database a page created."""

    kind: str      # "localStorage" | "sessionStorage" | "indexedDB"
    origin: str
    key: str
    source: str = ""


@dataclass
class Request:
    """A request to another origin than the scanned site's."""

    url: str
    host: str
    resource: str    # Chromium's resource type: script, image, document, fetch, ...
    initiator: str   # where it came from, in words


@dataclass
class GatedScript:
    """A `<script data-consent="...">`: declared (type text/plain) or run."""

    purposes: tuple[str, ...]
    script: str      # its src, or "inline: <first characters>"
    ran: bool


@dataclass
class Banner:
    """Whether the consentmw banner was there and did what a visitor asked."""

    consentmw: bool = False       # the consentmw banner script is on the page
    shown: bool = False           # its first layer appeared
    clicked: str = ""             # "reject" | "accept" | ""
    working: bool | None = None   # the choice was recorded, the banner closed and stayed closed
    granted: tuple[str, ...] = ()  # purposes the recorded choice grants
    detail: str = ""


@dataclass
class Observation:
    """One page in one fresh browser context, in one mode."""

    mode: str
    url: str
    final_url: str = ""
    status: int | None = None
    is_page: bool = True          # an HTML document (only those are expected to show the banner)
    error: str = ""
    skipped: str = ""             # why this mode was not run
    banner: Banner = field(default_factory=Banner)
    cookies: list[CookieSet] = field(default_factory=list)
    storage: list[StorageKey] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    gated: list[GatedScript] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Finding:
    """One conclusion about one page: what, in which mode, where it came from, what it is."""

    severity: str     # "violation" | "warning" | "expected"
    kind: str         # cookie | storage | request | gated_script | no_banner | banner_broken | gated_not_run
    mode: str
    page: str
    thing: str
    source: str = ""
    known_as: str = ""   # the tracker list's name for it, if any
    purpose: str = ""    # the purpose it belongs to (for expected findings), if known


@dataclass
class PageResult:
    url: str
    depth: int
    observations: dict[str, Observation]
    findings: list[Finding] = field(default_factory=list)


@dataclass
class ScanResult:
    start_url: str
    origin: str
    pages: list[PageResult]
    seconds: float
    stopped: str = ""              # why the crawl stopped before visiting every page found
    browser: str = ""
    policy_version: str = ""

    @property
    def findings(self) -> list[Finding]:
        return [f for p in self.pages for f in p.findings]

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def consentmw_banner(self) -> bool:
        """True when any page carried the consentmw banner."""
        return any(o.banner.consentmw for p in self.pages for o in p.observations.values())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = {s: self.count(s) for s in SEVERITIES}
        data["summary"]["pages"] = len(self.pages)
        data["consentmw_banner"] = self.consentmw_banner
        return data
