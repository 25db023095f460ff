"""Which pages to visit: same-origin links, breadth first, within the page and path bounds.

Pure logic (no browser): the visitor hands back each page's links, the frontier decides.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from urllib.parse import urldefrag, urlsplit

# Links to these are files, not pages: never queued (the browser would download them).
FILE_EXTENSIONS = frozenset(
    ".pdf .zip .gz .tgz .bz2 .xz .7z .rar .tar .png .jpg .jpeg .gif .webp .avif .svg .ico .bmp .tif .tiff "
    ".mp3 .mp4 .m4a .m4v .mov .avi .webm .ogg .wav .flac .doc .docx .xls .xlsx .ppt .pptx .odt .ods .csv "
    ".json .xml .txt .css .js .mjs .map .woff .woff2 .ttf .otf .eot .exe .dmg .apk .iso .bin".split())


class URLError(ValueError):
    """The URL to scan is not an absolute http(s) URL."""


def origin_of(url: str) -> str:
    """`https://Example.com:443/a` -> `https://example.com` (default ports dropped)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


def start_url(url: str) -> str:
    """Check and normalise the URL a scan starts from."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise URLError(f"not an http(s) URL: {url[:200]!r} (give e.g. https://example.com/)")
    try:
        parts.port
    except ValueError:
        raise URLError(f"bad port in {url[:200]!r}") from None
    return normalise(url) or url


def normalise(url: str) -> str | None:
    """Drop the fragment; an empty path becomes `/`. None for what is not http(s)."""
    url = urldefrag(url)[0]
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return f"{origin_of(url)}{path}{query}"


def site_of(host: str) -> str:
    """The registrable part of a host name, approximately (no public-suffix list is bundled):
    the last two labels, or three under a two-letter country code with a short second level
    (`shop.example.co.uk` -> `example.co.uk`). IP addresses and single labels are their own site."""
    host = host.lower().strip(".").strip("[]")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host.split(".")
    if len(labels) <= 2:
        return host
    if len(labels[-1]) == 2 and len(labels[-2]) <= 3:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def party(cookie_domain: str, site_host: str) -> str:
    """"first" when a cookie's domain belongs to the scanned site's registrable domain."""
    return "first" if site_of(cookie_domain) == site_of(site_host) else "third"


@dataclass
class PathFilter:
    """--include / --exclude glob patterns on the path (and query) of a URL."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def allows(self, url: str) -> bool:
        parts = urlsplit(url)
        path = parts.path or "/"
        targets = (path, f"{path}?{parts.query}") if parts.query else (path,)
        if self.include and not any(fnmatchcase(t, p) for p in self.include for t in targets):
            return False
        return not any(fnmatchcase(t, p) for p in self.exclude for t in targets)


@dataclass
class Frontier:
    """Breadth-first queue of same-origin pages, at most `max_pages` admitted in all."""

    start: str
    max_pages: int
    filter: PathFilter = field(default_factory=PathFilter)
    origin: str = ""
    seen: dict[str, None] = field(default_factory=dict)   # insertion-ordered
    queue: deque[tuple[str, int]] = field(default_factory=deque)
    skipped: int = 0    # links left out because max_pages was reached

    def __post_init__(self) -> None:
        self.origin = origin_of(self.start)
        # the start page is always visited, whatever the filters say
        self.seen[self.start] = None
        self.queue.append((self.start, 0))

    def offer(self, links: list[str], depth: int) -> int:
        """Queue the new, allowed, same-origin links found at `depth`; returns how many."""
        added = 0
        for link in links:
            url = normalise(link)
            if url is None or url in self.seen or origin_of(url) != self.origin:
                continue
            path = urlsplit(url).path.lower()
            if any(path.endswith(ext) for ext in FILE_EXTENSIONS) or not self.filter.allows(url):
                continue
            if len(self.seen) >= self.max_pages:
                self.skipped += 1
                self.seen[url] = None   # counted once
                continue
            self.seen[url] = None
            self.queue.append((url, depth + 1))
            added += 1
        return added

    @property
    def admitted(self) -> int:
        return len(self.seen) - self.skipped

    def pop(self) -> tuple[str, int] | None:
        return self.queue.popleft() if self.queue else None
