"""natserver.sip.message and natserver.sip.headers: framing, lazy views, offsets, errors."""

from __future__ import annotations

import pytest

from natserver.errors import SipError
from natserver.sip import headers as H
from natserver.sip.edits import Edits
from natserver.sip.headers import Hdr
from natserver.sip.message import Message
from tests.unit import sip_torture as T


# ---- the torture corpus -------------------------------------------------------------------
@pytest.mark.parametrize("case", T.VALID, ids=lambda c: c.name)
def test_valid_message(case: T.Valid) -> None:
    msg = Message.parse(case.data)
    case.check(msg)


@pytest.mark.parametrize("case", [c for c in T.VALID if not c.data.lstrip().startswith(b"SIP/")],
                         ids=lambda c: c.name)
def test_valid_requests_validate(case: T.Valid) -> None:
    Message.parse(case.data).validate_request()


@pytest.mark.parametrize("case", T.PARSE_ERRORS, ids=lambda c: c.name)
def test_parse_error(case: T.ParseError) -> None:
    with pytest.raises(SipError) as info:
        Message.parse(case.data, case.max_len)
    assert info.value.status == case.status
    assert case.reason_has in info.value.reason


@pytest.mark.parametrize("case", T.VIEW_ERRORS, ids=lambda c: c.name)
def test_view_error(case: T.ViewError) -> None:
    msg = Message.parse(case.data)  # the framing is fine
    with pytest.raises(SipError) as info:
        if case.view == "validate_request":
            msg.validate_request()
        elif case.view == "authorizations":
            msg.authorizations(Hdr.AUTHORIZATION)
        else:
            getattr(msg, case.view)
    assert info.value.status == case.status
    assert case.reason_has in info.value.reason


def test_corpus_is_large_enough() -> None:
    assert len(T.VALID) + len(T.PARSE_ERRORS) + len(T.VIEW_ERRORS) >= 60


# ---- framing -----------------------------------------------------------------------------
INVITE = T.crlf(
    "INVITE sip:bob@example.org;transport=udp SIP/2.0\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-1;rport\n"
    "Max-Forwards: 70\n"
    "From: \"Alice\" <sip:alice@example.com>;tag=a1\n"
    "To: <sip:bob@example.org>\n"
    "Call-ID: c1@192.0.2.10\n"
    "CSeq: 7 INVITE\n"
    "Contact: <sip:alice@192.168.1.10:5062;transport=udp>;expires=60\n"
    "Content-Type: application/sdp\n"
    "Content-Length: 10\n"
    "\n"
    "v=0\no=x\n")


def test_first_line_and_offsets() -> None:
    m = Message.parse(INVITE)
    assert m.is_request and m.method == b"INVITE" and m.status == 0 and m.reason == b""
    assert m.ruri == b"sip:bob@example.org;transport=udp"
    assert m.buf[m.ruri_start:m.ruri_end] == m.ruri
    assert m.buf[:m.first_line_end].endswith(b"SIP/2.0\r\n")
    assert m.buf[m.headers_end:m.body_start] == b"\r\n"
    assert m.buf[m.headers_end - 2:m.headers_end] == b"\r\n"
    assert m.body == b"v=0\r\no=x\r\n" and m.body_end == len(INVITE)
    assert m.content_length == 10


def test_reply_first_line() -> None:
    m = Message.parse(T.crlf("SIP/2.0 404 Not Found Here\n" + T.BASE_HEADERS
                             + "CSeq: 1 INVITE\n\n"))
    assert not m.is_request and m.status == 404 and m.reason == b"Not Found Here"
    assert m.method == b"" and m.ruri == b""


def test_parse_is_lazy_and_views_are_cached() -> None:
    m = Message.parse(INVITE)
    assert m._fields == {}
    assert not {"vias", "via1", "to", "from_", "cseq", "contacts", "hdrs"} & set(vars(m))
    to = m.to
    assert m.to is to
    assert m.via1 is m.via1
    assert m.get(Hdr.TO) is m.get(Hdr.TO)
    assert len(m._fields) == 1


def test_header_field_spans() -> None:
    m = Message.parse(INVITE)
    f = m.get(Hdr.CONTACT)
    assert f is not None and f.hdr == Hdr.CONTACT and f.name == b"Contact"
    assert m.buf[f.start:f.end] == (b"Contact: <sip:alice@192.168.1.10:5062;transport=udp>"
                                    b";expires=60\r\n")
    assert m.buf[f.vstart:f.vend] == f.value == (b"<sip:alice@192.168.1.10:5062;transport=udp>"
                                                 b";expires=60")


def test_folded_value_unfolds_but_keeps_offsets() -> None:
    m = Message.parse(T.request(extra="Subject: one\n\t two  \n   three\n"))
    f = m.get(Hdr.SUBJECT)
    assert f.value == b"one two three"
    assert m.buf[f.start:f.end] == b"Subject: one\r\n\t two  \r\n   three\r\n"
    assert m.buf[f.vend - 5:f.vend] == b"three"


def test_rows_cover_every_header_line() -> None:
    m = Message.parse(INVITE)
    assert [r[0] for r in m.rows] == [Hdr.VIA, Hdr.MAX_FORWARDS, Hdr.FROM, Hdr.TO, Hdr.CALL_ID,
                                      Hdr.CSEQ, Hdr.CONTACT, Hdr.CONTENT_TYPE,
                                      Hdr.CONTENT_LENGTH]
    assert m.rows[0][1] == m.first_line_end and m.rows[-1][3] == m.headers_end
    for a, b in zip(m.rows, m.rows[1:]):
        assert a[3] == b[1]
        assert m.buf[a[2]] == ord(":")


def test_get_find_and_compact_forms() -> None:
    m = Message.parse(T.request(extra="v: SIP/2.0/UDP 192.0.2.11;branch=z9hG4bK2\n"
                                      "X-Foo: 1\nx-foo: 2\nX-Bar: 3\n"))
    assert m.find("v") is m.get(Hdr.VIA)
    assert m.find(b"VIA") is m.get(Hdr.VIA)
    assert len(m.get_all(Hdr.VIA)) == len(m.find_all("via")) == 2
    assert m.find("x-FOO").value == b"1"
    assert [f.value for f in m.find_all("X-Foo")] == [b"1", b"2"]
    assert m.find("X-Missing") is None and m.get(Hdr.ROUTE) is None
    assert m.get_all(Hdr.ROUTE) == []
    assert [v.branch for v in m.vias] == ["z9hG4bK-base-1", "z9hG4bK2"]


def test_absent_optional_views() -> None:
    m = Message.parse(T.crlf("OPTIONS sip:a@b SIP/2.0\n" + T.BASE_HEADERS.replace(
        "Max-Forwards: 70\n", "") + "CSeq: 1 OPTIONS\n\n"))
    assert m.max_forwards is None and m.expires is None and m.content_type is None
    assert m.content_length is None and m.body == b""
    assert m.contacts.star is False and m.contacts.items == []
    assert m.routes == [] and m.record_routes == [] and m.paths == []
    assert m.authorizations(Hdr.PROXY_AUTHORIZATION) == []


def test_via_fields() -> None:
    m = Message.parse(T.request(headers=(
        "Via: SIP/2.0/udp Host.Example.COM:5070 ; branch=z9hG4bKx ;rport=1234 ;received=1.2.3.4"
        " ;maddr=224.0.0.1;ttl=1\n"
        "Via: SIP/2.0/UDP 192.0.2.1;rport\n"
        "From: <sip:a@b>;tag=1\nTo: <sip:c@d>\nCall-ID: v@h\n")))
    v = m.via1
    assert (v.transport, v.host, v.port) == ("UDP", "host.example.com", 5070)
    assert (v.branch, v.rport, v.received, v.maddr) == ("z9hG4bKx", "1234", "1.2.3.4", "224.0.0.1")
    assert v.params["ttl"] == "1"
    assert m.buf[v.start:v.end].startswith(b"SIP/2.0/udp") and m.buf[v.end - 5:v.end] == b"ttl=1"
    assert v.params_end == v.end
    assert {k: m.buf[s:e] for k, (s, e) in v.spans.items()}["received"] == b";received=1.2.3.4"
    assert m.vias[1].rport == "" and m.vias[1].port is None and m.vias[1].sent_by() == (
        "192.0.2.1", 5060)


def test_via1_parses_only_the_first_row() -> None:
    m = Message.parse(T.request(extra="Via: this is not a via\n"))
    assert m.via1.branch == "z9hG4bK-base-1"
    with pytest.raises(SipError):
        m.vias


def test_name_addr_spans_for_edits() -> None:
    m = Message.parse(INVITE)
    c = m.contacts.items[0]
    assert m.buf[c.uri_start:c.uri_end] == c.uri_text == b"sip:alice@192.168.1.10:5062;transport=udp"
    assert m.buf[c.start:c.end] == b"<sip:alice@192.168.1.10:5062;transport=udp>;expires=60"
    assert c.expires == 60 and c.params_end == c.end
    u = c.uri
    e = Edits()
    e.replace(c.uri_start + u.host_start, c.uri_start + u.hostport_end, b"203.0.113.7:40312")
    out = e.apply(m.buf)
    assert b"Contact: <sip:alice@203.0.113.7:40312;transport=udp>;expires=60\r\n" in out
    assert len(out) == len(m.buf) + len(b"203.0.113.7:40312") - len(b"192.168.1.10:5062")
    f = m.from_
    assert m.buf[f.start:f.end] == b"\"Alice\" <sip:alice@example.com>;tag=a1"
    assert {k: m.buf[s:e] for k, (s, e) in f.spans.items()} == {"tag": b";tag=a1"}


def test_name_addr_without_brackets_takes_params_as_header_params() -> None:
    m = Message.parse(T.request(extra="Contact: sip:a@192.0.2.1;expires=5;q=0.1\n"))
    c = m.contacts.items[0]
    assert c.uri_text == b"sip:a@192.0.2.1" and c.params == {"expires": "5", "q": "0.1"}
    assert c.display is None


def test_contact_star_mixed_with_others_is_reported_not_refused() -> None:
    m = Message.parse(T.request("REGISTER", "sip:example.com", "Contact: *, <sip:a@b>\n"))
    assert m.contacts.star and [c.uri_text for c in m.contacts.items] == [b"sip:a@b"]


def test_contacts_over_several_rows() -> None:
    m = Message.parse(T.request(extra="Contact: <sip:a@h1>, <sip:b@h2>\nm: <sip:c@h3>\n"))
    assert [c.uri.user for c in m.contacts.items] == ["a", "b", "c"]


def test_bad_header_value_error_is_not_cached() -> None:
    m = Message.parse(T.request(cseq="x OPTIONS"))
    for _ in range(2):
        with pytest.raises(SipError):
            m.cseq
    assert m.call_id == b"base-1@192.0.2.10"  # other views unaffected


def test_content_length_zero_with_trailing_bytes() -> None:
    m = Message.parse(T.request() + b"junk")
    assert m.body == b"" and m.body_end == m.body_start


def test_max_len_boundary() -> None:
    data = T.request()
    assert Message.parse(data, len(data)).method == b"OPTIONS"
    with pytest.raises(SipError) as info:
        Message.parse(data, len(data) - 1)
    assert (info.value.status, info.value.reason) == (513, "Message Too Large")


def test_parsed_ruri_and_unsupported_header_uri() -> None:
    m = Message.parse(T.request("INVITE", "sip:bob@Example.ORG:5080;user=phone",
                                extra="Contact: <mailto:bob@example.org>\n"))
    assert m.parsed_ruri.host_port() == ("example.org", 5080)
    assert m.parsed_ruri.params == {"user": "phone"}
    c = m.contacts.items[0]
    assert c.uri_text == b"mailto:bob@example.org"  # text and params work...
    with pytest.raises(SipError) as info:  # ...but the URI is not one we route
        c.uri
    assert info.value.status == 416


def test_parsed_dispatch_by_table_kind() -> None:
    m = Message.parse(T.request(extra=(
        "Require: 100rel, Timer\nUser-Agent: x\n y\nMin-Expires: 60\n"
        "WWW-Authenticate: Digest realm=\"r\", nonce=\"n\", qop=\"auth,auth-int\"\n")))
    assert m.parsed(m.get(Hdr.REQUIRE)) == ["100rel", "timer"]
    assert m.parsed(m.get(Hdr.USER_AGENT)) == b"x y"
    assert m.parsed(m.get(Hdr.MIN_EXPIRES)) == 60
    assert m.parsed(m.get(Hdr.CSEQ)).num == 1
    assert m.parsed(m.get(Hdr.VIA))[0].branch == "z9hG4bK-base-1"
    assert m.parsed(m.get(Hdr.TO)).uri.user == "bob"
    assert m.parsed(m.get(Hdr.WWW_AUTHENTICATE)).qop == ["auth", "auth-int"]
    assert m.challenges(Hdr.WWW_AUTHENTICATE)[0].realm == "r"
    assert m.min_expires == 60
    assert m.tokens(Hdr.REQUIRE) == ["100rel", "timer"]


def test_authorizations_refuse_other_headers() -> None:
    with pytest.raises(ValueError):
        Message.parse(T.request()).authorizations(Hdr.VIA)
    with pytest.raises(ValueError):
        Message.parse(T.request()).challenges(Hdr.AUTHORIZATION)


def test_bytearray_and_memoryview_input() -> None:
    for data in (bytearray(INVITE), memoryview(INVITE)):
        m = Message.parse(data)  # type: ignore[arg-type]
        assert type(m.buf) is bytes and m.via1.branch == "z9hG4bK-1" and m.to.uri.user == "bob"


@pytest.mark.parametrize("line", [b"x" * 60000, b"a" * 30000 + b" " * 30000])
def test_huge_colon_less_line_is_refused(line: bytes) -> None:
    """Regression: the header scan was quadratic on a line without a colon (28 s for this
    datagram); it must now answer 400 at once."""
    data = T.request(extra="X: y\n").replace(b"X: y", line)
    with pytest.raises(SipError) as info:
        Message.parse(data, 70000)
    assert info.value.status == 400 and "header line" in info.value.reason


def test_unfold_is_linear_and_exact() -> None:
    assert H.unfold(b"a \t\r\n\t b\r\n c") == b"a b c"
    assert H.unfold(b"a\n b") == b"a b" and H.unfold(b"plain  value") == b"plain  value"
    value = b"a" + b" " * 60000 + b"x\r\n b"  # took 37 s with the old regex
    assert H.unfold(value) == value.replace(b"\r\n b", b" b")


def test_name_addrs_of_any_header() -> None:
    m = Message.parse(T.request(extra="Path: <sip:p1@a;lr>, <sip:p2@b;lr>\nRefer-To: <sip:c@d>\n"))
    assert [p.uri.user for p in m.name_addrs(Hdr.PATH)] == ["p1", "p2"]
    assert m.name_addrs(Hdr.REFER_TO)[0].uri.host == "d"


def test_repr_does_not_raise() -> None:
    assert "INVITE" in repr(Message.parse(INVITE))
    assert "404" in repr(Message.parse(T.crlf("SIP/2.0 404 Nope\n" + T.BASE_HEADERS + "\n")))


# ---- the header table --------------------------------------------------------------------
BRIEF_HEADERS = (
    "Via v", "From f", "To t", "Call-ID i", "CSeq", "Contact m", "Max-Forwards",
    "Content-Length l", "Content-Type c", "Route", "Record-Route", "Expires", "Authorization",
    "Proxy-Authorization", "WWW-Authenticate", "Proxy-Authenticate", "User-Agent", "Server",
    "Supported k", "Require", "Proxy-Require", "Unsupported", "Allow", "Event o", "Subject s",
    "Content-Encoding e", "Refer-To r", "Referred-By b", "Allow-Events u", "Session-Expires x",
    "Reject-Contact j", "Accept-Contact a", "Request-Disposition d", "Identity y",
    "Identity-Info n", "Min-Expires", "Retry-After", "Path", "P-Registrar-Error", "Date",
    "Timestamp", "Organization", "Priority", "Accept", "Accept-Encoding", "Accept-Language",
    "Alert-Info", "Call-Info", "Error-Info", "In-Reply-To", "MIME-Version", "Reply-To",
    "Warning",
)


@pytest.mark.parametrize("row", BRIEF_HEADERS)
def test_header_table(row: str) -> None:
    name, _, compact = row.partition(" ")
    h = H.lookup(name.encode())
    assert h != Hdr.OTHER and h.name == name.upper().replace("-", "_")
    assert H.LONG_NAMES[h] == name.encode()
    assert H.lookup(name.lower().encode()) is h and H.lookup(name.upper().encode()) is h
    assert H.lookup(b"".join(bytes([c ^ 32]) if 65 <= c | 32 <= 122 else bytes([c])
                             for c in name.encode())) is h  # swapped case
    if compact:
        assert H.COMPACT[h] == compact.encode()
        assert H.lookup(compact.encode()) is h and H.lookup(compact.upper().encode()) is h


def test_header_table_list_flags() -> None:
    assert H.IS_LIST[Hdr.VIA] and H.IS_LIST[Hdr.CONTACT] and H.IS_LIST[Hdr.ROUTE]
    for h in (Hdr.AUTHORIZATION, Hdr.PROXY_AUTHORIZATION, Hdr.WWW_AUTHENTICATE,
              Hdr.PROXY_AUTHENTICATE, Hdr.CALL_ID, Hdr.CSEQ):
        assert not H.IS_LIST[h]
    assert H.lookup(b"X-Unknown") is Hdr.OTHER
    assert len(set(H.NAMES.values())) == len(H.HEADERS) == len(Hdr) - 1
