"""Micro-benchmark of the SIP message core: ``python -m loadtest.sip_bench [-n N]``.

Prints microseconds per message for a typical REGISTER and an INVITE with SDP:
the boundary scan alone, the scan plus the five headers a proxy always reads, the scan
plus every parsed view, and the builders (local reply, forwarded request and reply).
No sockets; the figures are for one CPU core of this machine.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import timeit
from collections.abc import Callable

from natserver.errors import SipError
from natserver.sip.build import build_forward_reply, build_forward_request, build_reply
from natserver.sip.edits import Edits
from natserver.sip.headers import Hdr
from natserver.sip.message import Message

REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.168.1.10:5062;rport;branch=z9hG4bK-524287-1---c9ab8ed4b2dd1d37\r\n"
    b"Max-Forwards: 70\r\n"
    b"Contact: <sip:alice@192.168.1.10:5062;rinstance=8d3e0a8b2d4c1f61;transport=UDP>\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"From: <sip:alice@example.com>;tag=6d1f4a2b\r\n"
    b"Call-ID: NjQ4ZDY5ZWQ1YjA3MWE0ZDE4Y2I2Njg2YzQ4MzA1ZjU\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b"Expires: 3600\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE\r\n"
    b"Supported: replaces, norefersub, extended-refer, timer, outbound, path, X-cisco-serviceuri\r\n"
    b"User-Agent: Zoiper rv2.10.19.4\r\n"
    b'Authorization: Digest username="alice",realm="example.com",nonce="65f1a2b300000001'
    b'c6a1d5e2f3b4a5968778695a4b3c2d1e",uri="sip:example.com",response="0f4e3a2b1c0d9e8f7a6b'
    b'5c4d3e2f1a0b",algorithm=MD5,cnonce="9a8b7c6d",qop=auth,nc=00000001\r\n'
    b"Allow-Events: presence, kpml, talk\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.168.1.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.168.1.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=sendrecv\r\n"
)

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.168.1.10:5062;rport;branch=z9hG4bK-524287-1---77ba2b5e1a2c9d04\r\n"
    b"Max-Forwards: 70\r\n"
    b"Contact: <sip:alice@192.168.1.10:5062;transport=UDP>\r\n"
    b'To: "Bob" <sip:bob@example.com>\r\n'
    b'From: "Alice" <sip:alice@example.com>;tag=8a2b6c1d\r\n'
    b"Call-ID: ZDU3OWE4ZjI5NTM4YzQ1OWZlYmFjMDQ1ZGI0ODY2NmE\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Supported: replaces, norefersub, extended-refer, timer, outbound, path, X-cisco-serviceuri\r\n"
    b"User-Agent: Zoiper rv2.10.19.4\r\n"
    b"Allow-Events: presence, kpml, talk\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)

REPLY = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK1a2b3c4d5e.0\r\n"
    b"Via: SIP/2.0/UDP 192.168.1.10:5062;rport=40312;received=203.0.113.7;"
    b"branch=z9hG4bK-524287-1---77ba2b5e1a2c9d04\r\n"
    b"Record-Route: <sip:198.51.100.1;ftag=8a2b6c1d;lr=on>\r\n"
    b"Contact: <sip:bob@10.0.0.7:5060>\r\n"
    b'To: "Bob" <sip:bob@example.com>;tag=as5f2c1b7e\r\n'
    b'From: "Alice" <sip:alice@example.com>;tag=8a2b6c1d\r\n'
    b"Call-ID: ZDU3OWE4ZjI5NTM4YzQ1OWZlYmFjMDQ1ZGI0ODY2NmE\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Server: Asterisk PBX 18.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)

SRC = ("203.0.113.7", 40312)
VIA = b"SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK1a2b3c4d5e.0"


def touch5(buf: bytes) -> None:
    m = Message.parse(buf)
    m.via1, m.call_id, m.cseq, m.from_.tag, m.to.tag


def touch_all(buf: bytes) -> None:
    m = Message.parse(buf)
    m.vias, m.from_, m.to, m.call_id, m.cseq, m.contacts, m.routes, m.record_routes
    m.max_forwards, m.expires, m.content_type, m.body, m.hdrs
    m.tokens(Hdr.SUPPORTED), m.tokens(Hdr.ALLOW), m.authorizations(Hdr.AUTHORIZATION)
    for f in m.hdrs:
        f.value


def _per_call(fn: Callable[[], object], n: int) -> float:
    """Best of 5 runs, CPU microseconds per call (CPU time, so other load on the
    machine inflates the figures less than wall time would)."""
    return min(timeit.repeat(fn, number=n, repeat=5, timer=time.process_time)) / n * 1e6


def run(n: int) -> list[tuple[str, float]]:
    inv = Message.parse(INVITE)
    reg = Message.parse(REGISTER)
    rep = Message.parse(REPLY)
    inv.vias  # noqa: B018 - the builders read it; time them on a parsed message
    edits = Edits()
    edits.insert(inv.first_line_end, b"Record-Route: <sip:198.51.100.1;ftag=8a2b6c1d;lr=on>\r\n")
    f = inv.get(Hdr.MAX_FORWARDS)
    assert f is not None
    edits.replace(f.vstart, f.vend, b"69")
    cases: list[tuple[str, Callable[[], object]]] = [
        ("REGISTER parse (boundary scan)", lambda: Message.parse(REGISTER)),
        ("REGISTER parse + 5 headers", lambda: touch5(REGISTER)),
        ("REGISTER parse + all views", lambda: touch_all(REGISTER)),
        ("INVITE+SDP parse (boundary scan)", lambda: Message.parse(INVITE)),
        ("INVITE+SDP parse + 5 headers", lambda: touch5(INVITE)),
        ("INVITE+SDP parse + all views", lambda: touch_all(INVITE)),
        ("200 reply parse + 5 headers", lambda: touch5(REPLY)),
        ("build_reply 200 to REGISTER (parsed)", lambda: build_reply(
            reg, 200, "OK", src=SRC, to_tag=b"a6c85cf.1d2e", server=b"natserver")),
        ("build_forward_request INVITE, 2 edits", lambda: build_forward_request(
            inv, edits, via=VIA, ruri=b"sip:bob@10.0.0.7:5060", src=SRC)),
        ("build_forward_reply 200+SDP", lambda: build_forward_reply(rep)),
        ("parse + build_reply 401 (REGISTER)", lambda: build_reply(
            Message.parse(REGISTER), 401, "Unauthorized", src=SRC, to_tag=b"a6c85cf.1d2e")),
    ]
    out = [(name, _per_call(fn, n)) for name, fn in cases]
    # Hostile 60 kB datagrams: every step must stay linear (two regexes once were not).
    colonless = INVITE.replace(b"User-Agent: Zoiper rv2.10.19.4", b"x" * 60000)
    blanks = INVITE.replace(b"Zoiper rv2.10.19.4", b"a" + b" " * 60000 + b"x\r\n b")
    worst: list[tuple[str, Callable[[], object]]] = [
        ("60 kB header line without a colon (400)", lambda: _refused(colonless)),
        ("60 kB folded value, parse + unfold", lambda: Message.parse(blanks, 70000).find(
            b"User-Agent").value),  # type: ignore[union-attr]
    ]
    out += [(name, _per_call(fn, max(n // 100, 10))) for name, fn in worst]
    return out


def _refused(data: bytes) -> None:
    try:
        Message.parse(data, 70000)
    except SipError:
        return
    raise AssertionError("a datagram with a colon-less line was accepted")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000, help="calls per timing run (5 runs)")
    args = ap.parse_args(argv)
    ref = _per_call(lambda: sum(range(100)), args.n)
    print(f"python {platform.python_version()} on {platform.machine()}; "
          f"REGISTER {len(REGISTER)} B, INVITE {len(INVITE)} B; CPU us per call, best of 5")
    print(f"  {'(machine speed: sum(range(100)))':42s} {ref:7.2f} us")
    for name, us in run(args.n):
        print(f"  {name:42s} {us:7.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
