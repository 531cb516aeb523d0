"""The relay's forwarding engine: the sockets of one relay's sessions and one loop step.

No process management and no signals: a worker (``natserver/workers/rtp_relay.py``)
builds an :class:`Engine`, hands it sessions (``bind_session``/``update_session``/
``unbind``, or ``apply`` with a control :class:`~natserver.rtp.control.Outcome`) and
calls :meth:`Engine.poll` in its loop. Extra descriptors (a control socket, the
notification socket that announces new sessions) join the same epoll via ``watch``.

Sockets. Each side of a session owns an even port P (RTP) and P+1 (RTCP), bound with
SO_REUSEPORT. Once a side has learned its peer (LATCHED or LOCKED), a second socket -
the *twin* - is bound to the same port and connected to that peer. The kernel then
delivers the peer's packets to the twin (a connected socket outscores an unconnected
one) and everything else to the base socket. So:

- fast path: the twin's packets are the peer's by construction - no source check,
  no address parsing: ``recv`` on the twin, ``send`` on the other side's twin
  (connected sockets also skip the kernel's per-packet route lookup); with ctypes,
  recvmmsg/sendmmsg move whatever is queued in one call each (``batch``);
- slow path: the base sockets (and RTCP) get strangers, the first packets of a side,
  asymmetric sides and packets for ports not yet bound to a session. Each packet goes
  through :func:`natserver.rtp.session.on_packet` - the latching policy - and is
  forwarded or dropped and counted.

Counters of the fast path are per-side slots in flat lists, folded into the session
records on a tick (every ``tick`` seconds), which also closes learning windows
(LATCHED -> LOCKED) and stamps ``last_packet`` for idle expiry. ``take_changes``
hands the sessions that changed to whoever keeps the session table.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from natserver.rtp import fastio
from natserver.rtp.control import Outcome, RelayStats
from natserver.rtp.ports import PortTable
from natserver.rtp.session import (
    LatchPolicy,
    Session,
    SideAction,
    SideFlags,
    SideState,
    maybe_lock,
    on_packet,
)

log = logging.getLogger(__name__)

_MAX_DGRAM = 4096
_BATCH = 64
_EMPTY: dict[int, int] = {}


@dataclass(slots=True, eq=False)
class _Port:
    port: int
    rtp: socket.socket
    rtcp: socket.socket
    twin: socket.socket | None = None
    twin_peer: tuple[str, int] | None = None
    binding: _Binding | None = None
    side: int = 0


@dataclass(slots=True, eq=False)
class _Binding:
    session: Session
    ports: list[_Port]
    slots: tuple[int, int]
    dirty: bool = True
    warned: list[bool] = field(default_factory=lambda: [False, False])


class Engine:
    """Sockets, epoll and forwarding for one relay's sessions."""

    def __init__(self, ip: str = "0.0.0.0", policy: LatchPolicy | None = None, *,
                 batch: bool | None = None, rcvbuf: int = 1 << 20, tick: float = 0.5,
                 clock: Callable[[], float] = time.time,
                 on_change: Callable[[Session], None] | None = None) -> None:
        self.ip = ip
        self.family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self.policy = policy or LatchPolicy()
        self.rcvbuf = rcvbuf
        self.tick = tick
        self.clock = clock
        # called at once when a side latches, moves or locks (counters wait for the tick):
        # the session table then never holds an address older than the relay's
        self.on_change = on_change
        self.stats = RelayStats()
        self.errors = 0
        self.batched = 0        # packets moved by recvmmsg/sendmmsg
        self._ep = select.epoll()
        self._ports: dict[int, _Port] = {}
        self._bindings: dict[tuple[bytes, bytes, int], _Binding] = {}
        # fd -> (recv, send, addr or None, slot): twin of side i, forwarding to side 1-i
        self._fast: dict[int, tuple] = {}
        # fd -> (in fd, out fd, slot) when both sides have twins (batched path)
        self._pairs: dict[int, tuple[int, int, int]] = {}
        # fd -> (port, rtcp?, socket): everything that needs the policy
        self._slow: dict[int, tuple[_Port, bool, socket.socket]] = {}
        self._watch: dict[int, Callable[[float], None]] = {}
        self._fw: list[int] = []   # packets forwarded by the fast path, per side slot
        self._by: list[int] = []   # bytes, likewise
        self._free: list[int] = []
        self._next_tick = 0.0
        use_batch = fastio.AVAILABLE if batch is None else batch and fastio.AVAILABLE
        self._mm = fastio.Mmsg(_BATCH, _MAX_DGRAM, names=False) if use_batch else None
        self._busy: dict[int, int] = {}   # fds ready in the previous step

    # -- ports ----------------------------------------------------------------------
    def _open(self, port: int) -> socket.socket:
        # A plain bind first: it fails when anyone holds the port, even with
        # SO_REUSEPORT (which would otherwise let us share a stranger's port).
        with socket.socket(self.family, socket.SOCK_DGRAM) as probe:
            probe.bind((self.ip, port))
        s = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.setblocking(False)
            fastio.set_buffers(s, rcv=self.rcvbuf)
            s.bind((self.ip, port))
        except OSError:
            s.close()
            raise
        return s

    def reserve(self, port: int) -> bool:
        """Bind RTP and RTCP sockets on ``port``/``port+1``; False when either is taken.

        This is the try-bind of :class:`~natserver.rtp.ports.PortTable.allocate`.
        """
        if port in self._ports:
            return False
        try:
            rtp = self._open(port)
        except OSError:
            return False
        try:
            rtcp = self._open(port + 1)
        except OSError:
            rtp.close()
            return False
        p = _Port(port, rtp, rtcp)
        self._ports[port] = p
        for sock, is_rtcp in ((rtp, False), (rtcp, True)):
            self._slow[sock.fileno()] = (p, is_rtcp, sock)
            self._ep.register(sock.fileno(), select.EPOLLIN)
        return True

    def release(self, port: int) -> None:
        """Close the sockets of ``port`` (no-op when it holds none)."""
        p = self._ports.pop(port, None)
        if p is None:
            return
        self._drop_twin(p)
        for sock in (p.rtp, p.rtcp):
            fd = sock.fileno()
            self._slow.pop(fd, None)
            self._ep.unregister(fd)
            sock.close()
        if p.binding is not None:
            self._refresh(p.binding)

    def allocator(self, table: PortTable) -> EngineAllocator:
        return EngineAllocator(self, table)

    # -- sessions ------------------------------------------------------------------
    def bind_session(self, s: Session) -> None:
        """Take over a session: bind (or adopt reserved) sockets for both sides' ports."""
        if s.ident in self._bindings:
            self.update_session(s)
            return
        ports = [self._port_for(s.sides[i].port) for i in (0, 1)]
        slots = (self._slot(), self._slot())
        b = _Binding(s, ports, slots)
        for i, p in enumerate(ports):
            p.binding, p.side = b, i
        self._bindings[s.ident] = b
        self._refresh(b)

    def update_session(self, s: Session) -> None:
        """Adopt a newer record of a bound session (after U/L: signalled addresses,
        flags, maybe a new port). Fast-path counters not yet folded are kept."""
        b = self._bindings.get(s.ident)
        if b is None:
            self.bind_session(s)
            return
        for i in (0, 1):
            if b.ports[i].port != s.sides[i].port:
                old = b.ports[i]
                old.binding = None
                self.release(old.port)
                p = self._port_for(s.sides[i].port)
                p.binding, p.side = b, i
                b.ports[i] = p
        b.session = s
        b.dirty = True
        self._refresh(b)

    def unbind(self, s: Session) -> Session | None:
        """Forget a session and close its sockets; returns the engine's last copy."""
        b = self._bindings.pop(s.ident, None)
        if b is None:
            return None
        self._fold(b, self.clock())
        for p in b.ports:
            p.binding = None
            self.release(p.port)
        for slot in b.slots:
            self._fw[slot] = self._by[slot] = 0
            self._free.append(slot)
        return b.session

    def apply(self, out: Outcome) -> None:
        """Bind, rebind and unbind what a control command did."""
        for s in out.removed:
            self.unbind(s)
        for s in out.created:
            self.bind_session(s)
        for s in out.updated:
            self.update_session(s)

    def sessions(self) -> list[Session]:
        return [b.session for b in self._bindings.values()]

    def bound(self, ident: tuple[bytes, bytes, int]) -> Session | None:
        """The engine's copy of a bound session (``Session.ident``), counters folded."""
        b = self._bindings.get(ident)
        if b is None:
            return None
        self._fold(b, self.clock())
        return b.session

    @property
    def ports_bound(self) -> int:
        return len(self._ports)

    def take_changes(self) -> list[Session]:
        """Sessions changed since the last call (latches, locks, counters), folded now."""
        now = self.clock()
        out = []
        for b in self._bindings.values():
            self._fold(b, now)
            if b.dirty:
                b.dirty = False
                out.append(b.session)
        return out

    def idle(self, now: float, timeout: float) -> list[Session]:
        """Bound sessions without media (or commands) for ``timeout`` seconds."""
        out = []
        for b in self._bindings.values():
            self._fold(b, now)
            if now - b.session.idle_since() >= timeout:
                out.append(b.session)
        return out

    def watch(self, fd: int, callback: Callable[[float], None]) -> None:
        """Call ``callback(now)`` from :meth:`poll` when ``fd`` is readable."""
        self._watch[fd] = callback
        self._ep.register(fd, select.EPOLLIN)

    def unwatch(self, fd: int) -> None:
        if self._watch.pop(fd, None) is not None:
            self._ep.unregister(fd)

    def close(self) -> None:
        for port in list(self._ports):
            self.release(port)
        self._ep.close()

    # -- the loop step ---------------------------------------------------------------
    def poll(self, timeout: float = 0.1) -> int:
        """Wait up to ``timeout`` s, forward what is ready; returns the events handled.

        A fast-path socket that was ready in the previous step too has a queue: it is
        drained with one recvmmsg/sendmmsg pair. Otherwise one datagram moves with
        plain recv/send - with one packet waiting (many streams, each at its own
        pace) two ctypes calls cost more than the native ones.
        """
        events = self._ep.poll(timeout)
        now = self.clock()
        fast = self._fast
        fw = self._fw
        by = self._by
        mm = self._mm
        pairs = self._pairs
        busy = self._busy if mm is not None else _EMPTY
        for fd, _ in events:
            if fd in busy:
                pair = pairs.get(fd)
                if pair is not None:
                    sent, lost, nbytes = mm.relay(pair[0], pair[1])
                    if sent > 0:
                        fw[pair[2]] += sent
                        by[pair[2]] += nbytes
                        self.batched += sent
                    if lost or sent < 0:
                        self.errors += 1
                        self.stats.packets_dropped += lost
                    continue
            entry = fast.get(fd)
            if entry is None:
                self._other(fd, now)
                continue
            recv, send, addr, slot = entry
            try:
                data = recv(_MAX_DGRAM)
                if addr is None:
                    send(data)
                else:
                    send(data, addr)
            except OSError:
                # ICMP errors surface on connected sockets; the next call works again
                self.errors += 1
                continue
            fw[slot] += 1
            by[slot] += len(data)
        if mm is not None:
            self._busy = dict(events)
        if now >= self._next_tick:
            self._on_tick(now)
        return len(events)

    def _other(self, fd: int, now: float) -> None:
        slow = self._slow.get(fd)
        if slow is not None:
            self._slow_packet(slow[0], slow[1], slow[2], now)
            return
        callback = self._watch.get(fd)
        if callback is not None:
            callback(now)

    def _slow_packet(self, p: _Port, rtcp: bool, sock: socket.socket, now: float) -> None:
        try:
            data, addr = sock.recvfrom(_MAX_DGRAM)
        except OSError:
            return
        self._policy_packet(p, rtcp, data, addr[0], addr[1], now)

    def _policy_packet(self, p: _Port, rtcp: bool, data: bytes, ip: str, port: int,
                       now: float) -> None:
        stats = self.stats
        stats.packets_in += 1
        b = p.binding
        if b is None:
            stats.packets_dropped += 1   # a reserved port without a session yet
            return
        i = p.side
        s = b.session
        side = s.sides[i]
        before = (side.state, side.peer_ip, side.peer_port)
        actions = on_packet(side, ip, port, now, self.policy, rtcp)
        b.dirty = True
        if actions & SideAction.FORWARD:
            if actions & SideAction.LATCH:
                log.info("rtp %s;%d side %d %s latched to %s:%d",
                         s.callid.decode(errors="replace"), s.media, i,
                         "RTCP" if rtcp else "RTP", ip, port)
            side.packets += 1
            side.bytes += len(data)
            side.last_packet = now
            if self._send_on(b, i, rtcp, data):
                side.relayed += 1
                stats.packets_relayed += 1
            else:
                side.dropped += 1
                stats.packets_dropped += 1
        else:
            side.dropped += 1
            stats.packets_dropped += 1
            if not b.warned[i]:
                b.warned[i] = True
                log.warning("rtp %s;%d side %d: dropping packets from %s:%d (peer %s:%d, %s)",
                            s.callid.decode(errors="replace"), s.media, i, ip, port,
                            side.peer_ip or "-", side.peer_port, side.state.name)
        if (side.state, side.peer_ip, side.peer_port) != before:
            self._refresh(b)
            if self.on_change is not None:
                self.on_change(s)

    def _send_on(self, b: _Binding, i: int, rtcp: bool, data: bytes) -> bool:
        """Send a packet from side ``i`` on to the other party; False if undeliverable."""
        other = b.session.sides[1 - i]
        out = b.ports[1 - i]
        dst = other.rtcp_peer if rtcp else other.peer
        if dst is None:
            return False
        try:
            if rtcp:
                out.rtcp.sendto(data, dst)
            elif out.twin is not None and out.twin_peer == dst:
                out.twin.send(data)
            else:
                out.rtp.sendto(data, dst)
        except OSError:
            self.errors += 1
            return False
        return True

    def _on_tick(self, now: float) -> None:
        self._next_tick = now + self.tick
        policy = self.policy
        for b in self._bindings.values():
            self._fold(b, now)
            for side in b.session.sides:
                if maybe_lock(side, now, policy):
                    b.dirty = True
                    s = b.session
                    log.info("rtp %s;%d: peer %s:%d locked", s.callid.decode(errors="replace"),
                             s.media, side.peer_ip, side.peer_port)
                    if self.on_change is not None:
                        self.on_change(s)

    def _fold(self, b: _Binding, now: float) -> None:
        fw, by = self._fw, self._by
        for i, slot in enumerate(b.slots):
            n = fw[slot]
            if n:
                side = b.session.sides[i]
                side.packets += n
                side.relayed += n
                side.bytes += by[slot]
                side.window_packets += n
                side.last_packet = now
                self.stats.packets_in += n
                self.stats.packets_relayed += n
                fw[slot] = by[slot] = 0
                b.dirty = True

    # -- forwarding entries ------------------------------------------------------------
    def _slot(self) -> int:
        if self._free:
            return self._free.pop()
        self._fw.append(0)
        self._by.append(0)
        return len(self._fw) - 1

    def _port_for(self, port: int) -> _Port:
        p = self._ports.get(port)
        if p is None:
            if not self.reserve(port):
                raise OSError(f"cannot bind relay port {port}")
            p = self._ports[port]
        return p

    def _refresh(self, b: _Binding) -> None:
        """Recompute both directions' forwarding entries after a side changed."""
        s = b.session
        for i in (0, 1):
            p, side = b.ports[i], s.sides[i]
            peer = side.peer
            want = (peer is not None and side.state in (SideState.LATCHED, SideState.LOCKED)
                    and not side.flags & SideFlags.ASYMMETRIC and p.port in self._ports)
            if not want:
                self._drop_twin(p)
            elif p.twin is None:
                self._make_twin(p, peer)
            elif p.twin_peer != peer:
                p.twin.connect(peer)
                p.twin_peer = peer
        for i in (0, 1):
            p, q = b.ports[i], b.ports[1 - i]
            if p.twin is None:
                continue
            fd = p.twin.fileno()
            dst = s.sides[1 - i].peer
            self._fast.pop(fd, None)
            self._pairs.pop(fd, None)
            self._slow.pop(fd, None)
            if q.twin is not None:
                self._fast[fd] = (p.twin.recv, q.twin.send, None, b.slots[i])
                self._pairs[fd] = (fd, q.twin.fileno(), b.slots[i])
            elif dst is not None and q.port in self._ports:
                self._fast[fd] = (p.twin.recv, q.rtp.sendto, dst, b.slots[i])
            else:
                # nowhere to send yet: the slow path counts these as undeliverable
                self._slow[fd] = (p, False, p.twin)

    def _make_twin(self, p: _Port, peer: tuple[str, int]) -> None:
        t = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            t.setblocking(False)
            fastio.set_buffers(t, rcv=self.rcvbuf)
            t.bind((self.ip, p.port))
            t.connect(peer)
        except OSError as exc:
            t.close()
            log.warning("relay port %d: no connected socket for %s:%d (%s)", p.port,
                        peer[0], peer[1], exc)
            return
        p.twin, p.twin_peer = t, peer
        self._ep.register(t.fileno(), select.EPOLLIN)
        # Between bind and connect the twin was an unconnected member of the port's
        # group and may hold a stranger's datagram: run those through the policy.
        now = self.clock()
        while True:
            try:
                data, addr = t.recvfrom(_MAX_DGRAM)
            except OSError:
                break
            self._policy_packet(p, False, data, addr[0], addr[1], now)

    def _drop_twin(self, p: _Port) -> None:
        if p.twin is None:
            return
        fd = p.twin.fileno()
        for table in (self._fast, self._pairs, self._slow):
            table.pop(fd, None)
        self._ep.unregister(fd)
        p.twin.close()
        p.twin = p.twin_peer = None


class EngineAllocator:
    """The control executor's port allocator for a relay: the port table's try-bind is
    the engine binding the sockets, and releasing a port closes them."""

    def __init__(self, engine: Engine, table: PortTable) -> None:
        self.engine = engine
        self.table = table

    def allocate(self) -> int:
        return self.table.allocate(self.engine.reserve)

    def release(self, port: int) -> None:
        self.engine.release(port)
        self.table.release(port)
