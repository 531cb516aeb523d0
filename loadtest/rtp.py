"""Optional RTP per call: 20 ms PCMU packets each way, loss, jitter and relay latency.

Two sockets per generator process (one for the callers' side, one for the callees'),
streams told apart by SSRC, so a thousand calls cost two file descriptors. Every
payload starts with the sender's CLOCK_MONOTONIC time in nanoseconds - the clock is
system-wide, so the receiving side (the same or another process) reads the one-way
latency through the relay directly. Jitter is RFC 3550's interarrival estimate
(J += (|D| - J) / 16) in timestamp units, reported in milliseconds.
"""

from __future__ import annotations

import os
import struct
import time

from loadtest.engine import Loop, udp_socket
from loadtest.stats import Stats

PTIME = 0.02
SAMPLES = 160                 # 20 ms of 8 kHz PCMU
PAYLOAD = 160
GROUPS = 4                    # streams are spread over 4 phases of the 20 ms tick
LINGER = 0.5                  # a stopped stream still counts late packets this long
_HDR = struct.Struct("!BBHIIQ")
_PAD = b"\xff" * (PAYLOAD - 8)
_RX = struct.Struct("!HII")   # seq, timestamp, ssrc at offset 2
_SENT = struct.Struct("!Q")


class Stream:
    """One direction of one call: our sending state and the peer's receiving state."""

    __slots__ = ("ssrc", "side", "dst", "seq", "ts", "sent", "received", "first_seq",
                 "last_seq", "cycles", "jitter", "transit", "group", "sending")

    def __init__(self, ssrc: int, side: int, group: int) -> None:
        self.ssrc = ssrc
        self.side = side
        self.dst: tuple[str, int] | None = None
        self.seq = int.from_bytes(os.urandom(2), "big")
        self.ts = int.from_bytes(os.urandom(4), "big")
        self.sent = 0
        self.received = 0
        self.first_seq = -1
        self.last_seq = 0
        self.cycles = 0
        self.jitter = 0.0
        self.transit = None
        self.group = group
        self.sending = False


class RtpEngine:
    def __init__(self, loop: Loop, stats: Stats, ip: str) -> None:
        self.loop = loop
        self.stats = stats
        self.socks = (udp_socket(ip), udp_socket(ip))
        self.ports = tuple(s.getsockname()[1] for s in self.socks)
        self.streams: dict[int, Stream] = {}
        self.groups: list[list[Stream]] = [[] for _ in range(GROUPS)]
        self.base = int.from_bytes(os.urandom(4), "big") & 0x7FFF0000
        self.n = 0
        self.tick = 0
        self.next_tick = 0.0
        self.running = False
        for c in ("rtp_sent", "rtp_received", "rtp_lost", "rtp_streams", "rtp_stray"):
            stats.counters.setdefault(c, 0)
        self.latency = stats.hist("RTP latency")
        for sock in self.socks:
            loop.add_reader(sock, self._on_packet)

    def pair(self) -> tuple[Stream, Stream]:
        """Streams for a new call: (caller -> callee, callee -> caller)."""
        self.n += 1
        group = self.n % GROUPS
        a = Stream((self.base + 2 * self.n) & 0xFFFFFFFF, 0, group)
        b = Stream((self.base + 2 * self.n + 1) & 0xFFFFFFFF, 1, group)
        self.streams[a.ssrc] = a
        self.streams[b.ssrc] = b
        return a, b

    def start(self, a: Stream, b: Stream, dst_a: tuple[str, int] | None,
              dst_b: tuple[str, int] | None, now: float) -> None:
        for s, dst in ((a, dst_a), (b, dst_b)):
            if dst is None or s.sending:
                continue
            s.dst = dst
            s.sending = True
            self.groups[s.group].append(s)
            self.stats.counters["rtp_streams"] += 1
        if not self.running:
            self.running = True
            self.next_tick = now
            self.loop.timers.at(now, self._tick, None)

    def stop(self, a: Stream, b: Stream, now: float) -> None:
        for s in (a, b):
            if s.sending:
                s.sending = False
                self.groups[s.group].remove(s)
        self.loop.timers.at(now + LINGER, self._forget, (a, b))

    def _forget(self, pair: tuple[Stream, Stream], gen: int, now: float) -> None:
        c = self.stats.counters
        jit = self.stats.hist("RTP jitter")
        for s in pair:
            self.streams.pop(s.ssrc, None)
            # the peer's stream object is this one: sent/received live side by side
            if s.sent:
                c["rtp_lost"] += max(0, s.sent - s.received)
                if s.received > 1:
                    jit.record(s.jitter / 8000.0)

    def _tick(self, arg: None, gen: int, now: float) -> None:
        group = self.groups[self.tick % GROUPS]
        self.tick += 1
        if group:
            socks = self.socks
            pack = _HDR.pack
            t_ns = time.monotonic_ns()
            sent = 0
            for s in group:
                s.seq = (s.seq + 1) & 0xFFFF
                s.ts = (s.ts + SAMPLES) & 0xFFFFFFFF
                try:
                    socks[s.side].sendto(pack(0x80, 0, s.seq, s.ts, s.ssrc, t_ns) + _PAD, s.dst)
                    s.sent += 1
                    sent += 1
                except OSError:
                    self.loop.send_errors += 1
            self.stats.counters["rtp_sent"] += sent
        if not any(self.groups) and self.tick % GROUPS == 0:
            self.running = False
            return
        self.next_tick += PTIME / GROUPS
        self.loop.timers.at(self.next_tick, self._tick, None)

    def _on_packet(self, buf: bytes, addr: tuple[str, int], now: float) -> None:
        if len(buf) < 20:
            self.stats.counters["rtp_stray"] += 1
            return
        seq, ts, ssrc = _RX.unpack_from(buf, 2)
        s = self.streams.get(ssrc)
        if s is None:
            self.stats.counters["rtp_stray"] += 1
            return
        self.stats.counters["rtp_received"] += 1
        s.received += 1
        sent_ns = _SENT.unpack_from(buf, 12)[0]
        self.latency.record(now - sent_ns / 1e9)
        # RFC 3550 A.8: transit in timestamp units, D = transit difference
        transit = now * 8000.0 - ts
        if s.transit is not None:
            d = abs(transit - s.transit)
            if d > 2147483648.0:        # the 32-bit timestamp wrapped
                d = abs(d - 4294967296.0)
            s.jitter += (d - s.jitter) / 16.0
        s.transit = transit
