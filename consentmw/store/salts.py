"""The visitor-hash salt of each day, kept in ClickHouse and shared by every process.

Workers, restarts and app servers must hash one visitor to one code per day, so the
day's random salt lives in the store (table `daily_salts`), created once per day:

* a process first reads the day's row; only if there is none does it insert a random
  candidate, with the insert deduplication token `daily-salt:<day>`. ClickHouse keeps the
  first block with a token and silently drops later ones (MergeTree's deduplication window,
  or Keeper on a replicated table), so when processes race exactly one candidate is stored;
* everyone then reads the stored row (ordered by the server's insert time should two ever
  coexist), and the loser of a race uses the winner's salt.

Creating a day's salt deletes those older than `keep_days` (lightweight DELETE), and the
table's row TTL removes them at the next merge as well: a code cannot be recomputed, or
linked to another day's, once its salt is gone.
"""

from __future__ import annotations

import datetime as dt
import os
import socket

from consentmw.store.schema import SALT_TABLE as TABLE
from consentmw.store.sink import ClickHouseSink, SinkError

class SaltStore:
    """Reads, or creates once, the shared salt of a UTC day number (days since the epoch)."""

    def __init__(self, sink: ClickHouseSink, keep_days: int = 2) -> None:
        self.sink = sink
        self.table = f"{sink.database}.{TABLE}"
        self.keep_days = keep_days
        self._writer = f"{socket.gethostname()}:{os.getpid()}"

    def load(self, day: int) -> bytes:
        date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
        found = self._read(date)
        if found is None:
            self.propose(day)
            found = self._read(date)
        if found is None:
            raise SinkError(f"the salt of {date} was written but cannot be read back")
        return bytes.fromhex(found)

    def propose(self, day: int) -> None:
        """Insert a random candidate for the day (dropped by deduplication if one was stored
        first) and delete the salts that are too old."""
        date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
        self.sink.command(
            f"INSERT INTO {self.table} (day, salt, writer) VALUES (%(day)s, %(salt)s, %(writer)s)",
            parameters={"day": date, "salt": os.urandom(16).hex(), "writer": self._writer},
            settings={"insert_deduplication_token": f"daily-salt:{day}", "async_insert": 0})
        old = {"old": date - dt.timedelta(days=self.keep_days)}
        if self.sink.command(f"SELECT count() FROM {self.table} WHERE day <= %(old)s", parameters=old):
            self.sink.command(f"DELETE FROM {self.table} WHERE day <= %(old)s", parameters=old)

    def _read(self, date: dt.date) -> str | None:
        rows = self.sink.query(f"SELECT argMin(salt, (created, writer)), count() FROM {self.table} "
                               f"WHERE day = %(day)s", {"day": date}).result_rows
        salt, n = rows[0]
        return str(salt) if n else None
