"""tm through compiled cfg snippets, in-process: real shared-memory tables, a
ListTransport, a clock moved by hand (tests/helpers/inproc.py). The UAC and UAS are
messages built by tests/helpers (independent of natserver.sip)."""

from __future__ import annotations

import pytest

from tests.helpers.inproc import LISTEN, Proxy, Sent
from tests.helpers.sipclient import Parsed, parse, request
from tests.helpers.tmtest import install
from tests.helpers.uas import make_reply, top_branch

install()

UAC = ("10.0.0.1", 5070)
UAS = ("10.0.0.2", 5080)
UAS2 = ("10.0.0.3", 5090)
RURI = "sip:bob@10.0.0.2:5080"

BASE = """
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "textops.so"
loadmodule "tmtest.so"
modparam("rr", "enable_full_lr", 1)
modparam("tm", "fr_timer", 2)
modparam("tm", "fr_inv_timer", 4)
"""

ROUTE = """
route {
  if (method != "REGISTER") { record_route(); };
  if (loose_route()) { route(1); break; };
  if (uri =~ "^sip:fork@") {
    append_branch("sip:carol@10.0.0.3:5090");
  };
  setflag(6);
  route(1);
}
route[1] {
  t_on_reply("1");
  if (!t_relay()) { sl_reply_error(); };
}
onreply_route[1] {
  if (isflagset(6) && status =~ "^(180|183|2[0-9][0-9])$") {
    append_hf("X-Flag6: seen\\r\\n");
  };
}
"""


@pytest.fixture
def proxy():
    p = Proxy(BASE + ROUTE)
    yield p
    p.close()


@pytest.fixture
def proxy2():
    p = Proxy(BASE + ROUTE, workers=2)
    yield p
    p.close()


def to(sent: list[Sent], addr) -> list[Parsed]:
    return [parse(s.data) for s in sent if s.addr == addr]


def invite(ruri: str = RURI, **kw) -> bytes:
    return request("INVITE", ruri, src=UAC, **kw)


def start_call(p: Proxy, ruri: str = RURI, worker: int = 1, **kw) -> tuple[bytes, list[Sent]]:
    data = invite(ruri, **kw)
    return data, p.feed(data, UAC, worker)


def fwd_of(sent: list[Sent], addr=UAS) -> Parsed:
    got = [m for m in to(sent, addr) if not m.is_reply]
    assert len(got) == 1, [s.first for s in sent]
    return got[0]


def uas_reply(req: Parsed, status: int, reason: str = "X", **kw) -> bytes:
    return make_reply(req, status, reason, to_tag="uas1", **kw)


# ---- forwarding -----------------------------------------------------------------------

def test_invite_forwarded_with_100_via_rr(proxy):
    data, sent = start_call(proxy)
    up = to(sent, UAC)
    assert [m.status for m in up] == [100]
    assert up[0].reason == "trying -- your call is important to us"
    assert up[0].param("To", "tag") is None
    fwd = fwd_of(sent)
    assert fwd.first == f"INVITE {RURI} SIP/2.0"
    vias = fwd.all("Via")
    assert vias[0].startswith(f"SIP/2.0/UDP {LISTEN[0]}:{LISTEN[1]};branch=z9hG4bK")
    assert "received=10.0.0.1" in vias[1] and "rport=5070" in vias[1]
    assert fwd.get("Record-Route").startswith(f"<sip:{LISTEN[0]};ftag=")
    assert fwd.get("Record-Route").endswith(";lr=on>")
    assert proxy.count() == 1
    stats = proxy.worker().ctx.stats
    assert stats.tm_created == 1


def test_non_invite_gets_no_100(proxy):
    data = request("OPTIONS", RURI, src=UAC)
    sent = proxy.feed(data, UAC)
    assert to(sent, UAC) == []
    fwd = fwd_of(sent)
    assert fwd.method == "OPTIONS"
    sent = proxy.feed(uas_reply(fwd, 200, "OK"), UAS)
    assert [m.status for m in to(sent, UAC)] == [200]


def test_replies_relayed_with_onreply_route_and_flags(proxy):
    _, sent = start_call(proxy)
    fwd = fwd_of(sent)
    sent = proxy.feed(uas_reply(fwd, 100, "Trying"), UAS)
    assert sent == []  # 100 is absorbed
    sent = proxy.feed(uas_reply(fwd, 180, "Ringing"), UAS)
    ring = to(sent, UAC)
    assert [m.status for m in ring] == [180]
    assert ring[0].get("X-Flag6") == "seen"          # flag 6 from the request's route
    assert len(ring[0].all("Via")) == 1               # our Via removed
    sent = proxy.feed(uas_reply(fwd, 200, "OK"), UAS)
    ok = to(sent, UAC)
    assert [m.status for m in ok] == [200] and ok[0].get("X-Flag6") == "seen"
    assert proxy.worker().ctx.stats.tm_replies_relayed == 2


def test_onreply_route_sees_status(proxy):
    """486 does not match the route's status regex: no header added."""
    _, sent = start_call(proxy)
    sent = proxy.feed(uas_reply(fwd_of(sent), 486, "Busy Here"), UAS)
    busy = to(sent, UAC)
    assert [m.status for m in busy] == [486] and busy[0].get("X-Flag6") is None


def test_drop_in_onreply_route_suppresses_a_provisional():
    p = Proxy(BASE + """
route { t_on_reply("2"); t_relay(); }
onreply_route[2] { if (status == "183") { drop; }; }
""")
    try:
        _, sent = start_call(p)
        fwd = fwd_of(sent)
        assert p.feed(uas_reply(fwd, 183, "Progress"), UAS) == []
        assert [m.status for m in to(p.feed(uas_reply(fwd, 180, "R"), UAS), UAC)] == [180]
        assert [m.status for m in to(p.feed(uas_reply(fwd, 200, "OK"), UAS), UAC)] == [200]
    finally:
        p.close()


def test_retransmitted_invite_absorbed_and_answered_with_last_reply(proxy):
    data, sent = start_call(proxy)
    fwd = fwd_of(sent)
    again = proxy.feed(data, UAC)
    assert [m.status for m in to(again, UAC)] == [100]
    assert to(again, UAS) == []                       # not forwarded twice
    proxy.feed(uas_reply(fwd, 180, "Ringing"), UAS)
    again = proxy.feed(data, UAC)
    assert [m.status for m in to(again, UAC)] == [180]
    assert proxy.worker().ctx.stats.tm_retransmissions == 2


def test_timer_a_retransmits_until_a_reply(proxy):
    _, sent = start_call(proxy)
    fwd = fwd_of(sent)
    got = proxy.advance(1.6)
    retrans = to(got, UAS)
    assert len(retrans) == 2                          # at 0.5 and 1.5 s
    assert all(top_branch(r) == top_branch(fwd) and r.raw == fwd.raw for r in retrans)
    proxy.feed(uas_reply(fwd, 100, "Trying"), UAS)
    assert to(proxy.advance(1.0), UAS) == []


def test_uas_silent_gives_408_after_fr_timer(proxy):
    data, sent = start_call(proxy)
    got = proxy.advance(1.9)
    assert [m.status for m in to(got, UAC)] == []
    got = proxy.advance(0.2)
    up = to(got, UAC)
    assert [m.status for m in up] == [408]
    assert up[0].param("To", "tag")
    assert [m.method for m in to(got, UAS)] == []     # no CANCEL without a provisional
    # the 408 is retransmitted (Timer G) until the ACK, which is absorbed
    assert [m.status for m in to(proxy.advance(0.6), UAC)] == [408]
    ack = request("ACK", RURI, src=UAC, branch=parse(data).param("Via", "branch"),
                  call_id=parse(data).get("Call-ID").split("@")[0],
                  from_=parse(data).get("From"), to=up[0].get("To"))
    assert proxy.feed(ack, UAC) == []
    assert to(proxy.advance(2.0), UAC) == []
    assert proxy.worker().ctx.stats.tm_acks_absorbed == 1
    assert proxy.worker().ctx.stats.tm_timeouts == 1
    proxy.advance(6.0)
    assert proxy.count() == 0


def test_provisional_then_silence_cancels_after_fr_inv_timer(proxy):
    _, sent = start_call(proxy)
    fwd = fwd_of(sent)
    proxy.feed(uas_reply(fwd, 180, "Ringing"), UAS)
    assert to(proxy.advance(3.9), UAC) == []
    got = proxy.advance(0.2)
    assert [m.status for m in to(got, UAC)] == [408]
    cancel = [m for m in to(got, UAS) if m.method == "CANCEL"]
    assert len(cancel) == 1
    assert top_branch(cancel[0]) == top_branch(fwd)
    assert cancel[0].ruri == fwd.ruri and cancel[0].get("CSeq") == "1 CANCEL"
    # the UAS answers the CANCEL and the INVITE: the proxy ACKs the 487, relays nothing
    assert proxy.feed(uas_reply(cancel[0], 200, "OK"), UAS) == []
    sent = proxy.feed(uas_reply(fwd, 487, "Request Terminated"), UAS)
    assert to(sent, UAC) == []
    acks = to(sent, UAS)
    assert [m.method for m in acks] == ["ACK"] and top_branch(acks[0]) == top_branch(fwd)


def test_cancel_after_180(proxy):
    data, sent = start_call(proxy)
    fwd = fwd_of(sent)
    proxy.feed(uas_reply(fwd, 180, "Ringing"), UAS)
    req = parse(data)
    cancel = request("CANCEL", RURI, src=UAC, branch=req.param("Via", "branch"),
                     call_id=req.get("Call-ID").split("@")[0], from_=req.get("From"))
    sent = proxy.feed(cancel, UAC)
    up = to(sent, UAC)
    assert [(m.status, m.reason, m.get("CSeq")) for m in up] == [(200, "canceling", "1 CANCEL")]
    down = to(sent, UAS)
    assert [m.method for m in down] == ["CANCEL"]
    assert top_branch(down[0]) == top_branch(fwd) and down[0].ruri == fwd.ruri
    assert proxy.feed(uas_reply(down[0], 200, "OK"), UAS) == []   # absorbed
    sent = proxy.feed(uas_reply(fwd, 487, "Request Terminated"), UAS)
    assert [m.status for m in to(sent, UAC)] == [487]
    assert [m.method for m in to(sent, UAS)] == ["ACK"]
    # the UAC's hop-by-hop ACK for the 487 is absorbed, not forwarded
    ack = request("ACK", RURI, src=UAC, branch=req.param("Via", "branch"),
                  call_id=req.get("Call-ID").split("@")[0], from_=req.get("From"),
                  to=to(sent, UAC)[0].get("To"))
    assert proxy.feed(ack, UAC) == []
    # a retransmitted CANCEL gets its 200 again and sends nothing downstream
    again = proxy.feed(cancel, UAC)
    assert [m.status for m in to(again, UAC)] == [200] and to(again, UAS) == []


def test_cancel_before_any_provisional_waits_for_one(proxy):
    data, sent = start_call(proxy)
    fwd = fwd_of(sent)
    req = parse(data)
    cancel = request("CANCEL", RURI, src=UAC, branch=req.param("Via", "branch"),
                     call_id=req.get("Call-ID").split("@")[0], from_=req.get("From"))
    sent = proxy.feed(cancel, UAC)
    assert [m.status for m in to(sent, UAC)] == [200]
    assert to(sent, UAS) == []                         # RFC 3261 9.1: not before a 1xx
    sent = proxy.feed(uas_reply(fwd, 180, "Ringing"), UAS)
    assert [m.method for m in to(sent, UAS)] == ["CANCEL"]


def test_cancel_without_transaction_is_forwarded_statelessly(proxy):
    cancel = request("CANCEL", RURI, src=UAC)
    sent = proxy.feed(cancel, UAC)
    assert to(sent, UAC) == []
    down = to(sent, UAS)
    assert [m.method for m in down] == ["CANCEL"]
    assert top_branch(down[0]).endswith(".s")
    assert proxy.count() == 0


def test_non_2xx_final_acked_downstream_and_retransmitted_upstream(proxy):
    data, sent = start_call(proxy)
    fwd = fwd_of(sent)
    busy = uas_reply(fwd, 486, "Busy Here")
    sent = proxy.feed(busy, UAS)
    assert [m.status for m in to(sent, UAC)] == [486]
    acks = to(sent, UAS)
    assert [m.method for m in acks] == ["ACK"]
    assert acks[0].ruri == fwd.ruri and acks[0].param("To", "tag") == "uas1"
    assert acks[0].get("CSeq") == "1 ACK"
    again = proxy.feed(busy, UAS)                     # retransmitted 486: ACK again only
    assert to(again, UAC) == [] and [m.method for m in to(again, UAS)] == ["ACK"]
    assert [m.status for m in to(proxy.advance(0.55), UAC)] == [486]   # Timer G
    assert [m.status for m in to(proxy.feed(data, UAC), UAC)] == [486]  # retransmission


def test_2xx_retransmissions_forwarded(proxy):
    _, sent = start_call(proxy)
    ok = uas_reply(fwd_of(sent), 200, "OK")
    assert [m.status for m in to(proxy.feed(ok, UAS), UAC)] == [200]
    assert [m.status for m in to(proxy.feed(ok, UAS), UAC)] == [200]
    proxy.advance(6.0)  # the transaction is gone: the core forwards it statelessly
    assert proxy.count() == 0
    assert [m.status for m in to(proxy.feed(ok, UAS), UAC)] == [200]


def test_in_dialog_ack_and_bye_follow_the_route_set(proxy):
    data, sent = start_call(proxy)
    fwd = fwd_of(sent)
    rr = fwd.get("Record-Route")
    ok_sent = proxy.feed(uas_reply(fwd, 200, "OK", contact="<sip:bob@10.0.0.2:5080>"), UAS)
    ok = to(ok_sent, UAC)[0]
    req = parse(data)
    common = dict(src=UAC, call_id=req.get("Call-ID").split("@")[0], from_=req.get("From"),
                  to=ok.get("To"), headers=[f"Route: {rr}"])
    ack = request("ACK", "sip:bob@10.0.0.2:5080", **common)
    sent = proxy.feed(ack, UAC)
    down = to(sent, UAS)
    assert [m.method for m in down] == ["ACK"]
    assert down[0].get("Route") is None                # our own Route removed
    bye = request("BYE", "sip:bob@10.0.0.2:5080", cseq=2, **common)
    sent = proxy.feed(bye, UAC)
    down = to(sent, UAS)
    assert [m.method for m in down] == ["BYE"] and down[0].get("Route") is None
    assert to(sent, UAC) == []
    sent = proxy.feed(uas_reply(down[0], 200, "OK"), UAS)
    assert [(m.status, m.get("CSeq")) for m in to(sent, UAC)] == [(200, "2 BYE")]
    again = proxy.feed(bye, UAC)                       # retransmitted BYE: the 200 again
    assert [m.status for m in to(again, UAC)] == [200] and to(again, UAS) == []


# ---- forking --------------------------------------------------------------------------

FORK = "sip:fork@10.0.0.2:5080"


def fork(p: Proxy) -> tuple[bytes, Parsed, Parsed]:
    data, sent = start_call(p, FORK)
    return data, fwd_of(sent, UAS), fwd_of(sent, UAS2)


def test_fork_first_200_wins_other_branch_cancelled(proxy):
    _, b1, b2 = fork(proxy)
    assert top_branch(b1) == top_branch(b2).replace(".1.", ".0.")
    assert top_branch(b1).endswith(".0.1")              # branch 0, onreply route 1
    assert b2.ruri == "sip:carol@10.0.0.3:5090"
    proxy.feed(make_reply(b2, 180, "Ringing", to_tag="c"), UAS2)
    sent = proxy.feed(uas_reply(b1, 200, "OK"), UAS)
    assert [m.status for m in to(sent, UAC)] == [200]
    cancels = to(sent, UAS2)
    assert [m.method for m in cancels] == ["CANCEL"]
    sent = proxy.feed(make_reply(b2, 487, "Request Terminated", to_tag="c"), UAS2)
    assert to(sent, UAC) == [] and [m.method for m in to(sent, UAS2)] == ["ACK"]


def test_fork_branch_without_provisional_cancelled_when_it_rings(proxy):
    _, b1, b2 = fork(proxy)
    proxy.feed(uas_reply(b1, 200, "OK"), UAS)
    sent = proxy.feed(make_reply(b2, 180, "Ringing", to_tag="c"), UAS2)
    assert to(sent, UAC) == []                          # no provisional after the 2xx
    assert [m.method for m in to(sent, UAS2)] == ["CANCEL"]


def test_fork_second_2xx_is_relayed_too(proxy):
    _, b1, b2 = fork(proxy)
    proxy.feed(uas_reply(b1, 200, "OK"), UAS)
    sent = proxy.feed(make_reply(b2, 200, "OK", to_tag="c"), UAS2)
    assert [m.status for m in to(sent, UAC)] == [200]


@pytest.mark.parametrize("first,second,best", [
    (486, 404, 486),   # same class: the first one
    (404, 302, 302),   # lowest class
    (486, 603, 603),   # 6xx first
    (503, 503, 500),   # 503 becomes 500
    (408, 486, 408),   # a real 408 counts like any 4xx
])
def test_fork_best_final(proxy, first, second, best):
    _, b1, b2 = fork(proxy)
    sent = proxy.feed(uas_reply(b1, first, "A"), UAS)
    assert to(sent, UAC) == []                          # held: branch 2 is pending
    sent = proxy.feed(make_reply(b2, second, "B", to_tag="c"), UAS2)
    assert [m.status for m in to(sent, UAC)] == [best]


def test_fork_6xx_cancels_the_others(proxy):
    _, b1, b2 = fork(proxy)
    proxy.feed(make_reply(b2, 180, "Ringing", to_tag="c"), UAS2)
    sent = proxy.feed(uas_reply(b1, 603, "Decline"), UAS)
    assert [m.method for m in to(sent, UAS2)] == ["CANCEL"]
    sent = proxy.feed(make_reply(b2, 487, "Terminated", to_tag="c"), UAS2)
    assert [m.status for m in to(sent, UAC)] == [603]


def test_fork_challenges_merged(proxy):
    _, b1, b2 = fork(proxy)
    proxy.feed(uas_reply(b1, 401, "Unauthorized",
                         headers=['WWW-Authenticate: Digest realm="a", nonce="1"']), UAS)
    sent = proxy.feed(make_reply(b2, 407, "Proxy Auth", to_tag="c",
                                 headers=['Proxy-Authenticate: Digest realm="b", nonce="2"']),
                      UAS2)
    up = to(sent, UAC)
    assert [m.status for m in up] == [401]
    assert up[0].get("WWW-Authenticate") == 'Digest realm="a", nonce="1"'
    assert up[0].get("Proxy-Authenticate") == 'Digest realm="b", nonce="2"'


def test_fork_timeout_of_one_branch_keeps_the_real_reply(proxy):
    _, b1, b2 = fork(proxy)
    proxy.feed(uas_reply(b1, 486, "Busy"), UAS)
    got = proxy.advance(2.1)                            # branch 2 silent: fr_timer
    assert [m.status for m in to(got, UAC)] == [486]


# ---- failures -------------------------------------------------------------------------

def test_unresolvable_host_gets_478(proxy):
    data = invite("sip:bob@no-such-host.invalid")
    sent = proxy.feed(data, UAC)
    up = to(sent, UAC)
    assert [m.status for m in up] == [478]
    assert up[0].reason == "Unresolvable destination (4/SL)"
    # through the transaction: the retransmission gets it again, the ACK is absorbed
    assert [m.status for m in to(proxy.feed(data, UAC), UAC)] == [478]
    assert proxy.count() == 1


def test_request_to_ourselves_gets_482(proxy):
    sent = proxy.feed(invite(f"sip:bob@{LISTEN[0]}:{LISTEN[1]}"), UAC)
    assert [(m.status, m.reason) for m in to(sent, UAC)] == [(482, "Loop Detected (482/SL)")]
    sent = proxy.feed(invite(f"sip:bob@{LISTEN[0]}"), UAC)   # port 5060 = ours too
    assert [m.status for m in to(sent, UAC)] == [482]


def test_bad_uri_gets_479():
    p = Proxy(BASE + 'route { if (!t_relay()) { sl_reply_error(); }; }')
    try:
        sent = p.feed(invite("tel:+123456"), UAC)
        assert [m.status for m in to(sent, UAC)] == [479]
    finally:
        p.close()


def test_failure_answered_at_script_end_when_the_script_does_not():
    p = Proxy(BASE + 'route { t_relay(); }')
    try:
        sent = p.feed(invite("sip:bob@no-such-host.invalid"), UAC)
        assert [m.status for m in to(sent, UAC)] == [478]
    finally:
        p.close()


def test_script_reply_after_failure_wins():
    p = Proxy(BASE + 'route { if (!t_relay()) { sl_send_reply("404", "Nope"); }; }')
    try:
        sent = p.feed(invite("sip:bob@no-such-host.invalid"), UAC)
        assert [m.status for m in to(sent, UAC)] == [404]
    finally:
        p.close()


def test_table_full_gets_503():
    p = Proxy("tm_table_size=64\n" + BASE + ROUTE)
    try:
        statuses = []
        for _ in range(200):
            sent = p.feed(request("OPTIONS", RURI, src=UAC), UAC)
            statuses += [m.status for m in to(sent, UAC)]
        assert 503 in statuses
        assert p.worker().ctx.stats.tm_table_full >= 1
    finally:
        p.close()


def test_request_too_big_for_a_record_gets_500():
    p = Proxy(BASE + 'modparam("tm", "record_size", 1024)\n' + ROUTE)
    try:
        sent = p.feed(request("MESSAGE", RURI, src=UAC, body=b"x" * 2000), UAC)
        assert [m.status for m in to(sent, UAC)] == [500]
    finally:
        p.close()


# ---- across workers -------------------------------------------------------------------

def test_reply_on_another_worker(proxy2):
    _, sent = start_call(proxy2, worker=1)
    fwd = fwd_of(sent)
    sent = proxy2.feed(uas_reply(fwd, 180, "Ringing"), UAS, worker=2)
    assert [(m.status, m.get("X-Flag6")) for m in to(sent, UAC)] == [(180, "seen")]
    assert proxy2.worker(2).ctx.stats.tm_replies_foreign == 1
    assert proxy2.worker(1).ctx.stats.tm_replies_foreign == 0


def test_earlier_deadline_moves_the_timers_to_that_worker(proxy2):
    _, sent = start_call(proxy2, worker=1)
    fwd = fwd_of(sent)
    proxy2.feed(uas_reply(fwd, 180, "Ringing"), UAS, worker=1)   # now due: Timer C, 4 s
    sent = proxy2.feed(uas_reply(fwd, 486, "Busy"), UAS, worker=2)  # Timer G, 0.5 s
    assert proxy2.worker(2).ctx.stats.tm_timer_takeovers == 1
    got = proxy2.advance(1.6)
    assert [m.status for m in to(got, UAC)] == [486, 486]         # once per G, no doubles
    assert [s for s in proxy2.worker(1).out if s.data.startswith(b"SIP/2.0 486")] == []


def test_stale_heap_entry_costs_nothing(proxy2):
    _, sent = start_call(proxy2, worker=1)
    fwd = fwd_of(sent)
    proxy2.feed(uas_reply(fwd, 200, "OK"), UAS, worker=2)
    got = proxy2.advance(6.0)
    assert got == [] and proxy2.count() == 0


def test_respawned_worker_takes_its_timers_back():
    p = Proxy(BASE + ROUTE, workers=2)
    try:
        start_call(p, worker=1)
        # "kill -9": worker 1's heap is lost; a new process in the same slot starts
        w = p.worker(1)
        tm = w.tm
        tm.heap.clear()
        tm.armed.clear()
        assert p.advance(0.6) == []
        assert tm.adopt_own(w.ctx) == 1
        got = p.advance(0.5)
        assert [m.method for m in to(got, UAS)] == ["INVITE"]    # Timer A goes on
        got = p.advance(1.0)
        assert [m.status for m in to(got, UAC)] == [408]
    finally:
        p.close()


def test_orphans_adopted_by_another_process():
    p = Proxy(BASE + ROUTE, workers=2)
    try:
        start_call(p, worker=1)
        p.worker(1).tm.heap.clear()
        p.worker(1).tm.armed.clear()
        p.clock.t += 1.0
        w2 = p.worker(2)
        assert w2.tm.adopt_orphans(w2.ctx, p.clock.t) == 0       # not late enough yet
        p.clock.t += 2.0
        assert w2.tm.adopt_orphans(w2.ctx, p.clock.t) == 1
        got = p.advance(0.1)
        assert [m.method for m in to(got, UAS)] == ["INVITE"]
    finally:
        p.close()


# ---- NAT and old peers -----------------------------------------------------------------

def test_replies_follow_received_and_rport():
    p = Proxy(BASE + ROUTE)
    try:
        nat = ("203.0.113.5", 40000)
        data = request("INVITE", RURI, src=("10.0.0.1", 5070))  # Via says the private address
        sent = p.feed(data, nat)
        assert [m.status for m in to(sent, nat)] == [100]
        fwd = fwd_of(sent)
        assert "received=203.0.113.5" in fwd.all("Via")[1]
        assert "rport=40000" in fwd.all("Via")[1]
        sent = p.feed(uas_reply(fwd, 180, "Ringing"), UAS)
        assert [m.status for m in to(sent, nat)] == [180]
        p.advance(1.0)
        got = p.advance(4.0)
        assert [m.status for m in to(got, nat)][:1] == [408]
    finally:
        p.close()


def test_rfc2543_request_without_cookie(proxy):
    data = invite(branch="oldstyle1")
    sent = proxy.feed(data, UAC)
    fwd = fwd_of(sent)
    again = proxy.feed(data, UAC)
    assert [m.status for m in to(again, UAC)] == [100] and to(again, UAS) == []
    sent = proxy.feed(uas_reply(fwd, 404, "Not Found"), UAS)
    up = to(sent, UAC)
    assert [m.status for m in up] == [404]
    req = parse(data)
    ack = request("ACK", RURI, src=UAC, branch="oldstyle1",
                  call_id=req.get("Call-ID").split("@")[0], from_=req.get("From"),
                  to=up[0].get("To"))
    assert proxy.feed(ack, UAC) == []


def test_t_on_reply_after_t_relay_still_runs():
    p = Proxy(BASE + """
route { t_relay(); t_on_reply("3"); }
onreply_route[3] { append_hf("X-Late: yes\\r\\n"); }
""")
    try:
        _, sent = start_call(p)
        fwd = fwd_of(sent)
        assert top_branch(fwd).count(".") == 1                 # no route hint in the id
        sent = p.feed(uas_reply(fwd, 180, "Ringing"), UAS)
        assert [m.get("X-Late") for m in to(sent, UAC)] == ["yes"]
    finally:
        p.close()


def test_reply_not_ours_is_left_to_the_core(proxy):
    """A reply whose branch is not one of tm's (a stateless forward's, another proxy
    state) is relayed statelessly by the core along its Vias."""
    up = request("OPTIONS", RURI, src=UAC)
    fwd = up.replace(b"Via: ", b"Via: SIP/2.0/UDP %s:%d;branch=z9hG4bKother\r\nVia: "
                     % (LISTEN[0].encode(), LISTEN[1]), 1)
    sent = proxy.feed(make_reply(parse(fwd), 200, "OK", to_tag="x"), UAS)
    assert [m.status for m in to(sent, UAC)] == [200]
    stats = proxy.worker().ctx.stats
    assert stats.tm_replies_relayed == 0 and stats.fwd_replies == 1


# ---- more edges ---------------------------------------------------------------------------

def test_ack_for_a_local_error_reply_is_absorbed(proxy):
    data = invite("sip:bob@no-such-host.invalid")
    up = to(proxy.feed(data, UAC), UAC)
    req = parse(data)
    ack = request("ACK", "sip:bob@no-such-host.invalid", src=UAC,
                  branch=req.param("Via", "branch"), call_id=req.get("Call-ID").split("@")[0],
                  from_=req.get("From"), to=up[0].get("To"))
    assert proxy.feed(ack, UAC) == []
    assert proxy.worker().ctx.stats.tm_acks_absorbed == 1
    assert to(proxy.advance(2.0), UAC) == []            # no Timer G after the ACK


def test_unacked_local_error_reply_is_retransmitted(proxy):
    proxy.feed(invite("sip:bob@no-such-host.invalid"), UAC)
    got = to(proxy.advance(1.6), UAC)
    assert [m.status for m in got] == [478, 478]         # Timer G: 0.5 s, 1.5 s


def test_one_branch_unresolvable_the_other_forwarded():
    p = Proxy(BASE + """
route { append_branch("sip:carol@no-such-host.invalid"); t_relay(); }
""")
    try:
        sent = p.feed(invite(), UAC)
        assert [m.status for m in to(sent, UAC)] == [100]
        assert [m.method for m in to(sent, UAS)] == ["INVITE"]
    finally:
        p.close()


def test_send_failure_gives_477():
    p = Proxy(BASE + 'route { if (!t_relay()) { sl_reply_error(); }; }')
    try:
        w = p.worker()

        class Refusing(type(w.transport)):
            def send(self, data, addr):
                if addr == UAS:
                    return False
                return super().send(data, addr)
        w.transport = w.ctx.transport = Refusing()
        sent = p.feed(invite(), UAC)
        assert [m.status for m in to(sent, UAC)] == [100, 477]
    finally:
        p.close()


def test_records_that_do_not_fit_drop_the_last_reply_first():
    p = Proxy(BASE + 'modparam("tm", "record_size", 1536)\nroute { t_relay(); }')
    try:
        data, sent = start_call(p)
        fwd = fwd_of(sent)
        big = uas_reply(fwd, 183, "Progress", body=b"v=0\r\n" + b"a=x\r\n" * 120)
        assert [m.status for m in to(p.feed(big, UAS), UAC)] == [183]   # relayed
        again = p.feed(data, UAC)
        assert [m.status for m in to(again, UAC)] == [100]              # not kept: 100
    finally:
        p.close()


def test_timer_process_hook_adopts_and_runs():
    p = Proxy(BASE + ROUTE, workers=2)
    try:
        start_call(p, worker=1)
        p.worker(1).tm.heap.clear()
        p.worker(1).tm.armed.clear()
        w2 = p.worker(2)
        p.clock.t += 3.0
        delay = w2.tm.timer(w2.ctx, 0.0)
        assert delay is not None and delay <= 5.0
        got = w2.take()
        assert [m.method for m in to(got, UAS)] == ["INVITE"]           # Timer A, late
        assert w2.ctx.stats.tm_timer_takeovers == 1
    finally:
        p.close()


def test_rpc_stats(proxy):
    start_call(proxy)
    tm = proxy.worker().tm
    stats = tm.rpc_stats(proxy.worker().ctx, [])
    assert stats["transactions"] == 1 and stats["capacity"] >= 16384


def test_t_on_reply_zero_disarms():
    p = Proxy(BASE + """
route { t_on_reply("1"); t_on_reply("0"); t_relay(); }
onreply_route[1] { append_hf("X-Ran: yes\\r\\n"); }
""")
    try:
        _, sent = start_call(p)
        sent = p.feed(uas_reply(fwd_of(sent), 180, "Ringing"), UAS)
        assert [m.get("X-Ran") for m in to(sent, UAC)] == [None]
    finally:
        p.close()


def test_retransmission_answered_before_the_script_runs_again():
    p = Proxy(BASE + 'route { count_call(); t_relay(); }', workers=2)
    try:
        data, sent = start_call(p, worker=1)
        counter1 = p.worker(1).ctx.modules["tmtest"]
        assert counter1.calls == 1
        again = p.feed(data, UAC, worker=1)
        assert [m.status for m in to(again, UAC)] == [100] and to(again, UAS) == []
        assert counter1.calls == 1                       # absorbed before the script
        assert p.worker(1).ctx.stats.tm_retransmissions == 1
        # a retransmission that reaches another worker runs the script, t_relay absorbs it
        again = p.feed(data, UAC, worker=2)
        assert p.worker(2).ctx.modules["tmtest"].calls == 1
        assert [m.status for m in to(again, UAC)] == [100] and to(again, UAS) == []
        # a different request with the same bytes but a finished transaction: script runs
        p.advance(40.0, step=0.5)                         # 408, no ACK: Timer H ends it
        assert p.count() == 0
        p.feed(data, UAC, worker=1)
        assert counter1.calls == 2
    finally:
        p.close()
