"""Relay sessions in the shared-memory table "rtp_sessions": the SessionStore every
relay process executes control commands against.

Key: the Call-ID (a multimap: the streams and forks of one call share it); value: the
fixed-size :func:`~natserver.rtp.session.pack` record. Within a key a record is told
apart by ``Session.ident`` (creator's tag, media index), as in ``DictStore``.

Two kinds of writers touch a record, and each owns different fields:

- a control command (U/L/D on whichever relay received it) owns the *signalling*: tags,
  state, flags, the sides' signalled addresses and ports, and the latch transitions a
  U/L makes (:func:`~natserver.rtp.session.signal`). ``put`` writes the whole record.
- the relay that owns the ports owns the *packet* fields: counters, ``last_packet``,
  and - while no command changed the record since the relay last adopted it - the
  latch state (peer, RTCP peer, state, ``latched_at``, learning window).
  :meth:`ShmStore.write_back` merges those into the current record under the stripe
  lock, so a relay never undoes a command it has not seen yet.

"Has not seen yet" is decided by ``Session.updated`` and the sides' ``updated``: a
command stamps them, packets never do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from natserver.rtp.session import (
    CALLID_MAX,
    RECORD_SIZE,
    Session,
    Side,
    pack,
    unpack,
)

log = logging.getLogger(__name__)

TABLE_NAME = "rtp_sessions"


def table_spec(capacity: int) -> tuple[int, int, int]:
    """(capacity, key size, value size) of the "rtp_sessions" table."""
    return capacity, CALLID_MAX, RECORD_SIZE


def _ident(raw: bytes) -> tuple[bytes, int] | None:
    try:
        s = unpack(raw)
    except ValueError:
        return None
    return s.tags[0], s.media


def same_signalling(a: Session, b: Session) -> bool:
    """No command touched the record between copy ``a`` and copy ``b``."""
    return (a.updated == b.updated and a.state == b.state and a.tags == b.tags
            and all(x.updated == y.updated and x.port == y.port
                    for x, y in zip(a.sides, b.sides)))


def fold_counters(into: Side, other: Side) -> None:
    """Counters only grow: keep the larger of two copies' values."""
    into.packets = max(into.packets, other.packets)
    into.bytes = max(into.bytes, other.bytes)
    into.relayed = max(into.relayed, other.relayed)
    into.dropped = max(into.dropped, other.dropped)
    into.last_packet = max(into.last_packet, other.last_packet)


def merge_packet_state(current: Session, relay: Session) -> Session:
    """``current`` (the table's record) with the packet fields of ``relay`` (the owning
    relay's copy): counters always, the latch state only when no command came between."""
    for cur, mine in zip(current.sides, relay.sides):
        fold_counters(cur, mine)
    if same_signalling(current, relay):
        for cur, mine in zip(current.sides, relay.sides):
            cur.state, cur.flags = mine.state, mine.flags
            cur.peer_ip, cur.peer_port = mine.peer_ip, mine.peer_port
            cur.rtcp_ip, cur.rtcp_port = mine.rtcp_ip, mine.rtcp_port
            cur.latched_at = mine.latched_at
            cur.window_packets = mine.window_packets
    return current


@dataclass(slots=True)
class ShmStore:
    """A SessionStore over a :class:`natserver.shm.table.Table` (or anything with its
    get_all/add/update_all/delete_if/scan methods)."""

    table: Any

    def get(self, callid: bytes) -> list[Session]:
        out = []
        for raw in self.table.get_all(callid):
            try:
                out.append(unpack(raw))
            except ValueError as exc:
                log.error("rtp_sessions: unreadable record for %r: %s", callid[:80], exc)
        return out

    def find(self, callid: bytes, tag0: bytes, media: int) -> Session | None:
        """The record with this ident, if any."""
        for s in self.get(callid):
            if s.tags[0] == tag0 and s.media == media:
                return s
        return None

    def put(self, session: Session) -> None:
        """Replace the record with the same ident, or add one."""
        raw = pack(session)
        want = (session.tags[0], session.media)
        hit = False

        def replace(old: bytes) -> bytes:
            nonlocal hit
            if not hit and _ident(old) == want:
                hit = True
                return raw
            return old

        self.table.update_all(session.callid, replace)
        if not hit:
            self.table.add(session.callid, raw)

    def write_back(self, session: Session) -> bool:
        """Merge a relay's packet state into the record (see the module docstring);
        False when the record is gone."""
        want = (session.tags[0], session.media)
        hit = False

        def merge(old: bytes) -> bytes:
            nonlocal hit
            if hit:
                return old
            try:
                cur = unpack(old)
            except ValueError:
                return old
            if (cur.tags[0], cur.media) != want:
                return old
            hit = True
            return pack(merge_packet_state(cur, session))

        self.table.update_all(session.callid, merge)
        return hit

    def delete(self, session: Session) -> None:
        want = (session.tags[0], session.media)
        self.table.delete_if(session.callid, lambda raw: _ident(raw) == want)

    def iterate(self) -> Iterator[Session]:
        for entry in self.table.scan():
            try:
                yield unpack(entry.value)
            except ValueError:
                continue
