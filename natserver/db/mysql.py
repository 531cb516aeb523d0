"""The MySQL/MariaDB backend (pymysql), autocommit with explicit transactions.

``CLIENT.FOUND_ROWS`` makes UPDATE report the rows it matched, as SQLite does, so
``update()`` means the same on both backends (MySQL otherwise counts only rows whose
values changed). The connection is ``utf8mb4``.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import pymysql
from pymysql.constants import CLIENT

from natserver.db import Database, DbIntegrityError, DbUnavailable, Row, schema
from natserver.errors import DbError

# Client and server codes that mean the session is gone: 2006 server has gone away,
# 2013 lost connection during query, 2055 lost connection at ..., 2003/2002 cannot
# connect, 1927 MariaDB "connection was killed", 1053 server shutdown in progress,
# 4031 MySQL 8 idle disconnect, 0 pymysql's "connection already closed".
LOST_CODES = frozenset((0, 1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031))
# InnoDB chose this statement's transaction as a deadlock victim (1213) or gave up
# waiting for a row lock (1205): transient, worth one more try.
RETRY_CODES = frozenset((1205, 1213))


class MysqlDatabase(Database):
    dialect = "mysql"
    _quote = "`"
    _placeholder = "%s"
    _driver_errors = (pymysql.err.MySQLError,)

    def _connect(self) -> pymysql.connections.Connection:
        u = self.url
        opts = u.options
        return pymysql.connect(
            host=u.host,
            port=u.port,
            unix_socket=u.unix_socket or None,
            user=u.user,
            password=u.password,
            database=u.database,
            charset="utf8mb4",
            autocommit=True,
            client_flag=CLIENT.FOUND_ROWS,
            connect_timeout=opts.get("connect_timeout") or None,
            read_timeout=opts.get("read_timeout") or None,
            write_timeout=opts.get("write_timeout") or None,
        )

    def _run(self, conn: Any, sql: str, params: Any, many: bool) -> tuple[list[Row], int, int]:
        with conn.cursor() as cur:
            if many:
                cur.executemany(sql, params)
            else:
                cur.execute(sql, params)
            rows = list(cur.fetchall()) if cur.description else []
            return rows, cur.rowcount, cur.lastrowid or 0

    def _is_lost(self, exc: BaseException) -> bool:
        if isinstance(exc, pymysql.err.InterfaceError):
            return True
        if isinstance(exc, pymysql.err.OperationalError):
            return bool(exc.args) and exc.args[0] in LOST_CODES
        return False

    def _is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, pymysql.err.OperationalError) and bool(exc.args) and (
            exc.args[0] in RETRY_CODES)

    def _classify(self, exc: BaseException) -> type[DbError]:
        if isinstance(exc, pymysql.err.IntegrityError):
            return DbIntegrityError
        if self._is_retryable(exc):
            return DbUnavailable
        return DbError

    def _begin(self, conn: Any) -> None:
        conn.begin()

    def _commit(self, conn: Any) -> None:
        conn.commit()

    def _rollback(self, conn: Any) -> None:
        conn.rollback()

    def _ping(self, conn: Any) -> None:
        conn.ping(reconnect=False)

    def _close(self, conn: Any) -> None:
        if conn.open:
            conn.close()

    def _list_tables(self, conn: Any) -> set[str]:
        rows, _, _ = self._run(
            conn,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
            (),
            False,
        )
        return {r[0] for r in rows}

    def _upsert_sql(self, table: str, cols: list[str], keys: Sequence[str]) -> str:
        names = ", ".join(f"`{c}`" for c in cols)
        marks = ", ".join(["%s"] * len(cols))
        updates = ", ".join(f"`{c}` = VALUES(`{c}`)" for c in cols if c not in keys)
        if not updates:  # nothing to change: a no-op assignment keeps the existing row
            updates = f"`{keys[0]}` = `{keys[0]}`"
        return f"INSERT INTO `{table}` ({names}) VALUES ({marks}) ON DUPLICATE KEY UPDATE {updates}"

    def _translate(self, sql: str) -> str:
        """``?`` -> ``%s`` outside quoted text; a literal ``%`` -> ``%%`` (pymysql formats
        the statement with ``%``)."""
        out = []
        quote = ""
        escaped = False
        for ch in sql:
            if escaped:
                escaped = False
            elif quote:
                if ch == "\\":
                    escaped = True
                elif ch == quote:
                    quote = ""
            elif ch in "'\"`":
                quote = ch
            elif ch == "?":
                out.append("%s")
                continue
            out.append("%%" if ch == "%" else ch)
        return "".join(out)

    def time_to_db(self, t: float) -> str:
        return schema.epoch_to_datetime(t)

    def time_from_db(self, value: Any) -> int:
        if isinstance(value, (datetime.datetime, str)):
            return schema.datetime_to_epoch(value)
        if isinstance(value, datetime.date):
            return schema.datetime_to_epoch(datetime.datetime(value.year, value.month, value.day))
        if isinstance(value, bytes):
            return schema.datetime_to_epoch(value.decode("ascii", "replace"))
        return int(value)
