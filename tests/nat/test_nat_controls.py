"""Negative controls of issue 9: the NAT scenarios can fail, and fail for the reason
they claim to test.

* Without its relay (for natserver: conf/natserver.cfg with every force_rtp_proxy and
  unforce_rtp_proxy call removed, nothing else changed) a NAT -> NAT call still sets
  up, but no audio arrives at either end: each UA was told to send RTP to the other's
  private LAN address. The audio assertion the scenarios use (`assert_heard`) fails on
  this call, so a scenario passing with the relay proves the relay carried the audio.
* The keepalive control (natping off -> 408) is in test_nat_keepalive.py.
"""

from __future__ import annotations

import ipaddress
import time

import pytest

from tests.helpers.netns import NatMode

pytestmark = [pytest.mark.nat, pytest.mark.root]


def test_control_without_rtp_proxy_nat_to_nat_has_no_audio(nat_lab, scenario_server) -> None:
    topo = nat_lab.network([NatMode.MASQ, NatMode.MASQ])
    server = nat_lab.start_server(f"{scenario_server}-norelay")
    a, b = nat_lab.baresip("ua1"), nat_lab.baresip("ua2")
    a.dial(f"sip:ua2@{nat_lab.domain}")
    b.wait_established(10.0)
    a.wait_established(10.0)
    time.sleep(2.0)
    a.hangup()
    b.wait_closed(5.0)
    a.wait_closed(5.0)

    # the call itself worked: signalling does not need the relay
    for ua, other in ((a, b), (b, a)):
        tx, rx = ua.rtp_stats()[-1]
        assert tx >= 50, f"{ua.config.user} did not even send: tx={tx}"
        assert rx == 0, f"{ua.config.user} received {rx} RTP packets without a relay"
        # the scenarios' audio assertion detects it
        with pytest.raises(AssertionError):
            nat_lab.assert_heard(ua, other)
        # ... and why: the SDP it got names the other side's private address
        sdp = ua.received_sdp_addresses()
        assert sdp and all(ipaddress.ip_address(ip).is_private and ip != nat_lab.domain
                           for ip, _ in sdp), f"{ua.config.user} got SDP {sdp}"
        assert topo.host(other.config.user).ip in {ip for ip, _ in sdp}
    if getattr(server, "has_relay", lambda: True)():
        assert not server.relay_sessions(), "the relay was used with force_rtp_proxy removed"
