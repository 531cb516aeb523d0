"""Fixed-capacity hash tables of fixed-size records in shared memory.

Every process forked after :meth:`Table.create` sees the same records. Keys are bytes
(at most ``key_size``), values are exactly ``value_size`` bytes (callers pack them with
a precompiled ``struct.Struct``). Several records may share a key (multimap).

API (``key: bytes``, ``value: bytes`` of ``value_size``; a *handle* is ``(index, gen)``)

- ``Table.create(name, *, capacity, key_size, value_size, stripes, lockset,
  shm_name=None) -> Table`` - before fork. ``capacity`` is the number of records,
  rounded up to a multiple of ``stripes``; each stripe holds ``capacity // stripes``.
  ``shm_name`` maps a named segment (/dev/shm/<shm_name>) instead of an anonymous one,
  for :meth:`Table.attach`.
- ``Table.attach(shm_name, lockset) -> Table`` - a standalone tool joins a named table
  (``lockset`` from ``LockSet.open`` of the creator's lock path).
- ``get(key) -> bytes | None`` - the first record with ``key``.
- ``get_all(key) -> list[bytes]`` - every record with ``key``, oldest first (a repair,
  below, may reorder them).
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
  locked only while its records are copied; ``pred(key, value)`` runs on the copy,
  unlocked, and the consumer may modify the table. ``stripes`` (stripe numbers) scans
  a slice (natping partitions).
- ``count() -> int``; ``nbytes``; ``stripes``, ``capacity``, ``record_size``;
  ``check() -> list[str]`` (invariant violations, for tests and ctl); ``stats()``;
  ``close()``.
- ``allow_shorter_values()`` - from now on this process may also write values shorter
  than ``value_size``; they are stored with their length and read back as written
  (every process reads them). A record of a few hundred bytes in a table sized for the
  largest one (tm: 4096) then costs its own size, not the table's, in the checksum and
  the copies of every operation.

Errors: ``ValueError`` for a key longer than ``key_size``, a value of the wrong size or
a handle index out of range; ``natserver.errors.TableFull(name)`` when the key's stripe
has no free record; whatever ``fn``/``pred`` raise (nothing is written then). ``fn``
and the ``delete_if`` ``pred`` run under the stripe lock: keep them short and never
call a table from them (RuntimeError: one stripe lock per process at a time).

Layout. A table is ``stripes`` independent parts; stripe *s* is guarded by lock
``lock_base + s`` of the LockSet and owns ``capacity // stripes`` records plus an index
of twice as many entries. The hash is ``zlib.crc32(key)`` (stable in every process and
in tools; ``python -m loadtest.shm_bench`` measures it against blake2b): stripe =
``h % stripes``, home index entry = ``h // stripes % index_entries``. A full stripe
raises TableFull even if others have room; give tables headroom (``Tables`` does).

Records never move, so a handle stays valid for the record's whole life (the
transaction layer keeps handles in timers); ``gen`` grows each time a record slot is
reused, so a stale handle misses. A record (native byte order, 8-byte aligned)::

    0 state u8 | 1 tail u24 | 4 crc32 u32 | 8 gen u32 | 12 hash u32 | 16 key length u32
    | 20 value | key

``state`` is EMPTY, WRITING or VALID; ``tail`` (little-endian) is how many bytes of the
value area a shorter value leaves unused (0: the value fills it); ``crc`` covers bytes 8
up to the end of the value, then the key (a damaged ``tail`` makes it cover other bytes,
so it fails too).
A write stores WRITING, then the payload, then the crc, then VALID; a reader takes
WRITING or a bad crc as "absent" and the record slot as free, so a writer killed
half-way never shows a torn record. A new record goes to the first free record slot
after a per-stripe cursor.

The index is linear probing over 8-byte entries ``(hash u32, record index + 1 u32)``
(0: empty), at most half full, so probes are short and compare the stored hash before
touching a record. Deletion shifts the following entries of the cluster back (Knuth's
algorithm R) instead of leaving tombstones, which under steady insert/delete churn
would fill every empty entry and turn each miss into a full-stripe scan; the shift
keeps the order of records of one key, so ``get_all`` lists them oldest first.

Dying inside. Each stripe's header holds the pid of the process inside a write (0
otherwise). Whoever takes the stripe lock next and finds a pid there knows the previous
holder died mid-write (the kernel released its lock) and repairs the stripe first:
records that are WRITING or fail their checksum are freed, and the index and count are
rebuilt from the records, which are the only truth. A lookup that meets a torn record
(which only a scribble can leave without the pid) repairs the stripe the same way. A
record that was being replaced in place when its writer died is lost, never
half-visible; a record written completely but not yet indexed reappears.
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
    """State byte of a record slot."""

    EMPTY = 0
    WRITING = 1
    VALID = 2


# Plain ints for the hot paths (IntEnum comparisons cost more).
_EMPTY = int(SlotState.EMPTY)
_WRITING = int(SlotState.WRITING)
_VALID = int(SlotState.VALID)

MAGIC = b"NSHMTBL2"
# magic, capacity, stripes, key size, value size, record size, first lock, name length, name
_HEADER = struct.Struct("=8sIIIIIII32s")
_HEADER_SIZE = 128
_STRIPE_WORDS = 4  # u32 per stripe header: writer pid, record count, free cursor, spare
_INDEX_FACTOR = 2  # index entries per record
_REC = struct.Struct("=III")  # gen, hash, key length at record offset 8
_HEAD0 = struct.Struct("<I")  # state | tail << 8, the record's first 4 bytes
_VALUE = 20  # value offset in a record; the key follows the value area
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

    Inside, a record is addressed by its byte offset ``o`` in the mapping (word
    ``(o >> 2) + k`` of the u32 view is its field at byte ``4 * k``) and an index entry
    by its word number ``e`` (``e``: hash, ``e + 1``: record index + 1).
    """

    __slots__ = (
        "name", "capacity", "stripes", "key_size", "value_size", "record_size",
        "shm_name", "_locks", "_lock_base", "_m", "_w", "_v", "_n", "_isz", "_sh", "_ix",
        "_off", "_ko", "_probe", "_short",
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
        self._v = memoryview(m)  # checksums read through it: no copy of the record
        self._short = False
        self._n = capacity // stripes  # records per stripe
        self._isz = self._n * _INDEX_FACTOR  # index entries per stripe
        self._sh = _HEADER_SIZE // 4  # word of stripe 0's header
        self._ix = self._sh + _STRIPE_WORDS * stripes  # word of stripe 0's index
        self._off = _align(4 * (self._ix + 2 * self._isz * stripes), 64)  # record 0
        self._ko = _VALUE + value_size  # key offset in a record
        # what every probe loads, in one attribute (the hot paths are attribute-bound)
        self._probe = (m, self._w, self._off, record_size, self._ko, self._ix, self._isz,
                       stripes)

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
        words = _HEADER_SIZE // 4 + _STRIPE_WORDS * stripes + 2 * _INDEX_FACTOR * capacity
        return capacity, record_size, _align(4 * words, 64) + capacity * record_size

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
        self._probe = ()
        self._w.release()
        self._v.release()
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
            self._nested()
        i = self._lock_base + s
        lockf(locks.fd, LOCK_EX, 1, i)
        locks.held = i
        if self._w[self._sh + s * _STRIPE_WORDS]:
            self._repair_dead(s)

    def _lock_key(self, key: bytes) -> tuple[int, int]:
        """Hash ``key`` and lock its stripe (as :meth:`_lock`): ``(hash, stripe)``.

        ValueError for a key longer than ``key_size`` (nothing locked then).
        """
        if len(key) > self.key_size:
            raise ValueError(f"key of {len(key)} bytes longer than {self.key_size} "
                             f"(table {self.name})")
        h = crc32(key)
        s = h % self.stripes
        self._lock(s)
        return h, s

    def _unlock(self, s: int) -> None:
        locks = self._locks
        locks.held = -1
        lockf(locks.fd, LOCK_UN, 1, self._lock_base + s)

    def _nested(self) -> None:
        raise RuntimeError(f"table {self.name}: stripe lock requested while this process "
                           f"holds lock {self._locks.held} (nested table call?)")

    def _repair_dead(self, s: int) -> None:
        """Just locked stripe ``s`` and found a writer's pid in it: repair, or unlock and
        re-raise if even that fails."""
        try:
            self._repair(s, f"pid {self._w[self._sh + s * _STRIPE_WORDS]} died while writing")
        except BaseException:
            self._unlock(s)
            raise

    def allow_shorter_values(self) -> None:
        """Let this process write values shorter than ``value_size`` (module docstring)."""
        self._short = True

    def _check_value(self, value: bytes) -> None:
        n = len(value)
        if n != self.value_size and not (self._short and n < self.value_size):
            raise ValueError(f"value of {n} bytes, table {self.name} "
                             f"needs {self.value_size}")

    # ---- one record (the caller holds its stripe lock) ------------------------------

    def _crc(self, o: int, kl: int) -> int:
        """The checksum record ``o`` should carry: bytes 8 to the end of its value, then
        its key of ``kl`` bytes (read through the memoryview: nothing is copied)."""
        v = self._v
        ko = o + self._ko
        tail = _HEAD0.unpack_from(v, o)[0] >> 8
        if not tail:
            return crc32(v[o + 8:ko + kl])
        return crc32(v[ko:ko + kl], crc32(v[o + 8:ko - tail]))

    def _value(self, o: int) -> bytes:
        """The value of record ``o`` as it was written."""
        return self._m[o + _VALUE:o + self._ko - (_HEAD0.unpack_from(self._m, o)[0] >> 8)]

    def _store(self, o: int, value: bytes) -> None:
        """Write ``value`` and its tail into record ``o`` (which is WRITING)."""
        m = self._m
        n = len(value)
        m[o + _VALUE:o + _VALUE + n] = value
        m[o + 1:o + 4] = (self.value_size - n).to_bytes(3, "little")

    # ---- index and records (the caller holds the stripe lock) -----------------------

    def _home(self, s: int, h: int) -> int:
        """Word of the home index entry of hash ``h`` in stripe ``s``."""
        return self._ix + 2 * (s * self._isz + h // self.stripes % self._isz)

    def _first(self, s: int, h: int, key: bytes) -> tuple[int, int]:
        """``(offset of the first valid record with key or -1, index word where the probe
        ended)``; after a miss that word is the empty entry an insert of ``key`` uses."""
        m, w, off, rsz, ko, ix, isz, stripes = self._probe
        kl = len(key)
        start = ix + 2 * s * isz
        end = start + 2 * isz
        e = start + 2 * (h // stripes % isz)
        for _ in range(isz):  # ends sooner: the index is at most half full
            r = w[e + 1]
            if not r:
                return -1, e
            if w[e] == h:
                o = off + (r - 1) * rsz
                ow = o >> 2
                if w[ow + 4] == kl and m[o + ko:o + ko + kl] == key:
                    if m[o] == _VALID and self._crc(o, kl) == w[ow + 1]:
                        return o, e
                    self._repair(s, f"record {r - 1} is torn")
                    return self._first(s, h, key)  # the rebuilt index has no torn record
            e += 2
            if e == end:
                e = start
        return -1, e  # only with a scribbled index: _append then refuses

    def _matches(self, s: int, h: int, key: bytes) -> list[int]:
        """Offsets of every valid record with ``key``, oldest first."""
        m, w, off, rsz, ko, ix, isz, stripes = self._probe
        kl = len(key)
        start = ix + 2 * s * isz
        end = start + 2 * isz
        e = start + 2 * (h // stripes % isz)
        found = []
        for _ in range(isz):
            r = w[e + 1]
            if not r:
                break
            if w[e] == h:
                o = off + (r - 1) * rsz
                ow = o >> 2
                if w[ow + 4] == kl and m[o + ko:o + ko + kl] == key:
                    if m[o] != _VALID or self._crc(o, kl) != w[ow + 1]:
                        self._repair(s, f"record {r - 1} is torn")
                        return self._matches(s, h, key)
                    found.append(o)
            e += 2
            if e == end:
                e = start
        return found

    def _append(self, s: int, h: int, e: int, r: int) -> None:
        """Index record ``r`` (table-wide number) at the first empty entry from ``e``."""
        w = self._w
        start = self._ix + 2 * s * self._isz
        end = start + 2 * self._isz
        for _ in range(self._isz):
            if not w[e + 1]:
                w[e] = h
                w[e + 1] = r + 1
                return
            e += 2
            if e == end:
                e = start
        raise TableFull(self.name)  # cannot happen unless the index was scribbled on

    def _unindex(self, s: int, o: int) -> None:
        """Drop the index entry of the record at ``o``, shifting its cluster back."""
        w = self._w
        isz = self._isz
        stripes = self.stripes
        start = self._ix + 2 * s * isz
        end = start + 2 * isz
        r = (o - self._off) // self.record_size + 1
        e = self._home(s, w[(o >> 2) + 3])
        for _ in range(isz):
            if w[e + 1] == r:
                break
            e += 2
            if e == end:
                e = start
        else:
            return  # not indexed (a repair dropped it already)
        hole = e
        for _ in range(isz):
            e += 2
            if e == end:
                e = start
            if not w[e + 1]:
                break
            home = start + 2 * (w[e] // stripes % isz)
            # the entry at e may fill the hole unless its home lies in (hole, e]
            if (hole < home <= e) if hole <= e else (home > hole or home <= e):
                continue
            w[hole] = w[e]
            w[hole + 1] = w[e + 1]
            hole = e
        w[hole] = 0
        w[hole + 1] = 0

    def _free_record(self, s: int) -> int:
        """Offset of a free record slot of stripe ``s`` (from its cursor); -1 if full."""
        m = self._m
        w = self._w
        n = self._n
        rsz = self.record_size
        first = self._off + s * n * rsz
        cursor = w[self._sh + s * _STRIPE_WORDS + 2]
        i = cursor if cursor < n else 0
        for _ in range(n):
            o = first + i * rsz
            if m[o] != _VALID:
                return o
            i += 1
            if i == n:
                i = 0
        return -1

    def _insert(self, s: int, o: int, e: int, h: int, key: bytes, value: bytes) -> int:
        """Write a new record at free slot ``o`` and index it from word ``e``; its gen."""
        m = self._m
        w = self._w
        ow = o >> 2
        ko = o + self._ko
        r = (o - self._off) // self.record_size
        gen = w[ow + 2] + 1  # a slot keeps its last generation when freed
        if gen > _MAX_GEN:
            gen = 1
        hdr = self._sh + s * _STRIPE_WORDS
        w[hdr] = self._locks.pid
        m[o] = _WRITING
        _REC.pack_into(m, o + 8, gen, h, len(key))
        self._store(o, value)
        m[ko:ko + len(key)] = key
        w[ow + 1] = self._crc(o, len(key))
        m[o] = _VALID
        self._append(s, h, e, r)
        w[hdr + 1] += 1
        w[hdr + 2] = r - s * self._n + 1
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
        self._store(o, value)
        w[ow + 1] = self._crc(o, w[ow + 4])
        m[o] = _VALID
        w[hdr] = 0

    def _remove(self, s: int, o: int) -> None:
        """Delete the record at ``o``: free its slot, drop its index entry."""
        w = self._w
        hdr = self._sh + s * _STRIPE_WORDS
        w[hdr] = self._locks.pid
        self._m[o] = _EMPTY
        self._unindex(s, o)
        w[hdr + 1] -= 1
        w[hdr] = 0

    def _intact(self, o: int) -> bool:
        """Is the VALID-marked record at ``o`` whole (key length sane, checksum right)?"""
        w = self._w
        ow = o >> 2
        kl = w[ow + 4]
        return kl <= self.key_size and self._crc(o, kl) == w[ow + 1]

    def _repair(self, s: int, why: str) -> None:
        """Make stripe ``s`` consistent again after a writer died inside it (its pid is
        still in the header) or a torn record was met: free records that are WRITING or
        fail their checksum, rebuild the index and the count from the records."""
        m = self._m
        w = self._w
        n = self._n
        rsz = self.record_size
        hdr = self._sh + s * _STRIPE_WORDS
        w[hdr] = self._locks.pid  # dying in here leaves the stripe flagged again
        start = self._ix + 2 * s * self._isz
        m[4 * start:4 * (start + 2 * self._isz)] = bytes(8 * self._isz)
        count = dropped = 0
        first = self._off + s * n * rsz
        for i in range(n):
            o = first + i * rsz
            st = m[o]
            if st == _VALID and self._intact(o):
                h = w[(o >> 2) + 3]
                self._append(s, h, self._home(s, h), s * n + i)
                count += 1
            elif st != _EMPTY:  # WRITING, a torn VALID, or a byte that is no state
                m[o] = _EMPTY
                dropped += 1
        w[hdr + 1] = count
        w[hdr] = 0
        log.warning("table %s stripe %d repaired (%s): %d records kept, %d torn dropped",
                    self.name, s, why, count, dropped)

    def _at(self, index: int) -> tuple[int, int]:
        """``(stripe, offset)`` of record slot ``index``."""
        if not 0 <= index < self.capacity:
            raise ValueError(f"record index {index} out of range for table {self.name}")
        return index // self._n, self._off + index * self.record_size

    def _value_at(self, s: int, o: int, gen: int) -> bytes | None:
        """The value at ``o`` if it is an intact record of generation ``gen``."""
        if self._m[o] != _VALID or self._w[(o >> 2) + 2] != gen:
            return None
        if not self._intact(o):
            self._repair(s, f"record {(o - self._off) // self.record_size} is torn")
            return None
        return self._value(o)

    def _handle(self, o: int) -> tuple[int, int]:
        return (o - self._off) // self.record_size, self._w[(o >> 2) + 2]

    def _new(self, s: int, e: int, h: int, key: bytes, value: bytes) -> tuple[int, int]:
        """Insert a record (index probe from ``e``); its handle; TableFull if no room."""
        o = self._free_record(s)
        if o < 0:
            raise TableFull(self.name)
        return (o - self._off) // self.record_size, self._insert(s, o, e, h, key, value)

    # ---- key operations -------------------------------------------------------------

    def _empty_stripe(self, key: bytes) -> bool:
        """Is the stripe of ``key`` empty (read without the lock)? A lookup that finds it
        empty is a miss at once: the answer it would get just before a concurrent insert,
        without two lock system calls (the aliases table is looked up on every INVITE
        and is usually empty). A stripe a writer died in is never taken as empty."""
        if len(key) > self.key_size or self._locks.held >= 0:
            return False  # _lock_key raises
        base = self._sh + crc32(key) % self.stripes * _STRIPE_WORDS
        w = self._w
        return not w[base + 1] and not w[base]

    def get(self, key: bytes) -> bytes | None:
        if self._empty_stripe(key):
            return None
        h, s = self._lock_key(key)
        try:
            o = self._first(s, h, key)[0]
            return None if o < 0 else self._value(o)
        finally:
            self._unlock(s)

    def get_all(self, key: bytes) -> list[bytes]:
        if self._empty_stripe(key):
            return []
        h, s = self._lock_key(key)
        try:
            value = self._value
            return [value(o) for o in self._matches(s, h, key)]
        finally:
            self._unlock(s)

    def find(self, key: bytes) -> tuple[int, int] | None:
        if self._empty_stripe(key):
            return None
        h, s = self._lock_key(key)
        try:
            o = self._first(s, h, key)[0]
            return None if o < 0 else self._handle(o)
        finally:
            self._unlock(s)

    def put(self, key: bytes, value: bytes) -> tuple[int, int]:
        self._check_value(value)
        h, s = self._lock_key(key)
        try:
            o, e = self._first(s, h, key)
            if o >= 0:
                self._rewrite(s, o, value)
                return self._handle(o)
            return self._new(s, e, h, key, value)
        finally:
            self._unlock(s)

    def add(self, key: bytes, value: bytes) -> tuple[int, int]:
        self._check_value(value)
        h, s = self._lock_key(key)
        try:
            return self._new(s, self._home(s, h), h, key, value)
        finally:
            self._unlock(s)

    def delete(self, key: bytes) -> bool:
        h, s = self._lock_key(key)
        try:
            o = self._first(s, h, key)[0]
            if o < 0:
                return False
            self._remove(s, o)
            return True
        finally:
            self._unlock(s)

    def delete_if(self, key: bytes, pred: Callable[[bytes], bool]) -> int:
        h, s = self._lock_key(key)
        try:
            done = 0
            for o in self._matches(s, h, key):
                if pred(self._value(o)):
                    self._remove(s, o)
                    done += 1
            return done
        finally:
            self._unlock(s)

    def update(self, key: bytes, fn: Callable[[bytes | None], bytes | None]) -> bytes | None:
        h, s = self._lock_key(key)
        try:
            o, e = self._first(s, h, key)
            if o >= 0:
                old = self._value(o)
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
                self._new(s, e, h, key, new)
            return new
        finally:
            self._unlock(s)

    def update_all(self, key: bytes, fn: Callable[[bytes], bytes | None]) -> list[bytes]:
        h, s = self._lock_key(key)
        try:
            kept: list[bytes] = []
            for o in self._matches(s, h, key):
                old = self._value(o)
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
            return self._value_at(s, o, gen)
        finally:
            self._unlock(s)

    def update_at(self, index: int, gen: int,
                  fn: Callable[[bytes], bytes | None]) -> bytes | None:
        s, o = self._at(index)
        self._lock(s)
        try:
            old = self._value_at(s, o, gen)
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
            if self._value_at(s, o, gen) is None:
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
            first = self._off + s * n * rsz
            self._lock(s)
            try:
                chunk = self._m[first:first + n * rsz]
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
                    if kl > ks:
                        continue
                    ve = o + ko - (_HEAD0.unpack_from(chunk, o)[0] >> 8)  # value end
                    if crc32(view[o + ko:o + ko + kl], crc32(view[o + 8:ve])) != w[ow + 1]:
                        continue
                    found.append(Entry(chunk[o + ko:o + ko + kl], chunk[o + _VALUE:ve],
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
        for s in range(self.stripes):
            self._lock(s)
            try:
                self._check_stripe(s, problems)
            finally:
                self._unlock(s)
        return problems

    def _check_stripe(self, s: int, problems: list[str]) -> None:
        m = self._m
        w = self._w
        n = self._n
        isz = self._isz
        rsz = self.record_size
        ko = self._ko
        start = self._ix + 2 * s * isz
        where = f"table {self.name} stripe {s}"
        valid = set()
        for i in range(n):
            o = self._off + (s * n + i) * rsz
            st = m[o]
            if st not in (_EMPTY, _VALID):
                problems.append(f"{where} record {s * n + i}: state {st}")
            elif st == _VALID:
                if not self._intact(o):
                    problems.append(f"{where} record {s * n + i}: bad checksum")
                    continue
                ow = o >> 2
                if w[ow + 3] != crc32(m[o + ko:o + ko + w[ow + 4]]):
                    problems.append(f"{where} record {s * n + i}: hash does not match key")
                elif w[ow + 3] % self.stripes != s:
                    problems.append(f"{where} record {s * n + i}: key of another stripe")
                valid.add(s * n + i)
        indexed = set()
        used = 0
        for j in range(isz):
            e = start + 2 * j
            r = w[e + 1]
            if not r:
                continue
            used += 1
            r -= 1
            if r in indexed:
                problems.append(f"{where}: record {r} indexed twice")
            indexed.add(r)
            if r not in valid:
                problems.append(f"{where}: index entry {j} -> record {r}, not a valid one")
                continue
            if w[e] != w[((self._off + r * rsz) >> 2) + 3]:
                problems.append(f"{where}: index entry {j} has the wrong hash")
            k = w[e] // self.stripes % isz
            while k != j:  # nothing empty between the home entry and this one
                if not w[start + 2 * k + 1]:
                    problems.append(f"{where}: index entry {j} unreachable from home {k}")
                    break
                k = k + 1 if k + 1 < isz else 0
        for r in sorted(valid - indexed):
            problems.append(f"{where}: record {r} is not indexed")
        counted = w[self._sh + s * _STRIPE_WORDS + 1]
        if counted != len(valid):
            problems.append(f"{where}: count {counted} but {len(valid)} valid records")

    def stats(self) -> dict[str, int]:
        """Record states and the longest index probe (unlocked snapshot, for ctl)."""
        m = self._m
        w = self._w
        rsz = self.record_size
        states = [0] * 256
        for o in range(self._off, self._off + self.capacity * rsz, rsz):
            states[m[o]] += 1
        longest = 0
        isz = self._isz
        for s in range(self.stripes):
            start = self._ix + 2 * s * isz
            for j in range(isz):
                if w[start + 2 * j + 1]:
                    longest = max(longest, (j - w[start + 2 * j] // self.stripes % isz) % isz + 1)
        return {"capacity": self.capacity, "valid": states[_VALID], "empty": states[_EMPTY],
                "writing": states[_WRITING], "longest_probe": longest, "nbytes": self.nbytes}
