"""Self-tests of the NAT harness, against the reference server (kamailio + rtpengine).

They prove that the topology behaves like the NATs it claims to be, that both user
agents register with digest auth, call through NAT and measurably exchange audio
through a relay, and that conntrack timeouts plus server NAT pings behave as in the
field. Once these pass, a failure of the same scenario against natserver is natserver's.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time

import pytest

from tests.helpers.netns import (PORT_RANGE, SERVER_IP, NatMode, RouterSpec, Topology,
                                 list_namespaces, pids_in, sweep, wait_until)
from tests.helpers.refserver import RELAY_PORTS
from tests.helpers.tonecheck import dominant_tone

pytestmark = [pytest.mark.nat, pytest.mark.root]

TALK_SECS = 2.0
MIN_RX = 50  # packets in TALK_SECS at 50 pps, with generous room for start-up


# ---------------------------------------------------------------------------- helpers
def recv(sock: socket.socket, timeout: float) -> tuple[bytes, tuple[str, int]] | None:
    sock.settimeout(timeout)
    try:
        return sock.recvfrom(65535)
    except (TimeoutError, socket.timeout):
        return None


def sip_register_text(ip: str, port: int) -> bytes:
    tag = secrets.token_hex(4)
    return (f"REGISTER sip:{SERVER_IP} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK{tag}\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:alg@{SERVER_IP}>;tag={tag}\r\n"
            f"To: <sip:alg@{SERVER_IP}>\r\n"
            f"Call-ID: {tag}@{ip}\r\n"
            f"CSeq: 1 REGISTER\r\n"
            f"Contact: <sip:alg@{ip}:{port}>\r\n"
            f"Expires: 60\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


# ------------------------------------------------------------------- topology & NAT
@pytest.mark.parametrize("mode", list(NatMode))
def test_topology_nat_behaviour(nat_lab, mode: NatMode) -> None:
    topo = nat_lab.network([mode, mode], public_hosts=1)
    names = topo.namespaces
    assert list_namespaces(topo.prefix) == sorted(names)
    ua1, router = topo.host("ua1"), topo.router("nat1")
    pua = topo.host("pua1")

    servers = [topo.socket(topo.server, bind=(SERVER_IP, 0)) for _ in range(3)]
    s1, s2, s3 = servers
    p1, p2 = s1.getsockname()[1], s2.getsockname()[1]
    ua = topo.socket(ua1, bind=(ua1.ip, 0))
    local_port = ua.getsockname()[1]

    ua.sendto(b"probe-1", (SERVER_IP, p1))
    ua.sendto(b"probe-2", (SERVER_IP, p2))
    got1, got2 = recv(s1, 2.0), recv(s2, 2.0)
    assert got1 and got2, "UA behind the NAT cannot reach the server"
    (ip1, port1), (ip2, port2) = got1[1], got2[1]
    assert ip1 == ip2 == router.wan_ip, "the source is not the router's WAN address"

    if mode in (NatMode.MASQ, NatMode.ALG):
        assert port1 == port2 == local_port, "masquerade did not keep a free port"
    elif mode is NatMode.RANGE:
        assert port1 == port2, "port-translating NAT must map endpoint-independently"
        assert PORT_RANGE[0] <= port1 <= PORT_RANGE[1] and port1 != local_port
    else:
        assert port1 != port2, "symmetric NAT must map each destination separately"

    # the mapping carries replies from the contacted ip:port back to the UA ...
    s1.sendto(b"reply", got1[1])
    back = recv(ua, 2.0)
    assert back == (b"reply", (SERVER_IP, p1))
    # ... and nothing else: another server port, another WAN host, an unmapped port
    s3.sendto(b"intruder", got1[1])
    stranger = topo.socket(pua, bind=(pua.ip, 0))
    stranger.sendto(b"stranger", got1[1])
    stranger.sendto(b"unmapped", (router.wan_ip, 40999 if port1 != 40999 else 40998))
    assert recv(ua, 0.3) is None, "the NAT let an unsolicited packet in"

    # a public host is not translated
    stranger.sendto(b"public", (SERVER_IP, p1))
    got = recv(s1, 2.0)
    assert got and got[1] == stranger.getsockname()

    # the SIP ALG (only there) rewrites the private Contact of a REGISTER to port 5060
    sip_ua = topo.socket(ua1, bind=(ua1.ip, 5060))
    sip_srv = topo.socket(topo.server, bind=(SERVER_IP, 5060))
    sip_ua.sendto(sip_register_text(ua1.ip, 5060), (SERVER_IP, 5060))
    got = recv(sip_srv, 2.0)
    assert got is not None
    contact = next(ln for ln in got[0].decode().split("\r\n") if ln.startswith("Contact:"))
    if mode is NatMode.ALG:
        assert router.wan_ip in contact and ua1.ip not in contact, contact
    else:
        assert ua1.ip in contact, contact
    assert topo.conntrack_entries(router), "no conntrack entry for the probes"

    for s in (*servers, ua, stranger, sip_ua, sip_srv):
        s.close()
    sleeper = topo.spawn(ua1, ["sleep", "60"])
    # `ip netns exec` joins the namespace a moment after the fork
    wait_until(lambda: sleeper.pid in pids_in([ua1.ns]), 2.0, what="sleep in ua1")
    topo.down()
    assert list_namespaces(topo.prefix) == []
    assert sleeper.poll() is not None, "a process survived teardown"


def test_teardown_kills_unknown_processes_and_sweeps(nat_lab) -> None:
    """down() finds processes it did not spawn (they would keep a namespace alive);
    sweep() removes a topology nobody took down (what the session end does)."""
    topo = nat_lab.network([NatMode.MASQ])
    ua_ns = topo.host("ua1").ns
    # started outside Topology.spawn and detached: only the /proc scan can find it
    subprocess.run(["ip", "netns", "exec", ua_ns, "sh", "-c", "sleep 60 >/dev/null 2>&1 &"],
                   check=True, timeout=5)
    assert pids_in([ua_ns]), "the detached sleep is not in ua1"
    topo.down()
    assert list_namespaces(topo.prefix) == []
    assert not pids_in(topo.namespaces)

    orphan = Topology.build([NatMode.SYMMETRIC], public_hosts=0)
    try:
        orphan.up()
        orphan.spawn(orphan.host("ua1"), ["sleep", "60"])
        assert sweep(orphan.prefix) == sorted(orphan.namespaces)
        assert list_namespaces(orphan.prefix) == []
    finally:
        orphan.down()


def test_conntrack_udp_timeout_is_per_router(nat_lab) -> None:
    topo = nat_lab.network([RouterSpec(NatMode.MASQ, udp_timeout=2), NatMode.MASQ])
    assert topo.udp_timeouts(topo.router("nat1")) == (2, 2)
    assert topo.udp_timeouts(topo.router("nat2")) == (30, 120), "not isolated per netns"
    ua1 = topo.host("ua1")
    srv = topo.socket(topo.server, bind=(SERVER_IP, 0))
    ua = topo.socket(ua1, bind=(ua1.ip, 0))
    ua.sendto(b"hello", srv.getsockname())
    got = recv(srv, 2.0)
    assert got is not None
    time.sleep(0.5)
    srv.sendto(b"early", got[1])
    assert recv(ua, 1.0) is not None, "mapping expired before its timeout"
    time.sleep(3.2)  # > 2 s since the last packet of the flow
    srv.sendto(b"late", got[1])
    assert recv(ua, 0.5) is None, "mapping outlived the router's udp timeout"
    ua.close()
    srv.close()


# ---------------------------------------------------------------- calls: baresip
def check_baresip_call(lab, caller, callee) -> None:
    """caller calls callee for TALK_SECS and hangs up: one relay session carried both
    directions (tone heard at each end, SDP at the relay), and BYE released it."""
    sessions = lab.call(caller, callee, talk=TALK_SECS)
    assert all(RELAY_PORTS[0] <= p <= RELAY_PORTS[1] for s in sessions for p in s.ports)
    lab.assert_relayed_call(caller, callee, sessions)
    lab.wait_relay_released()


@pytest.mark.parametrize("mode", [NatMode.MASQ, NatMode.SYMMETRIC])
def test_baresip_nat_to_nat_call(nat_lab, mode: NatMode) -> None:
    topo = nat_lab.network([mode, mode])
    server = nat_lab.start_server("reference")
    a, b = nat_lab.baresip("ua1"), nat_lab.baresip("ua2")
    regs = {r.aor: r for r in server.registrations()}
    for ua in ("ua1", "ua2"):
        wan = topo.router_of(topo.host(ua)).wan_ip
        assert regs[ua].received and wan in regs[ua].received, regs
        assert topo.host(ua).ip in regs[ua].contact  # dumb UA: the server fixes NAT
    check_baresip_call(nat_lab, a, b)


def test_baresip_public_to_nat_call(nat_lab) -> None:
    nat_lab.network([NatMode.RANGE], public_hosts=1)
    nat_lab.start_server("reference")
    pub, nated = nat_lab.baresip("pua1"), nat_lab.baresip("ua1")
    regs = {r.aor: r for r in nat_lab.server.registrations()}
    assert regs["pua1"].received is None, "a public UA was taken for NATed"
    check_baresip_call(nat_lab, pub, nated)


# ------------------------------------------------------------------ calls: pjsua2
def test_pjsua2_nat_to_nat_call(nat_lab) -> None:
    nat_lab.network([NatMode.RANGE, NatMode.SYMMETRIC])
    server = nat_lab.start_server("reference")
    callee = nat_lab.pjua("ua2", "--answer")
    caller = nat_lab.pjua("ua1", "--call", f"sip:ua2@{nat_lab.domain}",
                          "--talk", str(TALK_SECS), "--exit-after-call", register=False)
    caller.wait_registered()
    caller.wait("state", 10.0, lambda d: d["state"] == "CONFIRMED")
    callee.wait("state", 10.0, lambda d: d["state"] == "CONFIRMED")
    time.sleep(0.5)
    assert len(server.relay_sessions()) == 1
    caller.wait("closed", TALK_SECS + 10.0)
    callee.wait("closed", 5.0)
    caller.wait("done", 5.0)
    assert server.relay_sessions() == []
    for ua, hears in ((caller, 840), (callee, 440)):
        stats = ua.events("stats")[-1]
        assert stats["rx_pkt"] >= MIN_RX and stats["tx_pkt"] >= MIN_RX, stats
        assert stats["src_rtp"].startswith(f"{SERVER_IP}:"), "RTP did not come from the relay"
        media = ua.events("media")[-1]
        assert media["remote_rtp"].startswith(f"{SERVER_IP}:"), media
        path = next(d["path"] for d in ua.events("recording"))
        tone = dominant_tone(path, [440, 840])
        assert tone.freq == hears and tone.share > 0.5, f"{ua.args[1]} heard {tone}"


# ----------------------------------------------------------------------- keepalive
@pytest.mark.skipif(os.environ.get("NATTEST_SERVER") != "reference",
                    reason="18 s; test_nat_keepalive.py runs the same scenario against the "
                           "server under test: NATTEST_SERVER=reference runs this one too")
@pytest.mark.parametrize("natping", [2, 0], ids=["natping2", "natping-off"])
def test_keepalive_keeps_callee_reachable(nat_lab, natping: int) -> None:
    """Routers forget a UDP mapping after 4 s; the callee idles 7 s after registering.
    Only the server's NAT pings keep it reachable: with them the call connects,
    without them the INVITE is lost behind the NAT and the caller gets 408."""
    topo = nat_lab.network([RouterSpec(NatMode.MASQ, udp_timeout=4)] * 2)
    nat_lab.start_server("reference", natping_interval=natping)
    a, b = nat_lab.baresip("ua1"), nat_lab.baresip("ua2")
    time.sleep(7.0)
    nat2 = topo.router("nat2")
    mapped = [e for e in topo.conntrack_entries(nat2) if "dport=5060" in e]
    a.dial(f"sip:ua2@{nat_lab.domain}")
    if natping:
        assert mapped, "NAT pings did not keep the callee's mapping"
        b.wait_established(8.0)
        a.wait_established(8.0)
        a.hangup()
        b.wait_closed(5.0)
    else:
        assert not mapped, f"mapping survived its timeout: {mapped}"
        closed = a.wait_closed(12.0)
        assert "408" in str(closed.get("param")), closed
        assert not b.events("CALL_INCOMING"), "the INVITE reached the callee anyway"
