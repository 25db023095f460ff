"""From what a page did to findings: violations, warnings, and what Accept allowed.

Before a choice and after Reject all, a page may only do what the policy's required
purposes declare (their `cookies`, `storage` and `hosts`), plus consentmw's own consent
cookie and the security cookies the tracker list marks necessary. Anything else there is
a violation. What appears only after Accept all is expected, listed under the purpose that
explains it: the gated script that loaded it, the purpose that declares it, or what the
tracker list says it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from consentmw.core.policy import Policy
from consentmw.scan.cookies import describe_lifetime
from consentmw.scan.model import MODE_LABELS, CookieSet, Finding, Observation, PageResult, Request, StorageKey
from consentmw.scan.trackers import TrackerList, bundled, host_matches
from consentmw.scan.visit import CONSENT_COOKIES

UNATTRIBUTED = "unattributed"


@dataclass
class Rules:
    """What each purpose declares, and what is necessary."""

    required: frozenset[str] = frozenset({"necessary"})
    cookies: dict[str, tuple[str, ...]] = field(default_factory=dict)   # purpose -> patterns
    storage: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hosts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    trackers: TrackerList = field(default_factory=bundled)

    @classmethod
    def from_policy(cls, policy: Policy, trackers: TrackerList | None = None) -> "Rules":
        return cls(required=policy.required_ids,
                   cookies={p.id: p.cookies for p in policy.purposes},
                   storage={p.id: p.storage for p in policy.purposes},
                   hosts={p.id: p.hosts for p in policy.purposes},
                   trackers=trackers or bundled())

    # -- which purpose declares a thing ---------------------------------------------
    def cookie_purpose(self, name: str) -> str:
        if name in CONSENT_COOKIES:
            return next(iter(sorted(self.required)), "necessary")
        for purpose, patterns in self.cookies.items():
            if any(fnmatchcase(name, p) for p in patterns):
                return purpose
        return ""

    def storage_purpose(self, key: str) -> str:
        for purpose, patterns in self.storage.items():
            if any(fnmatchcase(key, p) for p in patterns):
                return purpose
        return ""

    def host_purpose(self, host: str) -> str:
        for purpose, patterns in self.hosts.items():
            if any(host_matches(host, p) or fnmatchcase(host, p) for p in patterns):
                return purpose
        return ""

    def necessary_cookie(self, name: str) -> bool:
        if self.cookie_purpose(name) in self.required:
            return True
        known = self.trackers.by_cookie(name)
        return bool(known and known.purpose == "necessary")


def _cookie_thing(c: CookieSet) -> str:
    blocked = "" if c.stored else ", refused by the browser"
    return f"cookie {c.name} ({c.domain}, {c.party}-party, {describe_lifetime(c.lifetime)}{blocked})"


def _request_thing(r: Request) -> str:
    return f"request to {r.host} ({r.resource}: {r.url[:160]})"


def _storage_thing(s: StorageKey) -> str:
    return f"{s.kind} {s.key!r} ({s.origin})"


def _gated_purpose(obs: Observation, source: str, url: str = "") -> str:
    """The purposes of the gated script a request or script write came from, if any."""
    for g in obs.gated:
        if g.ran and g.script and not g.script.startswith("inline: ") and (g.script == url or g.script in source):
            return " ".join(g.purposes)
    return ""


def classify(page: PageResult, rules: Rules) -> list[Finding]:
    """Every finding for one page, from its observations in the three modes."""
    out: list[Finding] = []
    obs = page.observations
    none = obs.get("none")
    if none is None or none.error or not none.is_page:
        return out
    for mode in ("none", "reject"):
        o = obs.get(mode)
        if o is None or o.error or o.skipped or not o.is_page:
            continue
        out.extend(_restricted(page.url, o, rules))
    out.extend(_banner(page.url, obs))
    accept = obs.get("accept")
    if accept is not None and not accept.error and not accept.skipped and accept.is_page:
        out.extend(_accepted(page.url, accept, [o for m, o in obs.items() if m != "accept"], rules))
    return out


def _restricted(url: str, o: Observation, rules: Rules) -> list[Finding]:
    """Before a choice, or after refusal: only what required purposes declare."""
    out = []
    granted = set(rules.required)
    for c in o.cookies:
        if rules.necessary_cookie(c.name):
            continue
        known = rules.trackers.by_cookie(c.name)
        out.append(Finding("violation", "cookie", o.mode, url, _cookie_thing(c), c.source,
                           known.name if known else "", rules.cookie_purpose(c.name)))
    for s in o.storage:
        if rules.storage_purpose(s.key) in rules.required:
            continue
        out.append(Finding("violation", "storage", o.mode, url, _storage_thing(s), s.source or "found after the page settled"))
    by_host: dict[str, list[Request]] = {}
    for r in o.requests:
        if rules.host_purpose(r.host) not in rules.required:
            by_host.setdefault(r.host, []).append(r)
    for host, reqs in by_host.items():
        known = rules.trackers.by_host(host)
        more = f" and {len(reqs) - 1} more request(s) to this host" if len(reqs) > 1 else ""
        out.append(Finding("violation", "request", o.mode, url, _request_thing(reqs[0]) + more, reqs[0].initiator,
                           known.name if known else "", rules.host_purpose(host)))
    for g in o.gated:
        if g.ran and not set(g.purposes) <= granted:
            out.append(Finding("violation", "gated_script", o.mode, url,
                               f"consent-gated script ran without consent to {', '.join(g.purposes)}: {g.script}",
                               "a <script data-consent> that is executable (type is not text/plain), "
                               "or was made so without the visitor's consent"))
    return out


def _banner(url: str, obs: dict[str, Observation]) -> list[Finding]:
    out = []
    none = obs["none"]
    if not none.banner.consentmw:
        out.append(Finding("warning", "no_banner", "none", url, "no consentmw banner on this page",
                           "add <script src=\"/_consent/banner.js\" defer></script> to the page"))
    elif not none.banner.shown:
        out.append(Finding("violation", "banner_broken", "none", url, "the consentmw banner did not appear",
                           none.banner.detail))
    for mode in ("reject", "accept"):
        o = obs.get(mode)
        if o is not None and not o.error and o.banner.working is False:
            out.append(Finding("violation", "banner_broken", mode, url,
                               f"{MODE_LABELS[mode].replace('after ', '')} in the banner did not work", o.banner.detail))
    return out


def _accepted(url: str, o: Observation, others: list[Observation], rules: Rules) -> list[Finding]:
    """What appears only after Accept all: expected, named by purpose."""
    out: list[Finding] = []
    hosts_before = {r.host for x in others for r in x.requests}
    cookies_before = {(c.name, c.domain) for x in others for c in x.cookies}
    by_host: dict[str, list[Request]] = {}
    for r in o.requests:
        if r.host not in hosts_before:
            by_host.setdefault(r.host, []).append(r)
    for host, reqs in by_host.items():
        known = rules.trackers.by_host(host)
        purpose = (next((p for r in reqs if (p := _gated_purpose(o, r.initiator, r.url))), "")
                   or rules.host_purpose(host) or (known.purpose if known else "") or UNATTRIBUTED)
        out.append(Finding("expected", "request", "accept", url, f"third-party host {host} ({len(reqs)} request(s))",
                           reqs[0].initiator, known.name if known else "", purpose))
    for c in o.cookies:
        if (c.name, c.domain) in cookies_before or c.name in CONSENT_COOKIES:
            continue
        known = rules.trackers.by_cookie(c.name)
        purpose = (_gated_purpose(o, c.source) or rules.cookie_purpose(c.name)
                   or (known.purpose if known else "") or UNATTRIBUTED)
        out.append(Finding("expected", "cookie", "accept", url, _cookie_thing(c), c.source,
                           known.name if known else "", purpose))
    for g in o.gated:
        if g.ran:
            out.append(Finding("expected", "gated_script", "accept", url, f"gated script ran: {g.script}",
                               "the banner, after Accept all", "", " ".join(g.purposes)))
        else:
            out.append(Finding("warning", "gated_not_run", "accept", url,
                               f"gated script did not run after Accept all: {g.script}",
                               f"needs {', '.join(g.purposes)}: is that purpose in the policy?", "",
                               " ".join(g.purposes)))
    return out
