"""The embedded backend: stdlib sqlite3, in WAL mode with a busy timeout.

WAL lets readers run while a writer commits: without it an auth lookup during a usrloc
flush fails with "database is locked" (Kamailio's db_sqlite: 7% of REGISTERs at
1,000/s). The busy timeout makes writers queue for each other instead of failing.
``synchronous=NORMAL`` is durable across a process crash (not a power cut) and keeps a
commit to one write(2) in WAL mode.

Autocommit for single statements (``isolation_level=None``); ``transaction()`` issues
``BEGIN IMMEDIATE`` so a batch takes the write lock up front and never has to upgrade a
read lock midway (the upgrade cannot wait on the busy handler and fails at once).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from natserver.db import Database, DbUnavailable, DbIntegrityError, Row, schema
from natserver.errors import DbError

log = logging.getLogger("natserver.db")

# Error texts that mean "try later", not "your SQL is wrong".
_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o", "readonly", "read-only")


class SqliteDatabase(Database):
    dialect = "sqlite"
    _quote = '"'
    _placeholder = "?"
    _driver_errors = (sqlite3.Error,)

    @property
    def path(self) -> str:
        return self.url.path

    def _connect(self) -> sqlite3.Connection:
        busy_ms = self.url.options.get("busy_timeout", 5000)
        directory = os.path.dirname(self.url.path)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise DbUnavailable(f"sqlite: cannot create {directory}: {exc}") from exc
        conn = sqlite3.connect(
            self.url.path,
            timeout=busy_ms / 1000.0,
            isolation_level=None,
            check_same_thread=False,  # the Database lock serialises access
            cached_statements=256,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
            mode = self._wal(conn, busy_ms / 1000.0)
            if mode != "wal":
                log.warning("db %s: journal_mode is %s, not wal", self.url.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    @staticmethod
    def _wal(conn: sqlite3.Connection, timeout: float) -> str:
        """Switch the file to WAL (a property of the file, set once by the first opener).

        The switch needs an exclusive lock and SQLite does not wait on the busy handler
        for it: processes opening a new database at once get "database is locked", so
        wait here, within the busy timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
                if mode != "wal":
                    mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
                return mode
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _run(
        self, conn: sqlite3.Connection, sql: str, params: Any, many: bool
    ) -> tuple[list[Row], int, int]:
        cur = conn.executemany(sql, params) if many else conn.execute(sql, params)
        rows = cur.fetchall() if cur.description else []
        return rows, cur.rowcount, cur.lastrowid or 0

    def _classify(self, exc: BaseException) -> type[DbError]:
        if isinstance(exc, sqlite3.IntegrityError):
            return DbIntegrityError
        text = str(exc).lower()
        if isinstance(exc, sqlite3.OperationalError) and any(t in text for t in _TRANSIENT):
            return DbUnavailable
        return DbError

    def _begin(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def _commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def _list_tables(self, conn: sqlite3.Connection) -> set[str]:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {r[0] for r in rows}

    def _upsert_sql(self, table: str, cols: list[str], keys: Sequence[str]) -> str:
        names = ", ".join(f'"{c}"' for c in cols)
        marks = ", ".join("?" * len(cols))
        target = ", ".join(f'"{k}"' for k in keys)
        updates = ", ".join(f'"{c}" = excluded."{c}"' for c in cols if c not in keys)
        action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        return f'INSERT INTO "{table}" ({names}) VALUES ({marks}) ON CONFLICT ({target}) {action}'

    def journal_mode(self) -> str:
        """The journal mode in force (``"wal"`` unless the file system refused it)."""
        return str(self.execute("PRAGMA journal_mode")[0][0]).lower()

    def time_to_db(self, t: float) -> float:
        return schema.epoch_to_julian(t)

    def time_from_db(self, value: Any) -> int:
        if isinstance(value, (int, float)):
            return schema.julian_to_epoch(float(value))
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        return schema.utc_text_to_epoch(str(value))
