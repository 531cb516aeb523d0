"""Session records and the latching state machine (natserver/rtp/session.py)."""

import pytest

from natserver.rtp.session import (
    ASYMMETRIC_TABLE,
    LATCH_TABLES,
    RECORD_SIZE,
    SESSION_TABLE,
    DictStore,
    LatchMode,
    LatchPolicy,
    Session,
    SessionAction,
    SessionEvent,
    SessionState,
    Side,
    SideAction,
    SideEvent,
    SideFlags,
    SideState,
    find,
    matches_delete,
    on_packet,
    pack,
    signal,
    split_tag,
    unpack,
)

STRICT = LatchPolicy(LatchMode.STRICT, window=3.0, packets=100)
RTPPROXY = LatchPolicy(LatchMode.RTPPROXY)
NAT_IP = "198.51.100.7"


def signalled(policy=STRICT, ip=NAT_IP, port=8000, asym=False, now=100.0) -> Side:
    side = Side(port=35000)
    signal(side, ip, port, asym, now, policy)
    return side


# -- record layout ---------------------------------------------------------------------
def test_pack_unpack_round_trip_fixed_size():
    s = Session(b"call-1@host", [b"tagA", b"tagB"], 2, SessionState.ANSWERED, relay=3,
                created=1.5, updated=2.5)
    s.sides[0].port, s.sides[1].port = 35000, 35002
    signal(s.sides[0], "198.51.100.7", 8000, False, 2.0, STRICT)
    signal(s.sides[1], "2001:db8::9", 9000, True, 2.5, STRICT)
    on_packet(s.sides[0], "198.51.100.7", 61012, 3.0, STRICT)
    s.sides[1].packets, s.sides[1].bytes, s.sides[1].dropped = 7, 1204, 2
    raw = pack(s)
    assert len(raw) == RECORD_SIZE
    back = unpack(raw)
    assert back == s
    assert back.sides[0].peer == ("198.51.100.7", 61012)
    assert back.sides[1].sig_ip == "2001:db8::9" and back.sides[1].flags & SideFlags.ASYMMETRIC


def test_empty_session_round_trips():
    s = Session(b"x")
    assert unpack(pack(s)) == s


def test_pack_refuses_oversized_ids():
    with pytest.raises(ValueError):
        pack(Session(b"c" * 161))
    with pytest.raises(ValueError):
        pack(Session(b"c", [b"t" * 81, b""]))


def test_unpack_refuses_another_layout_version():
    raw = bytearray(pack(Session(b"x")))
    raw[0] = 99
    with pytest.raises(ValueError):
        unpack(bytes(raw))


def test_dict_store_keeps_streams_of_one_call_apart():
    st = DictStore()
    a, b = Session(b"c1", [b"A", b""], 1), Session(b"c1", [b"A", b""], 2)
    st.put(a)
    st.put(b)
    st.put(Session(b"c2", [b"X", b""], 1))
    assert sorted(s.media for s in st.get(b"c1")) == [1, 2] and len(st) == 3
    st.delete(a)
    assert [s.media for s in st.get(b"c1")] == [2]
    assert {s.callid for s in st.iterate()} == {b"c1", b"c2"}


# -- tables ----------------------------------------------------------------------------
def test_state_tables_cover_what_they_must():
    for state in SessionState:
        for ev in SessionEvent:
            if state == SessionState.NONE and ev == SessionEvent.TIMEOUT:
                continue
            assert (state, ev) in SESSION_TABLE, (state, ev)
    assert SESSION_TABLE[(SessionState.NONE, SessionEvent.LOOKUP)] == (
        SessionState.NONE, SessionAction.REPLY_ZERO)
    for table in (*LATCH_TABLES.values(), ASYMMETRIC_TABLE):
        for st in SideState:
            assert (st, SideEvent.SIGNAL) in table and (st, SideEvent.SIGNAL_NULL) in table


def test_split_tag_and_matching():
    assert split_tag(b"abc;2") == (b"abc", 2)
    assert split_tag(b"abc") == (b"abc", None)
    assert split_tag(b"a;b") == (b"a;b", None)
    s1 = Session(b"c", [b"A", b"B"], 1)
    s2 = Session(b"c", [b"A", b"B"], 2)
    assert find([s1, s2], 2, b"B", b"A") == (s2, 1)
    assert find([s1, s2], 1, b"A", None) == (s1, 0)
    assert find([s1], 1, b"Z", None) == (None, -1)
    assert find([Session(b"c", [b"A", b""], 1)], 1, b"B", b"A")[1] == 1  # first answer
    assert matches_delete(s2, (b"B",)) and matches_delete(s2, (b"A;2",))
    assert not matches_delete(s2, (b"A;1",)) and not matches_delete(s2, (b"Z",))


# -- strict latching -------------------------------------------------------------------
def test_strict_latches_onto_nat_mapping_of_signalled_ip():
    side = signalled()
    assert side.state == SideState.SIGNALLED and side.peer == (NAT_IP, 8000)
    act = on_packet(side, NAT_IP, 61012, 100.5, STRICT)
    assert act & SideAction.FORWARD and act & SideAction.LATCH
    assert side.state == SideState.LATCHED and side.peer == (NAT_IP, 61012)
    assert side.rtcp_peer == (NAT_IP, 61013)   # guessed until RTCP itself arrives


def test_strict_refuses_stranger_before_the_party_sends():
    side = signalled()
    act = on_packet(side, "203.0.113.66", 4444, 100.1, STRICT)
    assert act == SideAction.DROP
    assert side.state == SideState.SIGNALLED and side.peer == (NAT_IP, 8000)


def test_strict_relatch_within_window_same_ip_only():
    side = signalled()
    on_packet(side, NAT_IP, 61012, 100.5, STRICT)
    assert on_packet(side, NAT_IP, 61020, 101.0, STRICT) & SideAction.LATCH
    assert side.peer == (NAT_IP, 61020)
    assert on_packet(side, "203.0.113.66", 4444, 101.1, STRICT) == SideAction.DROP


def test_strict_bleed_after_lock_stranger_and_same_ip_dropped():
    side = signalled()
    on_packet(side, NAT_IP, 61012, 100.5, STRICT)
    # window over (3 s after the latch): the next foreign packet finds the side locked
    assert on_packet(side, "203.0.113.66", 4444, 104.0, STRICT) == SideAction.DROP
    assert side.state == SideState.LOCKED
    assert on_packet(side, NAT_IP, 61099, 104.1, STRICT) == SideAction.DROP
    assert on_packet(side, NAT_IP, 61012, 104.2, STRICT) == SideAction.FORWARD
    assert side.peer == (NAT_IP, 61012)


def test_strict_window_also_closes_after_n_packets():
    policy = LatchPolicy(LatchMode.STRICT, window=60.0, packets=5)
    side = signalled(policy)
    for i in range(5):
        on_packet(side, NAT_IP, 61012, 100.0 + i * 0.02, policy)
    assert on_packet(side, NAT_IP, 61014, 100.2, policy) == SideAction.DROP
    assert side.state == SideState.LOCKED


def test_strict_locked_side_moves_only_to_its_exact_signalled_address():
    side = signalled()
    on_packet(side, NAT_IP, 61012, 100.5, STRICT)
    on_packet(side, "203.0.113.66", 1, 110.0, STRICT)   # locks
    act = on_packet(side, NAT_IP, 8000, 110.1, STRICT)
    assert act & SideAction.LATCH and side.peer == (NAT_IP, 8000)
    assert side.state == SideState.LOCKED


def test_strict_new_signalling_keeps_peer_and_reopens_window():
    side = signalled()
    on_packet(side, NAT_IP, 61012, 100.5, STRICT)
    on_packet(side, "203.0.113.66", 1, 110.0, STRICT)   # locked
    # re-INVITE (hold): same SIP source IP, the learned NAT mapping stays the peer
    signal(side, NAT_IP, 8000, False, 200.0, STRICT)
    assert side.state == SideState.LATCHED and side.peer == (NAT_IP, 61012)
    assert on_packet(side, NAT_IP, 62000, 200.5, STRICT) & SideAction.LATCH
    assert on_packet(side, "203.0.113.66", 1, 200.6, STRICT) == SideAction.DROP


def test_strict_side_without_signalled_address_latches_first_packet():
    side = signalled(ip="")
    assert side.state == SideState.EMPTY and side.peer is None
    assert on_packet(side, "203.0.113.5", 5000, 100.1, STRICT) & SideAction.LATCH
    assert side.peer == ("203.0.113.5", 5000)


def test_null_address_is_hold_and_keeps_the_peer():
    side = signalled()
    on_packet(side, NAT_IP, 61012, 100.5, STRICT)
    signal(side, "0.0.0.0", 8000, False, 150.0, STRICT)
    assert side.flags & SideFlags.HELD and side.peer == (NAT_IP, 61012)
    assert side.sig_ip == NAT_IP


def test_asymmetric_side_never_latches_and_filters_by_ip():
    side = signalled(asym=True)
    act = on_packet(side, NAT_IP, 40000, 100.1, STRICT)
    assert act == SideAction.FORWARD and side.peer == (NAT_IP, 8000)
    assert on_packet(side, "203.0.113.66", 8000, 100.2, STRICT) == SideAction.DROP
    assert side.state == SideState.SIGNALLED


def test_rtcp_follows_the_rtp_peer_ip():
    side = signalled()
    on_packet(side, NAT_IP, 61012, 100.5, STRICT)
    assert on_packet(side, NAT_IP, 61013, 100.6, STRICT, rtcp=True) == SideAction.FORWARD
    act = on_packet(side, NAT_IP, 61500, 100.7, STRICT, rtcp=True)
    assert act & SideAction.LATCH and side.rtcp_peer == (NAT_IP, 61500)
    assert side.flags & SideFlags.RTCP_LATCHED
    assert on_packet(side, "203.0.113.66", 61500, 100.8, STRICT, rtcp=True) == SideAction.DROP
    # a later RTP latch does not overwrite a learned RTCP address
    on_packet(side, NAT_IP, 61020, 100.9, STRICT)
    assert side.rtcp_peer == (NAT_IP, 61500)


# -- rtpproxy 1.x mode ------------------------------------------------------------------
def test_rtpproxy_mode_latches_any_source_then_locks():
    side = signalled(RTPPROXY)
    act = on_packet(side, "203.0.113.66", 4444, 100.1, RTPPROXY)   # the 1.x bleed
    assert act & SideAction.LATCH and side.peer == ("203.0.113.66", 4444)
    assert side.state == SideState.LOCKED and side.flags & SideFlags.UNTRUSTED
    assert on_packet(side, NAT_IP, 61012, 100.2, RTPPROXY) == SideAction.DROP


def test_rtpproxy_mode_locks_peer_after_update_window():
    side = signalled(RTPPROXY)
    assert on_packet(side, NAT_IP, 8000, 105.0, RTPPROXY) == SideAction.FORWARD
    assert side.state == SideState.SIGNALLED
    on_packet(side, NAT_IP, 8000, 111.0, RTPPROXY)
    assert side.state == SideState.LOCKED
    assert on_packet(side, NAT_IP, 61012, 111.1, RTPPROXY) == SideAction.DROP


def test_rtpproxy_mode_untrusted_address_survives_signalling():
    side = signalled(RTPPROXY)
    on_packet(side, NAT_IP, 61012, 100.1, RTPPROXY)
    signal(side, NAT_IP, 8000, False, 120.0, RTPPROXY)
    assert side.peer == (NAT_IP, 61012) and side.state == SideState.LATCHED
    on_packet(side, NAT_IP, 61020, 120.5, RTPPROXY)     # may update again, then locks
    assert side.peer == (NAT_IP, 61020) and side.state == SideState.LOCKED
