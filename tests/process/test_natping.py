"""The natping process of the real server (loopback-only netns): 4-byte keepalives reach
a NATed UA's real socket from the server's SIP port every natping_interval, nothing
reaches a contact without the NAT mark, an expired binding stops being pinged, the ctl
switch stops and resumes pinging, and a killed natping process is replaced."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.helpers.procs import NatServer, Netns, need_root
from tests.helpers.sipclient import Endpoint, parse, rand_token

INTERVAL = 1
PING = b"\x00\x00\x00\x00"


def cfg(fifo: str) -> str:
    return f"""
debug=3
fork=no
log_stderror=yes
listen=127.0.0.1
port=0
children=2
fifo="{fifo}"
loadmodule "sl.so"
loadmodule "textops.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "nathelper.so"
modparam("nathelper", "natping_interval", {INTERVAL})
modparam("nathelper", "ping_nated_only", 1)
modparam("registrar", "nat_flag", 6)
modparam("registrar", "min_expires", 1)
route {{
  if (method=="REGISTER") {{
    if (!search("^Contact:[ ]*\\*") && nat_uac_test("19")) {{
      setflag(6);
      fix_nated_register();
      force_rport();
    }};
    if (!save("location")) {{ sl_reply_error(); }};
    break;
  }};
  sl_send_reply("404", "Not Here");
}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_root()
    tmp = tmp_path_factory.mktemp("natping")
    ns = Netns("nsp")
    srv = NatServer(ns, cfg(str(tmp / "fifo")), tmp)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        ns.destroy()


@pytest.fixture
def ua(server):
    ep = Endpoint(server.ns.socket())
    yield ep
    ep.close()


def register(server, ep: Endpoint, *, nated: bool, expires: int = 300) -> str:
    """REGISTER a fresh user from ``ep``; NATed = Via and Contact claim 192.168.1.10:5060."""
    user = "u" + rand_token(8)
    host = "192.168.1.10:5060" if nated else f"{ep.addr[0]}:{ep.addr[1]}"
    data = (f"REGISTER sip:example.org SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host};branch=z9hG4bK{rand_token()}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@example.org>;tag={rand_token(6)}\r\n"
            f"To: <sip:{user}@example.org>\r\nCall-ID: {rand_token(12)}\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:{user}@{host}>\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n")
    ep.send(data.encode(), server.addr)
    got = ep.recv_raw(3)
    assert got is not None, "no answer to REGISTER"
    reply = parse(got[0])
    assert reply.status == 200, reply.first
    return user


def pings(server, ep: Endpoint, seconds: float) -> list[float]:
    """Arrival times of keepalives within ``seconds``; anything else fails the test."""
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        got = ep.recv_raw(left)
        if got is None:
            break
        data, src = got
        assert data == PING, data[:80]
        assert src == server.addr          # from the SIP socket, the one the NAT knows
        out.append(time.monotonic())
    return out


def test_nated_contact_gets_a_keepalive_every_interval(server, ua):
    register(server, ua, nated=True)
    times = pings(server, ua, 4.5 * INTERVAL)
    assert 3 <= len(times) <= 6, times
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(0.5 * INTERVAL < g < 1.8 * INTERVAL for g in gaps), gaps


def test_contact_without_nat_mark_gets_none(server, ua):
    register(server, ua, nated=False)
    assert pings(server, ua, 2.5 * INTERVAL) == []


def test_expired_binding_stops_being_pinged(server, ua):
    register(server, ua, nated=True, expires=2)
    assert pings(server, ua, 2.0)                    # pinged while bound
    time.sleep(0.3)
    while ua.recv_raw(0.05) is not None:             # drop what arrived in between
        pass
    assert pings(server, ua, 2.5 * INTERVAL) == []


def test_ctl_switch_stops_and_resumes(server, ua):
    register(server, ua, nated=True)
    assert pings(server, ua, 2 * INTERVAL)
    assert server.ctl_json("nh_enable_ping", "0")["enabled"] is False
    try:
        time.sleep(0.2)
        while ua.recv_raw(0.05) is not None:
            pass
        assert pings(server, ua, 2.5 * INTERVAL) == []
        assert server.ctl_json("nh_enable_ping")["enabled"] is False
    finally:
        assert server.ctl_json("nh_enable_ping", "1")["enabled"] is True
    assert pings(server, ua, 2 * INTERVAL)


def test_killed_natping_process_is_replaced_and_pings_go_on(server, ua):
    register(server, ua, nated=True)
    assert pings(server, ua, 2 * INTERVAL)
    old = server.wait_child("natserver: natping")
    os.kill(old, signal.SIGKILL)
    new = server.wait_child("natserver: natping", not_pid=old, timeout=5.0)
    assert new != old
    while ua.recv_raw(0.05) is not None:
        pass
    assert len(pings(server, ua, 2.5 * INTERVAL)) >= 2
