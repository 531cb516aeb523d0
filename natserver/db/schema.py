"""The SER/Kamailio tables natserver reads and writes, as data, with their DDL per dialect.

The definitions follow Kamailio 5.6's shipped schema (``kamdbctl create``): table and
column names, sizes, defaults, unique keys, index names and the ``version`` rows. A
database provisioned by kamctl/kamdbctl therefore works as it is, and one made by
``create_schema`` works for Kamailio. Kamailio 5 dropped ``subscriber.email_address``
and ``rpid`` (table version 7); older databases that still have them work too, since
natserver only names the columns it uses.

Time columns (``expires``, ``last_modified``) are stored the way Kamailio's own drivers
store them, so both servers read each other's rows:

- MySQL/MariaDB: ``DATETIME`` text in the server's **local time** (Kamailio's
  ``db_time2str`` uses ``localtime``);
- SQLite: a **Julian day number** (REAL, UTC based), as Kamailio's ``db_sqlite`` binds
  datetimes; text such as the column default ``'2030-05-28 21:32:15'`` is read as UTC,
  SQLite's own convention.

Epoch ``0`` (``NEVER``) is usrloc's "permanent contact" (Kamailio deletes expired rows
with ``expires < now AND expires != 0``).
"""

from __future__ import annotations

import calendar
import datetime
import enum
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from natserver.db import Database

NEVER = 0
# Kamailio's column default for expires: "far in the future" for rows added by hand.
KAMAILIO_DEFAULT_EXPIRES = "2030-05-28 21:32:15"
KAMAILIO_DEFAULT_MODIFIED = "2000-01-01 00:00:01"
_JULIAN_EPOCH = 2440587.5  # the Julian day of 1970-01-01T00:00:00Z
_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class ColType(enum.IntEnum):
    ID = 1  # auto-increment primary key
    STR = 2
    INT = 3
    FLOAT = 4
    DATETIME = 5


@dataclass(slots=True, frozen=True)
class Column:
    name: str
    type: ColType
    size: int = 0  # VARCHAR length
    default: str | int | float | None = None  # None: DEFAULT NULL when nullable, else none
    nullable: bool = False


@dataclass(slots=True, frozen=True)
class Table:
    name: str
    version: int
    columns: tuple[Column, ...]
    unique: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (index name, columns)
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    names: frozenset[str] = field(init=False)
    datetime_columns: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(c.name for c in self.columns))
        object.__setattr__(
            self,
            "datetime_columns",
            frozenset(c.name for c in self.columns if c.type == ColType.DATETIME),
        )

    def is_unique_key(self, columns: tuple[str, ...] | list[str]) -> bool:
        wanted = set(columns)
        return any(set(cols) == wanted for _, cols in self.unique)


def _s(name: str, size: int, default: str | None = "", nullable: bool = False) -> Column:
    return Column(name, ColType.STR, size, default, nullable)


def _i(name: str, default: int | None = 0, nullable: bool = False) -> Column:
    return Column(name, ColType.INT, 0, default, nullable)


def _contact_table(name: str, version: int, contact: int, received: int) -> Table:
    """``location`` and ``aliases`` share one layout (usrloc domains)."""
    columns = (
        Column("id", ColType.ID),
        _s("ruid", 64),
        _s("username", 64),
        _s("domain", 64, None, nullable=True),
        _s("contact", contact),
        _s("received", received, None, nullable=True),
        _s("path", 512, None, nullable=True),
        Column("expires", ColType.DATETIME, 0, KAMAILIO_DEFAULT_EXPIRES),
        Column("q", ColType.FLOAT, 0, 1.0),
        _s("callid", 255, "Default-Call-ID"),
        _i("cseq", 1),
        Column("last_modified", ColType.DATETIME, 0, KAMAILIO_DEFAULT_MODIFIED),
        _i("flags"),
        _i("cflags"),
        _s("user_agent", 255),
        _s("socket", 64, None, nullable=True),
        _i("methods", None, nullable=True),
        _s("instance", 255, None, nullable=True),
        _i("reg_id"),
        _i("server_id"),
        _i("connection_id"),
        _i("keepalive"),
        _i("partition"),
    )
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("account_contact_idx", ("username", "domain", "contact")),
        ("expires_idx", ("expires",)),
    )
    if name == "location":
        indexes += (
            ("tcpcon_idx", ("connection_id",)),
            ("connection_idx", ("server_id", "connection_id")),
        )
    return Table(name, version, columns, unique=(("ruid_idx", ("ruid",)),), indexes=indexes)


VERSION = Table(
    "version",
    1,
    (
        Column("id", ColType.ID),
        _s("table_name", 32, None),
        Column("table_version", ColType.INT, 0, 0),
    ),
    unique=(("table_name_idx", ("table_name",)),),
)

SUBSCRIBER = Table(
    "subscriber",
    7,
    (
        Column("id", ColType.ID),
        _s("username", 64),
        _s("domain", 64),
        _s("password", 64),
        _s("ha1", 128),
        _s("ha1b", 128),
    ),
    unique=(("account_idx", ("username", "domain")),),
    indexes=(("username_idx", ("username",)),),
)

LOCATION = _contact_table("location", 9, contact=512, received=128)
ALIASES = _contact_table("aliases", 8, contact=255, received=255)

URI = Table(
    "uri",
    1,
    (
        Column("id", ColType.ID),
        _s("username", 64),
        _s("domain", 64),
        _s("uri_user", 64),
        Column("last_modified", ColType.DATETIME, 0, KAMAILIO_DEFAULT_MODIFIED),
    ),
    unique=(("account_idx", ("username", "domain", "uri_user")),),
)

TABLES: dict[str, Table] = {t.name: t for t in (VERSION, SUBSCRIBER, LOCATION, ALIASES, URI)}
# What ``natserverctl db init`` creates; ``version`` first, it records the others.
DEFAULT_TABLES = ("version", "subscriber", "location", "aliases", "uri")


def table_like(name: str, template: str, *, tables: dict[str, Table] | None = None) -> Table:
    """Define ``name`` with ``template``'s layout (``save("location2")`` in a script).

    Call before opening databases (at configuration time, before fork): the table set
    is part of the configuration. ``name`` must be a plain identifier.
    """
    tables = TABLES if tables is None else tables
    if not name.isidentifier() or not name.isascii() or len(name) > 64:
        raise ValueError(f"bad table name {name!r}")
    if name in tables:
        return tables[name]
    base = tables[template]
    table = Table(name, base.version, base.columns, base.unique, base.indexes)
    tables[name] = table
    return table


# -- DDL ---------------------------------------------------------------------------

def _literal(value: str | int | float) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def _column_sql(col: Column, dialect: str) -> str:
    q = "`" if dialect == "mysql" else '"'
    name = f"{q}{col.name}{q}"
    if col.type == ColType.ID:
        if dialect == "mysql":
            return f"{name} INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL"
        return f"{name} INTEGER PRIMARY KEY NOT NULL"
    if col.type == ColType.STR:
        sql_type = f"VARCHAR({col.size})"
    elif col.type == ColType.INT:
        sql_type = "INT(11)" if dialect == "mysql" else "INTEGER"
    elif col.type == ColType.FLOAT:
        sql_type = "FLOAT(10,2)" if dialect == "mysql" else "REAL"
    else:
        sql_type = "DATETIME" if dialect == "mysql" else "TIMESTAMP WITHOUT TIME ZONE"
    if col.default is not None:
        default = f" DEFAULT {_literal(col.default)}"
    elif col.nullable:
        default = " DEFAULT NULL"
    else:
        default = ""
    return f"{name} {sql_type}{default}{'' if col.nullable else ' NOT NULL'}"


def table_sql(table: Table, dialect: str) -> list[str]:
    """The statements that create ``table`` (idempotent: ``IF NOT EXISTS``)."""
    q = "`" if dialect == "mysql" else '"'

    def cols(names: tuple[str, ...]) -> str:
        return ", ".join(f"{q}{n}{q}" for n in names)

    lines = [_column_sql(c, dialect) for c in table.columns]
    # Index names are per table in MySQL but global in SQLite, hence Kamailio's prefixes.
    prefix = "" if dialect == "mysql" else f"{table.name}_"
    lines += [f"CONSTRAINT {prefix}{name} UNIQUE ({cols(c)})" for name, c in table.unique]
    if dialect == "mysql":
        lines += [f"INDEX {name} ({cols(c)})" for name, c in table.indexes]
        body = ",\n    ".join(lines)
        return [
            f"CREATE TABLE IF NOT EXISTS `{table.name}` (\n    {body}\n) DEFAULT CHARSET=utf8mb4"
        ]
    body = ",\n    ".join(lines)
    stmts = [f'CREATE TABLE IF NOT EXISTS "{table.name}" (\n    {body}\n)']
    stmts += [
        f'CREATE INDEX IF NOT EXISTS {prefix}{name} ON "{table.name}" ({cols(c)})'
        for name, c in table.indexes
    ]
    return stmts


def schema_sql(dialect: str, tables: tuple[str, ...] | list[str] = DEFAULT_TABLES) -> str:
    """The whole schema as a script (``natserverctl db init --print``)."""
    out = []
    for name in tables:
        table = TABLES[name]
        out += [s + ";" for s in table_sql(table, dialect)]
        out.append(
            "INSERT INTO version (table_name, table_version) "
            f"VALUES ('{table.name}', '{table.version}');"
        )
    return "\n\n".join(out) + "\n"


def create_schema(db: Database, tables: tuple[str, ...] | list[str] = DEFAULT_TABLES) -> list[str]:
    """Create the missing tables and ``version`` rows; returns the tables created.

    Idempotent: existing tables (from kamdbctl or an earlier run) are left as they are,
    and a ``version`` row is only added where none exists.
    """
    names = list(tables)
    if "version" not in names:
        names.insert(0, "version")
    existing = db.tables()
    created = []
    for name in names:
        table = TABLES[name]
        if name not in existing:
            for stmt in table_sql(table, db.dialect):
                db.execute(stmt)
            created.append(name)
    have = {row[0] for row in db.select("version", ["table_name"])}
    for n in names:
        if n not in have:
            # One autocommitted upsert per row: processes initialising the same
            # database at once write the same rows and cannot deadlock on a batch.
            row = {"table_name": n, "table_version": TABLES[n].version}
            db.replace("version", row, ["table_name"])
    return created


# -- time columns ------------------------------------------------------------------

def epoch_to_datetime(t: float) -> str:
    """``'YYYY-MM-DD HH:MM:SS'`` in local time (MySQL DATETIME, as Kamailio writes it)."""
    return time.strftime(_DATETIME_FORMAT, time.localtime(int(t)))


def datetime_to_epoch(value: datetime.datetime | str) -> int:
    """A local-time DATETIME (object or text) as epoch seconds; a zero date is ``NEVER``."""
    if isinstance(value, str):
        if value.startswith("0000-00-00"):
            return NEVER
        value = datetime.datetime.strptime(value[:19], _DATETIME_FORMAT)
    return int(time.mktime(value.timetuple()))


def epoch_to_julian(t: float) -> float:
    """Kamailio db_sqlite's encoding of a time: a Julian day number."""
    return ((float(int(t)) - 0.5) / 86400.0) + _JULIAN_EPOCH


def julian_to_epoch(jd: float) -> int:
    # Kamailio adds 0.5 s to undo the -0.5 s of the encoding; round, not truncate, so
    # that float error cannot turn t into t-1.
    return int(math.floor(86400.0 * (jd - _JULIAN_EPOCH) + 0.5 + 0.5))


def utc_text_to_epoch(value: str) -> int:
    """SQLite date text (UTC by SQLite's convention) as epoch seconds."""
    if value.startswith("0000-00-00"):
        return NEVER
    parsed = time.strptime(value[:19].replace("T", " "), _DATETIME_FORMAT)
    return calendar.timegm(parsed)
