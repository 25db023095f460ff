"""The stored columns and the data category each belongs to.

This is the vocabulary shared by the minimiser (which fills only the columns a granted
purpose's categories allow) and the schema (which gives each purpose's table exactly
those columns). A column with no category is the row's bookkeeping: which event, when,
on which site, and the consent that authorised it.
"""

from __future__ import annotations

from dataclasses import dataclass

from consentmw.core.policy import Purpose


@dataclass(frozen=True)
class Column:
    name: str
    ch_type: str
    category: str | None            # None: bookkeeping every row has
    precision: str | None = None    # only stored when the purpose asks for this precision


COLUMNS: tuple[Column, ...] = (
    Column("event_id", "UUID", None),
    Column("ts", "DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1))", None),
    Column("site", "LowCardinality(String)", None),
    Column("event_type", "LowCardinality(String)", None),
    Column("consent_id", "String", None),
    Column("policy_version", "LowCardinality(String)", None),
    # page
    Column("path", "String CODEC(ZSTD(1))", "page"),
    Column("status", "UInt16", "page"),
    Column("utm_source", "LowCardinality(String)", "page"),
    Column("utm_medium", "LowCardinality(String)", "page"),
    Column("utm_campaign", "LowCardinality(String)", "page"),
    Column("utm_term", "String", "page"),
    Column("utm_content", "String", "page"),
    Column("click_id_type", "LowCardinality(String)", "page"),
    # referrer
    Column("referrer_host", "LowCardinality(String)", "referrer"),
    Column("referrer_source", "LowCardinality(String)", "referrer"),
    Column("referrer", "String CODEC(ZSTD(1))", "referrer", precision="full"),
    # browser
    Column("browser", "LowCardinality(String)", "browser"),
    Column("browser_version", "LowCardinality(String)", "browser"),
    Column("os", "LowCardinality(String)", "browser"),
    Column("os_version", "LowCardinality(String)", "browser"),
    Column("device", "LowCardinality(String)", "browser"),
    # language
    Column("language", "LowCardinality(String)", "language"),
    # location
    Column("country", "LowCardinality(String)", "location"),
    Column("region", "LowCardinality(String)", "location", precision="city"),
    Column("city", "LowCardinality(String)", "location", precision="city"),
    # ip (masked)
    Column("ip", "IPv6", "ip"),
    # timing
    Column("duration_ms", "Nullable(UInt32)", "timing"),   # rounded; kept for existing queries
    Column("duration_us", "Nullable(UInt32)", "timing"),   # exact server time in microseconds
    Column("ttfb", "Nullable(UInt32)", "timing"),
    Column("dom_interactive", "Nullable(UInt32)", "timing"),
    Column("dom_complete", "Nullable(UInt32)", "timing"),
    Column("load_ms", "Nullable(UInt32)", "timing"),
    Column("fcp", "Nullable(UInt32)", "timing"),
    Column("lcp", "Nullable(UInt32)", "timing"),
    Column("inp", "Nullable(UInt32)", "timing"),
    Column("cls", "Nullable(Float32)", "timing"),
    # clicks and custom events
    Column("link_host", "LowCardinality(String)", "clicks"),
    Column("link_path", "String", "clicks"),
    Column("event_name", "LowCardinality(String)", "clicks"),
    Column("props", "Map(LowCardinality(String), String)", "clicks"),
    # identifiers
    Column("visitor_id", "String", "visitor_id"),
    Column("visitor_hash", "UInt64", "daily_hash"),
)

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}

_PRECISION_OF = {"location": "location_precision", "referrer": "referrer_precision"}


def columns_for(purpose: Purpose) -> tuple[Column, ...]:
    """The columns a purpose's table holds: bookkeeping plus its categories' columns."""
    out = []
    for column in COLUMNS:
        if column.category is None:
            out.append(column)
        elif column.category in purpose.categories:
            if column.precision is not None:
                wanted = getattr(purpose, _PRECISION_OF[column.category])
                if wanted != column.precision:
                    continue
            out.append(column)
    return tuple(out)


def table_for(purpose_id: str) -> str:
    return f"events_{purpose_id}"


#: The consent ledger's columns (append-only proof of every choice).
LEDGER_COLUMNS: tuple[Column, ...] = (
    Column("record_id", "UUID", None),
    Column("consent_id", "String", None),
    Column("ts", "DateTime64(3, 'UTC')", None),
    Column("action", "LowCardinality(String)", None),
    Column("policy_version", "LowCardinality(String)", None),
    Column("granted", "Array(LowCardinality(String))", None),
    Column("denied", "Array(LowCardinality(String))", None),
    Column("source", "LowCardinality(String)", None),
    Column("gpc", "Bool", None),
    Column("language", "LowCardinality(String)", None),
    Column("texts_hash", "String", None),
    Column("page", "String", None),
    Column("site", "LowCardinality(String)", None),
    Column("ip", "IPv6", None),
    Column("user_agent", "String CODEC(ZSTD(3))", None),
    Column("visitor_id", "String", None),
)
