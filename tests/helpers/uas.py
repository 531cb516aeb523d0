"""Small SIP endpoints for proxy tests: a UAC and a UAS that read and check what they
get. Built on tests/helpers/sipclient.py's independent parser, never on natserver.sip.

- :func:`make_reply` answers a parsed request the way a UAS does (Vias, Record-Route,
  From, To with a tag, Call-ID, CSeq copied);
- :class:`Uas` runs in a thread on its own socket and plays a script: optional 100/180,
  a final after a delay (or silence), 200 to CANCEL + 487, 200 to BYE; it keeps every
  message it received and every INVITE branch it saw;
- :class:`Uac` places a call through the proxy and builds the in-dialog requests from
  the 2xx (route set from Record-Route, reversed; R-URI from Contact).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from tests.helpers.sipclient import Parsed, parse, rand_token

_COPY = ("via", "v", "record-route", "from", "f", "call-id", "i", "cseq")


def make_reply(req: Parsed, status: int, reason: str, *, to_tag: str | None = None,
               contact: str | None = None, body: bytes = b"",
               headers: list[str] | None = None) -> bytes:
    lines = [f"SIP/2.0 {status} {reason}"]
    for name, value in req.headers:
        low = name.lower()
        if low in _COPY:
            lines.append(f"{name}: {value}")
        elif low in ("to", "t"):
            if to_tag and ";tag=" not in value:
                value += f";tag={to_tag}"
            lines.append(f"{name}: {value}")
    if contact:
        lines.append(f"Contact: {contact}")
    lines += headers or []
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def top_branch(msg: Parsed) -> str:
    via = msg.get("Via") or ""
    for part in via.split(";")[1:]:
        k, _, v = part.partition("=")
        if k.strip().lower() == "branch":
            return v.strip()
    return ""


def route_set(reply: Parsed) -> list[str]:
    """The UAC's route set from a 2xx: Record-Route values, reversed."""
    values: list[str] = []
    for row in reply.all("Record-Route"):
        values += [v.strip() for v in row.split(",")]
    return list(reversed(values))


def contact_uri(msg: Parsed) -> str:
    value = msg.get("Contact") or ""
    if "<" in value:
        return value[value.index("<") + 1:value.index(">")]
    return value.split(";")[0].strip()


@dataclass
class Got:
    msg: Parsed
    src: tuple[str, int]
    at: float


@dataclass
class UasScript:
    """How the UAS answers an INVITE."""

    trying: bool = False            # send 100 first
    ring: bool = True               # send 180 (after trying)
    final: int | None = 200         # None: never answer finally
    final_after: float = 0.0        # seconds between the INVITE and the final
    reason: str = "OK"
    retransmit_2xx: int = 0         # extra copies of the 2xx (T1 apart) before any ACK
    challenge: str | None = None    # a WWW-/Proxy-Authenticate row for 401/407
    answer_cancel: bool = True      # 200 to CANCEL + 487 to the INVITE


class Uas(threading.Thread):
    """A UAS on ``sock``; ``got`` lists what it received, in order."""

    def __init__(self, sock: socket.socket, script: UasScript | None = None,
                 name: str = "uas") -> None:
        super().__init__(daemon=True, name=name)
        self.sock = sock
        self.addr: tuple[str, int] = sock.getsockname()[:2]
        self.script = script or UasScript()
        self.tag = rand_token(8)
        self.got: list[Got] = []
        self.invite_branches: list[str] = []
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._pending: list[tuple[float, bytes, tuple[str, int]]] = []
        self._answered: set[str] = set()   # INVITE branches finally answered (or cancelled)
        self._acked: set[str] = set()      # Call-IDs whose 2xx was ACKed
        self.contact = f"<sip:uas@{self.addr[0]}:{self.addr[1]}>"
        self.start()

    # ---- what arrived ------------------------------------------------------------
    def methods(self) -> list[str]:
        with self._lock:
            return [g.msg.method or str(g.msg.status) for g in self.got]

    def requests(self, method: str) -> list[Got]:
        with self._lock:
            return [g for g in self.got if g.msg.method == method]

    def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Got]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.requests(method)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {count} x {method} expected, got "
                                     f"{self.methods()}")
            time.sleep(0.01)

    # ---- the thread --------------------------------------------------------------
    def stop(self) -> None:
        self._halt.set()
        self.join(2)
        self.sock.close()

    def run(self) -> None:
        self.sock.settimeout(0.01)
        while not self._halt.is_set():
            self._send_due()
            try:
                data, src = self.sock.recvfrom(65535)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            msg = parse(data)
            with self._lock:
                self.got.append(Got(msg, src[:2], time.monotonic()))
            if msg.is_reply:
                continue
            self._on_request(msg, src[:2])

    def _later(self, delay: float, data: bytes, dst: tuple[str, int]) -> None:
        with self._lock:
            self._pending.append((time.monotonic() + delay, data, dst))

    def _send_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [p for p in self._pending if p[0] <= now]
            self._pending = [p for p in self._pending if p[0] > now]
        for _, data, dst in due:
            if data.startswith(b"SIP/2.0 2") and self._is_acked(data):
                continue  # the 2xx retransmissions stop once the ACK came
            self.sock.sendto(data, dst)

    def _is_acked(self, data: bytes) -> bool:
        call_id = parse(data).get("Call-ID")
        with self._lock:
            return call_id in self._acked

    def _reply_to(self, msg: Parsed) -> tuple[str, int]:
        """Responses go to the top Via's received/rport (we trust the proxy's Via)."""
        via = msg.get("Via") or ""
        sent_by = via.split()[1].split(";")[0]
        host, _, port = sent_by.partition(":")
        params = dict((p.split("=", 1) + [""])[:2] for p in via.split(";")[1:])
        host = params.get("received") or host
        return host, int(params.get("rport") or port or 5060)

    def _on_request(self, msg: Parsed, src: tuple[str, int]) -> None:
        s = self.script
        dst = self._reply_to(msg)
        branch = top_branch(msg)
        if msg.method == "INVITE":
            with self._lock:
                seen = branch in self.invite_branches
                if not seen:
                    self.invite_branches.append(branch)
            if seen:
                return  # a retransmission: our replies are on their way
            if s.trying:
                self.sock.sendto(make_reply(msg, 100, "Trying"), dst)
            if s.ring:
                self.sock.sendto(make_reply(msg, 180, "Ringing", to_tag=self.tag,
                                            contact=self.contact), dst)
            if s.final is not None:
                extra = [s.challenge] if s.challenge else []
                final = make_reply(msg, s.final, s.reason, to_tag=self.tag,
                                   contact=self.contact, headers=extra)
                self._later(s.final_after, final, dst)
                for i in range(s.retransmit_2xx):
                    self._later(s.final_after + 0.5 * (i + 1), final, dst)
        elif msg.method == "CANCEL":
            if not s.answer_cancel:
                return
            self.sock.sendto(make_reply(msg, 200, "OK", to_tag=self.tag), dst)
            inv = next((g.msg for g in reversed(self.got)
                        if g.msg.method == "INVITE" and top_branch(g.msg) == branch), None)
            with self._lock:
                self._pending = [p for p in self._pending
                                 if not p[1].startswith(b"SIP/2.0 2")]
            if inv is not None:
                self.sock.sendto(make_reply(inv, 487, "Request Terminated", to_tag=self.tag),
                                 dst)
        elif msg.method == "ACK":
            with self._lock:
                self._acked.add(msg.get("Call-ID") or "")
        elif msg.method == "BYE":
            self.sock.sendto(make_reply(msg, 200, "OK", to_tag=self.tag), dst)
        else:
            self.sock.sendto(make_reply(msg, 200, "OK", to_tag=self.tag), dst)


@dataclass
class Uac:
    """A UAC on ``sock`` calling through the proxy at ``proxy``."""

    sock: socket.socket
    proxy: tuple[str, int]
    call_id: str = field(default_factory=lambda: rand_token(16) + "@uac")
    tag: str = field(default_factory=lambda: rand_token(8))
    cseq: int = 1

    def __post_init__(self) -> None:
        self.addr: tuple[str, int] = self.sock.getsockname()[:2]
        self.invite_branch = ""
        self.invite_ruri = ""
        self.invite_to = ""
        self.rs: list[str] = []
        self.remote_target = ""
        self.remote_tag = ""

    def _request(self, method: str, ruri: str, *, branch: str | None = None,
                 cseq: int | None = None, to: str | None = None,
                 routes: list[str] | None = None, body: bytes = b"",
                 headers: list[str] | None = None) -> bytes:
        host, port = self.addr
        branch = branch or "z9hG4bK" + rand_token()
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport",
                 "Max-Forwards: 70",
                 f"From: <sip:alice@{host}>;tag={self.tag}",
                 f"To: {to or '<' + ruri + '>'}",
                 f"Call-ID: {self.call_id}",
                 f"CSeq: {cseq if cseq is not None else self.cseq} {method}",
                 f"Contact: <sip:alice@{host}:{port}>"]
        lines += [f"Route: {r}" for r in routes or []]
        lines += headers or []
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def invite(self, ruri: str, *, headers: list[str] | None = None) -> bytes:
        self.invite_branch = "z9hG4bK" + rand_token()
        self.invite_ruri = ruri
        self.invite_to = f"<{ruri}>"
        data = self._request("INVITE", ruri, branch=self.invite_branch, headers=headers)
        self.send(data)
        return data

    def cancel(self) -> bytes:
        data = self._request("CANCEL", self.invite_ruri, branch=self.invite_branch,
                             cseq=self.cseq)
        self.send(data)
        return data

    def dialog_from(self, reply: Parsed) -> None:
        """Take the route set, remote target and To tag from a 2xx."""
        self.rs = route_set(reply)
        self.remote_target = contact_uri(reply)
        self.remote_tag = reply.param("To", "tag") or ""

    def ack_2xx(self) -> bytes:
        to = f"{self.invite_to};tag={self.remote_tag}"
        data = self._request("ACK", self.remote_target, cseq=self.cseq, to=to, routes=self.rs)
        self.send(data)
        return data

    def ack_non2xx(self, reply: Parsed) -> bytes:
        """The hop-by-hop ACK (same branch as the INVITE, To from the reply)."""
        data = self._request("ACK", self.invite_ruri, branch=self.invite_branch,
                             cseq=self.cseq, to=reply.get("To"))
        self.send(data)
        return data

    def bye(self) -> bytes:
        self.cseq += 1
        to = f"{self.invite_to};tag={self.remote_tag}"
        data = self._request("BYE", self.remote_target, to=to, routes=self.rs)
        self.send(data)
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.proxy)

    def recv(self, timeout: float = 3.0) -> Parsed | None:
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(65535)
        except (TimeoutError, socket.timeout):
            return None
        return parse(data)

    def expect(self, status: int, *, timeout: float = 3.0, skip: tuple[int, ...] = ()) -> Parsed:
        """The next reply, which must be ``status`` (replies in ``skip`` are passed)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            msg = self.recv(max(0.01, left)) if left > 0 else None
            if msg is None:
                raise AssertionError(f"UAC: no {status} within {timeout} s")
            if msg.is_reply and msg.status in skip:
                continue
            assert msg.is_reply and msg.status == status, \
                f"UAC: expected {status}, got {msg.first}"
            return msg

    def quiet(self, timeout: float = 0.5) -> list[Parsed]:
        """Everything that arrives within ``timeout``."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            msg = self.recv(left)
            if msg is None:
                return got
            got.append(msg)
