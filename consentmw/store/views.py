"""Analyst views and the visitor-profile aggregate, derived from the policy.

Shipped with the schema (appended to `Schema.statements()`), all idempotent:

* plain views over the per-purpose tables and the ledger: `stats_daily` (per site, day
  and page), `stats_daily_site`, `traffic_sources`, `campaigns` (page views count only
  pages served successfully: see `successful`), `consent_daily` (opt-in rate, refusals and
  GPC share per purpose) and `consent_choices_daily` (accept all / reject all / custom).
  Decisions (a browser's first choice and its later changes) are counted apart from
  withdrawals and erasures, which are not choices made in the banner. They are computed at query time, so a blocked visitor's rows are
  left out the moment they are blocked and come back the moment they are unblocked;
* `visitor_profile`: an AggregatingMergeTree keyed by `visitor_id`, fed by the
  materialized view `visitor_profile_mv` from the personalisation table, read through the
  `visitor_profiles` view (merged, blocked visitors excluded). ClickHouse does not
  propagate deletes to a materialized view's target, so erasure deletes from it itself
  (see `consentmw.rights`).

Every view leaves out rows whose `consent_id` (or, for profiles, `visitor_id`) is listed
as blocked in `blocked_visitors`. Statistics rows carry a day-scoped proof token instead
of the consent id; blocking stores those tokens too, which is how a blocked visitor's
past statistics rows drop out of the views.
"""

from __future__ import annotations

from consentmw.core.fields import columns_for, table_for
from consentmw.core.policy import Policy, Purpose

from consentmw.store.layout import Layout

PROFILE_TABLE = "visitor_profile"
PROFILE_MV = "visitor_profile_mv"
PROFILE_VIEW = "visitor_profiles"
#: Plain views (names analysts query); order = creation order.
VIEWS = ("stats_daily", "stats_daily_site", "traffic_sources", "campaigns", "consent_daily",
         "consent_choices_daily", PROFILE_VIEW)
#: Ledger actions that are choices (an erasure receipt row is not a choice).
CHOICE_ACTIONS = ("grant", "change", "withdraw")
#: Choices made in the banner (first decision of a browser, or a later one); a withdrawal
#: is counted apart, never as a "reject all".
DECISION_ACTIONS = ("grant", "change")
_VITALS = ("ttfb", "fcp", "lcp", "inp", "cls", "load_ms", "duration_ms")


def successful(status: str = "status") -> str:
    """A page view that counts: the page was served (2xx, or 304 Not Modified), or a
    single-page-app view reported by the beacon (status 0: the browser saw no error)."""
    return f"({status} = 0 OR ({status} >= 200 AND {status} < 300) OR {status} = 304)"


def page_view(status: str = "status") -> str:
    """Condition for a counted page view (see `successful`)."""
    return f"event_type = 'pageview' AND {successful(status)}"


def statistics_purpose(policy: Policy) -> Purpose | None:
    """The purpose whose table feeds the traffic views: `statistics`, else the first
    collecting purpose that records pages without keeping a stable visitor id."""
    if "statistics" in policy and policy["statistics"].collects:
        return policy["statistics"]
    for purpose in policy.collecting:
        if "page" in purpose.categories and "visitor_id" not in purpose.categories:
            return purpose
    return None


def profile_purpose(policy: Policy) -> Purpose | None:
    """The purpose whose table feeds the visitor profile: `personalisation`, else the first
    collecting purpose that keeps a visitor id and pages."""
    candidates = [p for p in policy.collecting if {"visitor_id", "page"} <= p.categories]
    for purpose in candidates:
        if purpose.id == "personalisation":
            return purpose
    return candidates[0] if candidates else None


def blocked_subjects(database: str) -> str:
    """Subquery: every subject (consent id, visitor id or proof token) currently blocked."""
    return (f"(SELECT subject FROM {database}.blocked_visitors GROUP BY subject "
            f"HAVING argMax(blocked, ts) = 1)")


def _lit(values: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values) + "]"


class _Cols:
    """Expression for a column if the purpose's table has it, else a typed default."""

    def __init__(self, purpose: Purpose) -> None:
        self.names = {c.name for c in columns_for(purpose)}

    def __call__(self, name: str, default: str = "''") -> str:
        return name if name in self.names else default


def statements(schema: Layout) -> list[str]:
    """DDL for the views, the profile aggregate and its materialized view."""
    db = schema.database
    policy = schema.policy
    view = f"CREATE OR REPLACE VIEW {{}}{schema.on_cluster} AS\n"
    not_in = "GLOBAL NOT IN" if schema.cluster else "NOT IN"
    blocked = blocked_subjects(db)
    out: list[str] = []

    stats = statistics_purpose(policy)
    if stats is not None:
        col = _Cols(stats)
        src = f"{db}.{table_for(stats.id)}"
        vh = col("visitor_hash", "toUInt64(0)")
        quantiles = []
        pv = page_view(col("status", "toUInt16(0)"))
        for name in _VITALS:
            expr = col(name, "CAST(NULL AS Nullable(UInt32))")
            if name == "duration_ms" and "duration_us" in col.names:
                expr = "duration_us / 1000"  # exact: duration_ms is rounded
            short = name.replace("_ms", "")
            quantiles.append(f"quantileExactInclusive(0.5)({expr}) AS {short}_p50")
            quantiles.append(f"quantileExactInclusive(0.75)({expr}) AS {short}_p75")
        qsql = ",\n  ".join(quantiles)
        keep = f"consent_id {not_in} {blocked}"
        out.append(view.format(f"{db}.stats_daily") +
                   f"SELECT toDate(ts) AS day, site, {col('path')} AS path,\n"
                   f"  countIf({pv}) AS pageviews,\n"
                   f"  uniqExactIf({vh}, {pv}) AS visitors,\n"
                   f"  countIf(event_type = 'pageview' AND NOT {successful(col('status', 'toUInt16(0)'))}) AS error_views,\n"
                   f"  {qsql}\n"
                   f"FROM {src}\nWHERE {keep}\nGROUP BY day, site, path")
        out.append(view.format(f"{db}.stats_daily_site") +
                   f"SELECT toDate(ts) AS day, site,\n"
                   f"  countIf({pv}) AS pageviews,\n"
                   f"  uniqExactIf({vh}, {pv}) AS visitors,\n"
                   f"  uniqExactIf({col('path')}, {pv}) AS pages,\n"
                   f"  countIf(event_type = 'pageview' AND NOT {successful(col('status', 'toUInt16(0)'))}) AS error_views,\n"
                   f"  {qsql}\n"
                   f"FROM {src}\nWHERE {keep}\nGROUP BY day, site")
        source = (f"multiIf({col('utm_source')} != '', {col('utm_source')}, "
                  f"{col('referrer_source')} != '', {col('referrer_source')}, "
                  f"{col('referrer_host')} != '', {col('referrer_host')}, '(direct)')")
        medium = (f"multiIf({col('utm_medium')} != '', {col('utm_medium')}, "
                  f"{col('click_id_type')} != '', 'paid', "
                  f"{col('referrer_source')} IN {_lit(_SEARCH)}, 'search', "
                  f"{col('referrer_source')} != '', 'social', "
                  f"{col('referrer_host')} != '', 'referral', 'direct')")
        out.append(view.format(f"{db}.traffic_sources") +
                   f"SELECT toDate(ts) AS day, site, {source} AS source, {medium} AS medium,\n"
                   f"  {col('referrer_host')} AS referrer_host,\n"
                   f"  count() AS pageviews, uniqExact({vh}) AS visitors\n"
                   f"FROM {src}\nWHERE {pv} AND {keep}\n"
                   f"GROUP BY day, site, source, medium, referrer_host")
        tags = ("utm_source", "utm_medium", "utm_campaign", "click_id_type")
        tagged = " OR ".join(f"{col(t)} != ''" for t in tags)
        out.append(view.format(f"{db}.campaigns") +
                   f"SELECT toDate(ts) AS day, site, {col('utm_source')} AS utm_source, "
                   f"{col('utm_medium')} AS utm_medium,\n"
                   f"  {col('utm_campaign')} AS utm_campaign, {col('utm_term')} AS utm_term, "
                   f"{col('utm_content')} AS utm_content, {col('click_id_type')} AS click_id_type,\n"
                   f"  count() AS pageviews, uniqExact({vh}) AS visitors\n"
                   f"FROM {src}\nWHERE {pv} AND {keep} AND ({tagged})\n"
                   f"GROUP BY day, site, utm_source, utm_medium, utm_campaign, utm_term, utm_content, click_id_type")

    optional = [p.id for p in policy.purposes if not p.required]
    required = [p.id for p in policy.purposes if p.required]
    # Decisions, withdrawals and erasure receipts, each counted apart. An erasure row lists
    # no purposes (the consent ended), so it appears in consent_choices_daily only.
    ledger = f"action IN {_lit((*CHOICE_ACTIONS, 'erase'))} AND consent_id {not_in} {blocked}"
    decision = f"action IN {_lit(DECISION_ACTIONS)}"
    skip_required = f" AND purpose NOT IN {_lit(required)}" if required else ""
    out.append(view.format(f"{db}.consent_daily") +
               "SELECT toDate(ts) AS day, site, purpose,\n"
               f"  countIf({decision}) AS decisions,\n"
               "  countIf(action = 'grant') AS first_decisions,\n"
               "  countIf(action = 'change') AS changes,\n"
               f"  countIf({decision} AND has(granted, purpose)) AS opt_ins,\n"
               f"  countIf({decision} AND has(denied, purpose)) AS refusals,\n"
               "  if(decisions = 0, NULL, round(opt_ins / decisions, 4)) AS opt_in_rate,\n"
               "  countIf(action = 'grant' AND has(granted, purpose)) AS first_opt_ins,\n"
               "  if(first_decisions = 0, NULL, round(first_opt_ins / first_decisions, 4)) AS first_opt_in_rate,\n"
               f"  countIf({decision} AND gpc) AS gpc_decisions,\n"
               "  if(decisions = 0, NULL, round(gpc_decisions / decisions, 4)) AS gpc_share,\n"
               "  countIf(action = 'withdraw') AS withdrawals,\n"
               f"  uniqExactIf(consent_id, {decision}) AS browsers\n"
               f"FROM {db}.consent_log\nARRAY JOIN arrayConcat(granted, denied) AS purpose\n"
               f"WHERE {ledger}{skip_required}\nGROUP BY day, site, purpose")
    opt = _lit(optional) + "::Array(String)"
    out.append(view.format(f"{db}.consent_choices_daily") +
               "SELECT toDate(ts) AS day, site,\n"
               f"  countIf({decision}) AS decisions,\n"
               "  countIf(action = 'grant') AS first_decisions,\n"
               "  countIf(action = 'change') AS changes,\n"
               f"  countIf({decision} AND hasAll(granted, {opt})) AS accept_all,\n"
               f"  countIf({decision} AND NOT hasAny(granted, {opt})) AS reject_all,\n"
               "  decisions - accept_all - reject_all AS custom,\n"
               "  countIf(action = 'withdraw') AS withdrawals,\n"
               "  countIf(action = 'erase') AS erasures,\n"
               f"  countIf({decision} AND gpc) AS gpc_decisions,\n"
               "  if(decisions = 0, NULL, round(gpc_decisions / decisions, 4)) AS gpc_share\n"
               f"FROM {db}.consent_log\nWHERE {ledger}\nGROUP BY day, site")

    personal = profile_purpose(policy)
    if personal is not None:
        out.extend(_profile(schema, personal, not_in, blocked))
    return out


_SEARCH = ("Google", "Bing", "Yandex", "DuckDuckGo", "Yahoo", "Baidu", "Ecosia", "Mail.ru")

#: The profile aggregate's columns: (name, type, expression in the materialized view).
_ZERO_TS = "toDateTime64(0, 3, 'UTC')"


def profile_columns(purpose: Purpose) -> list[tuple[str, str, str]]:
    col = _Cols(purpose)
    ms = "toUInt64(toUnixTimestamp64Milli(ts))"
    section = "extract(path, '^/[^/?#]*')"

    def latest(name: str) -> str:
        expr = col(name)
        return f"argMaxState({expr}, if({expr} = '', {_ZERO_TS}, ts))"

    return [
        ("visitor_id", "String", "visitor_id"),
        ("site", "SimpleAggregateFunction(anyLast, String)", "anyLast(site)"),
        ("first_seen", "SimpleAggregateFunction(min, DateTime64(3, 'UTC'))", "min(ts)"),
        ("last_seen", "SimpleAggregateFunction(max, DateTime64(3, 'UTC'))", "max(ts)"),
        ("pageviews", "SimpleAggregateFunction(sum, UInt64)", "count()"),
        ("days", "AggregateFunction(uniqExact, Date)", "uniqExactState(toDate(ts))"),
        ("pages", "SimpleAggregateFunction(sumMap, Map(String, UInt64))", "sumMap(map(path, toUInt64(1)))"),
        ("page_last", "SimpleAggregateFunction(maxMap, Map(String, UInt64))", f"maxMap(map(path, {ms}))"),
        ("sections", "SimpleAggregateFunction(sumMap, Map(String, UInt64))", f"sumMap(map({section}, toUInt64(1)))"),
        ("section_last", "SimpleAggregateFunction(maxMap, Map(String, UInt64))", f"maxMap(map({section}, {ms}))"),
        ("language", "AggregateFunction(argMax, String, DateTime64(3, 'UTC'))", latest("language")),
        ("country", "AggregateFunction(argMax, String, DateTime64(3, 'UTC'))", latest("country")),
        ("city", "AggregateFunction(argMax, String, DateTime64(3, 'UTC'))", latest("city")),
        ("device", "AggregateFunction(argMax, String, DateTime64(3, 'UTC'))", latest("device")),
        ("first_source", "AggregateFunction(argMin, String, DateTime64(3, 'UTC'))",
         f"argMinState(multiIf({col('utm_source')} != '', {col('utm_source')}, {col('referrer_source')} != '', "
         f"{col('referrer_source')}, {col('referrer_host')}), ts)"),
    ]


#: How each aggregate column is read back (merged) by the view and by `profile()`.
PROFILE_READ = {
    "site": "anyLast(site)", "first_seen": "min(first_seen)", "last_seen": "max(last_seen)",
    "pageviews": "sum(pageviews)", "visits": "uniqExactMerge(days)", "pages": "sumMap(pages)",
    "page_last": "maxMap(page_last)", "sections": "sumMap(sections)", "section_last": "maxMap(section_last)",
    "language": "argMaxMerge(language)", "country": "argMaxMerge(country)", "city": "argMaxMerge(city)",
    "device": "argMaxMerge(device)", "first_source": "argMinMerge(first_source)",
}


def profile_select(table: str) -> str:
    cols = ",\n  ".join(f"{expr} AS {name}" for name, expr in PROFILE_READ.items())
    return f"SELECT visitor_id,\n  {cols}\nFROM {table}"


def _profile(schema: Layout, purpose: Purpose, not_in: str, blocked: str) -> list[str]:
    db = schema.database
    cols = profile_columns(purpose)
    body = ",\n  ".join(f"`{name}` {kind}" for name, kind, _ in cols)
    ttl = f"toDateTime(last_seen) + toIntervalDay({int(purpose.retention_days)})"
    target = schema.local(PROFILE_TABLE)
    out = [
        f"CREATE TABLE IF NOT EXISTS {target}{schema.on_cluster} (\n  {body}\n)"
        f" ENGINE = {schema.engine(PROFILE_TABLE, 'AggregatingMergeTree')}\n"
        f"ORDER BY visitor_id\nTTL {ttl}\n"
        # Point look-ups by visitor id: small granules read ~256 rows, not 8192.
        f"SETTINGS index_granularity = 256",
        f"ALTER TABLE {target}{schema.on_cluster} MODIFY TTL {ttl}",
    ]
    if schema.cluster:
        out.append(f"CREATE TABLE IF NOT EXISTS {db}.{PROFILE_TABLE}{schema.on_cluster} AS {target} "
                   f"ENGINE = Distributed({schema.cluster}, {db}, {PROFILE_TABLE}_local, cityHash64(visitor_id))")
    select = ",\n  ".join(f"{expr} AS {name}" for name, _, expr in cols[1:])
    source = schema.local(table_for(purpose.id))
    mv = schema.local(PROFILE_MV) if schema.cluster else f"{db}.{PROFILE_MV}"
    status = _Cols(purpose)("status", "toUInt16(0)")
    query = (f"SELECT visitor_id,\n  {select}\nFROM {source}\n"
             f"WHERE visitor_id != '' AND {page_view(status)}\nGROUP BY visitor_id")
    out.append(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {mv}{schema.on_cluster} TO {target} AS\n{query}")
    # A view created by an older version keeps its old query: bring it up to date in place
    # (e.g. error pages no longer enter the profile). Idempotent.
    out.append(f"ALTER TABLE {mv}{schema.on_cluster} MODIFY QUERY\n{query}")
    out.append(f"CREATE OR REPLACE VIEW {db}.{PROFILE_VIEW}{schema.on_cluster} AS\n"
               f"{profile_select(f'{db}.{PROFILE_TABLE}')}\n"
               f"WHERE visitor_id {not_in} {blocked}\nGROUP BY visitor_id")
    return out
