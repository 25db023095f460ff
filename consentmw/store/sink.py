"""The ClickHouse sink: one clickhouse-connect client for chDB (embedded) or a server.

Batches arrive as Arrow tables and are inserted as they are (no DESCRIBE per
insert, no per-value Python encoding). Each insert carries a deduplication token, so a
batch retried after a lost answer is stored once. Any failure is raised as `SinkError`
for the writer to spool the batch.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import math
import os
import threading
import weakref
from typing import Any

import pyarrow as pa

from consentmw.core.redact import redact
from consentmw.store.chdb_lock import locked_elsewhere
from consentmw.store.dsn import Dsn, DsnError, parse_dsn, scrub
from consentmw.core.fields import table_for
from consentmw.store.schema import MERGE_SELECTOR_BASE, SCHEMA_VERSION, Schema, current_retention, version_key


EMBEDDED_EXTRA = "pip install 'consentmw[embedded]'"


log = logging.getLogger("consentmw")


class SinkError(RuntimeError):
    """The store could not take a batch (down, slow, full, or it refused it).

    Its text is redacted (no DSN password), and it is raised `from None`: the driver's
    own exception may repeat the URL with its credentials.
    """

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class StoreLockedError(SinkError):
    """The chDB directory belongs to another process."""


class EmbeddedStoreConflict(DsnError):
    """This process already uses another chDB data directory (chDB allows one per process)."""


#: the embedded sinks alive in this process: all must share one chDB data directory
_EMBEDDED: "weakref.WeakSet[ClickHouseSink]" = weakref.WeakSet()


def _claim_embedded(sink: "ClickHouseSink") -> None:
    """Refuse a second chDB data directory in this process, at construction (start-up),
    instead of a sink that could never connect and would spool forever."""
    for attempt in range(2):
        others = sorted({s.chdb_path for s in _EMBEDDED if s.chdb_path != sink.chdb_path and s.chdb_path})
        if not others:
            break
        if attempt == 0:
            gc.collect()  # sinks of discarded apps may still wait for the collector
            continue
        raise EmbeddedStoreConflict(
            f"this process already uses the embedded chDB store at {others[0]}; another one at "
            f"{sink.chdb_path} cannot be opened (chDB allows one data directory per process): give "
            "every ConsentMiddleware the same clickhouse_dsn (a different `database` keeps their data "
            "apart) or use a ClickHouse server")
    _EMBEDDED.add(sink)


class StoreConfigError(SinkError):
    """The server answers but refuses us (credentials, rights, missing database): retrying
    cannot help until an operator fixes the DSN or the server; events spool meanwhile."""


class BatchRefused(SinkError):
    """The store is up and read the batch, but refused values in it (a malformed UUID, an
    address of the wrong width, a violated constraint): retrying the same rows cannot help,
    so the writer splits the batch, stores the rows it takes and quarantines the rest."""


class SchemaMissing(SinkError):
    """A read-only command found no consentmw schema: nothing to read (and it creates none)."""


class MigrationRefused(StoreConfigError):
    """Migrating would shorten a retention (deleting rows) without the operator's consent."""


class NewerSchema(SinkError):
    """The schema was migrated by a newer policy version: an older policy leaves it alone."""


def _usable(dsn: str) -> Dsn:
    """The parsed DSN, if this installation can use it (chDB is an extra)."""
    parsed = parse_dsn(dsn)
    if parsed.chdb_path and importlib.util.find_spec("chdb") is None:
        raise DsnError(f"clickhouse_dsn {dsn[:80]!r} is the embedded store, which needs chDB: {EMBEDDED_EXTRA}")
    return parsed


def resolve_dsn(dsn: str) -> tuple[str, str | None]:
    """Normalise a DSN; for chDB return the absolute data directory as well."""
    parsed = _usable(dsn)
    return ("chdb://" + parsed.chdb_path if parsed.chdb_path else parsed.text), parsed.chdb_path


#: ClickHouse exception codes that no retry can fix: the DSN or the server's users must change
_CONFIG_ERRORS = {
    516: "refused the credentials (AUTHENTICATION_FAILED): check the user and password in the DSN",
    192: "knows no such user (UNKNOWN_USER): check the user in the DSN",
    193: "refused the password (WRONG_PASSWORD): check the password in the DSN",
    194: "requires a password (REQUIRED_PASSWORD): add one to the DSN",
    497: "denied access (ACCESS_DENIED): grant the user rights on the database",
    81: "has no such database (UNKNOWN_DATABASE): create it, or name an existing one in the DSN",
}


#: ClickHouse exception codes meaning "these values cannot be stored": the server (or chDB)
#: parsed the insert and refused rows in it. Anything else (connection refused, timeout,
#: HTTP 5xx without a code, full disk, too many parts, memory limit, unknown table) is the
#: store being unavailable or misconfigured: the batch is spooled and retried, never split.
DATA_ERRORS = {
    6: "CANNOT_PARSE_TEXT", 25: "CANNOT_PARSE_ESCAPE_SEQUENCE", 26: "CANNOT_PARSE_QUOTED_STRING",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED", 38: "CANNOT_PARSE_DATE", 41: "CANNOT_PARSE_DATETIME",
    53: "TYPE_MISMATCH", 69: "ARGUMENT_OUT_OF_BOUND", 70: "CANNOT_CONVERT_TYPE", 72: "CANNOT_PARSE_NUMBER",
    117: "INCORRECT_DATA", 128: "TOO_LARGE_ARRAY_SIZE", 130: "CANNOT_READ_ARRAY_FROM_TEXT",
    131: "TOO_LARGE_STRING_SIZE", 190: "SIZES_OF_ARRAYS_DONT_MATCH", 321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN", 376: "CANNOT_PARSE_UUID", 395: "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO",
    407: "DECIMAL_OVERFLOW", 441: "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", 467: "CANNOT_PARSE_BOOL",
    469: "VIOLATED_CONSTRAINT", 632: "UNEXPECTED_DATA_AFTER_PARSED_VALUE", 675: "CANNOT_PARSE_IPV4",
    676: "CANNOT_PARSE_IPV6", 691: "UNKNOWN_ELEMENT_OF_ENUM",
}


def refuses_rows(exc: BaseException) -> bool:
    """True when an insert failed because of the rows it carried, not because of the store:
    a ClickHouse data error (see DATA_ERRORS), or Arrow failing to encode the batch."""
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    if isinstance(exc, (pa.ArrowException, UnicodeError)):
        return True
    return (isinstance(exc, DatabaseError) and not isinstance(exc, OperationalError)
            and getattr(exc, "code", None) in DATA_ERRORS)


class ClickHouseSink:
    """Inserts Arrow batches into one ClickHouse database; creates and migrates its schema."""

    def __init__(self, dsn: str, schema: Schema, *, connect_timeout: float = 3.0,
                 send_receive_timeout: float = 10.0, migrate: bool = True,
                 allow_shorter_retention: bool = False) -> None:
        """`migrate=False` opens the store read-only for the schema: it must exist (operator
        commands other than `migrate` read or delete rows but never change tables).
        `allow_shorter_retention` lets a migration lower a purpose's TTL (deleting older rows)."""
        self.auto_migrate = migrate
        self.allow_shorter_retention = allow_shorter_retention
        self.address = _usable(dsn)
        self.chdb_path = self.address.chdb_path
        #: the DSN for messages: the password is never shown
        self.dsn = "chdb://" + self.chdb_path if self.chdb_path else self.address.redacted
        if self.chdb_path and not migrate and not os.path.isdir(os.path.join(self.chdb_path, "metadata")):
            # read-only: a mistyped directory must not become a new, empty store
            raise SchemaMissing(f"no chDB store at {self.chdb_path}: check --dsn / CONSENTMW_CLICKHOUSE_DSN "
                                "(`consentmw migrate` creates one)")
        if self.chdb_path:
            _claim_embedded(self)
        self.schema = schema
        self.database = schema.database
        # clickhouse-connect truncates timeouts to whole seconds: below 1 s would mean "none".
        self._connect_timeout = max(1, math.ceil(connect_timeout))
        self._timeout = max(1, math.ceil(send_receive_timeout))
        self._client: Any = None
        self._migrated = False
        self._lock = threading.Lock()

    @property
    def embedded(self) -> bool:
        return self.chdb_path is not None

    # -- connection ----------------------------------------------------------
    def client(self) -> Any:
        """The shared client, connecting (and migrating) on first use."""
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            if not self._migrated:
                if not self.auto_migrate:
                    self._check_schema(self._client)
                else:
                    try:
                        self.migrate(self._client)
                    except NewerSchema as exc:  # a rolling deploy: the newer policy's schema serves us too
                        log.warning("consentmw: %s", exc)
                self._migrated = True
            return self._client

    def apply_migration(self) -> None:
        """Migrate now, raising NewerSchema and MigrationRefused (what `consentmw migrate` runs)."""
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            self.migrate(self._client)
            self._migrated = True

    def _check_schema(self, client: Any) -> None:
        """A read-only opening: the schema must be there already."""
        if not client.command(f"EXISTS TABLE {self.database}.schema_migrations"):
            raise SchemaMissing(f"no consentmw schema in database {self.database} at {self.dsn}: "
                                "create it with `consentmw migrate` (the running app creates it too)")

    def _connect(self) -> Any:
        import clickhouse_connect

        try:
            if self.chdb_path is not None:
                os.makedirs(self.chdb_path, exist_ok=True)
                return clickhouse_connect.get_client(dsn=self.dsn)
            options: dict[str, Any] = {"connect_timeout": self._connect_timeout,
                                       "send_receive_timeout": self._timeout,
                                       "autogenerate_session_id": False, **self.address.client_kwargs}
            return clickhouse_connect.get_client(**options)
        except Exception as exc:  # noqa: BLE001 - every driver error means "not reachable now"
            message = scrub(str(exc), self.address)
            if self.chdb_path and ("lock" in message.lower() or locked_elsewhere(self.chdb_path)):
                raise StoreLockedError(
                    f"the chDB data directory {self.chdb_path} is in use by another process. "
                    "chDB allows one process per directory: run a single worker, or point "
                    "CONSENTMW_CLICKHOUSE_DSN at a ClickHouse server (http://host:8123) for several."
                ) from None
            self._refused(exc)
            first = message.splitlines()[0][:300] if message else type(exc).__name__
            raise SinkError(f"cannot connect to ClickHouse at {self.dsn}: {first}") from None

    def _refused(self, exc: Exception) -> None:
        """Raise StoreConfigError if the server refused us for a reason no retry can fix."""
        problem = _CONFIG_ERRORS.get(getattr(exc, "code", None) or 0)
        if problem is not None:
            user = self.address.client_kwargs.get("username", "default")
            db = self.address.database
            raise StoreConfigError(f"ClickHouse at {self.address.where} (user {user!r}"
                                   f"{f', database {db!r}' if db else ''}) {problem}") from None

    def migrate(self, client: Any | None = None) -> None:
        """Create or upgrade the schema (idempotent), forward only.

        Refused (NewerSchema) when a newer policy version already migrated it: an older
        process in a rolling deploy must not undo a newer one's columns or TTLs. Refused
        (MigrationRefused) when the policy shortens a purpose's retention, which deletes
        every row older than the new one, unless `allow_shorter_retention`.
        """
        client = client or self._client
        try:
            self._check_forward(client)
            for statement in self.schema.statements():
                client.command(statement)
            self._tune_merges(client)
            client.command(
                f"INSERT INTO {self.database}.schema_migrations (version, policy_version) "
                f"SELECT {SCHEMA_VERSION}, %(v)s WHERE NOT EXISTS (SELECT 1 FROM {self.database}.schema_migrations "
                f"WHERE version = {SCHEMA_VERSION} AND policy_version = %(v)s)",
                parameters={"v": self.schema.policy.version})
        except SinkError:
            raise
        except Exception as exc:  # noqa: BLE001
            self._refused(exc)
            raise SinkError(f"schema migration failed: {scrub(str(exc), self.address).splitlines()[0][:300]}") from None

    def _tune_merges(self, client: Any) -> None:
        """Fewer rewrites per row for the tables written every second (`MERGE_SELECTOR_BASE`).

        Only where the server knows the setting (ClickHouse 24.x and later; chDB does), and
        only on tables that do not name it yet: a value an operator set stays theirs. A tuning,
        not the schema: a user not allowed to change table settings gets a warning, not a failure.
        """
        try:
            known = client.command("SELECT count() FROM system.merge_tree_settings WHERE name = 'merge_selector_base'")
            if not int(known):
                return
            for table in self.schema.merge_tuned_tables():
                db, name = table.split(".", 1)
                rows = client.query("SELECT create_table_query FROM system.tables WHERE database = %(d)s AND name = %(t)s",
                                    parameters={"d": db, "t": name}).result_rows
                if rows and "merge_selector_base" not in rows[0][0]:
                    client.command(f"ALTER TABLE {table}{self.schema.on_cluster} "
                                   f"MODIFY SETTING merge_selector_base = {MERGE_SELECTOR_BASE}")
        except Exception as exc:  # noqa: BLE001
            log.warning("consentmw: merge tuning of the event tables skipped (%s); the store works as before",
                        scrub(str(exc), self.address).splitlines()[0][:200] if str(exc) else type(exc).__name__)

    def _check_forward(self, client: Any) -> None:
        """Raise NewerSchema or MigrationRefused (see `migrate`); nothing to check on a new store."""
        db, policy = self.database, self.schema.policy
        if not client.command(f"EXISTS TABLE {db}.schema_migrations"):
            return
        applied = [r[0] for r in client.query(f"SELECT DISTINCT policy_version FROM {db}.schema_migrations").result_rows]
        newest = max(applied, key=version_key, default=None)
        if newest is not None and version_key(policy.version) < version_key(newest):
            raise NewerSchema(f"the schema in {db} was migrated by policy version {newest!r}, newer than this "
                              f"policy's {policy.version!r}: it is left as it is (migrations only go forward)")
        if self.allow_shorter_retention:
            return
        shorter = []
        for purpose in policy.collecting:
            local = self.schema.local(table_for(purpose.id))
            days = current_retention(client, *local.split(".", 1))
            if days is not None and purpose.retention_days < days:
                shorter.append(f"{purpose.id} from {days} to {purpose.retention_days} days")
        if shorter:
            raise MigrationRefused(
                f"policy {policy.version!r} shortens the retention of {', '.join(shorter)}: every older row would "
                "be deleted. Confirm with `consentmw migrate --allow-shorter-retention` (or the setting "
                "allow_shorter_retention=True / CONSENTMW_ALLOW_SHORTER_RETENTION=1)")

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception:  # noqa: BLE001
                    pass
                self._client = None
                self._migrated = False

    # -- writes --------------------------------------------------------------
    def insert(self, table: str, data: pa.Table, token: str) -> None:
        """Insert one table's batch; raises BatchRefused when the store refused values in it,
        SinkError on any other failure."""
        settings: dict[str, Any] = {"insert_deduplication_token": token}
        if not self.embedded:
            # Server inserts go through ClickHouse's async insert buffer (several app servers'
            # batches merge into fewer parts); the token still deduplicates a retried batch
            # only with async_insert_deduplicate.
            settings.update(async_insert=1, wait_for_async_insert=1, async_insert_deduplicate=1)
        try:
            client = self.client()
            client.insert_arrow(f"{self.database}.{table}", data, settings=settings)
        except SinkError:
            raise
        except Exception as exc:  # noqa: BLE001
            if refuses_rows(exc):
                raise BatchRefused(f"ClickHouse refused rows for {table}: {_first_line(exc)}") from None
            self._reset_after(exc)
            raise SinkError(f"insert into {table} failed: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}") from None

    def _reset_after(self, exc: Exception) -> None:
        """Drop a server connection after a network failure so the next try reconnects."""
        if not self.embedded:
            with self._lock:
                self._client = None
                self._migrated = False

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return self.client().query(sql, parameters=parameters)

    def command(self, sql: str, parameters: dict[str, Any] | None = None,
                settings: dict[str, Any] | None = None) -> Any:
        return self.client().command(sql, parameters=parameters, settings=settings)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__
