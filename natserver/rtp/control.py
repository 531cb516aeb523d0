"""The rtpproxy command executor: apply a parsed command to the session store.

Sans-IO: the store (:class:`~natserver.rtp.session.SessionStore`), the port allocator
and ``now`` are handed in; the result is the reply text plus the sessions that were
created, changed or removed, which the caller passes on to the relay engine (bind,
rebind, unbind) or, later, to the shared-memory table. :class:`ControlServer` wraps the
executor with the wire: cookies, the (peer, cookie) reply cache, counters.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Protocol

from natserver.rtp import protocol as P
from natserver.rtp.ports import PortsExhausted
from natserver.rtp.session import (
    CALLID_MAX,
    TAG_MAX,
    LatchPolicy,
    Session,
    SessionAction,
    SessionEvent,
    SessionFlags,
    SessionState,
    SessionStore,
    SESSION_TABLE,
    find,
    matches_delete,
    signal,
    split_tag,
)

log = logging.getLogger(__name__)


class PortAllocator(Protocol):
    def allocate(self) -> int: ...

    def release(self, port: int) -> None: ...


@dataclass(slots=True)
class RelayStats:
    """Per-relay counters; ``G`` reports them under rtpproxy's names (``STAT_NAMES``)."""

    sessions_created: int = 0
    sessions_destroyed: int = 0
    sessions_timeout: int = 0
    commands: int = 0
    commands_ok: int = 0
    commands_failed: int = 0
    replies_cached: int = 0
    packets_in: int = 0
    packets_relayed: int = 0
    packets_dropped: int = 0


STAT_NAMES: dict[bytes, str] = {
    b"nsess_created": "sessions_created",
    b"nsess_destroyed": "sessions_destroyed",
    b"nsess_timeout": "sessions_timeout",
    b"ncmds_rcvd": "commands",
    b"ncmds_succd": "commands_ok",
    b"ncmds_errs": "commands_failed",
    b"ncmds_repld": "replies_cached",
    b"npkts_rcvd": "packets_in",
    b"npkts_relayed": "packets_relayed",
    b"npkts_dropped": "packets_dropped",
}
assert set(STAT_NAMES.values()) == {f.name for f in fields(RelayStats)}


@dataclass(slots=True)
class ControlConfig:
    advertise: str = ""          # IP given in U/L replies; "" = port only (like no -l)
    timeout: float = 60.0        # rtp_timeout
    policy: LatchPolicy = field(default_factory=LatchPolicy)
    relay: int = 0               # index written into new records
    draining: bool = False       # refuse new sessions (graceful stop): E99


@dataclass(slots=True)
class Outcome:
    """What one command did, beyond its reply."""

    reply: bytes
    created: list[Session] = field(default_factory=list)
    updated: list[Session] = field(default_factory=list)
    removed: list[Session] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not P.Reply(self.reply).is_error


def _error(code: P.ECode) -> Outcome:
    return Outcome(P.error_reply(code))


def _address(cmd: P.Command, ipv6: bool) -> str | None:
    """The U/L address: "" when it pre-fills nothing (too short, as 1.x), None when bad."""
    text = cmd.addr.decode("ascii", "replace")
    if len(text) < (2 if ipv6 else 7):
        return ""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if (addr.version == 6) != ipv6:
        return None
    return str(addr)


def execute(cmd: P.Command, store: SessionStore, ports: PortAllocator, now: float,
            cfg: ControlConfig, stats: RelayStats | None = None) -> Outcome:
    """Run one command; never raises for bad input (errors are E-code replies)."""
    stats = stats if stats is not None else RelayStats()
    handler = _HANDLERS.get(cmd.op, _unsupported)
    return handler(cmd, store, ports, now, cfg, stats)


def _update_lookup(cmd: P.Command, store: SessionStore, ports: PortAllocator, now: float,
                   cfg: ControlConfig, stats: RelayStats) -> Outcome:
    mods = cmd.modifiers
    if mods.unknown:
        log.warning("rtpproxy %s: ignoring unknown modifiers %r", cmd.op.value, mods.unknown)
    from_name, from_n = split_tag(cmd.from_tag)
    to_name, to_n = split_tag(cmd.to_tag)
    if from_n is not None and to_n is not None and from_n != to_n:
        return _error(P.ECode.BAD_TAG)
    if len(cmd.callid) > CALLID_MAX or len(from_name) > TAG_MAX or len(to_name) > TAG_MAX:
        log.warning("rtpproxy %s: call-id or tag too long", cmd.op.value)
        return _error(P.ECode.BAD_TAG)
    media = from_n or to_n or 1
    ip = _address(cmd, mods.ipv6)
    if ip is None:
        return _error(P.ECode.BAD_ADDRESS)
    port = int(cmd.port)
    update = cmd.op is P.Op.UPDATE
    sender, other = (from_name, to_name) if update else (to_name, from_name)
    s, side = find(store.get(cmd.callid), media, sender, other or None)
    state = s.state if s is not None else SessionState.NONE
    event = SessionEvent.UPDATE if update else SessionEvent.LOOKUP
    new_state, actions = SESSION_TABLE[(state, event)]
    out = Outcome(b"")
    if actions & SessionAction.REPLY_ZERO:
        out.reply = b"0"
        return out
    if actions & SessionAction.CREATE:
        if cfg.draining:
            return _error(P.ECode.SHUTDOWN)
        try:
            p0 = ports.allocate()
        except PortsExhausted:
            log.error("rtpproxy U: no free relay ports")
            return _error(P.ECode.NO_PORTS)
        try:
            p1 = ports.allocate()
        except PortsExhausted:
            ports.release(p0)
            log.error("rtpproxy U: no free relay ports")
            return _error(P.ECode.NO_PORTS)
        s = Session(cmd.callid, [sender, other], media, relay=cfg.relay, created=now)
        s.sides[0].port, s.sides[1].port = p0, p1
        side = 0
        stats.sessions_created += 1
        out.created.append(s)
        log.info("rtp session %s;%d created: ports %d/%d", cmd.callid.decode(errors="replace"),
                 media, p0, p1)
    else:
        out.updated.append(s)
    assert s is not None
    if not s.tags[side] and sender:
        s.tags[side] = sender
    elif side == 1 and sender and s.tags[1] != sender:
        # another fork answered: the stream now belongs to that dialog
        log.info("rtp session %s: side 1 tag %r -> %r", cmd.callid.decode(errors="replace"),
                 s.tags[1], sender)
        s.tags[1] = sender
    if not s.tags[1 - side] and other:
        s.tags[1 - side] = other
    s.flags |= SessionFlags.WEAK if mods.weak else SessionFlags.STRONG
    s.state = new_state
    s.updated = now
    signal(s.sides[side], ip, port, bool(mods.asymmetric), now, cfg.policy)
    reply_side = s.sides[1 - side]
    if mods.new_port and not actions & SessionAction.CREATE:
        try:
            fresh = ports.allocate()
        except PortsExhausted:
            return _error(P.ECode.NO_PORTS)
        ports.release(reply_side.port)
        reply_side.port = fresh
        s.flags |= SessionFlags.NEW_PORT
    store.put(s)
    out.reply = P.port_reply(reply_side.port, cfg.advertise, ":" in cfg.advertise)
    return out


def _delete(cmd: P.Command, store: SessionStore, ports: PortAllocator, now: float,
            cfg: ControlConfig, stats: RelayStats) -> Outcome:
    weak = "w" in cmd.mods.lower()
    tags = tuple(t for t in (cmd.from_tag, cmd.to_tag) if t)
    out = Outcome(b"0")
    hit = False
    for s in store.get(cmd.callid):
        if not matches_delete(s, tags):
            continue
        hit = True
        s.flags &= ~(SessionFlags.WEAK if weak else SessionFlags.STRONG)
        left = s.flags & (SessionFlags.WEAK | SessionFlags.STRONG)
        event = SessionEvent.DELETE_REF if left else SessionEvent.DELETE
        s.state, actions = SESSION_TABLE[(s.state, event)]
        if actions & SessionAction.REMOVE:
            remove(s, store, ports, stats)
            out.removed.append(s)
        else:
            store.put(s)
            out.updated.append(s)
    if not hit:
        return _error(P.ECode.SESSION_UNKNOWN)
    return out


def remove(s: Session, store: SessionStore, ports: PortAllocator, stats: RelayStats,
           timeout: bool = False) -> None:
    """Delete a session record and free its ports."""
    store.delete(s)
    for side in s.sides:
        if side.port:
            ports.release(side.port)
    stats.sessions_destroyed += 1
    if timeout:
        stats.sessions_timeout += 1
    log.info("rtp session %s;%d %s: %d/%d packets", s.callid.decode(errors="replace"), s.media,
             "timed out" if timeout else "deleted", s.sides[0].packets, s.sides[1].packets)


def expired(s: Session, now: float, timeout: float) -> bool:
    """Both sides idle (no media, no command) for the whole timeout."""
    return now - s.idle_since() >= timeout


def expire(store: SessionStore, ports: PortAllocator, now: float, cfg: ControlConfig,
           stats: RelayStats) -> list[Session]:
    """Remove every session idle for ``cfg.timeout``; returns them."""
    gone = []
    for s in list(store.iterate()):
        if expired(s, now, cfg.timeout):
            s.state = SESSION_TABLE[(s.state, SessionEvent.TIMEOUT)][0]
            remove(s, store, ports, stats, timeout=True)
            gone.append(s)
    return gone


def _query(cmd: P.Command, store: SessionStore, ports: PortAllocator, now: float,
           cfg: ControlConfig, stats: RelayStats) -> Outcome:
    from_name, from_n = split_tag(cmd.from_tag)
    to_name, to_n = split_tag(cmd.to_tag)
    s, side = find(store.get(cmd.callid), from_n or to_n or 1, from_name, to_name or None)
    if s is None:
        return _error(P.ECode.SESSION_UNKNOWN)
    me, peer = s.sides[side], s.sides[1 - side]
    values = {
        b"ttl": max(0, int(cfg.timeout - (now - s.idle_since()))),
        b"npkts_ina": me.packets,
        b"npkts_ino": peer.packets,
        b"nrelayed": me.relayed + peer.relayed,
        b"ndropped": me.dropped + peer.dropped,
    }
    names = cmd.args or tuple(values)
    verbose = "v" in cmd.mods.lower()
    parts = []
    for name in names:
        if name not in values:
            return _error(P.ECode.QUERY_FAILED)
        parts.append(b"%s=%d" % (name, values[name]) if verbose else b"%d" % values[name])
    return Outcome(b" ".join(parts))


def _info(cmd: P.Command, store: SessionStore, ports: PortAllocator, now: float,
          cfg: ControlConfig, stats: RelayStats) -> Outcome:
    streams = list(store.iterate())
    calls = {s.callid for s in streams}
    lines = [b"sessions created: %d" % stats.sessions_created,
             b"active sessions: %d" % len(calls),
             b"active streams: %d" % len(streams)]
    if "b" not in cmd.mods.lower():
        local = (cfg.advertise or "*").encode()
        for s in streams:
            a, b = s.sides
            ttl = [max(0, int(cfg.timeout - (now - max(d.last_packet, s.updated))))
                   for d in s.sides]
            lines.append(
                b"\t%s/%s: caller = %s:%d/%s:%d, callee = %s:%d/%s:%d, "
                b"stats = %d/%d/%d/%d, ttl = %d/%d" % (
                    s.callid, s.tags[0], local, a.port, a.peer_ip.encode() or b"-", a.peer_port,
                    local, b.port, b.peer_ip.encode() or b"-", b.peer_port, a.packets,
                    b.packets, a.relayed + b.relayed, a.dropped + b.dropped, ttl[0], ttl[1]))
    return Outcome(b"\n".join(lines))


def _delete_all(cmd: P.Command, store: SessionStore, ports: PortAllocator, now: float,
                cfg: ControlConfig, stats: RelayStats) -> Outcome:
    out = Outcome(b"0")
    for s in list(store.iterate()):
        remove(s, store, ports, stats)
        out.removed.append(s)
    return out


def _stats(cmd: P.Command, store: SessionStore, ports: PortAllocator, now: float,
           cfg: ControlConfig, stats: RelayStats) -> Outcome:
    # With no names, every counter by name (rtpproxy answers an empty line; a list helps).
    verbose = "v" in cmd.mods.lower() or not cmd.args
    parts = []
    for name in cmd.args or tuple(STAT_NAMES):
        attr = STAT_NAMES.get(name)
        if attr is None:
            return _error(P.ECode.STATS_FAILED)
        value = getattr(stats, attr)
        parts.append(b"%s=%d" % (name, value) if verbose else b"%d" % value)
    return Outcome(b" ".join(parts))


def _version(cmd: P.Command, *_: object) -> Outcome:
    return Outcome(P.VERSION)


def _version_feature(cmd: P.Command, *_: object) -> Outcome:
    return Outcome(b"1" if cmd.args[0] in P.CAPABILITIES else b"0")


def _unsupported(cmd: P.Command, *_: object) -> Outcome:
    # natserver relays neither play, record nor copy; stopping what never ran is fine
    codes = {P.Op.PLAY: P.ECode.PLAY_FAILED, P.Op.RECORD: P.ECode.COPY_FAILED,
             P.Op.COPY: P.ECode.COPY_FAILED}
    code = codes.get(cmd.op)
    return _error(code) if code is not None else Outcome(b"0")


_HANDLERS = {
    P.Op.UPDATE: _update_lookup,
    P.Op.LOOKUP: _update_lookup,
    P.Op.DELETE: _delete,
    P.Op.QUERY: _query,
    P.Op.INFO: _info,
    P.Op.DELETE_ALL: _delete_all,
    P.Op.STATS: _stats,
    P.Op.VERSION: _version,
    P.Op.VERSION_FEATURE: _version_feature,
}


class ControlServer:
    """The server side of the wire, sans IO: bytes from a peer in, reply bytes out.

    ``datagram`` serves ``udp:`` (cookie, reply cache by (peer, cookie)); ``stream``
    serves one command read from a ``unix:`` connection (no cookie, no cache).
    """

    def __init__(self, store: SessionStore, ports: PortAllocator,
                 cfg: ControlConfig | None = None, stats: RelayStats | None = None,
                 cache: P.ReplyCache | None = None) -> None:
        self.store = store
        self.ports = ports
        self.cfg = cfg or ControlConfig()
        self.stats = stats or RelayStats()
        self.cache = cache or P.ReplyCache()
        # A relay process's hook between parsing and executing (it flushes its own copy
        # of the call's sessions into the store first, and may adjust the command).
        self.prepare: Callable[[P.Command], P.Command] | None = None

    def datagram(self, data: bytes, peer: object, now: float) -> tuple[bytes, Outcome | None]:
        """(reply datagram, outcome); the outcome is None for a cached reply, and the
        reply empty for a datagram without a cookie (nothing to answer to)."""
        cookie, body = P.split_cookie(data)
        if not cookie:
            return b"", None
        cached = self.cache.get(peer, cookie, now)
        if cached is not None:
            self.stats.replies_cached += 1
            return cached, None
        out = self._run(body, now)
        reply = P.format_reply(out.reply, cookie)
        self.cache.put(peer, cookie, reply, now)
        return reply, out

    def stream(self, data: bytes, now: float) -> tuple[bytes, Outcome]:
        out = self._run(data, now)
        return P.format_reply(out.reply), out

    def _run(self, body: bytes, now: float) -> Outcome:
        self.stats.commands += 1
        try:
            cmd = P.parse_command(body)
        except P.ProtocolError as exc:
            log.warning("rtpproxy command refused: %s (%r)", exc, body[:80])
            self.stats.commands_failed += 1
            return Outcome(P.error_reply(exc.code))
        if self.prepare is not None:
            cmd = self.prepare(cmd)
        out = execute(cmd, self.store, self.ports, now, self.cfg, self.stats)
        if out.ok:
            self.stats.commands_ok += 1
        else:
            self.stats.commands_failed += 1
        return out
