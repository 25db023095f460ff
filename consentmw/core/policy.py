"""The consent policy: which purposes exist, what data each needs and for how long.

A `Policy` is the single source of truth for consent. The banner renders it, the
consent cookie is bound to its version, and the minimiser derives each purpose's
stored columns from the categories listed here. Changing what is collected means
changing the policy and its version, which re-asks every visitor.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

LANGUAGES: tuple[str, ...] = ("en", "ru", "kk")

#: Data categories drawn from the seed privacy policies. Purposes may only list these.
CATEGORIES: tuple[str, ...] = (
    "ip",          # IP address (stored masked)
    "browser",     # browser, operating system, device type
    "language",    # preferred language
    "timing",      # time of access, page load timing, web vitals
    "page",        # address of the requested page, campaign tags, status
    "referrer",    # the site the visitor came from
    "clicks",      # links followed and actions on the page
    "location",    # country / city derived from the IP address
    "visitor_id",  # a random, stable identifier kept in the consent cookie
    "daily_hash",  # a pseudonymous code that changes every day (counts unique visitors)
)

LOCATION_PRECISIONS = ("country", "city")
REFERRER_PRECISIONS = ("host", "full")


class PolicyError(ValueError):
    """A policy file or definition is invalid; the message names the offending key."""


@dataclass(frozen=True)
class Purpose:
    """One reason for processing data, consented to (or not) on its own."""

    id: str
    categories: frozenset[str]
    retention_days: int
    texts: Mapping[str, Mapping[str, str]]
    required: bool = False
    gpc_opt_out: bool = False
    location_precision: str = "country"
    referrer_precision: str = "host"
    ip_mask_bytes: int = 2
    ipv6_prefix: int = 48
    # What the purpose uses in the browser (glob patterns): cookie names, localStorage /
    # sessionStorage / IndexedDB names, third-party hosts. `consentmw scan` allows these
    # before a choice only for required purposes, and names them after Accept.
    cookies: tuple[str, ...] = ()
    storage: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    @property
    def collects(self) -> bool:
        """True when this purpose stores any visitor data at all."""
        return bool(self.categories)

    def text(self, lang: str, key: str) -> str:
        return self.texts.get(lang, {}).get(key) or self.texts.get("en", {}).get(key, "")


@dataclass(frozen=True)
class Policy:
    """A versioned set of purposes, category labels and banner texts."""

    version: str
    updated: date
    purposes: tuple[Purpose, ...]
    category_texts: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    texts: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    privacy_url: str = ""

    def __post_init__(self) -> None:
        ids = [p.id for p in self.purposes]
        if len(set(ids)) != len(ids):
            raise PolicyError("purposes: duplicate purpose id")
        object.__setattr__(self, "_by_id", {p.id: p for p in self.purposes})

    # -- look-ups --------------------------------------------------------
    def __getitem__(self, purpose_id: str) -> Purpose:
        return self._by_id[purpose_id]  # type: ignore[attr-defined]

    def __contains__(self, purpose_id: object) -> bool:
        return purpose_id in self._by_id  # type: ignore[attr-defined]

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self._by_id)  # type: ignore[attr-defined]

    @property
    def required_ids(self) -> frozenset[str]:
        return frozenset(p.id for p in self.purposes if p.required)

    @property
    def optional_ids(self) -> frozenset[str]:
        return frozenset(p.id for p in self.purposes if not p.required)

    @property
    def gpc_ids(self) -> frozenset[str]:
        return frozenset(p.id for p in self.purposes if p.gpc_opt_out)

    @property
    def collecting(self) -> tuple[Purpose, ...]:
        return tuple(p for p in self.purposes if p.collects)

    # -- serialisation ---------------------------------------------------
    def public(self, langs: tuple[str, ...] = LANGUAGES) -> dict[str, Any]:
        """The policy as the banner and `/state` show it (JSON-ready)."""
        return {
            "version": self.version,
            "updated": self.updated.isoformat(),
            "privacy_url": self.privacy_url,
            "purposes": [
                {
                    "id": p.id,
                    "required": p.required,
                    "gpc_opt_out": p.gpc_opt_out,
                    "categories": sorted(p.categories),
                    "retention_days": p.retention_days,
                    "texts": {lang: dict(p.texts.get(lang, {})) for lang in langs if lang in p.texts},
                }
                for p in self.purposes
            ],
            "categories": {c: {lang: t for lang, t in texts.items() if lang in langs}
                           for c, texts in self.category_texts.items()},
            "texts": {lang: dict(self.texts[lang]) for lang in langs if lang in self.texts},
        }

    def texts_hash(self, lang: str) -> str:
        """A short hash of everything shown in one language: proves which texts a visitor saw."""
        blob = json.dumps(self.public((lang,)), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # -- constructors ----------------------------------------------------
    @classmethod
    def default(cls) -> "Policy":
        """The built-in catalog drawn from the seed privacy policies."""
        text = resources.files("consentmw.core").joinpath("default_policy.toml").read_text("utf-8")
        return cls.from_dict(tomllib.loads(text))

    @classmethod
    def from_file(cls, path: "str | os.PathLike[str]") -> "Policy":
        """Load a TOML policy. Keys absent from the file fall back to the default catalog's texts."""
        try:
            data = tomllib.loads(Path(path).read_text("utf-8"))
        except FileNotFoundError:
            raise PolicyError(f"policy file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_dict(data, base=cls.default())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: "Policy | None" = None) -> "Policy":
        return _parse_policy(data, base)


# ---------------------------------------------------------------------------
# parsing with error messages that name the key
_POLICY_KEYS = {"version", "updated", "privacy_url", "purposes", "categories", "texts"}
_PURPOSE_KEYS = {"id", "required", "categories", "retention_days", "texts", "gpc_opt_out",
                 "location_precision", "referrer_precision", "ip_mask_bytes", "ipv6_prefix",
                 "cookies", "storage", "hosts"}


def _check_keys(obj: Any, allowed: set[str], where: str) -> None:
    if not isinstance(obj, Mapping):
        raise PolicyError(f"{where}: expected a table")
    for key in obj:
        if key not in allowed:
            raise PolicyError(f"{where}.{key}: unknown key" if where else f"{key}: unknown key")


def _texts(obj: Any, where: str) -> dict[str, dict[str, str]]:
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise PolicyError(f"{where}: expected a table of languages")
    out: dict[str, dict[str, str]] = {}
    for lang, entries in obj.items():
        if not isinstance(entries, Mapping):
            raise PolicyError(f"{where}.{lang}: expected a table of texts")
        for key, value in entries.items():
            if not isinstance(value, str):
                raise PolicyError(f"{where}.{lang}.{key}: expected a string")
        out[lang] = dict(entries)
    return out


def _merge_texts(base: Mapping[str, Mapping[str, str]], over: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    merged = {lang: dict(v) for lang, v in base.items()}
    for lang, entries in over.items():
        merged.setdefault(lang, {}).update(entries)
    return merged


def _privacy_url(value: str) -> str:
    """The banner links to it: only a site path or an http(s) URL (never javascript: or data:)."""
    if not value:
        return value
    if value.startswith("/") and not value.startswith("//"):
        ok = not any(c.isspace() or ord(c) < 32 for c in value)
    else:
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and value == value.strip()
        except ValueError:
            ok = False
    if not ok or len(value) > 2048:
        raise PolicyError(f"privacy_url: {value[:80]!r} must be an http(s) URL or a path starting with '/'")
    return value


def _typed(obj: Mapping[str, Any], key: str, kind: type, where: str, default: Any) -> Any:
    value = obj.get(key, default)
    if kind is int and isinstance(value, bool):
        raise PolicyError(f"{where}.{key}: expected an integer")
    if not isinstance(value, kind):
        raise PolicyError(f"{where}.{key}: expected {kind.__name__}")
    return value


def _patterns(raw: Mapping[str, Any], key: str, where: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = raw.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in value):
        raise PolicyError(f"{where}.{key}: expected a list of names or glob patterns (1-200 characters each)")
    return tuple(value)


def _parse_purpose(raw: Any, where: str, base: Purpose | None) -> Purpose:
    _check_keys(raw, _PURPOSE_KEYS, where)
    pid = raw.get("id")
    if not isinstance(pid, str) or not pid.isidentifier() or not pid.islower() or len(pid) > 32:
        raise PolicyError(f"{where}.id: expected a lower-case identifier of at most 32 characters")
    cats = raw.get("categories", sorted(base.categories) if base else [])
    if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
        raise PolicyError(f"{where}.categories: expected a list of category names")
    for c in cats:
        if c not in CATEGORIES:
            raise PolicyError(f"{where}.categories: unknown category {c!r} (known: {', '.join(CATEGORIES)})")
    required = _typed(raw, "required", bool, where, base.required if base else False)
    if required and cats:
        raise PolicyError(f"{where}.categories: a required purpose may not collect tracking data")
    retention = _typed(raw, "retention_days", int, where, base.retention_days if base else 30)
    if not 1 <= retention <= 3650:
        raise PolicyError(f"{where}.retention_days: must be between 1 and 3650")
    loc = _typed(raw, "location_precision", str, where, base.location_precision if base else "country")
    if loc not in LOCATION_PRECISIONS:
        raise PolicyError(f"{where}.location_precision: must be one of {LOCATION_PRECISIONS}")
    ref = _typed(raw, "referrer_precision", str, where, base.referrer_precision if base else "host")
    if ref not in REFERRER_PRECISIONS:
        raise PolicyError(f"{where}.referrer_precision: must be one of {REFERRER_PRECISIONS}")
    mask = _typed(raw, "ip_mask_bytes", int, where, base.ip_mask_bytes if base else 2)
    if not 1 <= mask <= 3:
        raise PolicyError(f"{where}.ip_mask_bytes: must be 1, 2 or 3")
    v6 = _typed(raw, "ipv6_prefix", int, where, base.ipv6_prefix if base else 48)
    if v6 not in (48, 64):
        raise PolicyError(f"{where}.ipv6_prefix: must be 48 or 64")
    texts = _merge_texts(base.texts if base else {}, _texts(raw.get("texts"), f"{where}.texts"))
    if not texts.get("en", {}).get("title"):
        raise PolicyError(f"{where}.texts.en.title: every purpose needs an English title")
    return Purpose(
        id=pid, categories=frozenset(cats), retention_days=retention, texts=texts,
        required=required, gpc_opt_out=_typed(raw, "gpc_opt_out", bool, where, base.gpc_opt_out if base else False),
        location_precision=loc, referrer_precision=ref, ip_mask_bytes=mask, ipv6_prefix=v6,
        cookies=_patterns(raw, "cookies", where, base.cookies if base else ()),
        storage=_patterns(raw, "storage", where, base.storage if base else ()),
        hosts=_patterns(raw, "hosts", where, base.hosts if base else ()),
    )


def _parse_policy(data: Mapping[str, Any], base: Policy | None) -> Policy:
    _check_keys(data, _POLICY_KEYS, "")
    version = data.get("version")
    if not isinstance(version, str) or not version or len(version) > 40 or not all(
            ch.isalnum() or ch in "-._" for ch in version):
        raise PolicyError("version: expected a short string of letters, digits, '-', '.', '_'")
    updated = data.get("updated")
    if isinstance(updated, str):
        try:
            updated = date.fromisoformat(updated)
        except ValueError:
            raise PolicyError("updated: expected a date like 2026-11-21") from None
    if not isinstance(updated, date):
        raise PolicyError("updated: the date of last update must be specified (e.g. 2026-11-21)")
    raw_purposes = data.get("purposes")
    if raw_purposes is None and base is not None:
        purposes = base.purposes
    else:
        if not isinstance(raw_purposes, list) or not raw_purposes:
            raise PolicyError("purposes: expected a non-empty array of [[purposes]] tables")
        base_by_id = {p.id: p for p in base.purposes} if base else {}
        purposes = tuple(
            _parse_purpose(raw, f"purposes[{i}]",
                           base_by_id.get(str(raw.get("id"))) if isinstance(raw, Mapping) else None)
            for i, raw in enumerate(raw_purposes))
    cat_texts = _texts(data.get("categories"), "categories")
    for c in cat_texts:
        if c not in CATEGORIES:
            raise PolicyError(f"categories.{c}: unknown category")
    privacy_url = _privacy_url(_typed(data, "privacy_url", str, "", base.privacy_url if base else ""))
    policy = Policy(
        version=version,
        updated=updated,
        purposes=purposes,
        category_texts=_merge_texts(base.category_texts if base else {}, cat_texts),
        texts=_merge_texts(base.texts if base else {}, _texts(data.get("texts"), "texts")),
        privacy_url=privacy_url,
    )
    if not policy.required_ids:
        raise PolicyError("purposes: at least one required purpose (e.g. 'necessary') is needed")
    return policy
