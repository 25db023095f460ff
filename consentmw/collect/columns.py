"""How each stored column is computed, for one purpose's table, over its selected hits.

The minimiser decides which hits a table gets and which columns it holds; this module
only computes the columns it is asked for, as Arrow arrays. Related columns are built
together (all five browser columns from one user-agent parse, all three place columns
from one GeoIP look-up), each at most once per table and batch, and only when the
purpose holds one of them. Python-level work (parsing, look-ups, hashing) runs once per
distinct value in the batch (see `columnar`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from consentmw.core.arrow import arrow_type, map_array
from consentmw.core.fields import BY_NAME
from consentmw.core.hosts import host_name
from consentmw.core.policy import Purpose
from consentmw.collect.columnar import Selection, encode, fill, group, mask_of, spread, uuid4_array, where
from consentmw.collect.enrich import Enricher, language_tag
from consentmw.collect.hit import CLICK_ID_PARAMS

STRING = pa.string()
_TIMESTAMP = pa.timestamp("ms", tz="UTC")
#: beacon payload key of each timing column (a server-side hit has no payload)
_TIMING_KEYS = {"ttfb": "ttfb", "dom_interactive": "dom_interactive", "dom_complete": "dom_complete",
                "load_ms": "load", "fcp": "fcp", "lcp": "lcp", "inp": "inp", "cls": "cls"}
_CLICK_KEYS = {"link_host": "link_host", "link_path": "link_path", "event_name": "name"}
#: `HitColumns.shared` key: (each row's number in the list, the parsed user agents)
AGENTS = "agents"
_UTM = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


def site_name(host: str) -> str:
    """The site a hit belongs to: its Host as a valid name without port, lower-case ("" if invalid)."""
    return host_name(host)


def _click_id_type(campaign: dict[str, str]) -> str:
    return next((k for k in campaign if k in CLICK_ID_PARAMS), "")


def _utm(campaign: dict[str, str], name: str) -> str:
    if name == "utm_source":  # `?ref=` is the other common way to tag a source
        return campaign.get("utm_source") or campaign.get("ref", "")
    return campaign.get(name, "")


class TableColumns:
    """The columns of one purpose's table over the hits selected for it."""

    def __init__(self, rows: Selection, purpose: Purpose, enricher: Enricher,
                 pause: Callable[[], None] = lambda: None) -> None:
        self.rows = rows
        self.purpose = purpose
        self.enricher = enricher
        #: the writer's GIL yield point, also called inside the columns built together
        self.pause = pause
        #: purposes holding a stable visitor id may hold the consent id too; others get a proof
        self.keeps_id = "visitor_id" in purpose.categories
        self._built: dict[str, pa.Array] = {}

    def column(self, name: str) -> pa.Array:
        found = self._built.get(name)
        if found is None:
            build = _SINGLE.get(name)
            if build is not None:
                found = build(self) if name in _OWN else self.rows.memo(("column", name), lambda: build(self))
            else:
                group_build = _GROUPED[name]
                self._built.update(self.rows.memo(("columns", group_build), lambda: group_build(self)))
                found = self._built[name]
        return found

    # -- raw attributes and their distinct values --------------------------------
    def _strings(self, name: str) -> pa.Array:
        return self.rows.array(name, STRING)

    def _codes(self, name: str) -> tuple[np.ndarray, list[Any]]:
        return self.rows.memo(("codes", name), lambda: encode(self._strings(name)))

    @cached_property
    def _ts(self) -> np.ndarray:
        return self.rows.numbers("ts", np.float64)

    @cached_property
    def _day_codes(self) -> np.ndarray:
        return group(np.floor_divide(self._ts, 86400).astype(np.int64))[0]

    @cached_property
    def _sites(self) -> tuple[np.ndarray, list[str]]:
        """Each row's site: its Host header as a valid name (see `AllowedHosts.site`)."""
        return self.rows.memo("sites", self._resolve_sites)

    def _resolve_sites(self) -> tuple[np.ndarray, list[str]]:
        codes, hosts = self._codes("site")
        site = self.enricher.hosts.site
        return codes, [site(h) for h in hosts]

    @cached_property
    def _client_ips(self) -> tuple[np.ndarray, list[str]]:
        """Each row's client address (forwarding headers believed only from trusted proxies)."""
        return self.rows.memo("client_ips", self._resolve_client_ips)

    def _resolve_client_ips(self) -> tuple[np.ndarray, list[str]]:
        peers, peer_values = self._codes("peer_ip")
        forwarded, forwarded_values = self._codes("forwarded_for")
        if len(forwarded_values) <= 1 and not any(forwarded_values):
            return peers, [self.enricher.client_ip(p, "") for p in peer_values]
        codes, firsts = group(peers, forwarded)
        return codes, [self.enricher.client_ip(peer_values[peers[f]], forwarded_values[forwarded[f]])
                       for f in firsts.tolist()]

    @cached_property
    def _payloads(self) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Beacon events' validated payloads (positions in this table's rows)."""
        return self.rows.present("data")

    @cached_property
    def _event_types(self) -> pa.Array:
        return self._strings("event_type")

    # -- single columns ------------------------------------------------------------
    def _event_id(self) -> pa.Array:
        return uuid4_array(self.rows.size)

    def _timestamp(self) -> pa.Array:
        return pa.array((self._ts * 1000).astype(np.int64), type=_TIMESTAMP)

    def _site(self) -> pa.Array:
        codes, names = self._sites
        return spread(names, codes, STRING)

    def _consent_id(self) -> pa.Array:
        if self.keeps_id:
            return self._strings("consent_id")
        # A day-scoped proof instead of the id: one HMAC per consent and day.
        ids, id_values = self._codes("consent_id")
        codes, firsts = group(ids, self._day_codes)
        ts = self._ts
        proof = self.enricher.consent_proof
        return spread([proof(id_values[ids[f]], float(ts[f])) for f in firsts.tolist()], codes, STRING)

    def _path(self) -> pa.Array:
        return pc.utf8_slice_codeunits(self._strings("path"), 0, 1024)

    def _status(self) -> pa.Array:
        return pa.array(self.rows.numbers("status", np.int64), type=pa.uint16())

    def _language(self) -> pa.Array:
        codes, values = self._codes("language")
        return spread([language_tag(v) for v in values], codes, STRING)

    def _ip(self) -> pa.Array:
        codes, ips = self._client_ips
        mask = self.enricher.masked_ip
        p = self.purpose
        return spread([mask(ip, p.ip_mask_bytes, p.ipv6_prefix) for ip in ips], codes, pa.binary(16))

    def _visitor_id(self) -> pa.Array:
        return self.rows.array("visitor_id", STRING).fill_null("")

    def _visitor_hash(self) -> pa.Array:
        """The daily pseudonymous code: one hash per (day, site, address, browser) in the batch."""
        sites, site_names = self._sites
        ips, ip_values = self._client_ips
        agents, agent_values = self._codes("user_agent")
        codes, firsts = group(sites, ips, agents, self._day_codes)
        ts = self._ts
        code = self.enricher.visitor_hash
        return spread([code(float(ts[f]), site_names[sites[f]], ip_values[ips[f]], agent_values[agents[f]])
                       for f in firsts.tolist()], codes, pa.uint64())

    def _duration(self) -> dict[str, pa.Array]:
        """Server-side page views carry the response time; beacon events never do. Stored
        exact in microseconds (`duration_us`) and rounded in ms (`duration_ms`): pages served
        in under a millisecond used to be stored as 0."""
        ms = np.clip(self.rows.numbers("duration_ms", np.float64), 0, 4_000_000)
        positions, _ = self._payloads
        keep = pc.equal(self._event_types, "pageview").to_numpy(zero_copy_only=False) & ~mask_of(self.rows.size, positions)
        return {"duration_ms": pa.array(np.rint(ms).astype(np.int64), mask=~keep, type=pa.uint32()),
                "duration_us": pa.array(np.rint(ms * 1000).astype(np.int64), mask=~keep, type=pa.uint32())}

    # -- columns built together ------------------------------------------------------
    def _campaign(self) -> dict[str, pa.Array]:
        positions, campaigns = self.rows.present("campaign")
        size = self.rows.size
        out = {}
        for name in _UTM:
            self.pause()
            out[name] = fill(size, "", positions, [_utm(c, name) for c in campaigns], STRING)
        out["click_id_type"] = fill(size, "", positions, [_click_id_type(c) for c in campaigns], STRING)
        return out

    def _referrer(self) -> dict[str, pa.Array]:
        """Referrer host, source and URL; only page views have one (a beacon's own wins)."""
        is_pageview = pc.equal(self._event_types, "pageview").to_numpy(zero_copy_only=False)
        raw = where(is_pageview, self._strings("referrer"), "")
        positions, payloads = self._payloads
        own = [(p, d["referrer"]) for p, d in zip(positions.tolist(), payloads)
               if "referrer" in d and is_pageview[p]]
        if own:
            raw = pc.replace_with_mask(raw, pa.array(mask_of(self.rows.size, np.array([p for p, _ in own]))),
                                       pa.array([r for _, r in own], type=STRING))
        refs, ref_values = encode(raw)
        sites, site_names = self._sites
        codes, firsts = group(refs, sites)
        parse = self.enricher.referrer
        self.pause()
        parsed = [parse(ref_values[refs[f]], site_names[sites[f]]) for f in firsts.tolist()]
        self.pause()
        return {"referrer_host": spread([r.host for r in parsed], codes, STRING),
                "referrer_source": spread([r.source for r in parsed], codes, STRING),
                "referrer": spread([r.url for r in parsed], codes, STRING)}

    def _browser(self) -> dict[str, pa.Array]:
        every, agents = self.rows.batch.shared[AGENTS]  # parsed by the minimiser's bot check
        codes = every[self.rows.rows]
        return {name: spread([getattr(a, name) for a in agents], codes, STRING)
                for name in ("browser", "browser_version", "os", "os_version", "device")}

    def _place(self) -> dict[str, pa.Array]:
        codes, ips = self._client_ips
        self.pause()
        places = [self.enricher.place(ip) for ip in ips]
        out = {}
        for i, name in enumerate(("country", "region", "city")):
            self.pause()
            out[name] = spread([p[i] for p in places], codes, STRING)
        return out

    def _timing(self) -> dict[str, pa.Array]:
        positions, payloads = self._payloads
        size = self.rows.size
        out = self._duration()
        for name, key in _TIMING_KEYS.items():
            out[name] = fill(size, None, positions, [d.get(key) for d in payloads], arrow_type(BY_NAME[name].ch_type))
        return out

    def _clicks(self) -> dict[str, pa.Array]:
        positions, payloads = self._payloads
        size = self.rows.size
        out = {name: fill(size, "", positions, [d.get(key, "") for d in payloads], STRING)
               for name, key in _CLICK_KEYS.items()}
        kind = arrow_type(BY_NAME["props"].ch_type)
        with_props = [(p, d["props"]) for p, d in zip(positions.tolist(), payloads) if d.get("props")]
        if with_props:
            props: list[Any] = [_NO_PROPS] * size
            for position, value in with_props:
                props[position] = value
            out["props"] = map_array(props, kind)
        else:
            out["props"] = pa.MapArray.from_arrays(pa.array(np.zeros(size + 1, dtype=np.int32)),
                                                   pa.array([], STRING), pa.array([], STRING), type=kind)
        return out


_NO_PROPS: dict[str, str] = {}

_SINGLE: dict[str, Callable[[TableColumns], pa.Array]] = {
    "event_id": TableColumns._event_id,
    "ts": TableColumns._timestamp,
    "site": TableColumns._site,
    "event_type": lambda t: t._event_types,
    "consent_id": TableColumns._consent_id,
    "policy_version": lambda t: t._strings("policy_version"),
    "path": TableColumns._path,
    "status": TableColumns._status,
    "language": TableColumns._language,
    "ip": TableColumns._ip,
    "visitor_id": TableColumns._visitor_id,
    "visitor_hash": TableColumns._visitor_hash,
}
_GROUPS: tuple[tuple[Callable[[TableColumns], dict[str, pa.Array]], tuple[str, ...]], ...] = (
    (TableColumns._campaign, (*_UTM, "click_id_type")),
    (TableColumns._referrer, ("referrer_host", "referrer_source", "referrer")),
    (TableColumns._browser, ("browser", "browser_version", "os", "os_version", "device")),
    (TableColumns._place, ("country", "region", "city")),
    (TableColumns._timing, ("duration_ms", "duration_us", *_TIMING_KEYS)),
    (TableColumns._clicks, (*_CLICK_KEYS, "props")),
)
_GROUPED = {name: build for build, names in _GROUPS for name in names}
#: Columns whose values depend on the purpose (the consent id or its proof, the address mask,
#: the visitor's codes) or must differ between tables (a row's event id: a shared one would
#: link a statistics row to the same page view's personalisation row). Every other column is
#: computed once per batch and shared by the tables that take every hit.
_OWN = frozenset({"event_id", "consent_id", "ip", "visitor_id", "visitor_hash"})


def buildable(name: str) -> bool:
    """Whether this module knows how to compute a stored column."""
    return name in _SINGLE or name in _GROUPED
