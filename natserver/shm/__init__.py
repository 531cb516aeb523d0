"""Shared memory: fixed-capacity tables, stripe locks, per-process counters/heartbeats.

The supervisor builds everything once, before fork, with :meth:`Tables.build`; every
child inherits the mappings and the lock file descriptor. Nothing here opens sockets or
reads clocks. See :mod:`natserver.shm.table` for the table API and record format,
:mod:`natserver.shm.locks` for the locking rules, :mod:`natserver.shm.counters` for
process slots.

``Tables.build(specs, *, proc_slots=0, counter_names=(), load_factor=0.75,
stripes=None, shm_prefix=None) -> Tables`` where ``specs`` maps a table name to
``(capacity, key_size, value_size)``; ``capacity`` is how many records the table must
hold, and each table gets ``capacity / load_factor`` record slots: keys spread over the
stripes unevenly and a full stripe refuses inserts while others have room.
``tables["location"]`` (or ``tables.get(name)``) gives a :class:`Table`,
``tables.procs`` the :class:`ProcSlots` (None without ``proc_slots``; slot 0 is the
supervisor's by convention), ``tables.summary()`` one line per segment for the start-up
log, ``tables.nbytes`` the total, ``tables.close(unlink=False)`` unmaps (the supervisor
at exit). ``capacities(cfg)`` reads the table sizes from the cfg (``tm_table_size`` ->
"transactions", ``ul_table_size`` -> "location", ``rtp_table_size`` -> "rtp_sessions").

With ``shm_prefix`` the segments are named (``/dev/shm/<prefix>.<table>``,
``<prefix>.procs``) and the lock file is kept at ``/dev/shm/<prefix>.locks``, so a
standalone tool can :meth:`Tables.attach` them; the creator removes them with
``close(unlink=True)``. Without it (the default) everything is anonymous and vanishes
with the last process, even after a SIGKILLed supervisor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from natserver.errors import TableFull
from natserver.shm.counters import ProcSlots, SlotWriter
from natserver.shm.locks import LockSet
from natserver.shm.table import Entry, SlotState, Table

__all__ = [
    "CFG_SIZES", "Entry", "LockSet", "ProcSlots", "SlotState", "SlotWriter", "Table",
    "TableFull", "Tables", "capacities", "default_stripes",
]

# table name -> the global cfg parameter that sizes it
CFG_SIZES: tuple[tuple[str, str], ...] = (
    ("transactions", "tm_table_size"),
    ("location", "ul_table_size"),
    ("rtp_sessions", "rtp_table_size"),
)

_STRIPE_TARGET = 256  # records per stripe the default striping aims for
_MAX_STRIPES = 128


def capacities(cfg: Any) -> dict[str, int]:
    """Records each standard table must hold, from the cfg's ``*_table_size`` params."""
    return {name: int(getattr(cfg, param)) for name, param in CFG_SIZES}


def default_stripes(slots: int) -> int:
    """A power of two giving about 256 records per stripe, between 1 and 128.

    Stripes bound lock contention and how long a scan holds one lock; a few hundred
    records per stripe keep uneven filling of stripes small next to the headroom.
    """
    stripes = 1
    while stripes * 2 <= _MAX_STRIPES and slots // (stripes * 2) >= _STRIPE_TARGET:
        stripes *= 2
    return stripes


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n >= 1048576 else f"{n / 1024:.1f} KiB"


class Tables:
    """All shared segments of one server; built by the supervisor before fork."""

    __slots__ = ("tables", "procs", "locks", "prefix")

    def __init__(self, tables: dict[str, Table], procs: ProcSlots | None, locks: LockSet,
                 prefix: str | None = None) -> None:
        self.tables = tables
        self.procs = procs
        self.locks = locks
        self.prefix = prefix

    @classmethod
    def build(cls, specs: Mapping[str, tuple[int, int, int]], *, proc_slots: int = 0,
              counter_names: Sequence[str] = (), load_factor: float = 0.75,
              stripes: int | None = None, shm_prefix: str | None = None) -> Tables:
        if not 0.1 <= load_factor <= 1.0:
            raise ValueError("load_factor must be within 0.1..1")
        if shm_prefix is None:
            locks = LockSet.create()
        else:
            locks = LockSet.create(path=f"/dev/shm/{shm_prefix}.locks")
        tables: dict[str, Table] = {}
        procs = None
        try:
            for name, (capacity, key_size, value_size) in specs.items():
                slots = max(1, math.ceil(capacity / load_factor))
                n = stripes or default_stripes(slots)
                tables[name] = Table.create(
                    name, capacity=slots, key_size=key_size, value_size=value_size,
                    stripes=min(n, slots), lockset=locks,
                    shm_name=None if shm_prefix is None else f"{shm_prefix}.{name}")
            if proc_slots:
                procs = ProcSlots.create(
                    proc_slots, counter_names,
                    shm_name=None if shm_prefix is None else f"{shm_prefix}.procs")
        except BaseException:
            cls(tables, procs, locks, shm_prefix).close(unlink=True)
            raise
        return cls(tables, procs, locks, shm_prefix)

    @classmethod
    def attach(cls, shm_prefix: str, names: Iterable[str], *,
               counter_names: Sequence[str] | None = None) -> Tables:
        """Join the named segments of a server built with ``shm_prefix`` (tools)."""
        locks = LockSet.open(f"/dev/shm/{shm_prefix}.locks")
        tables = {name: Table.attach(f"{shm_prefix}.{name}", locks) for name in names}
        procs = None
        if counter_names is not None:
            procs = ProcSlots.attach(f"{shm_prefix}.procs", counter_names)
        return cls(tables, procs, locks, shm_prefix)

    def __getitem__(self, name: str) -> Table:
        return self.tables[name]

    def get(self, name: str) -> Table | None:
        return self.tables.get(name)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tables.values()) + (
            self.procs.nbytes if self.procs is not None else 0)

    def summary(self) -> list[str]:
        """One line per segment, then the total (the supervisor logs these at start)."""
        lines = [
            f"shm table {t.name}: {t.capacity} records x {t.record_size} B "
            f"(key {t.key_size}, value {t.value_size}) in {t.stripes} stripes = "
            f"{_mib(t.nbytes)}"
            for t in self.tables.values()
        ]
        if self.procs is not None:
            lines.append(f"shm process slots: {self.procs.nslots} x "
                         f"{len(self.procs.names)} counters = {_mib(self.procs.nbytes)}")
        lines.append(f"shm total: {_mib(self.nbytes)}")
        return lines

    def close(self, *, unlink: bool = False) -> None:
        """Unmap everything in this process; ``unlink`` removes named segments too."""
        for table in self.tables.values():
            table.close(unlink=unlink)
        if self.procs is not None:
            self.procs.close(unlink=unlink)
        self.locks.close(unlink=unlink)
