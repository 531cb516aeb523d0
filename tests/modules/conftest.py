"""Module tests: a cfg snippet compiled with the real modules, a Context built the way
the supervisor builds one (secret, shm tables from every module's ``shm_tables``, module
``init``), requests driven through the real receive path, replies read from a
ListTransport. Storage-backed tests run on SQLite and on a throwaway MariaDB (``db_url``
is parametrised over both; tests/helpers/mariadb.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from natserver.context import Context, ListTransport
from natserver.db import open_db
from natserver.db.schema import create_schema
from natserver.receive import receive
from natserver.script import load
from natserver.script.runtime import MsgCtx
from natserver.modules import Function, Module, ModuleSpec, RouteType, find
from natserver.shm import Tables
from natserver.sip.message import Message
from tests.helpers.mariadb import db_url, mariadb_server, mariadb_url  # noqa: F401
from tests.helpers.sipclient import Parsed, parse

SRC = ("192.0.2.50", 5062)
LOCAL = ("127.0.0.1", 5060)

# The seed's route[2] without nathelper's lines (nat_uac_test/fix_nated_register are
# nathelper's); flag 6 comes from an X-Test-Nat header instead.
ROUTE2 = """
route[2] {
  if (search("^X-Test-Nat: yes")) {
    setflag(6);
    force_rport();
  };
  if (!www_authorize("", "subscriber")) {
    www_challenge("", "%(qop)s");
    break;
  };
  if (!check_to()) {
    sl_send_reply("401", "Unauthorized");
    break;
  };
  consume_credentials();
  if (!save("location")) {
    sl_reply_error();
  };
}
"""

MAIN = """
route {
  if (method=="REGISTER") {
    if (search("^X-No-Auth: yes")) { route(5); break; };
    route(2);
    break;
  };
  if (search("^X-Aliases: yes")) { lookup("aliases"); };
  if (!lookup("location")) {
    sl_send_reply("404", "User Not Found");
    break;
  };
  sl_send_reply("302", "Moved Temporarily");
}
route[5] {
  if (search("^X-Test-Nat: yes")) { setflag(6); };
  if (!save("location")) { sl_reply_error(); };
}
"""


def cfg_text(db: str, *, db_mode: int = 0, params: str = "", qop: str = "0",
             timer_interval: int = 60) -> str:
    return f"""
listen=127.0.0.1
port=5060
children=1
ul_table_size=512
loadmodule "sl.so"
loadmodule "textops.so"
loadmodule "mysql.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
loadmodule "uri_db.so"
modparam("auth_db|uri_db|usrloc", "db_url", "{db}")
modparam("auth_db", "calculate_ha1", 1)
modparam("auth_db", "password_column", "password")
modparam("usrloc", "db_mode", {db_mode})
modparam("usrloc", "timer_interval", {timer_interval})
modparam("registrar", "nat_flag", 6)
modparam("auth", "nc_array_size", 1024)
{params}
{MAIN}
{ROUTE2 % {"qop": qop}}
"""


class RegTest(Module):
    """Test-only stand-in for nathelper's fix_nated_register(): the source address as
    the received URI (what SER stored in AVP 42)."""

    NAME = "regtest"

    def set_received(self, m: MsgCtx) -> int:
        m.received = f"sip:{m.src_ip}:{m.src_port}".encode()
        return 1


def finder(name: str) -> ModuleSpec | None:
    if name == "regtest":
        return ModuleSpec("regtest", RegTest, (Function("set_received", RegTest.set_received),),
                          {})
    return find(name)


class Harness:
    """One natserver's worth of modules in this process (no sockets, no fork)."""

    def __init__(self, text: str, tmp: Path, *, now: float | None = None,
                 secret: bytes | None = None) -> None:
        self.script = load(str(tmp / "test.cfg"), text=text, finder=finder)
        ctx = Context(self.script.config, str(tmp / "test.cfg"))
        ctx.script = self.script
        ctx.secret = secret or os.urandom(16)
        ctx.set_modules(self.script.modules)
        self.transport = ListTransport()
        ctx.transport = self.transport
        self.mono = 1000.0
        ctx.mono = lambda: self.mono
        specs: dict[str, tuple[int, int, int]] = {}
        for module in ctx.modules.values():
            specs.update(module.shm_tables(ctx))
        ctx.tables = Tables.build(specs)
        self.ctx = ctx
        self.now = time.time() if now is None else now
        for module in ctx.modules.values():
            module.init(ctx)

    @property
    def ul(self) -> Any:
        return self.ctx.modules["usrloc"]

    def send(self, data: bytes, src: tuple[str, int] = SRC) -> list[Parsed]:
        """Everything the server sent in answer to ``data``, parsed."""
        receive(self.ctx, data, src, LOCAL, self.now)
        return [parse(d) for d, _ in self.transport.take()]

    def final(self, data: bytes, src: tuple[str, int] = SRC) -> Parsed:
        """The final reply (1xx skipped) - exactly one must come."""
        finals = [r for r in self.send(data, src) if r.status >= 200]
        assert len(finals) == 1, [r.first for r in finals]
        return finals[0]

    def run(self, data: bytes, src: tuple[str, int] = SRC) -> MsgCtx:
        """Run route{} for ``data`` and return the message state it left."""
        m = MsgCtx(self.ctx, Message.parse(data), src, LOCAL, RouteType.REQUEST, self.now)
        self.script.run_request(m)
        self.transport.take()
        return m

    def timer(self, seconds: float = 0.0, *, force: bool = True) -> None:
        """Let ``seconds`` pass, then run usrloc's timer until its pass is complete
        (``force``: start a pass now even if timer_interval has not passed)."""
        self.now += seconds
        self.mono += seconds
        ul = self.ul
        if force:
            ul.next_pass = 0.0
        for _ in range(10000):
            delay = ul.timer(self.ctx, self.now)
            if delay and not ul.passes:
                return
            if delay:
                self.mono += delay

    def close(self) -> None:
        for module in self.ctx.modules.values():
            for attr in ("db",):
                db = getattr(module, attr, None)
                if db is not None:
                    db.close()
            locks = getattr(module, "locks", None)
            if locks is not None:
                locks.close()
        self.ctx.tables.close()


@pytest.fixture
def schema_url(db_url):  # noqa: F811 - the fixture imported above
    """``db_url`` with the Kamailio schema created."""
    with open_db(db_url) as db:
        create_schema(db)
    return db_url


@pytest.fixture
def make(tmp_path):
    """``make(cfg_text, **kw) -> Harness``; every harness is closed after the test."""
    made: list[Harness] = []

    def factory(text: str, **kw: Any) -> Harness:
        h = Harness(text, tmp_path, **kw)
        made.append(h)
        return h
    yield factory
    for h in made:
        h.close()


def add_user(url: str, user: str, domain: str, password: str, **extra: Any) -> None:
    """A subscriber row the way kamctl writes one."""
    from natserver.ctl_db import ha1_pair
    ha1, ha1b = ha1_pair(user, domain, password)
    row = {"username": user, "domain": domain, "password": password, "ha1": ha1,
           "ha1b": ha1b, **extra}
    with open_db(url) as db:
        db.insert("subscriber", row)
