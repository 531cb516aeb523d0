"""auth_db: ``www_authorize(realm, table)`` / ``proxy_authorize(realm, table)`` - the
digest check of :mod:`natserver.modules.auth` with users from the database (SER
modules/auth_db).

Per request one ``SELECT <column> FROM <table> WHERE username=<user>`` (plus ``AND
domain=<realm>`` with ``use_domain=1``); ``<user>`` is the digest username's part
before ``@``. With ``calculate_ha1=1`` the column is ``password_column`` and HA1 is
computed from the username as sent, the realm and the password (MD5, SHA-256 or
SHA-512-256, as the credentials ask); otherwise it holds the HA1 hex:
``password_column`` (``ha1``) for plain usernames, ``password_column_2`` (``ha1b``)
for ``user@domain`` ones. A database error answers 500 and ends the route block.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from natserver.db import Database, open_db
from natserver.db.schema import SUBSCRIBER, TABLES, create_schema, table_like
from natserver.errors import DbError
from natserver.modules import Function, Module, Param, as_str, int_range
from natserver.modules.auth import Auth, get_auth
from natserver.script.runtime import MsgCtx
from natserver.sip import digest

if TYPE_CHECKING:
    from natserver.context import Context

log = logging.getLogger("natserver.auth_db")

_COLUMN_PARAMS = ("password_column", "password_column_2", "user_column", "domain_column")


class AuthDb(Module):
    NAME = "auth_db"

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        for name in _COLUMN_PARAMS:
            if params[name] not in SUBSCRIBER.names:
                raise ValueError(f"{name}: no column {params[name]!r} in a subscriber table "
                                 f"(has {', '.join(sorted(SUBSCRIBER.names))})")
        self.calculate_ha1 = bool(params["calculate_ha1"])
        self.use_domain = bool(params["use_domain"])
        self.pw1 = params["password_column"]
        self.pw2 = params["password_column_2"]
        self.user_col = params["user_column"]
        self.domain_col = params["domain_column"]
        self.db: Database | None = None
        self.auth: Auth | None = None

    def init(self, ctx: Context) -> None:
        self.auth = get_auth(ctx)
        self.db = open_db(self.params["db_url"])
        if self.db.dialect == "sqlite":
            try:
                create_schema(self.db)
            except DbError as exc:
                log.error("auth_db: cannot create the schema: %s", exc)

    def _ready(self, m: MsgCtx) -> tuple[Auth, Database]:
        if self.auth is None or self.db is None:
            self.init(m.ctx)
        assert self.auth is not None and self.db is not None
        return self.auth, self.db

    def ha1(self, table: str, creds: digest.Credentials, realm: str, algo: str) -> str | None:
        """The user's HA1 for ``algo``, None for an unknown user; DbError passes up."""
        assert self.db is not None
        username = creds.username or ""
        user, at, _ = username.partition("@")
        column = self.pw1 if self.calculate_ha1 or not at else self.pw2
        where: dict[str, Any] = {self.user_col: user}
        if self.use_domain:
            where[self.domain_col] = realm
        rows = self.db.select(table, [column], where, limit=1)
        if not rows:
            return None
        value = rows[0][0] or ""
        if self.calculate_ha1:
            return digest.ha1(username, realm, value, algo)
        return value.strip().lower()

    def www_authorize(self, m: MsgCtx, realm: str, table: str) -> int:
        auth, _ = self._ready(m)
        return auth.authorize(m, realm, True, lambda c, r, a: self.ha1(table, c, r, a))

    def proxy_authorize(self, m: MsgCtx, realm: str, table: str) -> int:
        auth, _ = self._ready(m)
        return auth.authorize(m, realm, False, lambda c, r, a: self.ha1(table, c, r, a))


def _table(value: object) -> str:
    """A subscriber-like table name (defined like ``subscriber`` when new)."""
    name = as_str(value)
    if name not in TABLES:
        table_like(name, "subscriber")
    elif not {"username", "domain"} <= TABLES[name].names:
        raise ValueError(f"table {name!r} has no username/domain columns")
    return name


FUNCTIONS = (
    Function("www_authorize", AuthDb.www_authorize, args=(as_str, _table)),
    Function("proxy_authorize", AuthDb.proxy_authorize, args=(as_str, _table)),
)
PARAMS = (
    Param("db_url", str, "", check=as_str,
          doc="subscriber database; sqlite:// or empty = the embedded default"),
    Param("calculate_ha1", int, 0, check=int_range(0, 1),
          doc="1: password_column holds plain passwords; 0: HA1 hex"),
    Param("password_column", str, "ha1", check=as_str, doc="password or HA1 column"),
    Param("password_column_2", str, "ha1b", check=as_str,
          doc="HA1 column for user@domain usernames (calculate_ha1=0)"),
    Param("user_column", str, "username", check=as_str, doc="username column"),
    Param("domain_column", str, "domain", check=as_str, doc="domain column"),
    Param("use_domain", int, 0, check=int_range(0, 1), doc="match the realm as domain too"),
)
MODULE = AuthDb
