"""Settings for the middleware, from keyword arguments or `CONSENTMW_*` environment variables.

Keyword arguments win over the environment, which wins over the defaults, so one app
can be configured in code while operators override deployment details (DSN, spool,
secrets) without touching it.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from consentmw.core.hosts import check_allowed_hosts
from consentmw.core.identifiers import is_identifier
from consentmw.core.policy import Policy

DEFAULT_DSN = "chdb://./consentmw-data"
ADMIN_TOKEN_MIN = 16


class SettingsError(ValueError):
    """A setting is missing or invalid; the message says which and how to fix it."""


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@dataclass
class Settings:
    secret_key: list[str]
    policy: Policy
    clickhouse_dsn: str = DEFAULT_DSN
    database: str = "consentmw"
    cluster: str | None = None                 # ClickHouse cluster name: ON CLUSTER DDL, Replicated + Distributed
    spool_dir: str = "./consentmw-spool"
    admin_token: str | None = None
    prefix: str = "/_consent"
    cookie_domain: str | None = None
    cookie_max_age: int = 180 * 86400
    cookie_secure: bool | None = None          # None: Secure when the request is https
    revocation_refresh: float = 2.0            # seconds between reads of other processes' withdrawals/erasures
    trusted_proxies: list[str] = field(default_factory=list)
    forwarded_header: str = "x-forwarded-for"  # or "forwarded" (RFC 7239): the one header the proxies set
    allowed_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)  # empty: any valid host name is a site
    collect: bool = True                       # capture server-side page hits
    exclude_paths: list[str] = field(default_factory=lambda: ["/static/", "/favicon.ico", "/robots.txt"])
    include_paths: list[str] = field(default_factory=list)  # empty: every path
    exclude_extensions: list[str] = field(default_factory=lambda: [
        ".css", ".js", ".mjs", ".map", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp",
        ".ico", ".woff", ".woff2", ".ttf", ".json", ".xml", ".txt", ".pdf"])
    geoip_db: str | None = None
    batch_size: int = 20_000                   # a busy server inserts this many at once (see README)
    max_batch_size: int = 50_000               # a backlog is written in inserts of up to this many
    flush_interval: float = 1.0
    queue_size: int = 100_000
    shutdown_timeout: float = 5.0
    spool_max_bytes: int = 1 << 30
    collect_rate: float = 20.0                 # beacon requests per second per client (token bucket)
    collect_burst: int = 60
    choice_rate: float = 1.0                   # POST/DELETE /choice per second per client (token bucket)
    choice_burst: int = 20
    rights_rate: float = 0.2                   # GET /me, POST /me/block|unblock, DELETE /me per second per client
    rights_burst: int = 10
    erase_queue: int = 8                       # erasures waiting or running per process; more answer 503
    floating_button: bool = True
    allow_shorter_retention: bool = False      # let start-up migrate a shorter retention (deletes older rows)
    freeze_gc: bool = True                     # gc.freeze() the start-up heap (see consentmw/heap.py)
    minimise_worker: str = "auto"              # auto | on | off: minimise busy batches in a worker process

    _ENV = {
        "secret_key": "CONSENTMW_SECRET_KEY",
        "clickhouse_dsn": "CONSENTMW_CLICKHOUSE_DSN",
        "policy": "CONSENTMW_POLICY",
        "spool_dir": "CONSENTMW_SPOOL_DIR",
        "admin_token": "CONSENTMW_ADMIN_TOKEN",
        "database": "CONSENTMW_DATABASE",
        "cluster": "CONSENTMW_CLICKHOUSE_CLUSTER",
        "geoip_db": "CONSENTMW_GEOIP_DB",
        "trusted_proxies": "CONSENTMW_TRUSTED_PROXIES",
        "forwarded_header": "CONSENTMW_FORWARDED_HEADER",
        "cookie_domain": "CONSENTMW_COOKIE_DOMAIN",
        "allow_shorter_retention": "CONSENTMW_ALLOW_SHORTER_RETENTION",
        "freeze_gc": "CONSENTMW_FREEZE_GC",
        "minimise_worker": "CONSENTMW_MINIMISE_WORKER",
        "allowed_hosts": "CONSENTMW_ALLOWED_HOSTS",
    }

    @classmethod
    def build(cls, options: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> "Settings":
        """Merge keyword options, the environment and defaults, validating as it goes."""
        env = os.environ if environ is None else environ
        known = {f.name for f in fields(cls) if not f.name.startswith("_")}
        unknown = set(options) - known
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
        for name, var in cls._ENV.items():
            if name not in values and env.get(var):
                values[name] = env[var]
        secret = values.get("secret_key")
        if isinstance(secret, str):
            secret = _split(secret)
        if not secret:
            raise SettingsError("secret_key is required: pass secret_key=... or set CONSENTMW_SECRET_KEY")
        if any(len(k) < 16 for k in secret):
            raise SettingsError("secret_key: each key must be at least 16 characters")
        values["secret_key"] = list(secret)
        policy = values.get("policy")
        if policy is None:
            values["policy"] = Policy.default()
        elif isinstance(policy, (str, os.PathLike)):
            values["policy"] = Policy.from_file(policy)
        elif not isinstance(policy, Policy):
            raise SettingsError("policy must be a Policy or a path to a TOML file")
        for name in ("allow_shorter_retention", "freeze_gc"):
            flag = values.get(name)
            if isinstance(flag, str):
                if flag.strip().lower() not in ("1", "true", "yes", "0", "false", "no"):
                    raise SettingsError(f"CONSENTMW_{name.upper()} must be 1/true/yes or 0/false/no")
                values[name] = flag.strip().lower() in ("1", "true", "yes")
        worker = str(values.get("minimise_worker", "auto")).strip().lower()
        if worker not in ("auto", "on", "off"):
            raise SettingsError("minimise_worker must be 'auto', 'on' or 'off' (CONSENTMW_MINIMISE_WORKER)")
        values["minimise_worker"] = worker
        for name in ("trusted_proxies", "allowed_origins", "allowed_hosts"):
            if isinstance(values.get(name), str):
                values[name] = _split(values[name])
        for net in values.get("trusted_proxies", []):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise SettingsError(f"trusted_proxies: {net!r} is not an IP address or network") from None
        try:
            values["allowed_hosts"] = check_allowed_hosts(values.get("allowed_hosts", []))
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        forwarded_header = str(values.get("forwarded_header", "x-forwarded-for")).lower()
        if forwarded_header not in ("x-forwarded-for", "forwarded"):
            raise SettingsError("forwarded_header must be 'x-forwarded-for' or 'forwarded'")
        values["forwarded_header"] = forwarded_header
        if values.get("cluster") and str(values.get("clickhouse_dsn", DEFAULT_DSN)).startswith("chdb://"):
            raise SettingsError("cluster needs a ClickHouse server DSN (http://host:8123), not embedded chDB")
        for name in ("database", "cluster"):
            if values.get(name) is not None and not is_identifier(values[name]):
                raise SettingsError(f"{name} {str(values[name])[:80]!r} must be a plain ClickHouse identifier "
                                    "(letters, digits and '_', not starting with a digit)")
        token = values.get("admin_token")
        if token is not None and (not isinstance(token, str) or len(token.strip()) < ADMIN_TOKEN_MIN):
            raise SettingsError(f"admin_token must be at least {ADMIN_TOKEN_MIN} characters "
                                "(it guards /health, /metrics and the admin API): use a long random string")
        prefix = values.get("prefix", "/_consent")
        if not prefix.startswith("/") or prefix.endswith("/") or len(prefix) < 2:
            raise SettingsError("prefix must start with '/' and not end with one, e.g. '/_consent'")
        if int(values.get("cookie_max_age", 1)) > 400 * 86400:
            raise SettingsError("cookie_max_age: at most 400 days (34560000 s), the longest lifetime browsers keep")
        for name in ("batch_size", "max_batch_size", "queue_size", "cookie_max_age"):
            if name in values and (not isinstance(values[name], int) or values[name] <= 0):
                raise SettingsError(f"{name} must be a positive integer")
        return cls(**values)
