"""usrloc db_mode 2 (write-back) across a crash and a graceful stop of the real server:
SIGKILL to the supervisor and every child at once loses at most what was acknowledged
within the last timer_interval; SIGTERM loses nothing. On SQLite and MariaDB."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.helpers.mariadb import mariadb_server  # noqa: F401 - fixture
from tests.helpers.procs import NatServer, Netns, ctl, need_root
from tests.helpers.regclient import register
from tests.helpers.sipclient import Endpoint

TIMER_INTERVAL = 2
USERS = 100


def cfg(url: str, fifo: str, timer_interval: int) -> str:
    return f"""
debug=3
fork=no
log_stderror=yes
listen=127.0.0.1
port=0
children=2
fifo="{fifo}"
loadmodule "sl.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("usrloc", "db_url", "{url}")
modparam("usrloc", "db_mode", 2)
modparam("usrloc", "timer_interval", {timer_interval})
route {{
  if (method=="REGISTER") {{
    if (!save("location")) {{ sl_reply_error(); }};
    break;
  }};
  sl_send_reply("404", "Not Here");
}}
"""


@pytest.fixture(params=["sqlite", "mariadb"])
def url(request, tmp_path):
    need_root()
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path}/natserver.db"
    else:
        server = request.getfixturevalue("mariadb_server")
        url = server.url(server.create_database(), unix=True)
    ctl("--db", url, "db", "init")
    return url


@pytest.fixture
def ns():
    need_root()
    n = Netns()
    yield n
    n.destroy()


def start(ns: Netns, url: str, tmp, timer_interval: int) -> NatServer:
    return NatServer(ns, cfg(url, str(tmp / "fifo"), timer_interval), tmp).wait_ready()


def register_users(srv: NatServer, users: range) -> set[str]:
    """REGISTER each user once; the AORs that got their 200."""
    ep = Endpoint(srv.ns.socket())
    acked = set()
    try:
        for i in users:
            ep.send(register(f"user{i}", "example.org", ep.addr,
                             contact=f"<sip:user{i}@127.0.0.1:{ep.addr[1]}>", expires=3600),
                    srv.addr)
            r = ep.expect(3)
            assert r.status == 200, r.first
            acked.add(f"user{i}")
    finally:
        ep.close()
    return acked


def bound(srv: NatServer) -> set[str]:
    return {row["aor"] for row in srv.ctl_json("ul", "show")}


def kill_everything(srv: NatServer) -> None:
    """SIGKILL the supervisor and all its children at once (no graceful anything)."""
    sup = psutil.Process(srv.pid)
    procs = [sup, *sup.children(recursive=True)]
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    psutil.wait_procs(procs, timeout=5)
    srv.proc.wait(5)


def test_kill_9_keeps_what_was_acknowledged_a_timer_interval_ago(url, ns, tmp_path):
    srv = start(ns, url, tmp_path, TIMER_INTERVAL)
    try:
        old = register_users(srv, range(USERS))
        # one interval for the flush to come round, plus room for the flush itself
        time.sleep(TIMER_INTERVAL + 1.5)
        register_users(srv, range(USERS, USERS + 10))  # too recent to be promised
        kill_everything(srv)
    finally:
        srv.stop()
    again = start(ns, url, tmp_path, TIMER_INTERVAL)
    try:
        assert old <= bound(again)
    finally:
        again.stop()


def test_graceful_stop_loses_nothing(url, ns, tmp_path):
    srv = start(ns, url, tmp_path, 3600)  # the timer never flushes on its own here
    try:
        acked = register_users(srv, range(USERS))
        assert srv.ctl_json("ul", "show")[0]["synced"] is False
    finally:
        assert srv.stop() == 0
    assert "usrloc: location flushed to the DB" in srv.log_text()
    again = start(ns, url, tmp_path, 3600)
    try:
        assert bound(again) == acked
    finally:
        again.stop()
