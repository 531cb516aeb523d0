"""rtpproxy control protocol: parse/format round trips, modifiers, replies, reply cache."""

import pytest

from natserver.rtp import protocol as P
from natserver.rtp.protocol import Command, ECode, Op, ProtocolError

ROUND_TRIPS = [
    b"V\n",
    b"VF 20050322\n",
    b"U c1 198.51.100.7 8000 tagA\n",
    b"U c1 198.51.100.7 8000 tagA;1 tagB;1\n",
    b"UAW6 c1 2001:db8::7 8000 tagA\n",
    b"UZ20C0,8,101 c1 198.51.100.7 8000 tagA\n",
    b"UL192.0.2.1 c1 198.51.100.7 8000 tagA tagB\n",
    b"U c1 198.51.100.7 8000 tagA tagB /var/run/notify.sock ntag\n",
    b"U c1 198.51.100.7 8000 tagA /var/run/notify.sock ntag\n",
    b"L c1 203.0.113.9 9000 tagA tagB\n",
    b"Lie c1 203.0.113.9 9000 tagA;2 tagB;2\n",
    b"D c1 tagA\n",
    b"Dw c1 tagA tagB\n",
    b"Q c1 tagA tagB\n",
    b"Qv c1 tagA tagB ttl npkts_ina\n",
    b"I\n",
    b"Ib\n",
    b"X\n",
    b"G\n",
    b"Gv nsess_created npkts_rcvd\n",
    b"P c1 prompt 0,8 tagA tagB\n",
    b"S c1 tagA tagB\n",
    b"R c1 tagA\n",
    b"C c1 target tagA tagB\n",
    b"N c1 tagA tagB\n",
]


@pytest.mark.parametrize("wire", ROUND_TRIPS)
def test_parse_format_round_trip(wire):
    cmd = P.parse_command(wire)
    assert P.format_command(cmd) == wire
    with_cookie = P.parse_command(b"123_4 " + wire, cookie=True)
    assert with_cookie.cookie == b"123_4"
    assert P.format_command(with_cookie) == b"123_4 " + wire


def test_every_command_letter_has_a_syntax_row_and_a_round_trip():
    seen = {P.parse_command(w).op for w in ROUND_TRIPS}
    assert seen == set(Op) == set(P.SYNTAX)


def test_update_fields():
    cmd = P.parse_command(b"UA c1 198.51.100.7 8000 tagA;1 tagB;1\n")
    assert cmd == Command(Op.UPDATE, "A", b"c1", b"198.51.100.7", b"8000", b"tagA;1", b"tagB;1")
    assert cmd.modifiers.asymmetric is True


def test_separators_are_sp_tab_cr_lf():
    cmd = P.parse_command(b"L\tc1  203.0.113.9\r\n9000 tagA\ttagB\r\n")
    assert (cmd.op, cmd.callid, cmd.port, cmd.to_tag) == (Op.LOOKUP, b"c1", b"9000", b"tagB")


def test_notify_arguments_without_to_tag():
    cmd = P.parse_command(b"U c1 1.2.3.4 8000 tagA /tmp/n.sock ntag")
    assert cmd.to_tag == b"" and cmd.notify_sock == b"/tmp/n.sock" and cmd.notify_tag == b"ntag"


def test_modifiers():
    m = P.parse_modifiers("aSw6ieZ30C0,8L192.0.2.1R[2001:db8::1]Nq")
    assert m.asymmetric is False and m.weak and m.ipv6 and m.bridge == "IE"
    assert m.ptime == 30 and m.codecs == b"0,8" and m.local == b"192.0.2.1"
    assert m.remote == b"2001:db8::1" and m.new_port and m.unknown == "q"
    assert P.parse_modifiers("L{ext}").local == b"ext"
    assert P.parse_modifiers("").asymmetric is None


@pytest.mark.parametrize("mods,code", [
    ("Z", ECode.BAD_PTIME), ("Z1000", ECode.BAD_PTIME), ("C", ECode.BAD_CODECS),
    ("L", ECode.BAD_LOCAL_ADDR), ("R{x", ECode.BAD_REMOTE_ADDR),
])
def test_bad_modifier_values(mods, code):
    with pytest.raises(ProtocolError) as e:
        P.parse_command(b"U%s c1 1.2.3.4 8000 tagA" % mods.encode())
    assert e.value.code == code


@pytest.mark.parametrize("wire,code", [
    (b"", ECode.UNKNOWN_COMMAND),
    (b"   \r\n", ECode.UNKNOWN_COMMAND),
    (b"Y c1", ECode.UNKNOWN_COMMAND),
    (b"U c1 1.2.3.4", ECode.ARG_COUNT),
    (b"L c1 1.2.3.4 9000 a b c", ECode.ARG_COUNT),
    (b"V 1", ECode.ARG_COUNT),
    (b"VF", ECode.ARG_COUNT),
    (b"D c1", ECode.ARG_COUNT),
    (b"Dx c1 tagA", ECode.MODIFIERS),
    (b"Xv", ECode.MODIFIERS),
    (b"U c1 1.2.3.4 port tagA", ECode.BAD_PORT),
    (b"U c1 1.2.3.4 70000 tagA", ECode.BAD_PORT),
    (b"U c1 1.2.3.4 8000 tagA;x;0", ECode.BAD_TAG),
    (b"U c1 1.2.3.4 8000 ;1", ECode.BAD_TAG),
    (b"VF 2005x", ECode.BAD_VERSION),
])
def test_parse_errors_carry_their_code(wire, code):
    with pytest.raises(ProtocolError) as e:
        P.parse_command(wire)
    assert e.value.code == code


@pytest.mark.parametrize("code", list(ECode))
def test_error_replies_round_trip(code):
    text = P.error_reply(code)
    assert text == b"E%d" % code.value
    reply = P.parse_reply(P.format_reply(text, b"ck"), cookie=True)
    assert reply.cookie == b"ck" and reply.is_error and reply.code == code.value
    assert reply.port == 0


def test_port_replies():
    assert P.port_reply(35000) == b"35000"
    assert P.port_reply(35000, "192.0.2.13") == b"35000 192.0.2.13"
    assert P.port_reply(35000, "2001:db8::13", True) == b"35000 2001:db8::13 6"
    r = P.parse_reply(b"ck 35002 2001:db8::13 6\n", cookie=True)
    assert (r.port, r.ip, r.ipv6, r.is_error, r.code) == (35002, b"2001:db8::13", True, False,
                                                          None)
    r = P.parse_reply(b"35002\n")
    assert (r.port, r.ip, r.ipv6) == (35002, b"", False)
    assert P.parse_reply(b"0\n").port == 0
    assert P.parse_reply(b"99999\n").port == 0


def test_split_cookie():
    assert P.split_cookie(b"  abc_1 U c1") == (b"abc_1", b"U c1")
    assert P.split_cookie(b"lonely") == (b"lonely", b"")


def test_reply_cache_by_peer_and_cookie_expires():
    cache = P.ReplyCache(ttl=30.0)
    cache.put(("10.0.0.1", 5000), b"ck1", b"ck1 35000\n", now=100.0)
    assert cache.get(("10.0.0.1", 5000), b"ck1", now=110.0) == b"ck1 35000\n"
    assert cache.get(("10.0.0.2", 5000), b"ck1", now=110.0) is None   # other peer
    assert cache.get(("10.0.0.1", 5000), b"ck2", now=110.0) is None   # other cookie
    assert cache.get(("10.0.0.1", 5000), b"ck1", now=130.5) is None   # expired
    assert len(cache) == 0 and cache.hits == 1


def test_reply_cache_is_bounded():
    cache = P.ReplyCache(ttl=30.0, max_entries=3)
    for i in range(5):
        cache.put("peer", b"%d" % i, b"r", now=float(i))
    assert len(cache) == 3
    assert cache.get("peer", b"0", now=5.0) is None
    assert cache.get("peer", b"4", now=5.0) == b"r"
