"""The generator's event loop: epoll over a few UDP sockets, a slotted timer queue,
RFC 3261 client transactions (retransmissions, timeouts) and rate control.

Not asyncio: one flat loop per process keeps the per-datagram cost to a recvfrom, a
slice and a dict lookup. Timers are buckets of ``RESOLUTION`` seconds in a dict, with
a heap of bucket numbers, so arming a timer is an append; a timer is never cancelled,
it carries a generation number and fires as a no-op when its owner moved on.
"""

from __future__ import annotations

import errno
import logging
import math
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from heapq import heappop, heappush
from typing import Any

from loadtest.sipmsg import BRANCH_AT, KEY_LEN
from loadtest.stats import Stats

log = logging.getLogger("loadtest")

RESOLUTION = 0.002
RECV_BATCH = 64
SOCKBUF = 4 << 20
_BRANCH_OFF = len(BRANCH_AT)

TimerFn = Callable[[Any, int, float], None]
Addr = tuple[str, int] | None       # None: the connected socket's peer
Handler = Callable[[bytes, Addr, float], None]


class Timers:
    """Deadline buckets; ``run`` fires every bucket that is due, in order."""

    __slots__ = ("slots", "heap")

    def __init__(self) -> None:
        self.slots: dict[int, list[tuple[TimerFn, Any, int]]] = {}
        self.heap: list[int] = []

    def at(self, deadline: float, fn: TimerFn, arg: Any, gen: int = 0) -> None:
        # +1: never early; a bucket made while running lies in the future
        s = int(deadline * (1.0 / RESOLUTION)) + 1
        lst = self.slots.get(s)
        if lst is None:
            self.slots[s] = lst = []
            heappush(self.heap, s)
        lst.append((fn, arg, gen))

    def run(self, now: float) -> float | None:
        """Fire what is due; return the next deadline (or None)."""
        cur = int(now * (1.0 / RESOLUTION))
        heap = self.heap
        slots = self.slots
        while heap and heap[0] <= cur:
            for fn, arg, gen in slots.pop(heappop(heap)):
                fn(arg, gen, now)
        return heap[0] * RESOLUTION if heap else None

    def __len__(self) -> int:
        return sum(len(v) for v in self.slots.values())


def udp_socket(ip: str, port: int = 0, peer: tuple[str, int] | None = None) -> socket.socket:
    """A non-blocking UDP socket with big buffers; ``peer``: connect it there, which
    saves the kernel a route lookup per datagram and Python an address per call."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
        try:
            # SO_RCVBUFFORCE/SO_SNDBUFFORCE (root) go past rmem_max/wmem_max
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKBUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKBUF)
    sock.bind((ip, port))
    if peer is not None:
        sock.connect(peer)
    sock.setblocking(False)
    return sock


class Loop:
    """epoll readers + timers; ``run(step)`` until ``step`` says stop."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.readers: dict[int, tuple[socket.socket, Handler, bool]] = {}
        self.timers = Timers()
        # called every iteration with ``now``; each returns its next deadline or None
        self.pollers: list[Callable[[float], float | None]] = []
        self.received = 0
        self.handler_errors = 0
        self.send_errors = 0
        self.recv_errors = 0

    def add_reader(self, sock: socket.socket, handler: Handler, connected: bool = False) -> None:
        """``handler(data, addr, now)``; a connected socket's datagrams come with
        ``addr=None`` (its peer - and a reply with ``addr=None`` goes there)."""
        self.readers[sock.fileno()] = (sock, handler, connected)
        self.ep.register(sock.fileno(), select.EPOLLIN)

    def remove_reader(self, sock: socket.socket) -> None:
        if self.readers.pop(sock.fileno(), None) is not None:
            self.ep.unregister(sock.fileno())

    def close(self) -> None:
        for sock, _, _ in list(self.readers.values()):
            self.remove_reader(sock)
            sock.close()
        self.ep.close()

    def _handler_error(self, data: bytes) -> None:
        self.handler_errors += 1
        if self.handler_errors <= 3:
            log.exception("datagram handler failed on %r", data[:200])

    def run(self, step: Callable[[float], float]) -> None:
        """Loop until ``step(now)`` returns a negative number; otherwise it returns the
        next time it wants to run (``math.inf`` for "only when something happens")."""
        monotonic = time.monotonic
        poll = self.ep.poll
        timers = self.timers
        readers = self.readers
        pollers = self.pollers
        while True:
            now = monotonic()
            wake = step(now)
            if wake < 0:
                return
            nxt = timers.run(now)
            if nxt is not None and nxt < wake:
                wake = nxt
            for p in pollers:
                nxt = p(now)
                if nxt is not None and nxt < wake:
                    wake = nxt
            timeout = wake - monotonic()
            if timeout > 0.05:
                timeout = 0.05
            events = poll(timeout if timeout > 0 else 0)
            for fd, _ in events:
                entry = readers.get(fd)
                if entry is None:
                    continue
                sock, handler, connected = entry
                n = 0
                if connected:
                    recv = sock.recv
                    while n < RECV_BATCH:
                        try:
                            data = recv(65535)
                        except BlockingIOError:
                            break
                        except OSError:
                            # ICMP port unreachable from an earlier send, and the like
                            self.recv_errors += 1
                            continue
                        n += 1
                        try:
                            handler(data, None, monotonic())
                        except Exception:  # noqa: BLE001 - one bad datagram never stops a run
                            self._handler_error(data)
                else:
                    recvfrom = sock.recvfrom
                    while n < RECV_BATCH:
                        try:
                            data, addr = recvfrom(65535)
                        except BlockingIOError:
                            break
                        except OSError:
                            self.recv_errors += 1
                            continue
                        n += 1
                        try:
                            handler(data, addr, monotonic())
                        except Exception:  # noqa: BLE001 - one bad datagram never stops a run
                            self._handler_error(data)
                self.received += n


class TxState(IntEnum):
    TRYING = 0        # sent, nothing heard (INVITE: "calling")
    PROCEEDING = 1    # a provisional reply came
    COMPLETED = 2     # final reply came; lingering to absorb retransmissions


TRYING, PROCEEDING, COMPLETED = TxState.TRYING, TxState.PROCEEDING, TxState.COMPLETED

# cb(txn, status, buf, now): status 0 = the transaction timed out
TxnCallback = Callable[["Txn", int, bytes, float], None]


class Txn:
    __slots__ = ("key", "data", "sock", "addr", "invite", "state", "t0", "interval",
                 "deadline", "gen", "cb", "ctx", "ack", "retrans", "method", "prov")


class Transactions:
    """Client transactions keyed by our branch key (RFC 3261 17.1).

    The first retransmission (T1 after sending) and the linger after a final reply
    are fixed delays, so they live in FIFO queues - appending is the whole cost of
    arming them; later retransmissions go through the loop's timers."""

    def __init__(self, loop: Loop, stats: Stats, *, t1: float = 0.5, t2: float = 4.0,
                 timeout: float = 32.0, linger: float = 5.0) -> None:
        self.loop = loop
        self.stats = stats
        self.t1 = t1
        self.t2 = t2
        self.timeout = timeout
        self.linger = linger
        self.txns: dict[bytes, Txn] = {}
        self.first: deque[tuple[float, bytes, int]] = deque()
        self.lingering: deque[tuple[float, bytes]] = deque()
        self.sent = 0
        self.retransmissions = 0
        self.stray = 0
        self.final_retransmissions = 0
        self.open = 0
        # for checking against what the server counted: requests by method (first
        # copies and retransmissions alike) and responses by status
        self.by_method: dict[bytes, int] = {}
        self.retrans_by_method: dict[bytes, int] = {}
        self.by_status = [0] * 700
        loop.pollers.append(self.poll)

    def sync(self) -> None:
        """Copy the hot-path counters into ``stats.counters``."""
        c = self.stats.counters
        c["sent"] = self.sent
        c["received"] = self.loop.received
        c["retransmissions"] = self.retransmissions
        c["stray"] = self.stray
        c["final_retransmissions"] = self.final_retransmissions
        for method, n in self.by_method.items():
            c["sent_" + method.decode()] = n
        for method, n in self.retrans_by_method.items():
            c["retransmissions_" + method.decode()] = n
        for status, n in enumerate(self.by_status):
            if n:
                c["responses_%d" % status] = n

    def count_request(self, method: bytes) -> None:
        """A request sent outside a client transaction (ACK)."""
        self.by_method[method] = self.by_method.get(method, 0) + 1

    def send(self, sock: socket.socket, addr: Addr, key: bytes, data: bytes,
             method: bytes, cb: TxnCallback, ctx: Any, now: float, prov: bool = False) -> Txn:
        """Start a client transaction; ``prov``: hand provisional replies to ``cb`` too."""
        t = Txn()
        t.key = key
        t.data = data
        t.sock = sock
        t.addr = addr
        t.method = method
        t.invite = method == b"INVITE"
        t.state = TRYING
        t.t0 = now
        t.interval = self.t1
        t.deadline = now + self.timeout
        t.cb = cb
        t.ctx = ctx
        t.ack = None
        t.retrans = 0
        t.gen = 0
        t.prov = prov
        self.txns[key] = t
        self.open += 1
        self.by_method[method] = self.by_method.get(method, 0) + 1
        try:
            if addr is None:
                sock.send(data)
            else:
                sock.sendto(data, addr)
            self.sent += 1
        except OSError as exc:
            self._send_error(exc)
        self.first.append((now + self.t1, key, 0))
        return t

    def _send_error(self, exc: OSError) -> None:
        # a full socket buffer drops the datagram like a congested network would;
        # the retransmission timer covers it
        self.loop.send_errors += 1
        if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED):
            raise exc

    def send_stateless(self, sock: socket.socket, data: bytes, addr: Addr) -> None:
        try:
            if addr is None:
                sock.send(data)
            else:
                sock.sendto(data, addr)
            self.sent += 1
        except OSError as exc:
            self._send_error(exc)

    def poll(self, now: float) -> float | None:
        first = self.first
        while first and first[0][0] <= now:
            _, key, gen = first.popleft()
            self._timer(key, gen, now)
        lingering = self.lingering
        txns = self.txns
        while lingering and lingering[0][0] <= now:
            t = txns.get(lingering.popleft()[1])
            if t is not None and t.state == COMPLETED:
                del txns[t.key]
        a = first[0][0] if first else None
        b = lingering[0][0] if lingering else None
        if a is None:
            return b
        return a if b is None or a < b else b

    def _timer(self, key: bytes, gen: int, now: float) -> None:
        t = self.txns.get(key)
        if t is None or t.gen != gen or t.state == COMPLETED:
            return
        if now >= t.deadline:
            del self.txns[key]
            t.gen += 1
            t.state = COMPLETED
            self.open -= 1
            t.cb(t, 0, b"", now)
            return
        if t.invite and t.state == PROCEEDING:
            # Timer A stops after a provisional; only the overall deadline is left
            self.loop.timers.at(t.deadline, self._timer, key, gen)
            return
        self.send_stateless(t.sock, t.data, t.addr)
        t.retrans += 1
        self.retransmissions += 1
        m = t.method
        self.by_method[m] += 1
        self.retrans_by_method[m] = self.retrans_by_method.get(m, 0) + 1
        if t.state == PROCEEDING:
            t.interval = self.t2
        else:
            t.interval = t.interval * 2 if t.invite else min(t.interval * 2, self.t2)
        nxt = now + t.interval
        self.loop.timers.at(nxt if nxt < t.deadline else t.deadline, self._timer, key, gen)

    def on_response(self, buf: bytes, now: float) -> None:
        """Match a response to its transaction and hand it to the owner."""
        i = buf.find(BRANCH_AT)
        t = self.txns.get(buf[i + _BRANCH_OFF:i + _BRANCH_OFF + KEY_LEN]) if i >= 0 else None
        if t is None:
            self.stray += 1
            return
        try:
            status = int(buf[8:11])
            self.by_status[status] += 1
        except (ValueError, IndexError):
            self.stray += 1
            return
        if t.state == COMPLETED:
            if status >= 200:
                self.final_retransmissions += 1
                if t.ack is not None:
                    self.send_stateless(t.sock, t.ack, t.addr)
                    self.by_method[b"ACK"] = self.by_method.get(b"ACK", 0) + 1
            return
        if status < 200:
            t.state = PROCEEDING
            if t.prov:
                t.cb(t, status, buf, now)
            return
        t.state = COMPLETED
        t.gen += 1
        t.data = b""
        self.open -= 1
        self.lingering.append((now + self.linger, t.key))
        t.cb(t, status, buf, now)

    def in_flight(self) -> int:
        return self.open


@dataclass(slots=True)
class RateControl:
    """How many new units are due: ``rate``/s after a linear ``ramp``, for ``duration``
    seconds and/or ``max_count`` units (0 = unbounded)."""

    rate: float
    ramp: float = 0.0
    duration: float = 0.0
    max_count: int = 0
    t0: float = 0.0
    started: int = 0
    skipped: int = 0
    # a generator that falls behind does not burst to catch up: at most this many
    # seconds of backlog are kept, the rest is counted as skipped
    backlog: float = 0.5

    def expected(self, now: float) -> float:
        t = now - self.t0
        if self.duration and t > self.duration:
            t = self.duration
        if t <= 0:
            return 0.0
        if self.ramp > 0:
            if t < self.ramp:
                return self.rate * t * t / (2 * self.ramp)
            return self.rate * (t - self.ramp / 2)
        return self.rate * t

    def due(self, now: float) -> int:
        n = int(self.expected(now)) - self.started - self.skipped
        if n <= 0:
            return 0
        cap = max(1, int(self.rate * self.backlog))
        if n > cap:
            self.skipped += n - cap
            n = cap
        if self.max_count and self.started + n > self.max_count:
            n = max(0, self.max_count - self.started)
        return n

    def done(self, now: float) -> bool:
        if self.max_count and self.started >= self.max_count:
            return True
        return bool(self.duration) and now - self.t0 >= self.duration

    def next_at(self) -> float:
        """When the next unit falls due."""
        n = self.started + self.skipped + 1
        if self.rate <= 0:
            return math.inf
        if self.ramp > 0:
            if n <= self.rate * self.ramp / 2:
                return self.t0 + math.sqrt(2 * self.ramp * n / self.rate)
            return self.t0 + n / self.rate + self.ramp / 2
        return self.t0 + n / self.rate
