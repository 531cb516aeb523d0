"""A tiny SIP responder for the generator's own tests: a thread on 127.0.0.1 that
answers OPTIONS with 200 and REGISTER with a digest challenge and a check of the
credentials it gets back - computed here with hashlib, not with the generator's code,
so a wrong digest in the generator fails the tests. It counts what it receives and can
drop datagrams or stay silent on purpose."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

_HDR = re.compile(rb"^([A-Za-z-]+)[ \t]*:[ \t]*(.*)$", re.M)
_PARAM = re.compile(rb'(\w+)="?([^",]*)"?')


def _md5(text: bytes) -> bytes:
    return hashlib.md5(text).hexdigest().encode()


@dataclass
class Responder:
    passwords: dict[bytes, bytes] = field(default_factory=dict)
    realm: bytes = b"test.realm"
    drop_first: int = 0            # drop the first N copies of every request (by Via branch)
    silent_every: int = 0          # never answer every Nth new transaction
    qop: bool = False
    shed_first: int = 0            # answer the first N new REGISTERs 503 + Retry-After: 1
    received: Counter = field(default_factory=Counter)   # by method, retransmissions included
    sent: Counter = field(default_factory=Counter)       # by status
    bad_digest: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.addr = self.sock.getsockname()
        self._seen: Counter = Counter()
        self._new = 0
        self._silent: set[bytes] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Responder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def drain(self, quiet: float = 0.3) -> None:
        """Wait until nothing arrived for ``quiet`` seconds (late retransmissions)."""
        while True:
            with self._lock:
                before = sum(self.received.values())
            time.sleep(quiet)
            with self._lock:
                if sum(self.received.values()) == before:
                    return

    @property
    def target(self) -> str:
        return f"{self.addr[0]}:{self.addr[1]}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                answer = self._handle(data)
            if answer is not None:
                self.sock.sendto(answer, addr)

    def _handle(self, data: bytes) -> bytes | None:
        head, _, _ = data.partition(b"\r\n\r\n")
        first, _, rest = head.partition(b"\r\n")
        method = first.split(b" ", 1)[0]
        self.received[method.decode()] += 1
        if method == b"ACK":
            return None
        hdrs = {}
        lines = []
        for m in _HDR.finditer(rest):
            hdrs.setdefault(m.group(1).lower(), m.group(2).strip())
            lines.append((m.group(1).lower(), m.group(0).rstrip(b"\r")))
        branch = re.search(rb"branch=([^;\s]+)", hdrs.get(b"via", b""))
        key = branch.group(1) if branch else b""
        self._seen[key] += 1
        if self._seen[key] <= self.drop_first:
            return None
        if self._seen[key] == self.drop_first + 1:
            self._new += 1
            if self.silent_every and self._new % self.silent_every == 0:
                self._silent.add(key)
        if key in self._silent:
            return None
        copy = b"\r\n".join(line for name, line in lines
                            if name in (b"via", b"from", b"to", b"call-id", b"cseq"))
        if method == b"OPTIONS":
            return self._reply(200, b"OK", copy)
        if method != b"REGISTER":
            return self._reply(501, b"Not Implemented", copy)
        auth = hdrs.get(b"authorization")
        if auth is None and self.shed_first and self._seen[key] == self.drop_first + 1:
            self.shed_first -= 1
            return self._reply(503, b"Service Unavailable", copy, b"Retry-After: 1\r\n")
        if auth is None:
            nonce = hashlib.sha1(key).hexdigest().encode()
            qop = b', qop="auth"' if self.qop else b""
            challenge = b'WWW-Authenticate: Digest realm="%s", nonce="%s"%s\r\n' % (self.realm, nonce, qop)
            return self._reply(401, b"Unauthorized", copy, challenge)
        p = {m.group(1): m.group(2) for m in _PARAM.finditer(auth)}
        password = self.passwords.get(p.get(b"username", b""), b"\x00")
        ha1 = _md5(b"%s:%s:%s" % (p[b"username"], p[b"realm"], password))
        ha2 = _md5(b"REGISTER:%s" % p[b"uri"])
        if b"qop" in p:
            want = _md5(b"%s:%s:%s:%s:%s:%s" % (ha1, p[b"nonce"], p[b"nc"], p[b"cnonce"], p[b"qop"], ha2))
        else:
            want = _md5(b"%s:%s:%s" % (ha1, p[b"nonce"], ha2))
        if p.get(b"response") != want:
            self.bad_digest += 1
            return self._reply(401, b"Unauthorized", copy,
                               b'WWW-Authenticate: Digest realm="%s", nonce="again"\r\n' % self.realm)
        return self._reply(200, b"OK", copy)

    def _reply(self, status: int, reason: bytes, copy: bytes, extra: bytes = b"") -> bytes:
        self.sent[status] += 1
        return b"SIP/2.0 %d %s\r\n%s\r\n%sContent-Length: 0\r\n\r\n" % (status, reason, copy, extra)
