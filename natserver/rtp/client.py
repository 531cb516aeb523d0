"""The client side of the rtpproxy protocol: nathelper talking to relays.

Sans-IO parts: the relay set parsed from ``rtpproxy_sock`` (``"unix:/path udp:h:p=2"``),
the weighted per-Call-ID choice, disabling a relay for ``rtpproxy_disable_tout`` after
a failure, cookies, and one command's retry schedule (:class:`Exchange`: send, wait
``rtpproxy_tout``, resend up to ``rtpproxy_retr`` times, ignore other cookies).

:class:`BlockingClient` is the one piece with sockets: nathelper runs inside a SIP
worker and calls it synchronously, like SER's nathelper did. ``unix:`` relays get one
stream connection per command and no cookie; ``udp:`` relays one datagram per try,
with a cookie. A relay is checked with ``V`` (it must answer 20040107) before first
use and after its disable time ran out, and probed with ``VF 20050322`` for
multi-stream ``tag;N`` support.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from natserver.rtp import protocol as P

log = logging.getLogger(__name__)

DEFAULT_UDP_PORT = 22222
MULTISTREAM = b"20050322"


@dataclass(frozen=True, slots=True)
class RelaySpec:
    """One entry of ``rtpproxy_sock``."""

    kind: str          # "unix", "udp" or "udp6"
    address: str       # path for unix, host for udp
    port: int = 0
    weight: int = 1

    @property
    def url(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.address}"
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.kind}:{host}:{self.port}"


def parse_sock_spec(text: str) -> list[RelaySpec]:
    """``"unix:/var/run/rtpproxy.sock udp:10.0.0.2:7722=2 udp6:[::1]:7722"`` -> specs.

    A bare path counts as ``unix:``; udp's port defaults to 22222; ``=N`` is a weight.
    ValueError names the bad entry.
    """
    out = []
    for token in text.split():
        body, _, weight_text = token.partition("=")
        if weight_text and not weight_text.isdigit():
            raise ValueError(f"bad weight in rtpproxy_sock entry {token!r}")
        weight = int(weight_text) if weight_text else 1
        kind, sep, rest = body.partition(":")
        if not sep or kind.lower() not in ("unix", "udp", "udp6"):
            if body.startswith("/"):
                kind, rest = "unix", body
            else:
                raise ValueError(f"bad rtpproxy_sock entry {token!r}")
        kind = kind.lower()
        if kind == "unix":
            if not rest:
                raise ValueError(f"empty path in rtpproxy_sock entry {token!r}")
            out.append(RelaySpec("unix", rest, 0, weight))
            continue
        host, port = _host_port(rest, token)
        out.append(RelaySpec(kind, host, port, weight))
    return out


def _host_port(text: str, token: str) -> tuple[str, int]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad IPv6 reference in rtpproxy_sock entry {token!r}")
        host, rest = text[1:end], text[end + 1:]
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad rtpproxy_sock entry {token!r}")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"empty host in rtpproxy_sock entry {token!r}")
    if port_text and (not port_text.isdigit() or not 0 < int(port_text) < 65536):
        raise ValueError(f"bad port in rtpproxy_sock entry {token!r}")
    return host, int(port_text) if port_text else DEFAULT_UDP_PORT


@dataclass(slots=True)
class Relay:
    spec: RelaySpec
    disabled_until: float = 0.0
    checked: bool = False          # V answered 20040107 since the last failure
    multistream: bool = False      # VF 20050322 answered 1
    failures: int = 0


@dataclass(slots=True)
class RelaySet:
    """The relays and their health; the choice per Call-ID is a weighted hash."""

    relays: list[Relay]
    disable_tout: float = 60.0

    @classmethod
    def from_spec(cls, text: str, disable_tout: float = 60.0) -> RelaySet:
        return cls([Relay(s) for s in parse_sock_spec(text)], disable_tout)

    def usable(self, now: float) -> list[Relay]:
        return [r for r in self.relays if r.disabled_until <= now and r.spec.weight > 0]

    def choose(self, callid: bytes, now: float) -> Relay | None:
        """The relay for this call: stable for a Call-ID while the set's health stays
        the same; None when every relay is disabled."""
        live = self.usable(now)
        total = sum(r.spec.weight for r in live)
        if not total:
            return None
        point = zlib.crc32(callid) % total
        for r in live:
            point -= r.spec.weight
            if point < 0:
                return r
        return live[-1]

    def failed(self, relay: Relay, now: float) -> None:
        relay.disabled_until = now + self.disable_tout
        relay.checked = False
        relay.failures += 1
        log.error("rtpproxy %s disabled for %.0f s", relay.spec.url, self.disable_tout)


@dataclass(slots=True)
class Cookies:
    """``<pid>_<seq>`` cookies, as SER and Kamailio make them."""

    pid: int = field(default_factory=os.getpid)
    seq: int = 0

    def next(self) -> bytes:
        self.seq += 1
        return b"%d_%d" % (self.pid, self.seq)


@dataclass(slots=True)
class Exchange:
    """One command on a datagram relay: what to send, when to resend or give up."""

    data: bytes                    # the datagram, cookie included
    cookie: bytes
    started: float
    timeout: float = 1.0           # rtpproxy_tout
    retries: int = 5               # rtpproxy_retr: sends after the first
    sends: int = 1

    @property
    def deadline(self) -> float:
        return self.started + self.sends * self.timeout

    def on_timeout(self, now: float) -> bool:
        """True: send ``data`` again now; False: the relay failed this command."""
        if self.sends > self.retries:
            return False
        self.sends += 1
        return True

    def on_datagram(self, data: bytes) -> P.Reply | None:
        """The reply if ``data`` answers this command; None for a stale cookie."""
        reply = P.parse_reply(data, cookie=True)
        return reply if reply.cookie == self.cookie else None


class BlockingClient:
    """Synchronous commands to the relay set (the only socket owner in this module)."""

    def __init__(self, relays: RelaySet, *, timeout: float = 1.0, retries: int = 5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.relays = relays
        self.timeout = timeout
        self.retries = retries
        self.clock = clock
        self.cookies = Cookies()
        self._udp: dict[RelaySpec, socket.socket] = {}

    def close(self) -> None:
        for s in self._udp.values():
            s.close()
        self._udp.clear()

    # -- commands ---------------------------------------------------------------------
    def command(self, cmd: P.Command, callid: bytes | None = None) -> tuple[Relay, P.Reply] | None:
        """Send ``cmd`` to the relay chosen for ``callid`` (default: the command's); on a
        failure that relay is disabled and the next one tried. None when none answered."""
        key = callid if callid is not None else cmd.callid
        while True:
            relay = self.ready(key)
            if relay is None:
                return None
            reply = self.send(relay, cmd)
            if reply is not None:
                return relay, reply
            self.relays.failed(relay, self.clock())

    def ready(self, callid: bytes) -> Relay | None:
        """The relay for ``callid``, version-checked (V/VF at first use and after a
        disable time ran out); None when every relay is disabled."""
        while True:
            relay = self.relays.choose(callid, self.clock())
            if relay is None or relay.checked or self.check(relay):
                return relay

    def check(self, relay: Relay) -> bool:
        """V (must be 20040107) then VF 20050322; disables the relay on failure."""
        reply = self.send(relay, P.Command(P.Op.VERSION))
        if reply is None or reply.text != P.VERSION:
            log.error("rtpproxy %s: version check failed (%r)", relay.spec.url,
                      reply.text if reply else None)
            self.relays.failed(relay, self.clock())
            return False
        feature = self.send(relay, P.Command(P.Op.VERSION_FEATURE, args=(MULTISTREAM,)))
        relay.multistream = feature is not None and feature.text == b"1"
        relay.checked = True
        return True

    def send(self, relay: Relay, cmd: P.Command) -> P.Reply | None:
        """One command to one relay with the retry schedule; None on failure."""
        try:
            if relay.spec.kind == "unix":
                return self._send_unix(relay.spec, cmd)
            return self._send_udp(relay.spec, cmd)
        except OSError as exc:
            log.error("rtpproxy %s: %s", relay.spec.url, exc)
            return None

    def _send_unix(self, spec: RelaySpec, cmd: P.Command) -> P.Reply | None:
        data = P.format_command(replace(cmd, cookie=b""))
        for _ in range(self.retries + 1):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                buf = b""
                try:
                    s.connect(spec.address)
                    s.sendall(data)
                    while not buf.endswith(b"\n"):
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        buf += chunk
                except TimeoutError:
                    if not buf:
                        continue
                    # an answer without its newline on a connection left open: take it
                    # rather than run the command a second time
                if buf:
                    return P.parse_reply(buf)
        return None

    def _udp_socket(self, spec: RelaySpec) -> socket.socket:
        s = self._udp.get(spec)
        if s is None:
            family = socket.AF_INET6 if spec.kind == "udp6" or ":" in spec.address else \
                socket.AF_INET
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.connect((spec.address, spec.port))
            s.setblocking(False)
            self._udp[spec] = s
        return s

    def _send_udp(self, spec: RelaySpec, cmd: P.Command) -> P.Reply | None:
        s = self._udp_socket(spec)
        while True:  # replies to earlier, given-up commands
            try:
                s.recv(65535)
            except (BlockingIOError, ConnectionRefusedError):
                break
        cookie = self.cookies.next()
        ex = Exchange(P.format_command(replace(cmd, cookie=cookie)), cookie, self.clock(),
                      self.timeout, self.retries)
        s.send(ex.data)
        while True:
            wait = ex.deadline - self.clock()
            if wait > 0 and select.select([s], [], [], wait)[0]:
                try:
                    reply = ex.on_datagram(s.recv(65535))
                except ConnectionRefusedError:
                    reply = None  # nobody listens (yet): the retries decide
                if reply is not None:
                    return reply
                continue
            if not ex.on_timeout(self.clock()):
                return None
            s.send(ex.data)
