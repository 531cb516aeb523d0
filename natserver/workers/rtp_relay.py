"""The RTP relay processes: ``rtp_relays`` of them, slot k owning port slice k.

What the supervisor makes once, before fork (:func:`open_plane`, a :class:`Plane`):
the control socket - the first entry of ``rtp_control_sock``, else of nathelper's
``rtpproxy_sock`` (a unix stream socket: stale path unlinked, bound, listening; or a
bound UDP socket) - that every relay inherits and serves; one SOCK_DGRAM socketpair per
relay slot for notifications (the supervisor keeps both ends, so notifications for a
relay that is being respawned wait in the queue); the port slices.

A relay process (:class:`Relay`, :func:`main`):

- serves the rtpproxy protocol on the shared control socket. Any relay may take any
  command and executes it against the shared session table (:class:`ShmStore`). A new
  session takes its ports from the receiving relay's own slice and is bound at once
  (``Session.relay`` = its slot). A command on a session another relay owns only
  changes shared memory and then notifies the owner (the Call-ID in one datagram).
  Unix connections are read until EOF, newline-separated commands or one command per
  read (Kamailio's rtpproxy module writes one command without a newline and waits).
- on a notification re-reads the Call-ID's records and reconciles its engine: binds
  sessions it owns and has not bound, adopts records a command changed (new
  signalled addresses), unbinds and frees sessions gone from the table. Every
  ``FULL_RECONCILE`` seconds it does the same for the whole table (the safety net for
  a lost notification).
- writes packet state back (:meth:`ShmStore.write_back`): at once when a side latches,
  moves or locks; counters and last-packet times every ``WRITE_BACK`` seconds.
- expires its own sessions idle for ``rtp_timeout`` (re-checked against the table,
  where a command on another relay may have refreshed them).
- at start binds every session of its slot found in the table (latched peers too, so
  the connected twin sockets are rebuilt): a relay killed with SIGKILL is respawned by
  the supervisor and media flows again without any SIP message.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import setproctitle

from natserver.rtp import protocol as P
from natserver.rtp.control import ControlConfig, ControlServer, Outcome, expired
from natserver.rtp.engine import Engine
from natserver.rtp.ports import PortTable, relay_slices
from natserver.rtp.session import LatchMode, LatchPolicy, Session, find, split_tag
from natserver.rtp.store import TABLE_NAME, ShmStore, fold_counters, same_signalling
from natserver.workers.unixsock import UnixSocketInUse, listen_unix

if TYPE_CHECKING:
    from natserver.context import Context
    from natserver.workers.base import Child

log = logging.getLogger("natserver.rtp.relay")

WRITE_BACK = 1.0          # counters and last-packet times into the table (seconds)
FULL_RECONCILE = 10.0     # the whole table against the engine (lost notifications)
POLL_WAIT = 0.1           # longest engine.poll: the heartbeat is written each turn
CONN_IDLE = 30.0          # an idle control connection is closed after this
MAX_CONNS = 128           # open control connections per relay
UDP_BURST = 64            # control datagrams read per wake-up
SOCKET_MODE = 0o666       # SER/Kamailio may run as another user (rtpproxy -s mode)


class PlaneError(Exception):
    """The relays cannot be set up (start-up error, the message says why)."""


class ControlInUse(PlaneError):
    """Someone else serves the control socket (a running rtpproxy, another server)."""


# ---- the plane: made once, before fork ------------------------------------------------

@dataclass(slots=True)
class Control:
    """The control socket every relay serves."""

    kind: str                 # "unix" or "udp"
    address: str              # path or host
    port: int
    sock: socket.socket

    @property
    def url(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.address}"
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"udp:{host}:{self.sock.getsockname()[1]}"


@dataclass(slots=True)
class Plane:
    """Everything relay slots share: sockets and settings."""

    count: int
    slices: list[tuple[int, int]]
    ip: str                        # relay ports are bound on this address
    advertise: str                 # the IP U/L replies give ("" = port only)
    timeout: float
    policy: LatchPolicy
    control: Control | None
    pairs: list[tuple[socket.socket, socket.socket]] = field(default_factory=list)

    def fds(self) -> tuple[int, ...]:
        out = [s.fileno() for pair in self.pairs for s in pair]
        if self.control is not None:
            out.append(self.control.sock.fileno())
        return tuple(out)

    def title(self, slot: int) -> str:
        lo, hi = self.slices[slot - 1]
        return f"natserver: rtp relay {slot}/{self.count} {lo}-{hi}"

    def close(self, *, unlink: bool) -> None:
        for a, b in self.pairs:
            a.close()
            b.close()
        self.pairs = []
        if self.control is not None:
            self.control.sock.close()
            if unlink and self.control.kind == "unix":
                try:
                    os.unlink(self.control.address)
                except OSError:
                    pass
            self.control = None


def control_spec(cfg: Any, modules: dict[str, Any]) -> str:
    """The control socket text: ``rtp_control_sock``, else the first entry of
    nathelper's ``rtpproxy_sock`` (weights and further entries are the client's)."""
    text = str(getattr(cfg, "rtp_control_sock", "") or "")
    if not text:
        nh = modules.get("nathelper")
        if nh is not None:
            text = str(nh.params.get("rtpproxy_sock", "") or "")
    first = text.split()[0] if text.split() else ""
    return first.partition("=")[0]


def open_control(text: str) -> Control | None:
    """Create the listening control socket for ``unix:PATH`` / ``udp:HOST:PORT``."""
    if not text:
        return None
    from natserver.rtp.client import parse_sock_spec
    try:
        spec = parse_sock_spec(text)[0]
    except (ValueError, IndexError) as exc:
        raise PlaneError(f"bad rtpproxy control socket {text!r}: {exc}") from None
    if spec.kind == "unix":
        return Control("unix", spec.address, 0, _listen_unix(spec.address))
    family = socket.AF_INET6 if spec.kind == "udp6" or ":" in spec.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((spec.address, spec.port))
    except OSError as exc:
        sock.close()
        error = ControlInUse if exc.errno == errno.EADDRINUSE else PlaneError
        raise error(f"cannot bind rtpproxy control socket {text}: {exc.strerror}") from None
    sock.setblocking(False)
    return Control("udp", spec.address, spec.port, sock)


def _listen_unix(path: str) -> socket.socket:
    try:
        return listen_unix(path, backlog=128, mode=SOCKET_MODE)
    except UnixSocketInUse:
        raise ControlInUse(f"rtpproxy control socket {path} is in use (another rtpproxy?)") \
            from None
    except OSError as exc:
        raise PlaneError(f"cannot create control socket {path}: {exc.strerror}") from None


def open_plane(*, count: int, port_min: int, port_max: int, ip: str, advertise: str,
               timeout: float, latch_mode: str, control: str) -> Plane:
    """The relays' shared part (PlaneError when impossible)."""
    try:
        slices = relay_slices(port_min, port_max, count)
    except ValueError as exc:
        raise PlaneError(str(exc)) from None
    policy = LatchPolicy(LatchMode(latch_mode))
    plane = Plane(count, slices, ip, advertise, float(timeout), policy, open_control(control))
    for _ in range(count):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.setblocking(False)
        b.setblocking(False)
        plane.pairs.append((a, b))
    return plane


def plane_from_cfg(cfg: Any, modules: dict[str, Any]) -> Plane | None:
    """The plane a natserver cfg asks for, or None: with ``rtp_relays=0``, without a
    control socket (no ``rtp_control_sock`` and no nathelper ``rtpproxy_sock``: nothing
    could create a session), or when another process serves that socket (a running
    rtpproxy or rtpengine: nathelper talks to it). In the last two cases
    ``cfg.rtp_relays`` is set to 0, so every process plans the same slots."""
    if int(cfg.rtp_relays) <= 0:
        return None
    host = cfg.listens()[0][0]
    text = control_spec(cfg, modules)
    if not text:
        log.info("no rtpproxy control socket configured: built-in RTP relays not started")
        cfg.rtp_relays = 0
        return None
    try:
        return _plane_from_cfg(cfg, host, text)
    except ControlInUse as exc:
        log.warning("%s: built-in RTP relays not started, nathelper uses the relay that "
                    "serves it", exc)
        cfg.rtp_relays = 0
        return None


def _plane_from_cfg(cfg: Any, host: str, text: str) -> Plane:
    return open_plane(count=int(cfg.rtp_relays), port_min=int(cfg.rtp_port_min),
                      port_max=int(cfg.rtp_port_max), ip=host,
                      advertise=cfg.rtp_advertise or cfg.advertised_address
                      or ("" if host in ("0.0.0.0", "::") else host),
                      timeout=float(cfg.rtp_timeout), latch_mode=cfg.rtp_latch_mode,
                      control=text)


# ---- one relay ------------------------------------------------------------------------

class OwnPorts:
    """The executor's port allocator in a relay: allocation binds sockets in this
    relay's slice; releasing a port outside the slice (a session another relay owns,
    deleted by a command that came here) is left to its owner."""

    def __init__(self, engine: Engine, table: PortTable) -> None:
        self.engine = engine
        self.table = table

    def owns(self, port: int) -> bool:
        return self.table.lo <= port <= self.table.hi

    def allocate(self) -> int:
        return self.table.allocate(self.engine.reserve)

    def release(self, port: int) -> None:
        if self.owns(port):
            self.engine.release(port)
            self.table.release(port)

    def claim(self, port: int) -> bool:
        if not self.owns(port) or port & 1:
            return False
        self.table.claim(port)
        return True


def strip_new_port(mods: str) -> str:
    """U/L modifiers without N (outside {label} and [address] values)."""
    out, depth = [], ""
    for c in mods:
        if depth:
            if c == depth:
                depth = ""
        elif c == "{":
            depth = "}"
        elif c == "[":
            depth = "]"
        elif c in "nN":
            continue
        out.append(c)
    return "".join(out)


class Relay:
    """One relay process's state: engine, ports, the store, control connections."""

    def __init__(self, plane: Plane, slot: int, table: Any, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.plane = plane
        self.slot = slot
        self.clock = clock
        lo, hi = plane.slices[slot - 1]
        self.engine = Engine(plane.ip, plane.policy, clock=clock, on_change=self._changed)
        self.ports = OwnPorts(self.engine, PortTable(lo, hi))
        self.store = ShmStore(table)
        cfg = ControlConfig(advertise=plane.advertise, timeout=plane.timeout,
                            policy=plane.policy, relay=slot)
        self.server = ControlServer(self.store, self.ports, cfg, stats=self.engine.stats)
        self.server.prepare = self._prepare
        self.conns: dict[int, list[Any]] = {}      # fd -> [socket, buffer, last activity]
        self.next_write = 0.0
        self.next_full = 0.0
        self.notify_failed = 0

    # -- start and stop ----------------------------------------------------------------
    def start(self) -> None:
        """Bind every session of this slot found in the table, watch the sockets."""
        n = self.reconcile_all()
        if n:
            log.info("rtp relay %d: rebound %d session(s) from shared memory", self.slot, n)
        recv_end = self.plane.pairs[self.slot - 1][1]
        self.engine.watch(recv_end.fileno(), self._on_notify)
        control = self.plane.control
        if control is not None:
            handler = self._on_accept if control.kind == "unix" else self._on_datagram
            self.engine.watch(control.sock.fileno(), handler)
        now = self.clock()
        self.next_write = now + WRITE_BACK
        self.next_full = now + FULL_RECONCILE

    def close(self) -> None:
        for fd in list(self.conns):
            self._close_conn(fd)
        for s in self.engine.take_changes():
            self.store.write_back(s)
        self.engine.close()

    # -- the loop turn -----------------------------------------------------------------
    def step(self, wait: float = POLL_WAIT) -> None:
        self.engine.poll(wait)
        now = self.clock()
        if now >= self.next_write:
            try:
                self.housekeeping(now)
            except Exception:  # a bug here must not drop every call's media with the process
                self.next_write = now + WRITE_BACK
                log.exception("rtp relay %d: housekeeping failed", self.slot)

    def housekeeping(self, now: float) -> None:
        self.next_write = now + WRITE_BACK
        gone = [s for s in self.engine.take_changes() if not self.store.write_back(s)]
        for s in gone:
            self.reconcile_call(s.callid)
        self.expire(now)
        if now >= self.next_full:
            self.next_full = now + FULL_RECONCILE
            self.reconcile_all()
        for fd, (sock, _, last) in list(self.conns.items()):
            if now - last > CONN_IDLE:
                self._close_conn(fd)

    # -- sessions ----------------------------------------------------------------------
    def _changed(self, s: Session) -> None:
        self.store.write_back(s)

    def _drop(self, s: Session) -> None:
        self.engine.unbind(s)
        for side in s.sides:
            if side.port:
                self.ports.release(side.port)

    def _adopt(self, rec: Session) -> bool:
        """Make the engine match the table's record of a session this relay owns."""
        cur = self.engine.bound(rec.ident)
        if cur is None:
            claimed = []
            for side in rec.sides:
                if side.port and side.port not in claimed and self.ports.claim(side.port):
                    claimed.append(side.port)
            try:
                self.engine.bind_session(rec)
            except OSError as exc:
                log.error("rtp relay %d: cannot bind session %s;%d: %s", self.slot,
                          rec.callid.decode(errors="replace"), rec.media, exc)
                for port in claimed:
                    self.ports.release(port)
                return False
            return True
        if same_signalling(cur, rec):
            return True
        for mine, old in zip(rec.sides, cur.sides):
            fold_counters(mine, old)
            if mine.port != old.port:
                self.ports.release(old.port)
                self.ports.claim(mine.port)
        try:
            self.engine.update_session(rec)
        except OSError as exc:
            log.error("rtp relay %d: cannot rebind session %s;%d: %s", self.slot,
                      rec.callid.decode(errors="replace"), rec.media, exc)
            return False
        return True

    def reconcile_call(self, callid: bytes) -> None:
        mine = {s.ident: s for s in self.store.get(callid) if s.relay == self.slot}
        for rec in mine.values():
            self._adopt(rec)
        for s in self.engine.sessions():
            if s.callid == callid and s.ident not in mine:
                self._drop(s)

    def reconcile_all(self) -> int:
        mine = {s.ident: s for s in self.store.iterate() if s.relay == self.slot}
        now = self.clock()
        for rec in mine.values():
            if not self._adopt(rec) and expired(rec, now, self.plane.timeout):
                self.store.delete(rec)   # unbindable and idle: nobody will free it else
        for s in self.engine.sessions():
            if s.ident not in mine:
                self._drop(s)
        return len(mine)

    def expire(self, now: float) -> None:
        timeout = self.plane.timeout
        for s in self.engine.idle(now, timeout):
            rec = self.store.find(s.callid, s.tags[0], s.media)
            if rec is not None:
                for a, b in zip(rec.sides, s.sides):
                    fold_counters(a, b)
                if not expired(rec, now, timeout):
                    continue   # a command on another relay refreshed it
                self.store.delete(rec)
                self.engine.stats.sessions_timeout += 1
                self.engine.stats.sessions_destroyed += 1
                log.info("rtp session %s;%d timed out: %d/%d packets",
                         s.callid.decode(errors="replace"), s.media, rec.sides[0].packets,
                         rec.sides[1].packets)
            self._drop(s)

    # -- commands ----------------------------------------------------------------------
    def _prepare(self, cmd: P.Command) -> P.Command:
        """Before a command runs: this relay's copies of the call's sessions go into the
        table (fresh counters and latches for Q, U, L); N on a session another relay
        owns is dropped (its ports are not ours to change)."""
        if not cmd.callid:
            return cmd
        records = self.store.get(cmd.callid)
        for rec in records:
            if rec.relay == self.slot:
                mine = self.engine.bound(rec.ident)
                if mine is not None:
                    self.store.write_back(mine)
        if cmd.op in (P.Op.UPDATE, P.Op.LOOKUP) and "n" in cmd.mods.lower():
            try:
                new_port = cmd.modifiers.new_port
            except P.ProtocolError:
                return cmd
            if new_port:
                ftag, fn = split_tag(cmd.from_tag)
                ttag, tn = split_tag(cmd.to_tag)
                sender, other = (ftag, ttag) if cmd.op is P.Op.UPDATE else (ttag, ftag)
                s, _ = find(records, fn or tn or 1, sender, other or None)
                if s is not None and s.relay != self.slot:
                    log.info("rtp %s: new port asked of relay %d, session owned by relay %d:"
                             " keeping the port", cmd.callid.decode(errors="replace"),
                             self.slot, s.relay)
                    return replace(cmd, mods=strip_new_port(cmd.mods))
        return cmd

    def after(self, out: Outcome | None) -> None:
        """Bind, rebind and unbind what a command did; notify owners elsewhere."""
        if out is None:
            return
        notify: set[tuple[int, bytes]] = set()
        for s in out.removed:
            if s.relay == self.slot:
                self._drop(s)
            else:
                notify.add((s.relay, s.callid))
        for s in out.created:
            try:
                self.engine.bind_session(s)
            except OSError as exc:
                log.error("rtp relay %d: cannot bind new session: %s", self.slot, exc)
        for s in out.updated:
            if s.relay == self.slot:
                try:
                    self.engine.update_session(s)
                except OSError as exc:
                    log.error("rtp relay %d: cannot rebind session: %s", self.slot, exc)
            else:
                notify.add((s.relay, s.callid))
        for relay, callid in notify:
            log.info("rtp %s: session of relay %d changed by relay %d: notifying",
                     callid.decode(errors="replace"), relay, self.slot)
            self.notify(relay, callid)

    def notify(self, relay: int, callid: bytes) -> None:
        if not 1 <= relay <= len(self.plane.pairs):
            log.warning("rtp session %s names relay %d of %d",
                        callid.decode(errors="replace"), relay, len(self.plane.pairs))
            return
        try:
            self.plane.pairs[relay - 1][0].send(callid)
        except OSError as exc:
            # the queue is full (the owner is down for long): its full reconcile catches up
            self.notify_failed += 1
            if self.notify_failed == 1 or self.notify_failed % 1000 == 0:
                log.warning("rtp relay %d: cannot notify relay %d (%s; %d times)", self.slot,
                            relay, exc.strerror, self.notify_failed)

    def _on_notify(self, now: float) -> None:
        sock = self.plane.pairs[self.slot - 1][1]
        callids = set()
        for _ in range(UDP_BURST):
            try:
                callids.add(sock.recv(4096))
            except (BlockingIOError, InterruptedError):
                break
        for callid in callids:
            try:
                self.reconcile_call(callid)
            except Exception:  # see step()
                log.exception("rtp relay %d: reconciling %r failed", self.slot, callid[:80])

    def _on_datagram(self, now: float) -> None:
        control = self.plane.control
        assert control is not None
        sock = control.sock
        for _ in range(UDP_BURST):
            try:
                data, peer = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            reply, out = self.server.datagram(data, peer, self.clock())
            self._after_safe(out)
            if reply:
                try:
                    sock.sendto(reply, peer)
                except OSError as exc:
                    log.info("rtpproxy reply to %s failed: %s", peer, exc.strerror)

    def _after_safe(self, out: Outcome | None) -> None:
        try:
            self.after(out)
        except Exception:  # a relay bug must not end the process with sessions bound
            log.exception("rtp relay %d: applying a command failed", self.slot)

    def _on_accept(self, now: float) -> None:
        control = self.plane.control
        assert control is not None
        while True:
            try:
                conn, _ = control.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("rtpproxy control accept failed: %s", exc.strerror)
                return
            if len(self.conns) >= MAX_CONNS:
                oldest = min(self.conns, key=lambda fd: self.conns[fd][2])
                self._close_conn(oldest)
            conn.setblocking(False)
            fd = conn.fileno()
            self.conns[fd] = [conn, b"", now]
            self.engine.watch(fd, partial(self._on_conn, fd))

    def _close_conn(self, fd: int) -> None:
        entry = self.conns.pop(fd, None)
        if entry is None:
            return
        self.engine.unwatch(fd)
        entry[0].close()

    def _on_conn(self, fd: int, now: float) -> None:
        entry = self.conns.get(fd)
        if entry is None:
            return
        conn = entry[0]
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_conn(fd)
            return
        entry[2] = now
        buf = entry[1] + data
        lines = buf.split(b"\n")
        # complete lines are commands; a rest without a newline is one too (a client
        # that writes one bare command and waits), unless it is only whitespace
        commands = [line for line in lines if line.strip()]
        entry[1] = b""
        for line in commands:
            reply, out = self.server.stream(line, self.clock())
            self._after_safe(out)
            try:
                conn.sendall(reply)
            except OSError:
                self._close_conn(fd)
                return


# ---- the process ----------------------------------------------------------------------

def main(ctx: Context, child: Child) -> int:
    plane: Plane = child.spec.extra["rtp"]
    slot = ctx.proc.slot
    setproctitle.setproctitle(plane.title(slot))
    relay = Relay(plane, slot, ctx.tables[TABLE_NAME])
    relay.start()
    if child.wake_fd >= 0:
        relay.engine.watch(child.wake_fd, lambda now: child.drain_wake())
    stats = ctx.stats
    child.flush(time.monotonic())
    lo, hi = plane.slices[slot - 1]
    log.info("rtp relay %d/%d: ports %d-%d on %s, control %s", slot, plane.count, lo, hi,
             plane.ip, plane.control.url if plane.control else "none")
    try:
        while not child.stopping:
            relay.step()
            if stats is not None:
                stats.rtp_packets = relay.engine.stats.packets_relayed
                stats.rtp_dropped = relay.engine.stats.packets_dropped
            child.tick()
    finally:
        relay.close()
    return 0
