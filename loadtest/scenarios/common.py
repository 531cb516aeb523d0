"""What every scenario shares: the settings, the user population, the scenario base
class and the registration client (REGISTER -> 401 -> authorized REGISTER -> 200)."""

from __future__ import annotations

import csv
import os
import random
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest import sipmsg
from loadtest.engine import Addr, Loop, Transactions, Txn, udp_socket
from loadtest.stats import Stats

UA = b"natserver-loadtest"


@dataclass(slots=True)
class Settings:
    """Everything a run needs; one copy per generator process (``shard``/``shards``)."""

    scenario: str = "options"
    target: tuple[str, int] = ("127.0.0.1", 5060)
    domain: str = ""                 # default: the target as host:port
    local_ip: str = "127.0.0.1"
    rate: float = 100.0
    ramp: float = 0.0
    duration: float = 10.0
    max_count: int = 0
    limit: int = 0                   # most units in flight (0 = no limit)
    users: list[tuple[bytes, bytes]] = field(default_factory=list)
    callees: int = 0                 # call/mixed: how many users answer (0 = half)
    expires: int = 3600
    reregister: float = 0.0          # register/mixed: period of re-registration
    hold: float = 1.0                # call: seconds between ACK and BYE
    rtp: bool = False
    timeout: float = 32.0            # transaction timeout (Timer B/F = 64*T1 by default)
    t1: float = 0.5
    t2: float = 4.0
    linger: float = 5.0
    drain: float = 0.0               # most seconds to wait for units in flight (0: auto)
    prepare_timeout: float = 30.0
    connect: bool = True             # connect the SIP sockets to the target (faster)
    # first SIP port of this process (UAC, then UAS); 0 = any. Fixed ports keep the
    # contacts the same from run to run, so a registrar's bindings do not pile up.
    local_port: int = 0
    shard: int = 0
    shards: int = 1

    def domain_bytes(self) -> bytes:
        return (self.domain or f"{self.target[0]}:{self.target[1]}").encode()


# -- users ----------------------------------------------------------------------------

def rule_users(count: int, user_format: str = "user{n:04d}",
               password_format: str = "pass{n:04d}", first: int = 1) -> list[tuple[bytes, bytes]]:
    """``count`` users named and keyed by a rule: ``n`` counts from ``first``."""
    out = []
    for n in range(first, first + count):
        user = user_format.format(n=n)
        out.append((user.encode(), password_format.format(n=n, user=user).encode()))
    return out


_AUTH_FIELD = re.compile(r"\[authentication\s+username=(\S+)\s+password=([^\]\s]+)\s*\]")


def csv_users(path: str | Path) -> list[tuple[bytes, bytes]]:
    """Users from a SIPp injection file: a first line naming the order (SEQUENTIAL,
    RANDOM, USER...), then ``user;...`` lines. The password is the one in an
    ``[authentication username=u password=p]`` field when present, else field 2."""
    out = []
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    for i, row in enumerate(rows):
        if not row or (i == 0 and len(row) == 1 and row[0].strip().isupper()):
            continue
        if row[0].lstrip().startswith("#"):
            continue
        user, password = row[0].strip(), ""
        for cell in row[1:]:
            found = _AUTH_FIELD.search(cell)
            if found:
                user, password = found.group(1), found.group(2)
                break
        else:
            if len(row) > 1:
                password = row[1].strip()
        out.append((user.encode(), password.encode()))
    return out


class User:
    """One account as this process uses it."""

    __slots__ = ("name", "password", "ha1", "realm", "call_id", "cseq", "tag", "contact",
                 "registered", "busy")

    def __init__(self, name: bytes, password: bytes) -> None:
        self.name = name
        self.password = password
        self.ha1 = b""
        self.realm = b"\x00"
        self.call_id = b""
        self.cseq = 0
        self.tag = b""
        self.contact = b""
        self.registered = False
        self.busy = False

    def ha1_for(self, realm: bytes, algorithm: bytes) -> bytes:
        if realm != self.realm or algorithm != b"MD5":
            ha1 = sipmsg.ha1(self.name, realm, self.password, algorithm)
            if algorithm != b"MD5":
                return ha1
            self.ha1, self.realm = ha1, realm
        return self.ha1


# -- scenario base ----------------------------------------------------------------------

class Scenario:
    """A scenario owns its sockets and units; the runner drives ``prepare``, ``start``
    (one new unit), ``in_flight`` and ``finish``."""

    name = ""
    primary = ""
    unit = "requests"

    def __init__(self, cfg: Settings, loop: Loop, stats: Stats) -> None:
        self.cfg = cfg
        self.loop = loop
        self.stats = stats
        self.ids = sipmsg.Ids()
        self.domain = cfg.domain_bytes()
        self.target = cfg.target
        self.lip = cfg.local_ip.encode()
        self.tx = Transactions(loop, stats, t1=cfg.t1, t2=cfg.t2, timeout=cfg.timeout,
                               linger=cfg.linger)
        self.window: dict[int, int] = {}
        self.prim = stats.hist(self.primary)
        stats.scenario = self.name
        stats.primary = self.primary
        c = stats.counters
        for name in ("started", "ok"):
            c.setdefault(name, 0)
        # sends to the target go to ``peer``: None on connected sockets
        self.peer = None if cfg.connect else cfg.target
        self.uac = udp_socket(cfg.local_ip, cfg.local_port, cfg.target if cfg.connect else None)
        self.uac_port = self.uac.getsockname()[1]
        loop.add_reader(self.uac, self._on_uac, cfg.connect)
        self.users = [User(u, p) for u, p in cfg.users]
        self.stopping = False       # set by the runner when no new units may start

    # the runner's interface
    def prepare(self, now: float) -> bool:
        """Called until it returns True (or the prepare timeout passes)."""
        return True

    def begin(self, now: float) -> None:
        """The load phase starts now."""

    def start(self, now: float) -> None:
        raise NotImplementedError

    def in_flight(self) -> int:
        return 0

    def finish(self, now: float) -> None:
        """Count what is still open after the drain as failed."""
        n = self.in_flight()
        if n:
            self.stats.fail("unfinished at end", n)

    def live(self) -> dict[str, Any]:
        return {"up": self.in_flight()}

    def sync(self) -> None:
        """Bring ``stats.counters`` up to date (the hot path counts in attributes)."""
        self.tx.sync()

    # helpers
    def record_primary(self, seconds: float) -> None:
        """The primary response time also feeds the per-second window."""
        i = self.prim.record(seconds)
        w = self.window
        w[i] = w.get(i, 0) + 1

    def record(self, name: str, seconds: float) -> None:
        if name == self.primary:
            self.record_primary(seconds)
        else:
            self.stats.hist(name).record(seconds)

    def _on_uac(self, buf: bytes, addr: Addr, now: float) -> None:
        if buf[:8] == b"SIP/2.0 ":
            self.tx.on_response(buf, now)
        else:
            self.on_uac_request(buf, addr, now)

    def on_uac_request(self, buf: bytes, addr: Addr, now: float) -> None:
        """A request to a UAC socket: keepalive pings get 200, anything else 501."""
        c = self.stats.counters
        if len(buf) < 16:
            c["keepalives"] = c.get("keepalives", 0) + 1
            return
        req = sipmsg.parse_request(buf)
        if req is None:
            c["garbage"] = c.get("garbage", 0) + 1
            return
        c["requests_to_uac"] = c.get("requests_to_uac", 0) + 1
        if req.method == b"ACK":
            return
        status, reason = (200, b"OK") if req.method == b"OPTIONS" else (501, b"Not Implemented")
        self.tx.send_stateless(self.uac, sipmsg.reply(req, status, reason, self.ids.key()), addr)

    def close(self) -> None:
        self.loop.close()


# -- registration -----------------------------------------------------------------------

class Reg:
    __slots__ = ("user", "t0", "t_auth", "authed", "on_done", "expires", "retries")

    def __init__(self, user: User, now: float, on_done: Any, expires: int) -> None:
        self.user = user
        self.expires = expires
        self.t0 = now
        self.t_auth = 0.0
        self.authed = False
        self.on_done = on_done
        self.retries = 0


class Registrar:
    """REGISTER for one user at a time per call: challenge, credentials, 200.

    ``on_done(reg, ok, now)`` runs once per registration; histograms are
    ``REGISTER 401`` (first reply), ``REGISTER 200`` (authorized request to 200) and
    ``register`` (first request to 200); failures are causes ``REGISTER <status>``,
    ``REGISTER 401 after auth`` (wrong credentials) and ``REGISTER timeout``."""

    def __init__(self, scn: Scenario, cause_prefix: str = "", retry_503: int = 0) -> None:
        self.scn = scn
        self.prefix = cause_prefix
        # set-up registrations are not what a run measures: a server that sheds load
        # (503 + Retry-After) gets them again after the time it asked for, up to
        # ``retry_503`` times each, as RFC 3261 21.5.4 lets a client do
        self.retry_503 = retry_503
        self.resend_cb = self._resend
        self.cb = self._on_reply
        self.uri = b"sip:" + scn.domain
        self.head = b"REGISTER %s SIP/2.0\r\nVia: SIP/2.0/UDP %s:%d;branch=z9hG4bK" % (
            self.uri, scn.lip, scn.uac_port)
        self.open = 0
        self.ha2 = sipmsg.ha2(b"REGISTER", self.uri)
        hist = scn.stats.hist
        self.h_challenge = {401: hist("REGISTER 401").record, 407: hist("REGISTER 407").record}
        self.h_ok = hist("REGISTER 200").record
        self.h_total = scn.record_primary if scn.primary == "register" else hist("register").record

    def register(self, user: User, contact_port: int, now: float, on_done: Any,
                 expires: int | None = None, clear: bool = False) -> None:
        """Register ``user`` at our address; ``clear``: remove all of its bindings
        instead (``Contact: *``, ``Expires: 0``), e.g. those of an earlier run."""
        scn = self.scn
        if not user.call_id:
            user.call_id = b"%s@lt" % scn.ids.key()
            user.tag = scn.ids.key()
        if clear:
            user.contact = b"*"
            expires = 0
        else:
            user.contact = b"<sip:%s@%s:%d>" % (user.name, scn.lip, contact_port)
        reg = Reg(user, now, on_done, scn.cfg.expires if expires is None else expires)
        self.open += 1
        self._send(reg, b"", now)

    def _send(self, reg: Reg, auth: bytes, now: float) -> None:
        scn = self.scn
        user = reg.user
        user.cseq += 1
        key = scn.ids.key()
        data = (b"%s%s;rport\r\nMax-Forwards: 70\r\nFrom: <sip:%s@%s>;tag=%s\r\n"
                b"To: <sip:%s@%s>\r\nCall-ID: %s\r\nCSeq: %d REGISTER\r\nContact: %s\r\n"
                b"Expires: %d\r\n%sUser-Agent: %s\r\nContent-Length: 0\r\n\r\n" % (
                    self.head, key, user.name, scn.domain, user.tag, user.name, scn.domain,
                    user.call_id, user.cseq, user.contact, reg.expires, auth, UA))
        scn.tx.send(scn.uac, scn.peer, key, data, b"REGISTER", self.cb, reg, now)

    def _on_reply(self, t: Txn, status: int, buf: bytes, now: float) -> None:
        reg: Reg = t.ctx
        scn = self.scn
        if (status == 401 or status == 407) and not reg.authed:
            self.h_challenge[status](now - reg.t0)
            ch = sipmsg.challenge(buf, status)
            if ch is None:
                self._done(reg, False, "REGISTER %d without a digest challenge" % status, now)
                return
            user = reg.user
            ha1 = user.ha1_for(ch.realm, ch.algorithm)
            name = b"Authorization" if status == 401 else b"Proxy-Authorization"
            cnonce = scn.ids.key() if ch.qop else b""
            auth = sipmsg.authorization(name, ch, user.name, ha1, b"REGISTER", self.uri, cnonce,
                                        ha2_value=self.ha2)
            reg.authed = True
            reg.t_auth = now
            self._send(reg, auth, now)
            return
        if status == 503 and reg.retries < self.retry_503:
            reg.retries += 1
            reg.authed = False
            c = scn.stats.counters
            c["setup_retries_503"] = c.get("setup_retries_503", 0) + 1
            scn.loop.timers.at(now + retry_after(buf), self.resend_cb, reg)
            return
        if 200 <= status < 300:
            self.h_ok(now - (reg.t_auth or reg.t0))
            self.h_total(now - reg.t0)
            reg.user.registered = True
            self._done(reg, True, "", now)
            return
        if status == 0:
            cause = "REGISTER timeout"
        elif status in (401, 407):
            cause = "REGISTER %d after auth" % status
        else:
            cause = "REGISTER " + sipmsg.status_text(buf)
        self._done(reg, False, cause, now)

    def _resend(self, reg: Reg, gen: int, now: float) -> None:
        self._send(reg, b"", now)

    def _done(self, reg: Reg, ok: bool, cause: str, now: float) -> None:
        self.open -= 1
        c = self.scn.stats.counters
        if ok:
            c["regs_accepted"] = c.get("regs_accepted", 0) + 1    # clears included
        else:
            self.scn.stats.fail(self.prefix + cause)
        reg.on_done(reg, ok, now)


_RETRY_AFTER = re.compile(rb"^Retry-After[ \t]*:[ \t]*(\d+)", re.M | re.I)


def retry_after(buf: bytes, default: float = 1.0, cap: float = 5.0) -> float:
    """Seconds a 503 asks the client to wait (capped: runs are bounded in time)."""
    m = _RETRY_AFTER.search(buf)
    return min(cap, float(m.group(1))) if m else default


def free_port_base(ip: str, count: int, tries: int = 50) -> int:
    """A port p with p .. p+count-1 all free for UDP on ``ip`` right now."""
    for _ in range(tries):
        base = random.randrange(20000, 60000 - count)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((ip, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise OSError("no free UDP port range found")


def shard_of(items: list[Any], shard: int, shards: int) -> list[Any]:
    return items[shard::shards] if shards > 1 else list(items)


def process_seed() -> bytes:
    return os.urandom(3).hex().encode()
