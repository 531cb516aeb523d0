"""kill -9 of the SIP worker that relayed an INVITE, while the UAS takes 2 s to answer:
the call still completes, because the transaction lives in shared memory and its
timers are taken over by the respawned worker (issue 4 acceptance)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.helpers.procs import Netns, need_root
from tests.helpers.tmtest import ProxyServer
from tests.helpers.uas import Uac, Uas, UasScript
from tests.process.test_proxy_calls import CFG, ruri, worker_stats


@pytest.fixture(params=["shared", "per_worker"])
def server(request, tmp_path):
    need_root()
    ns = Netns("nsk")
    cfg = CFG.replace("{fifo}", str(tmp_path / "fifo")).replace(
        "children=4", f'children=4\nreuseport="{request.param}"')
    # the UAS answers after 2 s: the timers must not end the call first
    cfg = cfg.replace('"fr_timer", 1', '"fr_timer", 5')
    cfg = cfg.replace('"fr_inv_timer", 2', '"fr_inv_timer", 5')
    srv = ProxyServer(ns, cfg, tmp_path)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        ns.destroy()


def creator_of_new_transaction(srv: ProxyServer, before: dict[str, dict]) -> dict:
    deadline = time.monotonic() + 2.0
    while True:
        for name, row in worker_stats(srv).items():
            if row["tm_created"] > before.get(name, {}).get("tm_created", 0):
                return row
        if time.monotonic() > deadline:
            raise AssertionError("no worker counted the new transaction")
        time.sleep(0.02)


@pytest.mark.parametrize("ring", [True, False], ids=["ringing", "silent-until-200"])
def test_kill9_of_the_invite_worker_loses_no_call(server, ring):
    uas = Uas(server.ns.socket(), UasScript(trying=ring, ring=ring, final=200, final_after=2.0))
    uac = Uac(server.ns.socket(), server.addr)
    try:
        before = worker_stats(server)
        uac.invite(ruri(uas))
        uac.expect(100)
        if ring:
            uac.expect(180)
        row = creator_of_new_transaction(server, before)
        os.kill(row["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        server.wait_child(f"natserver: {row['proc']}", not_pid=row["pid"], timeout=3.0)
        ok = uac.expect(200, timeout=5.0)
        assert time.monotonic() - killed_at < 4.0
        if not ring:
            # Timer A kept retransmitting the INVITE after the worker died
            assert len(uas.requests("INVITE")) >= 2 and len(uas.invite_branches) == 1
        uac.dialog_from(ok)
        uac.ack_2xx()
        uas.wait_for("ACK")
        uac.bye()
        uas.wait_for("BYE")
        uac.expect(200)
        assert "took over the timers" in server.log_text() or ring
    finally:
        uas.stop()
        uac.sock.close()
