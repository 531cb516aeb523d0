"""Fixed-capacity hash tables of fixed-size records in shared memory.

Every process forked after :meth:`Table.create` sees the same records. Keys are bytes
(at most ``key_size``), values are exactly ``value_size`` bytes (callers pack them with
a precompiled ``struct.Struct``). Several records may share a key (multimap).

API (``key: bytes``, ``value: bytes`` of ``value_size``; a *handle* is ``(index, gen)``)

- ``Table.create(name, *, capacity, key_size, value_size, stripes, lockset,
  shm_name=None) -> Table`` - before fork. ``capacity`` is the number of record slots,
  rounded up to a multiple of ``stripes``. ``shm_name`` maps a named segment
  (/dev/shm/<shm_name>) instead of an anonymous one, for :meth:`Table.attach`.
- ``Table.attach(shm_name, lockset) -> Table`` - a standalone tool joins a named table
  (``lockset`` from ``LockSet.open`` of the creator's lock path).
- ``get(key) -> bytes | None`` - the first record with ``key``.
- ``get_all(key) -> list[bytes]`` - every record with ``key``, in probe order.
- ``find(key) -> (index, gen) | None`` - the handle of the first record with ``key``.
- ``put(key, value) -> (index, gen)`` - replace the first record with ``key`` in place
  (handle unchanged) or insert one.
- ``add(key, value) -> (index, gen)`` - always insert (multimap).
- ``delete(key) -> bool`` - delete the first record with ``key``.
- ``delete_if(key, pred) -> int`` - delete the records with ``key`` whose value
  satisfies ``pred(value)``; returns how many.
- ``update(key, fn) -> bytes | None`` - read-modify-write of the first record with
  ``key`` under its stripe lock: ``fn(old: bytes | None) -> bytes | None``; bytes
  insert or replace, None deletes (or does nothing when absent). Returns the new value.
- ``update_all(key, fn) -> list[bytes]`` - ``fn(old) -> bytes | None`` on every record
  with ``key`` (None deletes it); never inserts. Returns the values kept, in order.
- ``get_at(index, gen) -> bytes | None``, ``update_at(index, gen, fn) -> bytes | None``
  (``fn`` is not called when the handle is stale), ``delete_at(index, gen) -> bool``:
  the record behind a handle, if it is still the same record.
- ``scan(pred=None, *, stripes=None) -> Iterator[Entry]``, also ``iter(table)``: every
  valid record as ``Entry(key, value, index, gen)``, stripe by stripe. Each stripe is
  locked only while it is copied; ``pred(key, value)`` runs on the copy, unlocked.
  ``stripes`` (an iterable of stripe numbers) scans a slice (natping partitions).
- ``count() -> int``; ``nbytes``; ``stripes``, ``capacity``, ``record_size``;
  ``check() -> list[str]`` (invariant violations, for tests and ctl); ``close()``.

Errors: ``ValueError`` for a key longer than ``key_size``, a value of the wrong size or
a handle index out of range; ``natserver.errors.TableFull(name)`` when the key's stripe
has no free slot; whatever ``fn``/``pred`` raise (nothing is written then).
``fn`` and ``pred`` of the key-based calls run under the stripe lock: keep them short
and never call a table from them (RuntimeError: one stripe lock per process at a time).

Layout. The table is ``stripes`` independent open-addressing regions of
``capacity // stripes`` slots; stripe *s* is guarded by lock ``lock_base + s`` of the
LockSet and owns its slots, so a probe chain never leaves its stripe (linear probing,
wrapping inside the stripe). The hash is ``zlib.crc32(key)`` (stable in every process
and in tools; ``python -m loadtest.shm_bench`` measures it against blake2b): stripe =
``h % stripes``, home slot = ``h // stripes % slots_per_stripe``. A stripe that is full
raises TableFull even if others have room; give tables headroom (``Tables`` does).

Record (native byte order, 8-byte aligned)::

    0 state u8 | 4 crc32 u32 | 8 gen u32 | 12 hash u32 | 16 key length u32 | 20 value | key

``state``: EMPTY, WRITING, VALID, DELETED (tombstone). ``crc`` covers bytes 8 up to the
end of the key. A write stores WRITING, then the payload, then the crc, then VALID; a
reader takes WRITING or a bad crc as "absent" and the slot as free, so a writer killed
half-way never shows a torn record. Each stripe's header holds the pid of the process
inside a write (0 otherwise); whoever takes the stripe lock next and finds a pid there
knows the previous holder died mid-write (the kernel released its lock) and repairs the
stripe first: WRITING and bad-crc slots become tombstones and the count is recomputed.
A record being replaced in place when its writer died is lost, never half-visible.

Deletion uses tombstones, not backward shift: records never move, so a handle stays
valid for the record's whole life (the transaction layer keeps handles in timers), and
a delete is one byte store, which a kill cannot tear. Probes skip tombstones, inserts
reuse the first one on their path, and a tombstone followed by an EMPTY slot is turned
back into EMPTY together with the tombstones before it, so chains shrink from their
end. ``gen`` grows each time a slot receives a new record, so a stale handle misses.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import mmap
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from natserver.errors import TableFull
from natserver.shm.locks import LockSet

log = logging.getLogger("natserver.shm")


class SlotState(enum.IntEnum):
    EMPTY = 0
    WRITING = 1
    VALID = 2
    DELETED = 3


# Plain ints for the hot paths (IntEnum comparisons cost more).
_EMPTY = int(SlotState.EMPTY)
_WRITING = int(SlotState.WRITING)
_VALID = int(SlotState.VALID)
_DELETED = int(SlotState.DELETED)

MAGIC = b"NSHMTBL1"
# magic, capacity, stripes, key size, value size, record size, first lock, name length, name
_HEADER = struct.Struct("=8sIIIIIII32s")
_HEADER_SIZE = 128
_STRIPE_WORDS = 4  # u32 per stripe header: writer pid, record count, 2 spare
_REC = struct.Struct("=III")  # gen, hash, key length at record offset 8
_VALUE = 20  # value offset in a record; the key follows the value
_MAX_GEN = 0xFFFFFFFF

crc32 = zlib.crc32
lockf = fcntl.lockf
LOCK_EX = fcntl.LOCK_EX
LOCK_UN = fcntl.LOCK_UN


class Entry(NamedTuple):
    """One record found by :meth:`Table.scan`; ``(index, gen)`` is its handle."""

    key: bytes
    value: bytes
    index: int
    gen: int


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _shm_path(shm_name: str) -> str:
    if not shm_name or "/" in shm_name or shm_name.startswith("."):
        raise ValueError(f"bad shared memory name {shm_name!r}")
    return "/dev/shm/" + shm_name


def map_segment(size: int, shm_name: str | None = None) -> mmap.mmap:
    """A zero-filled shared mapping of ``size`` bytes, inherited across fork.

    Anonymous by default: nothing in /dev/shm to leak if the supervisor is killed, no
    resource-tracker process, freed when the last process unmaps it. With ``shm_name``,
    a named POSIX shm object (what ``SharedMemory`` opens on Linux) for tools to attach
    to; the creator unlinks it (:func:`unlink_segment`).
    """
    if shm_name is None:
        return mmap.mmap(-1, size)
    fd = os.open(_shm_path(shm_name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def open_segment(shm_name: str) -> mmap.mmap:
    """Map an existing named segment (made by :func:`map_segment` with ``shm_name``)."""
    fd = os.open(_shm_path(shm_name), os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def unlink_segment(shm_name: str) -> None:
    try:
        os.unlink(_shm_path(shm_name))
    except FileNotFoundError:
        pass


class Table:
    """A fixed-capacity shared hash table; see the module docstring for the API.

    Internally a record is addressed by its byte offset ``o`` in the mapping; word
    ``(o >> 2) + k`` of the u32 view is the record's field at byte ``4 * k``.
    """

    __slots__ = (
        "name", "capacity", "stripes", "key_size", "value_size", "record_size",
        "shm_name", "_locks", "_lock_base", "_m", "_w", "_n", "_sh", "_off", "_ko",
    )

    def __init__(self, m: mmap.mmap, lockset: LockSet, shm_name: str | None) -> None:
        if len(m) < _HEADER_SIZE or m[:len(MAGIC)] != MAGIC:
            raise ValueError("not a natserver shm table")
        (_, capacity, stripes, key_size, value_size, record_size, lock_base,
         name_len, name) = _HEADER.unpack_from(m, 0)
        self.name = name[:name_len].decode()
        self.capacity = capacity
        self.stripes = stripes
        self.key_size = key_size
        self.value_size = value_size
        self.record_size = record_size
        self.shm_name = shm_name
        self._locks = lockset
        self._lock_base = lock_base
        self._m = m
        view = memoryview(m)
        self._w = view.cast("I")
        view.release()
        self._n = capacity // stripes  # slots per stripe
        self._sh = _HEADER_SIZE // 4  # word index of stripe 0's header
        self._off = _align(_HEADER_SIZE + 4 * _STRIPE_WORDS * stripes, 64)
        self._ko = _VALUE + value_size  # key offset in a record

    # ---- construction -------------------------------------------------------------

    @staticmethod
    def layout(capacity: int, key_size: int, value_size: int,
               stripes: int) -> tuple[int, int, int]:
        """``(capacity rounded up to a multiple of stripes, record_size, nbytes)``."""
        if stripes < 1 or capacity < 1:
            raise ValueError("capacity and stripes must be at least 1")
        if not 0 < key_size <= 0xFFFF or value_size < 0:
            raise ValueError("key_size must be 1..65535 and value_size >= 0")
        capacity = _align(capacity, stripes)
        record_size = _align(_VALUE + value_size + key_size, 8)
        offset = _align(_HEADER_SIZE + 4 * _STRIPE_WORDS * stripes, 64)
        return capacity, record_size, offset + capacity * record_size

    @classmethod
    def create(cls, name: str, *, capacity: int, key_size: int, value_size: int,
               stripes: int, lockset: LockSet, shm_name: str | None = None) -> Table:
        """A new empty table (call before fork; children inherit the mapping)."""
        capacity, record_size, nbytes = cls.layout(capacity, key_size, value_size, stripes)
        raw_name = name.encode()
        if len(raw_name) > 32:
            raise ValueError(f"table name {name!r} longer than 32 bytes")
        m = map_segment(nbytes, shm_name)
        _HEADER.pack_into(m, 0, MAGIC, capacity, stripes, key_size, value_size, record_size,
                          lockset.reserve(stripes), len(raw_name), raw_name)
        return cls(m, lockset, shm_name)

    @classmethod
    def attach(cls, shm_name: str, lockset: LockSet) -> Table:
        """Join a table created with ``shm_name`` (a standalone tool)."""
        m = open_segment(shm_name)
        try:
            return cls(m, lockset, shm_name)
        except ValueError:
            m.close()
            raise

    def close(self, *, unlink: bool = False) -> None:
        """Unmap this process's view; ``unlink`` also removes a named segment."""
        self._w.release()
        self._m.close()
        if unlink and self.shm_name is not None:
            unlink_segment(self.shm_name)

    @property
    def nbytes(self) -> int:
        return len(self._m)

    def __repr__(self) -> str:
        return (f"<Table {self.name} {self.capacity} x {self.record_size} B, "
                f"{self.stripes} stripes>")

    # ---- locking --------------------------------------------------------------------

    def _lock(self, s: int) -> None:
        """Lock stripe ``s``; repair it first if its last writer died inside."""
        locks = self._locks
        if locks.held >= 0:
            raise RuntimeError(f"table {self.name}: stripe lock requested while this "
                               f"process holds lock {locks.held} (nested table call?)")
        lockf(locks.fd, LOCK_EX, 1, self._lock_base + s)
        locks.held = self._lock_base + s
        if self._w[self._sh + s * _STRIPE_WORDS]:
            try:
                self._repair(s)
            except BaseException:
                self._unlock(s)
                raise

    def _unlock(self, s: int) -> None:
        locks = self._locks
        locks.held = -1
        lockf(locks.fd, LOCK_UN, 1, self._lock_base + s)

    def _lock_key(self, key: bytes) -> tuple[int, int, int]:
        """Hash ``key`` and lock its stripe: ``(hash, stripe, offset of the home slot)``.

        ValueError for a key longer than ``key_size`` (nothing locked then).
        """
        if len(key) > self.key_size:
            raise ValueError(f"key of {len(key)} bytes longer than {self.key_size} "
                             f"(table {self.name})")
        h = crc32(key)
        stripes = self.stripes
        s = h % stripes
        self._lock(s)
        n = self._n
        return h, s, self._off + (s * n + h // stripes % n) * self.record_size

    def _check_value(self, value: bytes) -> None:
        if len(value) != self.value_size:
            raise ValueError(f"value of {len(value)} bytes, table {self.name} "
                             f"needs {self.value_size}")

    # ---- probing and writing (the caller holds the stripe lock) ---------------------

    def _first(self, s: int, o: int, h: int, key: bytes) -> tuple[int, int]:
        """From home offset ``o``: ``(offset of the first valid record with key or -1,
        offset of the first free slot on the way or -1)``. The free slot is where an
        insert of ``key`` goes; a record failing its checksum counts as free."""
        m = self._m
        w = self._w
        rsz = self.record_size
        kl = len(key)
        ko = self._ko
        start = self._off + s * self._n * rsz
        end = start + self._n * rsz
        free = -1
        for _ in range(self._n):
            st = m[o]
            if st == _VALID:
                ow = o >> 2
                if w[ow + 3] == h and w[ow + 4] == kl and m[o + ko:o + ko + kl] == key:
                    if crc32(m[o + 8:o + ko + kl]) == w[ow + 1]:
                        return o, free
                    self._discard(s, o)
                    if free < 0:
                        free = o
            elif st == _EMPTY:
                return -1, (o if free < 0 else free)
            elif free < 0:
                free = o
            o += rsz
            if o == end:
                o = start
        return -1, free

    def _matches(self, s: int, o: int, h: int, key: bytes) -> list[int]:
        """Offsets of every valid record with ``key``, in probe order from ``o``."""
        m = self._m
        w = self._w
        rsz = self.record_size
        kl = len(key)
        ko = self._ko
        start = self._off + s * self._n * rsz
        end = start + self._n * rsz
        found = []
        for _ in range(self._n):
            st = m[o]
            if st == _EMPTY:
                break
            if st == _VALID:
                ow = o >> 2
                if w[ow + 3] == h and w[ow + 4] == kl and m[o + ko:o + ko + kl] == key:
                    if crc32(m[o + 8:o + ko + kl]) == w[ow + 1]:
                        found.append(o)
                    else:
                        self._discard(s, o)
            o += rsz
            if o == end:
                o = start
        return found

    def _free_slot(self, s: int, o: int) -> int:
        """Offset of the first slot that is not VALID from home ``o``; -1 if none."""
        m = self._m
        rsz = self.record_size
        start = self._off + s * self._n * rsz
        end = start + self._n * rsz
        for _ in range(self._n):
            if m[o] != _VALID:
                return o
            o += rsz
            if o == end:
                o = start
        return -1

    def _insert(self, s: int, o: int, h: int, key: bytes, value: bytes) -> int:
        """Write a new record into the free slot at ``o``; returns its generation."""
        m = self._m
        w = self._w
        ow = o >> 2
        ko = o + self._ko
        gen = w[ow + 2] + 1  # the slot keeps its last generation when freed
        if gen > _MAX_GEN:
            gen = 1
        hdr = self._sh + s * _STRIPE_WORDS
        w[hdr] = self._locks.pid
        m[o] = _WRITING
        _REC.pack_into(m, o + 8, gen, h, len(key))
        m[o + _VALUE:ko] = value
        m[ko:ko + len(key)] = key
        w[ow + 1] = crc32(m[o + 8:ko + len(key)])
        m[o] = _VALID
        w[hdr + 1] += 1
        w[hdr] = 0
        return gen

    def _rewrite(self, s: int, o: int, value: bytes) -> None:
        """Replace the value of the valid record at ``o`` (same key, same handle)."""
        m = self._m
        w = self._w
        ow = o >> 2
        ko = o + self._ko
        hdr = self._sh + s * _STRIPE_WORDS
        w[hdr] = self._locks.pid
        m[o] = _WRITING
        m[o + _VALUE:ko] = value
        w[ow + 1] = crc32(m[o + 8:ko + w[ow + 4]])
        m[o] = _VALID
        w[hdr] = 0

    def _remove(self, s: int, o: int) -> None:
        """Delete the valid record at ``o``."""
        w = self._w
        hdr = self._sh + s * _STRIPE_WORDS
        w[hdr] = self._locks.pid
        self._free(s, o)
        w[hdr + 1] -= 1
        w[hdr] = 0

    def _free(self, s: int, o: int) -> None:
        """Free the slot at ``o``: EMPTY if the next slot is EMPTY (and so are the
        tombstones right before it), else a tombstone that keeps probe chains whole."""
        m = self._m
        rsz = self.record_size
        n = self._n
        start = self._off + s * n * rsz
        end = start + n * rsz
        nxt = o + rsz
        if m[start if nxt == end else nxt] != _EMPTY:
            m[o] = _DELETED
            return
        m[o] = _EMPTY
        for _ in range(n - 1):
            o = (o if o != start else end) - rsz
            if m[o] != _DELETED:
                return
            m[o] = _EMPTY

    def _discard(self, s: int, o: int) -> None:
        """A VALID record with a bad checksum: free it, as if deleted."""
        log.warning("table %s: record %d fails its checksum; discarded",
                    self.name, (o - self._off) // self.record_size)
        self._remove(s, o)

    def _intact(self, o: int) -> bool:
        """Is the VALID-marked record at ``o`` whole (key length sane, checksum right)?"""
        w = self._w
        ow = o >> 2
        kl = w[ow + 4]
        return kl <= self.key_size and \
            crc32(self._m[o + 8:o + self._ko + kl]) == w[ow + 1]

    def _repair(self, s: int) -> None:
        """Stripe ``s``'s last writer died inside (its pid is still in the header):
        free half-written and corrupt records, recount, trim tombstones at chain ends."""
        m = self._m
        w = self._w
        rsz = self.record_size
        n = self._n
        start = self._off + s * n * rsz
        end = start + n * rsz
        hdr = self._sh + s * _STRIPE_WORDS
        dead = w[hdr]
        count = dropped = 0
        empty = -1
        for o in range(start, end, rsz):
            st = m[o]
            if st == _VALID and self._intact(o):
                count += 1
            elif st == _EMPTY:
                empty = o
            elif st != _DELETED:  # WRITING, a torn VALID, or a byte that is no state
                m[o] = _DELETED
                dropped += 1
        if empty >= 0:  # one backward pass from an EMPTY slot trims every chain's tail
            after_empty = True
            o = empty
            for _ in range(n - 1):
                o = (o if o != start else end) - rsz
                st = m[o]
                if st == _DELETED and after_empty:
                    m[o] = _EMPTY
                else:
                    after_empty = st == _EMPTY
        w[hdr + 1] = count
        w[hdr] = 0
        log.warning("table %s stripe %d: pid %d died while writing; repaired "
                    "(%d records kept, %d torn dropped)", self.name, s, dead, count, dropped)

    def _at(self, index: int) -> tuple[int, int]:
        """``(stripe, offset)`` of slot ``index``."""
        if not 0 <= index < self.capacity:
            raise ValueError(f"record index {index} out of range for table {self.name}")
        return index // self._n, self._off + index * self.record_size

    def _value_at(self, o: int, gen: int) -> bytes | None:
        """The value at ``o`` if it is an intact record of generation ``gen``."""
        if self._m[o] != _VALID or self._w[(o >> 2) + 2] != gen or not self._intact(o):
            return None
        return self._m[o + _VALUE:o + self._ko]

    def _handle(self, o: int) -> tuple[int, int]:
        return (o - self._off) // self.record_size, self._w[(o >> 2) + 2]

    # ---- key operations -------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        h, s, o = self._lock_key(key)
        try:
            o = self._first(s, o, h, key)[0]
            return None if o < 0 else self._m[o + _VALUE:o + self._ko]
        finally:
            self._unlock(s)

    def get_all(self, key: bytes) -> list[bytes]:
        h, s, o = self._lock_key(key)
        try:
            m = self._m
            ko = self._ko
            return [m[o + _VALUE:o + ko] for o in self._matches(s, o, h, key)]
        finally:
            self._unlock(s)

    def find(self, key: bytes) -> tuple[int, int] | None:
        h, s, o = self._lock_key(key)
        try:
            o = self._first(s, o, h, key)[0]
            return None if o < 0 else self._handle(o)
        finally:
            self._unlock(s)

    def put(self, key: bytes, value: bytes) -> tuple[int, int]:
        self._check_value(value)
        h, s, o = self._lock_key(key)
        try:
            o, free = self._first(s, o, h, key)
            if o >= 0:
                self._rewrite(s, o, value)
                return self._handle(o)
            if free < 0:
                raise TableFull(self.name)
            return (free - self._off) // self.record_size, self._insert(s, free, h, key, value)
        finally:
            self._unlock(s)

    def add(self, key: bytes, value: bytes) -> tuple[int, int]:
        self._check_value(value)
        h, s, o = self._lock_key(key)
        try:
            free = self._free_slot(s, o)
            if free < 0:
                raise TableFull(self.name)
            return (free - self._off) // self.record_size, self._insert(s, free, h, key, value)
        finally:
            self._unlock(s)

    def delete(self, key: bytes) -> bool:
        h, s, o = self._lock_key(key)
        try:
            o = self._first(s, o, h, key)[0]
            if o < 0:
                return False
            self._remove(s, o)
            return True
        finally:
            self._unlock(s)

    def delete_if(self, key: bytes, pred: Callable[[bytes], bool]) -> int:
        h, s, o = self._lock_key(key)
        try:
            m = self._m
            ko = self._ko
            done = 0
            for o in self._matches(s, o, h, key):
                if pred(m[o + _VALUE:o + ko]):
                    self._remove(s, o)
                    done += 1
            return done
        finally:
            self._unlock(s)

    def update(self, key: bytes, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        h, s, o = self._lock_key(key)
        try:
            o, free = self._first(s, o, h, key)
            if o >= 0:
                old = self._m[o + _VALUE:o + self._ko]
                new = fn(old)
                if new is None:
                    self._remove(s, o)
                elif new != old:
                    self._check_value(new)
                    self._rewrite(s, o, new)
                return new
            new = fn(None)
            if new is not None:
                self._check_value(new)
                if free < 0:
                    raise TableFull(self.name)
                self._insert(s, free, h, key, new)
            return new
        finally:
            self._unlock(s)

    def update_all(self, key: bytes, fn: Callable[[bytes], bytes | None]) -> list[bytes]:
        h, s, o = self._lock_key(key)
        try:
            m = self._m
            ko = self._ko
            kept: list[bytes] = []
            for o in self._matches(s, o, h, key):
                old = m[o + _VALUE:o + ko]
                new = fn(old)
                if new is None:
                    self._remove(s, o)
                    continue
                if new != old:
                    self._check_value(new)
                    self._rewrite(s, o, new)
                kept.append(new)
            return kept
        finally:
            self._unlock(s)

    # ---- handle operations ----------------------------------------------------------

    def get_at(self, index: int, gen: int) -> bytes | None:
        s, o = self._at(index)
        self._lock(s)
        try:
            return self._value_at(o, gen)
        finally:
            self._unlock(s)

    def update_at(self, index: int, gen: int,
                  fn: Callable[[bytes], bytes | None]) -> bytes | None:
        s, o = self._at(index)
        self._lock(s)
        try:
            old = self._value_at(o, gen)
            if old is None:
                return None
            new = fn(old)
            if new is None:
                self._remove(s, o)
            elif new != old:
                self._check_value(new)
                self._rewrite(s, o, new)
            return new
        finally:
            self._unlock(s)

    def delete_at(self, index: int, gen: int) -> bool:
        s, o = self._at(index)
        self._lock(s)
        try:
            if self._value_at(o, gen) is None:
                return False
            self._remove(s, o)
            return True
        finally:
            self._unlock(s)

    # ---- whole-table views ----------------------------------------------------------

    def scan(self, pred: Callable[[bytes, bytes], bool] | None = None, *,
             stripes: Iterable[int] | None = None) -> Iterator[Entry]:
        n = self._n
        rsz = self.record_size
        ks = self.key_size
        ko = self._ko
        for s in range(self.stripes) if stripes is None else stripes:
            if not 0 <= s < self.stripes:
                raise ValueError(f"stripe {s} out of range for table {self.name}")
            start = self._off + s * n * rsz
            self._lock(s)
            try:
                chunk = self._m[start:start + n * rsz]
            finally:
                self._unlock(s)
            found = []
            with memoryview(chunk) as view, view.cast("I") as w:
                for i in range(n):
                    o = i * rsz
                    if chunk[o] != _VALID:
                        continue
                    ow = o >> 2
                    kl = w[ow + 4]
                    if kl > ks or crc32(chunk[o + 8:o + ko + kl]) != w[ow + 1]:
                        continue
                    found.append(Entry(chunk[o + ko:o + ko + kl], chunk[o + _VALUE:o + ko],
                                       s * n + i, w[ow + 2]))
            del chunk
            for entry in found:
                if pred is None or pred(entry.key, entry.value):
                    yield entry

    def __iter__(self) -> Iterator[Entry]:
        return self.scan()

    def count(self) -> int:
        """Records stored (stripes whose last writer died are repaired first)."""
        w = self._w
        total = 0
        for s in range(self.stripes):
            hdr = self._sh + s * _STRIPE_WORDS
            if w[hdr]:
                self._lock(s)
                self._unlock(s)
            total += w[hdr + 1]
        return total

    def check(self) -> list[str]:
        """Invariant violations (empty list: consistent). Locks each stripe in turn."""
        problems: list[str] = []
        m = self._m
        w = self._w
        rsz = self.record_size
        n = self._n
        ko = self._ko
        for s in range(self.stripes):
            start = self._off + s * n * rsz
            self._lock(s)
            try:
                valid = 0
                for i in range(n):
                    o = start + i * rsz
                    st = m[o]
                    where = f"table {self.name} slot {s * n + i}"
                    if st not in (_EMPTY, _VALID, _DELETED):
                        problems.append(f"{where}: state {st}")
                    if st != _VALID:
                        continue
                    valid += 1
                    if not self._intact(o):
                        problems.append(f"{where}: bad checksum")
                        continue
                    ow = o >> 2
                    h = w[ow + 3]
                    if h != crc32(m[o + ko:o + ko + w[ow + 4]]):
                        problems.append(f"{where}: stored hash does not match the key")
                    if h % self.stripes != s:
                        problems.append(f"{where}: key belongs to stripe {h % self.stripes}")
                    j = h // self.stripes % n
                    while j != i:  # nothing EMPTY between home and the record
                        if m[start + j * rsz] == _EMPTY:
                            problems.append(f"{where}: unreachable from home {s * n + j}")
                            break
                        j = j + 1 if j + 1 < n else 0
                counted = w[self._sh + s * _STRIPE_WORDS + 1]
                if valid != counted:
                    problems.append(f"table {self.name} stripe {s}: count {counted} "
                                    f"but {valid} valid records")
            finally:
                self._unlock(s)
        return problems

    def stats(self) -> dict[str, int]:
        """Slot states over the whole table (an unlocked snapshot, for ctl/diagnostics)."""
        m = self._m
        rsz = self.record_size
        states = [0] * 256
        for o in range(self._off, self._off + self.capacity * rsz, rsz):
            states[m[o]] += 1
        return {"capacity": self.capacity, "valid": states[_VALID],
                "deleted": states[_DELETED], "empty": states[_EMPTY],
                "writing": states[_WRITING], "nbytes": self.nbytes}
