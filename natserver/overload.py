"""Load shedding: when requests wait too long in the kernel queue, new ones get 503.

Past its knee a UDP SIP server that tries to serve everything serves almost nothing:
requests wait in the socket queue longer than the clients' T1, the clients retransmit,
and the queue fills with copies of requests already waiting (Kamailio's goodput falls
to 50-60% at twice its capacity). Answering *new* requests ``503 Service Unavailable``
with ``Retry-After`` while the queue is slow costs a parse and one reply, and keeps the
workers' time for the calls and registrations already under way: in-dialog requests
(To-tag), ACK and CANCEL are never shed, nor requests that carry credentials - the
second half of a digest exchange whose first half (the 401/407) was already paid for;
shedding those would waste it - and tm's hooks absorb retransmissions of existing
transactions before this check runs.

The signal is how long a datagram waited: the kernel stamps each one on arrival
(``SO_TIMESTAMP``) and a worker reads the stamp of one datagram every few
milliseconds (``recvmsg`` for that one, plain ``recvfrom`` for the rest). The fill of
the receive buffer was tried first: Linux releases UDP receive memory in chunks of a
quarter of the buffer, so the fill stays high long after the queue has drained.
Shedding starts when two datagrams read at least ``SHED_CHECK`` apart both waited more
than ``load_shed`` ms with no empty queue between them - a worker that was merely not
scheduled for a while finds a few old datagrams and an empty queue right after, which
is no overload - and stops when one waited less than half of that, or the queue ran
empty (hysteresis: the answer does not flap on every packet).

Sans-IO: :class:`Shedder` is fed delays; the two socket helpers are for the worker.
"""

from __future__ import annotations

import socket
import struct

from natserver.errors import SipError
from natserver.sip.headers import Hdr
from natserver.sip.message import Message

SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)  # Linux; Python does not export it
_TIMEVAL = struct.Struct("@qq")
# Requests that belong to something already under way are served whatever the load.
_NEVER_SHED = (b"ACK", b"CANCEL")


def enable_timestamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp datagrams on arrival; False where it cannot."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
    except OSError:
        return False
    return True


def recv_stamped(sock: socket.socket, size: int) -> tuple[bytes, tuple, float | None]:
    """(data, source, arrival time or None) of the next datagram (may raise like recv)."""
    data, anc, _flags, src = sock.recvmsg(size, 64)
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP and len(raw) >= 16:
            sec, usec = _TIMEVAL.unpack_from(raw)
            return data, src, sec + usec / 1e6
    return data, src, None


class Shedder:
    """Is the server shedding load now, and does this request get shed?"""

    __slots__ = ("high", "low", "retry_after", "shedding", "late", "shed")

    def __init__(self, high_ms: int, retry_after: int) -> None:
        self.high = high_ms / 1000.0
        self.low = self.high / 2
        self.retry_after = retry_after
        self.shedding = False
        self.late = False  # the last reading was over ``high``
        self.shed = 0  # requests answered 503 by this process

    def observe(self, waited: float) -> bool:
        """Feed how long one datagram waited (s); returns whether shedding is on."""
        if self.shedding:
            self.shedding = self.late = waited > self.low
        else:
            late = waited > self.high
            self.shedding = late and self.late
            self.late = late
        return self.shedding

    def drained(self) -> None:
        """The queue ran empty: no backlog, whatever the last datagram had waited."""
        self.shedding = self.late = False

    def sheds(self, msg: Message) -> bool:
        """Shedding is on and ``msg`` starts something new: no To-tag, no credentials,
        not ACK/CANCEL."""
        if not self.shedding or msg.method in _NEVER_SHED:
            return False
        if msg.get(Hdr.AUTHORIZATION) is not None or \
                msg.get(Hdr.PROXY_AUTHORIZATION) is not None:
            return False
        try:
            return msg.to.tag is None
        except SipError:  # a broken To: the script's sanity checks answer it
            return False

    def headers(self) -> tuple[bytes, ...]:
        return (b"Retry-After: %d" % self.retry_after,)
