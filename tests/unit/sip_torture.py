"""A torture corpus for the SIP parser, written for natserver in the spirit of RFC 4475.

Three lists:
- ``VALID``: messages that must parse, each with a check of what the parser must see;
- ``PARSE_ERRORS``: datagrams ``Message.parse`` must refuse, with the status expected;
- ``VIEW_ERRORS``: messages whose framing is fine but where reading one view (or
  ``validate_request``) must raise ``SipError`` with the status expected.

Every message is also a seed for the mutation property test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from natserver.sip.headers import Hdr
from natserver.sip.message import Message


def crlf(text: str) -> bytes:
    """Lines joined with CRLF; ``\\n`` in the text marks line ends."""
    return text.replace("\n", "\r\n").encode("utf-8")


@dataclass(frozen=True)
class Valid:
    name: str
    data: bytes
    check: Callable[[Message], None]


@dataclass(frozen=True)
class ParseError:
    name: str
    data: bytes
    status: int
    reason_has: str = ""
    max_len: int = 65535


@dataclass(frozen=True)
class ViewError:
    name: str
    data: bytes
    view: str          # attribute name, or "validate_request"
    status: int
    reason_has: str = ""


BASE_HEADERS = (
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-base-1\n"
    "Max-Forwards: 70\n"
    "From: <sip:alice@example.com>;tag=a1\n"
    "To: <sip:bob@example.org>\n"
    "Call-ID: base-1@192.0.2.10\n"
)


def request(method: str = "OPTIONS", ruri: str = "sip:bob@example.org", extra: str = "",
            cseq: str | None = None, body: str = "", headers: str = BASE_HEADERS) -> bytes:
    cseq_line = f"CSeq: {cseq if cseq is not None else '1 ' + method}\n"
    return crlf(f"{method} {ruri} SIP/2.0\n{headers}{cseq_line}{extra}"
                f"Content-Length: {len(body.replace(chr(10), chr(13) + chr(10)))}\n\n{body}")


# ---- valid messages -----------------------------------------------------------------------
def _ws_invite(m: Message) -> None:
    assert m.method == b"INVITE"
    assert m.ruri == b"sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert m.max_forwards == 68
    assert m.to.display is None and m.to.tag == "1918181833n"
    assert m.to.uri.user == "vivekg" and m.to.uri.host == "chair-dnrc.example.com"
    assert m.from_.display == 'J Rosenberg \\"'  # the escapes resolved
    assert m.from_.tag == "98asjd8"
    assert m.call_id == b"0ha0isndaksdj@192.0.2.1"
    assert m.cseq.num == 9 and m.cseq.method == b"INVITE"
    assert [v.host for v in m.vias] == ["192.0.2.2", "192.0.2.1"]
    assert m.vias[0].branch == "390skdjuw" and m.vias[1].port == 5060
    assert m.vias[1].transport == "TCP"
    assert m.vias[1].branch == "z9hG4bKkdjuw"
    assert m.get(Hdr.SUBJECT) is not None and m.get(Hdr.SUBJECT).value == b""
    assert m.find("NewFangledHeader").value == b"newfangled value continued newfangled value"
    assert m.find("UnknownHeaderWithUnusualValue").value == b";;,,;;,;"
    assert m.content_type == b"application/sdp"
    assert m.body == WS_SDP and len(m.body) == m.content_length
    assert m.routes[0].uri.params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    assert m.contacts.items[0].display == 'Quoted string ""'
    contacts = m.contacts.items
    assert len(contacts) == 1 and contacts[0].uri.host == "host5.example.net"
    assert contacts[0].uri.user_unescaped == "caller"


WS_SDP = (
    b"v=0\r\n"
    b"o=mhandley 29739 7272939 IN IP4 192.0.2.3\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.4\r\n"
    b"t=0 0\r\n"
    b"m=audio 49217 RTP/AVP 0 12\r\n"
    b"m=video 3227 RTP/AVP 31\r\n"
    b"a=rtpmap:31 LPC\r\n"
)
WS_INVITE = (
    b"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n"
    b"TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n"
    b"from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n"
    b"MaX-fOrWaRdS: 0068\r\n"
    b"Call-ID  : 0ha0isndaksdj@192.0.2.1\r\n"
    b"Content-Length   : %d\r\n"
    b"cseq: 0009\r\n  INVITE\r\n"
    b"Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n"
    b"s :\r\n"
    b"NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n"
    b"UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Route:\r\n <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\r\n"
    b"v:  SIP  / 2.0  / TCP     192.0.2.1:5060  ;   branch  =   z9hG4bKkdjuw\r\n"
    b"m:\"Quoted string \\\"\\\"\" <sip:caller@host5.example.net>\r\n"
    b"\r\n" % len(WS_SDP)
) + WS_SDP


def _unknown_method(m: Message) -> None:
    assert m.method == b"!interesting-Method0123456789_*+`.%~"
    assert m.cseq.method == m.method
    m.validate_request()
    assert m.find("extension-header").value == b"a,b;c=\"d,e\""
    u = m.parsed_ruri
    assert u.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert u.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert u.host == "example.com"


def _escaped_uris(m: Message) -> None:
    u = m.parsed_ruri
    assert u.user == "sips%3Auser%40example.com"
    assert u.user_unescaped == "sips:user@example.com"
    assert u.host == "example.net"
    assert m.to.uri.user == "null-%00-null"
    assert m.to.uri.user_unescaped == "null-\x00-null"
    f = m.from_.uri
    assert f.user == "user;par=u%40example.net" and f.host == "example.com"
    c = m.contacts.items[0].uri
    assert c.params == {"transport": "udp", "lr": None, "x": "%41"}


def _no_space_display(m: Message) -> None:
    assert m.from_.display == "caller"
    assert m.from_.uri_text == b"sip:caller@example.com"
    assert m.to.display == "Bob Smith Jr."
    assert m.to.tag == "t-1"


def _long_values(m: Message) -> None:
    assert len(m.vias) == 41
    assert m.vias[-1].host == "192.0.2.140"
    assert len(m.call_id) == 3000
    assert len(m.find("X-Long").value) == 8000
    assert len(m.routes) == 30
    assert m.routes[29].uri.host == "proxy29.example.com"
    assert len(m.from_.display or "") == 500


def _reply_weird_reason(m: Message) -> None:
    assert not m.is_request and m.status == 200
    assert m.reason == "OK \u00e9t\u00e9 \tdone: ok?".encode("utf-8")
    assert m.method == b"" and m.ruri == b""
    assert m.cseq.method == b"INVITE"


def _reply_no_reason(m: Message) -> None:
    assert m.status == 100 and m.reason == b""


def _reply_no_space(m: Message) -> None:
    assert m.status == 180 and m.reason == b""


def _ipv6(m: Message) -> None:
    assert m.parsed_ruri.host == "2001:db8::10" and m.parsed_ruri.port == 5070
    v = m.via1
    assert v.host == "2001:db8::9" and v.port == 5061 and v.received == "2001:db8::99"
    assert m.contacts.items[0].uri.host == "2001:db8::9"
    assert m.contacts.items[0].uri.host_port() == ("2001:db8::9", 5060)


def _compact(m: Message) -> None:
    assert m.via1.host == "192.0.2.10"
    assert m.from_.tag == "c1" and m.to.tag is None
    assert m.call_id == b"compact@192.0.2.10"
    assert m.contacts.items[0].uri.user == "alice"
    assert m.content_type == b"application/sdp"
    assert m.content_length == 4 and m.body == b"v=0\n"
    for h in (Hdr.SUPPORTED, Hdr.SUBJECT, Hdr.CONTENT_ENCODING, Hdr.EVENT, Hdr.REFER_TO,
              Hdr.REFERRED_BY, Hdr.ALLOW_EVENTS, Hdr.SESSION_EXPIRES, Hdr.REJECT_CONTACT,
              Hdr.ACCEPT_CONTACT, Hdr.REQUEST_DISPOSITION, Hdr.IDENTITY, Hdr.IDENTITY_INFO):
        assert m.get(h) is not None, h
    assert m.tokens(Hdr.SUPPORTED) == ["100rel", "timer"]
    assert m.find("k") is m.get(Hdr.SUPPORTED)
    assert m.find("SUPPORTED") is m.get(Hdr.SUPPORTED)


def _multi_values(m: Message) -> None:
    assert [v.branch for v in m.vias] == ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3", "z9hG4bK4"]
    items = m.contacts.items
    assert [c.display for c in items] == ["Doe, John", None, "x <y>, z"]
    assert [c.uri.user for c in items] == ["john", "a,b", "q"]
    assert items[1].params == {"expires": "30"}
    assert [r.uri.host for r in m.routes] == ["p1.example.com", "p2.example.com", "p3.example.com"]
    assert len(m.get_all(Hdr.ROUTE)) == 2
    assert [r.uri.host for r in m.record_routes] == ["rr1.example.com", "rr2.example.com"]


def _bare_lf(m: Message) -> None:
    assert m.method == b"REGISTER"
    assert m.via1.branch == "z9hG4bKlf"
    assert m.to.uri.user == "alice"
    assert m.expires == 600
    assert m.body == b""
    assert m.headers_end == m.buf.index(b"\n\n") + 1


def _mixed_endings(m: Message) -> None:
    assert m.call_id == b"mixed@h"
    assert m.from_.tag == "mx"
    assert m.body == b"abcd"


def _leading_crlf(m: Message) -> None:
    assert m.method == b"OPTIONS" and m.ruri_start == 12


def _no_content_length(m: Message) -> None:
    assert m.content_length is None
    assert m.body == b"v=0\r\nbody runs to the end\r\n"


def _extra_bytes(m: Message) -> None:
    assert m.content_length == 3
    assert m.body == b"v=0"
    assert m.body_end == m.body_start + 3 < len(m.buf)


def _lower_version(m: Message) -> None:
    assert m.method == b"OPTIONS"


def _star(m: Message) -> None:
    assert m.contacts.star and m.contacts.items == []
    assert m.expires == 0


def _tel(m: Message) -> None:
    u = m.parsed_ruri
    assert u.scheme == "tel" and u.user == "+1-201-555-0123" and u.params == {
        "phone-context": "example.com"}


def _sips(m: Message) -> None:
    assert m.parsed_ruri.scheme == "sips" and m.parsed_ruri.host_port() == ("example.org", 5061)


def _quoted_params(m: Message) -> None:
    c = m.contacts.items[0]
    assert c.params["+sip.instance"] == '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    assert c.params["foo"] == '"a\\"b;c,d"'
    assert c.params["reg-id"] == "1"
    assert c.params["flag"] is None
    assert m.via1.params["x"] == '"quoted;via,param"'
    assert m.via1.branch == "z9hG4bKq"


def _space_before_colon(m: Message) -> None:
    assert m.via1.host == "192.0.2.10"
    assert m.to.uri.user == "bob"
    assert m.get(Hdr.VIA).name == b"Via"


def _empty_values(m: Message) -> None:
    assert m.get(Hdr.SUBJECT).value == b""
    assert m.get(Hdr.ORGANIZATION).value == b""
    assert m.tokens(Hdr.SUPPORTED) == []


def _auths(m: Message) -> None:
    creds = m.authorizations(Hdr.AUTHORIZATION)
    assert [c.realm for c in creds] == ["one.example.com", "two.example.com"]
    assert creds[1].username == "bob" and creds[1].qop == "auth" and creds[1].nc == "00000001"
    proxy = m.authorizations(Hdr.PROXY_AUTHORIZATION)
    assert proxy[0].scheme == "digest" and proxy[0].uri == "sip:x@y"
    line = m.buf[proxy[0].hdr_start:proxy[0].hdr_end]
    assert line.startswith(b"Proxy-Authorization:") and line.endswith(b"\r\n")


def _folded_via(m: Message) -> None:
    v = m.via1
    assert v.branch == "z9hG4bKfold" and v.rport == "" and v.received is None
    assert m.buf[v.end - 5:v.end] == b"rport"


def _max_forwards_zero(m: Message) -> None:
    assert m.max_forwards == 0


def _many_headers(m: Message) -> None:
    assert len(m.hdrs) == 507
    assert m.find("x-h499").value == b"499"


def _utf8_display(m: Message) -> None:
    assert m.from_.display == "J\u00fcrgen M\u00fcller"
    assert m.to.display == "\u65e5\u672c"


def _case_insensitive_names(m: Message) -> None:
    assert m.call_id == b"ci@h"
    assert m.cseq.num == 7
    assert m.content_length == 0
    assert m.get(Hdr.WWW_AUTHENTICATE) is not None


def _multipart(m: Message) -> None:
    assert m.content_type == b"multipart/mixed"
    assert m.body.endswith(b"--boundary42--\r\n")


def _reply_multi_via(m: Message) -> None:
    assert m.status == 486
    assert [v.host for v in m.vias] == ["proxy.example.com", "192.0.2.10"]
    assert m.vias[1].rport == "40312" and m.vias[1].received == "203.0.113.7"


def _params_with_ipv6_value(m: Message) -> None:
    assert m.via1.received == "2001:db8::1"
    assert m.via1.params["maddr"] == "[2001:db8::2]"
    assert m.via1.maddr == "[2001:db8::2]"


VALID: list[Valid] = [
    Valid("ws-invite", WS_INVITE, _ws_invite),
    Valid("unknown-method", crlf(
        "!interesting-Method0123456789_*+`.%~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
        ":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\n"
        + BASE_HEADERS
        + "CSeq: 139122385 !interesting-Method0123456789_*+`.%~\n"
        "extension-header: a,b;c=\"d,e\"\n"
        "Content-Length: 0\n\n"), _unknown_method),
    Valid("escaped-uris", request(
        "INVITE", "sip:sips%3Auser%40example.com@example.net",
        headers="Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK-esc\n"
                "Max-Forwards: 70\n"
                "From: <sip:user;par=u%40example.net@example.com>;tag=e1\n"
                "To: sip:null-%00-null@example.com\n"
                "Call-ID: esc@192.0.2.10\n"
                "Contact: <sip:cal%6Cer@192.0.2.10;transport=udp;lr;x=%41>\n"), _escaped_uris),
    Valid("no-space-before-laquot", request(
        headers="Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK-ns\n"
                "From: caller<sip:caller@example.com>;tag=323\n"
                "To: Bob   Smith\tJr.   <sip:bob@example.org>;tag=t-1\n"
                "Call-ID: ns@192.0.2.10\n"), _no_space_display),
    Valid("long-values", request(
        headers="".join(f"Via: SIP/2.0/UDP 192.0.2.{100 + i};branch=z9hG4bK{i}\n"
                        for i in range(40))
        + "v: SIP/2.0/UDP 192.0.2.140;branch=z9hG4bK40\n"
        + "From: \"" + "L" * 500 + "\" <sip:long@example.com>;tag=" + "t" * 300 + "\n"
        + "To: <sip:bob@example.org>\n"
        + "Call-ID: " + "c" * 3000 + "\n"
        + "X-Long: " + "x" * 8000 + "\n"
        + "".join(f"Route: <sip:proxy{i}.example.com;lr>\n" for i in range(30))), _long_values),
    Valid("reply-weird-reason", crlf(
        "SIP/2.0 200 OK \u00e9t\u00e9 \tdone: ok?\n" + BASE_HEADERS
        + "CSeq: 1 INVITE\nContent-Length: 0\n\n"), _reply_weird_reason),
    Valid("reply-empty-reason", crlf(
        "SIP/2.0 100 \n" + BASE_HEADERS + "CSeq: 1 INVITE\nContent-Length: 0\n\n"),
        _reply_no_reason),
    Valid("reply-no-reason", crlf(
        "SIP/2.0 180\n" + BASE_HEADERS + "CSeq: 1 INVITE\nContent-Length: 0\n\n"),
        _reply_no_space),
    Valid("ipv6", request(
        "INVITE", "sip:[2001:db8::10]:5070",
        headers="Via: SIP/2.0/UDP [2001:db8::9]:5061;branch=z9hG4bK-v6;received=2001:db8::99\n"
                "From: <sip:a@[2001:db8::9]>;tag=v6\n"
                "To: <sip:b@[2001:db8::10]:5070>\n"
                "Call-ID: v6@[2001:db8::9]\n"
                "Contact: \"v6\" <sip:a@[2001:DB8::9]>\n"), _ipv6),
    Valid("compact-forms", crlf(
        "INVITE sip:bob@example.org SIP/2.0\n"
        "v: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK-c\n"
        "f: <sip:alice@example.com>;tag=c1\n"
        "t: <sip:bob@example.org>\n"
        "i: compact@192.0.2.10\n"
        "CSeq: 1 INVITE\n"
        "m: <sip:alice@192.0.2.10>\n"
        "c: Application/SDP; charset=utf-8\n"
        "k: 100rel, timer\n"
        "s: hello\n"
        "e: gzip\n"
        "o: presence\n"
        "r: <sip:carol@example.org>\n"
        "b: <sip:alice@example.com>\n"
        "u: refer\n"
        "x: 1800;refresher=uac\n"
        "j: *;audio\n"
        "a: *;video\n"
        "d: proxy\n"
        "y: abc\n"
        "n: <https://example.com/cert>;alg=rsa-sha1\n"
        "L: 4\n"
        "\n").replace(b"\r\n\r\n", b"\r\n\r\nv=0\n"), _compact),
    Valid("multi-values", request(
        headers="Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bK1, SIP/2.0/UDP p2.example.com"
                ";branch=z9hG4bK2 ,SIP/2.0/UDP p3.example.com;branch=z9hG4bK3\n"
                "Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK4\n"
                "From: <sip:alice@example.com>;tag=m1\n"
                "To: <sip:bob@example.org>\n"
                "Call-ID: multi@192.0.2.10\n"
                "Contact: \"Doe, John\" <sip:john@example.com>, <sip:a,b@example.com>;expires=30"
                ",\"x <y>, z\"<sip:q@example.com>\n"
                "Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\n"
                "Route: <sip:p3.example.com;lr>\n"
                "Record-Route: <sip:rr1.example.com;lr>, <sip:rr2.example.com;lr>\n"),
        _multi_values),
    Valid("bare-lf", (
        b"REGISTER sip:example.com SIP/2.0\n"
        b"Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKlf\n"
        b"From: <sip:alice@example.com>;tag=lf\n"
        b"To: <sip:alice@example.com>\n"
        b"Call-ID: lf@192.0.2.10\n"
        b"CSeq: 1 REGISTER\n"
        b"Expires: 600\n"
        b"Content-Length: 0\n"
        b"\n"), _bare_lf),
    Valid("mixed-line-endings", (
        b"MESSAGE sip:bob@example.org SIP/2.0\n"
        b"Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKmx\r\n"
        b"From: <sip:alice@example.com>;tag=mx\n"
        b"To: <sip:bob@example.org>\r\n"
        b"Call-ID: mixed@h\n"
        b"CSeq: 1 MESSAGE\r\n"
        b"Content-Length: 4\n"
        b"\r\n"
        b"abcd"), _mixed_endings),
    Valid("leading-crlf", b"\r\n\r\n" + request(), _leading_crlf),
    Valid("no-content-length", crlf(
        "INVITE sip:bob@example.org SIP/2.0\n" + BASE_HEADERS + "CSeq: 1 INVITE\n\n"
        "v=0\nbody runs to the end\n"), _no_content_length),
    Valid("extra-bytes-after-body", crlf(
        "INVITE sip:bob@example.org SIP/2.0\n" + BASE_HEADERS + "CSeq: 1 INVITE\n"
        "Content-Length: 3\n\nv=0\ngarbage after the body"), _extra_bytes),
    Valid("lower-case-version", request().replace(b"SIP/2.0\r\nVia", b"sip/2.0\r\nVia"),
          _lower_version),
    Valid("contact-star", request("REGISTER", "sip:example.com", "Contact: *\nExpires: 0\n"),
          _star),
    Valid("tel-uri", request("INVITE", "tel:+1-201-555-0123;phone-context=example.com"), _tel),
    Valid("sips-uri", request("OPTIONS", "sips:example.org"), _sips),
    Valid("quoted-params", request(
        headers="Via: SIP/2.0/UDP 192.0.2.10;x=\"quoted;via,param\";branch=z9hG4bKq\n"
                "From: <sip:alice@example.com>;tag=q1\n"
                "To: <sip:bob@example.org>\n"
                "Call-ID: q@192.0.2.10\n"
                "Contact: <sip:alice@192.0.2.10>;+sip.instance=\"<urn:uuid:00000000-0000-1000"
                "-8000-000A95A0E128>\";foo=\"a\\\"b;c,d\";reg-id=1;flag\n"), _quoted_params),
    Valid("space-before-colon", request(
        headers="Via   :   SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK-sp\n"
                "From\t: <sip:alice@example.com>;tag=s1\n"
                "To  :<sip:bob@example.org>\n"
                "Call-ID :sp@192.0.2.10\n"), _space_before_colon),
    Valid("empty-values", request(extra="Subject:\nOrganization:    \nSupported:\n"),
          _empty_values),
    Valid("two-authorizations", request(extra=(
        "Authorization: Digest username=\"alice\", realm=\"one.example.com\", nonce=\"n1\","
        " uri=\"sip:x@y\", response=\"0123\"\n"
        "Authorization: DIGEST USERNAME=bob,REALM=\"two.example.com\" ,nonce=\"n2\",\n"
        "  uri=\"sip:x@y\",response=\"4567\",qop=auth,nc=00000001,cnonce=\"c\"\n"
        "Proxy-Authorization: Digest username=\"p\", realm=\"p\", nonce=\"n\", uri=\"sip:x@y\","
        " response=\"89\", algorithm=SHA-256\n")), _auths),
    Valid("folded-via", request(
        headers="Via: SIP/2.0/UDP 192.0.2.10\n\t;branch=z9hG4bKfold\n   ;rport\n"
                "From: <sip:alice@example.com>;tag=f1\n"
                "To: <sip:bob@example.org>\n"
                "Call-ID: fold@192.0.2.10\n"), _folded_via),
    Valid("max-forwards-zero", request(extra="Max-Forwards: 0\n",
                                       headers=BASE_HEADERS.replace("Max-Forwards: 70\n", "")),
          _max_forwards_zero),
    Valid("many-headers", request(extra="".join(f"X-H{i}: {i}\n" for i in range(500))),
          _many_headers),
    Valid("utf8-display-names", request(
        headers="Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK-u\n"
                "From: \"J\u00fcrgen M\u00fcller\" <sip:jm@example.com>;tag=u1\n"
                "To: \u65e5\u672c <sip:bob@example.org>\n"
                "Call-ID: utf8@192.0.2.10\n"), _utf8_display),
    Valid("case-insensitive-names", crlf(
        "SIP/2.0 401 Unauthorized\n"
        "VIA: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK-ci\n"
        "fRoM: <sip:alice@example.com>;tag=ci\n"
        "tO: <sip:bob@example.org>;tag=x\n"
        "CALL-ID: ci@h\n"
        "cSeQ: 7 REGISTER\n"
        "www-authenticate: Digest realm=\"example.com\", nonce=\"abc\"\n"
        "CONTENT-LENGTH: 0\n\n"), _case_insensitive_names),
    Valid("multipart-body", request("INVITE", body=(
        "--boundary42\nContent-Type: application/sdp\n\nv=0\n"
        "--boundary42\nContent-Type: application/isup\n\n\x01\x02\n--boundary42--\n"),
        extra="Content-Type: multipart/mixed;boundary=boundary42\n"), _multipart),
    Valid("reply-two-vias", crlf(
        "SIP/2.0 486 Busy Here\n"
        "Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKu;rport=40312;received=203.0.113.7\n"
        "From: <sip:alice@example.com>;tag=a\nTo: <sip:bob@example.org>;tag=b\n"
        "Call-ID: r@h\nCSeq: 1 INVITE\nContent-Length: 0\n\n"), _reply_multi_via),
    Valid("param-ipv6-values", request(
        headers="Via: SIP/2.0/UDP [2001:db8::1];received=2001:db8::1;maddr=[2001:db8::2]"
                ";branch=z9hG4bK6\n"
                "From: <sip:alice@example.com>;tag=p6\nTo: <sip:bob@example.org>\n"
                "Call-ID: p6@h\n"), _params_with_ipv6_value),
]


# ---- datagrams the parser must refuse -------------------------------------------------
PARSE_ERRORS: list[ParseError] = [
    ParseError("version-7", request().replace(b"SIP/2.0\r\nVia", b"SIP/7.0\r\nVia"), 505),
    ParseError("reply-version-3", crlf("SIP/3.0 200 OK\n" + BASE_HEADERS + "\n"), 505),
    ParseError("unknown-scheme", request(ruri="nobodyknowsthisscheme:totallyopaquecontent"),
               416),
    ParseError("mailto-ruri", request(ruri="mailto:bob@example.org"), 416),
    ParseError("too-large", request(extra="X-Pad: " + "p" * 2000 + "\n"), 513, max_len=1500),
    ParseError("nul-in-header", request(extra="X-Nul: a\x00b\n"), 400, "NUL"),
    ParseError("nul-in-first-line", b"OPTIONS sip:a\x00b@example.org SIP/2.0\r\n\r\n", 400),
    ParseError("content-length-too-big", crlf(
        "INVITE sip:bob@example.org SIP/2.0\n" + BASE_HEADERS + "CSeq: 1 INVITE\n"
        "Content-Length: 9999\n\nv=0\n"), 400, "Content-Length"),
    ParseError("reply-content-length-too-big", crlf(
        "SIP/2.0 200 OK\n" + BASE_HEADERS + "CSeq: 1 INVITE\nContent-Length: 10\n\nv=0\n"),
        400, "Content-Length"),
    ParseError("content-length-alpha", request(extra="").replace(
        b"Content-Length: 0", b"Content-Length: zero"), 400, "Content-Length"),
    ParseError("content-length-negative", request(extra="").replace(
        b"Content-Length: 0", b"Content-Length: -5"), 400, "Content-Length"),
    ParseError("content-length-two-values", request(extra="l: 5\n"), 400, "Content-Length"),
    ParseError("missing-empty-line", request().rstrip(b"\r\n") + b"\r\n", 400, "empty line"),
    ParseError("truncated-mid-header", request()[:60], 400),
    ParseError("line-without-colon", request(extra="This line has no colon\n"), 400,
               "header line"),
    ParseError("fold-before-first-header", crlf(
        "OPTIONS sip:bob@example.org SIP/2.0\n folded: nothing\n" + BASE_HEADERS + "\n"),
        400, "folding"),
    ParseError("double-space-request-line", request().replace(
        b"OPTIONS sip:", b"OPTIONS  sip:", 1), 400, "request line"),
    ParseError("no-version", b"OPTIONS sip:bob@example.org\r\n" + request().split(b"\r\n", 1)[1],
               400),
    ParseError("status-two-digits", crlf("SIP/2.0 20 OK\n" + BASE_HEADERS + "\n"), 400),
    ParseError("status-four-digits", crlf("SIP/2.0 2000 OK\n" + BASE_HEADERS + "\n"), 400),
    ParseError("status-099", crlf("SIP/2.0 099 Low\n" + BASE_HEADERS + "\n"), 400),
    ParseError("empty", b"", 400),
    ParseError("only-crlf", b"\r\n\r\n\r\n", 400),
    ParseError("header-name-with-space", request(extra="Bad Name: x\n"), 400, "header name"),
    ParseError("ruri-without-scheme", request(ruri="bob"), 400, "Request-URI"),
    ParseError("method-with-at", request().replace(b"OPTIONS sip", b"OPT@IONS sip", 1), 400),
    ParseError("binary-garbage", bytes(range(1, 256)) * 2, 400),
    ParseError("colon-first", request(extra=": no name\n"), 400),
]


# ---- framing fine, a value broken ------------------------------------------------------
def _swap(old: str, new: str, **kw: str) -> bytes:
    return request(**kw).replace(old.encode(), new.encode())


VIEW_ERRORS: list[ViewError] = [
    ViewError("via-no-host", _swap("SIP/2.0/UDP 192.0.2.10:5060", "SIP/2.0/UDP"), "vias", 400,
              "Via"),
    ViewError("via-big-port", _swap("192.0.2.10:5060", "192.0.2.10:99999"), "vias", 400, "Via"),
    ViewError("via-not-sip", _swap("SIP/2.0/UDP", "HTTP/1.1/TCP"), "via1", 400, "Via"),
    ViewError("via-trailing-comma", _swap("z9hG4bK-base-1", "z9hG4bK-base-1,"), "vias", 400),
    ViewError("via-junk-after", _swap("z9hG4bK-base-1", "z9hG4bK-base-1 junk"), "vias", 400),
    ViewError("cseq-alpha", request(cseq="abc OPTIONS"), "cseq", 400, "CSeq"),
    ViewError("cseq-no-method", request(cseq="1"), "cseq", 400, "CSeq"),
    ViewError("cseq-too-big", request(cseq="2147483648 OPTIONS"), "cseq", 400, "CSeq"),
    ViewError("cseq-method-mismatch", request(cseq="1 INVITE"), "validate_request", 400, "CSeq"),
    ViewError("missing-call-id", request(headers=BASE_HEADERS.replace(
        "Call-ID: base-1@192.0.2.10\n", "")), "validate_request", 400, "Missing Call-ID"),
    ViewError("missing-from", request(headers=BASE_HEADERS.replace(
        "From: <sip:alice@example.com>;tag=a1\n", "")), "validate_request", 400, "Missing From"),
    ViewError("missing-to", request(headers=BASE_HEADERS.replace(
        "To: <sip:bob@example.org>\n", "")), "to", 400, "Missing To"),
    ViewError("missing-via", request(headers=BASE_HEADERS.replace(
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-base-1\n", "")),
        "validate_request", 400, "Missing Via"),
    ViewError("missing-cseq", crlf("OPTIONS sip:bob@example.org SIP/2.0\n" + BASE_HEADERS
                                   + "\n"), "validate_request", 400, "Missing CSeq"),
    ViewError("max-forwards-alpha", _swap("Max-Forwards: 70", "Max-Forwards: seventy"),
              "max_forwards", 400, "Max-Forwards"),
    ViewError("to-unclosed", _swap("To: <sip:bob@example.org>", "To: <sip:bob@example.org"),
              "to", 400, "To"),
    ViewError("from-unterminated-quote", _swap("From: <sip", 'From: "Alice <sip'), "from_", 400,
              "From"),
    ViewError("contact-double-raquot", request(extra="Contact: <sip:a@b>>\n"), "contacts", 400,
              "Contact"),
    ViewError("contact-empty-element", request(extra="Contact: <sip:a@b>,,<sip:c@d>\n"),
              "contacts", 400, "Contact"),
    ViewError("expires-alpha", request(extra="Expires: soon\n"), "expires", 400, "Expires"),
    ViewError("content-type-no-slash", request(extra="Content-Type: sdp\n"), "content_type", 400,
              "Content-Type"),
    ViewError("bad-ruri-body", request(ruri="sip:"), "parsed_ruri", 400, "Request-URI"),
    ViewError("ruri-bad-port", request(ruri="sip:bob@example.org:70000"), "parsed_ruri", 400),
    ViewError("call-id-with-space", _swap("Call-ID: base-1@192.0.2.10", "Call-ID: a b"),
              "call_id", 400, "Call-ID"),
    ViewError("route-garbage", request(extra="Route: <sip:a;lr> <sip:b;lr>\n"), "routes", 400,
              "Route"),
    ViewError("record-route-garbage", request(extra="Record-Route: ,\n"), "record_routes", 400),
    ViewError("authorization-garbage", request(extra="Authorization: Digest username\n"),
              "authorizations", 400, "Authorization"),
    ViewError("authorization-bad-utf8", request(extra="").replace(
        b"Content-Length", b"Authorization: Digest username=\"\xff\"\r\nContent-Length"),
        "authorizations", 400),
]
