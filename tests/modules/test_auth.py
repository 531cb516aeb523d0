"""auth / auth_db / uri_db: challenges, digest checks (against an independent hashlib
implementation), stale nonces, nonce counts, check_to/check_from, on SQLite and MariaDB."""

from __future__ import annotations

import re

import pytest

from natserver.db import open_db
from natserver.sip.message import Message
from tests.helpers.regclient import (
    authorization,
    contact_values,
    ha1,
    parse_challenge,
    register,
    response,
)
from tests.helpers.sipclient import request
from tests.modules.conftest import SRC, add_user, cfg_text

C1 = "<sip:alice@192.0.2.50:5062>"


def test_rfc2617_example_with_the_test_digest():
    """The test's own digest code reproduces RFC 2617 3.5's Mufasa example."""
    key = ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert key == "939e7578ed9e3c518a452acee763bce9"
    assert response(key, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "GET", "/dir/index.html",
                    qop="auth", nc="00000001", cnonce="0a4f113b") == \
        "6629fae49393a05397450978507c4ef1"


@pytest.fixture
def url(schema_url):
    add_user(schema_url, "alice", "example.org", "secret")
    add_user(schema_url, "bob", "example.org", "bobpw")
    return schema_url


@pytest.fixture
def h(make, url):
    return make(cfg_text(url))


def challenge_of(h, user="alice", **kw):
    r = h.final(register(user, "example.org", SRC, contact=C1, **kw))
    assert r.status == 401 and r.reason == "Unauthorized"
    return r, parse_challenge(r.get("WWW-Authenticate"))


def answer(h, chal, user="alice", password="secret", *, to_user=None, nc=1, realm=None,
           username=None, algorithm=None, **kw):
    auth = authorization(chal, username or user, password, "REGISTER", "sip:example.org",
                         nc=nc, realm=realm, algorithm=algorithm)
    return h.final(register(user, "example.org", SRC, contact=C1, auth=auth,
                            to_user=to_user, **kw))


def test_challenge_is_sers(h):
    r, _ = challenge_of(h)
    [value] = r.all("WWW-Authenticate")
    assert re.fullmatch(r'Digest realm="example\.org", nonce="[0-9a-f]{40}"', value), value
    assert r.param("To", "tag")


def test_challenge_with_qop(make, url):
    h = make(cfg_text(url, qop="1"))
    r, _ = challenge_of(h)
    assert re.fullmatch(r'Digest realm="example\.org", nonce="[0-9a-f]{48}", qop="auth"',
                        r.get("WWW-Authenticate"))


@pytest.mark.parametrize("qop", ["0", "1"])
def test_correct_digest_registers(make, url, qop):
    h = make(cfg_text(url, qop=qop))
    _, chal = challenge_of(h)
    r = answer(h, chal)
    assert r.status == 200
    assert contact_values(r.get("Contact")) == [
        {"uri": "sip:alice@192.0.2.50:5062", "expires": "3600"}]


def test_wrong_password_is_challenged_again(h):
    _, chal = challenge_of(h)
    r = answer(h, chal, password="guess")
    assert r.status == 401 and "stale" not in parse_challenge(r.get("WWW-Authenticate"))
    assert h.ul.get("location", b"alice", h.now) == []


def _normalised(reply):
    return re.sub(rb'nonce="[0-9a-f]+"', b'nonce="N"', reply.raw)


@pytest.mark.parametrize("qop", ["0", "1"])
def test_unknown_user_and_wrong_password_look_the_same(make, url, qop):
    h = make(cfg_text(url, qop=qop))
    _, chal = challenge_of(h)
    same = {"call_id": "same-call", "branch": "z9hG4bKsame", "from_tag": "ft"}
    wrong = h.final(register("alice", "example.org", SRC, contact=C1, **same,
                             auth=authorization(chal, "alice", "guess", "REGISTER",
                                                "sip:example.org")))
    unknown = h.final(register("alice", "example.org", SRC, contact=C1, **same,
                               auth=authorization(chal, "mallory", "guess", "REGISTER",
                                                  "sip:example.org")))
    assert wrong.status == unknown.status == 401
    if qop == "1":
        assert wrong.raw != unknown.raw  # indexed nonces differ...
    assert _normalised(wrong) == _normalised(unknown)  # ...and nothing else does


def test_wrong_realm_is_not_used(h):
    _, chal = challenge_of(h)
    r = answer(h, chal, realm="other.org")
    assert r.status == 401


def test_forged_nonce_is_challenged(h):
    _, chal = challenge_of(h)
    chal["nonce"] = "0" * 8 + chal["nonce"][8:]  # another expiry, same signature
    assert answer(h, chal).status == 401


def test_stale_nonce_gets_stale_true(h):
    _, chal = challenge_of(h)
    h.now += 301
    r = answer(h, chal)
    assert r.status == 401
    fresh = parse_challenge(r.get("WWW-Authenticate"))
    assert fresh["stale"] == "true" and fresh["nonce"] != chal["nonce"]
    assert r.get("WWW-Authenticate").endswith(", stale=true")
    assert answer(h, fresh).status == 200
    # a wrong password with an old nonce is not "stale": the client must not retry quietly
    h.now += 301
    r = answer(h, chal, password="guess")
    assert "stale" not in parse_challenge(r.get("WWW-Authenticate"))


def test_replayed_nonce_count_is_refused(make, url):
    h = make(cfg_text(url, qop="1"))
    _, chal = challenge_of(h)
    assert answer(h, chal, nc=1).status == 200
    r = answer(h, chal, nc=1)
    assert r.status == 401 and "stale" not in parse_challenge(r.get("WWW-Authenticate"))
    assert answer(h, chal, nc=3).status == 200
    assert answer(h, chal, nc=2).status == 401
    assert answer(h, chal, nc=4).status == 200


def test_nonce_count_slot_reused_makes_the_old_nonce_stale(make, url):
    h = make(cfg_text(url, qop="1", params='modparam("auth", "nc_array_size", 16)'))
    _, first = challenge_of(h)
    for _ in range(16):  # the 17th nonce takes the first one's slot
        challenge_of(h)
    r = answer(h, first)
    assert r.status == 401 and parse_challenge(r.get("WWW-Authenticate"))["stale"] == "true"


def test_to_user_must_be_the_authenticated_user(h):
    _, chal = challenge_of(h, to_user="bob")
    r = answer(h, chal, to_user="bob")
    assert r.status == 401 and r.reason == "Unauthorized"
    assert r.get("WWW-Authenticate") is None  # the script's plain 401, after check_to
    assert h.ul.get("location", b"bob", h.now) == []


@pytest.mark.parametrize("drop", ["response", "nonce", "uri", "username"])
def test_incomplete_credentials_are_400(h, drop):
    _, chal = challenge_of(h)
    auth = authorization(chal, "alice", "secret", "REGISTER", "sip:example.org")
    auth = re.sub(rf'(, )?\b{drop}="[^"]*"(, )?', lambda m: ", " if m.group(1) and m.group(2)
                  else "", auth)
    r = h.final(register("alice", "example.org", SRC, contact=C1, auth=auth))
    assert r.status == 400


def test_unparsable_credentials_are_400(h):
    r = h.final(register("alice", "example.org", SRC, contact=C1, auth='Digest username="x'))
    assert r.status == 400


def test_sha256_and_md5_challenges(make, url):
    h = make(cfg_text(url, params='modparam("auth", "algorithm", "SHA-256,MD5")'))
    r = h.final(register("alice", "example.org", SRC, contact=C1))
    values = r.all("WWW-Authenticate")
    assert len(values) == 2
    assert values[0].endswith("algorithm=SHA-256") and values[1].endswith("algorithm=MD5")
    sha = parse_challenge(values[0])
    assert answer(h, sha).status == 200
    assert answer(h, sha, password="guess").status == 401
    assert answer(h, parse_challenge(values[1])).status == 200


def test_ha1_columns_without_calculate_ha1(make, url):
    text = cfg_text(url).replace('modparam("auth_db", "calculate_ha1", 1)\n', "").replace(
        'modparam("auth_db", "password_column", "password")\n', "")
    with open_db(url) as db:  # only the hashes: the plain password is never read
        db.update("subscriber", {"username": "alice"}, {"password": ""})
    h = make(text)
    _, chal = challenge_of(h)
    assert answer(h, chal).status == 200
    # a user@domain username is checked against ha1b
    _, chal = challenge_of(h)
    assert answer(h, chal, username="alice@example.org").status == 200
    assert answer(h, chal, username="alice@example.org", password="guess").status == 401


def test_use_domain_matches_the_realm(make, url):
    add_user(url, "carol", "other.org", "carolpw")
    h = make(cfg_text(url, params='modparam("auth_db", "use_domain", 1)'))
    _, chal = challenge_of(h, user="carol")
    assert answer(h, chal, user="carol", password="carolpw").status == 401  # not in example.org


def test_consume_credentials_removes_the_header(h):
    _, chal = challenge_of(h)
    auth = authorization(chal, "alice", "secret", "REGISTER", "sip:example.org")
    data = register("alice", "example.org", SRC, contact=C1, auth=auth,
                    headers=['Authorization: Digest username="x", realm="elsewhere", '
                             'nonce="n", uri="u", response="r"'])
    m = h.run(data)
    assert m.auth is not None and m.auth.username == "alice"
    out = Message.parse(m.get_edits().apply(data))
    assert [c.realm for c in out.authorizations()] == ["elsewhere"]


def test_database_error_is_500(h, url):
    _, chal = challenge_of(h)
    with open_db(url) as db:
        db.execute("DROP TABLE subscriber")
    replies = h.send(register("alice", "example.org", SRC, contact=C1,
                              auth=authorization(chal, "alice", "secret", "REGISTER",
                                                 "sip:example.org")))
    assert [r.first for r in replies] == ["SIP/2.0 500 Server Internal Error"]


PROXY = """
listen=127.0.0.1
port=5060
loadmodule "sl.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
loadmodule "uri_db.so"
modparam("auth_db|uri_db", "db_url", "%s")
modparam("auth_db", "calculate_ha1", 1)
modparam("auth_db", "password_column", "password")
route {
  if (!proxy_authorize("", "subscriber")) {
    proxy_challenge("", "0");
    break;
  } else if (!check_from()) {
    sl_send_reply("403", "Use From=ID");
    break;
  };
  consume_credentials();
  sl_send_reply("200", "Authorized");
}
"""


def test_proxy_authorize_and_check_from(make, url):
    h = make(PROXY % url)
    inv = request("INVITE", "sip:bob@example.org", src=SRC,
                  from_="<sip:alice@example.org>;tag=1")
    r = h.final(inv)
    assert r.status == 407 and r.reason == "Proxy Authentication Required"
    chal = parse_challenge(r.get("Proxy-Authenticate"))
    assert chal["realm"] == "example.org"  # the From host
    auth = authorization(chal, "alice", "secret", "INVITE", "sip:bob@example.org")
    ok = request("INVITE", "sip:bob@example.org", src=SRC, from_="<sip:alice@example.org>;tag=1",
                 headers=[f"Proxy-Authorization: {auth}"])
    assert h.final(ok).status == 200
    spoof = request("INVITE", "sip:bob@example.org", src=SRC, from_="<sip:bob@example.org>;tag=1",
                    headers=[f"Proxy-Authorization: {auth}"])
    r = h.final(spoof)
    assert r.status in (403, 407)  # realm = From host is still example.org: check_from says 403
    assert r.status == 403
    # ACK and CANCEL are never challenged
    ack = request("ACK", "sip:bob@example.org", src=SRC, from_="<sip:alice@example.org>;tag=1")
    assert h.run(ack).auth is None and h.ctx.modules["auth_db"].proxy_authorize(
        h.run(ack), "", "subscriber") == 1


def test_nonces_are_shared_by_hosts_with_one_secret(make, url):
    params = 'modparam("auth", "secret", "shared-by-the-cluster")'
    a = make(cfg_text(url, params=params))
    b = make(cfg_text(url, params=params))
    _, chal = challenge_of(a)
    assert answer(b, chal).status == 200
    c = make(cfg_text(url))  # a random secret of its own
    _, chal = challenge_of(a)
    assert answer(c, chal).status == 401


def test_check_to_return_codes(h):
    uri_db = h.ctx.modules["uri_db"]
    m = h.run(register("alice", "example.org", SRC, contact=C1))
    assert uri_db.check_to(m) == -2  # nothing authorized
    _, chal = challenge_of(h)
    auth = authorization(chal, "alice", "secret", "REGISTER", "sip:example.org")
    m = h.run(register("alice", "example.org", SRC, contact=C1, auth=auth, to_user="ALICE"))
    assert m.auth is not None and uri_db.check_to(m) == 1  # case-insensitive
    m.msg = Message.parse(register("alice", "example.org", SRC, to_user="alicex"))
    assert uri_db.check_to(m) == -10
