"""``db_url`` strings: which backend, where, and as whom.

Accepted forms (the same strings Kamailio's ``db_url`` takes, plus SQLite's):

- ``sqlite:///abs/path/natserver.db`` - an absolute path;
- ``sqlite://rel/path.db`` - relative to the current directory when opened;
- ``sqlite://`` or ``""`` - the embedded default, ``natserver.db`` in the state
  directory (see ``default_state_dir``);
- ``mysql://user:password@host[:port]/database`` - TCP, port 3306 by default;
- ``mysql://user:password@localhost/database`` - like libmysqlclient (and so like
  Kamailio), ``localhost`` means the local server's default unix socket when one exists;
- ``mysql://user:password@host/database?unix_socket=/path/to/mysqld.sock`` - an
  explicit unix socket (the host part is then ignored).

User, password and database are percent-decoded, so a password holding ``@``, ``:``,
``/`` or ``%`` is written ``%40``, ``%3A``, ``%2F``, ``%25``.

Query options: SQLite ``busy_timeout`` (milliseconds, default 5000); MySQL
``unix_socket``, ``connect_timeout`` (s, default 5), ``read_timeout`` and
``write_timeout`` (s, default 10). An unknown option is an error: a misspelt option
must not be silently ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote

from natserver.errors import DbError

DB_FILE = "natserver.db"
SYSTEM_STATE_DIR = "/var/lib/natserver"
# libmysqlclient's compiled-in socket paths on Debian; pymysql has no default of its own.
MYSQL_DEFAULT_SOCKETS = ("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock")

_SQLITE_OPTIONS = {"busy_timeout": 5000}
_MYSQL_OPTIONS = {"connect_timeout": 5, "read_timeout": 10, "write_timeout": 10}


@dataclass(slots=True, frozen=True)
class DbUrl:
    """A parsed ``db_url``; ``scheme`` is ``"sqlite"`` or ``"mysql"``."""

    scheme: str
    path: str = ""  # sqlite: the database file, absolute
    user: str = ""
    password: str = ""
    host: str = ""
    port: int = 3306
    database: str = ""
    unix_socket: str = ""
    options: dict[str, int] = field(default_factory=dict)

    def redacted(self) -> str:
        """The URL for log lines: the password is never printed."""
        if self.scheme == "sqlite":
            return f"sqlite://{self.path}"
        where = f"unix:{self.unix_socket}" if self.unix_socket else f"{self.host}:{self.port}"
        return f"mysql://{self.user}:***@{where}/{self.database}"


def default_state_dir(env: dict[str, str] | os._Environ[str] | None = None) -> Path:
    """Where the embedded database lives when ``db_url`` names no path.

    ``$NATSERVER_STATE_DIR`` if set; else ``/var/lib/natserver`` when it exists and is
    writable or can be created; else ``$XDG_STATE_HOME/natserver`` or
    ``~/.local/state/natserver``.
    """
    env = os.environ if env is None else env
    explicit = env.get("NATSERVER_STATE_DIR")
    if explicit:
        return Path(explicit)
    system = Path(SYSTEM_STATE_DIR)
    # Decided without creating anything: opening the database creates the directory.
    if system.is_dir():
        if os.access(system, os.W_OK | os.X_OK):
            return system
    elif system.parent.is_dir() and os.access(system.parent, os.W_OK | os.X_OK):
        return system
    xdg = env.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path(env.get("HOME") or Path.home()) / ".local" / "state"
    return base / "natserver"


def parse_db_url(url: str, *, env: dict[str, str] | None = None) -> DbUrl:
    """Parse ``url``; raises ``DbError`` naming what is wrong (the password never shows)."""
    url = url.strip()
    if url == "":
        url = "sqlite://"
    scheme, sep, rest = url.partition("://")
    if not sep and url.startswith("sqlite:"):
        scheme, rest = "sqlite", url[len("sqlite:"):]
    scheme = scheme.lower()
    if scheme == "sqlite":
        return _parse_sqlite(rest, env)
    if scheme == "mysql" and sep:
        return _parse_mysql(rest)
    raise DbError(f"db_url: unsupported scheme {scheme!r} (use sqlite:// or mysql://)")


def _options(pairs: list[tuple[str, str]], allowed: dict[str, int]) -> dict[str, int]:
    values = dict(allowed)
    for key, value in pairs:
        if key not in allowed:
            raise DbError(f"db_url: unknown option {key!r} (known: {', '.join(sorted(allowed))})")
        try:
            values[key] = int(value)
        except ValueError:
            raise DbError(f"db_url: option {key} wants an integer, not {value!r}") from None
        if values[key] < 0:
            raise DbError(f"db_url: option {key} must not be negative")
    return values


def _parse_sqlite(rest: str, env: dict[str, str] | None) -> DbUrl:
    path_part, _, query = rest.partition("?")
    path_part = unquote(path_part)
    if path_part == "":
        path = default_state_dir(env) / DB_FILE
    elif path_part.startswith("/"):
        path = Path(path_part)
    else:
        path = Path.cwd() / path_part
    options = _options(parse_qsl(query, keep_blank_values=True), _SQLITE_OPTIONS)
    return DbUrl("sqlite", path=os.path.normpath(path), options=options)


def _parse_mysql(rest: str) -> DbUrl:
    rest, _, query = rest.partition("?")
    netloc, slash, database = rest.partition("/")
    if not slash or not database or "/" in database:
        raise DbError("db_url: mysql:// needs a database name: mysql://user:pass@host[:port]/db")
    # The last '@' separates the credentials: an unencoded '@' in a password still works.
    creds, at, hostport = netloc.rpartition("@")
    user, _, password = creds.partition(":") if at else ("", "", "")
    host, port = hostport, 3306
    if hostport.startswith("["):  # [IPv6]:port
        end = hostport.find("]")
        if end < 0:
            raise DbError("db_url: unclosed '[' in the host")
        host, tail = hostport[1:end], hostport[end + 1:]
        if tail:
            port = _port(tail[1:] if tail.startswith(":") else tail)
    elif ":" in hostport:
        host, _, port_text = hostport.rpartition(":")
        port = _port(port_text)
    pairs = parse_qsl(query, keep_blank_values=True)
    unix_socket = next((value for key, value in pairs if key == "unix_socket"), "")
    options = _options([(k, v) for k, v in pairs if k != "unix_socket"], _MYSQL_OPTIONS)
    if not host and not unix_socket:
        raise DbError("db_url: mysql:// needs a host (or ?unix_socket=/path)")
    if host == "localhost" and not unix_socket:
        unix_socket = next((s for s in MYSQL_DEFAULT_SOCKETS if os.path.exists(s)), "")
    return DbUrl(
        "mysql",
        user=unquote(user),
        password=unquote(password),
        host=host or "localhost",
        port=port,
        database=unquote(database),
        unix_socket=unix_socket,
        options=options,
    )


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise DbError(f"db_url: bad port {text!r}")
    return int(text)
