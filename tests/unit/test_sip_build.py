"""natserver.sip.build: local replies, forwarded requests/replies, CANCEL and ACK, byte for byte."""

from __future__ import annotations

import pytest

from natserver.errors import SipError
from natserver.sip.build import (
    build_ack, build_cancel, build_forward_reply, build_forward_request, build_reply,
    next_via_address, reply_address,
)
from natserver.sip.edits import Edits
from natserver.sip.headers import Hdr
from natserver.sip.message import Message
from tests.unit.sip_torture import crlf

NAT = ("203.0.113.7", 40312)

REGISTER = crlf(
    "REGISTER sip:example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP 192.168.1.10:5062;branch=z9hG4bKreg;rport\n"
    "Max-Forwards: 70\n"
    "From: <sip:alice@example.com>;tag=456248\n"
    "To: <sip:alice@example.com>\n"
    "Call-ID: 843817637684230@998sdasdh09\n"
    "CSeq: 1826 REGISTER\n"
    "Contact: <sip:alice@192.168.1.10:5062>\n"
    "Expires: 7200\n"
    "Content-Length: 0\n"
    "\n")


def reg(via: str = "SIP/2.0/UDP 192.168.1.10:5062;branch=z9hG4bKreg;rport") -> Message:
    return Message.parse(REGISTER.replace(
        b"SIP/2.0/UDP 192.168.1.10:5062;branch=z9hG4bKreg;rport", via.encode()))


# ---- local replies --------------------------------------------------------------------------
def test_reply_to_a_natted_register_exact_bytes() -> None:
    out = build_reply(reg(), 200, "OK", src=NAT, to_tag=b"sl.1a2b", server=b"natserver (1.0)",
                      headers=[b"Contact: <sip:alice@192.168.1.10:5062>;expires=3600"])
    assert out == crlf(
        "SIP/2.0 200 OK\n"
        "Via: SIP/2.0/UDP 192.168.1.10:5062;branch=z9hG4bKreg;rport=40312;received=203.0.113.7\n"
        "From: <sip:alice@example.com>;tag=456248\n"
        "To: <sip:alice@example.com>;tag=sl.1a2b\n"
        "Call-ID: 843817637684230@998sdasdh09\n"
        "CSeq: 1826 REGISTER\n"
        "Contact: <sip:alice@192.168.1.10:5062>;expires=3600\n"
        "Server: natserver (1.0)\n"
        "Content-Length: 0\n"
        "\n")
    assert reply_address(reg(), NAT, False) == NAT


def test_reply_via_unchanged_when_host_is_source_and_no_rport() -> None:
    m = reg("SIP/2.0/UDP 203.0.113.7:5070;branch=z9hG4bKa")
    out = build_reply(m, 100, "Trying", src=NAT)
    assert b"\r\nVia: SIP/2.0/UDP 203.0.113.7:5070;branch=z9hG4bKa\r\n" in out
    assert b"To: <sip:alice@example.com>\r\n" in out  # no to_tag given
    assert reply_address(m, NAT, False) == ("203.0.113.7", 5070)


def test_reply_received_only_when_host_differs() -> None:
    m = reg("SIP/2.0/UDP 192.168.1.10;branch=z9hG4bKb")
    out = build_reply(m, 404, "Not Found", src=NAT)
    assert b"Via: SIP/2.0/UDP 192.168.1.10;branch=z9hG4bKb;received=203.0.113.7\r\n" in out
    assert reply_address(m, NAT, False) == ("203.0.113.7", 5060)


def test_reply_force_rport() -> None:
    m = reg("SIP/2.0/UDP 192.168.1.10:5062;branch=z9hG4bKc")
    out = build_reply(m, 404, "Not Found", src=NAT, force_rport=True)
    assert (b"Via: SIP/2.0/UDP 192.168.1.10:5062;branch=z9hG4bKc;received=203.0.113.7"
            b";rport=40312\r\n") in out
    assert reply_address(m, NAT, True) == NAT
    assert reply_address(m, NAT, False) == ("203.0.113.7", 5062)


def test_reply_rport_on_matching_host_still_gets_received() -> None:
    m = reg("SIP/2.0/UDP 203.0.113.7:5062;rport;branch=z9hG4bKd")
    out = build_reply(m, 200, "OK", src=NAT)
    assert (b"Via: SIP/2.0/UDP 203.0.113.7:5062;rport=40312;branch=z9hG4bKd"
            b";received=203.0.113.7\r\n") in out


def test_reply_replaces_existing_received_and_rport_values() -> None:
    m = reg("SIP/2.0/UDP host.example.com;received=10.0.0.1;rport=1;branch=z9hG4bKe")
    out = build_reply(m, 200, "OK", src=NAT)
    assert (b"Via: SIP/2.0/UDP host.example.com;received=203.0.113.7;rport=40312"
            b";branch=z9hG4bKe\r\n") in out


def test_reply_keeps_existing_to_tag_and_copies_rows_in_order() -> None:
    data = crlf(
        "INVITE sip:bob@example.org SIP/2.0\n"
        "Record-Route: <sip:p2.example.org;lr>\n"
        "v: SIP/2.0/UDP p1.example.net;branch=z9hG4bK1, SIP/2.0/UDP 203.0.113.7:40312"
        ";branch=z9hG4bK0\n"
        "To: Bob <sip:bob@example.org>;tag=b1\n"
        "Max-Forwards: 69\n"
        "Record-Route: <sip:p1.example.net;lr>\n"
        "f: <sip:alice@example.com>;tag=a1\n"
        "Contact: <sip:alice@10.0.0.1>\n"
        "i: call-1\n"
        "CSeq: 3 INVITE\n"
        "\n")
    out = build_reply(Message.parse(data), 486, b"Busy Here", src=("198.51.100.9", 5060),
                      to_tag="ignored", headers=["Retry-After: 60\r\n"],
                      body=b"busy", content_type=b"text/plain")
    assert out == crlf(
        "SIP/2.0 486 Busy Here\n"
        "Record-Route: <sip:p2.example.org;lr>\n"
        "v: SIP/2.0/UDP p1.example.net;branch=z9hG4bK1;received=198.51.100.9, "
        "SIP/2.0/UDP 203.0.113.7:40312;branch=z9hG4bK0\n"
        "To: Bob <sip:bob@example.org>;tag=b1\n"
        "Record-Route: <sip:p1.example.net;lr>\n"
        "f: <sip:alice@example.com>;tag=a1\n"
        "i: call-1\n"
        "CSeq: 3 INVITE\n"
        "Retry-After: 60\n"
        "Content-Type: text/plain\n"
        "Content-Length: 4\n"
        "\n") + b"busy"


def test_reply_to_broken_headers_is_still_built() -> None:
    data = REGISTER.replace(b"To: <sip:alice@example.com>", b"To: <sip:alice@example.com") \
                   .replace(b"SIP/2.0/UDP 192.168.1.10:5062;", b"SIP/2.0/UDP ;")
    m = Message.parse(data)
    out = build_reply(m, 400, "Bad To header", src=NAT, to_tag=b"t")
    assert b"\r\nTo: <sip:alice@example.com\r\n" in out          # copied, no tag
    assert b"\r\nVia: SIP/2.0/UDP ;branch=z9hG4bKreg;rport\r\n" in out
    assert reply_address(m, NAT, False) == NAT


def test_reply_to_bare_lf_request_uses_crlf() -> None:
    m = Message.parse(REGISTER.replace(b"\r\n", b"\n"))
    out = build_reply(m, 200, "OK", src=NAT)
    assert b"\n" not in out.replace(b"\r\n", b"")


def test_reply_ipv6_source() -> None:
    m = reg("SIP/2.0/UDP [2001:DB8::5]:5062;branch=z9hG4bKv6")
    out = build_reply(m, 200, "OK", src=("2001:db8::5", 5062))
    assert b"Via: SIP/2.0/UDP [2001:DB8::5]:5062;branch=z9hG4bKv6\r\n" in out
    out = build_reply(m, 200, "OK", src=("2001:db8::9", 6000))
    assert b";branch=z9hG4bKv6;received=2001:db8::9\r\n" in out


# ---- forwarded requests ------------------------------------------------------------------
SDP = b"v=0\r\no=- 1 1 IN IP4 192.168.1.10\r\nc=IN IP4 192.168.1.10\r\nm=audio 4000 RTP/AVP 0\r\n"
INVITE = crlf(
    "INVITE sip:bob@example.org SIP/2.0\n"
    "Via: SIP/2.0/UDP 192.168.1.10:5062;rport;branch=z9hG4bKinv\n"
    "Max-Forwards: 70\n"
    "From: <sip:alice@example.com>;tag=a1\n"
    "To: <sip:bob@example.org>\n"
    "Call-ID: inv-1@192.168.1.10\n"
    "CSeq: 1 INVITE\n"
    "Contact: <sip:alice@192.168.1.10:5062>\n"
    "Route: <sip:p1.example.net;lr>\n"
    "Content-Type: application/sdp\n"
    f"Content-Length: {len(SDP)}\n"
    "\n") + SDP
OUR_VIA = b"SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKours.0"


def test_forward_request_exact_bytes() -> None:
    m = Message.parse(INVITE + b"trailing junk")
    e = Edits()
    mf = m.get(Hdr.MAX_FORWARDS)
    e.replace(mf.vstart, mf.vend, b"69")
    e.insert(m.first_line_end, b"Record-Route: <sip:198.51.100.1;ftag=a1;lr=on>\r\n")
    out = build_forward_request(m, e, via=OUR_VIA, ruri=b"sip:bob@10.0.0.7:5060", src=NAT)
    assert out == crlf(
        "INVITE sip:bob@10.0.0.7:5060 SIP/2.0\n"
        "Via: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKours.0\n"
        "Record-Route: <sip:198.51.100.1;ftag=a1;lr=on>\n"
        "Via: SIP/2.0/UDP 192.168.1.10:5062;rport=40312;branch=z9hG4bKinv;received=203.0.113.7\n"
        "Max-Forwards: 69\n"
        "From: <sip:alice@example.com>;tag=a1\n"
        "To: <sip:bob@example.org>\n"
        "Call-ID: inv-1@192.168.1.10\n"
        "CSeq: 1 INVITE\n"
        "Contact: <sip:alice@192.168.1.10:5062>\n"
        "Route: <sip:p1.example.net;lr>\n"
        "Content-Type: application/sdp\n"
        f"Content-Length: {len(SDP)}\n"
        "\n") + SDP
    assert len(e) == 2  # the caller's edits are left as they were


def test_forward_request_untouched_when_nothing_to_change() -> None:
    data = INVITE.replace(b"192.168.1.10:5062;rport;", b"203.0.113.7:5062;")
    m = Message.parse(data)
    out = build_forward_request(m, None, via=OUR_VIA, ruri=m.ruri, src=NAT)
    first = data.index(b"\r\n") + 2
    assert out == data[:first] + b"Via: " + OUR_VIA + b"\r\n" + data[first:]


def test_forward_request_force_rport_and_body_edit_fix_content_length() -> None:
    data = INVITE.replace(b";rport;", b";")
    m = Message.parse(data)
    e = Edits()
    at = data.index(b"m=audio 4000") + len(b"m=audio ")
    e.replace(at, at + 4, b"35000")
    e.append_body(m, b"a=nortpproxy:yes\r\n")
    out = build_forward_request(m, e, via=OUR_VIA, src=NAT, force_rport=True)
    fwd = Message.parse(out)
    assert fwd.vias[1].rport == "40312" and fwd.vias[1].received == "203.0.113.7"
    assert fwd.content_length == len(SDP) + 1 + len(b"a=nortpproxy:yes\r\n") == len(fwd.body)
    assert fwd.body.endswith(b"m=audio 35000 RTP/AVP 0\r\na=nortpproxy:yes\r\n")
    assert fwd.ruri == m.ruri


def test_forward_request_adds_missing_content_length_and_keeps_compact_name() -> None:
    no_cl = INVITE.replace(f"Content-Length: {len(SDP)}\r\n".encode(), b"")
    out = build_forward_request(Message.parse(no_cl), None, via=OUR_VIA, src=NAT)
    assert out.endswith(f"Content-Length: {len(SDP)}\r\n\r\n".encode() + SDP)
    compact = INVITE.replace(b"Content-Length:", b"l:")
    m = Message.parse(compact)
    e = Edits()
    e.replace_body(m, b"v=0\r\n")
    out = build_forward_request(m, e, via=OUR_VIA, src=NAT)
    assert out.endswith(b"\r\nl: 5\r\n\r\nv=0\r\n")


def test_forward_request_after_content_length_row_was_removed() -> None:
    m = Message.parse(INVITE)
    e = Edits()
    f = m.get(Hdr.CONTENT_LENGTH)
    e.delete(f.start, f.end)
    e.append_body(m, b"a=x\r\n")
    out = build_forward_request(m, e, via=OUR_VIA, src=NAT)
    fwd = Message.parse(out)
    assert len(fwd.get_all(Hdr.CONTENT_LENGTH)) == 1
    assert fwd.content_length == len(SDP) + 5 == len(fwd.body)


def test_forward_request_conflicting_edit_is_refused() -> None:
    m = Message.parse(INVITE)
    e = Edits()
    e.replace(m.ruri_start, m.ruri_end, b"sip:other@example.org")
    with pytest.raises(ValueError):
        build_forward_request(m, e, via=OUR_VIA, ruri=b"sip:bob@10.0.0.7", src=NAT)


# ---- forwarded replies -----------------------------------------------------------------
REPLY = crlf(
    "SIP/2.0 200 OK\n"
    "Via: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKours.0\n"
    "Via: SIP/2.0/UDP 192.168.1.10:5062;rport=40312;branch=z9hG4bKinv;received=203.0.113.7\n"
    "From: <sip:alice@example.com>;tag=a1\n"
    "To: <sip:bob@example.org>;tag=b7\n"
    "Call-ID: inv-1@192.168.1.10\n"
    "CSeq: 1 INVITE\n"
    "Contact: <sip:bob@10.0.0.7>\n"
    "Content-Type: application/sdp\n"
    f"Content-Length: {len(SDP)}\n"
    "\n") + SDP


def test_forward_reply_removes_top_via_row() -> None:
    m = Message.parse(REPLY)
    out = build_forward_reply(m)
    assert out == REPLY.replace(b"Via: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKours.0\r\n", b"")
    assert next_via_address(m) == NAT


def test_forward_reply_removes_only_the_first_value_of_a_row() -> None:
    data = REPLY.replace(b"z9hG4bKours.0\r\nVia: ", b"z9hG4bKours.0 ,  ")
    m = Message.parse(data)
    out = build_forward_reply(m)
    assert b"\r\nVia: SIP/2.0/UDP 192.168.1.10:5062;rport=40312;" in out
    assert b"ours" not in out
    assert next_via_address(m) == NAT


def test_forward_reply_with_sdp_edit() -> None:
    m = Message.parse(REPLY)
    e = Edits()
    at = REPLY.index(b"4000")
    e.replace(at, at + 4, b"40000")
    out = build_forward_reply(m, e)
    fwd = Message.parse(out)
    assert fwd.content_length == len(SDP) + 1 and b"m=audio 40000" in fwd.body
    assert len(fwd.vias) == 1


def test_forward_reply_without_via() -> None:
    m = Message.parse(crlf("SIP/2.0 200 OK\nCall-ID: x\nCSeq: 1 INVITE\n\n"))
    with pytest.raises(SipError):
        build_forward_reply(m)
    with pytest.raises(SipError):
        next_via_address(m)


@pytest.mark.parametrize(("via", "addr"), [
    ("SIP/2.0/UDP 192.168.1.10:5062;rport=40312;received=203.0.113.7", NAT),
    ("SIP/2.0/UDP 192.168.1.10:5062;received=203.0.113.7", ("203.0.113.7", 5062)),
    ("SIP/2.0/UDP 192.168.1.10;received=203.0.113.7", ("203.0.113.7", 5060)),
    ("SIP/2.0/UDP 192.168.1.10:5062", ("192.168.1.10", 5062)),
    ("SIP/2.0/UDP 192.168.1.10:5062;rport", ("192.168.1.10", 5062)),
    ("SIP/2.0/UDP 192.168.1.10:5062;maddr=239.1.1.1;received=1.2.3.4", ("239.1.1.1", 5062)),
    ("SIP/2.0/UDP [2001:db8::1]:5070;rport=7000;received=2001:db8::2", ("2001:db8::2", 7000)),
])
def test_next_via_address(via: str, addr: tuple[str, int]) -> None:
    data = crlf(f"SIP/2.0 180 Ringing\nVia: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKo\n"
                f"Via: {via};branch=z9hG4bKu\nCall-ID: x\nCSeq: 1 INVITE\n\n")
    assert next_via_address(Message.parse(data)) == addr


# ---- CANCEL and ACK -----------------------------------------------------------------------
SENT_INVITE = crlf(
    "INVITE sip:bob@10.0.0.7:5060 SIP/2.0\n"
    "Via: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKours.0\n"
    "Via: SIP/2.0/UDP 192.168.1.10:5062;rport=40312;branch=z9hG4bKinv;received=203.0.113.7\n"
    "Max-Forwards: 69\n"
    "Route: <sip:p2.example.net;lr>\n"
    "From: \"Alice\" <sip:alice@example.com>;tag=a1\n"
    "To: <sip:bob@example.org>\n"
    "Route: <sip:p3.example.net;lr>, <sip:p4.example.net;lr>\n"
    "Call-ID: inv-1@192.168.1.10\n"
    "CSeq: 4711 INVITE\n"
    "Proxy-Require: foo\n"
    "Content-Length: 0\n"
    "\n")


def test_build_cancel_exact_bytes() -> None:
    out = build_cancel(Message.parse(SENT_INVITE))
    assert out == crlf(
        "CANCEL sip:bob@10.0.0.7:5060 SIP/2.0\n"
        "Via: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKours.0\n"
        "Route: <sip:p2.example.net;lr>\n"
        "Route: <sip:p3.example.net;lr>, <sip:p4.example.net;lr>\n"
        "From: \"Alice\" <sip:alice@example.com>;tag=a1\n"
        "To: <sip:bob@example.org>\n"
        "Call-ID: inv-1@192.168.1.10\n"
        "CSeq: 4711 CANCEL\n"
        "Max-Forwards: 70\n"
        "Content-Length: 0\n"
        "\n")


def test_build_ack_exact_bytes() -> None:
    reply = Message.parse(crlf(
        "SIP/2.0 486 Busy Here\n"
        "Via: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKours.0\n"
        "Via: SIP/2.0/UDP 192.168.1.10:5062;rport=40312;branch=z9hG4bKinv\n"
        "From: \"Alice\" <sip:alice@example.com>;tag=a1\n"
        "To: <sip:bob@example.org>;tag=busy-9\n"
        "Call-ID: inv-1@192.168.1.10\n"
        "CSeq: 4711 INVITE\n"
        "Content-Length: 0\n\n"))
    out = build_ack(Message.parse(SENT_INVITE), reply)
    assert out == crlf(
        "ACK sip:bob@10.0.0.7:5060 SIP/2.0\n"
        "Via: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKours.0\n"
        "Route: <sip:p2.example.net;lr>\n"
        "Route: <sip:p3.example.net;lr>, <sip:p4.example.net;lr>\n"
        "From: \"Alice\" <sip:alice@example.com>;tag=a1\n"
        "To: <sip:bob@example.org>;tag=busy-9\n"
        "Call-ID: inv-1@192.168.1.10\n"
        "CSeq: 4711 ACK\n"
        "Max-Forwards: 70\n"
        "Content-Length: 0\n"
        "\n")
    ack = Message.parse(out)
    ack.validate_request()
    assert ack.via1.branch == "z9hG4bKours.0" and ack.to.tag == "busy-9"


def test_cancel_of_a_multi_value_top_via_row_takes_only_the_first_value() -> None:
    data = SENT_INVITE.replace(b"z9hG4bKours.0\r\nVia: ", b"z9hG4bKours.0, ")
    out = build_cancel(Message.parse(data))
    assert b"\r\nVia: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKours.0\r\nRoute:" in out
