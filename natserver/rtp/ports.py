"""Relay port tables: each relay owns a slice of rtp_port_min..rtp_port_max.

A slice is a ring of even ports (RTP; RTCP is the port above) in shuffled order, so
ports are not handed out in a guessable sequence and a just-freed port is the last
to come round again (late packets of an old call do not land in a new one). Taking
a port walks the ring from a cursor and asks ``try_bind`` - the relay binds its
sockets there - so a port some other program holds is skipped, not fatal. No lock
is needed between relays: their slices do not overlap.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class PortsExhausted(Exception):
    """No free even port pair is left in this relay's slice."""


def relay_slices(port_min: int, port_max: int, relays: int) -> list[tuple[int, int]]:
    """Split [port_min, port_max] into ``relays`` slices of whole even/odd pairs.

    Each slice is (lo, hi) with lo even and hi odd; every port in it can be used.
    """
    lo = port_min + (port_min & 1)
    pairs = (port_max - lo + 1) // 2
    if relays < 1 or pairs < relays:
        raise ValueError(f"port range {port_min}-{port_max} is too small for {relays} relays")
    out = []
    start = 0
    for i in range(relays):
        n = pairs // relays + (1 if i < pairs % relays else 0)
        out.append((lo + 2 * start, lo + 2 * (start + n) - 1))
        start += n
    return out


class PortTable:
    """The even ports of one relay's slice: allocate / release, try-bind on allocate."""

    def __init__(self, lo: int, hi: int, *, seed: int | None = None) -> None:
        lo += lo & 1
        if hi - lo < 1:
            raise ValueError(f"empty port slice {lo}-{hi}")
        self.lo, self.hi = lo, hi
        self._ring = list(range(lo, hi, 2))
        random.Random(seed).shuffle(self._ring)
        self._cursor = 0
        self._used: set[int] = set()

    @property
    def capacity(self) -> int:
        return len(self._ring)

    @property
    def in_use(self) -> int:
        return len(self._used)

    def __contains__(self, port: int) -> bool:
        return port in self._used

    def allocate(self, try_bind: Callable[[int], bool] | None = None) -> int:
        """An even port P (P+1 for RTCP) marked in use. ``try_bind(P)`` may refuse a port
        (already bound elsewhere); the walk then goes on. PortsExhausted after a full round.
        """
        ring = self._ring
        n = len(ring)
        for _ in range(n):
            port = ring[self._cursor]
            self._cursor = (self._cursor + 1) % n
            if port in self._used:
                continue
            if try_bind is not None and not try_bind(port):
                continue
            self._used.add(port)
            return port
        raise PortsExhausted(f"no free port pair in {self.lo}-{self.hi}")

    def claim(self, port: int) -> None:
        """Mark a port in use that was taken elsewhere (records restored after restart)."""
        if port < self.lo or port > self.hi or port & 1:
            raise ValueError(f"port {port} is not an even port of {self.lo}-{self.hi}")
        self._used.add(port)

    def release(self, port: int) -> None:
        self._used.discard(port)
