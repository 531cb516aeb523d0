"""The stateful proxy over real UDP: natserver with children=4 in a loopback-only
network namespace, a UAC and UASes on random ports in the same namespace, each
checking what it gets (issue 4 acceptance). The cfg routes by the R-URI the UAC
writes (the UAS's address), so no registrar is involved."""

from __future__ import annotations

import time

import pytest

from tests.helpers.procs import Netns, need_root
from tests.helpers.tmtest import ProxyServer
from tests.helpers.uas import Uac, Uas, UasScript, top_branch

CFG = """
debug=3
fork=no
log_stderror=yes
listen=127.0.0.1
port=0
children=4
fifo="{fifo}"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "tmtest.so"
modparam("rr", "enable_full_lr", 1)
modparam("tm", "fr_timer", 1)
modparam("tm", "fr_inv_timer", 2)
modparam("tm", "wt_timer", 2)

route {
  if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); break; };
  if (method != "REGISTER") { record_route(); };
  if (loose_route()) { route(1); break; };
  append_branch_from("X-Branch");
  setflag(6);
  route(1);
}
route[1] {
  t_on_reply("1");
  if (!t_relay()) { sl_reply_error(); };
}
onreply_route[1] {
  if (isflagset(6) && status == "180") { append_hf("X-Flag6: 180\\r\\n"); };
  if (isflagset(6) && status == "200") { append_hf("X-Flag6: 200\\r\\n"); };
}
"""


@pytest.fixture(scope="module", params=["shared", "per_worker"])
def server(request, tmp_path_factory):
    """Both ways the workers share the port: one socket all read, or one SO_REUSEPORT
    socket each (the kernel then hashes each 4-tuple to one worker)."""
    need_root()
    ns = Netns("nsp")
    tmp = tmp_path_factory.mktemp("proxy")
    cfg = CFG.replace("{fifo}", str(tmp / "fifo")).replace(
        "children=4", f'children=4\nreuseport="{request.param}"')
    srv = ProxyServer(ns, cfg, tmp)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        ns.destroy()
    assert "Traceback" not in srv.log_text(), srv.log_text()[-5000:]


class Parties:
    def __init__(self, srv: ProxyServer) -> None:
        self.srv = srv
        self.uases: list[Uas] = []
        self.uac = Uac(srv.ns.socket(), srv.addr)

    def uas(self, **script) -> Uas:
        uas = Uas(self.srv.ns.socket(), UasScript(**script), name=f"uas{len(self.uases) + 1}")
        self.uases.append(uas)
        return uas

    def close(self) -> None:
        for uas in self.uases:
            uas.stop()
        self.uac.sock.close()


@pytest.fixture
def parties(server):
    p = Parties(server)
    yield p
    p.close()


def ruri(uas: Uas) -> str:
    return f"sip:uas@{uas.addr[0]}:{uas.addr[1]}"


def worker_stats(srv: ProxyServer) -> dict[str, dict]:
    return {r["proc"]: r for r in srv.ctl_json("stats") if r["proc"].startswith("sip worker")}


def full_call(p: Parties, uas: Uas) -> None:
    uac = p.uac
    uac.invite(ruri(uas))
    uac.expect(100)
    ring = uac.expect(180)
    assert ring.get("X-Flag6") == "180"              # onreply_route saw flag 6 and 180
    ok = uac.expect(200)
    assert ok.get("X-Flag6") == "200"
    rr = ok.get("Record-Route")
    assert rr and rr.startswith(f"<sip:127.0.0.1:{p.srv.port};") and "lr=on" in rr
    uac.dialog_from(ok)
    uac.ack_2xx()
    ack = uas.wait_for("ACK")[0].msg
    assert ack.ruri == uas.contact.strip("<>") and ack.get("Route") is None
    uac.bye()
    bye = uas.wait_for("BYE")[0].msg
    assert bye.get("Route") is None and len(bye.all("Via")) == 2
    assert uac.expect(200).get("CSeq") == "2 BYE"
    invites = uas.requests("INVITE")
    assert len(invites) >= 1 and len(uas.invite_branches) == 1
    inv = invites[0].msg
    assert inv.get("Record-Route") == rr
    assert "received=127.0.0.1" in inv.all("Via")[1] and f"rport={uac.addr[1]}" in inv.all("Via")[1]


def test_call_through_the_proxy_and_replies_on_other_workers(server):
    """INVITE/100/180/200/ACK/BYE/200 with Record-Route, ACK and BYE loose-routed.
    Each call uses a new UAS port, so the kernel hashes its replies to some worker;
    calls continue until a reply was matched by a worker that did not create the
    transaction (probability 3/4 per call with 4 workers)."""
    before = worker_stats(server)
    for _ in range(12):
        p = Parties(server)
        try:
            full_call(p, p.uas(final_after=0.2))  # 180 and 200 may overtake each other
        finally:
            p.close()
        time.sleep(0.15)  # counters reach shared memory within 0.1 s
        after = worker_stats(server)
        foreign = sum(r["tm_replies_foreign"] - before.get(n, {}).get("tm_replies_foreign", 0)
                      for n, r in after.items())
        if foreign:
            break
    assert foreign > 0, after
    created = [n for n, r in after.items()
               if r["tm_created"] > before.get(n, {}).get("tm_created", 0)]
    assert created


def test_uas_silent_408_after_fr_timer(parties):
    uas = parties.uas(ring=False, final=None)
    uac = parties.uac
    t0 = time.monotonic()
    uac.invite(ruri(uas))
    uac.expect(100)
    busy = uac.expect(408, timeout=3.0)
    assert 0.9 <= time.monotonic() - t0 <= 2.5
    uac.ack_non2xx(busy)
    assert len(uas.invite_branches) == 1
    assert len(uas.requests("INVITE")) >= 2             # Timer A retransmitted it
    assert uas.requests("CANCEL") == []                 # no CANCEL without a 1xx
    assert uac.quiet(0.8) == []                         # the ACK stopped Timer G


def test_ringing_then_silence_cancel_and_408_after_fr_inv_timer(parties):
    uas = parties.uas(final=None)
    uac = parties.uac
    uac.invite(ruri(uas))
    uac.expect(100)
    uac.expect(180)
    t0 = time.monotonic()
    final = uac.expect(408, timeout=4.0)
    assert 1.5 <= time.monotonic() - t0 <= 3.5
    cancel = uas.wait_for("CANCEL")[0].msg
    assert top_branch(cancel) == uas.invite_branches[0]
    acks = uas.wait_for("ACK")                          # the proxy ACKs the UAS's 487
    assert top_branch(acks[0].msg) == uas.invite_branches[0]
    uac.ack_non2xx(final)
    time.sleep(0.3)
    assert len(uas.requests("ACK")) == 1                # the UAC's ACK stays at the proxy


def test_cancel_after_180(parties):
    uas = parties.uas(final=None)
    uac = parties.uac
    uac.invite(ruri(uas))
    uac.expect(100)
    uac.expect(180)
    uac.cancel()
    ok = uac.expect(200)
    assert ok.get("CSeq") == "1 CANCEL"
    terminated = uac.expect(487)
    cancel = uas.wait_for("CANCEL")[0].msg
    assert top_branch(cancel) == uas.invite_branches[0]
    ack = uas.wait_for("ACK")[0].msg                    # sent by the proxy itself
    assert top_branch(ack) == uas.invite_branches[0] and ack.get("CSeq") == "1 ACK"
    uac.ack_non2xx(terminated)
    time.sleep(0.3)
    assert len(uas.requests("ACK")) == 1                # the UAC's ACK was absorbed
    assert uac.quiet(0.3) == []


def test_retransmitted_invite_absorbed(parties):
    uas = parties.uas(trying=True, ring=False, final=200, final_after=0.6)
    uac = parties.uac
    data = uac.invite(ruri(uas))
    uac.expect(100)
    uas.wait_for("INVITE")
    uac.send(data)                                      # the UAC retransmits
    assert uac.expect(100).status == 100                # answered again by the proxy
    ok = uac.expect(200, timeout=2.0)
    assert len(uas.requests("INVITE")) == 1             # the UAS saw it once
    uac.dialog_from(ok)
    uac.ack_2xx()
    uas.wait_for("ACK")


def test_uas_retransmitted_200_forwarded(parties):
    uas = parties.uas(ring=False, final=200, retransmit_2xx=2)
    uac = parties.uac
    uac.invite(ruri(uas))
    uac.expect(100)
    oks = [uac.expect(200, timeout=2.0) for _ in range(3)]
    assert len({o.get("To") for o in oks}) == 1
    uac.dialog_from(oks[0])
    uac.ack_2xx()
    uas.wait_for("ACK")


def test_two_branches_first_200_wins(parties):
    winner = parties.uas(final=200, final_after=0.3)
    loser = parties.uas(final=None)
    uac = parties.uac
    uac.invite(ruri(winner), headers=[f"X-Branch: <{ruri(loser)}>"])
    uac.expect(100)
    ok = uac.expect(200, skip=(180,), timeout=3.0)
    assert ok.get("Contact") == winner.contact
    cancel = loser.wait_for("CANCEL")[0].msg
    assert top_branch(cancel) == loser.invite_branches[0]
    loser.wait_for("ACK")                               # proxy's ACK for the 487
    assert winner.requests("CANCEL") == []
    uac.dialog_from(ok)
    uac.ack_2xx()
    winner.wait_for("ACK")
    assert not [m for m in uac.quiet(0.4) if m.is_reply and m.status == 487]


def test_t_relay_failure_answers_sl_reply_error_status(parties):
    uac = parties.uac
    uac.invite("sip:bob@no-such-host.invalid")
    reply = uac.expect(478)
    assert reply.reason == "Unresolvable destination (4/SL)"
    uac.ack_non2xx(reply)
    uac.call_id += "x"
    uac.invite(f"sip:bob@127.0.0.1:{parties.srv.port}")
    assert uac.expect(482).reason == "Loop Detected (482/SL)"
