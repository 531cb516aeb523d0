"""natserver.sip.digest: credentials/challenges, hashes (RFC 2617, 7616), stateless nonces."""

from __future__ import annotations

import pytest

from natserver.errors import SipError
from natserver.sip import digest as D
from natserver.sip.digest import NonceStatus

# RFC 2617 section 3.5
RFC2617_AUTH = (
    b'Digest username="Mufasa", realm="testrealm@host.com", '
    b'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
    b'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
    b'opaque="5ccc069c403ebaf9f0171e9517f40e41"')
RFC2617_CHALLENGE = (
    b'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    b'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
# RFC 7616 section 3.9.1
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def test_rfc2617_example() -> None:
    c = D.parse_credentials(RFC2617_AUTH)
    assert (c.scheme, c.username, c.realm, c.uri, c.qop, c.nc, c.cnonce) == (
        "digest", "Mufasa", "testrealm@host.com", "/dir/index.html", "auth", "00000001",
        "0a4f113b")
    assert c.algorithm == "MD5" and c.opaque == "5ccc069c403ebaf9f0171e9517f40e41"
    assert c.missing() == []
    ha1 = D.ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert D.expected_response(c, "GET", ha1) == "6629fae49393a05397450978507c4ef1"
    assert D.check_response(c, b"GET", ha1)
    assert not D.check_response(c, b"POST", ha1)
    assert not D.check_response(c, b"GET", D.ha1("Mufasa", "testrealm@host.com", "wrong"))


@pytest.mark.parametrize(("algo", "expected"), [
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
])
def test_rfc7616_example(algo: str, expected: str) -> None:
    ha1 = D.ha1("Mufasa", "http-auth@example.org", "Circle of Life", algo)
    ha2 = D.ha2("GET", "/dir/index.html", "auth", algo=algo)
    assert D.response(ha1, RFC7616_NONCE, ha2, "auth", "00000001", RFC7616_CNONCE, algo) == expected
    header = (f'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html",'
              f' algorithm={algo}, nonce="{RFC7616_NONCE}", nc=00000001, '
              f'cnonce="{RFC7616_CNONCE}", qop=auth, response="{expected.upper()}"').encode()
    c = D.parse_credentials(header)
    assert c.algorithm == algo
    assert D.check_response(c, "GET", D.ha1("Mufasa", "http-auth@example.org", "Circle of Life",
                                            algo))


def test_credentials_parsing_is_tolerant() -> None:
    c = D.parse_credentials(
        b'  dIgEsT\r\n  USERNAME = "al\\"ice" ,Realm=example.com,,  nonce="a,b"\r\n\t, '
        b'URI="sip:x@y;transport=udp",response=abc , qop="AUTH", nc=00000002, cnonce=xyz  ')
    assert (c.username, c.realm, c.nonce, c.uri, c.response) == (
        'al"ice', "example.com", "a,b", "sip:x@y;transport=udp", "abc")
    assert (c.qop, c.nc, c.cnonce) == ("auth", "00000002", "xyz")
    assert c.params["nc"] == "00000002"


def test_credentials_missing_parameters() -> None:
    c = D.parse_credentials(b'Digest username="a", realm="r", nonce="n", uri="u", qop=auth')
    assert c.missing() == ["response", "nc", "cnonce"]
    assert D.parse_credentials(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==").missing() == ["digest"]
    assert not D.check_response(c, "REGISTER", "00")


@pytest.mark.parametrize("value", [
    b"", b"Digest username", b'Digest username="x', b"Digest a=b c=d", b'Digest ="x"',
    b"Digest username=\"\xff\xfe\"", b"Digest ,",
])
def test_bad_credentials(value: bytes) -> None:
    with pytest.raises(SipError) as info:
        D.parse_credentials(value, header="Proxy-Authorization")
    assert info.value.status == 400 and "Proxy-Authorization" in info.value.reason


def test_challenge_parsing() -> None:
    ch = D.parse_challenge(RFC2617_CHALLENGE)
    assert (ch.scheme, ch.realm, ch.nonce, ch.qop, ch.stale, ch.algorithm) == (
        "digest", "testrealm@host.com", "dcd98b7102dd2f0e8b11d0f600bfb0c093", ["auth", "auth-int"],
        False, "MD5")
    ch = D.parse_challenge(b'Digest realm="r", nonce="n", stale=TRUE, algorithm=sha-256-sess')
    assert ch.stale and ch.algorithm == "SHA-256-SESS" and ch.qop == []


def test_make_challenge_exact_and_round_trip() -> None:
    assert D.make_challenge("example.com", "abc") == b'Digest realm="example.com", nonce="abc"'
    value = D.make_challenge('ex"ample', "n1", qop="auth", stale=True, algorithm="SHA-256",
                             opaque="op")
    assert value == (b'Digest realm="ex\\"ample", nonce="n1", opaque="op", algorithm=SHA-256,'
                     b' qop="auth", stale=true')
    ch = D.parse_challenge(value)
    assert (ch.realm, ch.nonce, ch.opaque, ch.algorithm, ch.qop, ch.stale) == (
        'ex"ample', "n1", "op", "SHA-256", ["auth"], True)


@pytest.mark.parametrize("algo", ["MD5", "MD5-sess", "SHA-256", "SHA-256-sess", "SHA-512-256"])
@pytest.mark.parametrize("qop", [None, "auth", "auth-int"])
def test_make_credentials_verifies(algo: str, qop: str | None) -> None:
    ch = D.parse_challenge(D.make_challenge("example.com", "nonce-1", qop=qop, algorithm=algo))
    body = b"v=0\r\n"
    value = D.make_credentials(ch, "alice", "s3cret", "INVITE", "sip:bob@example.com",
                               cnonce="cn", nc=3, body=body)
    c = D.parse_credentials(value)
    assert c.algorithm == algo.upper() and c.qop == qop
    assert c.nc == ("00000003" if qop else None)
    assert c.cnonce == ("cn" if qop or algo.endswith("-sess") else None)
    assert c.missing() == []
    stored = D.ha1("alice", "example.com", "s3cret", algo.removesuffix("-sess"))
    assert D.check_response(c, "INVITE", stored, body)
    assert not D.check_response(c, "BYE", stored, body)
    assert D.check_response(c, "INVITE", stored, b"other") is (qop != "auth-int")


def test_sess_ha1_uses_nonce_and_cnonce() -> None:
    plain = D.ha1("u", "r", "p")
    assert D.ha1("u", "r", "p", "MD5-sess", "n", "c") == D.sess_ha1(plain, "n", "c")
    assert D.sess_ha1(plain, "n", "c") != D.sess_ha1(plain, "n", "d")


def test_unsupported_algorithm() -> None:
    with pytest.raises(SipError) as info:
        D.ha1("u", "r", "p", "SHA-1")
    assert info.value.status == 400
    c = D.parse_credentials(b'Digest username="u", realm="r", nonce="n", uri="x", '
                            b'response="0", algorithm=AKAv1-MD5')
    with pytest.raises(SipError):
        D.check_response(c, "REGISTER", "00")


SECRET = b"0123456789abcdef"


def test_nonce_lifecycle() -> None:
    n = D.make_nonce(SECRET, 1_700_000_000.7, 300)
    assert len(n) == 40 and n == n.lower() and n[:8] == f"{1_700_000_300:08x}"
    assert D.check_nonce(n, SECRET, 1_700_000_000) is NonceStatus.VALID
    assert D.check_nonce(n, SECRET, 1_700_000_300) is NonceStatus.VALID
    assert D.check_nonce(n, SECRET, 1_700_000_301) is NonceStatus.STALE
    assert D.check_nonce(n, b"another secret", 1_700_000_000) is NonceStatus.INVALID
    assert D.nonce_expiry(n) == 1_700_000_300 and D.nonce_index(n) is None


def test_nonce_with_index() -> None:
    n = D.make_nonce(SECRET, 1000, 60, index=0xDEADBEEF)
    assert len(n) == 48 and D.nonce_index(n) == 0xDEADBEEF and D.nonce_expiry(n) == 1060
    assert D.check_nonce(n, SECRET, 1000) is NonceStatus.VALID
    # the index is covered by the MAC: changing it invalidates the nonce
    forged = n[:8] + "00000001" + n[16:]
    assert D.check_nonce(forged, SECRET, 1000) is NonceStatus.INVALID


@pytest.mark.parametrize("nonce", [
    "", "abc", "g" * 40, "A" * 40, "0" * 39, "0" * 41, "0" * 40, "0" * 48,
])
def test_nonce_garbage_is_invalid(nonce: str) -> None:
    assert D.check_nonce(nonce, SECRET, 0) is NonceStatus.INVALID


def test_nonce_tampered_expiry_is_invalid() -> None:
    n = D.make_nonce(SECRET, 1000, 60)
    later = f"{int(n[:8], 16) + 3600:08x}" + n[8:]
    assert D.check_nonce(later, SECRET, 1000) is NonceStatus.INVALID
