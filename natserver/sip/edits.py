"""Splices on a received message (Kamailio's lumps): the outgoing copy is built once.

An edit is ``(start, end, data)``: the bytes ``buf[start:end]`` become ``data``; an insert
is an empty span, a delete empty data. Offsets always refer to the message as received,
whatever edits came before, so independent modules never have to know about each other.
Overlapping edits are refused with ``ValueError`` when recorded, except an exact
duplicate, which is kept once (a second ``fix_nated_contact``, two modules removing the
same line). Several inserts at one offset go out in the order they were made, except
that ``insert(..., first=True)`` goes ahead of them (a forwarded request's own Via must
be the first header line whatever else was inserted there).
Untouched bytes leave exactly as they arrived.

Body edits (SDP rewriting) are ordinary edits inside ``[msg.body_start, msg.body_end]``;
the builders in :mod:`natserver.sip.build` measure them with :meth:`Edits.delta` and
rewrite Content-Length.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from natserver.sip.message import Message

Edit = tuple[int, int, bytes]
# (start, end, order, data): order sorts edits of one span (call order; negative = first).
# In this order the tuples sort as they must be applied, without a key function.
_Op = tuple[int, int, int, bytes]


class Edits:
    __slots__ = ("_ops",)

    def __init__(self) -> None:
        self._ops: list[_Op] = []

    def replace(self, start: int, end: int, data: bytes, *, first: bool = False) -> None:
        """Make ``buf[start:end]`` read ``data`` in the outgoing copy."""
        if not 0 <= start <= end:
            raise ValueError(f"bad edit span {start}..{end}")
        for s, e, _, d in self._ops:
            if s == start and e == end and d == data:
                return
            if s < end and start < e:
                raise ValueError(f"edit {start}..{end} overlaps edit {s}..{e}")
        n = len(self._ops) + 1
        self._ops.append((start, end, -n if first else n,
                          data if type(data) is bytes else bytes(data)))

    def insert(self, pos: int, data: bytes, *, first: bool = False) -> None:
        """Insert ``data`` before ``buf[pos]``, after earlier inserts there (before them
        with ``first``)."""
        self.replace(pos, pos, data, first=first)

    def delete(self, start: int, end: int) -> None:
        self.replace(start, end, b"")

    def replace_body(self, msg: Message, data: bytes) -> None:
        """Replace the whole body (the builders fix Content-Length)."""
        self.replace(msg.body_start, msg.body_end, data)

    def append_body(self, msg: Message, data: bytes) -> None:
        """Add ``data`` after the end of the body."""
        self.insert(msg.body_end, data)

    def copy(self) -> Edits:
        new = Edits()
        new._ops = self._ops.copy()
        return new

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Edit]:
        """The edits in the order they are applied (offset order, then call order)."""
        return iter([(s, e, d) for s, e, _, d in sorted(self._ops)])

    def covers(self, start: int, end: int) -> bool:
        """Is ``buf[start:end]`` inside one edit's span (deleted or replaced as a whole)?"""
        return any(s <= start and end <= e and s < e for s, e, _, _ in self._ops)

    def delta(self, lo: int, hi: int) -> int:
        """How many bytes the edits inside ``[lo, hi]`` add (negative: remove). An edit
        crossing ``lo`` or ``hi`` raises ValueError: it would cut the region in two."""
        total = 0
        for s, e, _, d in self._ops:
            if lo <= s and e <= hi:
                total += len(d) - (e - s)
            elif s < lo < e or s < hi < e:
                raise ValueError(f"edit {s}..{e} crosses {lo}..{hi}")
        return total

    def apply(self, buf: bytes, end: int | None = None) -> bytes:
        """The outgoing bytes: ``buf[:end]`` with every edit applied once, in offset order."""
        if end is None:
            end = len(buf)
        if not self._ops:
            return buf[:end] if end < len(buf) else buf
        parts = []
        cur = 0
        for s, e, _, d in sorted(self._ops):
            if e > end:
                raise ValueError(f"edit {s}..{e} is beyond the message end {end}")
            parts.append(buf[cur:s])
            parts.append(d)
            cur = e
        parts.append(buf[cur:end])
        return b"".join(parts)

    def __repr__(self) -> str:
        return f"Edits({list(self)!r})"

