"""The relay engine with real UDP sockets on 127.0.0.1 (natserver/rtp/engine.py, fastio.py).

Two endpoints talk through the engine; strangers (other ports, or 127.0.0.2) try to
inject. The engine's clock is a test-controlled value so learning windows and idle
timeouts pass without sleeping.
"""

import random
import socket
import struct

import pytest

from natserver.rtp import fastio
from natserver.rtp import protocol as P
from natserver.rtp.control import ControlConfig, ControlServer, remove
from natserver.rtp.engine import Engine
from natserver.rtp.ports import PortTable
from natserver.rtp.session import DictStore, LatchMode, LatchPolicy, SideState

PAYLOAD = 160


def rtp(seq: int, marker: bytes = b"") -> bytes:
    body = (marker + bytes(PAYLOAD))[:PAYLOAD]
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234) + body


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


class Relay:
    """Engine + control executor + store, the way a relay process wires them."""

    def __init__(self, batch: bool, mode=LatchMode.STRICT, timeout=60.0):
        self.clock = Clock()
        self.engine = Engine("127.0.0.1", LatchPolicy(mode), batch=batch, clock=self.clock,
                             tick=0.0)
        base = 20000 + 2 * random.randrange(0, 4500)      # no fixed ports under xdist
        self.table = PortTable(base, base + 199)
        self.store = DictStore()
        self.alloc = self.engine.allocator(self.table)
        self.server = ControlServer(self.store, self.alloc,
                                    ControlConfig(advertise="127.0.0.1", timeout=timeout,
                                                  policy=LatchPolicy(mode)),
                                    stats=self.engine.stats)

    def command(self, text: bytes) -> P.Reply:
        for s in self.engine.take_changes():
            self.store.put(s)
        reply, out = self.server.stream(text, self.clock())
        self.engine.apply(out)
        return P.parse_reply(reply)

    def pump(self, rounds: int = 4) -> None:
        """Loop steps until nothing is ready (loopback delivers within the send call)."""
        for _ in range(rounds):
            if not self.engine.poll(0.002):
                break

    def close(self):
        self.engine.close()


def endpoint(ip="127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    s.setblocking(False)
    return s


def drain(s: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(s.recv(4096))
        except BlockingIOError:
            return out


@pytest.fixture(params=[True, False], ids=["batch", "plain"])
def call(request):
    """A relay with one answered call between endpoints a and b: (relay, a, b, pa, pb)
    where a sends to pa and b to pb."""
    if request.param and not fastio.AVAILABLE:
        pytest.skip("recvmmsg/sendmmsg not available")
    relay = Relay(batch=request.param)
    a, b = endpoint(), endpoint()
    pb = relay.command(b"U c1 127.0.0.1 %d tagA" % a.getsockname()[1]).port
    pa = relay.command(b"L c1 127.0.0.1 %d tagA tagB" % b.getsockname()[1]).port
    assert pa and pb
    yield relay, a, b, pa, pb
    relay.close()
    a.close()
    b.close()


def exchange(relay, a, b, pa, pb, count, start=0):
    """Send ``count`` packets each way; return what each side received."""
    got_a, got_b = [], []
    for i in range(start, start + count):
        a.sendto(rtp(i, b"from-a"), ("127.0.0.1", pa))
        b.sendto(rtp(i, b"from-b"), ("127.0.0.1", pb))
        relay.pump(2)
        got_a += drain(a)
        got_b += drain(b)
    relay.pump(3)
    return got_a + drain(a), got_b + drain(b)


def lock(relay):
    """Let the learning windows close."""
    relay.clock.t += 5
    relay.pump(2)


def test_two_way_rtp_through_the_engine(call):
    relay, a, b, pa, pb = call
    got_a, got_b = exchange(relay, a, b, pa, pb, 50)
    assert got_b == [rtp(i, b"from-a") for i in range(50)]
    assert got_a == [rtp(i, b"from-b") for i in range(50)]
    lock(relay)
    (s,) = relay.engine.sessions()
    assert [d.state for d in s.sides] == [SideState.LOCKED, SideState.LOCKED]
    # locked: the connected fast path carries the rest
    got_a, got_b = exchange(relay, a, b, pa, pb, 200, start=50)
    assert len(got_a) == len(got_b) == 200
    assert got_b[-1] == rtp(249, b"from-a")
    (s,) = relay.engine.take_changes()
    assert s.sides[0].packets == s.sides[1].packets == 250
    assert s.sides[0].relayed == 250 and s.sides[0].bytes == 250 * (12 + PAYLOAD)
    assert relay.engine.stats.packets_relayed == 500


def test_queued_packets_keep_order_and_move_in_batches(call):
    relay, a, b, pa, pb = call
    exchange(relay, a, b, pa, pb, 2)
    lock(relay)
    for i in range(100, 140):
        a.sendto(rtp(i, b"burst"), ("127.0.0.1", pa))
    relay.pump(60)
    assert drain(b) == [rtp(i, b"burst") for i in range(100, 140)]
    if relay.engine._mm is not None:
        assert relay.engine.batched >= 30    # one plain recv, then the queue in batches


def test_stranger_after_latching_is_not_forwarded(call):
    relay, a, b, pa, pb = call
    exchange(relay, a, b, pa, pb, 5)
    lock(relay)
    thief = endpoint()                       # same IP, another port: still a stranger
    far = endpoint("127.0.0.2")
    for i in range(20):
        thief.sendto(rtp(i, b"thief"), ("127.0.0.1", pa))
        far.sendto(rtp(i, b"far"), ("127.0.0.1", pb))
    relay.pump(10)
    assert drain(a) == [] and drain(b) == []
    assert drain(thief) == [] and drain(far) == []
    got_a, got_b = exchange(relay, a, b, pa, pb, 5, start=5)
    assert len(got_a) == len(got_b) == 5     # the real parties are unaffected
    s = relay.engine.take_changes()[0]
    assert s.sides[0].dropped == 20 and s.sides[1].dropped == 20
    assert s.sides[0].peer == a.getsockname() and s.sides[1].peer == b.getsockname()
    for x in (thief, far):
        x.close()


def test_strict_mode_stranger_cannot_take_a_fresh_port():
    relay = Relay(batch=False)
    try:
        a, b, far = endpoint(), endpoint(), endpoint("127.0.0.2")
        pb = relay.command(b"U c1 127.0.0.1 %d tagA" % a.getsockname()[1]).port
        pa = relay.command(b"L c1 127.0.0.1 %d tagA tagB" % b.getsockname()[1]).port
        far.sendto(rtp(0, b"far"), ("127.0.0.1", pa))        # before A ever sends
        relay.pump()
        assert drain(b) == []
        got_a, got_b = exchange(relay, a, b, pa, pb, 3)
        assert len(got_a) == len(got_b) == 3
        assert relay.engine.sessions()[0].sides[0].peer == a.getsockname()
        for x in (a, b, far):
            x.close()
    finally:
        relay.close()


def test_rtpproxy_mode_reproduces_the_bleed():
    relay = Relay(batch=False, mode=LatchMode.RTPPROXY)
    try:
        a, b, far = endpoint(), endpoint(), endpoint("127.0.0.2")
        relay.command(b"U c1 127.0.0.1 %d tagA" % a.getsockname()[1])
        pa = relay.command(b"L c1 127.0.0.1 %d tagA tagB" % b.getsockname()[1]).port
        far.sendto(rtp(0, b"far"), ("127.0.0.1", pa))
        relay.pump()
        assert drain(b) == [rtp(0, b"far")]
        assert relay.engine.sessions()[0].sides[0].peer == far.getsockname()
        for x in (a, b, far):
            x.close()
    finally:
        relay.close()


def test_rtcp_is_relayed_on_port_plus_one(call):
    relay, a, b, pa, pb = call
    exchange(relay, a, b, pa, pb, 2)
    a_rtcp, b_rtcp = endpoint(), endpoint()
    # RTCP from the parties' IP (another port than RTP+1 is fine: it latches)
    b_rtcp.sendto(b"\x81\xc9" + bytes(30), ("127.0.0.1", pb + 1))   # teaches B's RTCP
    relay.pump()
    a_rtcp.sendto(b"\x81\xc8" + bytes(50), ("127.0.0.1", pa + 1))
    relay.pump()
    assert drain(b_rtcp) == [b"\x81\xc8" + bytes(50)]
    s = relay.engine.sessions()[0]
    assert s.sides[0].rtcp_peer == a_rtcp.getsockname()
    for x in (a_rtcp, b_rtcp):
        x.close()


def test_idle_expiry_frees_ports(call):
    relay, a, b, pa, pb = call
    exchange(relay, a, b, pa, pb, 3)
    lock(relay)
    assert relay.engine.idle(relay.clock(), 60.0) == []
    relay.clock.t += 61
    (s,) = relay.engine.idle(relay.clock(), 60.0)
    for x in relay.engine.take_changes():
        relay.store.put(x)
    remove(s, relay.store, relay.alloc, relay.engine.stats, timeout=True)
    relay.engine.unbind(s)
    assert len(relay.store) == 0 and relay.table.in_use == 0
    for port in (pa, pa + 1, pb, pb + 1):      # really closed: a plain bind succeeds
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))
    a.sendto(rtp(99), ("127.0.0.1", pa))
    relay.pump()
    assert drain(b) == []


def test_delete_unbinds_and_reinvite_rebinds_new_port(call):
    relay, a, b, pa, pb = call
    exchange(relay, a, b, pa, pb, 3)
    new_pb = relay.command(b"UN c1 127.0.0.1 %d tagA tagB" % a.getsockname()[1]).port
    assert new_pb != pb
    got_a, got_b = exchange(relay, a, b, pa, new_pb, 3, start=3)
    assert len(got_a) == len(got_b) == 3
    assert relay.command(b"D c1 tagB").text == b"0"
    assert relay.engine.sessions() == [] and relay.table.in_use == 0


def test_asymmetric_side_sends_to_signalled_address(call):
    relay, a, b, pa, pb = call
    relay.clock.t += 1
    a_in = endpoint()          # A receives here, sends from ``a``
    relay.command(b"UA c1 127.0.0.1 %d tagA tagB" % a_in.getsockname()[1])
    exchange(relay, a, b, pa, pb, 4)
    b.sendto(rtp(7, b"to-a"), ("127.0.0.1", pb))
    relay.pump()
    assert rtp(7, b"to-a") in drain(a_in)
    a_in.close()


def test_reserved_port_without_session_drains_and_counts():
    relay = Relay(batch=False)
    try:
        port = relay.alloc.allocate()
        s = endpoint()
        s.sendto(b"x" * 20, ("127.0.0.1", port))
        relay.pump()
        assert relay.engine.stats.packets_dropped == 1
        relay.alloc.release(port)
        s.close()
    finally:
        relay.close()


def test_watch_calls_back_on_readable_fd():
    relay = Relay(batch=False)
    try:
        seen = []
        r = endpoint()
        relay.engine.watch(r.fileno(), lambda now: seen.append(r.recv(100)))
        endpoint().sendto(b"wake", r.getsockname())
        relay.pump()
        assert seen == [b"wake"]
        relay.engine.unwatch(r.fileno())
        r.close()
    finally:
        relay.close()


@pytest.mark.skipif(not fastio.AVAILABLE, reason="recvmmsg/sendmmsg not available")
def test_mmsg_batches_round_trip():
    rx, tx = endpoint(), endpoint()
    out = fastio.Mmsg(8, 256, names=True)
    dest = fastio.sockaddr(*rx.getsockname())
    assert fastio.unpack_sockaddr(dest) == rx.getsockname()
    for i in range(8):
        out.fill(i, b"pkt%d" % i, dest)
    assert out.send(tx.fileno(), 0, 8) == 8
    inb = fastio.Mmsg(16, 256, names=True)
    n = inb.recv(rx.fileno())
    assert n == 8
    assert [bytes(inb.payload(i)) for i in range(n)] == [b"pkt%d" % i for i in range(8)]
    assert fastio.unpack_sockaddr(inb.source(0)) == tx.getsockname()
    assert inb.recv(rx.fileno()) == -1       # EAGAIN, no exception
    for x in (rx, tx):
        x.close()


def test_sockaddr_ipv6():
    raw = fastio.sockaddr("2001:db8::1", 5004)
    assert len(raw) == 28 and fastio.unpack_sockaddr(raw) == ("2001:db8::1", 5004)
    assert len(fastio.sockaddr("127.0.0.1", 5004)) == 16


def test_ipv6_relay_forwards_both_ways():
    clock = Clock()
    engine = Engine("::1", batch=False, clock=clock, tick=0.0)
    base = 20000 + 2 * random.randrange(0, 4500)
    store = DictStore()
    server = ControlServer(store, engine.allocator(PortTable(base, base + 99)),
                           ControlConfig(advertise="::1"), stats=engine.stats)
    a, b = (socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range(2))
    try:
        for s in (a, b):
            s.bind(("::1", 0))
            s.setblocking(False)
        reply, out = server.stream(b"U6 c1 ::1 %d tagA" % a.getsockname()[1], clock())
        engine.apply(out)
        assert reply.endswith(b" ::1 6\n")
        pb = P.parse_reply(reply).port
        reply, out = server.stream(b"L6 c1 ::1 %d tagA tagB" % b.getsockname()[1], clock())
        engine.apply(out)
        pa = P.parse_reply(reply).port
        for i in range(3):
            a.sendto(rtp(i, b"v6a"), ("::1", pa))
            b.sendto(rtp(i, b"v6b"), ("::1", pb))
            for _ in range(3):
                engine.poll(0.002)
        assert drain(b) == [rtp(i, b"v6a") for i in range(3)]
        assert drain(a) == [rtp(i, b"v6b") for i in range(3)]
    finally:
        engine.close()
        a.close()
        b.close()


def test_on_change_reports_latches_and_locks_at_once(call):
    relay, a, b, pa, pb = call
    seen = []
    relay.engine.on_change = lambda s: seen.append([d.state for d in s.sides])
    exchange(relay, a, b, pa, pb, 1)
    assert seen[:2] == [[SideState.LATCHED, SideState.SIGNALLED],
                        [SideState.LATCHED, SideState.LATCHED]]
    lock(relay)
    assert seen[-1] == [SideState.LOCKED, SideState.LOCKED]
