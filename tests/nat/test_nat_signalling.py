"""Signalling through real NATs: digest-authenticated registration in every NAT mode
and calls set up and torn down in both directions. No audio is asserted here (that is
test_nat_calls.py's job, and needs the relay); these prove the registrar, auth,
nathelper's contact fixing and the proxy's routing through each kind of router.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.netns import PORT_RANGE, NatMode, wait_until

pytestmark = [pytest.mark.nat, pytest.mark.root]


def _replies(ua, method: str) -> list[str]:
    """Status lines of the replies to `method` that reached the UA, in order."""
    out = []
    for m in ua.sip_received():
        if not m.first_line.startswith("SIP/2.0"):
            continue
        cseq = next((ln for ln in m.text.splitlines() if ln.lower().startswith("cseq:")), "")
        if cseq.split()[-1:] == [method]:
            out.append(m.first_line)
    return out


@pytest.mark.parametrize("mode", list(NatMode), ids=[m.value for m in NatMode])
def test_register_with_digest_through_nat(nat_lab, scenario_server, mode: NatMode) -> None:
    """The REGISTER is challenged (401) and then accepted (200); the server keeps the
    NAT's public address for the binding (received, or the ALG's rewritten Contact)."""
    topo = nat_lab.network([mode])
    server = nat_lab.start_server(scenario_server)
    ua = nat_lab.baresip("ua1")
    codes = [line.split()[1] for line in _replies(ua, "REGISTER")]
    assert "401" in codes and codes.index("401") < codes.index("200"), \
        f"REGISTER was not digest-challenged then accepted: {codes}"
    regs = [r for r in server.registrations() if r.aor == "ua1"]
    assert len(regs) == 1, regs
    reg = regs[0]
    wan = topo.router("nat1").wan_ip
    if mode is NatMode.ALG:
        assert wan in reg.contact, f"the ALG did not rewrite the Contact: {reg}"
        return
    assert reg.received and wan in reg.received, f"NAT address not kept: {reg}"
    assert topo.host("ua1").ip in reg.contact, f"Contact not kept as registered: {reg}"
    port = int(reg.received.rsplit(":", 1)[1].split(";")[0])
    if mode is NatMode.RANGE:
        assert PORT_RANGE[0] <= port <= PORT_RANGE[1], reg
    assert 0 < reg.expires <= 60, reg


def test_register_wrong_password_rejected(nat_lab, scenario_server) -> None:
    """Digest auth is real: a wrong password never gets a binding."""
    nat_lab.network([NatMode.MASQ])
    server = nat_lab.start_server(scenario_server)
    nat_lab.provision("ua1")
    nat_lab.passwords["ua1"] = "not-the-password"
    ua = nat_lab.baresip("ua1", register=False)
    wait_until(lambda: len([r for r in _replies(ua, "REGISTER") if " 401 " in r]) >= 2,
               5.0, 0.1, "the wrong credentials to be challenged again")
    assert not ua.is_registered()
    assert not [r for r in server.registrations() if r.aor == "ua1"]
    assert not [r for r in _replies(ua, "REGISTER") if " 200 " in r]


@pytest.mark.parametrize("modes,caller,callee,by", [
    ((NatMode.MASQ, NatMode.MASQ), "ua1", "ua2", "caller"),
    ((NatMode.RANGE, NatMode.SYMMETRIC), "ua1", "ua2", "callee"),
    ((NatMode.ALG, NatMode.MASQ), "ua2", "ua1", "caller"),
    ((NatMode.SYMMETRIC,), "pua1", "ua1", "callee"),
    ((NatMode.RANGE,), "ua1", "pua1", "caller"),
], ids=["masq-masq", "range-symmetric-callee-bye", "to-alg", "public-to-symmetric",
        "range-to-public"])
def test_call_signalling(nat_lab, scenario_server, modes, caller, callee, by) -> None:
    """INVITE/200/ACK reach both ends through the NATs, and the BYE from either side
    reaches the other (the Contacts the proxy routes in-dialog requests to are the
    NATs' public addresses)."""
    nat_lab.network(list(modes), public_hosts=1)
    nat_lab.start_server(scenario_server)
    a, b = nat_lab.baresip(caller), nat_lab.baresip(callee)
    a.dial(f"sip:{callee}@{nat_lab.domain}")
    b.wait_established(10.0)
    a.wait_established(10.0)
    time.sleep(0.3)
    (a if by == "caller" else b).hangup()
    (b if by == "caller" else a).wait_closed(5.0)
    (a if by == "caller" else b).wait_closed(5.0)
    got = [m.first_line.split()[0] for m in (b if by == "caller" else a).sip_received()]
    assert "BYE" in got, f"the BYE did not reach the other side: {got}"
    invites = [m for m in b.sip_received() if m.first_line.startswith("INVITE")]
    assert invites, "the callee saw no INVITE"
