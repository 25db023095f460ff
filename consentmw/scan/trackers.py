"""The bundled list of well-known trackers (`trackers.toml`): names what a host or cookie is."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class Tracker:
    name: str
    vendor: str
    category: str
    purpose: str
    hosts: tuple[str, ...]
    cookies: tuple[str, ...]
    source: str


def host_matches(host: str, suffix: str) -> bool:
    """`www.google-analytics.com` matches `google-analytics.com`; `evilgoogle-analytics.com` does not."""
    host, suffix = host.lower().rstrip("."), suffix.lower().lstrip(".")
    return host == suffix or host.endswith("." + suffix)


class TrackerList:
    """Look-ups by host (label-wise suffix) and by cookie name (glob)."""

    def __init__(self, trackers: tuple[Tracker, ...]) -> None:
        self.trackers = trackers

    def by_host(self, host: str) -> Tracker | None:
        best: tuple[int, Tracker] | None = None
        for t in self.trackers:
            for h in t.hosts:
                if host_matches(host, h) and (best is None or len(h) > best[0]):
                    best = (len(h), t)
        return best[1] if best else None

    def by_cookie(self, name: str) -> Tracker | None:
        for t in self.trackers:
            if any(fnmatchcase(name, pattern) for pattern in t.cookies):
                return t
        return None


def parse(text: str) -> TrackerList:
    data = tomllib.loads(text)
    out = []
    for i, raw in enumerate(data.get("tracker", [])):
        try:
            out.append(Tracker(name=raw["name"], vendor=raw["vendor"], category=raw["category"],
                               purpose=raw["purpose"], hosts=tuple(raw.get("hosts", ())),
                               cookies=tuple(raw.get("cookies", ())), source=raw["source"]))
        except KeyError as exc:
            raise ValueError(f"trackers.toml: tracker[{i}] lacks {exc.args[0]!r}") from None
    return TrackerList(tuple(out))


@lru_cache(maxsize=1)
def bundled() -> TrackerList:
    """The list shipped with consentmw."""
    return parse(resources.files("consentmw.scan").joinpath("trackers.toml").read_text("utf-8"))
