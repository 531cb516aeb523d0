"""REGISTER over real UDP against the real server (in a loopback-only netns), with the
seed's route[2] taken verbatim from the seed cfg; digests computed by the test's own
hashlib code (tests/helpers/regclient.py). On SQLite and on MariaDB (reached over its
unix socket, which the namespace does not hide).

While natserver has no nathelper module, route[2] runs without its
``nat_uac_test``/``fix_nated_register`` block; once nathelper exists the block stays in
(from 127.0.0.1 nothing looks NATed, so the flows are the same).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from natserver.modules import find
from tests.helpers.mariadb import mariadb_server  # noqa: F401 - fixture
from tests.helpers.procs import NatServer, Netns, ctl, need_root
from tests.helpers.regclient import authorization, contact_values, parse_challenge, register
from tests.helpers.sipclient import Endpoint

SEED = Path("/work/shared/seed/ser.cfg")
DOMAIN = "example.org"
NONCE_EXPIRE = 2


def seed_route2() -> str:
    """route[2] of the seed cfg, as written (minus nathelper's block while it is missing)."""
    text = SEED.read_text()
    start = text.index("route[2] {")
    end = text.index("route[3] {")
    block = text[start:end].rstrip()
    if find("nathelper") is None:
        block, n = re.subn(r'\n\s*if \(!search\("\^Contact:\[ \]\*\\\*"\) && nat_uac_test\("19"\)\)'
                           r' \{ #17\n.*?\n\s*\};\n', "\n", block, flags=re.S)
        assert n == 1, block
    return block


def cfg(url: str, fifo: str, *, extra: str = "", route2: str | None = None) -> str:
    nathelper = 'loadmodule "nathelper.so"\nmodparam("nathelper", "rtpproxy_sock", "")\n' \
        if find("nathelper") is not None else ""
    return f"""
debug=3
fork=no
log_stderror=yes
listen=127.0.0.1
port=0
children=2
fifo="{fifo}"
loadmodule "mysql.so"
loadmodule "sl.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
loadmodule "uri.so"
loadmodule "uri_db.so"
loadmodule "textops.so"
{nathelper}
modparam("auth_db|uri_db|usrloc", "db_url", "{url}")
modparam("auth_db", "calculate_ha1", 1)
modparam("auth_db", "password_column", "password")
modparam("usrloc", "db_mode", 2)
modparam("registrar", "nat_flag", 6)
modparam("auth", "nonce_expire", {NONCE_EXPIRE})
modparam("registrar", "min_expires", 2)
{extra}
route {{
  if (method=="REGISTER") {{
    route(2);
    break;
  }};
  sl_send_reply("404", "Not Here");
}}

{route2 if route2 is not None else seed_route2()}
"""


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def backend(request, tmp_path_factory):
    """(db_url, directory) for one backend, with the schema and three subscribers made
    by natserverctl itself."""
    need_root()
    tmp = tmp_path_factory.mktemp("reg")
    if request.param == "sqlite":
        url = f"sqlite://{tmp}/natserver.db"
    else:
        server = request.getfixturevalue("mariadb_server")
        url = server.url(server.create_database(), unix=True)
    ctl("--db", url, "db", "init")
    for user, pw in (("alice", "wonderland"), ("bob", "builder"), ("carol", "xmas"),
                     ("dave", "d4ve"), ("erin", "erinpw")):
        ctl("--db", url, "add", f"{user}@{DOMAIN}", pw)
    return url, tmp


def _start(url: str, tmp: Path, name: str, **kw) -> tuple[NatServer, Netns]:
    ns = Netns()
    srv = NatServer(ns, cfg(url, str(tmp / f"{name}.fifo"), **kw), tmp, name=f"{name}.cfg")
    try:
        srv.wait_ready()
    except BaseException:
        ns.destroy()
        raise
    return srv, ns


@pytest.fixture(scope="module")
def server(backend):
    url, tmp = backend
    srv, ns = _start(url, tmp, "seed")
    yield srv
    srv.stop()
    ns.destroy()


@pytest.fixture(scope="module")
def server_rfc(backend):
    """The same route[2] with qop "1" (nonce counts) and RFC 3261's 423."""
    url, tmp = backend
    route2 = seed_route2().replace('www_challenge("","0")', 'www_challenge("","1")')
    assert 'www_challenge("","1")' in route2
    srv, ns = _start(url, tmp, "rfc", route2=route2,
                     extra='modparam("registrar", "min_expires_mode", 1)\n'
                           'modparam("registrar", "min_expires", 60)')
    yield srv
    srv.stop()
    ns.destroy()


class Ua:
    """A UA in the server's namespace."""

    def __init__(self, srv: NatServer) -> None:
        self.srv = srv
        self.ep = Endpoint(srv.ns.socket())
        self.cseq = 0
        self.call_id = f"reg-{time.monotonic_ns()}"

    @property
    def contact(self) -> str:
        return f"<sip:{{}}@127.0.0.1:{self.ep.addr[1]}>"

    def final(self, user: str, **kw) -> object:
        """Send and return the first final reply (the seed sends 100 Trying first)."""
        self.cseq += 1
        contact = kw.pop("contact", "")
        if contact == "":
            contact = self.contact.format(user)
        self.ep.send(register(user, DOMAIN, self.ep.addr, contact=contact,
                              call_id=self.call_id, cseq=self.cseq, **kw), self.srv.addr)
        while True:
            msg = self.ep.expect(3)
            if msg.status >= 200:
                return msg
            assert msg.status == 100 and msg.reason == "Trying"

    def challenge(self, user: str, **kw) -> dict[str, str]:
        r = self.final(user, **kw)
        assert r.status == 401, r.first
        return parse_challenge(r.get("WWW-Authenticate"))

    def login(self, user: str, password: str, *, chal: dict[str, str] | None = None,
              nc: int = 1, realm: str | None = None, **kw) -> object:
        chal = chal or self.challenge(user, **{k: v for k, v in kw.items() if k != "to_user"})
        auth = authorization(chal, user, password, "REGISTER", f"sip:{DOMAIN}", nc=nc,
                             realm=realm)
        return self.final(user, auth=auth, **kw)

    def close(self) -> None:
        self.ep.close()


@pytest.fixture
def ua(server):
    u = Ua(server)
    yield u
    u.close()


@pytest.fixture
def ua_rfc(server_rfc):
    u = Ua(server_rfc)
    yield u
    u.close()


def test_challenge(ua):
    r = ua.final("alice")
    assert r.status == 401 and r.reason == "Unauthorized"
    [value] = r.all("WWW-Authenticate")
    assert re.fullmatch(r'Digest realm="example\.org", nonce="[0-9a-f]{40}"', value), value
    assert r.param("Via", "rport") == str(ua.ep.addr[1])


def test_digest_registers_and_lists_the_binding(ua):
    r = ua.login("alice", "wonderland", expires=300)
    assert r.status == 200
    assert contact_values(r.get("Contact")) == [
        {"uri": f"sip:alice@127.0.0.1:{ua.ep.addr[1]}", "expires": "300"}]
    rows = ua.srv.ctl_json("ul", "show", "alice")
    # natserverctl starts a Python process: a second or two may pass before it asks
    assert [(row["contact"], 290 <= row["expires"] <= 300) for row in rows] == [
        (f"sip:alice@127.0.0.1:{ua.ep.addr[1]}", True)]


def test_wrong_password_and_unknown_user_look_the_same(ua):
    chal = ua.challenge("bob")
    replies = []
    for user, pw in (("bob", "guess"), ("mallory", "guess")):
        auth = authorization(chal, user, pw, "REGISTER", f"sip:{DOMAIN}")
        ua.ep.send(register("bob", DOMAIN, ua.ep.addr, contact=ua.contact.format("bob"),
                            auth=auth, call_id="same", cseq=7, branch="z9hG4bKsame",
                            from_tag="tag1"), ua.srv.addr)
        assert ua.ep.expect(3).status == 100
        raw = ua.ep.recv_raw(3)
        assert raw is not None
        replies.append(re.sub(rb'nonce="[0-9a-f]+"', b'nonce="N"', raw[0]))
    assert replies[0].startswith(b"SIP/2.0 401 Unauthorized\r\n")
    assert replies[0] == replies[1]


def test_wrong_realm(ua):
    chal = ua.challenge("carol")
    assert ua.login("carol", "xmas", chal=chal, realm="elsewhere.org").status == 401
    assert ua.login("carol", "xmas", chal=chal).status == 200


def test_stale_nonce(ua):
    chal = ua.challenge("dave")
    time.sleep(NONCE_EXPIRE + 1.1)
    r = ua.login("dave", "d4ve", chal=chal)
    assert r.status == 401
    fresh = parse_challenge(r.get("WWW-Authenticate"))
    assert fresh["stale"] == "true"
    assert ua.login("dave", "d4ve", chal=fresh).status == 200


def test_to_user_must_be_the_auth_user(ua):
    r = ua.login("erin", "erinpw", to_user="alice")
    assert r.status == 401 and r.get("WWW-Authenticate") is None


def test_star_unregisters(ua):
    assert ua.login("bob", "builder", expires=600).status == 200
    r = ua.login("bob", "builder", contact="*", expires=0)
    assert r.status == 200 and r.get("Contact") is None
    r = ua.login("bob", "builder", contact=None)
    assert r.status == 200 and r.get("Contact") is None


def test_min_expires_raised_and_binding_expires(ua):
    mine = f"sip:carol@127.0.0.1:{ua.ep.addr[1]}"
    r = ua.login("carol", "xmas", expires=1)
    assert {b["uri"]: b["expires"] for b in contact_values(r.get("Contact"))}[mine] == "2"
    time.sleep(2.2)
    r = ua.login("carol", "xmas", contact=None)
    assert r.status == 200
    assert mine not in [b["uri"] for b in contact_values(r.get("Contact"))]


def test_min_expires_mode_423(ua_rfc):
    r = ua_rfc.login("erin", "erinpw", expires=30)
    assert r.status == 423 and r.get("Min-Expires") == "60"


def test_replayed_nonce_count(ua_rfc):
    chal = ua_rfc.challenge("alice")
    assert chal["qop"] == "auth"
    assert ua_rfc.login("alice", "wonderland", chal=chal, nc=1).status == 200
    assert ua_rfc.login("alice", "wonderland", chal=chal, nc=1).status == 401
    assert ua_rfc.login("alice", "wonderland", chal=chal, nc=2).status == 200


def test_ctl_ul_rm_and_alias_add_reach_the_running_server(ua, backend):
    url, _ = backend
    assert ua.login("erin", "erinpw", expires=600).status == 200
    srv = ua.srv
    assert [row["aor"] for row in srv.ctl_json("ul", "show", "erin")] == ["erin"]
    assert srv.ctl_json("ul", "rm", "erin") == {"aor": "erin", "removed": 1}
    r = ua.login("erin", "erinpw", contact=None)
    assert r.status == 200 and r.get("Contact") is None
    assert srv.ctl("ul", "rm", "erin", check=False).returncode == 1
    added = srv.ctl_json("alias", "add", "helpdesk@example.org", "sip:erin@example.org")
    assert added["server_updated"] is True
    [row] = srv.ctl_json("ul", "show", "aliases", "helpdesk")
    assert (row["contact"], row["expires"]) == ("sip:erin@example.org", "permanent")
    assert srv.ctl_json("alias", "rm", "helpdesk@example.org")["server_updated"] is True
    assert srv.ctl("ul", "show", "aliases", "helpdesk", check=False).returncode == 1


@pytest.mark.skipif(find("nathelper") is None, reason="no nathelper module yet")
def test_nated_client_gets_its_public_address_stored(ua):
    """route[2]'s NAT block: a private Via/Contact seen from another address sets flag 6,
    fix_nated_register() stores the source as received, save() the NAT mark."""
    private = "<sip:alice@192.168.1.10:5060>"
    r = ua.login("alice", "wonderland", contact=private, via_host="192.168.1.10:5060",
                 expires=600)
    assert r.status == 200
    public = f"sip:127.0.0.1:{ua.ep.addr[1]}"
    by_uri = {b["uri"]: b for b in contact_values(r.get("Contact"))}
    binding = by_uri["sip:alice@192.168.1.10:5060"]
    assert binding["received"] == public
    row = next(row for row in ua.srv.ctl_json("ul", "show", "alice")
               if row["contact"] == "sip:alice@192.168.1.10:5060")
    assert (row["received"], row["cflags"]) == (public, 1 << 6)
