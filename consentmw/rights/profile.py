"""The visitor profile used for personalisation.

Read from the `visitor_profile` aggregate (fed by a materialized view from the
personalisation table), one primary-key look-up per visitor, cached for a few seconds.
`None` unless the visitor granted personalisation (after GPC) and holds a visitor id,
and `None` while the visitor has blocked processing.

In a handler::

    profile = await request.state.consent_profile()        # or: await get_profile(request)
    if profile:
        recommended = [p for p in catalogue if section_of(p) in profile.top_sections_names]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from consentmw.collect.hit import Hit
from consentmw.core.redact import redact
from consentmw.store.views import PROFILE_READ, PROFILE_TABLE, profile_purpose

log = logging.getLogger("consentmw.profile")

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request

    from consentmw.core.consent import ConsentState
    from consentmw.core.policy import Policy
    from consentmw.rights.blocklist import Blocklist
    from consentmw.store.sink import ClickHouseSink

RECENT = 10
#: Page views a visitor made that may not be stored yet, remembered per visitor (bounded).
PENDING = 20
#: Python's own cost of one pending note (tuple, int, deque slot), roughly
_PENDING_OVERHEAD = 100
#: notes are sorted into visitors this many at a time (or before a profile is read)
_FOLD_EVERY = 256
_SECTION = re.compile(r"^/[^/?#]*")


@dataclass(frozen=True)
class Profile:
    visitor_id: str
    site: str = ""
    first_seen: dt.datetime | None = None
    last_seen: dt.datetime | None = None
    visits: int = 0                       # distinct days (UTC) with at least one page view
    pageviews: int = 0
    recent_pages: tuple[str, ...] = ()    # most recent first
    top_pages: tuple[tuple[str, int], ...] = ()       # most viewed first (path, views)
    recent_sections: tuple[str, ...] = ()  # first path segment, e.g. "/articles"
    top_sections: tuple[tuple[str, int], ...] = ()
    language: str = ""
    country: str = ""
    city: str = ""
    device: str = ""
    first_source: str = ""                # where the first visit came from (campaign, referrer)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def returning(self) -> bool:
        return self.visits > 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        for key in ("first_seen", "last_seen"):
            if data[key] is not None:
                data[key] = data[key].isoformat().replace("+00:00", "Z")
        data["top_pages"] = [list(p) for p in self.top_pages]
        data["top_sections"] = [list(s) for s in self.top_sections]
        return data


def _utc(value: Any) -> dt.datetime | None:
    if not isinstance(value, dt.datetime) or value.year <= 1970:
        return None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


def _recent(last: dict[str, int], since_ms: int) -> tuple[str, ...]:
    items = sorted(((ts, key) for key, ts in last.items() if ts >= since_ms and key), reverse=True)
    return tuple(key for _, key in items[:RECENT])


def _top(counts: dict[str, int], keep: set[str]) -> tuple[tuple[str, int], ...]:
    items = sorted(((-n, key) for key, n in counts.items() if key in keep), key=lambda x: (x[0], x[1]))
    return tuple((key, -n) for n, key in items[:RECENT])


#: the fields of a noted page view the fold reads, in one C call per view
_NOTED_FIELDS = itemgetter(*(Hit._fields.index(name) for name in ("ts", "path", "purposes", "visitor_id", "status")))


class ProfileService:
    """Loads and caches profiles. `get(state)` is the coroutine behind `consent_profile()`."""

    def __init__(self, sink: "ClickHouseSink", policy: "Policy", blocklist: "Blocklist", *,
                 ttl: float = 5.0, max_entries: int = 10_000, max_bytes: int = 16 << 20) -> None:
        self.sink = sink
        self.purpose = profile_purpose(policy)
        self.blocklist = blocklist
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, Profile]] = {}  # visitor id -> (loaded at, profile)
        # visitor id -> (ms since epoch, path) of their page views as queued, newest last: a
        # visitor sees their own latest views at once, not after the writer and the cache.
        self._pending: dict[str, deque[tuple[int, str]]] = {}
        #: page views noted but not yet sorted into `_pending` (at most _FOLD_EVERY)
        self._noted: list[Hit] = []
        self.max_pending_bytes = max_bytes // 4
        self._pending_bytes = 0
        #: the cache is bounded in bytes too: a profile holds up to ~40 paths of up to 1 KB
        self.max_bytes = max_bytes
        self._bytes = 0
        self.loads = 0

    def forget(self, visitor_id: str | None) -> None:
        if visitor_id:
            self._fold()
            self._drop(visitor_id)
            self._forget_pending(visitor_id)

    def clear(self) -> None:
        self._noted = []
        self._cache.clear()
        self._pending.clear()
        self._bytes = self._pending_bytes = 0

    def note(self, hit: Hit) -> None:
        """A page view was queued (`Collector.on_visitor_view`, event loop): remember it for
        the visitor's profile until the stored aggregate holds it. Per page only an append:
        the notes are sorted into visitors in batches, before any profile is read."""
        noted = self._noted
        noted.append(hit)
        if len(noted) >= _FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        """Sort the page views noted since the last fold into the visitors' pending lists.

        Runs on the event loop for every page of a visitor with an id, so it is one tight
        loop over the notes (their fields taken by one C call each) and the bounds are
        enforced once per fold, not once per view."""
        noted = self._noted
        self._noted = []
        purpose = self.purpose
        if purpose is None:
            return
        pid = purpose.id
        pending_of = self._pending
        added = 0
        for ts, path, purposes, visitor, status in map(_NOTED_FIELDS, noted):
            if (not visitor or pid not in purposes or not path
                    # served pages only: the views' rule (`consentmw.store.views.successful`)
                    or not (status == 0 or 200 <= status < 300 or status == 304)):
                continue
            pending = pending_of.get(visitor)
            if pending is None:
                pending = pending_of[visitor] = deque(maxlen=PENDING)
            elif len(pending) == PENDING:
                added -= len(pending[0][1]) + _PENDING_OVERHEAD  # about to fall out
            if len(path) > 1024:
                path = path[:1024]
            pending.append((int(ts * 1000), path))
            added += len(path) + _PENDING_OVERHEAD
        self._pending_bytes += added
        # Bounded in visitors and in bytes: the oldest visitors' notes go first.
        while len(pending_of) > self.max_entries or self._pending_bytes > self.max_pending_bytes:
            self._forget_pending(next(iter(pending_of)))

    def _forget_pending(self, visitor_id: str) -> None:
        dropped = self._pending.pop(visitor_id, None)
        if dropped:
            self._pending_bytes -= sum(len(p) + _PENDING_OVERHEAD for _, p in dropped)

    def _merged(self, profile: Profile) -> Profile:
        """The stored profile plus the visitor's page views not stored in it yet."""
        if self._noted:
            self._fold()
        pending = self._pending.get(profile.visitor_id)
        if not pending:
            return profile
        stored_until = int(profile.last_seen.timestamp() * 1000) if profile.last_seen else 0
        while pending and pending[0][0] <= stored_until:  # written since: the aggregate has them
            self._pending_bytes -= len(pending.popleft()[1]) + _PENDING_OVERHEAD
        if not pending:
            self._pending.pop(profile.visitor_id, None)
            return profile
        pages = dict(profile.top_pages)
        sections = dict(profile.top_sections)
        recent = list(profile.recent_pages)
        recent_sections = list(profile.recent_sections)
        days = {profile.last_seen.date()} if profile.last_seen else set()
        for ms, path in pending:
            section = m.group(0) if (m := _SECTION.match(path)) else ""
            pages[path] = pages.get(path, 0) + 1
            sections[section] = sections.get(section, 0) + 1
            recent = [path] + [p for p in recent if p != path]
            recent_sections = [section] + [s for s in recent_sections if s != section]
            days.add(dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).date())
        first_ms, last_ms = pending[0][0], pending[-1][0]
        return replace(
            profile, pageviews=profile.pageviews + len(pending),
            visits=profile.visits + len(days) - (1 if profile.last_seen else 0),
            first_seen=profile.first_seen or dt.datetime.fromtimestamp(first_ms / 1000, dt.timezone.utc),
            last_seen=dt.datetime.fromtimestamp(last_ms / 1000, dt.timezone.utc),
            recent_pages=tuple(recent[:RECENT]), recent_sections=tuple(recent_sections[:RECENT]),
            top_pages=_top(pages, set(pages)), top_sections=_top(sections, set(sections)))

    async def get(self, state: "ConsentState | None") -> Profile | None:
        purpose = self.purpose
        if purpose is None or state is None or not state.visitor_id or purpose.id not in state.granted:
            return None
        vid = state.visitor_id
        blocklist = self.blocklist
        if blocklist.stale:
            await asyncio.to_thread(blocklist.refresh)
        if blocklist.any_blocked((state.id, vid), refresh=False):
            return None
        now = time.monotonic()
        hit = self._cache.get(vid)
        if hit is not None and now - hit[0] < self.ttl:
            return self._merged(hit[1])
        try:
            profile = await asyncio.to_thread(self.load, vid)
        except Exception as exc:  # noqa: BLE001 - a profile is an extra: no store, no profile
            log.warning("consentmw: profile unavailable (%s)",
                        redact(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__))
            return None
        size = _footprint(profile)
        if len(self._cache) >= self.max_entries or self._bytes + size > self.max_bytes:
            expired = [k for k, (at, _) in self._cache.items() if now - at >= self.ttl]
            for key in expired or list(self._cache)[: max(1, len(self._cache) // 2)]:
                self._drop(key)
        old = self._cache.pop(vid, None)
        if old is not None:
            self._bytes -= _footprint(old[1])
        self._cache[vid] = (time.monotonic(), profile)
        self._bytes += size
        return self._merged(profile)

    def _drop(self, key: str) -> None:
        found = self._cache.pop(key, None)
        if found is not None:
            self._bytes -= _footprint(found[1])

    def load(self, visitor_id: str) -> Profile:
        """One query on the aggregate (no cache)."""
        self.loads += 1
        cols = ", ".join(f"{expr} AS {name}" for name, expr in PROFILE_READ.items())
        result = self.sink.query(
            f"SELECT {cols} FROM {self.sink.database}.{PROFILE_TABLE} "
            "WHERE visitor_id = %(v)s GROUP BY visitor_id", parameters={"v": visitor_id})
        if not result.result_rows:
            return Profile(visitor_id)
        row = dict(zip(result.column_names, result.result_rows[0]))
        assert self.purpose is not None
        since = int((time.time() - self.purpose.retention_days * 86400) * 1000)
        recent_pages = _recent(row["page_last"], since)
        recent_sections = _recent(row["section_last"], since)
        live_pages = {k for k, ts in row["page_last"].items() if ts >= since}
        live_sections = {k for k, ts in row["section_last"].items() if ts >= since}
        return Profile(
            visitor_id=visitor_id, site=row["site"], first_seen=_utc(row["first_seen"]),
            last_seen=_utc(row["last_seen"]), visits=int(row["visits"]), pageviews=int(row["pageviews"]),
            recent_pages=recent_pages, top_pages=_top(row["pages"], live_pages),
            recent_sections=recent_sections, top_sections=_top(row["sections"], live_sections),
            language=row["language"], country=row["country"], city=row["city"], device=row["device"],
            first_source=row["first_source"],
        )


def _footprint(profile: Profile) -> int:
    """Roughly the bytes a cached profile holds (its text; fixed overhead per entry)."""
    text = sum(len(p) for p in profile.recent_pages) + sum(len(p) for p, _ in profile.top_pages)
    text += sum(len(p) for p in profile.recent_sections) + sum(len(p) for p, _ in profile.top_sections)
    return 512 + text + len(profile.site) + len(profile.first_source)


async def get_profile(request: "Request") -> Profile | None:
    """The current visitor's profile, or None (not granted, no visitor id, blocked).

    The same as `await request.state.consent_profile()`, for frameworks without
    `request.state` (Django) and for visitors who have none (it then returns None).
    """
    state = request.scope.get("state") or {}
    if "consent" not in state:
        raise RuntimeError("ConsentMiddleware is not mounted in front of this app")
    bound = state.get("consent_profile")
    return await bound() if bound is not None else None
