"""nathelper's NAT functions: nat_uac_test (every bit alone and combined),
fix_nated_contact, fix_nated_register, force_rport - called directly on parsed
messages and through compiled cfg snippets in request and onreply routes.

``NatHarness`` (also used by test_nathelper_natping.py) builds a Context the way the
supervisor does (shm tables from every module, ``init``), with a ListTransport.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

import pytest

from natserver.context import Context, ListTransport
from natserver.errors import CfgError
from natserver.modules import RouteType
from natserver.modules.nathelper import (
    NAT_C_1918,
    NAT_C_PORT,
    NAT_O_1918,
    NAT_RCVD,
    NAT_RPORT,
    NAT_S_1918,
    NAT_V_1918,
    NAT_WS,
    fix_nated_contact,
    fix_nated_register,
    nat_uac_test,
    nated_uri,
)
from natserver.receive import receive
from natserver.script import load
from natserver.script.runtime import MsgCtx
from natserver.shm import Tables
from natserver.sip.message import Message
from natserver.sip.uri import parse_uri
from natserver.stats import Stats
from tests.helpers.sipclient import parse

LOCAL = ("127.0.0.1", 5060)
PUBLIC = ("203.0.113.7", 40312)

SDP_PRIVATE = (b"v=0\r\no=- 1 1 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\n"
               b"t=0 0\r\nm=audio 40000 RTP/AVP 0\r\n")


def sdp(addr: str, family: str = "IP4") -> bytes:
    return (f"v=0\r\no=- 1 1 IN {family} {addr}\r\ns=-\r\nc=IN {family} {addr}\r\n"
            f"t=0 0\r\nm=audio 40000 RTP/AVP 0\r\n").encode()


def sip(method: str = "INVITE", *, via: str | None = "192.168.1.10:5060",
        contact: str | None = "<sip:alice@192.168.1.10:5060>", body: bytes = b"",
        content_type: str | None = "application/sdp", extra: tuple[str, ...] = (),
        reply: int = 0) -> bytes:
    """A request (or, with ``reply``, a reply) with the given top Via sent-by and Contact."""
    first = f"SIP/2.0 {reply} Whatever" if reply else f"{method} sip:bob@example.com SIP/2.0"
    lines = [first]
    if via is not None:
        lines.append(f"Via: SIP/2.0/UDP {via};branch=z9hG4bK-test1;rport")
    if reply:
        lines.append("Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK-second")
    lines += ["Max-Forwards: 70", "From: <sip:alice@example.com>;tag=f1",
              "To: <sip:bob@example.com>" + (";tag=t1" if reply else ""),
              "Call-ID: nh-test@example.com", f"CSeq: 1 {method}"]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += extra
    if body and content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class NatHarness:
    """Modules of one natserver in this process: compiled script, shm, init()."""

    def __init__(self, text: str, tmp: Path, *, now: float | None = None) -> None:
        self.script = load(str(tmp / "nh.cfg"), text=text)
        ctx = Context(self.script.config, str(tmp / "nh.cfg"))
        ctx.script = self.script
        ctx.secret = os.urandom(16)
        ctx.set_modules(self.script.modules)
        ctx.stats = Stats()
        self.transport = ListTransport()
        ctx.transport = self.transport
        self.mono = 1000.0
        self.now = time.time() if now is None else now
        ctx.mono = lambda: self.mono
        ctx.clock = lambda: self.now
        specs: dict[str, tuple[int, int, int]] = {}
        for module in ctx.modules.values():
            specs.update(module.shm_tables(ctx))
        ctx.tables = Tables.build(specs)
        self.ctx = ctx
        for module in ctx.modules.values():
            module.init(ctx)

    def module(self, name: str) -> Any:
        return self.ctx.modules[name]

    def msgctx(self, data: bytes, src: tuple[str, int] = PUBLIC,
               route: RouteType = RouteType.REQUEST) -> MsgCtx:
        return MsgCtx(self.ctx, Message.parse(data), src, LOCAL, route, self.now)

    def run(self, data: bytes, src: tuple[str, int] = PUBLIC) -> MsgCtx:
        m = self.msgctx(data, src)
        self.script.run_request(m)
        return m

    def onreply(self, n: int, data: bytes, src: tuple[str, int] = PUBLIC) -> MsgCtx:
        m = self.msgctx(data, src, RouteType.ONREPLY)
        self.script.run_onreply(n, m)
        return m

    def receive(self, data: bytes,
                src: tuple[str, int] = PUBLIC) -> list[tuple[bytes, tuple[str, int]]]:
        receive(self.ctx, data, src, LOCAL, self.now)
        return self.transport.take()

    def close(self) -> None:
        for module in self.ctx.modules.values():
            db = getattr(module, "db", None)
            if db is not None:
                db.close()
            locks = getattr(module, "locks", None)
            if locks is not None:
                locks.close()
        self.ctx.tables.close()


HEAD = """
listen=127.0.0.1
port=5060
children=1
loadmodule "sl.so"
loadmodule "textops.so"
loadmodule "nathelper.so"
"""


@pytest.fixture
def harness(tmp_path):
    made: list[NatHarness] = []

    def factory(body: str, head: str = HEAD, **kw: Any) -> NatHarness:
        h = NatHarness(head + body, tmp_path, **kw)
        made.append(h)
        return h
    yield factory
    for h in made:
        h.close()


@pytest.fixture
def plain(harness):
    """A harness for direct calls (the functions only need a Context)."""
    return harness("route { break; }")


def uac(plain, data: bytes, src: tuple[str, int], bits: int) -> int:
    return nat_uac_test(plain.msgctx(data, src), bits)


# ---- nat_uac_test: each bit alone ---------------------------------------------------------

@pytest.mark.parametrize("via, src, expected", [
    ("192.168.1.10:5060", ("203.0.113.7", 5060), -1),
    ("192.168.1.10:5060", ("203.0.113.7", 40312), 1),
    ("192.168.1.10", ("203.0.113.7", 5060), -1),       # no port in Via means 5060
    ("192.168.1.10", ("203.0.113.7", 5062), 1),
    ("[2001:db8::1]:5070", ("2001:db8::1", 5070), -1),
    ("[2001:db8::1]", ("2001:db8::1", 40000), 1),
    ("host.example.com:5080", ("203.0.113.7", 5080), -1),
])
def test_bit16_source_port_vs_via_port(plain, via, src, expected):
    assert uac(plain, sip(via=via), src, NAT_RPORT) == expected


@pytest.mark.parametrize("via, src, expected", [
    ("192.168.1.10:5060", ("203.0.113.7", 5060), 1),
    ("203.0.113.7:5060", ("203.0.113.7", 40000), -1),   # the port is bit 16's business
    ("host.example.com", ("203.0.113.7", 5060), 1),     # a name never equals an IP (no DNS)
    ("[2001:db8::1]", ("2001:db8:0:0::1", 5060), -1),   # IPv6 compared as addresses
    ("[2001:db8::1]", ("2001:db8::2", 5060), 1),
    ("10.0.0.1", ("10.0.0.1", 5060), -1),
])
def test_bit2_source_ip_vs_via_host(plain, via, src, expected):
    assert uac(plain, sip(via=via), src, NAT_RCVD) == expected


def test_bit2_is_the_address_comparison_only(plain):
    # SER also counted a Via that already carries received=; natserver does not.
    data = sip(via="203.0.113.7:5060;received=198.51.100.9")
    assert uac(plain, data, ("203.0.113.7", 5060), NAT_RCVD) == -1


@pytest.mark.parametrize("contact, expected", [
    ("<sip:alice@192.168.1.10:5060>", 1),
    ("<sip:alice@10.1.2.3>", 1),
    ("<sip:alice@172.20.0.5:5062;transport=udp>", 1),
    ("<sip:alice@100.64.12.1:5060>", 1),                # RFC 6598 shared address space
    ("<sip:alice@203.0.113.7:5060>", -1),
    ("<sip:alice@172.32.0.1>", -1),
    ("<sip:alice@[fd00::1]:5060>", -1),                 # IPv6 is never "private" here
    ("<sip:alice@pc.example.com>", -1),
    ('"Alice" <sip:alice@192.168.0.2>;expires=60', 1),
    ("sip:alice@192.168.0.2;expires=60", 1),            # addr-spec form
    ("<sip:alice@203.0.113.7>, <sip:alice@192.168.0.2>", -1),  # only the first counts
    ("*", -1),
    ("<tel:+4930123>", -1),
    ("<mailto:alice@192.168.0.2>", -1),
    (None, -1),
])
def test_bit1_contact_private(plain, contact, expected):
    data = sip(contact=contact)
    if contact == "*":
        data = sip("REGISTER", contact="*", extra=("Expires: 0",))
    assert uac(plain, data, PUBLIC, NAT_C_1918) == expected


def test_bit1_broken_contact_is_false(plain):
    assert uac(plain, sip(contact="<sip:alice@192.168.1.10"), PUBLIC, NAT_C_1918) == -1


@pytest.mark.parametrize("body, ctype, expected", [
    (SDP_PRIVATE, "application/sdp", 1),
    (sdp("203.0.113.7"), "application/sdp", -1),
    (sdp("0.0.0.0"), "application/sdp", -1),            # hold, not an address
    (sdp("fd00::1", "IP6"), "application/sdp", -1),
    (sdp("100.100.1.1"), "application/sdp", 1),
    (SDP_PRIVATE, None, 1),                             # no Content-Type: taken as SDP
    (SDP_PRIVATE, "text/plain", -1),
    (b"", "application/sdp", -1),
    (b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\n", "application/sdp", -1),  # no c=
])
def test_bit8_sdp_private(plain, body, ctype, expected):
    data = sip(body=body, content_type=ctype)
    if ctype is None and body:
        data = sip(body=body, content_type=None)
    assert uac(plain, data, PUBLIC, NAT_S_1918) == expected


def test_bit8_first_c_line_decides(plain):
    body = (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 203.0.113.9\r\nt=0 0\r\n"
            b"m=audio 4000 RTP/AVP 0\r\nc=IN IP4 192.168.1.10\r\n")
    assert uac(plain, sip(body=body), PUBLIC, NAT_S_1918) == -1
    media_only = (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n"
                  b"m=audio 4000 RTP/AVP 0\r\nc=IN IP4 192.168.1.10/127\r\n")
    assert uac(plain, sip(body=media_only), PUBLIC, NAT_S_1918) == 1


def test_bit8_in_a_reply_with_sdp(plain):
    data = sip(reply=200, via="203.0.113.1:5060", body=SDP_PRIVATE)
    m = plain.msgctx(data, PUBLIC, RouteType.ONREPLY)
    assert nat_uac_test(m, NAT_S_1918) == 1
    assert nat_uac_test(plain.msgctx(sip(reply=180, via="203.0.113.1:5060"), PUBLIC,
                                     RouteType.ONREPLY), NAT_S_1918) == -1


@pytest.mark.parametrize("via, expected", [
    ("192.168.1.10:5060", 1), ("10.0.0.1", 1), ("100.64.0.1", 1), ("203.0.113.7:5060", -1),
    ("[fd00::1]:5060", -1), ("host.example.com", -1), ("172.31.255.255", 1),
])
def test_bit4_via_private(plain, via, expected):
    assert uac(plain, sip(via=via), PUBLIC, NAT_V_1918) == expected


@pytest.mark.parametrize("src, expected", [
    (("192.168.1.10", 5060), 1), (("100.64.0.9", 5060), 1), (("203.0.113.7", 5060), -1),
    (("fd00::1", 5060), -1), (("127.0.0.1", 5060), -1),
])
def test_bit32_source_private(plain, src, expected):
    assert uac(plain, sip(), src, NAT_O_1918) == expected


def test_bit64_websocket_never(plain):
    assert uac(plain, sip(), PUBLIC, NAT_WS) == -1


@pytest.mark.parametrize("contact, src_port, expected", [
    ("<sip:alice@192.168.1.10:5060>", 5060, -1),
    ("<sip:alice@192.168.1.10:5060>", 40312, 1),
    ("<sip:alice@192.168.1.10>", 5060, -1),              # default port 5060
    ("<sip:alice@192.168.1.10>", 5062, 1),
    (None, 40312, -1),
    ("<tel:+4930123>", 40312, -1),
])
def test_bit128_contact_port_vs_source_port(plain, contact, src_port, expected):
    assert uac(plain, sip(contact=contact), ("203.0.113.7", src_port), NAT_C_PORT) == expected


def test_missing_via_makes_via_tests_false(plain):
    # A reply (the parser accepts it without Via only as a message object): no Via,
    # no Via-based test can hold, the Contact test still runs.
    data = sip(reply=200, via=None).replace(b"Via: SIP/2.0/UDP 198.51.100.1:5060;"
                                            b"branch=z9hG4bK-second\r\n", b"")
    m = plain.msgctx(data, PUBLIC, RouteType.ONREPLY)
    assert nat_uac_test(m, NAT_RPORT | NAT_RCVD | NAT_V_1918) == -1
    assert nat_uac_test(m, NAT_RPORT | NAT_C_1918) == 1


# ---- nat_uac_test: combinations ----------------------------------------------------------

CASES = [
    # (message, source)
    (sip(via="192.168.1.10:5060", contact="<sip:a@192.168.1.10:5060>"), PUBLIC),
    (sip(via="203.0.113.7:40312", contact="<sip:a@203.0.113.7:40312>"), PUBLIC),
    (sip(via="203.0.113.7:5060", contact="<sip:a@203.0.113.7:5060>", body=SDP_PRIVATE), PUBLIC),
    (sip(via="203.0.113.7:40312", contact="<sip:a@10.0.0.1:40312>"), PUBLIC),
    (sip(via="10.0.0.1:40312", contact="<sip:a@203.0.113.7>"), ("10.0.0.1", 40312)),
    (sip(via="[2001:db8::1]:5060", contact="<sip:a@[2001:db8::1]>"), ("2001:db8::1", 5060)),
    (sip(via="pc.example.com", contact="<sip:a@pc.example.com>"), ("198.51.100.3", 5060)),
    (sip("REGISTER", via="192.168.1.10", contact="*", extra=("Expires: 0",)), PUBLIC),
    (sip(reply=183, via="203.0.113.1:5060", contact="<sip:b@192.168.5.5:5062>",
         body=SDP_PRIVATE), ("198.51.100.1", 5060)),
]
SINGLE_BITS = (NAT_C_1918, NAT_RCVD, NAT_V_1918, NAT_S_1918, NAT_RPORT, NAT_O_1918, NAT_WS,
               NAT_C_PORT)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_combined_bits_are_the_or_of_single_bits(plain, case):
    data, src = CASES[case]
    route = RouteType.ONREPLY if data.startswith(b"SIP/2.0") else RouteType.REQUEST
    single = {b: nat_uac_test(plain.msgctx(data, src, route), b) == 1 for b in SINGLE_BITS}
    for r in range(2, len(SINGLE_BITS) + 1):
        for combo in itertools.combinations(SINGLE_BITS, r):
            bits = sum(combo)
            expected = 1 if any(single[b] for b in combo) else -1
            assert nat_uac_test(plain.msgctx(data, src, route), bits) == expected, (case, bits)


def test_seed_19_public_client_is_not_nated(plain):
    data = sip(via="203.0.113.7:40312", contact="<sip:alice@203.0.113.7:40312>")
    assert uac(plain, data, PUBLIC, 19) == -1
    assert uac(plain, data, PUBLIC, 19 | NAT_S_1918 | NAT_V_1918) == -1


def test_seed_19_nated_client(plain):
    data = sip(via="192.168.1.10:5060", contact="<sip:alice@192.168.1.10:5060>")
    assert uac(plain, data, PUBLIC, 19) == 1
    # each of the three tests alone is enough
    assert uac(plain, sip(via="203.0.113.7:5060", contact="<sip:a@203.0.113.7>"),
                 ("203.0.113.7", 1234), 19) == 1
    assert uac(plain, sip(via="198.51.100.2:40312", contact="<sip:a@203.0.113.7>"),
                 PUBLIC, 19) == 1
    assert uac(plain, sip(via="203.0.113.7:40312", contact="<sip:a@192.168.0.3>"),
                 PUBLIC, 19) == 1


@pytest.mark.parametrize("arg", ['"0"', '"256"', '"512"', '"abc"', '"-1"'])
def test_bad_test_bits_refused_at_start(harness, arg):
    with pytest.raises(CfgError) as info:
        harness(f"route {{ if (nat_uac_test({arg})) {{ break; }}; }}")
    assert "nat_uac_test" in str(info.value) or "number" in str(info.value)


def test_nat_uac_test_in_cfg_request_and_reply(harness):
    h = harness("""
route { if (nat_uac_test("19")) { setflag(6); }; }
onreply_route[1] { if (nat_uac_test("1")) { setflag(7); }; }
""")
    assert h.run(sip()).flags & (1 << 6)
    public = sip(via="203.0.113.7:40312", contact="<sip:a@203.0.113.7:40312>")
    assert not h.run(public).flags & (1 << 6)
    reply = sip(reply=200, via="203.0.113.1:5060", contact="<sip:b@192.168.5.5>")
    assert h.onreply(1, reply).flags & (1 << 7)
    reply_public = sip(reply=200, via="203.0.113.1:5060", contact="<sip:b@198.51.100.5>")
    assert not h.onreply(1, reply_public).flags & (1 << 7)


# ---- fix_nated_contact ---------------------------------------------------------------------

def outgoing(m: MsgCtx) -> bytes:
    return m.get_edits().apply(m.msg.buf)


def contact_line(data: bytes) -> str | None:
    return parse(data).get("Contact")


@pytest.mark.parametrize("contact, src, expected", [
    ("<sip:alice@192.168.1.10:5062;transport=udp>", PUBLIC,
     "<sip:alice@203.0.113.7:40312;transport=udp>"),
    ("<sip:alice@192.168.1.10>", PUBLIC, "<sip:alice@203.0.113.7:40312>"),
    ('"Alice Smith" <sip:alice@192.168.1.10:5060;ob>;expires=3600;+sip.instance="<urn:x>"',
     PUBLIC, '"Alice Smith" <sip:alice@203.0.113.7:40312;ob>;expires=3600;+sip.instance="<urn:x>"'),
    ("sip:alice@192.168.1.10:5060;expires=60", PUBLIC, "sip:alice@203.0.113.7:40312;expires=60"),
    ("<sip:alice:secret@192.168.1.10:5060;lr?Subject=hi>", PUBLIC,
     "<sip:alice:secret@203.0.113.7:40312;lr?Subject=hi>"),
    ("<sip:192.168.1.10:5060>", PUBLIC, "<sip:203.0.113.7:40312>"),
    ("<sip:alice@192.168.1.10:5060>", ("2001:db8::7", 40312), "<sip:alice@[2001:db8::7]:40312>"),
    ("<sip:alice@[fd00::5]:5060>", PUBLIC, "<sip:alice@203.0.113.7:40312>"),
    ("<sip:alice@pc.local>", ("203.0.113.7", 5060), "<sip:alice@203.0.113.7:5060>"),
    ("<sip:alice@10.0.0.1:5060;maddr=10.0.0.99;transport=udp>", PUBLIC,
     "<sip:alice@203.0.113.7:40312;transport=udp>"),
    ("<sip:alice@10.0.0.1:5060;MADDR=10.0.0.99>", PUBLIC, "<sip:alice@203.0.113.7:40312>"),
    ("<sip:alice@10.0.0.1>, <sip:alice@10.0.0.2>", PUBLIC,
     "<sip:alice@203.0.113.7:40312>, <sip:alice@10.0.0.2>"),
])
def test_fix_nated_contact(plain, contact, src, expected):
    m = plain.msgctx(sip(contact=contact), src)
    assert fix_nated_contact(m) == 1
    assert contact_line(outgoing(m)) == expected
    assert m.contact_fixed


def test_fix_nated_contact_changes_only_the_outgoing_copy(plain):
    data = sip(body=SDP_PRIVATE)
    m = plain.msgctx(data)
    assert fix_nated_contact(m) == 1
    assert m.msg.buf == data
    out = outgoing(m)
    # everything but the Contact line goes out byte for byte
    assert out.startswith(data.split(b"Contact: ")[0])
    assert out.endswith(data[data.index(b"\r\nContent-Type"):])


def test_fix_nated_contact_twice_is_refused(plain):
    m = plain.msgctx(sip())
    assert fix_nated_contact(m) == 1
    assert fix_nated_contact(m) == -1
    assert len(m.get_edits()) == 1
    assert contact_line(outgoing(m)) == "<sip:alice@203.0.113.7:40312>"


@pytest.mark.parametrize("contact", [
    None, "<sip:alice@10.0.0.1;transport=tcp>", "<sips:alice@10.0.0.1>", "<tel:+4930123>",
    "<sip:alice@10.0.0.1", "<mailto:a@10.0.0.1>",
])
def test_fix_nated_contact_refuses(plain, contact):
    m = plain.msgctx(sip(contact=contact))
    assert fix_nated_contact(m) == -1
    assert m.edits is None or len(m.edits) == 0
    assert not m.contact_fixed


def test_fix_nated_contact_star(plain):
    m = plain.msgctx(sip("REGISTER", contact="*", extra=("Expires: 0",)))
    assert fix_nated_contact(m) == -1


def test_fix_nated_contact_compact_form(plain):
    data = sip(contact=None, extra=("m: <sip:alice@192.168.1.10:5060>",))
    m = plain.msgctx(data)
    assert fix_nated_contact(m) == 1
    assert b"m: <sip:alice@203.0.113.7:40312>\r\n" in outgoing(m)


def test_fix_nated_contact_on_a_reply_uses_the_reply_source(plain):
    data = sip(reply=200, via="203.0.113.1:5060", contact="<sip:bob@192.168.5.5:5062>",
               body=SDP_PRIVATE)
    m = plain.msgctx(data, ("198.51.100.20", 61000), RouteType.ONREPLY)
    assert fix_nated_contact(m) == 1
    assert contact_line(outgoing(m)) == "<sip:bob@198.51.100.20:61000>"


def test_nated_uri_helper():
    text = b"sip:alice@192.168.1.10:5062;transport=udp;maddr=1.1.1.1?h=v"
    assert nated_uri(text, parse_uri(text), "::1", 9) == b"sip:alice@[::1]:9;transport=udp?h=v"


def test_search_still_sees_the_original_contact(harness):
    h = harness("""
route {
  fix_nated_contact();
  if (search("^Contact: <sip:alice@192.168.1.10:5060>")) { setflag(3); };
  if (!fix_nated_contact()) { setflag(4); };
}
""")
    m = h.run(sip())
    assert m.flags & (1 << 3)
    assert m.flags & (1 << 4)                       # the second call failed
    assert contact_line(outgoing(m)) == "<sip:alice@203.0.113.7:40312>"


def test_fix_nated_contact_in_onreply_route(harness):
    h = harness("""
route { break; }
onreply_route[1] { if (nat_uac_test("1")) { fix_nated_contact(); }; }
""")
    m = h.onreply(1, sip(reply=200, via="203.0.113.1:5060", contact="<sip:b@10.9.8.7:5060>"),
                  ("198.51.100.20", 61000))
    assert contact_line(outgoing(m)) == "<sip:b@198.51.100.20:61000>"


def test_fix_nated_register_not_allowed_in_onreply(harness):
    with pytest.raises(CfgError):
        harness('route { break; }\nonreply_route[1] { fix_nated_register(); }')


# ---- fix_nated_register --------------------------------------------------------------------

def test_fix_nated_register(plain):
    data = sip("REGISTER")
    m = plain.msgctx(data)
    assert fix_nated_register(m) == 1
    assert m.received == b"sip:203.0.113.7:40312"
    assert m.edits is None                          # the message goes on unchanged


def test_fix_nated_register_ipv6(plain):
    m = plain.msgctx(sip("REGISTER"), ("2001:db8::7", 5062))
    assert fix_nated_register(m) == 1
    assert m.received == b"sip:[2001:db8::7]:5062"


def test_fix_nated_register_only_for_register(plain):
    m = plain.msgctx(sip("INVITE"))
    assert fix_nated_register(m) == -1
    assert m.received is None


# ---- force_rport with the seed's NAT block -------------------------------------------------

def test_force_rport_reply_goes_to_the_source_port(harness):
    h = harness("""
route {
  if (nat_uac_test("19")) { setflag(6); force_rport(); fix_nated_contact(); };
  sl_send_reply("404", "Not Here");
}
""")
    data = sip("OPTIONS", via="192.168.1.10:5060").replace(b";rport", b"")
    sent = h.receive(data, PUBLIC)
    assert len(sent) == 1
    reply, addr = sent[0]
    assert addr == PUBLIC                            # not the Via's 192.168.1.10:5060
    via = parse(reply).get("Via")
    assert "received=203.0.113.7" in via and "rport=40312" in via


def test_without_force_rport_reply_follows_the_via(harness):
    h = harness('route { sl_send_reply("404", "Not Here"); }')
    data = sip("OPTIONS", via="198.51.100.9:5070").replace(b";rport", b"")
    sent = h.receive(data, ("198.51.100.9", 40000))
    assert sent[0][1] == ("198.51.100.9", 5070)
