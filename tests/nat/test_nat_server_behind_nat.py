"""natserver on a cloud VM: the server behind a 1:1 NAT (advertised_address).

```
  ua1 192.168.1.10 -- [nat1] 198.51.100.21 --+
  ua2 192.168.2.10 -- [nat2] 198.51.100.22 --+-- WAN -- 198.51.100.10 [srvnat] -- 10.0.0.10 natserver
  pua1 198.51.100.51 ------------------------+
```

The server owns only 10.0.0.10 (``listen=10.0.0.10``); its router DNATs UDP SIP and
the relay's ports from the public 198.51.100.10 and SNATs what the server sends. The
phones know only the public address: they register to it with digest auth, call each
other, and their ACK and BYE follow the Record-Route the server wrote. With
``advertised_address=198.51.100.10`` that route, the server's Via and the relay's SDP
name the public address and everything works; the control runs the same network with
the public address only as an ``alias`` (so REGISTER and the INVITE are still taken as
the server's own) and shows the in-dialog requests going to 10.0.0.10, which no phone
can reach.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.baresip import Baresip, TracedMessage, parse_sip_trace
from tests.helpers.natserver_sut import NatServer, natserver_problem
from tests.helpers.netns import SERVER_IP, SERVER_PRIVATE_IP, NatMode, ServerNat, wait_until

pytestmark = [pytest.mark.nat, pytest.mark.root]

ACTIVE = 1  # pjsua's PJSUA_CALL_MEDIA_ACTIVE in pjua's "media" lines
PUBLIC = f"{SERVER_IP}:5060"
PRIVATE = f"{SERVER_PRIVATE_IP}:5060"


def start_natserver(nat_lab, **options) -> NatServer:
    reason = natserver_problem()
    if reason:
        pytest.skip(reason)
    return nat_lab.use_server(NatServer(nat_lab.tmp / "natserver", **options))


def sent_in_dialog(ua: Baresip, method: str) -> list[TracedMessage]:
    """In-dialog (loose-routed: with a Route header) requests `method` this UA sent,
    from its own SIP trace; the ACK of a 407 has no route set and is left out."""
    me = f"{ua.config.local_ip}:{ua.config.sip_port}"
    return [m for m in parse_sip_trace(ua.log_text())
            if m.src == me and m.first_line.startswith(method + " ")
            and header_values(m, "Route")]


def received(ua: Baresip, method: str) -> list[TracedMessage]:
    return [m for m in ua.sip_received() if m.first_line.startswith(method + " ")]


def header_values(msg: TracedMessage, name: str) -> list[str]:
    prefix = name.lower() + ":"
    return [ln.split(":", 1)[1].strip() for ln in msg.text.splitlines()
            if ln.lower().startswith(prefix)]


def test_one_to_one_nat_router(nat_lab) -> None:
    """The harness itself: the public address's forwarded UDP ports reach the server
    with the phone's public source, the server's packets leave from the public address
    with their port kept, other ports are not forwarded, and 10.0.0.10 is unreachable."""
    topo = nat_lab.network([NatMode.MASQ], public_hosts=1, server_nat=ServerNat())
    srv = topo.socket(topo.server, bind=(SERVER_PRIVATE_IP, 5060))
    relay = topo.socket(topo.server, bind=(SERVER_PRIVATE_IP, 30002))
    other = topo.socket(topo.server, bind=(SERVER_PRIVATE_IP, 5070))
    ua = topo.socket(topo.host("ua1"), bind=("192.168.1.10", 5060))
    pub = topo.socket(topo.host("pua1"), bind=("198.51.100.51", 5060))
    for s in (srv, relay, other, ua, pub):
        s.settimeout(1.0)
    for sock, port in ((srv, 5060), (relay, 30002)):
        ua.sendto(b"in", (SERVER_IP, port))
        data, src = sock.recvfrom(100)
        assert (data, src[0]) == (b"in", topo.router("nat1").wan_ip)
        sock.sendto(b"back", src)
        assert ua.recvfrom(100) == (b"back", (SERVER_IP, port))
    srv.sendto(b"out", ("198.51.100.51", 5060))
    assert pub.recvfrom(100) == (b"out", (SERVER_IP, 5060))
    ua.sendto(b"in", (SERVER_IP, 5070))
    with pytest.raises(TimeoutError):
        other.recvfrom(100)
    ua.sendto(b"in", (SERVER_PRIVATE_IP, 5060))  # its router has no route there
    with pytest.raises(OSError):  # nor has a host on the WAN
        pub.sendto(b"in", (SERVER_PRIVATE_IP, 5060))
    srv.settimeout(0.5)
    with pytest.raises(TimeoutError):
        srv.recvfrom(100)


@pytest.mark.parametrize("modes, caller, callee, hangup", [
    ((NatMode.MASQ, NatMode.SYMMETRIC), "ua1", "ua2", "callee"),
    ((NatMode.RANGE,), "pua1", "ua1", "caller"),
], ids=["nat-to-nat-callee-hangs-up", "public-to-nat-caller-hangs-up"])
def test_server_behind_1to1_nat(nat_lab, modes, caller, callee, hangup) -> None:
    """Registration with digest auth to the public address, a call, ACK and BYE back
    through the 1:1 NAT along the Record-Route, two-way audio through the relay, and
    the private address never shows in anything a phone received."""
    topo = nat_lab.network(list(modes), public_hosts=1, server_nat=ServerNat())
    assert topo.server.ip == SERVER_PRIVATE_IP and nat_lab.domain == SERVER_IP
    server = start_natserver(nat_lab, advertised_address=SERVER_IP)
    a, b = nat_lab.baresip(caller), nat_lab.baresip(callee)
    regs = {r.aor: r for r in server.registrations()}
    for ua in (a, b):
        host = topo.host(ua.config.user)
        if host.router is not None:
            wan = topo.router_of(host).wan_ip
            reg = regs[ua.config.user]
            assert reg.received and wan in reg.received, regs

    sessions = nat_lab.call(a, b, hangup_by=b if hangup == "callee" else a)
    nat_lab.assert_relayed_call(a, b, sessions)  # also: each SDP names the public IP

    # the dialog's route set is the public address, and in-dialog requests used it
    for ua in (a, b):
        for m in ua.sip_received():
            assert SERVER_PRIVATE_IP not in m.text, \
                f"{ua.config.user} was told the private address: {m.text}"
    rr = [v for m in received(b, "INVITE") for v in header_values(m, "Record-Route")]
    assert rr and all(v.startswith(f"<sip:{SERVER_IP};") for v in rr), rr
    assert [m.dst for m in sent_in_dialog(a, "ACK")] == [PUBLIC], sent_in_dialog(a, "ACK")
    assert [m.src for m in received(b, "ACK")] == [PUBLIC], b.sip_received()
    by, other = (b, a) if hangup == "callee" else (a, b)
    assert [m.dst for m in sent_in_dialog(by, "BYE")] == [PUBLIC]
    assert [m.src for m in received(other, "BYE")] == [PUBLIC]
    nat_lab.wait_relay_released()


def test_control_without_advertised_address(nat_lab) -> None:
    """The same network and phones, the public address only an alias: registration
    and the INVITE still work (the router forwards them), but the server writes its
    private address into Record-Route, Via and SDP. The caller's ACK and BYE go to
    10.0.0.10, which the phones' routers cannot reach: the callee never gets them (it
    stays in the call after the caller hung up), and no audio arrives either way."""
    nat_lab.network([NatMode.MASQ, NatMode.MASQ], public_hosts=1, server_nat=ServerNat())
    start_natserver(nat_lab, aliases=(SERVER_IP,), domain=SERVER_IP)
    a, b = nat_lab.baresip("ua1"), nat_lab.baresip("ua2")

    a.dial(f"sip:ua2@{nat_lab.domain}")
    b.wait_event("CALL_LOCAL_SDP", 10.0)  # the callee answered (its 200's SDP)
    a.wait_established(10.0)  # and the 200 reached the caller
    invites = received(b, "INVITE")
    assert [m.src for m in invites] == [PUBLIC], "the INVITE did not come through the NAT"
    rr = [v for m in invites for v in header_values(m, "Record-Route")]
    assert rr and all(v.startswith(f"<sip:{SERVER_PRIVATE_IP};") for v in rr), rr
    assert header_values(invites[0], "Via")[0].startswith(f"SIP/2.0/UDP {PRIVATE};")
    for ua in (a, b):
        sdp = ua.received_sdp_addresses()
        assert sdp and all(ip == SERVER_PRIVATE_IP for ip, _ in sdp), \
            f"{ua.config.user} SDP {sdp}"
    time.sleep(1.5)
    a.hangup()
    a.wait_closed(5.0)
    time.sleep(1.5)  # a BYE through the NAT takes milliseconds (the test above)

    acks, byes = sent_in_dialog(a, "ACK"), sent_in_dialog(a, "BYE")
    assert acks and {m.dst for m in acks} == {PRIVATE}, acks
    assert byes and {m.dst for m in byes} == {PRIVATE}, byes
    assert not received(b, "ACK"), "the ACK reached the callee"
    assert not received(b, "BYE"), "the BYE reached the callee"
    # baresip's callee takes the call as established on the ACK, which never came
    calls = b.command("listcalls")  # its answer comes after every event so far
    assert not b.events("CALL_ESTABLISHED"), "the callee got an ACK"
    assert not b.events("CALL_CLOSED"), f"the callee's call ended: {b.events()}"
    assert "ua1" in str(calls.get("data", "")), f"the callee has no call: {calls}"
    b.hangup()  # its BYE takes the same dead route; closes locally
    b.wait_closed(5.0)
    for ua in (a, b):
        stats = ua.rtp_stats()
        assert stats and stats[-1][0] > 0 and stats[-1][1] == 0, \
            f"{ua.config.user}: RTP tx/rx {stats}"
    for ua in (a, b):  # their BYEs to 10.0.0.10 are retransmitted for 32 s: don't wait
        ua.stop(timeout=0.3)


def with_sip_pings(seed: str) -> str:
    """The seed cfg plus Kamailio-style SIP pings of the NATed contacts (sipping_flag =
    the registrar's nat_flag 6); a contact that has not answered for 3 s is removed."""
    return seed.replace(
        'modparam("nathelper", "ping_nated_only", 1)',
        'modparam("nathelper", "ping_nated_only", 1)\n'
        'modparam("nathelper", "sipping_flag", 6)\n'
        f'modparam("nathelper", "sipping_from", "sip:pinger@{SERVER_IP}")\n'
        'modparam("nathelper", "keepalive_timeout", 3)', 1)


def test_sip_pings_name_the_public_address(nat_lab) -> None:
    """nathelper's OPTIONS pings leave through the 1:1 NAT with the public address in
    their Via, and the phone's answers come back: the contact outlives
    keepalive_timeout (3 s) only because its 200s reached the pinger: once the 1:1
    router drops what the phone's NAT sends, the contact is removed."""
    nat_lab.network([NatMode.RANGE], public_hosts=0, server_nat=ServerNat())
    server = nat_lab.use_server(NatServer(nat_lab.tmp / "natserver", cfg_filter=with_sip_pings,
                                          advertised_address=SERVER_IP),
                                natping_interval=1)
    assert "sipping_flag" in server.cfg_path.read_text()
    ua = nat_lab.baresip("ua1")
    # five pings: the registration is more than keepalive_timeout + an interval old
    deadline = time.monotonic() + 8.0
    while len(received(ua, "OPTIONS")) < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    pings = received(ua, "OPTIONS")
    assert len(pings) >= 5, f"{len(pings)} SIP pings in 8 s at a 1 s interval"
    for m in pings:
        assert m.src == PUBLIC, m.src
        vias = header_values(m, "Via")
        assert len(vias) == 1 and vias[0].startswith(f"SIP/2.0/UDP {PUBLIC};"), vias
    me = f"{ua.config.local_ip}:{ua.config.sip_port}"
    answers = [m for m in parse_sip_trace(ua.log_text())
               if m.src == me and m.first_line.startswith("SIP/2.0 200")
               and "OPTIONS" in " ".join(header_values(m, "CSeq"))]
    assert len(answers) >= 5, f"{len(answers)} answers to {len(pings)} pings"
    regs = [r for r in server.registrations() if r.aor == "ua1"]
    assert regs, "the contact was removed: the pings' answers did not reach the server"

    topo = nat_lab.topo
    wan = topo.router("nat1").wan_ip
    topo.run(topo.server_router, ["nft", "insert", "rule", "ip", "filter", "forward",
                                  "iifname", "wan0", "ip", "saddr", wan, "drop"])
    wait_until(lambda: not [r for r in server.registrations() if r.aor == "ua1"], 8.0, 0.2,
               "the unanswered contact to be removed")
    ua.stop(timeout=0.3)  # its un-REGISTER cannot get through any more: don't wait


def test_pjsua2_hold_resume_behind_1to1_nat(nat_lab) -> None:
    """The second SIP stack, both phones behind symmetric NATs: the call, a re-INVITE
    to hold and back (loose-routed through the 1:1 NAT, force_rtp_proxy on the
    in-dialog INVITE) and the BYE. Every SDP either phone took names the relay at the
    public address, RTP comes from there, and audio flows again after the resume."""
    nat_lab.network([NatMode.SYMMETRIC, NatMode.SYMMETRIC], public_hosts=0,
                    server_nat=ServerNat())
    server = start_natserver(nat_lab, advertised_address=SERVER_IP)
    callee = nat_lab.pjua("ua2", "--answer")
    caller = nat_lab.pjua("ua1")
    caller.send(f"call sip:ua2@{nat_lab.domain}")
    caller.wait("state", 10.0, lambda d: d["state"] == "CONFIRMED")
    callee.wait("state", 10.0, lambda d: d["state"] == "CONFIRMED")  # the ACK arrived
    time.sleep(1.0)
    [session] = server.relay_sessions()
    ports = set(session.ports)

    mark = caller.mark()
    caller.send("hold")
    caller.wait("media", 10.0, lambda d: d["status"] != ACTIVE, since=mark)
    mark = caller.mark()
    caller.send("unhold")
    caller.wait("media", 10.0, lambda d: d["status"] == ACTIVE, since=mark)
    mark = callee.mark()
    callee.send("stats")
    rx0 = callee.wait("stats", 5.0, since=mark)["rx_pkt"]
    time.sleep(1.5)
    mark = callee.mark()
    callee.send("stats")
    rx1 = callee.wait("stats", 5.0, since=mark)["rx_pkt"]
    assert rx1 - rx0 >= 40, f"audio did not resume: {rx0} -> {rx1}"
    assert {p for s in server.relay_sessions() for p in s.ports} == ports

    caller.send("hangup")
    caller.wait("closed", 5.0)
    callee.wait("closed", 5.0)  # the BYE came through the 1:1 NAT
    nat_lab.wait_relay_released()
    for ua in (caller, callee):
        media = [d for d in ua.events("media") if d.get("remote_rtp")]
        assert len(media) >= 2, media
        for d in media:
            ip, _, port = d["remote_rtp"].rpartition(":")
            assert ip == SERVER_IP and int(port) in ports, f"SDP not at the relay: {d}"
        stats = ua.events("stats")[-1]
        ip, _, port = stats["src_rtp"].rpartition(":")
        assert ip == SERVER_IP and int(port) in ports, f"RTP not from the relay: {stats}"
        assert stats["rx_pkt"] >= 50, stats  # counted since the resume
