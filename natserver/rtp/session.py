"""Relay sessions: the record, its fixed-size layout, and the two state machines over it.

A session is one media stream of one call leg: (Call-ID, creator's tag, media index)
with two sides. Side 0 is the party whose U created it (the From-tag of that U, the
caller); side 1 the other party (its tag arrives with L or a later U). Each side owns a
relay port P (even; RTCP on P+1): the party sends to P, and packets for the party leave
from P, so each party sends to and receives from the same relay address (symmetric RTP).
A packet arriving on side i's port is forwarded from side 1-i's port to side 1-i's peer.

Everything here is pure: the record is a plain dataclass, ``pack``/``unpack`` turn it into
a fixed-size ``struct`` record (for the shared-memory table, where ``update(key, fn)``
runs ``unpack -> logic -> pack`` under a lock; the key is the Call-ID - a multimap,
the streams and forks of a call share it - and within a key a record is told apart by
``Session.ident``: creator's tag and media index), and the logic is two tables of
``(state, event) -> (state, actions)``: :data:`SESSION_TABLE` for control commands and
:data:`LATCH_TABLES` for a side's address learning. ``now`` is always a parameter.

Latching policy (``rtp_latch_mode``)
------------------------------------
A side's *signalled* address is what U/L said (by default the SIP source IP and the
SDP port). Its *peer* is where packets for that party go: the signalled address until
the party's own packets teach the real one (its NAT mapping) - "latching". States:
EMPTY (nothing known), SIGNALLED (address from signalling, nothing received yet),
LATCHED (learning: the peer came from a packet and may still move), LOCKED (fixed).

``strict`` (the default; protects against RTP bleed - strangers who spray packets at
relay ports to capture or inject media):

1. A packet from the current peer is forwarded.
2. A side that has not locked latches onto a new source only when the source IP equals
   the signalled IP (rtpengine's "strict source": the U/L address is the SIP source IP,
   so only the host that signals may take the stream). Without a signalled IP (null or
   absent address) the first packet latches.
3. A latched side locks when its learning window closes: ``latch_window`` seconds
   (default 3) after the latch or the last U/L, or after ``latch_packets`` (default 100)
   packets from the peer, whichever comes first.
4. A locked side forwards only its peer's packets, and moves only to its exact
   signalled IP:port; every other packet is dropped and counted.
5. A new U/L for a side stores the new signalled address, keeps a learned peer (so a
   re-INVITE for hold does not send media back to an un-NATed port) and reopens the
   learning window for sources from the (new) signalled IP.
6. An asymmetric side (``A`` modifier) never latches: its packets go to the signalled
   address; its packets are accepted from the signalled IP, any port.

``rtpproxy`` (plain rtpproxy 1.x, for compatibility): any source latches while the side
may update; a latch locks the side at once (1.x clears ``canupdate`` unless the source
is the previous address), and a side that keeps sending from its signalled address
locks 10 s after the last U/L. U/L does not overwrite an address learned from packets.
Strangers are dropped only once the side has locked - the bleed window 1.x had.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

CALLID_MAX = 160
TAG_MAX = 80
RECORD_VERSION = 1


class SessionState(enum.IntEnum):
    NONE = 0        # no record (the state before U and after D/timeout)
    OFFERED = 1     # created by U: the caller's side is known, no answer yet
    ANSWERED = 2    # L (or U from the callee) seen: both sides signalled


class SessionEvent(enum.IntEnum):
    UPDATE = 1        # U
    LOOKUP = 2        # L
    DELETE = 3        # D that drops the last reference
    DELETE_REF = 4    # D (or Dw) that leaves another reference
    TIMEOUT = 5       # no media for rtp_timeout


class SessionAction(enum.IntFlag):
    NONE = 0
    CREATE = 1        # allocate ports, make the record
    SIGNAL = 2        # store the sender's address on its side
    REPLY_PORT = 4    # reply with the other party's port
    REPLY_ZERO = 8    # reply "0" (L of an unknown session)
    DROP_REF = 16     # clear the reference D named
    REMOVE = 32       # free ports, delete the record
    REPLY_OK = 64     # reply "0" for D
    REPLY_UNKNOWN = 128  # reply E50


S, E, A = SessionState, SessionEvent, SessionAction
SESSION_TABLE: dict[tuple[SessionState, SessionEvent], tuple[SessionState, SessionAction]] = {
    (S.NONE, E.UPDATE): (S.OFFERED, A.CREATE | A.SIGNAL | A.REPLY_PORT),
    (S.NONE, E.LOOKUP): (S.NONE, A.REPLY_ZERO),
    (S.NONE, E.DELETE): (S.NONE, A.REPLY_UNKNOWN),
    (S.NONE, E.DELETE_REF): (S.NONE, A.REPLY_UNKNOWN),
    (S.OFFERED, E.UPDATE): (S.OFFERED, A.SIGNAL | A.REPLY_PORT),
    (S.OFFERED, E.LOOKUP): (S.ANSWERED, A.SIGNAL | A.REPLY_PORT),
    (S.ANSWERED, E.UPDATE): (S.ANSWERED, A.SIGNAL | A.REPLY_PORT),
    (S.ANSWERED, E.LOOKUP): (S.ANSWERED, A.SIGNAL | A.REPLY_PORT),
    (S.OFFERED, E.DELETE): (S.NONE, A.REMOVE | A.REPLY_OK),
    (S.ANSWERED, E.DELETE): (S.NONE, A.REMOVE | A.REPLY_OK),
    (S.OFFERED, E.DELETE_REF): (S.OFFERED, A.DROP_REF | A.REPLY_OK),
    (S.ANSWERED, E.DELETE_REF): (S.ANSWERED, A.DROP_REF | A.REPLY_OK),
    (S.OFFERED, E.TIMEOUT): (S.NONE, A.REMOVE),
    (S.ANSWERED, E.TIMEOUT): (S.NONE, A.REMOVE),
}


class SideState(enum.IntEnum):
    EMPTY = 0
    SIGNALLED = 1
    LATCHED = 2
    LOCKED = 3


class SideEvent(enum.IntEnum):
    SIGNAL = 1        # U/L with an address for this side
    SIGNAL_NULL = 2   # U/L without a usable address (null c=, hold, short address)
    PKT_PEER = 3      # packet from the current peer
    PKT_PEER_LATE = 4  # packet from the peer after the update window (rtpproxy mode)
    PKT_LEARN = 5     # packet from a new source the policy accepts
    PKT_STRANGER = 6  # packet from a source the policy refuses
    LOCK = 7          # the learning window closed


class SideAction(enum.IntFlag):
    NONE = 0
    STORE_SIG = 1     # remember the signalled address
    USE_SIG = 2       # peer := signalled address
    FORWARD = 4
    LATCH = 8         # peer := packet source (RTCP peer := same IP, port+1 guess)
    DROP = 16
    REOPEN = 32       # learning window restarts now


class SideFlags(enum.IntFlag):
    NONE = 0
    ASYMMETRIC = 1    # never latch; send to the signalled address
    UNTRUSTED = 2     # peer learned from packets (1.x: later U/L do not overwrite it)
    HELD = 4          # the last U/L carried a null address (hold)
    RTCP_LATCHED = 8  # the RTCP peer came from an RTCP packet, not a guess


class SessionFlags(enum.IntFlag):
    NONE = 0
    STRONG = 1        # a plain U holds the session
    WEAK = 2          # a U with W holds it; D w drops only this
    NEW_PORT = 4      # ports were reallocated (N): the relay must rebind


class LatchMode(enum.Enum):
    STRICT = "strict"
    RTPPROXY = "rtpproxy"


SS, SE, SA = SideState, SideEvent, SideAction
_STRICT: dict[tuple[SideState, SideEvent], tuple[SideState, SideAction]] = {
    (SS.EMPTY, SE.SIGNAL): (SS.SIGNALLED, SA.STORE_SIG | SA.USE_SIG | SA.REOPEN),
    (SS.EMPTY, SE.SIGNAL_NULL): (SS.EMPTY, SA.STORE_SIG | SA.REOPEN),
    (SS.EMPTY, SE.PKT_LEARN): (SS.LATCHED, SA.LATCH | SA.FORWARD | SA.REOPEN),
    (SS.EMPTY, SE.PKT_STRANGER): (SS.EMPTY, SA.DROP),
    (SS.SIGNALLED, SE.SIGNAL): (SS.SIGNALLED, SA.STORE_SIG | SA.USE_SIG | SA.REOPEN),
    (SS.SIGNALLED, SE.SIGNAL_NULL): (SS.SIGNALLED, SA.STORE_SIG),
    (SS.SIGNALLED, SE.PKT_PEER): (SS.LATCHED, SA.LATCH | SA.FORWARD | SA.REOPEN),
    (SS.SIGNALLED, SE.PKT_LEARN): (SS.LATCHED, SA.LATCH | SA.FORWARD | SA.REOPEN),
    (SS.SIGNALLED, SE.PKT_STRANGER): (SS.SIGNALLED, SA.DROP),
    (SS.LATCHED, SE.SIGNAL): (SS.LATCHED, SA.STORE_SIG | SA.REOPEN),
    (SS.LATCHED, SE.SIGNAL_NULL): (SS.LATCHED, SA.STORE_SIG),
    (SS.LATCHED, SE.PKT_PEER): (SS.LATCHED, SA.FORWARD),
    (SS.LATCHED, SE.PKT_LEARN): (SS.LATCHED, SA.LATCH | SA.FORWARD),
    (SS.LATCHED, SE.PKT_STRANGER): (SS.LATCHED, SA.DROP),
    (SS.LATCHED, SE.LOCK): (SS.LOCKED, SA.NONE),
    (SS.LOCKED, SE.SIGNAL): (SS.LATCHED, SA.STORE_SIG | SA.REOPEN),
    (SS.LOCKED, SE.SIGNAL_NULL): (SS.LOCKED, SA.STORE_SIG),
    (SS.LOCKED, SE.PKT_PEER): (SS.LOCKED, SA.FORWARD),
    (SS.LOCKED, SE.PKT_LEARN): (SS.LOCKED, SA.LATCH | SA.FORWARD),
    (SS.LOCKED, SE.PKT_STRANGER): (SS.LOCKED, SA.DROP),
}

_RTPPROXY: dict[tuple[SideState, SideEvent], tuple[SideState, SideAction]] = {
    (SS.EMPTY, SE.SIGNAL): (SS.SIGNALLED, SA.STORE_SIG | SA.USE_SIG | SA.REOPEN),
    (SS.EMPTY, SE.SIGNAL_NULL): (SS.EMPTY, SA.STORE_SIG | SA.REOPEN),
    (SS.EMPTY, SE.PKT_LEARN): (SS.LOCKED, SA.LATCH | SA.FORWARD),
    (SS.SIGNALLED, SE.SIGNAL): (SS.SIGNALLED, SA.STORE_SIG | SA.USE_SIG | SA.REOPEN),
    (SS.SIGNALLED, SE.SIGNAL_NULL): (SS.SIGNALLED, SA.STORE_SIG | SA.REOPEN),
    (SS.SIGNALLED, SE.PKT_PEER): (SS.SIGNALLED, SA.FORWARD),
    (SS.SIGNALLED, SE.PKT_PEER_LATE): (SS.LOCKED, SA.FORWARD),
    (SS.SIGNALLED, SE.PKT_LEARN): (SS.LOCKED, SA.LATCH | SA.FORWARD),
    # a side that latched is "untrusted": U/L refresh the window, not the address
    (SS.LATCHED, SE.SIGNAL): (SS.LATCHED, SA.STORE_SIG | SA.REOPEN),
    (SS.LATCHED, SE.SIGNAL_NULL): (SS.LATCHED, SA.STORE_SIG | SA.REOPEN),
    (SS.LATCHED, SE.PKT_PEER): (SS.LATCHED, SA.FORWARD),
    (SS.LATCHED, SE.PKT_PEER_LATE): (SS.LOCKED, SA.FORWARD),
    (SS.LATCHED, SE.PKT_LEARN): (SS.LOCKED, SA.LATCH | SA.FORWARD),
    (SS.LOCKED, SE.SIGNAL): (SS.LATCHED, SA.STORE_SIG | SA.REOPEN),
    (SS.LOCKED, SE.SIGNAL_NULL): (SS.LATCHED, SA.STORE_SIG | SA.REOPEN),
    (SS.LOCKED, SE.PKT_PEER): (SS.LOCKED, SA.FORWARD),
    (SS.LOCKED, SE.PKT_PEER_LATE): (SS.LOCKED, SA.FORWARD),
    (SS.LOCKED, SE.PKT_STRANGER): (SS.LOCKED, SA.DROP),
}

# An asymmetric side: the signalled address is the destination, the IP the filter.
_ASYMMETRIC: dict[tuple[SideState, SideEvent], tuple[SideState, SideAction]] = {
    (SS.EMPTY, SE.SIGNAL): (SS.SIGNALLED, SA.STORE_SIG | SA.USE_SIG | SA.REOPEN),
    (SS.EMPTY, SE.SIGNAL_NULL): (SS.EMPTY, SA.STORE_SIG | SA.REOPEN),
    (SS.EMPTY, SE.PKT_LEARN): (SS.LATCHED, SA.LATCH | SA.FORWARD),
    (SS.EMPTY, SE.PKT_STRANGER): (SS.EMPTY, SA.DROP),
    (SS.SIGNALLED, SE.SIGNAL): (SS.SIGNALLED, SA.STORE_SIG | SA.USE_SIG | SA.REOPEN),
    (SS.SIGNALLED, SE.SIGNAL_NULL): (SS.SIGNALLED, SA.STORE_SIG),
    (SS.SIGNALLED, SE.PKT_PEER): (SS.SIGNALLED, SA.FORWARD),
    (SS.SIGNALLED, SE.PKT_STRANGER): (SS.SIGNALLED, SA.DROP),
    (SS.LATCHED, SE.SIGNAL): (SS.SIGNALLED, SA.STORE_SIG | SA.USE_SIG | SA.REOPEN),
    (SS.LATCHED, SE.SIGNAL_NULL): (SS.LATCHED, SA.STORE_SIG),
    (SS.LATCHED, SE.PKT_PEER): (SS.LATCHED, SA.FORWARD),
    (SS.LATCHED, SE.PKT_STRANGER): (SS.LATCHED, SA.DROP),
    (SS.LOCKED, SE.SIGNAL): (SS.SIGNALLED, SA.STORE_SIG | SA.USE_SIG | SA.REOPEN),
    (SS.LOCKED, SE.SIGNAL_NULL): (SS.LOCKED, SA.STORE_SIG),
    (SS.LOCKED, SE.PKT_PEER): (SS.LOCKED, SA.FORWARD),
    (SS.LOCKED, SE.PKT_STRANGER): (SS.LOCKED, SA.DROP),
}

LATCH_TABLES = {LatchMode.STRICT: _STRICT, LatchMode.RTPPROXY: _RTPPROXY}
ASYMMETRIC_TABLE = _ASYMMETRIC
RTPPROXY_UPDATE_WINDOW = 10.0  # rtpproxy 1.x UPDATE_WINDOW


@dataclass(frozen=True, slots=True)
class LatchPolicy:
    """The ``rtp_latch_mode`` switch and the strict mode's learning window."""

    mode: LatchMode = LatchMode.STRICT
    window: float = 3.0
    packets: int = 100


@dataclass(slots=True)
class Side:
    """One party of a stream. Addresses are text IPs ("" = unknown) and ports."""

    port: int = 0              # relay port this party sends to (RTCP: port + 1)
    state: SideState = SideState.EMPTY
    flags: SideFlags = SideFlags.NONE
    sig_ip: str = ""           # signalled by U/L
    sig_port: int = 0
    peer_ip: str = ""          # where RTP for this party goes
    peer_port: int = 0
    rtcp_ip: str = ""          # where RTCP for this party goes
    rtcp_port: int = 0
    updated: float = 0.0       # last U/L for this side: the learning window's start
    latched_at: float = 0.0
    last_packet: float = 0.0
    packets: int = 0           # accepted from this party (RTP + RTCP)
    bytes: int = 0
    relayed: int = 0           # of those, sent on to the other party
    dropped: int = 0           # refused (strangers) or undeliverable
    window_packets: int = 0    # packets from the peer since the window opened

    @property
    def peer(self) -> tuple[str, int] | None:
        return (self.peer_ip, self.peer_port) if self.peer_ip and self.peer_port else None

    @property
    def rtcp_peer(self) -> tuple[str, int] | None:
        return (self.rtcp_ip, self.rtcp_port) if self.rtcp_ip and self.rtcp_port else None


@dataclass(slots=True)
class Session:
    callid: bytes
    tags: list[bytes] = field(default_factory=lambda: [b"", b""])  # side 0, side 1
    media: int = 1             # the ;N stream number (1-based)
    state: SessionState = SessionState.NONE
    flags: SessionFlags = SessionFlags.NONE
    relay: int = 0             # which relay process owns the ports
    created: float = 0.0
    updated: float = 0.0       # last command
    sides: tuple[Side, Side] = field(default_factory=lambda: (Side(), Side()))

    @property
    def ident(self) -> tuple[bytes, bytes, int]:
        """What tells records of one Call-ID apart: creator's tag and media index."""
        return self.callid, self.tags[0], self.media

    @property
    def last_packet(self) -> float:
        return max(self.sides[0].last_packet, self.sides[1].last_packet)

    def idle_since(self) -> float:
        """When media was last seen, or the session was made/updated if never."""
        return max(self.last_packet, self.updated, self.created)


# -- the record layout ------------------------------------------------------------
_HEAD = struct.Struct(f"<BBBBHBBBxdd{CALLID_MAX}s{TAG_MAX}s{TAG_MAX}s")
_SIDE = struct.Struct("<HBB16sH16sH16sHxxdddQQQQI4x")
RECORD_SIZE = _HEAD.size + 2 * _SIDE.size
_NO_IP = bytes(16)


def _ip_bytes(ip: str) -> bytes:
    if not ip:
        return _NO_IP
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def _ip_text(raw: bytes) -> str:
    if raw == _NO_IP:
        return ""
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return str(ipaddress.IPv4Address(raw[12:]))
    return str(ipaddress.IPv6Address(raw))


def pack(s: Session) -> bytes:
    """The fixed-size record for ``s`` (``RECORD_SIZE`` bytes)."""
    if len(s.callid) > CALLID_MAX or any(len(t) > TAG_MAX for t in s.tags):
        raise ValueError("call-id or tag too long for a session record")
    out = [_HEAD.pack(RECORD_VERSION, s.state, s.flags, s.relay, s.media, len(s.callid),
                      len(s.tags[0]), len(s.tags[1]), s.created, s.updated, s.callid,
                      s.tags[0], s.tags[1])]
    for d in s.sides:
        out.append(_SIDE.pack(d.port, d.state, d.flags, _ip_bytes(d.sig_ip), d.sig_port,
                              _ip_bytes(d.peer_ip), d.peer_port, _ip_bytes(d.rtcp_ip),
                              d.rtcp_port, d.updated, d.latched_at, d.last_packet,
                              d.packets, d.bytes, d.relayed, d.dropped, d.window_packets))
    return b"".join(out)


def unpack(raw: bytes) -> Session:
    """The session a record holds; ValueError for a record of another layout."""
    (version, state, flags, relay, media, lc, l0, l1, created, updated, callid, tag0,
     tag1) = _HEAD.unpack_from(raw)
    if version != RECORD_VERSION:
        raise ValueError(f"session record version {version}")
    sides = []
    off = _HEAD.size
    for _ in range(2):
        (port, st, fl, sig_ip, sig_port, peer_ip, peer_port, rtcp_ip, rtcp_port, upd,
         latched, last, packets, nbytes, relayed, dropped, wpk) = _SIDE.unpack_from(raw, off)
        off += _SIDE.size
        sides.append(Side(port, SideState(st), SideFlags(fl), _ip_text(sig_ip), sig_port,
                          _ip_text(peer_ip), peer_port, _ip_text(rtcp_ip), rtcp_port, upd,
                          latched, last, packets, nbytes, relayed, dropped, wpk))
    return Session(callid[:lc], [tag0[:l0], tag1[:l1]], media, SessionState(state),
                   SessionFlags(flags), relay, created, updated, (sides[0], sides[1]))


# -- tags and matching --------------------------------------------------------------
def split_tag(tag: bytes) -> tuple[bytes, int | None]:
    """``b"abc;2"`` -> (b"abc", 2); no (numeric) suffix -> (tag, None)."""
    head, sep, num = tag.rpartition(b";")
    if sep and num.isdigit() and head:
        return head, int(num)
    return tag, None


def find(sessions: list[Session], media: int, sender_tag: bytes,
         other_tag: bytes | None) -> tuple[Session | None, int]:
    """The stream of ``media`` whose stored tags name the sender (``sender_tag``), or
    the other party (``other_tag``); returns (session, sender side) or (None, -1).

    A stored side 1 tag that is still empty matches the first answer's tag, which the
    caller then stores.
    """
    for s in sessions:
        if s.media != media:
            continue
        if s.tags[0] == sender_tag:
            return s, 0
        if s.tags[1] and s.tags[1] == sender_tag:
            return s, 1
    if other_tag:
        for s in sessions:
            if s.media != media:
                continue
            if s.tags[0] == other_tag:
                return s, 1
            if s.tags[1] == other_tag:
                return s, 0
    return None, -1


def matches_delete(s: Session, tags: tuple[bytes, ...]) -> bool:
    """D's rule: a stored tag equals one of the given tags; a tag without ``;N`` also
    matches every stream, a tag with ``;N`` only that stream."""
    for t in tags:
        name, num = split_tag(t)
        if num is not None and num != s.media:
            continue
        if name and name in s.tags:
            return True
    return False


# -- side transitions -----------------------------------------------------------------
def _side_table(side: Side, policy: LatchPolicy) -> dict:
    if side.flags & SideFlags.ASYMMETRIC:
        return ASYMMETRIC_TABLE
    return LATCH_TABLES[policy.mode]


def signal(side: Side, ip: str, port: int, asymmetric: bool, now: float,
           policy: LatchPolicy) -> SideAction:
    """Apply a U/L for this side: ``ip`` "" or a null address means "no address"."""
    if asymmetric:
        side.flags |= SideFlags.ASYMMETRIC
    else:
        side.flags &= ~SideFlags.ASYMMETRIC
    usable = bool(ip) and port > 0 and not ipaddress.ip_address(ip).is_unspecified
    if usable:
        side.flags &= ~SideFlags.HELD
    elif ip:
        side.flags |= SideFlags.HELD
    event = SideEvent.SIGNAL if usable else SideEvent.SIGNAL_NULL
    state, actions = _side_table(side, policy)[(side.state, event)]
    if actions & SideAction.STORE_SIG and usable:
        side.sig_ip, side.sig_port = ip, port
    if actions & SideAction.USE_SIG:
        side.peer_ip, side.peer_port = ip, port
        if not side.flags & SideFlags.RTCP_LATCHED:
            side.rtcp_ip, side.rtcp_port = ip, port + 1
    if actions & SideAction.REOPEN:
        side.updated = now
        side.window_packets = 0
    side.state = state
    return actions


def window_open(side: Side, now: float, policy: LatchPolicy) -> bool:
    """The strict mode's learning window: open until ``window`` seconds after the
    latch or the last U/L (whichever is later), and for ``packets`` peer packets."""
    start = max(side.latched_at, side.updated)
    return now - start < policy.window and side.window_packets < policy.packets


def classify(side: Side, ip: str, port: int, now: float, policy: LatchPolicy) -> SideEvent:
    """Which event a packet from (ip, port) is for this side, per the latch policy."""
    asym = bool(side.flags & SideFlags.ASYMMETRIC)
    if asym:
        if side.sig_ip:
            return SideEvent.PKT_PEER if ip == side.sig_ip else SideEvent.PKT_STRANGER
        if side.state == SideState.EMPTY:
            return SideEvent.PKT_LEARN
        return SideEvent.PKT_PEER if (ip, port) == side.peer else SideEvent.PKT_STRANGER
    if (ip, port) == side.peer:
        if (policy.mode is LatchMode.RTPPROXY and side.state != SideState.LOCKED
                and now - side.updated > RTPPROXY_UPDATE_WINDOW):
            return SideEvent.PKT_PEER_LATE
        return SideEvent.PKT_PEER
    if policy.mode is LatchMode.RTPPROXY:
        if side.state == SideState.LOCKED:
            return SideEvent.PKT_STRANGER
        return SideEvent.PKT_LEARN
    if side.state == SideState.LOCKED:
        if (ip, port) == (side.sig_ip, side.sig_port):
            return SideEvent.PKT_LEARN
        return SideEvent.PKT_STRANGER
    if not side.sig_ip or ip == side.sig_ip:
        return SideEvent.PKT_LEARN
    return SideEvent.PKT_STRANGER


def maybe_lock(side: Side, now: float, policy: LatchPolicy) -> bool:
    """Close a strict side's learning window when it is over; True when it locked."""
    if (side.state == SideState.LATCHED and policy.mode is LatchMode.STRICT
            and not side.flags & SideFlags.ASYMMETRIC and not window_open(side, now, policy)):
        side.state = _STRICT[(SideState.LATCHED, SideEvent.LOCK)][0]
        return True
    return False


def on_packet(side: Side, ip: str, port: int, now: float, policy: LatchPolicy,
              rtcp: bool = False) -> SideAction:
    """A packet from (ip, port) arrived on this side's RTP (or RTCP) port: update the
    side and say what to do with the packet (FORWARD or DROP, LATCH when it moved).

    RTCP follows RTP: an RTCP packet is accepted from the RTP peer's IP, and teaches
    the RTCP peer only; RTP latching guesses the RTCP peer as IP, port+1 until then.
    """
    if rtcp:
        return _on_rtcp(side, ip, port, now, policy)
    maybe_lock(side, now, policy)
    event = classify(side, ip, port, now, policy)
    state, actions = _side_table(side, policy).get((side.state, event),
                                                   (side.state, SideAction.DROP))
    if actions & SideAction.LATCH:
        side.peer_ip, side.peer_port = ip, port
        side.latched_at = now
        side.flags |= SideFlags.UNTRUSTED
        if not side.flags & SideFlags.RTCP_LATCHED:
            side.rtcp_ip, side.rtcp_port = ip, port + 1
    if actions & SideAction.REOPEN:
        side.window_packets = 0
    side.state = state
    if actions & SideAction.FORWARD:
        side.window_packets += 1
    return actions


def _on_rtcp(side: Side, ip: str, port: int, now: float, policy: LatchPolicy) -> SideAction:
    if (ip, port) == side.rtcp_peer:
        return SideAction.FORWARD
    if side.flags & SideFlags.ASYMMETRIC:
        ok = ip == (side.sig_ip or side.peer_ip)
        return SideAction.FORWARD if ok else SideAction.DROP
    if side.state in (SideState.EMPTY, SideState.SIGNALLED):
        # no RTP yet: the same source rule as RTP decides
        ok = classify(side, ip, port, now, policy) in (SideEvent.PKT_LEARN, SideEvent.PKT_PEER)
    else:
        ok = ip == side.peer_ip
    if not ok:
        return SideAction.DROP
    side.rtcp_ip, side.rtcp_port = ip, port
    side.flags |= SideFlags.RTCP_LATCHED
    return SideAction.FORWARD | SideAction.LATCH


# -- the store ----------------------------------------------------------------------
class SessionStore(Protocol):
    """Where session records live: a dict here, the shm table later."""

    def get(self, callid: bytes) -> list[Session]: ...

    def put(self, session: Session) -> None: ...

    def delete(self, session: Session) -> None: ...

    def iterate(self) -> Iterator[Session]: ...


class DictStore:
    """A SessionStore in a dict (tests, and relays that keep sessions to themselves).

    Records are stored packed, so everything that works here survives the trip through
    the shm record layout too.
    """

    def __init__(self) -> None:
        self._data: dict[bytes, dict[tuple[bytes, int], bytes]] = {}

    def get(self, callid: bytes) -> list[Session]:
        return [unpack(r) for r in self._data.get(callid, {}).values()]

    def put(self, session: Session) -> None:
        self._data.setdefault(session.callid, {})[(session.tags[0], session.media)] = \
            pack(session)

    def delete(self, session: Session) -> None:
        streams = self._data.get(session.callid)
        if streams is None:
            return
        streams.pop((session.tags[0], session.media), None)
        if not streams:
            del self._data[session.callid]

    def iterate(self) -> Iterator[Session]:
        for streams in list(self._data.values()):
            for raw in list(streams.values()):
                yield unpack(raw)

    def __len__(self) -> int:
        return sum(len(v) for v in self._data.values())
