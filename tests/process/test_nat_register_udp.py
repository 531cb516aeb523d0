"""Issue 6 acceptance over real UDP, against the real server in a loopback-only netns:
a REGISTER sent from a loopback socket whose Via and Contact claim 192.168.1.10:5060
(the source is 127.0.0.1:<random>) goes through the seed's route[2] (nat_uac_test("19"),
fix_nated_register(), force_rport(), digest auth, save): the binding keeps the Contact
as sent, stores the received address and the NAT mark, and the socket then gets the
4-byte keepalive from the server's SIP port. An INVITE for that user goes through the
seed's route[3]/route[4]/route[1] and reaches the socket's real address, with the
caller's Contact fixed by route[4].

The server runs the seed ser.cfg itself, with only what must differ on this machine
changed (listen, port, fork, logging, fifo, the DB URL, natping_interval, an alias so
that sip:...@example.org is "myself", no rtpproxy socket). Without natserver's tm and
rr modules the seed cannot compile; the register part then runs the seed's route[2]
alone and the INVITE test is skipped.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from natserver.modules import find
from tests.helpers.procs import NatServer, Netns, ctl, need_root
from tests.helpers.regclient import authorization, contact_values, parse_challenge, register
from tests.helpers.sipclient import Endpoint, Parsed, parse, rand_token, request

SEED = Path("/work/shared/seed/ser.cfg")
DOMAIN = "example.org"
USERS = {"alice": "wonderland", "bob": "builder", "carol": "xmas"}
NATED_HOST = "192.168.1.10:5060"
INTERVAL = 1

pytestmark = pytest.mark.skipif(not SEED.exists(), reason="no seed ser.cfg")


def full_seed_available() -> bool:
    def has(module: str, *functions: str) -> bool:
        try:
            spec = find(module)
        except ImportError:
            return False
        return spec is not None and set(functions) <= {f.name for f in spec.functions}
    return has("tm", "t_relay", "t_on_reply") and has("rr", "record_route", "loose_route")


def seed_cfg(url: str, fifo: str) -> str:
    """The seed ser.cfg with this machine's settings."""
    text = SEED.read_text()
    subs = [
        ("fork=yes #1", "fork=no"),
        ("log_stderror=no #2", "log_stderror=yes"),
        ("listen=192.0.2.13     # INSERT YOUR IP ADDRESS HERE",
         f"listen=127.0.0.1\nalias={DOMAIN}"),
        ("port=5060", "port=0"),
        ("children=4", "children=2"),
        ('fifo="/tmp/ser_fifo"', f'fifo="{fifo}"'),
        ("mysql://ser:heslo@localhost/ser", url),
        ('"natping_interval", 30)', f'"natping_interval", {INTERVAL})'),
        ('"rtpproxy_sock", "unix:/var/run/rtpproxy.sock")', '"rtpproxy_sock", "")'),
    ]
    for old, new in subs:
        assert old in text, old
        text = text.replace(old, new)
    return text


def route2_cfg(url: str, fifo: str) -> str:
    """The seed's globals and modules without tm/rr, a main route sending REGISTERs to
    the seed's route[2], and route[2] verbatim."""
    text = seed_cfg(url, fifo)
    head = text[:text.index("route {")]
    head = re.sub(r'^(loadmodule "[^"]*/(tm|rr)\.so"|modparam\("rr".*)$', "", head, flags=re.M)
    route2 = text[text.index("route[2] {"):text.index("route[3] {")]
    return head + """
route {
  if (method=="REGISTER") { route(2); break; };
  sl_send_reply("404", "Not Here");
}
""" + route2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_root()
    tmp = tmp_path_factory.mktemp("natreg")
    url = f"sqlite://{tmp}/natserver.db"
    ctl("--db", url, "db", "init")
    for user, password in USERS.items():
        ctl("--db", url, "add", f"{user}@{DOMAIN}", password)
    full = full_seed_available()
    text = (seed_cfg if full else route2_cfg)(url, str(tmp / "fifo"))
    ns = Netns("nsn")
    srv = NatServer(ns, text, tmp)
    srv.full_seed = full  # type: ignore[attr-defined]
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        ns.destroy()


class Ua:
    """A UA socket in the server's namespace that may claim a private address."""

    def __init__(self, srv: NatServer, claim: str | None) -> None:
        self.srv = srv
        self.ep = Endpoint(srv.ns.socket())
        self.host = claim or f"{self.ep.addr[0]}:{self.ep.addr[1]}"
        self.call_id = rand_token(16)
        self.cseq = 0

    def expect(self, timeout: float = 3.0) -> Parsed:
        """The next SIP message (keepalives skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.ep.recv_raw(max(0.01, deadline - time.monotonic()))
            assert got is not None, "nothing received"
            if len(got[0]) > 4:
                return parse(got[0])

    def final(self, timeout: float = 3.0) -> Parsed:
        while True:
            msg = self.expect(timeout)
            if msg.is_reply and msg.status >= 200:
                return msg

    def register(self, user: str, expires: int = 300) -> Parsed:
        def send(auth: str | None) -> Parsed:
            self.cseq += 1
            self.ep.send(register(user, DOMAIN, self.ep.addr, contact=f"<sip:{user}@{self.host}>",
                                  expires=expires, call_id=self.call_id, cseq=self.cseq,
                                  auth=auth, via_host=self.host), self.srv.addr)
            return self.final()
        r = send(None)
        assert r.status == 401, r.first
        chal = parse_challenge(r.get("WWW-Authenticate"))
        return send(authorization(chal, user, USERS[user], "REGISTER", f"sip:{DOMAIN}"))

    def keepalives(self, seconds: float) -> list[tuple[str, int]]:
        """Sources of the 4-byte keepalives received within ``seconds``."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            got = self.ep.recv_raw(left)
            if got is None:
                break
            if got[0] == b"\x00\x00\x00\x00":
                out.append(got[1])
        return out

    def close(self) -> None:
        self.ep.close()


@pytest.fixture
def make_ua(server):
    made: list[Ua] = []

    def factory(claim: str | None) -> Ua:
        ua = Ua(server, claim)
        made.append(ua)
        return ua
    yield factory
    for ua in made:
        ua.close()


def test_nated_register_stores_received_and_nat_mark_then_gets_keepalives(server, make_ua):
    ua = make_ua(NATED_HOST)
    r = ua.register("alice")
    assert r.status == 200, r.first
    real = f"sip:127.0.0.1:{ua.ep.addr[1]}"
    [binding] = [b for b in contact_values(r.get("Contact"))
                 if b["uri"] == f"sip:alice@{NATED_HOST}"]
    assert binding["received"] == real
    # force_rport(): the replies came to the real port although the Via names 5060
    assert r.param("Via", "rport") == str(ua.ep.addr[1])
    [row] = [row for row in server.ctl_json("ul", "show", "alice")
             if row["contact"] == f"sip:alice@{NATED_HOST}"]
    assert row["received"] == real
    assert row["cflags"] & (1 << 6)
    assert ua.keepalives(2.5 * INTERVAL) and all(
        src == server.addr for src in ua.keepalives(1.5 * INTERVAL))


def test_public_register_has_no_nat_mark_and_no_keepalive(server, make_ua):
    ua = make_ua(None)
    r = ua.register("carol")
    assert r.status == 200, r.first
    [row] = [row for row in server.ctl_json("ul", "show", "carol")
             if row["contact"] == f"sip:carol@{ua.host}"]
    assert row["received"] is None
    assert not row["cflags"] & (1 << 6)
    assert ua.keepalives(2.5 * INTERVAL) == []


def invite(caller: Ua, callee: str, auth: str | None = None) -> bytes:
    caller.cseq += 1
    headers = [f"Proxy-Authorization: {auth}"] if auth else []
    body = (f"v=0\r\no=- 1 1 IN IP4 192.168.1.20\r\ns=-\r\nc=IN IP4 192.168.1.20\r\n"
            f"t=0 0\r\nm=audio 40000 RTP/AVP 0\r\n").encode()
    return request("INVITE", f"sip:{callee}@{DOMAIN}", src=caller.ep.addr,
                   from_=f"<sip:bob@{DOMAIN}>;tag=b{caller.call_id[:6]}",
                   to=f"<sip:{callee}@{DOMAIN}>", call_id=caller.call_id, cseq=caller.cseq,
                   via_host=caller.host, contact=f"<sip:bob@{caller.host}>",
                   headers=[*headers, "Content-Type: application/sdp"], body=body)


def test_invite_reaches_the_nated_callee_with_the_callers_contact_fixed(server, make_ua):
    if not server.full_seed:
        pytest.skip("natserver.modules.tm/rr (t_relay, record_route, loose_route) missing: "
                    "the seed ser.cfg cannot run yet")
    callee = make_ua(NATED_HOST)
    assert callee.register("alice").status == 200
    caller = make_ua("192.168.1.20:5060")
    caller.ep.send(invite(caller, "alice"), server.addr)
    r = caller.final()
    assert r.status == 407, r.first
    chal = parse_challenge(r.get("Proxy-Authenticate"))
    auth = authorization(chal, "bob", USERS["bob"], "INVITE", f"sip:alice@{DOMAIN}")
    caller.ep.send(invite(caller, "alice", auth), server.addr)
    # The INVITE reaches the callee's real socket (its stored received address) ...
    deadline = time.monotonic() + 5
    while True:
        msg = callee.expect(max(0.1, deadline - time.monotonic()))
        if msg.method == "INVITE":
            break
    assert msg.ruri == f"sip:alice@{NATED_HOST}"     # the Contact as registered
    # ... with the caller's Contact fixed to where its packets really come from.
    assert msg.get("Contact") == f"<sip:bob@127.0.0.1:{caller.ep.addr[1]}>"
    vias = msg.all("Via")
    assert len(vias) == 2
    assert f"rport={caller.ep.addr[1]}" in vias[1] and "received=127.0.0.1" in vias[1]
    # The callee says busy; the reply finds the caller through received/rport.
    lines = ["SIP/2.0 486 Busy Here"] + [f"Via: {v}" for v in vias] + [
        f"{name}: {msg.get(name)}" for name in ("From", "Call-ID", "CSeq")]
    lines += [f"To: {msg.get('To')};tag=busy1", "Content-Length: 0"]
    callee.ep.send(("\r\n".join(lines) + "\r\n\r\n").encode(), server.addr)
    assert caller.final(5).status == 486
