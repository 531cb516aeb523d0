"""Storage: one small interface over SQLite (stdlib) and MySQL/MariaDB (pymysql).

``open_db(url)`` returns a ``Database``; ``url`` is a ``db_url`` (see
``natserver.db.url``). Every statement is parameterised: values never become SQL text,
and table/column names must belong to ``natserver.db.schema.TABLES`` (``ValueError``
otherwise - a programming or configuration error, not a database failure).

Values: ``str``/``int``/``float``/``None``; ``bytes`` are decoded as UTF-8 (invalid
UTF-8 raises ``DbError``). Text comes back as ``str``. DATETIME columns (``expires``,
``last_modified``) are epoch seconds both ways in ``select``/``insert``/``update``/
``replace``/``where``; ``schema.NEVER`` (0) is "permanent". ``execute`` is the raw
escape hatch: it returns what the driver returns (``time_from_db`` converts).

Failures raise ``DbError`` (from ``natserver.errors``): ``DbUnavailable`` when the
database cannot answer now (server down, connection lost and not re-established,
SQLite locked past the busy timeout, InnoDB deadlock), ``DbIntegrityError`` for a
duplicate key, plain ``DbError`` for bad SQL. A lost MySQL connection is re-opened once
and the statement retried once (a deadlock victim is retried once too), except inside
``transaction()``, whose earlier statements died with the connection: there the
``DbUnavailable`` propagates and the block is rolled back (the caller flushes again).
A statement retried after "lost connection during query" may have run once already
(as in Kamailio); usrloc's writes are keyed upserts, so a repeat is harmless.

Processes: a ``Database`` is one connection for one process. Open it after fork (in
``child_init``), or let it notice: a ``Database`` inherited through ``fork()`` drops
the parent's connection in the child without touching it (no COM_QUIT on the shared
socket, no SQLite close of the shared file) and connects anew on first use. Threads
may share one ``Database``; calls are serialised by a lock.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

from natserver.db import schema
from natserver.db.url import DbUrl, parse_db_url
from natserver.errors import DbError

log = logging.getLogger("natserver.db")

Value = str | bytes | int | float | None
Row = tuple[Any, ...]
T = TypeVar("T")
# A reusable SELECT: its text, the result positions holding DATETIME values, and the
# where columns in order with "is a DATETIME column".
_Plan = tuple[str, tuple[int, ...], tuple[tuple[str, bool], ...]]

_OPS = frozenset(("=", "!=", "<>", "<", "<=", ">", ">="))
_SEQUENCES = (list, tuple, set, frozenset)

__all__ = [
    "Database",
    "DbError",
    "DbIntegrityError",
    "DbUnavailable",
    "DbUrl",
    "open_db",
    "parse_db_url",
]


class DbUnavailable(DbError):
    """The database could not be reached (down, connection lost, locked too long)."""


class DbIntegrityError(DbError):
    """A constraint refused the row (duplicate unique key, NOT NULL)."""


def open_db(url: str | DbUrl, *, tables: Mapping[str, schema.Table] | None = None) -> Database:
    """Open the database named by ``url``; connects lazily, on first use.

    ``tables`` (default ``schema.TABLES``) is the set of names the instance accepts.
    """
    parsed = parse_db_url(url) if isinstance(url, str) else url
    if parsed.scheme == "sqlite":
        from natserver.db.sqlite import SqliteDatabase

        return SqliteDatabase(parsed, tables)
    from natserver.db.mysql import MysqlDatabase

    return MysqlDatabase(parsed, tables)


def _forget_after_fork(ref: weakref.ref[Database]) -> None:
    db = ref()
    if db is not None:
        db._after_fork_in_child()


class Database:
    """The interface; ``SqliteDatabase`` and ``MysqlDatabase`` supply the driver hooks."""

    dialect: ClassVar[str] = ""
    _quote: ClassVar[str] = '"'
    _placeholder: ClassVar[str] = "?"
    _driver_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, url: DbUrl, tables: Mapping[str, schema.Table] | None = None) -> None:
        self.url = url
        self.tables_def: Mapping[str, schema.Table] = schema.TABLES if tables is None else tables
        self.connects = 0  # connections opened, first one included (tests and stats)
        self._conn: Any = None
        self._lock = threading.RLock()
        self._tx_depth = 0
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        # Connections inherited through fork: kept referenced so they are never closed
        # (closing would end the parent's session or release the parent's file).
        self._inherited: list[Any] = []
        os.register_at_fork(after_in_child=functools.partial(_forget_after_fork, weakref.ref(self)))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url.redacted()}>"

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- driver hooks ----------------------------------------------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _run(self, conn: Any, sql: str, params: Any, many: bool) -> tuple[list[Row], int, int]:
        """Run one statement: (rows, rowcount, lastrowid)."""
        raise NotImplementedError

    def _is_lost(self, exc: BaseException) -> bool:
        """True when ``exc`` means the connection is gone (reconnect and retry)."""
        return False

    def _is_retryable(self, exc: BaseException) -> bool:
        """True when the server rolled the statement back and asks for a retry."""
        return False

    def _classify(self, exc: BaseException) -> type[DbError]:
        return DbError

    def _begin(self, conn: Any) -> None:
        raise NotImplementedError

    def _commit(self, conn: Any) -> None:
        raise NotImplementedError

    def _rollback(self, conn: Any) -> None:
        raise NotImplementedError

    def _ping(self, conn: Any) -> None:
        self._run(conn, "SELECT 1", (), False)

    def _close(self, conn: Any) -> None:
        conn.close()

    def _list_tables(self, conn: Any) -> set[str]:
        raise NotImplementedError

    def _upsert_sql(self, table: str, cols: list[str], keys: Sequence[str]) -> str:
        raise NotImplementedError

    def time_to_db(self, t: float) -> Any:
        """Epoch seconds as this backend stores a DATETIME column."""
        raise NotImplementedError

    def time_from_db(self, value: Any) -> int:
        """A DATETIME column's stored value as epoch seconds."""
        raise NotImplementedError

    # -- connection and retry --------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        if self._conn is not None:
            self._inherited.append(self._conn)
        self._conn = None
        self._tx_depth = 0
        self._lock = threading.RLock()

    def _open(self) -> Any:
        try:
            conn = self._connect()
        except DbError:
            raise
        except (*self._driver_errors, OSError) as exc:
            raise DbUnavailable(f"{self.url.redacted()}: cannot connect: {exc}") from exc
        self.connects += 1
        if self.connects > 1:
            log.info("db %s: connected again", self.url.redacted())
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                self._close(conn)
            except (*self._driver_errors, OSError):
                pass  # it is already broken; the point is to forget it

    def _error(self, exc: BaseException, what: str) -> DbError:
        cls = DbUnavailable if self._is_lost(exc) else self._classify(exc)
        return cls(f"{self.dialect}: {what}: {exc}")

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)``; on a lost connection reconnect once and run it again,
        and run a deadlock victim again once (neither inside a transaction: its earlier
        statements are gone)."""
        with self._lock:
            conn = self._conn
            if conn is None:
                if self._tx_depth:
                    # A new connection would run this outside the transaction.
                    raise DbUnavailable(f"{self.dialect}: connection lost inside a transaction")
                conn = self._open()
            try:
                return fn(conn, *args)
            except self._driver_errors as exc:
                if self._is_lost(exc):
                    self._drop()
                    if self._tx_depth:
                        raise DbUnavailable(
                            f"{self.dialect}: connection lost inside a transaction: {exc}"
                        ) from exc
                    log.warning(
                        "db %s: connection lost (%s), reconnecting", self.url.redacted(), exc
                    )
                    conn = self._open()
                elif self._tx_depth or not self._is_retryable(exc):
                    raise self._error(exc, _what(args)) from exc
                # else: a deadlock victim outside a transaction; the server undid the
                # statement, so running it again is safe.
            try:
                return fn(conn, *args)
            except self._driver_errors as exc:
                if self._is_lost(exc):
                    self._drop()
                raise self._error(exc, _what(args)) from exc

    def _exec(self, sql: str, params: Any = (), many: bool = False) -> tuple[list[Row], int, int]:
        return self._call(self._run, sql, params, many)

    # -- identifiers and values ------------------------------------------------------

    def _table(self, name: str) -> schema.Table:
        table = self.tables_def.get(name)
        if table is None:
            raise ValueError(f"unknown table {name!r}")
        return table

    def _col(self, table: schema.Table, name: str) -> str:
        if name not in table.names:
            raise ValueError(f"unknown column {name!r} in table {table.name!r}")
        q = self._quote
        return f"{q}{name}{q}"

    def _value(self, table: schema.Table, col: str, value: Any) -> Any:
        if isinstance(value, bytes):
            try:
                return value.decode()
            except UnicodeDecodeError:
                raise DbError(f"{table.name}.{col}: value is not UTF-8") from None
        if isinstance(value, bool):
            return int(value)
        if col in table.datetime_columns and isinstance(value, (int, float)):
            return self.time_to_db(value)
        return value

    def _where(self, table: schema.Table, where: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
        """``{"col": v}`` is ``col = v``; ``{"col <": v}`` any of = != <> < <= > >=;
        ``None`` is ``IS [NOT] NULL``; a list/tuple/set is ``[NOT] IN``."""
        if not where:
            return "", []
        parts: list[str] = []
        params: list[Any] = []
        ph = self._placeholder
        for key, value in where.items():
            name, _, op = key.partition(" ")
            op = op.strip() or "="
            if op not in _OPS:
                raise ValueError(f"unknown operator {op!r} in where key {key!r}")
            col = self._col(table, name)
            if value is None:
                if op == "=":
                    parts.append(f"{col} IS NULL")
                elif op in ("!=", "<>"):
                    parts.append(f"{col} IS NOT NULL")
                else:
                    raise ValueError(f"{key!r}: NULL only compares with = or !=")
            elif isinstance(value, _SEQUENCES):
                if op not in ("=", "!=", "<>"):
                    raise ValueError(f"{key!r}: a list only goes with = (IN) or != (NOT IN)")
                if not value:
                    parts.append("1=0" if op == "=" else "1=1")
                    continue
                parts.append(
                    f"{col} {'IN' if op == '=' else 'NOT IN'} ({', '.join([ph] * len(value))})"
                )
                params.extend(self._value(table, name, v) for v in value)
            else:
                parts.append(f"{col} {op} {ph}")
                params.append(self._value(table, name, value))
        return " WHERE " + " AND ".join(parts), params

    def _order(self, table: schema.Table, order_by: str | Sequence[str] | None) -> str:
        if not order_by:
            return ""
        items = [order_by] if isinstance(order_by, str) else list(order_by)
        out = []
        for item in items:
            name, _, direction = item.partition(" ")
            direction = direction.strip().upper()
            if direction not in ("", "ASC", "DESC"):
                raise ValueError(f"bad order_by item {item!r}")
            out.append(f"{self._col(table, name)}{' ' + direction if direction else ''}")
        return " ORDER BY " + ", ".join(out)

    # -- the interface ---------------------------------------------------------------

    def select(
        self,
        table: str,
        columns: Sequence[str],
        where: Mapping[str, Any] | None = None,
        order_by: str | Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[Row]:
        """Rows of ``columns`` (tuples, in that order) matching ``where`` (ANDed)."""
        # The lookups on the REGISTER/INVITE path repeat one shape (auth: username +
        # domain), so the statement text is built once per shape and reused.
        order_key = order_by if order_by is None or isinstance(order_by, str) else tuple(order_by)
        key = (table, tuple(columns), tuple(where) if where else (), order_key, limit)
        plan = self._plans.get(key)
        params = None
        if plan is not None:
            params = self._scalar_params(plan[2], where) if where else []
        if params is None:
            t = self._table(table)
            cols = ", ".join(self._col(t, c) for c in columns)
            clause, params = self._where(t, where)
            sql = f"SELECT {cols} FROM {self._q(table)}{clause}{self._order(t, order_by)}"
            if limit is not None:
                sql += f" LIMIT {int(limit)}"
            times = tuple(i for i, c in enumerate(columns) if c in t.datetime_columns)
            if where is None or all(_is_scalar(v) for v in where.values()):
                if len(self._plans) > 512:
                    self._plans.clear()
                self._plans[key] = (sql, times, _where_columns(t, where))
        else:
            sql, times = plan[0], plan[1]
        rows = self._exec(sql, params)[0]
        if not times or not rows:
            return rows
        conv = self.time_from_db
        out = []
        for row in rows:
            values = list(row)
            for i in times:
                if values[i] is not None:
                    values[i] = conv(values[i])
            out.append(tuple(values))
        return out

    def _scalar_params(
        self, cols: tuple[tuple[str, bool], ...], where: Mapping[str, Any]
    ) -> list[Any] | None:
        """``where``'s values as parameters, or None when one of them is not a plain
        scalar (NULL and lists change the statement's shape)."""
        params = []
        for (col, is_time), value in zip(cols, where.values()):
            if value is None or isinstance(value, _SEQUENCES):
                return None
            if isinstance(value, bytes):
                try:
                    value = value.decode()
                except UnicodeDecodeError:
                    raise DbError(f"{col}: value is not UTF-8") from None
            elif isinstance(value, bool):
                value = int(value)
            elif is_time and isinstance(value, (int, float)):
                value = self.time_to_db(value)
            params.append(value)
        return params

    def insert(self, table: str, row: Mapping[str, Any]) -> int:
        """Insert one row; returns its ``id`` (the auto-increment key)."""
        t = self._table(table)
        sql, params = self._insert_sql(t, list(row)), [self._value(t, c, v) for c, v in row.items()]
        return self._exec(sql, params)[2]

    def insert_many(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert rows that all have the same keys, in one batch; returns the count."""
        t = self._table(table)
        rows = list(rows)
        if not rows:
            return 0
        cols = list(rows[0])
        params = []
        for row in rows:
            if list(row) != cols:
                raise ValueError("insert_many: every row needs the same columns in the same order")
            params.append([self._value(t, c, row[c]) for c in cols])
        self._exec(self._insert_sql(t, cols), params, True)
        return len(rows)

    def replace(self, table: str, row: Mapping[str, Any], key_columns: Sequence[str]) -> None:
        """Upsert: insert ``row``, or update the row with the same ``key_columns``.

        One atomic statement when ``key_columns`` is a unique key of the table
        (``ruid``; ``username, domain``); otherwise update-then-insert in a transaction.
        """
        t = self._table(table)
        keys = list(key_columns)
        missing = [k for k in keys if k not in row]
        if not keys or missing:
            raise ValueError(f"replace: key columns {missing or keys} must be in the row")
        cols = list(row)
        for c in cols:
            self._col(t, c)
        if t.is_unique_key(keys):
            params = [self._value(t, c, v) for c, v in row.items()]
            self._exec(self._upsert_sql(table, cols, keys), params)
            return
        where = {k: row[k] for k in keys}
        rest = {c: v for c, v in row.items() if c not in where}
        with self.transaction():
            if rest:
                found = self.update(table, where, rest)
            else:
                found = len(self.select(table, [keys[0]], where, limit=1))
            if not found:
                self.insert(table, row)

    def update(self, table: str, where: Mapping[str, Any], values: Mapping[str, Any]) -> int:
        """Set ``values`` on the rows matching ``where``; returns the rows matched."""
        t = self._table(table)
        if not values:
            raise ValueError("update: nothing to set")
        ph = self._placeholder
        sets = ", ".join(f"{self._col(t, c)} = {ph}" for c in values)
        params = [self._value(t, c, v) for c, v in values.items()]
        clause, wparams = self._where(t, where)
        return self._exec(f"UPDATE {self._q(table)} SET {sets}{clause}", params + wparams)[1]

    def delete(self, table: str, where: Mapping[str, Any]) -> int:
        """Delete the rows matching ``where`` (``{}`` deletes all); returns the count."""
        t = self._table(table)
        clause, params = self._where(t, where)
        return self._exec(f"DELETE FROM {self._q(table)}{clause}", params)[1]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Raw SQL with ``?`` placeholders (translated per dialect); returns its rows.

        ``?`` outside quotes is always a placeholder: pass values as ``params``.
        """
        return self._exec(self._translate(sql), [_plain(p) for p in params])[0]

    def _translate(self, sql: str) -> str:
        return sql

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """A batch of writes that commits on exit and rolls back on an exception.

        Nested blocks join the outer one. SQLite takes the write lock at the start
        (``BEGIN IMMEDIATE``), so two writers queue instead of failing halfway.
        """
        with self._lock:
            if self._tx_depth:
                self._tx_depth += 1
                try:
                    yield self
                finally:
                    self._tx_depth -= 1
                return
            self._call(self._begin)
            self._tx_depth = 1
            try:
                yield self
            except BaseException:
                self._tx_depth = 0
                self._rollback_quietly()
                raise
            self._tx_depth = 0
            conn = self._conn
            if conn is None:
                raise DbUnavailable(f"{self.dialect}: connection lost before commit")
            try:
                self._commit(conn)
            except self._driver_errors as exc:
                error = self._error(exc, "COMMIT")
                if self._is_lost(exc):
                    self._drop()
                else:
                    self._rollback_quietly()
                raise error from exc

    def _rollback_quietly(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            self._rollback(conn)
        except self._driver_errors as exc:
            log.warning("db %s: rollback failed: %s", self.url.redacted(), exc)
            self._drop()

    def ping(self) -> bool:
        """True when the database answers (after at most one reconnect)."""
        try:
            self._call(self._ping)
        except DbError:
            return False
        return True

    def tables(self) -> set[str]:
        """The names of the tables that exist in the database."""
        return self._call(self._list_tables)

    def close(self) -> None:
        """Close the connection; a later call opens a new one."""
        with self._lock:
            self._drop()

    # -- helpers ---------------------------------------------------------------------

    def _q(self, name: str) -> str:
        q = self._quote
        return f"{q}{name}{q}"

    def _insert_sql(self, table: schema.Table, cols: list[str]) -> str:
        names = ", ".join(self._col(table, c) for c in cols)
        marks = ", ".join([self._placeholder] * len(cols))
        return f"INSERT INTO {self._q(table.name)} ({names}) VALUES ({marks})"


def _what(args: tuple[Any, ...]) -> str:
    """The SQL text of a failed call, for the error message (never the values)."""
    if args and isinstance(args[0], str):
        return args[0].split("\n", 1)[0][:200]
    return "statement"


def _is_scalar(value: Any) -> bool:
    return value is not None and not isinstance(value, _SEQUENCES)


def _where_columns(
    table: schema.Table, where: Mapping[str, Any] | None
) -> tuple[tuple[str, bool], ...]:
    if not where:
        return ()
    names = [key.partition(" ")[0] for key in where]
    return tuple((n, n in table.datetime_columns) for n in names)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise DbError("parameter is not UTF-8") from None
    return value
