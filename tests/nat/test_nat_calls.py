"""NAT scenarios of issue 9: calls through real NAT routers with real user agents.

They run against natserver with conf/natserver.cfg (tests/helpers/natserver_sut.py).
`NATTEST_SERVER=reference` runs the very same scenarios against kamailio + rtpengine,
which proves the tests themselves; test_nat_controls.py shows they fail without the
relay.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.netns import SERVER_IP, NatMode, RouterSpec, wait_until
from tests.helpers.tonecheck import dominant_tone

pytestmark = [pytest.mark.nat, pytest.mark.root]

ACTIVE = 1  # pjsua's PJSUA_CALL_MEDIA_ACTIVE in pjua's "media" lines
MIN_RX = 50  # packets received in a 2 s call at 50 pps, start-up included


@pytest.mark.parametrize("modes", [(NatMode.MASQ, NatMode.MASQ),
                                   (NatMode.RANGE, NatMode.RANGE),
                                   (NatMode.SYMMETRIC, NatMode.SYMMETRIC)],
                         ids=["masq", "port-translating", "symmetric"])
def test_nat_to_nat_call(nat_lab, scenario_server, modes) -> None:
    """Both hear the other's tone, RTP went through the relay, and the SDP each UA
    received points at the relay. Registrations carry the NAT's public address."""
    topo = nat_lab.network(list(modes))
    server = nat_lab.start_server(scenario_server)
    a, b = nat_lab.baresip("ua1"), nat_lab.baresip("ua2")
    regs = {r.aor: r for r in server.registrations()}
    for user in ("ua1", "ua2"):
        wan = topo.router_of(topo.host(user)).wan_ip
        assert regs[user].received and wan in regs[user].received, regs
    sessions = nat_lab.call(a, b)
    nat_lab.assert_relayed_call(a, b, sessions)
    learned = " ".join(sessions[0].peers)
    for router in topo.routers:
        assert router.wan_ip in learned, f"relay did not send to {router.role}: {sessions}"


def test_nat_to_public_call(nat_lab, scenario_server) -> None:
    nat_lab.network([NatMode.RANGE], public_hosts=1)
    nat_lab.start_server(scenario_server)
    nated, pub = nat_lab.baresip("ua1"), nat_lab.baresip("pua1")
    nat_lab.assert_relayed_call(nated, pub, nat_lab.call(nated, pub))


def test_public_to_nat_call(nat_lab, scenario_server) -> None:
    """The caller is public; the callee's NAT mark comes from its registration."""
    nat_lab.network([NatMode.SYMMETRIC], public_hosts=1)
    server = nat_lab.start_server(scenario_server)
    pub, nated = nat_lab.baresip("pua1"), nat_lab.baresip("ua1")
    regs = {r.aor: r for r in server.registrations()}
    assert regs["pua1"].received is None, f"a public UA was taken for NATed: {regs}"
    nat_lab.assert_relayed_call(pub, nated, nat_lab.call(pub, nated))


def test_symmetric_nat_pjsua2_both_sides(nat_lab, scenario_server) -> None:
    """The second SIP stack, both UAs behind symmetric NATs, with the RTP source and
    the negotiated remote address checked at each end."""
    nat_lab.network([NatMode.SYMMETRIC, NatMode.SYMMETRIC])
    server = nat_lab.start_server(scenario_server)
    callee = nat_lab.pjua("ua2", "--answer")
    caller = nat_lab.pjua("ua1", "--call", f"sip:ua2@{nat_lab.domain}", "--talk", "2",
                          "--exit-after-call", register=False)
    caller.wait_registered()
    caller.wait("state", 10.0, lambda d: d["state"] == "CONFIRMED")
    time.sleep(1.0)
    sessions = server.relay_sessions()
    assert len(sessions) == 1, sessions
    ports = set(sessions[0].ports)
    caller.wait("closed", 12.0)
    callee.wait("closed", 5.0)
    nat_lab.wait_relay_released()
    for ua, hears in ((caller, 840), (callee, 440)):
        stats = ua.events("stats")[-1]
        assert stats["rx_pkt"] >= MIN_RX and stats["tx_pkt"] >= MIN_RX, stats
        ip, _, port = stats["src_rtp"].rpartition(":")
        assert ip == SERVER_IP and int(port) in ports, f"RTP not from the relay: {stats}"
        ip, _, port = ua.events("media")[-1]["remote_rtp"].rpartition(":")
        assert ip == SERVER_IP and int(port) in ports, "SDP did not point at the relay"
        path = ua.events("recording")[-1]["path"]
        tone = dominant_tone(path, [440, 840])
        assert tone.freq == hears and tone.share > 0.5, f"{ua.args[1]} heard {tone}"


def test_baresip_calls_pjsua2(nat_lab, scenario_server) -> None:
    """Two different SIP stacks in one call."""
    nat_lab.network([NatMode.MASQ, NatMode.SYMMETRIC])
    nat_lab.start_server(scenario_server)
    callee = nat_lab.pjua("ua2", "--answer")
    caller = nat_lab.baresip("ua1")
    caller.dial(f"sip:ua2@{nat_lab.domain}")
    caller.wait_established(10.0)
    time.sleep(2.0)
    caller.hangup()
    caller.wait_closed(5.0)
    callee.wait("closed", 5.0)
    stats = callee.events("stats")[-1]
    assert stats["rx_pkt"] >= MIN_RX, stats
    tone = dominant_tone(callee.events("recording")[-1]["path"], [440, 840])
    assert tone.freq == 440 and tone.share > 0.5, f"pjsua2 heard {tone}"
    rx = caller.rtp_stats()[-1][1]
    assert rx >= MIN_RX, f"baresip received {rx} packets"
    tone = dominant_tone(caller.received_wavs()[-1], [440, 840])
    assert tone.freq == 840 and tone.share > 0.5, f"baresip heard {tone}"


@pytest.mark.parametrize("by", ["caller", "callee"])
def test_bye_releases_relay_ports(nat_lab, scenario_server, by: str) -> None:
    topo = nat_lab.network([NatMode.MASQ, NatMode.RANGE])
    nat_lab.start_server(scenario_server)
    a, b = nat_lab.baresip("ua1"), nat_lab.baresip("ua2")
    a.dial(f"sip:ua2@{nat_lab.domain}")
    b.wait_established(10.0)
    a.wait_established(10.0)
    time.sleep(1.0)
    ports = nat_lab.relay_ports()
    assert ports and ports <= topo.listening_udp_ports(topo.server), \
        f"relay ports {ports} are not open"
    (a if by == "caller" else b).hangup()
    a.wait_closed(5.0)
    b.wait_closed(5.0)
    nat_lab.wait_relay_released()
    wait_until(lambda: not ports & topo.listening_udp_ports(topo.server), 3.0, 0.1,
               f"relay ports {sorted(ports)} to close")


def test_hold_resume_keeps_relay_session(nat_lab, scenario_server) -> None:
    """re-INVITE to hold and back: the relay keeps the same session and ports, and
    audio flows again after the resume."""
    nat_lab.network([NatMode.MASQ, NatMode.SYMMETRIC])
    server = nat_lab.start_server(scenario_server)
    callee = nat_lab.pjua("ua2", "--answer")
    caller = nat_lab.pjua("ua1")
    caller.send(f"call sip:ua2@{nat_lab.domain}")
    caller.wait("state", 10.0, lambda d: d["state"] == "CONFIRMED")
    time.sleep(1.0)
    before = server.relay_sessions()
    assert len(before) == 1, before

    mark = caller.mark()
    caller.send("hold")
    caller.wait("media", 10.0, lambda d: d["status"] != ACTIVE, since=mark)
    held = server.relay_sessions()
    mark = caller.mark()
    caller.send("unhold")
    caller.wait("media", 10.0, lambda d: d["status"] == ACTIVE, since=mark)
    mark = callee.mark()
    callee.send("stats")
    rx0 = callee.wait("stats", 5.0, since=mark)["rx_pkt"]
    time.sleep(1.5)
    after = server.relay_sessions()
    mark = callee.mark()
    callee.send("stats")
    rx1 = callee.wait("stats", 5.0, since=mark)["rx_pkt"]
    assert rx1 - rx0 >= 40, f"audio did not resume: {rx0} -> {rx1}"
    for snapshot in (held, after):
        assert [(s.call_id, set(s.ports)) for s in snapshot] == \
            [(before[0].call_id, set(before[0].ports))], (before, held, after)
    caller.send("hangup")
    caller.wait("closed", 5.0)
    nat_lab.wait_relay_released()


def test_sip_alg_router_call(nat_lab, scenario_server) -> None:
    """A router whose SIP ALG rewrites Contact, Via and SDP: calls from behind it and
    to a phone behind it still work, with audio both ways."""
    topo = nat_lab.network([NatMode.ALG, NatMode.MASQ])
    server = nat_lab.start_server(scenario_server)
    a, b = nat_lab.baresip("ua1"), nat_lab.baresip("ua2")
    regs = {r.aor: r for r in server.registrations()}
    assert topo.router("nat1").wan_ip in regs["ua1"].contact, \
        f"the ALG did not rewrite the Contact: {regs['ua1']}"
    for k, (caller, callee) in enumerate(((a, b), (b, a)), 1):
        sessions = nat_lab.call(caller, callee)
        assert sessions, f"the call {caller.config.user} -> {callee.config.user} was not relayed"
        for ua in (a, b):  # so that assert_heard reads this call's stats, not the last's
            assert len(ua.rtp_stats(calls=k)) == k, ua.rtp_stats(calls=k)
        nat_lab.assert_heard(caller, callee)
        nat_lab.assert_heard(callee, caller)
        nat_lab.wait_relay_released()


def test_rebinding_healed_by_next_register(nat_lab, scenario_server) -> None:
    """The callee's router forgets its mapping mid-registration (a NAT reboot): the
    binding the server holds is dead until the next REGISTER, which carries the new
    public port; then calls reach the callee again."""
    topo = nat_lab.network([NatMode.MASQ, RouterSpec(NatMode.SYMMETRIC)])
    server = nat_lab.start_server(scenario_server)
    callee = nat_lab.pjua("ua2", "--answer")
    old = {r.aor: r for r in server.registrations()}["ua2"]
    topo.flush_conntrack(topo.router("nat2"))
    mark = callee.mark()
    callee.send("register")
    callee.wait("reg", 10.0, lambda d: d["code"] == 200, since=mark)
    new = wait_until(lambda: next((r for r in server.registrations()
                                   if r.aor == "ua2" and r.received != old.received), None),
                     5.0, 0.1, "the registration to follow the new mapping")
    assert topo.router("nat2").wan_ip in (new.received or "")
    caller = nat_lab.baresip("ua1")
    caller.dial(f"sip:ua2@{nat_lab.domain}")
    caller.wait_established(10.0)
    time.sleep(1.5)
    caller.hangup()
    callee.wait("closed", 5.0)
    assert callee.events("stats")[-1]["rx_pkt"] >= 40
