"""nathelper's force_rtp_proxy / unforce_rtp_proxy against real relays on real sockets.

The relay is tests/helpers/rtprelay.py's ThreadRelay: natserver.rtp's control executor
and forwarding engine behind a ``udp:`` (cookies) or ``unix:`` (stream) control socket
in a thread. The script runs in-process (NatHarness); what goes out is built with the
real forwarding builders, so Content-Length is checked as the wire would carry it.
RTP-sized packets (12-byte header + 160 bytes) then go both ways through the relay
between two UDP endpoints on 127.0.0.1, using the addresses each side's SDP received.
"""

from __future__ import annotations

import itertools
import logging
import socket
import struct
import time

import pytest

from natserver.modules import RouteType
from natserver.sip import sdp as sdpmod
from natserver.sip.build import build_forward_reply, build_forward_request
from natserver.sip.message import Message
from tests.helpers.rtprelay import ThreadRelay
from tests.modules.test_nathelper import HEAD, LOCAL, NatHarness

VIA = b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-out"
_ids = itertools.count(1)

CFG = """
modparam("nathelper", "rtpproxy_sock", "%(sock)s")
modparam("nathelper", "rtpproxy_tout", 1)
modparam("nathelper", "rtpproxy_retr", %(retr)d)
route {
  if (method=="BYE") { if (unforce_rtp_proxy()) { setflag(2); }; break; };
  if (search("^X-Flags: l")) {
    if (force_rtp_proxy("l")) { setflag(1); };
    break;
  };
  if (search("^X-Flags: f")) {
    if (force_rtp_proxy("f")) { setflag(1); };
    break;
  };
  if (search("^X-Flags: ro")) {
    if (force_rtp_proxy("ro", "192.0.2.99")) { setflag(1); };
    break;
  };
  if (force_rtp_proxy()) { setflag(1); };
}
onreply_route[1] {
  if (force_rtp_proxy()) { setflag(1); };
}
"""


def sdp(port: int, ip: str = "127.0.0.1", *, family: str = "IP4", extra: str = "",
        media: str = "") -> bytes:
    text = (f"v=0\r\no=- 1 1 IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n")
    return (text + extra + media).encode()


def message(*, body: bytes = b"", method: str = "INVITE", reply: int = 0,
            callid: str = "c1", ftag: str = "tagA", ttag: str = "",
            extra: tuple[str, ...] = (), ctype: str = "application/sdp") -> bytes:
    first = f"SIP/2.0 {reply} OK" if reply else f"{method} sip:bob@127.0.0.1 SIP/2.0"
    lines = [first, "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-a1;rport"]
    if reply:
        lines.insert(1, "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-out")
    lines += ["Max-Forwards: 70", f"From: <sip:alice@127.0.0.1>;tag={ftag}",
              "To: <sip:bob@127.0.0.1>" + (f";tag={ttag}" if ttag else ""),
              f"Call-ID: {callid}", "CSeq: 1 INVITE", "Contact: <sip:a@127.0.0.1:5062>",
              *extra]
    if body:
        lines.append(f"Content-Type: {ctype}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def rtp(seq: int, tag: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234) + (tag + bytes(160))[:160]


def endpoint() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(1.0)
    return s


class Rig:
    """A harness whose nathelper talks to ``sock``; runs messages, returns the copies."""

    def __init__(self, tmp_path, sock: str, retr: int = 1) -> None:
        self.h = NatHarness(HEAD + CFG % {"sock": sock, "retr": retr}, tmp_path)

    def request(self, data: bytes, src=("127.0.0.1", 5062)):
        m = self.h.msgctx(data, src)
        self.h.script.run_request(m)
        return m, build_forward_request(m.msg, m.edits, via=VIA, src=m.src)

    def reply(self, data: bytes, src=("127.0.0.1", 5064)):
        m = self.h.msgctx(data, src, RouteType.ONREPLY)
        self.h.script.run_onreply(1, m)
        return m, build_forward_reply(m.msg, m.edits)

    def close(self):
        nh = self.h.module("nathelper")
        if nh.client is not None:
            nh.client.close()
        self.h.close()


@pytest.fixture
def relay(tmp_path):
    made = []

    def make(kind="udp", **kw):
        r = ThreadRelay(kind, str(tmp_path / f"rtp{len(made)}.sock"), **kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


@pytest.fixture
def rig(tmp_path):
    made = []

    def make(sock: str, **kw):
        r = Rig(tmp_path, sock, **kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def body_of(data: bytes) -> tuple[Message, sdpmod.Sdp]:
    msg = Message.parse(data)
    assert msg.content_length == len(msg.body)     # Content-Length fits the new body
    return msg, sdpmod.parse(msg.body)


@pytest.mark.parametrize("kind", ["udp", "unix"])
def test_offer_answer_relays_rtp_both_ways(relay, rig, kind):
    r = relay(kind)
    g = rig(r.url)
    a, b = endpoint(), endpoint()
    pa, pb = a.getsockname()[1], b.getsockname()[1]
    m, out = g.request(message(body=sdp(pa, "192.168.1.10")))
    assert m.flags & 2, "force_rtp_proxy() on the offer returned false"
    # U with the SIP source IP (not the private SDP address) and the SDP port
    assert r.sent(b"U") == [b"U c1 127.0.0.1 %d tagA;1" % pa]
    _, offer = body_of(out)
    assert offer.session_conn.addr == b"127.0.0.1"          # the relay's advertised IP
    assert offer.nortpproxy
    relay_for_b = offer.media[0].port
    assert relay_for_b != pa

    m, out = g.reply(message(reply=200, body=sdp(pb, "10.0.0.5"), ttag="tagB"))
    assert m.flags & 2
    assert r.sent(b"L") == [b"L c1 127.0.0.1 %d tagA;1 tagB;1" % pb]
    _, answer = body_of(out)
    relay_for_a = answer.media[0].port
    assert answer.session_conn.addr == b"127.0.0.1" and answer.nortpproxy

    for i in range(5):
        a.sendto(rtp(i, b"from-a"), ("127.0.0.1", relay_for_a))
        b.sendto(rtp(i, b"from-b"), ("127.0.0.1", relay_for_b))
    got_b = [b.recv(2048) for _ in range(5)]
    got_a = [a.recv(2048) for _ in range(5)]
    assert all(len(p) == 172 and p[12:18] == b"from-a" for p in got_b)
    assert all(len(p) == 172 and p[12:18] == b"from-b" for p in got_a)
    # each side hears the relay from the port it sends to (symmetric RTP)
    a.sendto(rtp(9, b"from-a"), ("127.0.0.1", relay_for_a))
    _, src = b.recvfrom(2048)
    assert src == ("127.0.0.1", relay_for_b)

    m, _ = g.request(message(method="BYE", ttag="tagB"))
    assert m.flags & 4 and r.sent(b"D") == [b"D c1 tagA tagB"]
    deadline = time.monotonic() + 2
    while r.sessions() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.sessions() == []
    a.close()
    b.close()


def test_marker_makes_it_a_no_op_unless_forced(relay, rig):
    r = relay()
    g = rig(r.url)
    marked = sdp(8000, extra="a=nortpproxy:yes\r\n")
    m, out = g.request(message(body=marked))
    assert not m.flags & 2 and r.sent(b"U") == []
    assert Message.parse(out).body == marked
    m, out = g.request(message(body=marked, extra=("X-Flags: f",)))
    assert m.flags & 2 and len(r.sent(b"U")) == 1
    assert Message.parse(out).body.count(b"a=nortpproxy:yes") == 1


def test_several_streams_numbered_with_rtcp_and_media_connections(relay, rig):
    r = relay()
    g = rig(r.url)
    body = (b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
            b"m=audio 8000 RTP/AVP 0\r\na=rtcp:8001 IN IP4 10.0.0.1\r\n"
            b"m=video 9000 RTP/AVP 96\r\nc=IN IP4 10.0.0.2\r\na=sendonly\r\n"
            b"m=text 0 RTP/AVP 98\r\n")
    m, out = g.request(message(body=body))
    assert m.flags & 2
    assert r.sent(b"U") == [b"U c1 127.0.0.1 8000 tagA;1", b"U c1 127.0.0.1 9000 tagA;2"]
    msg, s = body_of(out)
    audio, video, text = s.media
    assert audio.port != 8000 and video.port != 9000 and audio.port != video.port
    assert audio.rtcp.port == audio.port + 1 and audio.rtcp.address.addr == b"127.0.0.1"
    assert video.conn.addr == b"127.0.0.1" and s.session_conn.addr == b"127.0.0.1"
    assert text.port == 0                                  # port-0 streams stay as they are
    assert s.origin.addr == b"10.0.0.1"                    # o= only with the o flag
    assert len(r.sessions()) == 2


def test_hold_keeps_null_address_trust_flag_and_origin(relay, rig):
    r = relay()
    g = rig(r.url)
    hold = sdp(8000, "0.0.0.0", extra="a=sendonly\r\n")
    m, out = g.request(message(body=hold, extra=("X-Flags: ro",)))
    assert m.flags & 2
    # r: the SDP address is sent (0.0.0.0 pre-fills nothing at the relay)
    assert r.sent(b"U") == [b"U c1 0.0.0.0 8000 tagA;1"]
    _, s = body_of(out)
    assert s.session_conn.addr == b"0.0.0.0"               # hold stays hold
    assert s.media[0].port != 8000 and s.direction is None
    assert s.stream_direction(s.media[0]) == b"sendonly"
    assert s.origin.is_null or s.origin.addr == b"0.0.0.0"


def test_ipv6_sdp_and_source_switch_family(relay, rig):
    r = relay()
    g = rig(r.url)
    m, out = g.request(message(body=sdp(8000, "2001:db8::1", family="IP6")),
                       src=("2001:db8::7", 5062))
    assert m.flags & 2
    assert r.sent(b"U") == [b"U6 c1 2001:db8::7 8000 tagA;1"]
    _, s = body_of(out)
    # the relay advertises an IPv4 address: the c= family follows it
    assert s.session_conn.addrtype == b"IP4" and s.session_conn.addr == b"127.0.0.1"


def test_reply_ip_missing_uses_second_argument_then_local_ip(relay, rig):
    r = relay(advertise="")          # like rtpproxy without -l: the reply is a bare port
    g = rig(r.url)
    _, out = g.request(message(body=sdp(8000), extra=("X-Flags: ro",)))
    assert body_of(out)[1].session_conn.addr == b"192.0.2.99"
    assert body_of(out)[1].origin.addr == b"192.0.2.99"    # o flag
    _, out = g.request(message(body=sdp(8000), callid="c2"))
    assert body_of(out)[1].session_conn.addr == LOCAL[0].encode()


def test_reinvite_with_l_keeps_ports_and_never_creates(relay, rig):
    r = relay()
    g = rig(r.url)
    _, out = g.request(message(body=sdp(8000)))
    port_for_b = body_of(out)[1].media[0].port
    _, out = g.reply(message(reply=200, body=sdp(9000), ttag="tagB"))
    port_for_a = body_of(out)[1].media[0].port
    # re-INVITE from the caller with a new media port: L with the tags swapped
    m, out = g.request(message(body=sdp(8100), ttag="tagB", extra=("X-Flags: l",)))
    assert m.flags & 2
    assert r.sent(b"L")[-1] == b"L c1 127.0.0.1 8100 tagB;1 tagA;1"
    assert body_of(out)[1].media[0].port == port_for_b
    # its answer from the callee: the caller keeps its relay port
    m, out = g.reply(message(reply=200, body=sdp(9100), ttag="tagB"))
    assert body_of(out)[1].media[0].port == port_for_a
    # re-INVITE from the callee (From/To swapped)
    m, out = g.request(message(body=sdp(9200), ftag="tagB", ttag="tagA",
                               extra=("X-Flags: l",)))
    assert m.flags & 2 and body_of(out)[1].media[0].port == port_for_a
    assert len(r.sessions()) == 1
    # "l" on a call the relay does not know: false, nothing created, body unchanged
    body = sdp(8000)
    m, out = g.request(message(body=body, callid="other", ttag="x", extra=("X-Flags: l",)))
    assert not m.flags & 2 and Message.parse(out).body == body
    assert len(r.sessions()) == 1


def test_answer_for_unknown_session_is_false_and_unchanged(relay, rig):
    r = relay()
    g = rig(r.url)
    body = sdp(9000)
    m, out = g.reply(message(reply=200, body=body, ttag="tagB", callid="nobody"))
    assert not m.flags & 2 and Message.parse(out).body == body
    assert r.sent(b"L") == [b"L nobody 127.0.0.1 9000 tagA;1 tagB;1"]


@pytest.mark.parametrize("body,ctype", [
    (b"v=0\r\nthis is not sdp\r\n", "application/sdp"),
    (b"v=0\r\nc=IN IP4\r\nm=audio 8000 RTP/AVP 0\r\n", "application/sdp"),
    (b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 99999 RTP/AVP 0\r\n", "application/sdp"),
    (b"o=x\r\n", "application/sdp"),
])
def test_malformed_sdp_is_false_with_a_log_line(relay, rig, caplog, body, ctype):
    r = relay()
    g = rig(r.url)
    with caplog.at_level(logging.WARNING, logger="natserver.nathelper"):
        m, out = g.request(message(body=body, ctype=ctype))
    assert not m.flags & 2
    assert Message.parse(out).body == body
    assert r.sent(b"U") == []
    assert any("malformed SDP" in rec.getMessage() for rec in caplog.records)


def test_no_sdp_other_content_and_other_methods_are_false(relay, rig):
    r = relay()
    g = rig(r.url)
    assert not g.request(message())[0].flags & 2
    assert not g.request(message(body=b"hello", ctype="text/plain"))[0].flags & 2
    assert not g.request(message(body=sdp(8000), method="MESSAGE"))[0].flags & 2
    assert r.sent(b"U") == []


def test_dead_relay_is_skipped_logged_once_and_retried(relay, rig, tmp_path, caplog):
    live = relay()
    dead_path = tmp_path / "dead.sock"
    g = rig(f"unix:{dead_path} {live.url}")
    nh = g.h.module("nathelper")
    with caplog.at_level(logging.ERROR):
        for i in range(8):
            m, _ = g.request(message(body=sdp(8000), callid=f"call-{i}"))
            assert m.flags & 2
    assert len(live.sent(b"U")) == 8
    assert live.sent(b"V") == [b"V", b"VF 20050322"]     # checked at first use, once
    dead, _ = nh.client.relays.relays
    assert dead.failures == 1 and dead.disabled_until > g.h.mono
    # after rtpproxy_disable_tout (60 s) the relay is tried again, and it is back
    back = ThreadRelay("unix", str(dead_path))
    try:
        g.h.mono += 61
        for i in range(8):
            assert g.request(message(body=sdp(8000), callid=f"again-{i}"))[0].flags & 2
        assert back.sent(b"V") == [b"V", b"VF 20050322"]
        assert len(back.sent(b"U")) + len(live.sent(b"U")) == 16
        assert back.sent(b"U"), "the hash sent no call to the returned relay"
    finally:
        back.close()


def test_all_relays_down_false_and_logged_once_per_burst(rig, tmp_path, caplog):
    g = rig(f"unix:{tmp_path / 'none.sock'}")
    with caplog.at_level(logging.ERROR, logger="natserver.nathelper"):
        for i in range(5):
            m, out = g.request(message(body=sdp(8000), callid=f"d{i}"))
            assert not m.flags & 2
            assert Message.parse(out).body == sdp(8000)
        g.h.mono += 61     # a new burst: one more line, counting the swallowed ones
        g.request(message(body=sdp(8000), callid="later"))
    lines = [r.getMessage() for r in caplog.records if r.name == "natserver.nathelper"]
    assert len(lines) == 2, lines
    assert "4 similar" in lines[1]


def test_udp_relay_down_times_out_and_is_false(rig):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))               # a port nobody answers on
    g = rig("udp:127.0.0.1:%d" % s.getsockname()[1], retr=0)
    t0 = time.monotonic()
    m, _ = g.request(message(body=sdp(8000)))
    assert not m.flags & 2
    assert time.monotonic() - t0 < 5      # rtpproxy_tout 1 s, no retries
    s.close()


def test_full_relay_is_false(relay, rig, caplog):
    r = relay(pairs=2)                     # one session's two ports
    g = rig(r.url)
    assert g.request(message(body=sdp(8000)))[0].flags & 2
    with caplog.at_level(logging.ERROR, logger="natserver.nathelper"):
        m, out = g.request(message(body=sdp(8000), callid="c2"))
    assert not m.flags & 2 and Message.parse(out).body == sdp(8000)
    assert any("refused U: E71" in rec.getMessage() for rec in caplog.records)


def test_foreign_version_is_refused(relay, rig):
    r = relay(version=b"20000101")
    g = rig(r.url)
    assert not g.request(message(body=sdp(8000)))[0].flags & 2
    assert r.sent(b"U") == []


def test_single_stream_relay_gets_first_stream_only(relay, rig):
    r = relay()
    g = rig(r.url)
    nh = g.h.module("nathelper")
    g.request(message(body=sdp(8000), callid="warm"))           # V/VF done
    nh.client.relays.relays[0].multistream = False               # an old rtpproxy
    body = sdp(8000, media="m=video 9000 RTP/AVP 96\r\n")
    m, out = g.request(message(body=body))
    assert m.flags & 2 and r.sent(b"U")[-1] == b"U c1 127.0.0.1 8000 tagA"
    s = body_of(out)[1]
    assert s.media[0].port != 8000 and s.media[1].port == 9000


def test_unforce_without_from_tag_is_false_and_missing_relay_still_true(rig, tmp_path):
    g = rig(f"unix:{tmp_path / 'none.sock'}")
    m, _ = g.request(message(method="BYE", ttag="tagB"))
    assert m.flags & 4            # 1 whatever the relay says (SER)
    m, _ = g.request(message(method="BYE", ftag="", ttag="tagB").replace(b";tag=\r\n", b"\r\n"))
    assert not m.flags & 4


def test_client_is_per_process(relay, rig):
    r = relay()
    g = rig(r.url)
    nh = g.h.module("nathelper")
    g.request(message(body=sdp(8000)))
    first = nh.client
    nh.child_init(g.h.ctx)                 # as after a fork
    assert nh.client is None
    g.request(message(body=sdp(8000), callid="c2"))
    assert nh.client is not None and nh.client is not first
    assert r.sent(b"V") == [b"V", b"VF 20050322"] * 2    # the new process checks again


def test_null_reply_address_is_not_advertised(relay, rig):
    r = relay(advertise="0.0.0.0")       # rtpengine answers so for some streams
    g = rig(r.url)
    m, out = g.request(message(body=sdp(8000)))
    assert m.flags & 2
    assert body_of(out)[1].session_conn.addr == LOCAL[0].encode()


@pytest.mark.parametrize("relays", [1, 0])
def test_empty_rtpproxy_sock_means_the_builtin_relays_socket(relay, tmp_path, relays):
    r = relay()
    head = HEAD.replace("children=1", f'children=1\nrtp_relays={relays}\n'
                                      f'rtp_control_sock="{r.url}"')
    h = NatHarness(head + CFG % {"sock": "", "retr": 1}, tmp_path)
    try:
        m = h.msgctx(message(body=sdp(8000)), ("127.0.0.1", 5062))
        h.script.run_request(m)
        assert bool(m.flags & 2) == bool(relays)
        assert len(r.sent(b"U")) == relays
    finally:
        nh = h.module("nathelper")
        if nh.client is not None:
            nh.client.close()
        h.close()
