"""natserverctl commands that work on the database itself, like serctl's and kamctl's::

    natserverctl add USER@DOMAIN PASSWORD     a subscriber (ha1, ha1b; password too when
                                              the cfg uses calculate_ha1)
    natserverctl rm USER@DOMAIN               the subscriber and its uri rows
    natserverctl passwd USER@DOMAIN PASSWORD  new password (ha1, ha1b)
    natserverctl alias add ALIAS URI          a permanent alias (lookup("aliases"))
    natserverctl alias rm ALIAS
    natserverctl alias show
    natserverctl db init [--print]            create the tables (or print the SQL)

The database is ``--db URL``, else the cfg's ``fifo_db_url``, else its first ``db_url``
modparam, else the embedded default (as the server's modules do). Aliases live in
usrloc's ``aliases`` domain, which the server keeps in memory: ``alias add/rm`` write the
row and then tell a running server (ctl ``ul add``/``ul rm``), so it applies at once; a
server that is not running reads the table when it starts.

The ``ha1``/``ha1b`` columns are computed as kamctl does: MD5(user:domain:password) and
MD5(user@domain:domain:password), the realm being the domain.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from natserver.db import Database, DbIntegrityError, open_db
from natserver.db.schema import NEVER, create_schema, schema_sql
from natserver.errors import DbError

_CALC = re.compile(r'^\s*modparam\s*\(\s*"([^"]*)"\s*,\s*"calculate_ha1"\s*,\s*"?\s*(\d+)',
                   re.MULTILINE)
_USER = re.compile(r"^[^@:\s;]+$")
_DOMAIN = re.compile(r"^[A-Za-z0-9.\-\[\]:]+$")


class CtlDbError(Exception):
    """A provisioning command failed; the message says why (exit code 1)."""


class UsageError(CtlDbError):
    """Wrong arguments (exit code 2)."""


@dataclass(slots=True)
class Env:
    """What a command needs: the database and, for aliases, a way to tell the server."""

    db_url: str
    calculate_ha1: bool | None      # None: the cfg could not be read
    tell_server: Callable[[str, list[str]], Any] | None = None

    def open(self) -> Database:
        try:
            return open_db(self.db_url)
        except DbError as exc:
            raise CtlDbError(str(exc)) from None


def calculate_ha1_in(cfg_text: str) -> bool:
    """Does the cfg set auth_db's calculate_ha1 (plain passwords are then needed)?"""
    for m in _CALC.finditer(cfg_text):
        if re.search(m.group(1), "auth_db", re.IGNORECASE) and m.group(2) != "0":
            return True
    return False


def split_account(text: str) -> tuple[str, str]:
    """``user@domain`` (``sip:`` allowed) -> (user, domain); UsageError otherwise."""
    text = text.strip().removeprefix("sip:")
    user, at, domain = text.partition("@")
    if not at or not _USER.match(user) or not _DOMAIN.match(domain) or len(user) > 64 \
            or len(domain) > 64:
        raise UsageError(f"expected USER@DOMAIN, got {text!r}")
    return user, domain.lower()


def ha1_pair(user: str, domain: str, password: str) -> tuple[str, str]:
    """(ha1, ha1b) as kamctl computes them, the realm being the domain."""
    ha1 = hashlib.md5(f"{user}:{domain}:{password}".encode()).hexdigest()
    ha1b = hashlib.md5(f"{user}@{domain}:{domain}:{password}".encode()).hexdigest()
    return ha1, ha1b


def _need(args: list[str], n: int, usage: str) -> None:
    if len(args) != n:
        raise UsageError(f"usage: natserverctl {usage}")


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except DbIntegrityError:
        raise
    except DbError as exc:
        raise CtlDbError(f"database error: {exc}") from None


# ---- subscribers -----------------------------------------------------------------------

def cmd_add(env: Env, args: list[str]) -> dict[str, Any]:
    _need(args, 2, "add USER@DOMAIN PASSWORD")
    user, domain = split_account(args[0])
    password = args[1]
    ha1, ha1b = ha1_pair(user, domain, password)
    store = env.calculate_ha1 is not False
    row = {"username": user, "domain": domain, "password": password if store else "",
           "ha1": ha1, "ha1b": ha1b}
    with env.open() as db:
        if _guard(lambda: db.select("subscriber", ["id"], {"username": user, "domain": domain})):
            raise CtlDbError(f"user {user}@{domain} exists already")
        try:
            _guard(lambda: db.insert("subscriber", row))
        except DbIntegrityError:
            raise CtlDbError(f"user {user}@{domain} exists already") from None
    return {"added": f"{user}@{domain}", "password_stored": store}


def cmd_rm(env: Env, args: list[str]) -> dict[str, Any]:
    _need(args, 1, "rm USER@DOMAIN")
    user, domain = split_account(args[0])
    with env.open() as db:
        n = _guard(lambda: db.delete("subscriber", {"username": user, "domain": domain}))
        if not n:
            raise CtlDbError(f"no user {user}@{domain}")
        if "uri" in _guard(db.tables):
            _guard(lambda: db.delete("uri", {"username": user, "domain": domain}))
    return {"removed": f"{user}@{domain}"}


def cmd_passwd(env: Env, args: list[str]) -> dict[str, Any]:
    _need(args, 2, "passwd USER@DOMAIN PASSWORD")
    user, domain = split_account(args[0])
    ha1, ha1b = ha1_pair(user, domain, args[1])
    store = env.calculate_ha1 is not False
    values = {"ha1": ha1, "ha1b": ha1b, "password": args[1] if store else ""}
    with env.open() as db:
        n = _guard(lambda: db.update("subscriber", {"username": user, "domain": domain}, values))
    if not n:
        raise CtlDbError(f"no user {user}@{domain}")
    return {"changed": f"{user}@{domain}", "password_stored": store}


# ---- aliases -----------------------------------------------------------------------------

def _alias_aor(text: str) -> tuple[str, str | None]:
    text = text.strip().removeprefix("sip:")
    user, at, domain = text.partition("@")
    if not _USER.match(user) or (at and not _DOMAIN.match(domain)):
        raise UsageError(f"bad alias {text!r} (ALIAS or ALIAS@DOMAIN)")
    return user.lower(), domain.lower() if at else None


def cmd_alias(env: Env, args: list[str]) -> Any:
    if not args:
        raise UsageError("usage: natserverctl alias add ALIAS URI | alias rm ALIAS | alias show")
    sub, rest = args[0], args[1:]
    if sub == "add":
        _need(rest, 2, "alias add ALIAS URI")
        return _alias_add(env, rest[0], rest[1])
    if sub == "rm":
        _need(rest, 1, "alias rm ALIAS")
        return _alias_rm(env, rest[0])
    if sub == "show":
        _need(rest, 0, "alias show")
        with env.open() as db:
            rows = _guard(lambda: db.select("aliases", ["username", "domain", "contact"],
                                            order_by="id"))
        return [{"alias": u + (f"@{d}" if d else ""), "uri": c} for u, d, c in rows]
    raise UsageError(f"unknown alias command {sub!r} (add, rm, show)")


def _alias_add(env: Env, alias: str, uri: str) -> dict[str, Any]:
    user, domain = _alias_aor(alias)
    if not re.match(r"^(sip|sips|tel):\S+$", uri):
        raise UsageError(f"bad URI {uri!r}")
    ruid = "ns-" + secrets.token_hex(10)
    now = int(time.time())
    row = {"ruid": ruid, "username": user, "domain": domain, "contact": uri, "expires": NEVER,
           "q": -1.0, "callid": "natserverctl", "cseq": 1, "last_modified": now,
           "user_agent": "natserverctl"}
    with env.open() as db:
        where: dict[str, Any] = {"username": user, "contact": uri}
        if domain:
            where["domain"] = domain
        if _guard(lambda: db.select("aliases", ["id"], where)):
            raise CtlDbError(f"alias {alias} -> {uri} exists already")
        _guard(lambda: db.insert("aliases", row))
    told = _tell(env, "ul", ["add", "aliases", alias, uri, ruid])
    return {"alias": alias, "uri": uri, "server_updated": told}


def _alias_rm(env: Env, alias: str) -> dict[str, Any]:
    user, domain = _alias_aor(alias)
    where: dict[str, Any] = {"username": user}
    if domain:
        where["domain"] = domain
    with env.open() as db:
        n = _guard(lambda: db.delete("aliases", where))
    told = _tell(env, "ul", ["rm", "aliases", alias])
    if not n and not told:
        raise CtlDbError(f"no alias {alias}")
    return {"removed": alias, "rows": n, "server_updated": told}


def _tell(env: Env, cmd: str, args: list[str]) -> bool:
    """Pass a change to a running server; False when none answers (or it refused)."""
    if env.tell_server is None:
        return False
    try:
        env.tell_server(cmd, args)
    except Exception:  # noqa: BLE001 - the DB holds the change; the server reads it at start
        return False
    return True


# ---- schema -----------------------------------------------------------------------------

def cmd_db(env: Env, args: list[str]) -> Any:
    if not args or args[0] != "init" or len(args) > 2 or (len(args) == 2 and args[1] != "--print"):
        raise UsageError("usage: natserverctl db init [--print]")
    from natserver.db.url import parse_db_url
    try:
        url = parse_db_url(env.db_url)
    except DbError as exc:
        raise CtlDbError(str(exc)) from None
    if len(args) == 2:
        return schema_sql("mysql" if url.scheme == "mysql" else "sqlite")
    with env.open() as db:
        created = _guard(lambda: create_schema(db))
    return {"database": url.redacted(), "created": created}


COMMANDS: dict[str, Callable[[Env, list[str]], Any]] = {
    "add": cmd_add,
    "rm": cmd_rm,
    "passwd": cmd_passwd,
    "alias": cmd_alias,
    "db": cmd_db,
}


def run(args: argparse.Namespace) -> tuple[int, Any, str]:
    """Run the provisioning command in ``args`` (natserverctl's parsed arguments):
    (exit code, data, error message)."""
    from natserver import ctl_protocol as proto
    from natserver.ctlcli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Target, Unreachable, call
    from natserver.ctlcli import find_target

    cfg_text = None
    try:
        with open(args.cfg, encoding="utf-8", errors="replace") as fh:
            cfg_text = fh.read()
    except OSError:
        if args.cfg_given:
            return EXIT_FAILED, None, f"cannot read {args.cfg}"
    try:
        target = find_target(args) if cfg_text is not None or args.fifo or args.socket \
            else Target(db_url=args.db or "")
    except Unreachable as exc:
        return EXIT_FAILED, None, str(exc)

    def tell(cmd: str, cargs: list[str]) -> Any:
        reply, _ = call(target, proto.Request(cmd, cargs), args.timeout)
        if not reply.ok:
            raise CtlDbError(reply.reason)
        return reply.data

    env = Env(target.db_url, None if cfg_text is None else calculate_ha1_in(cfg_text),
              tell if (target.socket or target.fifo) else None)
    try:
        return EXIT_OK, COMMANDS[args.command](env, list(args.args)), ""
    except UsageError as exc:
        return EXIT_USAGE, None, str(exc)
    except CtlDbError as exc:
        return EXIT_FAILED, None, str(exc)
