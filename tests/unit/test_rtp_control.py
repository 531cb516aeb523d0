"""The rtpproxy command executor and server wrapper (natserver/rtp/control.py)."""

import pytest

from natserver.rtp import protocol as P
from natserver.rtp.control import (
    ControlConfig,
    ControlServer,
    RelayStats,
    execute,
    expire,
)
from natserver.rtp.ports import PortTable
from natserver.rtp.session import DictStore, SessionFlags, SessionState, SideFlags, SideState


class Relay:
    """A store, a port table and counters: what a relay process hands the executor."""

    def __init__(self, lo=35000, hi=35999, **cfg):
        self.store = DictStore()
        self.ports = PortTable(lo, hi, seed=1)
        self.cfg = ControlConfig(**cfg)
        self.stats = RelayStats()
        self.now = 1000.0

    def run(self, wire: bytes):
        return execute(P.parse_command(wire), self.store, self.ports, self.now, self.cfg,
                       self.stats)

    def reply(self, wire: bytes) -> bytes:
        return self.run(wire).reply

    def session(self, callid=b"c1", media=1):
        (s,) = [s for s in self.store.get(callid) if s.media == media]
        return s


def test_u_creates_with_two_even_port_pairs_and_replies_callee_port():
    r = Relay()
    out = r.run(b"U c1 198.51.100.7 8000 tagA")
    (s,) = out.created
    p0, p1 = s.sides[0].port, s.sides[1].port
    assert p0 % 2 == 0 and p1 % 2 == 0 and p0 != p1
    assert out.reply == b"%d" % p1                 # B must send to side 1's port
    assert s.state == SessionState.OFFERED and s.tags == [b"tagA", b""]
    assert s.sides[0].sig_ip == "198.51.100.7" and s.sides[0].sig_port == 8000
    assert s.sides[0].state == SideState.SIGNALLED and s.sides[1].state == SideState.EMPTY
    assert r.ports.in_use == 2 and r.stats.sessions_created == 1


def test_reply_carries_the_advertised_address():
    r = Relay(advertise="192.0.2.13")
    assert r.reply(b"U c1 198.51.100.7 8000 tagA").endswith(b" 192.0.2.13")
    r6 = Relay(advertise="2001:db8::13")
    assert r6.reply(b"U c1 198.51.100.7 8000 tagA").endswith(b" 2001:db8::13 6")


def test_l_completes_and_replies_caller_port():
    r = Relay()
    b_port = r.reply(b"U c1 198.51.100.7 8000 tagA")
    out = r.run(b"L c1 203.0.113.9 9000 tagA tagB")
    s = r.session()
    assert out.reply == b"%d" % s.sides[0].port and b_port == b"%d" % s.sides[1].port
    assert s.state == SessionState.ANSWERED and s.tags == [b"tagA", b"tagB"]
    assert s.sides[1].peer == ("203.0.113.9", 9000)
    assert out.updated and not out.created


def test_l_of_unknown_session_is_zero_not_error():
    r = Relay()
    out = r.run(b"L nope 203.0.113.9 9000 tagA tagB")
    assert out.reply == b"0" and out.ok and len(r.store) == 0


def test_retransmitted_l_is_idempotent():
    r = Relay()
    r.run(b"U c1 198.51.100.7 8000 tagA")
    first = r.reply(b"L c1 203.0.113.9 9000 tagA tagB")
    assert r.reply(b"L c1 203.0.113.9 9000 tagA tagB") == first
    assert r.ports.in_use == 2


@pytest.mark.parametrize("d", [b"D c1 tagA", b"D c1 tagB tagA", b"D c1 tagB", b"D c1 x tagB"])
def test_d_deletes_by_either_tag_and_frees_ports(d):
    r = Relay()
    r.run(b"U c1 198.51.100.7 8000 tagA")
    r.run(b"L c1 203.0.113.9 9000 tagA tagB")
    out = r.run(d)
    assert out.reply == b"0" and len(out.removed) == 1
    assert len(r.store) == 0 and r.ports.in_use == 0 and r.stats.sessions_destroyed == 1


def test_d_unknown_is_e50():
    r = Relay()
    assert r.reply(b"D c1 tagA") == b"E50"
    r.run(b"U c1 198.51.100.7 8000 tagA")
    assert r.reply(b"D c1 other") == b"E50"
    assert len(r.store) == 1


def test_reinvite_u_from_callee_updates_callee_side():
    r = Relay()
    r.run(b"U c1 198.51.100.7 8000 tagA")
    r.run(b"L c1 203.0.113.9 9000 tagA tagB")
    out = r.run(b"U c1 203.0.113.9 9500 tagB tagA")      # callee re-INVITEs
    s = r.session()
    assert out.reply == b"%d" % s.sides[0].port and not out.created
    assert s.sides[1].sig_port == 9500 and s.sides[0].sig_port == 8000


def test_reinvite_u_from_caller_updates_caller_side():
    r = Relay()
    r.run(b"U c1 198.51.100.7 8000 tagA")
    r.run(b"L c1 203.0.113.9 9000 tagA tagB")
    out = r.run(b"U c1 198.51.100.7 8200 tagA tagB")
    s = r.session()
    assert out.reply == b"%d" % s.sides[1].port and s.sides[0].sig_port == 8200
    assert len(r.store) == 1


def test_swapped_l_for_reinvite_never_creates():
    # force_rtp_proxy("l") in a re-INVITE from the caller: L <callid> ip port <to> <from>
    r = Relay()
    assert r.reply(b"L c1 198.51.100.7 8000 tagB tagA") == b"0"
    r.run(b"U c1 198.51.100.7 8000 tagA")
    r.run(b"L c1 203.0.113.9 9000 tagA tagB")
    out = r.run(b"L c1 198.51.100.7 8400 tagB tagA")
    s = r.session()
    assert s.sides[0].sig_port == 8400 and out.reply == b"%d" % s.sides[1].port


def test_numbered_streams_are_separate_and_d_without_number_removes_all():
    r = Relay()
    r.run(b"U c1 198.51.100.7 8000 tagA;1")
    r.run(b"U c1 198.51.100.7 8002 tagA;2")
    r.run(b"L c1 203.0.113.9 9000 tagA;1 tagB;1")
    out2 = r.run(b"L c1 203.0.113.9 9002 tagA;2 tagB;2")
    assert out2.reply == b"%d" % r.session(media=2).sides[0].port
    assert r.session(media=1).sides[1].sig_port == 9000
    assert r.session(media=2).sides[1].sig_port == 9002
    assert len(r.store) == 2 and r.ports.in_use == 4
    assert r.reply(b"D c1 tagA;2") == b"0"
    assert [s.media for s in r.store.get(b"c1")] == [1]
    r.run(b"U c1 198.51.100.7 8002 tagA;2")
    assert r.run(b"D c1 tagA").removed and len(r.store) == 0


def test_mismatched_stream_numbers_refused():
    assert Relay().reply(b"U c1 1.2.3.4 8000 tagA;1 tagB;2") == b"E6"


def test_unnumbered_tag_is_stream_one():
    r = Relay()
    r.run(b"U c1 198.51.100.7 8000 tagA")
    r.run(b"L c1 203.0.113.9 9000 tagA;1 tagB;1")
    assert len(r.store) == 1 and r.session().state == SessionState.ANSWERED


def test_asymmetric_modifier_and_short_address():
    r = Relay()
    r.run(b"UA c1 198.51.100.7 8000 tagA")
    assert r.session().sides[0].flags & SideFlags.ASYMMETRIC
    r.run(b"L c1 0 9000 tagA tagB")            # 1.x: a short address pre-fills nothing
    assert r.session().sides[1].peer is None


@pytest.mark.parametrize("wire", [b"U c1 999.1.1.1 8000 tagA", b"U c1 2001:db8::1 8000 tagA",
                                  b"U6 c1 198.51.100.7 8000 tagA"])
def test_bad_address_is_e37(wire):
    assert Relay().reply(wire) == b"E37"


def test_weak_references():
    r = Relay()
    r.run(b"U c1 198.51.100.7 8000 tagA")
    r.run(b"UW c1 198.51.100.7 8000 tagA")
    assert r.session().flags & SessionFlags.WEAK and r.session().flags & SessionFlags.STRONG
    out = r.run(b"Dw c1 tagA")
    assert out.reply == b"0" and not out.removed and len(r.store) == 1
    assert r.run(b"D c1 tagA").removed and len(r.store) == 0


def test_new_port_modifier_reallocates_the_replied_side():
    r = Relay()
    old = int(r.reply(b"U c1 198.51.100.7 8000 tagA"))
    new = int(r.reply(b"UN c1 198.51.100.7 8000 tagA"))
    assert new != old and r.session().sides[1].port == new and old not in r.ports
    assert r.session().flags & SessionFlags.NEW_PORT and r.ports.in_use == 2


def test_port_exhaustion_is_e71_and_leaks_nothing():
    r = Relay(lo=35000, hi=35003)                 # two pairs: one session
    r.run(b"U c1 198.51.100.7 8000 tagA")
    assert r.reply(b"U c2 198.51.100.7 8000 tagA") == b"E71"
    assert r.ports.in_use == 2 and len(r.store) == 1


def test_draining_relay_refuses_new_sessions_only():
    r = Relay()
    r.run(b"U c1 198.51.100.7 8000 tagA")
    r.cfg.draining = True
    assert r.reply(b"U c2 198.51.100.7 8000 tagA") == b"E99"
    assert r.reply(b"L c1 203.0.113.9 9000 tagA tagB").isdigit()


def test_query_counts_from_the_asking_side():
    r = Relay(timeout=60.0)
    r.run(b"U c1 198.51.100.7 8000 tagA")
    r.run(b"L c1 203.0.113.9 9000 tagA tagB")
    s = r.session()
    s.sides[0].packets, s.sides[1].packets = 10, 20
    s.sides[0].relayed, s.sides[1].relayed = 9, 20
    s.sides[0].dropped = 3
    s.sides[0].last_packet = r.now - 15
    r.store.put(s)
    assert r.reply(b"Q c1 tagA tagB") == b"60 10 20 29 3"
    assert r.reply(b"Q c1 tagB tagA") == b"60 20 10 29 3"
    assert r.reply(b"Qv c1 tagA tagB ttl ndropped") == b"ttl=60 ndropped=3"
    assert r.reply(b"Q c1 tagA tagB bogus") == b"E62"
    assert r.reply(b"Q c9 tagA") == b"E50"


def test_info_stats_version_delete_all():
    r = Relay()
    r.run(b"U c1 198.51.100.7 8000 tagA")
    r.run(b"U c2 198.51.100.7 8002 tagA;1")
    r.run(b"U c2 198.51.100.7 8004 tagA;2")
    info = r.reply(b"I")
    assert info.startswith(b"sessions created: 3\nactive sessions: 2\nactive streams: 3")
    assert info.count(b"\n\t") == 3 and b"c2/tagA" in info
    assert r.reply(b"Ib").count(b"\n") == 2
    assert r.reply(b"G nsess_created npkts_rcvd") == b"3 0"
    assert r.reply(b"Gv nsess_created") == b"nsess_created=3"
    assert b"ncmds_rcvd=" in r.reply(b"G")
    assert r.reply(b"G bogus") == b"E68"
    assert r.reply(b"V") == b"20040107"
    assert r.reply(b"VF 20050322") == b"1" and r.reply(b"VF 20071116") == b"0"
    out = r.run(b"X")
    assert out.reply == b"0" and len(out.removed) == 3 and r.ports.in_use == 0


def test_unsupported_media_commands():
    r = Relay()
    assert r.reply(b"P c1 prompt 0 tagA") == b"E60"
    assert r.reply(b"R c1 tagA") == b"E65"
    assert r.reply(b"C c1 target tagA") == b"E65"
    assert r.reply(b"S c1 tagA") == b"0"


def test_expire_removes_idle_sessions_and_frees_ports():
    r = Relay(timeout=60.0)
    r.run(b"U c1 198.51.100.7 8000 tagA")
    r.now += 30
    r.run(b"U c2 198.51.100.7 8000 tagA")
    s = r.session(b"c2")
    s.sides[0].last_packet = r.now + 40
    r.store.put(s)
    assert expire(r.store, r.ports, r.now + 29, r.cfg, r.stats) == []
    gone = expire(r.store, r.ports, r.now + 31, r.cfg, r.stats)
    assert [g.callid for g in gone] == [b"c1"] and r.ports.in_use == 2
    assert r.stats.sessions_timeout == 1
    assert [g.callid for g in expire(r.store, r.ports, r.now + 101, r.cfg, r.stats)] == [b"c2"]


# -- the server wrapper ---------------------------------------------------------------
def make_server():
    store = DictStore()
    ports = PortTable(35000, 35999, seed=2)
    return ControlServer(store, ports, ControlConfig()), store, ports


def test_retried_u_runs_once_thanks_to_the_reply_cache():
    srv, store, ports = make_server()
    peer = ("10.0.0.1", 5060)
    first, out = srv.datagram(b"ck1 U c1 198.51.100.7 8000 tagA", peer, 10.0)
    again, out2 = srv.datagram(b"ck1 U c1 198.51.100.7 8000 tagA", peer, 11.0)
    assert first == again and first.startswith(b"ck1 ") and first.endswith(b"\n")
    assert out.created and out2 is None
    assert ports.in_use == 2 and srv.stats.replies_cached == 1
    # after the cache entry expired a retry is a new command (an update of the same stream)
    later, out3 = srv.datagram(b"ck1 U c1 198.51.100.7 8000 tagA", peer, 50.0)
    assert later == first and out3 is not None and not out3.created


def test_same_cookie_other_peer_is_another_command():
    srv, store, ports = make_server()
    srv.datagram(b"ck1 U c1 198.51.100.7 8000 tagA", ("10.0.0.1", 1), 10.0)
    srv.datagram(b"ck1 U c2 198.51.100.7 8000 tagA", ("10.0.0.2", 1), 10.0)
    assert len(store) == 2


def test_bad_commands_get_error_replies_with_cookie():
    srv, _, _ = make_server()
    assert srv.datagram(b"ck9 Y", "p", 1.0)[0] == b"ck9 E0\n"
    assert srv.datagram(b"ck9 U c1", "p", 1.0)[0] == b"ck9 E0\n"      # cached answer
    assert srv.datagram(b"ck8 U c1", "p", 1.0)[0] == b"ck8 E1\n"
    assert srv.datagram(b"", "p", 1.0) == (b"", None)
    assert srv.stats.commands_failed == 2


def test_unix_stream_has_no_cookie():
    srv, _, _ = make_server()
    reply, out = srv.stream(b"U c1 198.51.100.7 8000 tagA\n", 1.0)
    assert reply == b"%d\n" % out.created[0].sides[1].port
    assert srv.stream(b"V\n", 1.0)[0] == b"20040107\n"
