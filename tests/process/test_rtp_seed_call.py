"""The seed's call through natserver's own relay (issue 7): conf/natserver.cfg rendered
with a tmp ``rtpproxy_sock`` (served by the built-in relay, ``rtp_relays=1``) and a
small port range; two phones behind a "NAT" (private Contact and SDP, sending from
127.0.0.1) register, call, re-INVITE and hang up (tests/interop/seedcall.py).

Checked: force_rtp_proxy on the INVITE and the 200 made one relay session; the SDP
each side received points at the relay; RTP-sized packets go through both ways; the
re-INVITE (force_rtp_proxy("l")) keeps the ports, also for hold (c=0.0.0.0 reaches
the other side unchanged) and resume, and when the callee re-INVITEs; the BYE
(unforce_rtp_proxy) frees the session and its ports. A stranger (another IP) sending
to the relay ports reaches nobody (RTP bleed); a session without media for
rtp_timeout expires with its ports. With the relay down, the call goes on unrelayed.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers.server import Netns, need_root
from tests.interop.seedcall import (
    Phone,
    SeedServer,
    exchange,
    hang_up,
    reinvite,
    reinvite_from_callee,
    rtp,
    seed_call,
)

PORTS = (30000, 30199)


@pytest.fixture(params=["unix", "udp"])
def lab(request, tmp_path):
    need_root()
    ns = Netns("nsrs")
    sock = ("unix:{rundir}/rtpproxy.sock" if request.param == "unix"
            else "udp:127.0.0.1:7722")      # inside our own namespace
    server = None
    try:
        server = SeedServer(ns, tmp_path, rtpproxy_sock=sock, relays=1, ports=PORTS)
        yield ns, server
    finally:
        if server is not None:
            server.stop()
        ns.destroy()
    assert "Traceback" not in server.log_text(), server.log_text()[-5000:]


def sessions(server: SeedServer) -> list[dict]:
    return json.loads(server.ctl("rtp", json_out=True))["sessions"]


def test_seed_call_through_the_builtin_relay(lab):
    ns, server = lab
    alice = Phone(ns, "alice", "192.168.1.10")
    bob = Phone(ns, "bob", "192.168.1.20")
    try:
        alice.register()
        bob.register()
        call = seed_call(alice, bob)
        rows = sessions(server)
        assert len(rows) == 1, rows
        row = rows[0]
        assert row["callid"] == alice.call_id and row["tags"] == [alice.tag, bob.tag]
        # the SDP each side received points at the relay's ports for the other side
        assert call.offer_seen.ip == "127.0.0.1" and call.answer_seen.ip == "127.0.0.1"
        assert call.offer_seen.marker and call.answer_seen.marker
        assert sorted(row["ports"]) == sorted([call.offer_seen.port, call.answer_seen.port])
        assert all(PORTS[0] <= p <= PORTS[1] for p in row["ports"])
        # signalled: the SIP source IP with the SDP port (not the private SDP address)
        assert sorted(row["signalled"]) == sorted([f"127.0.0.1:{alice.rtp_port}",
                                                   f"127.0.0.1:{bob.rtp_port}"])

        got_bob, got_alice = exchange(alice, call.answer_seen, bob, call.offer_seen)
        assert len(got_bob) >= 18 and len(got_alice) >= 18, (len(got_bob), len(got_alice))
        assert all(len(p) == 172 and p[12:22] == b"from-alice" for p in got_bob)
        assert all(len(p) == 172 and p[12:20] == b"from-bob" for p in got_alice)
        # RTP bleed: a stranger's packets to either relay port reach nobody
        stranger = ns.socket(bind=("127.0.0.2", 0))
        try:
            for port in (call.offer_seen.port, call.answer_seen.port):
                for i in range(10):
                    stranger.sendto(rtp(i, b"stranger"), ("127.0.0.1", port))
            heard = alice.drain(0.3) + bob.drain(0.1)
            assert not any(b"stranger" in p for p in heard), "a stranger's packets relayed"
        finally:
            stranger.close()

        again = reinvite(call)
        assert (again.offer_seen.port, again.answer_seen.port) == \
            (call.offer_seen.port, call.answer_seen.port)
        assert len(sessions(server)) == 1
        got_bob, got_alice = exchange(alice, again.answer_seen, bob, again.offer_seen, 10)
        assert len(got_bob) >= 8 and len(got_alice) >= 8

        # hold (c=0.0.0.0, a=sendonly): the null address reaches bob, the port stays
        held = reinvite(call, 3, hold=True)
        assert held.offer_seen.ip == "0.0.0.0" and held.offer_seen.direction == "sendonly"
        assert held.offer_seen.port == call.offer_seen.port and held.offer_seen.marker
        assert held.answer_seen.ip == "127.0.0.1"
        assert held.answer_seen.port == call.answer_seen.port
        assert held.answer_seen.direction == "recvonly"
        # on hold alice still sends (sendonly) and bob hears her through the relay
        got_bob, _ = exchange(alice, held.answer_seen, bob, call.offer_seen, 5)
        assert len(got_bob) >= 4
        resumed = reinvite(call, 4)
        assert resumed.offer_seen.ip == "127.0.0.1"
        assert resumed.offer_seen.port == call.offer_seen.port
        got_bob, got_alice = exchange(alice, resumed.answer_seen, bob, resumed.offer_seen, 10)
        assert len(got_bob) >= 8 and len(got_alice) >= 8
        assert len(sessions(server)) == 1
        # the callee re-INVITEs: its side of the same session, the ports stay
        back = reinvite_from_callee(call)
        assert back.offer_seen.port == call.answer_seen.port      # alice's view
        assert back.answer_seen.port == call.offer_seen.port      # bob's view
        assert len(sessions(server)) == 1
        got_bob, got_alice = exchange(alice, back.offer_seen, bob, back.answer_seen, 10)
        assert len(got_bob) >= 8 and len(got_alice) >= 8

        hang_up(call)
        deadline = time.monotonic() + 3
        while sessions(server):
            assert time.monotonic() < deadline, sessions(server)
            time.sleep(0.05)
        # the ports are free again: nothing is relayed, and they can be bound
        got_bob, got_alice = exchange(alice, call.answer_seen, bob, call.offer_seen, 5)
        assert got_bob == [] and got_alice == []
        for port in (call.offer_seen.port, call.answer_seen.port):
            ns.socket(bind=("127.0.0.1", port)).close()
    finally:
        alice.close()
        bob.close()


def test_idle_session_of_a_seed_call_expires(tmp_path):
    """No media for rtp_timeout: the session made by the seed's INVITE/200 goes, and
    its ports with it (the call itself is signalling's business)."""
    need_root()
    ns = Netns("nsri")
    server = None
    try:
        server = SeedServer(ns, tmp_path, rtpproxy_sock="unix:{rundir}/rtpproxy.sock",
                            relays=1, ports=PORTS, extra="rtp_timeout=2")
        alice = Phone(ns, "alice", "192.168.1.10")
        bob = Phone(ns, "bob", "192.168.1.20")
        try:
            alice.register()
            bob.register()
            call = seed_call(alice, bob)
            assert len(sessions(server)) == 1
            deadline = time.monotonic() + 8
            while sessions(server):
                assert time.monotonic() < deadline, sessions(server)
                time.sleep(0.2)
            for port in (call.offer_seen.port, call.answer_seen.port):
                ns.socket(bind=("127.0.0.1", port)).close()
            hang_up(call)      # D for a session already gone: the BYE still goes through
        finally:
            alice.close()
            bob.close()
    finally:
        if server is not None:
            server.stop()
        ns.destroy()
    assert "Traceback" not in server.log_text(), server.log_text()[-5000:]


def test_relay_down_the_seed_call_goes_on_unrelayed_and_is_logged_once(tmp_path):
    """rtpproxy_sock names a socket nobody serves: force_rtp_proxy returns false, the
    seed ignores that and the call goes through with its SDP unchanged; the failure is
    logged once per burst, not per message."""
    need_root()
    ns = Netns("nsrd")
    server = None
    try:
        server = SeedServer(ns, tmp_path, rtpproxy_sock="unix:{rundir}/nobody.sock",
                            relays=0, ports=PORTS)
        alice = Phone(ns, "alice", "192.168.1.10")
        bob = Phone(ns, "bob", "192.168.1.20")
        try:
            alice.register()
            bob.register()
            for _ in range(2):
                alice.remote_tag = ""
                call = seed_call(alice, bob)
                assert call.offer_seen.ip == "192.168.1.10" and not call.offer_seen.marker
                assert call.offer_seen.port == alice.rtp_port
                assert call.answer_seen.ip == "192.168.1.20"
                hang_up(call)
        finally:
            alice.close()
            bob.close()
    finally:
        if server is not None:
            server.stop()
        ns.destroy()
    log = server.log_text()
    assert "Traceback" not in log, log[-5000:]
    # one line per worker that met the dead relay (4 workers), not one per message
    lines = [ln for ln in log.splitlines() if "no rtpproxy answers" in ln]
    assert 1 <= len(lines) <= 4, lines
