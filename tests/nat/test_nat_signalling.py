"""Registration through real NATs, one router of each kind in one network: every REGISTER
is digest-challenged (401) and then accepted, and the server keeps the NAT's public
address for the binding; a wrong password never gets one. Calls through each kind of
router are test_nat_calls.py's.
"""

from __future__ import annotations

import pytest

from tests.helpers.netns import PORT_RANGE, NatMode, wait_until

pytestmark = [pytest.mark.nat, pytest.mark.root]

MODES = list(NatMode)  # router natK has MODES[K - 1]


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


def test_register_with_digest_through_every_nat_mode(nat_lab, scenario_server) -> None:
    topo = nat_lab.network(MODES, public_hosts=1)
    server = nat_lab.start_server(scenario_server)
    nat_lab.provision("pua1")
    nat_lab.passwords["pua1"] = "not-the-password"
    uas = {f"ua{k}": nat_lab.baresip(f"ua{k}", register=False)
           for k in range(1, len(MODES) + 1)}
    wrong = nat_lab.baresip("pua1", register=False)
    for ua in uas.values():
        ua.wait_registered(5.0)
    wait_until(lambda: len([r for r in _replies(wrong, "REGISTER") if " 401 " in r]) >= 2,
               5.0, 0.1, "the wrong credentials to be challenged again")

    regs = {r.aor: r for r in server.registrations()}
    assert "pua1" not in regs and not wrong.is_registered(), \
        f"a wrong password got a binding: {regs.get('pua1')}"
    assert not [r for r in _replies(wrong, "REGISTER") if " 200 " in r]
    for (user, ua), mode in zip(uas.items(), MODES):
        codes = [line.split()[1] for line in _replies(ua, "REGISTER")]
        assert "401" in codes and codes.index("401") < codes.index("200"), \
            f"{mode}: REGISTER was not digest-challenged then accepted: {codes}"
        reg = regs[user]
        wan = topo.router_of(topo.host(user)).wan_ip
        assert 0 < reg.expires <= 60, reg
        if mode is NatMode.ALG:
            assert wan in reg.contact, f"the ALG did not rewrite the Contact: {reg}"
            continue
        assert reg.received and wan in reg.received, f"{mode}: NAT address not kept: {reg}"
        assert topo.host(user).ip in reg.contact, f"{mode}: Contact not kept: {reg}"
        port = int(reg.received.rsplit(":", 1)[1].split(";")[0])
        if mode is NatMode.RANGE:
            assert PORT_RANGE[0] <= port <= PORT_RANGE[1], reg
