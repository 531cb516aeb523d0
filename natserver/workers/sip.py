"""SIP worker: the loop that reads listen:port and runs the receive path.

The loop is deliberately plain: a blocking ``recvfrom`` with a timeout that is the
next due timer, then ``receive()``, then due timers and the heartbeat. Nothing here
parses or decides; it only moves bytes between the socket and the sans-IO core.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import time
from collections.abc import Callable

from natserver.context import Context
from natserver.overload import Shedder, enable_timestamps, recv_stamped
from natserver.receive import UDP_MAX, receive

log = logging.getLogger("natserver.sip")

# How long a worker sleeps in recvfrom when no timer is due: short enough to notice a
# stop request and to keep the heartbeat fresh.
IDLE_WAIT = 0.5
# How often a busy worker reads a datagram's queueing delay for load shedding: a
# client's T1 is 500 ms, so a few milliseconds of lag in noticing a backlog is nothing.
SHED_CHECK = 0.005


class SocketTransport:
    """Sends from the worker's listen socket; a failed send is counted, never raised."""

    __slots__ = ("sock", "ctx")

    def __init__(self, sock: socket.socket, ctx: Context) -> None:
        self.sock = sock
        self.ctx = ctx

    def send(self, data: bytes, addr: tuple[str, int]) -> bool:
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            if self.ctx.stats is not None:
                self.ctx.stats.send_errors += 1
            log.info("send to %s:%s failed: %s", addr[0], addr[1], exc.strerror)
            return False
        if self.ctx.stats is not None:
            self.ctx.stats.sent += 1
        return True


def bind_udp(host: str, port: int, *, reuseport: bool = True) -> socket.socket:
    """A UDP socket bound to host:port, SO_REUSEPORT set so workers can share the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    for opt, size in ((socket.SO_RCVBUF, 4 << 20), (socket.SO_SNDBUF, 4 << 20)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass  # capped by net.core.rmem_max; the default still works
    sock.bind((host, port))
    return sock


def serve(ctx: Context, sock: socket.socket, stopping: Callable[[], bool],
          tick: Callable[[float], float | None] | None = None) -> None:
    """Read and process datagrams until ``stopping()`` is true.

    The socket is non-blocking: under load every ``recvfrom`` returns a datagram (one
    system call per packet); only when the queue is empty does the loop poll, for at
    most the delay ``tick(now)`` returned (the next timer) or IDLE_WAIT.
    """
    local = sock.getsockname()[:2]
    sock.setblocking(False)
    recvfrom = sock.recvfrom
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    wait = IDLE_WAIT
    shedder = None
    if ctx.cfg.load_shed and enable_timestamps(sock):
        shedder = ctx.shedder = Shedder(ctx.cfg.load_shed, ctx.cfg.load_shed_retry_after)
    check_due = shed_logged = 0.0
    while not stopping():
        try:
            if shedder is not None and time.time() >= check_due:
                data, src, arrived = recv_stamped(sock, UDP_MAX)
                now = time.time()
                check_due = now + SHED_CHECK
                if arrived is not None and shedder.observe(now - arrived) and \
                        now - shed_logged > 10.0:
                    shed_logged = now  # once per burst, not on every flip
                    log.warning("a request waited %.0f ms in the queue: shedding new "
                                "requests (503) until the queue is fast again",
                                (now - arrived) * 1000)
            else:
                data, src = recvfrom(UDP_MAX)
                now = time.time()
        except BlockingIOError:
            if shedder is not None:
                shedder.drained()
            poller.poll(wait * 1000.0)
            wait = _tick(tick)
            continue
        except InterruptedError:
            continue
        except OSError as exc:
            # ICMP errors from earlier sends surface here (ECONNREFUSED); keep reading.
            if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                log.warning("recvfrom failed: %s", exc)
            continue
        receive(ctx, data, src[:2], local, now)
        wait = _tick(tick)


def _tick(tick: Callable[[float], float | None] | None) -> float:
    if tick is None:
        return IDLE_WAIT
    delay = tick(time.time())
    return IDLE_WAIT if delay is None else max(0.0, min(IDLE_WAIT, delay))
