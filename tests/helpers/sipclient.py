"""A minimal SIP endpoint for tests: build requests, send them, read what comes back.

Deliberately independent of natserver.sip: what the server sends is read with this
small parser, so a parser bug cannot hide itself in the tests that check it.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field


def rand_token(n: int = 10) -> str:
    return "".join(random.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(n))


@dataclass
class Parsed:
    first: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    raw: bytes = b""

    @property
    def is_reply(self) -> bool:
        return self.first.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.first.split(" ", 2)[1]) if self.is_reply else 0

    @property
    def reason(self) -> str:
        return self.first.split(" ", 2)[2] if self.is_reply else ""

    @property
    def method(self) -> str:
        return "" if self.is_reply else self.first.split(" ", 1)[0]

    @property
    def ruri(self) -> str:
        return "" if self.is_reply else self.first.split(" ")[1]

    def all(self, name: str) -> list[str]:
        compact = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
                   "l": "content-length", "c": "content-type"}
        low = name.lower()
        out = []
        for hname, value in self.headers:
            h = hname.lower()
            if compact.get(h, h) == low:
                out.append(value)
        return out

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def param(self, name: str, param: str) -> str | None:
        value = self.get(name)
        if value is None:
            return None
        for part in value.split(";")[1:]:
            k, _, v = part.partition("=")
            if k.strip().lower() == param:
                return v.strip()
        return None


def parse(data: bytes) -> Parsed:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    msg = Parsed(lines[0], raw=data, body=body)
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and msg.headers:
            name, value = msg.headers[-1]
            msg.headers[-1] = (name, value + " " + line.strip())
            continue
        name, _, value = line.partition(":")
        msg.headers.append((name.strip(), value.strip()))
    return msg


def request(method: str, ruri: str, *, src: tuple[str, int], to: str | None = None,
            from_: str | None = None, call_id: str | None = None, cseq: int = 1,
            branch: str | None = None, headers: list[str] | None = None, body: bytes = b"",
            max_forwards: int | None = 70, via_host: str | None = None,
            to_tag: str | None = None, contact: str | None = None) -> bytes:
    """A well-formed request as a UAC at ``src`` would send it."""
    host, port = src
    via_host = via_host or f"{host}:{port}"
    branch = branch or "z9hG4bK" + rand_token()
    lines = [f"{method} {ruri} SIP/2.0",
             f"Via: SIP/2.0/UDP {via_host};branch={branch};rport"]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    from_ = from_ or f"<sip:tester@{host}>;tag={rand_token(8)}"
    to = to or f"<{ruri}>"
    if to_tag:
        to += f";tag={to_tag}"
    lines += [f"From: {from_}", f"To: {to}", f"Call-ID: {call_id or rand_token(16)}@test",
              f"CSeq: {cseq} {method if method != 'CANCEL' else 'CANCEL'}"]
    if contact:
        lines.append(f"Contact: {contact}")
    lines += headers or []
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Endpoint:
    """A UDP socket that sends requests and collects what arrives."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.addr: tuple[str, int] = sock.getsockname()[:2]

    def send(self, data: bytes, dst: tuple[str, int]) -> None:
        self.sock.sendto(data, dst)

    def recv(self, timeout: float = 2.0) -> tuple[Parsed, tuple[str, int]] | None:
        self.sock.settimeout(timeout)
        try:
            data, src = self.sock.recvfrom(65535)
        except (TimeoutError, socket.timeout):
            return None
        return parse(data), src[:2]

    def recv_raw(self, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]] | None:
        self.sock.settimeout(timeout)
        try:
            data, src = self.sock.recvfrom(65535)
        except (TimeoutError, socket.timeout):
            return None
        return data, src[:2]

    def expect(self, timeout: float = 2.0) -> Parsed:
        got = self.recv(timeout)
        assert got is not None, "nothing received"
        return got[0]

    def expect_status(self, status: int, timeout: float = 2.0, skip_provisional: bool = True) -> Parsed:
        while True:
            msg = self.expect(timeout)
            if skip_provisional and msg.is_reply and msg.status < 200 and status >= 200:
                continue
            assert msg.is_reply and msg.status == status, f"expected {status}, got {msg.first}"
            return msg

    def nothing(self, timeout: float = 0.5) -> bool:
        return self.recv(timeout) is None

    def close(self) -> None:
        self.sock.close()
