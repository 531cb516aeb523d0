"""The generator's own SIP bits: scanning replies, digest, the UAS request split."""

from __future__ import annotations

import hashlib

import pytest

from loadtest import sipmsg
from loadtest.scenarios.common import csv_users, rule_users

REPLY_401 = (b"SIP/2.0 401 Unauthorized\r\n"
             b"Via: SIP/2.0/UDP 127.0.0.1:4000;branch=z9hG4bKabcdef0000000001;rport=4000;received=127.0.0.1\r\n"
             b"From: <sip:user0001@example.net>;tag=aa\r\n"
             b"To: <sip:user0001@example.net>;tag=b27e.1\r\n"
             b"Call-ID: c1@lt\r\nCSeq: 1 REGISTER\r\n"
             b'WWW-Authenticate: Digest realm="example.net", nonce="abc123", qop="auth,auth-int", '
             b'opaque="op9"\r\nContent-Length: 0\r\n\r\n')


def test_ids_are_fixed_width_and_unique():
    ids = sipmsg.Ids(b"a1b2c3")
    keys = {ids.key() for _ in range(1000)}
    assert len(keys) == 1000
    assert {len(k) for k in keys} == {sipmsg.KEY_LEN}
    with pytest.raises(ValueError):
        sipmsg.Ids(b"short")


def test_status_branch_and_to_tag():
    assert sipmsg.status_of(REPLY_401) == 401
    assert sipmsg.status_of(b"INVITE sip:x SIP/2.0\r\n") == 0
    assert sipmsg.status_text(REPLY_401) == "401 Unauthorized"
    assert sipmsg.branch_key(REPLY_401) == b"abcdef0000000001"
    assert sipmsg.branch_key(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x;branch=other\r\n") is None
    assert sipmsg.to_tag(REPLY_401) == b"b27e.1"
    assert sipmsg.to_tag(b"SIP/2.0 100 Trying\r\nt: <sip:a@b>\r\n\r\n") is None
    assert sipmsg.to_tag(b"SIP/2.0 180 Ringing\r\nt: <sip:a@b>;TAG=x9\r\n\r\n") == b"x9"
    assert sipmsg.call_id(REPLY_401) == b"c1@lt"
    assert sipmsg.call_id(b"SIP/2.0 200 OK\r\ni:  c2@h \r\n\r\n") == b"c2@h"
    assert sipmsg.cseq(REPLY_401) == (1, b"REGISTER")


def test_route_set_and_contact_in_order():
    reply = (b"SIP/2.0 200 OK\r\nRecord-Route: <sip:p2;lr>, <sip:p3;lr>\r\n"
             b"record-route: <sip:p1;lr=on>\r\nContact: \"Bob\" <sip:bob@10.0.0.1:5062;ob>;expires=60\r\n"
             b"\r\nRecord-Route: <sip:in-the-body>")
    assert sipmsg.route_set(reply) == [b"<sip:p2;lr>", b"<sip:p3;lr>", b"<sip:p1;lr=on>"]
    assert sipmsg.contact_uri(reply) == b"sip:bob@10.0.0.1:5062;ob"
    assert sipmsg.contact_uri(b"SIP/2.0 200 OK\r\nm: sip:c@d;expires=3\r\n\r\n") == b"sip:c@d"
    assert sipmsg.contact_uri(b"SIP/2.0 200 OK\r\n\r\n") is None


def test_challenge_parsing():
    ch = sipmsg.challenge(REPLY_401, 401)
    assert ch is not None
    assert (ch.realm, ch.nonce, ch.opaque, ch.qop, ch.algorithm) == (
        b"example.net", b"abc123", b"op9", b"auth", b"MD5")
    assert sipmsg.challenge(REPLY_401, 407) is None     # no Proxy-Authenticate
    odd = b'SIP/2.0 407 Proxy Auth\r\nproxy-authenticate:DIGEST nonce=n1, realm="r", stale=TRUE\r\n\r\n'
    ch = sipmsg.challenge(odd, 407)
    assert ch is not None and (ch.nonce, ch.realm, ch.stale, ch.qop) == (b"n1", b"r", True, None)
    assert sipmsg.challenge(b"SIP/2.0 401 x\r\nWWW-Authenticate: Digest realm=\"r\"\r\n\r\n", 401) is None


def test_digest_rfc2617_example():
    # RFC 2617 section 3.5: Mufasa / "Circle Of Life"
    ch = sipmsg.Challenge(realm=b"testrealm@host.com", nonce=b"dcd98b7102dd2f0e8b11d0f600bfb0c093",
                          opaque=b"5ccc069c403ebaf9f0171e9517f40e41", algorithm=b"MD5", qop=b"auth",
                          stale=False)
    ha1 = sipmsg.ha1(b"Mufasa", ch.realm, b"Circle Of Life")
    line = sipmsg.authorization(b"Authorization", ch, b"Mufasa", ha1, b"GET", b"/dir/index.html",
                                b"0a4f113b")
    assert b'response="6629fae49393a05397450978507c4ef1"' in line
    assert b"nc=00000001" in line and b'cnonce="0a4f113b"' in line and b"qop=auth" in line
    assert b'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in line
    assert line.endswith(b"\r\n")
    # a cached HA2 gives the same answer
    again = sipmsg.authorization(b"Authorization", ch, b"Mufasa", ha1, b"GET", b"/dir/index.html",
                                 b"0a4f113b", ha2_value=sipmsg.ha2(b"GET", b"/dir/index.html"))
    assert again == line


def test_digest_without_qop_and_sha256():
    ch = sipmsg.Challenge(realm=b"r", nonce=b"n", opaque=None, algorithm=b"MD5", qop=None, stale=False)
    ha1 = hashlib.md5(b"u:r:p").hexdigest().encode()
    ha2 = hashlib.md5(b"REGISTER:sip:r").hexdigest().encode()
    want = hashlib.md5(b"%s:n:%s" % (ha1, ha2)).hexdigest().encode()
    line = sipmsg.authorization(b"Proxy-Authorization", ch, b"u", ha1, b"REGISTER", b"sip:r", b"")
    assert line.startswith(b"Proxy-Authorization: Digest ")
    assert b'response="%s"' % want in line and b"qop" not in line and b"algorithm" not in line
    ch256 = sipmsg.Challenge(realm=b"r", nonce=b"n", opaque=None, algorithm=b"SHA-256", qop=None, stale=False)
    ha1s = sipmsg.ha1(b"u", b"r", b"p", b"SHA-256")
    assert ha1s == hashlib.sha256(b"u:r:p").hexdigest().encode()
    line = sipmsg.authorization(b"Authorization", ch256, b"u", ha1s, b"REGISTER", b"sip:r", b"")
    h2 = hashlib.sha256(b"REGISTER:sip:r").hexdigest().encode()
    assert b'response="%s"' % hashlib.sha256(b"%s:n:%s" % (ha1s, h2)).hexdigest().encode() in line
    assert b"algorithm=SHA-256" in line


INVITE = (b"INVITE sip:bob@127.0.0.1:5555 SIP/2.0\r\n"
          b"Record-Route: <sip:127.0.0.1:5080;lr>\r\n"
          b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKabc\r\n"
          b"v: SIP/2.0/UDP 127.0.0.1:4000;branch=z9hG4bK123;rport=4000\r\n"
          b"MAX-FORWARDS : 69\r\nf: <sip:alice@x>;tag=1\r\nTo: <sip:bob@x>\r\n"
          b" ;p=folded\r\ni: abc@lt\r\nCSeq: 2 INVITE\r\nSubject: long\r\n folded\r\n"
          b"c: Application/SDP\r\nl: 5\r\n\r\nv=0\r\nXX")


def test_parse_request_keeps_what_a_reply_copies():
    req = sipmsg.parse_request(INVITE)
    assert req is not None
    assert (req.method, req.ruri, req.call_id, req.cseq_method) == (
        b"INVITE", b"sip:bob@127.0.0.1:5555", b"abc@lt", b"INVITE")
    assert (req.vias, req.record_routes, req.max_forwards) == (2, 1, 69)
    assert req.content_type == b"application/sdp"
    assert req.body == b"v=0\r\n"                      # Content-Length honoured
    assert req.to_line == b"To: <sip:bob@x> ;p=folded" and not req.to_has_tag
    assert [line.split(b":")[0] for line in req.copy] == [b"Record-Route", b"Via", b"v", b"f", b"i", b"CSeq"]
    out = sipmsg.reply(req, 200, b"OK", b"t9", b"Contact: <sip:bob@h>\r\n", b"v=0\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"SIP/2.0 200 OK"
    assert lines[1:7] == req.copy
    assert b"To: <sip:bob@x> ;p=folded;tag=t9" in lines
    assert b"Content-Type: application/sdp" in lines and b"Content-Length: 5" in lines
    assert body == b"v=0\r\n"
    # a To that already has a tag keeps it
    req2 = sipmsg.parse_request(INVITE.replace(b"To: <sip:bob@x>", b"To: <sip:bob@x>;tag=zz"))
    assert b";tag=t9" not in sipmsg.reply(req2, 200, b"OK", b"t9")


@pytest.mark.parametrize("junk", [b"", b"hello", b"INVITE sip:x SIP/2.0", b"SIP/2.0 200 OK\r\n\r\n",
                                  b"INVITE sip:x HTTP/1.1\r\n\r\n", b"\r\n\r\n"])
def test_parse_request_refuses_junk(junk):
    assert sipmsg.parse_request(junk) is None


def test_sdp_roundtrip():
    body = sipmsg.sdp(b"127.0.0.1", 40000, 7)
    assert sipmsg.sdp_audio(body) == ("127.0.0.1", 40000)
    assert sipmsg.sdp_audio(b"v=0\r\n") is None


def test_user_rules_and_sipp_csv(tmp_path):
    assert rule_users(2) == [(b"user0001", b"pass0001"), (b"user0002", b"pass0002")]
    assert rule_users(1, "u{n}", "{user}-x", first=7) == [(b"u7", b"u7-x")]
    path = tmp_path / "users.csv"
    path.write_text("SEQUENTIAL\n"
                    "alice;[authentication username=alice password=s3cret]\n"
                    "# a comment\n"
                    "bob;bobpass;extra\n"
                    "carol;127.0.0.1;[authentication username=carol2 password=pw]\n")
    assert csv_users(path) == [(b"alice", b"s3cret"), (b"bob", b"bobpass"), (b"carol2", b"pw")]
