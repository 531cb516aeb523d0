"""A call through the seed's cfg (conf/natserver.cfg) with a relay behind nathelper.

:class:`SeedServer` renders conf/natserver.cfg with this test's values (listen, the
SQLite database, the FIFO, ``rtpproxy_sock``, ``rtp_relays``, a small port range; the
routing logic untouched), creates the database and two subscribers with the real
natserverctl, and runs natserver in the test's network namespace.

:class:`Phone` is a synchronous SIP endpoint (REGISTER with digest, INVITE with SDP and
proxy authentication, 180/200 with SDP, ACK, BYE, re-INVITE) plus an RTP socket.
Each phone claims a private address in its Contact and SDP while sending from
127.0.0.1 - a NAT as the seed sees one: ``nat_uac_test("19")`` holds (bit 1, private
Contact), so the seed sets flag 6 and calls force_rtp_proxy on the INVITE and the 200,
and unforce_rtp_proxy on the BYE.

:func:`seed_call` places the whole call and returns what each side's SDP said.
"""

from __future__ import annotations

import re
import select
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.natserver_sut import SEED_CFG, render_cfg
from tests.helpers.regclient import authorization, parse_challenge, register
from tests.helpers.relayproc import ENV, Proc
from tests.helpers.server import ROOT, Netns
from tests.helpers.sipclient import Parsed, parse, rand_token
from tests.helpers.uas import contact_uri, make_reply, route_set

DOMAIN = "127.0.0.1"
SERVER = ("127.0.0.1", 5060)      # inside the test's own namespace: no collisions
PASSWORD = "secret-1"
PAYLOAD = 160


def rtp(seq: int, tag: bytes = b"") -> bytes:
    """An RTP-sized packet: 12-byte header + 160 bytes of payload."""
    return (struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x1234)
            + (tag + bytes(PAYLOAD))[:PAYLOAD])


def offer_sdp(ip: str, port: int, version: int = 1, *, hold: bool = False) -> bytes:
    """An audio offer/answer; ``hold``: old-style hold (c=0.0.0.0, a=sendonly)."""
    c = "0.0.0.0" if hold else ip
    direction = "sendonly" if hold else "sendrecv"
    return (f"v=0\r\no=- 4711 {version} IN IP4 {ip}\r\ns=call\r\nc=IN IP4 {c}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
            f"a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na={direction}\r\n").encode()


@dataclass
class Media:
    """What an SDP says: the connection address and the audio port."""

    ip: str
    port: int
    marker: bool
    raw: bytes = b""

    @property
    def direction(self) -> str:
        m = re.search(r"(?m)^a=(sendrecv|sendonly|recvonly|inactive)\r?$",
                      self.raw.decode("latin-1"))
        return m.group(1) if m else "sendrecv"

    @classmethod
    def of(cls, body: bytes) -> Media:
        text = body.decode("latin-1")
        c = re.search(r"(?m)^c=IN IP[46] (\S+?)\r?$", text)
        m = re.search(r"(?m)^m=audio (\d+) ", text)
        assert c and m, f"no c= or m=audio in {text!r}"
        return cls(c.group(1), int(m.group(1)), "a=nortpproxy:yes" in text, body)


class SeedServer:
    """natserver running conf/natserver.cfg in ``ns``."""

    def __init__(self, ns: Netns, tmp: Path, *, rtpproxy_sock: str, relays: int,
                 ports: tuple[int, int] = (30000, 30199), extra: str = "") -> None:
        self.ns = ns
        self.tmp = tmp
        # unix socket paths must stay under 108 bytes: a short directory of our own
        self.rundir = Path(tempfile.mkdtemp(prefix="ic-"))
        sock = rtpproxy_sock.replace("{rundir}", str(self.rundir))
        self.rtpproxy_sock = sock
        text = render_cfg(SEED_CFG.read_text(), listen=SERVER[0],
                          db_url=f"sqlite:///{tmp / 'natserver.db'}",
                          fifo=str(self.rundir / "fifo"), rtpproxy_sock=sock,
                          natping_interval=0, rtp_ports=ports)
        text, n = re.subn(r"(?m)^rtp_relays=\d+", f"rtp_relays={relays}\n{extra}", text)
        assert n == 1
        self.cfg_path = tmp / "natserver.cfg"
        self.cfg_path.write_text(text)
        self.ctl("db", "init")
        self.proc = Proc(ns, [sys.executable, "-m", "natserver", "-f", str(self.cfg_path),
                              "-D", "-E"], tmp, r"natserver listening on udp:")
        self.proc.wait_ready()
        for user in ("alice", "bob"):
            self.ctl("add", f"{user}@{DOMAIN}", PASSWORD)

    def ctl(self, *args: str, json_out: bool = False) -> str:
        argv = [sys.executable, "-m", "natserver.ctlcli", "-f", str(self.cfg_path)]
        if json_out:
            argv.append("--json")
        done = subprocess.run(argv + list(args), capture_output=True, text=True, env=ENV,
                              cwd=str(ROOT), timeout=30)
        assert done.returncode == 0, f"natserverctl {args}: {done.stdout} {done.stderr}"
        return done.stdout

    def log_text(self) -> str:
        return self.proc.log_text()

    def stop(self) -> None:
        self.proc.stop()
        import shutil
        shutil.rmtree(self.rundir, ignore_errors=True)


@dataclass
class Phone:
    """A SIP endpoint and its RTP socket inside the namespace."""

    ns: Netns
    user: str
    private_ip: str
    server: tuple[str, int] = SERVER
    tag: str = field(default_factory=lambda: rand_token(8))

    def __post_init__(self) -> None:
        self.sip = self.ns.socket()
        self.media = self.ns.socket()
        self.addr = self.sip.getsockname()[:2]
        self.rtp_port = self.media.getsockname()[1]
        # a private address claims a NAT; 127.0.0.1 is a phone without one
        port = self.addr[1] if self.private_ip == "127.0.0.1" else 5060
        self.contact = f"<sip:{self.user}@{self.private_ip}:{port}>"
        self.cseq = 0
        self.call_id = ""
        self.remote_tag = ""
        self.remote_target = ""
        self.routes: list[str] = []
        self.last_invite: Parsed | None = None   # as a UAS
        self.stray_acks = 0

    # -- transport ---------------------------------------------------------------------
    def send(self, data: bytes, dst: tuple[str, int] | None = None) -> None:
        self.sip.sendto(data, dst or self.server)

    def recv(self, timeout: float = 3.0) -> Parsed:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sip], [], [], left)[0]:
                raise AssertionError(f"{self.user}: nothing received within {timeout} s")
            data = self.sip.recv(65535)
            if data.strip(b"\r\n\x00"):
                return parse(data)

    def expect(self, status: int, timeout: float = 3.0) -> Parsed:
        """The next final (or wanted provisional) reply, skipping 100."""
        while True:
            msg = self.recv(timeout)
            if msg.is_reply and msg.status == 100 and status != 100:
                continue
            assert msg.is_reply and msg.status == status, \
                f"{self.user}: expected {status}, got {msg.first}"
            return msg

    def expect_final(self, status: int, timeout: float = 3.0) -> Parsed:
        """The final reply ``status``, passing over provisional ones: a proxy with
        several workers may take a 200 before the 180 sent just ahead of it, and then
        rightly drops that 180 (no provisional after a final)."""
        while True:
            msg = self.recv(timeout)
            if msg.is_reply and msg.status < 200:
                continue
            assert msg.is_reply and msg.status == status, \
                f"{self.user}: expected {status}, got {msg.first}"
            return msg

    def expect_request(self, method: str, timeout: float = 3.0) -> Parsed:
        """The next ``method`` request; stray ACKs (the hop-by-hop ACK of a 407 to an
        in-dialog INVITE is loose-routed on to us) are passed over."""
        while True:
            msg = self.recv(timeout)
            if msg.method == "ACK" and method != "ACK":
                self.stray_acks += 1
                continue
            assert msg.method == method, f"{self.user}: expected {method}, got {msg.first}"
            return msg

    # -- registration ------------------------------------------------------------------
    def register(self) -> None:
        call_id = rand_token(16)
        self.send(register(self.user, DOMAIN, self.addr, contact=self.contact,
                           expires=600, call_id=call_id, cseq=1))
        challenge = self.expect(401).get("WWW-Authenticate")
        auth = authorization(parse_challenge(challenge), self.user, PASSWORD, "REGISTER",
                             f"sip:{DOMAIN}")
        self.send(register(self.user, DOMAIN, self.addr, contact=self.contact,
                           expires=600, call_id=call_id, cseq=2, auth=auth))
        self.expect(200)

    # -- UAC side --------------------------------------------------------------------
    def _request(self, method: str, ruri: str, *, branch: str, to: str, body: bytes = b"",
                 extra: list[str] | None = None, cseq: int | None = None) -> bytes:
        host, port = self.addr
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport",
                 "Max-Forwards: 70",
                 f"From: <sip:{self.user}@{DOMAIN}>;tag={self.tag}",
                 f"To: {to}", f"Call-ID: {self.call_id}",
                 f"CSeq: {cseq if cseq is not None else self.cseq} {method}",
                 f"Contact: {self.contact}"]
        lines += [f"Route: {r}" for r in self.routes] if self.remote_tag else []
        lines += extra or []
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def invite(self, callee: str, sdp: bytes, *, auth: bool = True,
               ruri: str = "") -> None:
        """INVITE with proxy authentication (407 -> ACK -> INVITE with credentials);
        without ``auth`` the INVITE is sent once (a proxy that does not challenge)."""
        ruri = ruri or f"sip:{callee}@{DOMAIN}"
        in_dialog = bool(self.remote_tag)
        if not in_dialog:
            self.call_id = rand_token(16) + "@seedcall"
        target = self.remote_target if in_dialog else ruri
        to = f"<{ruri}>" + (f";tag={self.remote_tag}" if in_dialog else "")
        self.cseq += 1
        branch = "z9hG4bK" + rand_token()
        self.send(self._request("INVITE", target, branch=branch, to=to, body=sdp))
        if not auth:
            return
        challenged = self.expect(407)
        self.send(self._request("ACK", target, branch=branch, to=challenged.get("To") or to))
        auth = authorization(parse_challenge(challenged.get("Proxy-Authenticate")), self.user,
                             PASSWORD, "INVITE", target)
        self.cseq += 1
        self.send(self._request("INVITE", target, branch="z9hG4bK" + rand_token(), to=to,
                                body=sdp, extra=[f"Proxy-Authorization: {auth}"]))

    def answered(self, reply: Parsed, callee: str) -> None:
        """Take the dialog from a 2xx and ACK it."""
        if not self.remote_tag:
            self.routes = route_set(reply)
            self.remote_target = contact_uri(reply)
            self.remote_tag = reply.param("To", "tag") or ""
        to = f"<sip:{callee}@{DOMAIN}>;tag={self.remote_tag}"
        self.send(self._request("ACK", self.remote_target, branch="z9hG4bK" + rand_token(),
                                to=to))

    def bye(self, callee: str) -> None:
        self.cseq += 1
        to = f"<sip:{callee}@{DOMAIN}>;tag={self.remote_tag}"
        self.send(self._request("BYE", self.remote_target, branch="z9hG4bK" + rand_token(),
                                to=to))

    # -- UAS side --------------------------------------------------------------------
    @staticmethod
    def reply_to(req: Parsed) -> tuple[str, int]:
        via = req.get("Via") or ""
        sent_by = via.split()[1].split(";")[0]
        host, _, port = sent_by.partition(":")
        params = dict((p.split("=", 1) + [""])[:2] for p in via.split(";")[1:])
        return params.get("received") or host, int(params.get("rport") or port or 5060)

    def answer(self, req: Parsed, status: int, reason: str, body: bytes = b"") -> None:
        headers = ["Content-Type: application/sdp"] if body else []
        self.send(make_reply(req, status, reason, to_tag=self.tag, contact=self.contact,
                             body=body, headers=headers), self.reply_to(req))

    # -- RTP ---------------------------------------------------------------------------
    def drain(self, wait: float) -> list[bytes]:
        got = []
        deadline = time.monotonic() + wait
        while True:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([self.media], [], [], left)[0]:
                return got
            got.append(self.media.recv(4096))

    def close(self) -> None:
        self.sip.close()
        self.media.close()


def exchange(a: Phone, a_dst: Media, b: Phone, b_dst: Media, count: int = 20
             ) -> tuple[list[bytes], list[bytes]]:
    """Each phone sends ``count`` RTP-sized packets to where its received SDP points;
    returns (what b received, what a received)."""
    got_b: list[bytes] = []
    got_a: list[bytes] = []
    for i in range(count):
        a.media.sendto(rtp(i, b"from-" + a.user.encode()), (a_dst.ip, a_dst.port))
        b.media.sendto(rtp(i, b"from-" + b.user.encode()), (b_dst.ip, b_dst.port))
        got_b += b.drain(0.02)
        got_a += a.drain(0.0)
    got_b += b.drain(0.3)
    got_a += a.drain(0.3)
    return got_b, got_a


@dataclass
class Call:
    caller: Phone
    callee: Phone
    offer_seen: Media       # the SDP the callee received
    answer_seen: Media      # the SDP the caller received


def seed_call(a: Phone, b: Phone) -> Call:
    """alice calls bob through the seed cfg: INVITE with SDP, 180, 200 with SDP, ACK."""
    a.invite(b.user, offer_sdp(a.private_ip, a.rtp_port))
    inv = b.expect_request("INVITE")
    b.last_invite = inv
    b.answer(inv, 180, "Ringing")
    b.answer(inv, 200, "OK", offer_sdp(b.private_ip, b.rtp_port))
    ok = a.expect_final(200)
    a.answered(ok, b.user)
    b.expect_request("ACK")
    return Call(a, b, Media.of(inv.body), Media.of(ok.body))


def reinvite(call: Call, version: int = 2, *, hold: bool = False) -> Call:
    """The caller re-INVITEs in the dialog (the seed: force_rtp_proxy("l")), putting
    the call on hold (c=0.0.0.0, a=sendonly) with ``hold``; the callee answers with its
    SDP (recvonly when held)."""
    a, b = call.caller, call.callee
    a.invite(b.user, offer_sdp(a.private_ip, a.rtp_port, version, hold=hold))
    inv = b.expect_request("INVITE")
    answer = offer_sdp(b.private_ip, b.rtp_port, version)
    if hold:
        answer = answer.replace(b"a=sendrecv", b"a=recvonly")
    b.answer(inv, 200, "OK", answer)
    ok = a.expect(200)
    a.answered(ok, b.user)
    b.expect_request("ACK")
    return Call(a, b, Media.of(inv.body), Media.of(ok.body))


def reinvite_from_callee(call: Call, version: int = 5) -> Call:
    """The callee re-INVITEs (From/To the other way round): its dialog state comes from
    the INVITE it received (route set = Record-Route in order, target = the caller's
    Contact as the proxy fixed it). Returns (SDP the caller got, SDP the callee got)
    as offer_seen / answer_seen."""
    a, b = call.caller, call.callee
    inv = b.last_invite
    assert inv is not None
    if not b.remote_tag:
        b.call_id = a.call_id
        b.remote_tag = a.tag
        b.remote_target = contact_uri(inv)
        b.routes = [v.strip() for row in inv.all("Record-Route") for v in row.split(",")]
    b.invite(a.user, offer_sdp(b.private_ip, b.rtp_port, version))
    got = a.expect_request("INVITE")
    a.answer(got, 200, "OK", offer_sdp(a.private_ip, a.rtp_port, version))
    ok = b.expect_final(200)
    b.answered(ok, a.user)
    a.expect_request("ACK")
    return Call(a, b, Media.of(got.body), Media.of(ok.body))


def hang_up(call: Call) -> None:
    a, b = call.caller, call.callee
    a.bye(b.user)
    bye = b.expect_request("BYE")
    b.answer(bye, 200, "OK")
    a.expect(200)
