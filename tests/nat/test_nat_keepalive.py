"""NAT keepalive scenario of issue 9: routers forget idle UDP mappings after 4 s.

The callee idles 10 s after registering, then is called. Only the server's NAT pings
(natping_interval=2) keep its mapping: with them the call connects; without them the
INVITE dies at the callee's router and the caller gets 408.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.netns import NatMode, RouterSpec

pytestmark = [pytest.mark.nat, pytest.mark.root]

IDLE_SECS = 10.0
# 408 comes when the server's INVITE timer fires (SER's tm fr_timer); kamailio's
# reference cfg sets 3 s, a server left at SER's 30 s default needs this much
INVITE_FAIL_WAIT = 40.0


@pytest.mark.parametrize("natping", [2, 0], ids=["natping2-connects", "natping-off-408"])
def test_keepalive(nat_lab, scenario_server, natping: int) -> None:
    topo = nat_lab.network([RouterSpec(NatMode.MASQ, udp_timeout=4)] * 2)
    nat_lab.start_server(scenario_server, natping_interval=natping)
    callee = nat_lab.baresip("ua2")
    caller = nat_lab.baresip("ua1")
    time.sleep(IDLE_SECS)
    callee_flows = [e for e in topo.conntrack_entries(topo.router("nat2"))
                    if f"src={topo.host('ua2').ip}" in e]
    caller.dial(f"sip:ua2@{nat_lab.domain}")
    if natping:
        assert callee_flows, "the NAT pings did not keep the callee's mapping"
        callee.wait_established(10.0)
        caller.wait_established(10.0)
        time.sleep(1.0)
        caller.hangup()
        callee.wait_closed(5.0)
        nat_lab.assert_heard(callee, caller, min_rx=20)
    else:
        assert not callee_flows, f"the callee's mapping outlived 4 s: {callee_flows}"
        closed = caller.wait_closed(INVITE_FAIL_WAIT)
        assert "408" in str(closed.get("param")), f"expected 408, got {closed}"
        assert not callee.events("CALL_INCOMING"), "the INVITE reached the callee anyway"
