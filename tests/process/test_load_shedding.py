"""Load shedding against the real server: requests that waited in the kernel queue
make new requests get 503 + Retry-After while in-dialog requests are still served.

The backlog is made for real: the only SIP worker is stopped (SIGSTOP) while a burst
is sent and for a while after, then continued, so it finds requests that waited.
"""

from __future__ import annotations

import signal
import socket
import time

import psutil
import pytest

from tests.helpers.server import Netns, Server, need_root
from tests.helpers.sipclient import parse, request

CFG = """
debug=3
fork=no
log_stderror=yes
listen=127.0.0.1
port=0
children=1
rtp_relays=0
{shed}
loadmodule "sl.so"
route {{
  sl_send_reply("200", "OK");
}}
"""
BURST = 1200
STOPPED = 0.6  # s the worker stays stopped: the burst waits longer than load_shed


def worker(server: Server) -> psutil.Process:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for p in psutil.Process(server.proc.pid).children():
            if "sip worker" in " ".join(p.cmdline()):
                return p
        time.sleep(0.05)
    raise AssertionError("no sip worker")


def run_burst(tmp_path, shed: str) -> tuple[dict[int, int], dict[int, int], list[bytes], Server]:
    """Stop the worker, queue a burst of new (OPTIONS) and in-dialog (BYE) requests,
    continue it; returns the statuses for each kind, the 503s and the server."""
    need_root()
    ns = Netns()
    srv = Server(ns, CFG.format(shed=shed), tmp_path)
    try:
        srv.wait_ready()
        sock = ns.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        src = sock.getsockname()
        proc = worker(srv)
        proc.send_signal(signal.SIGSTOP)
        try:
            for i in range(BURST):
                method, tag = ("BYE", "dlg") if i % 4 == 0 else ("OPTIONS", None)
                sock.sendto(request(method, f"sip:{srv.host}:{srv.port}", src=src,
                                    to_tag=tag, call_id=f"c{i}"), srv.addr)
            time.sleep(STOPPED)
        finally:
            proc.send_signal(signal.SIGCONT)
        time.sleep(1.0)  # the backlog is served; then requests that do not wait
        for i in range(20):
            sock.sendto(request("OPTIONS", f"sip:{srv.host}:{srv.port}", src=src,
                                call_id=f"late{i}"), srv.addr)
            time.sleep(0.01)
        new: dict[int, int] = {}
        dialog: dict[int, int] = {}
        shed_replies: list[bytes] = []
        sock.settimeout(3.0)
        try:
            while True:
                data = sock.recv(65535)
                p = parse(data)
                kind = dialog if p.get("CSeq").endswith("BYE") else new
                kind[p.status] = kind.get(p.status, 0) + 1
                if p.status == 503:
                    shed_replies.append(data)
        except TimeoutError:
            pass
        sock.close()
        return new, dialog, shed_replies, srv
    finally:
        srv.stop()
        ns.destroy()


def test_backlog_sheds_new_requests_but_serves_dialogs(tmp_path):
    new, dialog, shed, srv = run_burst(tmp_path, "load_shed=200")
    assert new.get(503, 0) > 0, (new, srv.log_text()[-2000:])
    assert all(b"\r\nRetry-After: 5\r\n" in r for r in shed)
    assert set(dialog) == {200}, dialog  # nothing in a dialog was shed
    assert new.get(200, 0) >= 20  # shedding ended once the queue was fast again
    assert new.get(503, 0) + new.get(200, 0) == BURST * 3 // 4 + 20
    assert "shedding new requests (503)" in srv.log_text()


def test_load_shed_0_never_sheds(tmp_path):
    new, dialog, shed, _ = run_burst(tmp_path, "load_shed=0")
    assert 503 not in new and not shed and set(dialog) <= {200}
