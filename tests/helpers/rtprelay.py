"""ThreadRelay: natserver.rtp's control executor and forwarding engine behind a ``udp:``
(cookies) or ``unix:`` (stream) control socket, in a thread of the test process.

(Rebuilt by the relay-process engineer after overwriting the original by mistake; same
API as tests/modules/test_nathelper_rtp.py uses: ``ThreadRelay(kind, path, *,
advertise="127.0.0.1", pairs=N, version=b"...")``, ``.url``, ``.sent(prefix)``,
``.sessions()``, ``.close()``.)
"""

from __future__ import annotations

import random
import socket
import threading

from natserver.rtp import protocol as P
from natserver.rtp.control import ControlConfig, ControlServer
from natserver.rtp.engine import Engine
from natserver.rtp.ports import PortTable
from natserver.rtp.session import DictStore, Session


class ThreadRelay:
    def __init__(self, kind: str = "udp", path: str = "", *, advertise: str = "127.0.0.1",
                 pairs: int = 100, version: bytes = P.VERSION) -> None:
        self.kind = kind
        self.path = path
        self.version = version
        self.commands: list[bytes] = []
        self._lock = threading.Lock()
        self.engine = Engine("127.0.0.1", tick=0.05)
        base = 20000 + 2 * random.randrange(0, 4500)        # no fixed ports under xdist
        self.table = PortTable(base, base + 2 * pairs - 1)
        self.store = DictStore()
        self.server = ControlServer(self.store, self.engine.allocator(self.table),
                                    ControlConfig(advertise=advertise), stats=self.engine.stats)
        if kind == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(path)
            self.sock.listen(16)
            self.url = f"unix:{path}"
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.url = f"udp:127.0.0.1:{self.sock.getsockname()[1]}"
        self.sock.setblocking(False)
        self.engine.watch(self.sock.fileno(),
                          self._on_accept if kind == "unix" else self._on_datagram)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    # -- what the tests read ---------------------------------------------------------
    def sent(self, prefix: bytes = b"") -> list[bytes]:
        """Commands received (without cookie) that start with ``prefix``, in order."""
        with self._lock:
            return [c for c in self.commands if c.startswith(prefix)]

    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self.store.iterate())

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.engine.close()
        self.sock.close()
        if self.kind == "unix":
            import os
            try:
                os.unlink(self.path)
            except OSError:
                pass

    # -- the thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            self.engine.poll(0.02)

    def _answer(self, body: bytes, cookie: bytes, peer: object) -> bytes:
        text = body.strip()
        with self._lock:
            self.commands.append(text)
            if text[:1].upper() == b"V" and text[1:2].upper() != b"F":
                return P.format_reply(self.version, cookie)
            for s in self.engine.take_changes():
                self.store.put(s)
            if cookie:
                reply, out = self.server.datagram(cookie + b" " + body, peer, self.engine.clock())
            else:
                reply, out = self.server.stream(body, self.engine.clock())
            if out is not None:
                self.engine.apply(out)
        return reply

    def _on_datagram(self, now: float) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            cookie, body = P.split_cookie(data)
            if not cookie:
                continue
            self.sock.sendto(self._answer(body, cookie, peer), peer)

    def _on_accept(self, now: float) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            with conn:
                conn.settimeout(1.0)
                try:
                    data = conn.recv(65536)
                    if data:
                        conn.sendall(self._answer(data, b"", None))
                except OSError:
                    pass
