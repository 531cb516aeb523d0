"""Per-process slots in shared memory: owner pid, heartbeat and u64 counters.

Every child process has a fixed slot (its ``Proc.index``); the slot, not the pid,
indexes heartbeats and counters, so a respawned child continues in its predecessor's
place. Each slot has exactly one writer at a time, so nothing here takes a lock:

- the child writes its heartbeat (a double, its ``now``) every loop iteration and
  stores its counters (a copy of its in-process ``Stats`` values) once per
  iteration;
- the supervisor writes the owner pid when it forks the child (:meth:`ProcSlots.claim`)
  and, after reaping it, folds the dead child's counters into a "retired" row and
  clears the slot (:meth:`ProcSlots.release`), so totals never go backwards when a
  child is replaced;
- readers (ctl, stats, the supervisor's timeout check) read without locks.

Every field is a naturally aligned 8-byte word written with one native store (a
``memoryview.cast`` item assignment), so a reader sees a whole old or new value, never a
torn one (x86-64 and arm64 make aligned 8-byte stores single-copy atomic). Readers may
see one counter of a slot newer than another - fine for statistics.

The counter names are declared once, by the caller (``natserver.stats.COUNTER_NAMES``);
the order of ``names`` is the order of ``store`` values.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from natserver.shm.table import map_segment, open_segment, unlink_segment

MAGIC = b"NSHMPRC1"
_HEADER = struct.Struct("=8sII")  # magic, slots, counters
_HEADER_WORDS = 2
_ROW_FIXED = 2  # pid, heartbeat


@dataclass(slots=True)
class SlotWriter:
    """The hot-path view of one slot for the child that owns it."""

    _hb: memoryview
    _ctr: memoryview
    _row: int
    _count: int

    def beat(self, now: float) -> None:
        self._hb[self._row + 1] = now

    def store(self, values: Sequence[int]) -> None:
        """Store all counters (values in ``names`` order; extra values are an error)."""
        if len(values) > self._count:
            raise ValueError(f"{len(values)} counter values for {self._count} counters")
        ctr = self._ctr
        i = self._row + _ROW_FIXED
        for v in values:
            ctr[i] = v
            i += 1

    def add(self, index: int, n: int = 1) -> None:
        """Add to one counter in place (the slot's single writer only)."""
        i = self._row + _ROW_FIXED + index
        self._ctr[i] = self._ctr[i] + n


class ProcSlots:
    """``nslots`` process slots plus one row of retired totals; see the module doc."""

    __slots__ = ("names", "nslots", "shm_name", "_m", "_pid", "_hb", "_ctr", "_row")

    def __init__(self, m: mmap.mmap, names: Sequence[str], shm_name: str | None) -> None:
        if len(m) < _HEADER.size or m[:len(MAGIC)] != MAGIC:
            raise ValueError("not a natserver process-slot segment")
        _, nslots, ncounters = _HEADER.unpack_from(m, 0)
        if ncounters != len(names):
            raise ValueError(f"segment has {ncounters} counters, {len(names)} names given")
        self.names = tuple(names)
        self.nslots = nslots
        self.shm_name = shm_name
        self._m = m
        view = memoryview(m)
        self._pid = view.cast("q")
        self._hb = view.cast("d")
        self._ctr = view.cast("Q")
        view.release()
        self._row = _ROW_FIXED + ncounters

    @staticmethod
    def size(nslots: int, ncounters: int) -> int:
        return 8 * (_HEADER_WORDS + (nslots + 1) * (_ROW_FIXED + ncounters))

    @classmethod
    def create(cls, nslots: int, names: Sequence[str], *,
               shm_name: str | None = None) -> ProcSlots:
        """Zeroed slots (before fork). ``names``: the counters, in store order."""
        if nslots < 1:
            raise ValueError("at least one process slot")
        if len(set(names)) != len(names):
            raise ValueError("duplicate counter names")
        m = map_segment(cls.size(nslots, len(names)), shm_name)
        _HEADER.pack_into(m, 0, MAGIC, nslots, len(names))
        return cls(m, names, shm_name)

    @classmethod
    def attach(cls, shm_name: str, names: Sequence[str]) -> ProcSlots:
        m = open_segment(shm_name)
        try:
            return cls(m, names, shm_name)
        except ValueError:
            m.close()
            raise

    def close(self, *, unlink: bool = False) -> None:
        self._pid.release()
        self._hb.release()
        self._ctr.release()
        self._m.close()
        if unlink and self.shm_name is not None:
            unlink_segment(self.shm_name)

    @property
    def nbytes(self) -> int:
        return len(self._m)

    def _base(self, slot: int) -> int:
        if not 0 <= slot < self.nslots:
            raise ValueError(f"process slot {slot} out of range 0..{self.nslots - 1}")
        return _HEADER_WORDS + slot * self._row

    # ---- supervisor side ------------------------------------------------------------

    def claim(self, slot: int, pid: int, now: float) -> None:
        """Give ``slot`` to a freshly forked child; its heartbeat starts at ``now``."""
        base = self._base(slot)
        self._hb[base + 1] = now
        self._pid[base] = pid

    def release(self, slot: int) -> None:
        """After reaping the slot's child: fold its counters into the retired row."""
        base = self._base(slot)
        retired = _HEADER_WORDS + self.nslots * self._row + _ROW_FIXED
        ctr = self._ctr
        for i in range(len(self.names)):
            ctr[retired + i] += ctr[base + _ROW_FIXED + i]
            ctr[base + _ROW_FIXED + i] = 0
        self._pid[base] = 0
        self._hb[base + 1] = 0.0

    # ---- child side -----------------------------------------------------------------

    def writer(self, slot: int) -> SlotWriter:
        return SlotWriter(self._hb, self._ctr, self._base(slot), len(self.names))

    def beat(self, slot: int, now: float) -> None:
        self._hb[self._base(slot) + 1] = now

    def store(self, slot: int, values: Sequence[int]) -> None:
        """Store ``slot``'s counters (its single writer: the child owning it)."""
        if len(values) > len(self.names):
            raise ValueError(f"{len(values)} counter values for {len(self.names)} counters")
        ctr = self._ctr
        i = self._base(slot) + _ROW_FIXED
        for v in values:
            ctr[i] = v
            i += 1

    # ---- readers --------------------------------------------------------------------

    def pid(self, slot: int) -> int:
        """The pid owning ``slot`` (0: none)."""
        return self._pid[self._base(slot)]

    def heartbeat(self, slot: int) -> float:
        return self._hb[self._base(slot) + 1]

    def values(self, slot: int) -> list[int]:
        """One slot's counters, in ``names`` order."""
        start = self._base(slot) + _ROW_FIXED
        return self._ctr[start:start + len(self.names)].tolist()

    def retired(self) -> list[int]:
        start = _HEADER_WORDS + self.nslots * self._row + _ROW_FIXED
        return self._ctr[start:start + len(self.names)].tolist()

    def totals(self) -> dict[str, int]:
        """Every counter summed over all slots and the retired row."""
        sums = self.retired()
        for slot in range(self.nslots):
            for i, v in enumerate(self.values(slot)):
                sums[i] += v
        return dict(zip(self.names, sums))
