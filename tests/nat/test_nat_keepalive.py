"""NAT keepalive scenario of issue 9: routers forget idle UDP mappings after 4 s.

The callee idles 10 s after registering, then is called. Only the server's NAT pings
(natping_interval=2) keep its mapping: with them the call connects; without them (the
negative control) the INVITE dies at the callee's router and the caller gets 408.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.baresip import CallFailed
from tests.helpers.netns import NatMode, RouterSpec

pytestmark = [pytest.mark.nat, pytest.mark.root]

IDLE_SECS = 10.0
# 408 comes when the server's INVITE timer fires (SER's tm fr_timer, no provisional
# reply from the dead contact); the natserver and reference cfgs set 3 s, a server
# left at SER's 30 s default needs this much
INVITE_FAIL_WAIT = 40.0


def _idle_callee(nat_lab, scenario_server: str, natping: int):
    topo = nat_lab.network([RouterSpec(NatMode.MASQ, udp_timeout=4)] * 2)
    nat_lab.start_server(scenario_server, natping_interval=natping)
    callee = nat_lab.baresip("ua2")
    caller = nat_lab.baresip("ua1")
    time.sleep(IDLE_SECS)
    callee_flows = [e for e in topo.conntrack_entries(topo.router("nat2"))
                    if f"src={topo.host('ua2').ip}" in e]
    return caller, callee, callee_flows


def test_keepalive_natping_connects(nat_lab, scenario_server) -> None:
    caller, callee, callee_flows = _idle_callee(nat_lab, scenario_server, natping=2)
    assert callee_flows, "the NAT pings did not keep the callee's mapping"
    caller.dial(f"sip:ua2@{nat_lab.domain}")
    callee.wait_established(10.0)
    caller.wait_established(10.0)
    time.sleep(1.0)
    caller.hangup()
    callee.wait_closed(5.0)
    nat_lab.assert_heard(callee, caller, min_rx=20)


def test_control_keepalive_natping_off_408(nat_lab, scenario_server) -> None:
    """The same scenario with natping off: the mapping is gone, the call cannot
    connect (the assertion the positive test makes fails with 408)."""
    caller, callee, callee_flows = _idle_callee(nat_lab, scenario_server, natping=0)
    assert not callee_flows, f"the callee's mapping outlived 4 s: {callee_flows}"
    caller.dial(f"sip:ua2@{nat_lab.domain}")
    with pytest.raises(CallFailed, match="408"):
        caller.wait_established(INVITE_FAIL_WAIT)
    assert not callee.events("CALL_INCOMING"), "the INVITE reached the callee anyway"
