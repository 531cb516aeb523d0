"""Load scenario of issue 9: 20 concurrent NAT->NAT calls with RTP for 10 s.

Twenty phones behind each of two routers (each phone its own host on the LAN, all on
SIP port 5060, so the NAT has to translate ports), twenty calls at once through the
relay. Every call must carry audio both ways (each phone hears the other side's tone)
and the relay may lose under 1% of the packets.

Loss is measured at the phones with nftables counters on their RTP ports over a window
in the middle of the calls: what all phones sent against what all phones received, so
no call set-up or tear-down edge counts as loss.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.netns import NatMode, RouterSpec
from tests.helpers.tonecheck import dominant_tone

pytestmark = [pytest.mark.nat, pytest.mark.root, pytest.mark.slow]

CALLS = 20
CALL_SECS = 10.0
CALLER_TONE, CALLEE_TONE = 440, 840


def test_concurrent_calls(nat_lab, scenario_server) -> None:
    topo = nat_lab.network([RouterSpec(NatMode.MASQ, hosts=CALLS)] * 2, public_hosts=0)
    server = nat_lab.start_server(scenario_server)
    nat1, nat2 = topo.routers
    nat_lab.provision_all([h.role for h in topo.lan_hosts])
    callers = [nat_lab.baresip(h.role, tone=CALLER_TONE, register=False) for h in nat1.hosts]
    callees = [nat_lab.baresip(h.role, tone=CALLEE_TONE, register=False) for h in nat2.hosts]
    phones = callers + callees
    for ua in phones:
        ua.wait_registered(15.0)
        topo.add_udp_counters(ua.host, ua.config.rtp_ports)
    assert len(server.registrations()) == 2 * CALLS

    t0 = time.monotonic()
    for a, b in zip(callers, callees):
        a.dial(f"sip:{b.config.user}@{nat_lab.domain}")
    for ua in phones:
        ua.wait_established(20.0)
    time.sleep(1.0)
    before = topo.udp_counters([ua.host for ua in phones])
    window = max(CALL_SECS - (time.monotonic() - t0) - 1.0, 5.0)
    time.sleep(window)
    after = topo.udp_counters([ua.host for ua in phones])
    sessions = server.relay_sessions()
    for a in callers:
        a.hangup()
    for ua in phones:
        ua.wait_closed(10.0)
    nat_lab.wait_relay_released(5.0)

    assert len(sessions) == CALLS, f"{len(sessions)} relay sessions for {CALLS} calls"
    sent = sum(after[ns][1] - before[ns][1] for ns in after)
    got = sum(after[ns][0] - before[ns][0] for ns in after)
    loss = 1.0 - got / sent
    print(f"relay loss {loss:.3%}: sent {sent}, received {got}, window {window:.1f} s")
    assert loss < 0.01, f"relay lost {loss:.2%}: sent {sent}, received {got}"
    expected = 50 * window  # RTP alone, 20 ms packets
    starved = {ns: after[ns][0] - before[ns][0] for ns in after
               if after[ns][0] - before[ns][0] < 0.9 * expected}
    assert not starved, f"phones that received too little in {window:.1f} s: {starved}"
    for ua, hears in [(a, CALLEE_TONE) for a in callers] + [(b, CALLER_TONE) for b in callees]:
        wavs = ua.received_wavs()
        assert wavs, f"{ua.config.user}: no received audio"
        tone = dominant_tone(wavs[-1], [CALLER_TONE, CALLEE_TONE], max_seconds=1.0)
        assert tone.freq == hears and tone.share > 0.5, f"{ua.config.user} heard {tone}"
