"""ClickHouse DSNs: parsed once, here, into `clickhouse_connect.get_client` keyword arguments.

clickhouse-connect's own DSN parsing passes `?user=...&password=...` on as duplicate
keyword arguments (a TypeError) and any unknown parameter as an unexpected one, so consentmw
parses every form it documents itself and hands the client plain keywords:

    chdb:///abs/dir  chdb://./rel/dir                     embedded chDB (one process)
    http://host:8123/  https://host:8443/                 a ClickHouse server
    http://user:password@host:8123/database               credentials and database in the URL
    http://host:8123/database?user=u&password=p           ... or as query parameters
    http://host:8123/?secure=true&ca_cert=/etc/ca.pem     TLS with a private CA (https implied)

A bad DSN raises `DsnError` naming what is wrong. `redact` hides the password for logs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from consentmw.core.redact import redact as redact_text, redact_dsn, remember_dsn

SERVER_SCHEMES = {"http": False, "https": True, "clickhouse": False, "clickhouses": True}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
#: query parameters a server DSN may carry, and how each is read
_BOOL_PARAMS = ("secure", "verify")
_INT_PARAMS = ("connect_timeout", "send_receive_timeout", "query_retries")
_STR_PARAMS = ("user", "username", "password", "database", "ca_cert", "client_cert", "client_cert_key",
               "server_host_name", "compress", "client_name")
_DATABASE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DsnError(ValueError):
    """The ClickHouse DSN cannot be used; the message says why and how to write it."""


@dataclass(frozen=True)
class Dsn:
    """Where the store lives: an embedded chDB directory, or a server and how to reach it."""

    text: str                              # the DSN as given (holds the password: never log it)
    chdb_path: str | None = None           # absolute directory for embedded chDB
    database: str | None = None            # the database named in the DSN, if any
    client_kwargs: dict[str, Any] = field(default_factory=dict)  # for clickhouse_connect.get_client

    @property
    def embedded(self) -> bool:
        return self.chdb_path is not None

    @property
    def password(self) -> str:
        return str(self.client_kwargs.get("password") or "")

    @property
    def redacted(self) -> str:
        return redact(self.text)

    @property
    def where(self) -> str:
        """A short, credential-free description for messages: chDB dir or scheme://host:port."""
        if self.chdb_path is not None:
            return f"chdb://{self.chdb_path}"
        kw = self.client_kwargs
        return f"{kw['interface']}://{kw['host']}:{kw['port']}"


def parse_dsn(text: str) -> Dsn:
    """Parse a chdb:// or http(s):// DSN; raise DsnError with the reason if it is unusable."""
    if not isinstance(text, str) or not text.strip():
        raise DsnError("clickhouse_dsn is empty: use chdb:///dir or http(s)://user:password@host:port/database")
    text = text.strip()
    if text.startswith("chdb://"):
        path = text[len("chdb://"):].split("?", 1)[0] or "./consentmw-data"
        return Dsn(text=text, chdb_path=os.path.abspath(os.path.expanduser(path)))
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise DsnError(f"clickhouse_dsn {redact(text)!r} is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in SERVER_SCHEMES:
        raise DsnError(f"clickhouse_dsn {redact(text)!r}: unsupported scheme {parts.scheme!r}; "
                       "use chdb:///dir (embedded) or http(s)://host:port (a ClickHouse server)")
    if not parts.hostname:
        raise DsnError(f"clickhouse_dsn {redact(text)!r} names no host: http(s)://host:8123/")
    if parts.fragment:
        raise DsnError(f"clickhouse_dsn {redact(text)!r}: a '#' fragment has no meaning here")
    params = _params(text, parts.query)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    for alias in ("user", "username"):
        if alias in params:
            if user is not None:
                raise DsnError(f"clickhouse_dsn {redact(text)!r} names the user twice (before '@' and as {alias}=)")
            user = str(params.pop(alias))
    if "password" in params:
        if password is not None:
            raise DsnError(f"clickhouse_dsn {redact(text)!r} gives the password twice (after ':' and as password=)")
        password = str(params.pop("password"))
    database = _database(text, parts.path, params.pop("database", None))
    secure = SERVER_SCHEMES[scheme]
    if "secure" in params:
        wanted = bool(params.pop("secure"))
        if scheme in ("https", "clickhouses") and not wanted:
            raise DsnError(f"clickhouse_dsn {redact(text)!r}: secure=false contradicts {scheme}://")
        secure = secure or wanted
    for name in ("ca_cert", "client_cert", "client_cert_key"):
        value = params.get(name)
        if value and not (name == "ca_cert" and value == "certifi") and not os.path.isfile(value):
            raise DsnError(f"clickhouse_dsn: {name}={value!r} is not a readable file")
    if not secure and any(k in params for k in ("ca_cert", "client_cert", "client_cert_key", "verify")):
        raise DsnError(f"clickhouse_dsn {redact(text)!r}: TLS options need https:// (or secure=true)")
    kwargs: dict[str, Any] = {
        "interface": "https" if secure else "http",
        "host": parts.hostname,
        "port": port or (8443 if secure else 8123),
        "username": user or "default",
        "password": password or "",
        **params,
    }
    if database:
        kwargs["database"] = database
    remember_dsn(text)  # masked wherever it shows up from now on
    return Dsn(text=text, database=database, client_kwargs=kwargs)


def _params(text: str, query: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise DsnError(f"clickhouse_dsn {redact(text)!r}: malformed query string") from None
    known = _BOOL_PARAMS + _INT_PARAMS + _STR_PARAMS
    for name, value in pairs:
        if name not in known:
            raise DsnError(f"clickhouse_dsn: unknown parameter {name!r} (known: {', '.join(sorted(known))})")
        if name in out:
            raise DsnError(f"clickhouse_dsn: parameter {name!r} is given twice")
        if name in _BOOL_PARAMS:
            low = value.lower()
            if low not in _TRUE | _FALSE:
                raise DsnError(f"clickhouse_dsn: {name}={value!r} must be true or false")
            out[name] = low in _TRUE
        elif name in _INT_PARAMS:
            if not value.isdigit() or int(value) <= 0:
                raise DsnError(f"clickhouse_dsn: {name}={value!r} must be a positive whole number")
            out[name] = int(value)
        else:
            out[name] = value
    if "compress" in out:
        low = out["compress"].lower()
        out["compress"] = True if low in _TRUE else False if low in _FALSE else low
    return out


def _database(text: str, path: str, param: str | None) -> str | None:
    segments = [unquote(s) for s in path.split("/") if s]
    if len(segments) > 1:
        raise DsnError(f"clickhouse_dsn {redact(text)!r}: the path names one database, e.g. http://host:8123/analytics")
    from_path = segments[0] if segments else None
    if from_path and param and from_path != param:
        raise DsnError(f"clickhouse_dsn {redact(text)!r} names two databases ({from_path!r} and database={param!r})")
    database = from_path or param or None
    if database is not None and not _DATABASE.match(database):
        raise DsnError(f"clickhouse_dsn: database name {database!r} must be letters, digits and '_'")
    return database


def redact(text: str) -> str:
    """The DSN with its password replaced by '***' (in the userinfo and in password=).

    The rule lives in `consentmw.core.redact`, the one helper every message goes through.
    """
    if not isinstance(text, str):
        return "<not a string>"
    return redact_dsn(text)


def scrub(message: str, dsn: Dsn) -> str:
    """A driver message with the DSN's password (raw and URL-quoted) removed, for logs."""
    remember_dsn(dsn.text)
    return redact_text(message)


def choose_database(dsn: Dsn, configured: str, default: str = "consentmw") -> str:
    """The database consentmw's tables live in: the one the DSN names, else the setting.

    A DSN that names a database (`http://host:8123/analytics`) means that database, which
    must already exist (managed servers rarely let an application create databases); a
    `database` setting naming another one is a contradiction, not a silent choice.
    """
    if dsn.database is None or dsn.database == configured:
        return configured
    if configured == default:
        return dsn.database
    raise DsnError(f"clickhouse_dsn names database {dsn.database!r} but the database setting is "
                   f"{configured!r}: keep one of them")
