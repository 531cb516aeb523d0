"""natserver.sip.uri: parsing, formatting, host:port rewriting, RFC 3261 19.1.4 comparison."""

from __future__ import annotations

import pytest

from natserver.errors import SipError
from natserver.sip.uri import parse_uri, replace_host_port, uri_equal


def test_full_sip_uri() -> None:
    u = parse_uri(b"sip:alice:secret@Atlanta.Example.COM:5070;transport=TCP;lr;Maddr=1.2.3.4"
                  b"?subject=project%20x&priority=urgent")
    assert (u.scheme, u.user, u.password) == ("sip", "alice", "secret")
    assert (u.host, u.port) == ("atlanta.example.com", 5070)
    assert u.params == {"transport": "TCP", "lr": None, "maddr": "1.2.3.4"}
    assert u.headers == {"subject": "project%20x", "priority": "urgent"}
    assert u.transport == "tcp"
    assert u.raw[u.host_start:u.hostport_end] == b"Atlanta.Example.COM:5070"


def test_minimal_and_scheme_case() -> None:
    u = parse_uri(b"SIP:example.com")
    assert (u.scheme, u.user, u.host, u.port, u.params, u.headers) == (
        "sip", None, "example.com", None, {}, {})
    assert u.host_port() == ("example.com", 5060)
    assert u.transport == "udp"


def test_sips_default_port_and_transport() -> None:
    u = parse_uri(b"sips:bob@example.org")
    assert u.host_port() == ("example.org", 5061) and u.transport == "tls"


def test_escaped_user_kept_raw() -> None:
    u = parse_uri(b"sip:%61lice%20smith@example.com")
    assert u.user == "%61lice%20smith"
    assert u.user_unescaped == "alice smith"


def test_user_with_reserved_characters() -> None:
    u = parse_uri(b"sip:+1-212-555-1212;phone-context=example.com@gw.example.com;user=phone")
    assert u.user == "+1-212-555-1212;phone-context=example.com"
    assert u.host == "gw.example.com" and u.params == {"user": "phone"}


def test_ipv6_reference() -> None:
    u = parse_uri(b"sip:alice@[2001:DB8::1]:5062;transport=udp")
    assert (u.host, u.port) == ("2001:db8::1", 5062)
    assert u.format() == b"sip:alice@[2001:db8::1]:5062;transport=udp"
    assert parse_uri(b"sip:[::1]").host_port() == ("::1", 5060)


def test_tel_uri() -> None:
    u = parse_uri(b"tel:+358-555-1234567;postd=pp22")
    assert (u.scheme, u.user, u.host, u.params) == ("tel", "+358-555-1234567", "", {"postd": "pp22"})
    assert u.format() == b"tel:+358-555-1234567;postd=pp22"


@pytest.mark.parametrize("text", [
    b"sip:alice@example.com",
    b"sip:alice:pw@example.com:5060;transport=udp;lr?h=v",
    b"sips:example.com;maddr=239.255.255.1;ttl=15",
    b"sip:[2001:db8::1]:5060",
])
def test_format_round_trip(text: bytes) -> None:
    assert parse_uri(text).format() == text
    assert parse_uri(parse_uri(text).format()) == parse_uri(text)


@pytest.mark.parametrize("text", [
    b"mailto:bob@example.org", b"http://example.com/", b"urn:uuid:1234", b"im:a@b"])
def test_unsupported_scheme_is_416(text: bytes) -> None:
    with pytest.raises(SipError) as info:
        parse_uri(text)
    assert info.value.status == 416


@pytest.mark.parametrize("text", [
    b"", b"sip", b"sip:", b"sip:@", b"sip:alice@", b"sip:alice@example.com:99999",
    b"sip:alice@exa mple.com", b"sip:alice@example.com:port", b"sip:alice@[::1",
    b"sip:a<b@example.com", b"sip:alice@example.com;=x", b"tel:", b":nothing",
    b"sip:alice@ex\x00ample.com", b"sip:user@host@host",
])
def test_bad_uri_is_400(text: bytes) -> None:
    with pytest.raises(SipError) as info:
        parse_uri(text)
    assert info.value.status == 400


def test_replace_host_port_keeps_user_and_params() -> None:
    assert replace_host_port(b"sip:alice@192.168.1.10:5062;transport=udp", "203.0.113.7",
                             40312) == b"sip:alice@203.0.113.7:40312;transport=udp"
    assert replace_host_port(b"sip:%61lice@10.0.0.1;ob?x=y", "203.0.113.7", 5060) == (
        b"sip:%61lice@203.0.113.7:5060;ob?x=y")
    assert replace_host_port(b"sip:10.0.0.1", "2001:db8::7", 7000) == b"sip:[2001:db8::7]:7000"
    with pytest.raises(SipError):
        replace_host_port(b"tel:+1234", "1.2.3.4", 5)


# RFC 3261 19.1.4: these pairs are equivalent...
EQUAL = [
    (b"sip:%61lice@atlanta.com;transport=TCP", b"sip:alice@AtLanTa.CoM;Transport=tcp"),
    (b"sip:carol@chicago.com", b"sip:carol@chicago.com;newparam=5"),
    (b"sip:carol@chicago.com", b"sip:carol@chicago.com;security=on"),
    (b"sip:carol@chicago.com;newparam=5", b"sip:carol@chicago.com;security=on"),
    (b"sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
     b"sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
    (b"sip:alice@atlanta.com?subject=project%20x&priority=urgent",
     b"sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
    (b"sip:a@[2001:db8::1]", b"sip:a@[2001:DB8:0:0::1]"),
    (b"tel:+1-201-555-0123", b"tel:+1.201.555.0123"),
]
# ...and these are not.
NOT_EQUAL = [
    (b"SIP:ALICE@AtLanTa.CoM;Transport=udp", b"sip:alice@AtLanTa.CoM;Transport=UDP"),
    (b"sip:bob@biloxi.com", b"sip:bob@biloxi.com:5060"),
    (b"sip:bob@biloxi.com", b"sip:bob@biloxi.com;transport=udp"),
    (b"sip:bob@biloxi.com", b"sip:bob@biloxi.com:6000;transport=tcp"),
    (b"sip:carol@chicago.com", b"sip:carol@chicago.com?Subject=next%20meeting"),
    (b"sip:bob@phone21.boxesbybob.com", b"sip:bob@192.0.2.4"),
    (b"sip:carol@chicago.com;security=on", b"sip:carol@chicago.com;security=off"),
    (b"sip:alice@atlanta.com", b"sips:alice@atlanta.com"),
    (b"sip:alice:pw@atlanta.com", b"sip:alice@atlanta.com"),
    (b"sip:alice@atlanta.com", b"mailto:alice@atlanta.com"),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_uri_equal(a: bytes, b: bytes) -> None:
    assert uri_equal(a, b) and uri_equal(b, a)
    assert uri_equal(parse_uri(a), b)


@pytest.mark.parametrize(("a", "b"), NOT_EQUAL)
def test_uri_not_equal(a: bytes, b: bytes) -> None:
    assert not uri_equal(a, b) and not uri_equal(b, a)
