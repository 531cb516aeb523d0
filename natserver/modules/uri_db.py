"""uri_db: ``check_to()``, ``check_from()``, ``does_uri_exist()`` (SER modules/uri_db).

check_to/check_from compare the To/From URI user with the user part of the username
the credentials authorized by ``www_authorize``/``proxy_authorize`` carried: equal
length, equal ignoring case; the domain is not compared. They return 1 on a match, -2
when nothing was authorized, -4 when the URI has no user, -10 when the users differ.
With ``use_uri_table=1`` the URI host must be the realm and the ``uri`` table must hold
``(username, domain=realm, uri_user)`` instead (-1 on a DB error).

does_uri_exist() is 1 when the R-URI's user (and host, with ``use_domain``) is a
subscriber (or a ``uri`` table row with ``use_uri_table``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from natserver.db import Database, open_db
from natserver.errors import DbError, SipError
from natserver.modules import Function, Module, Param, as_str, int_range
from natserver.script.runtime import MsgCtx
from natserver.sip.uri import Uri, parse_uri

if TYPE_CHECKING:
    from natserver.context import Context

log = logging.getLogger("natserver.uri_db")


class UriDb(Module):
    NAME = "uri_db"

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        self.use_uri_table = bool(params["use_uri_table"])
        self.use_domain = bool(params["use_domain"])
        self.db: Database | None = None

    def init(self, ctx: Context) -> None:
        # Opening connects lazily: no connection unless a uri table lookup happens.
        self.db = open_db(self.params["db_url"])

    def _db(self) -> Database:
        if self.db is None:
            self.db = open_db(self.params["db_url"])
        return self.db

    def _check(self, m: MsgCtx, to: bool) -> int:
        creds = m.auth
        if creds is None:
            return -2
        try:
            uri = (m.msg.to if to else m.msg.from_).uri
        except SipError:
            return -1
        if not uri.user:
            return -4
        auth_user = (creds.username or "").partition("@")[0]
        if self.use_uri_table:
            return self._uri_table(uri, auth_user, creds.realm or "")
        if len(auth_user) != len(uri.user) or auth_user.lower() != uri.user.lower():
            return -10
        return 1

    def _uri_table(self, uri: Uri, auth_user: str, realm: str) -> int:
        if uri.host != realm.lower():
            return -10
        try:
            rows = self._db().select(self.params["uri_table"], ["uri_user"],
                                     {"username": auth_user, "domain": realm,
                                      "uri_user": uri.user}, limit=1)
        except DbError as exc:
            log.error("uri_db: lookup failed: %s", exc)
            return -1
        return 1 if rows else -10

    def check_to(self, m: MsgCtx) -> int:
        return self._check(m, True)

    def check_from(self, m: MsgCtx) -> int:
        return self._check(m, False)

    def does_uri_exist(self, m: MsgCtx) -> int:
        try:
            uri = parse_uri(m.ruri)
        except SipError:
            return -1
        if not uri.user:
            return -1
        try:
            if self.use_uri_table:
                rows = self._db().select(self.params["uri_table"], ["username"],
                                         {"uri_user": uri.user, "domain": uri.host}, limit=1)
            else:
                where: dict[str, Any] = {"username": uri.user}
                if self.use_domain:
                    where["domain"] = uri.host
                rows = self._db().select(self.params["subscriber_table"], ["username"], where,
                                         limit=1)
        except DbError as exc:
            log.error("uri_db: lookup failed: %s", exc)
            return -1
        return 1 if rows else -1


FUNCTIONS = (
    Function("check_to", UriDb.check_to),
    Function("check_from", UriDb.check_from),
    Function("does_uri_exist", UriDb.does_uri_exist),
)
PARAMS = (
    Param("db_url", str, "", check=as_str,
          doc="database for use_uri_table/does_uri_exist; sqlite:// or empty = default"),
    Param("use_uri_table", int, 0, check=int_range(0, 1),
          doc="check the uri table instead of comparing users"),
    Param("uri_table", str, "uri", check=as_str, doc="table of allowed URI users"),
    Param("subscriber_table", str, "subscriber", check=as_str, doc="table of subscribers"),
    Param("use_domain", int, 0, check=int_range(0, 1),
          doc="does_uri_exist also matches the domain"),
)
MODULE = UriDb
