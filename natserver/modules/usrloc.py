"""usrloc: the location cache (SER modules/usrloc) - contacts per AOR in shared memory,
kept in step with the ``location`` (and ``aliases``) table by ``db_mode``.

Domains: ``location`` and ``aliases`` (SER kept aliases as a second usrloc domain that
``lookup("aliases")`` searches). Each is a shm table named after it (``location`` holds
``ul_table_size`` contacts, ``aliases`` ``aliases_table_size``), a multimap keyed by
the AOR bytes with one fixed-size record per contact (:data:`_HEAD` + the variable
strings packed after it, at most ``max_contact_data`` bytes).

``db_mode``:

- 0 memory only; nothing survives a restart;
- 1 write-through: every change goes to memory and to the DB at once; if the DB
  cannot take it the record stays *dirty* and the timer process retries it, so the
  REGISTER is still answered 200 and nothing acknowledged is lost;
- 2 write-back: changes mark records dirty; the timer process writes every dirty
  record each ``timer_interval`` (and at a graceful stop, after the SIP workers have
  left); a binding acknowledged ``timer_interval`` plus one flush before a crash is in
  the DB;
- 3 DB only: no shm table; every save/lookup is a statement (DB down: 500).

Modes 1 and 2 load the DB at start (before fork); when the DB cannot be read then,
the timer process keeps trying and merges what it finds (memory wins). A removed
contact stays as a *tombstone* (state DELETED, dirty) until its deletion reached the
DB. The timer process removes expired contacts every ``timer_interval`` and deletes
expired rows (``expires < now``, permanent rows excepted) from the DB.

Writes of one AOR are serialised by a per-AOR lock (one of ``AOR_LOCKS`` kernel record
locks, released if the holder dies), so a save() reads and rewrites its AOR's contacts
atomically against other workers, the timer and ctl.

Python API for other modules (registrar, nathelper's pinger, ctl)::

    ul = get_usrloc(ctx)
    with ul.locked(aor):
        current = ul.get(domain, aor, now)          # valid contacts, best first
        ul.apply(domain, aor, upserts, deletes, now)
    ul.lookup(domain, aor, now) -> list[Contact]
    iter_contacts(ctx, nated_only=True, nat_mask=1 << 6, slice_index=i, slices=n, now=t)

``DbError`` from ``get``/``apply``/``lookup`` only in db_mode 3 (callers answer 500);
``TableFull`` when a shm table has no room; ``ContactTooLong`` when a contact's strings
do not fit a record.
"""

from __future__ import annotations

import enum
import logging
import os
import secrets
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from natserver.daemon import pid_alive
from natserver.db import Database, DbUnavailable, open_db
from natserver.db.schema import create_schema
from natserver.errors import DbError
from natserver.modules import Module, Param, Rpc, as_str, int_range
from natserver.shm import LockSet

if TYPE_CHECKING:
    from natserver.context import Context

log = logging.getLogger("natserver.usrloc")

DOMAINS = ("location", "aliases")
AOR_MAX = 128           # key size of the shm tables (SER: MAX_AOR_LEN 256)
AOR_LOCKS = 1024        # per-AOR write locks (hashed)
FLUSH_BATCH = 200       # rows per DB transaction in a flush
PASS_BUDGET = 0.05      # seconds of work per timer call before yielding to other hooks
STOP_WAIT = 5.0         # graceful stop: longest wait for the SIP workers before the flush
DB_RETRY = 5.0          # write-through: after a DB failure, leave writes to the timer this long
UA_UNKNOWN = b"Unknown"


class DbMode(enum.IntEnum):
    NO_DB = 0
    WRITE_THROUGH = 1
    WRITE_BACK = 2
    DB_ONLY = 3


class State(enum.IntEnum):
    LIVE = 1
    DELETED = 2   # removed; the removal has not reached the DB yet (modes 1, 2)


class ContactTooLong(ValueError):
    """The contact's strings do not fit one shm record (``max_contact_data``)."""


@dataclass(slots=True)
class Contact:
    """One binding. ``expires`` is absolute (epoch s, 0 = permanent), ``q`` is q*1000
    (-1: none given), ``cflags`` carries the NAT mark (bit ``nat_flag``)."""

    aor: bytes
    contact: bytes
    expires: int = 0
    q: int = -1
    callid: bytes = b""
    cseq: int = 0
    cflags: int = 0
    received: bytes = b""
    path: bytes = b""
    user_agent: bytes = b""
    socket: bytes = b""
    methods: int = -1
    ruid: bytes = b""
    last_modified: int = 0
    created: float = 0.0
    state: int = State.LIVE
    dirty: int = 0
    version: int = 0

    def valid(self, now: float) -> bool:
        return self.state == State.LIVE and (self.expires == 0 or self.expires > now)

    def remaining(self, now: float) -> int:
        """Seconds left (0 for a permanent contact)."""
        return 0 if self.expires == 0 else max(0, int(self.expires - now))


def sort_key(desc_time: bool) -> Any:
    """Best first: q descending (none given sorts last), then by age."""
    if desc_time:
        return lambda c: (-c.q, -c.created)
    return lambda c: (-c.q, c.created)


def new_ruid() -> bytes:
    return b"ns-" + secrets.token_hex(10).encode()


# ---- the shm record ----------------------------------------------------------------
# expires, last_modified, created, cseq, cflags, methods, version, q, state, dirty,
# then the lengths of contact, received, path, callid, user_agent (u16), socket, ruid (u8)
_HEAD = struct.Struct("<qqdiIiIhBBHHHHHBB")
_EXPIRES = struct.Struct("<q")
_STATE_AT = 42
_DIRTY_AT = 43
_VERSION = struct.Struct("<I")
_VERSION_AT = 36


def pack(c: Contact, data_size: int) -> bytes:
    strings = (c.contact, c.received, c.path, c.callid, c.user_agent, c.socket, c.ruid)
    blob = b"".join(strings)
    if len(blob) > data_size or len(c.socket) > 255 or len(c.ruid) > 255 or max(
            len(s) for s in strings) > 0xFFFF:
        raise ContactTooLong(f"contact data of {len(blob)} bytes (max {data_size})")
    head = _HEAD.pack(c.expires, c.last_modified, c.created, c.cseq, c.cflags & 0xFFFFFFFF,
                      c.methods, c.version & 0xFFFFFFFF, c.q, c.state, c.dirty,
                      len(c.contact), len(c.received), len(c.path), len(c.callid),
                      len(c.user_agent), len(c.socket), len(c.ruid))
    return head + blob + bytes(data_size - len(blob))


def unpack(aor: bytes, value: bytes) -> Contact:
    (expires, modified, created, cseq, cflags, methods, version, q, state, dirty,
     l1, l2, l3, l4, l5, l6, l7) = _HEAD.unpack_from(value)
    p = _HEAD.size
    out = []
    for n in (l1, l2, l3, l4, l5, l6, l7):
        out.append(value[p:p + n])
        p += n
    return Contact(aor, out[0], expires, q, out[3], cseq, cflags, out[1], out[2], out[4],
                   out[5], methods, out[6], modified, created, state, dirty, version)


def _expires_of(value: bytes) -> int:
    return _EXPIRES.unpack_from(value)[0]


# ---- the module --------------------------------------------------------------------

@dataclass(slots=True)
class _Pass:
    """Progress of one timer pass over a domain (expiry + flush)."""

    domain: str
    stripes: list[int]
    started: float
    flushed: int = 0
    expired: int = 0
    failed: bool = False


@dataclass(slots=True)
class _Flush:
    """What one flush wrote: records to mark clean (aor, ruid, version)."""

    done: list[tuple[bytes, bytes, int]] = field(default_factory=list)
    failed: bool = False


class Usrloc(Module):
    NAME = "usrloc"

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        self.mode = DbMode(params["db_mode"])
        self.timer_interval = params["timer_interval"]
        self.use_domain = bool(params["use_domain"])
        self.desc_time = bool(params["desc_time_order"])
        self.data_size = params["max_contact_data"]
        self.db: Database | None = None
        self.tables: dict[str, Any] = {}
        self.locks: LockSet | None = None
        self.pending_load = False
        self.next_pass = 0.0
        self.passes: list[_Pass] = []
        self.db_down_logged = False
        self.db_retry_at = 0.0  # monotonic time before which write-through skips the DB
        self.round_failed = False  # a DB write of the current timer round failed

    # ---- lifecycle ------------------------------------------------------------------

    def shm_tables(self, ctx: Context) -> dict[str, tuple[int, int, int]]:
        if self.mode == DbMode.DB_ONLY:
            return {}
        size = _HEAD.size + self.data_size
        return {"location": (int(ctx.cfg.ul_table_size), AOR_MAX, size),
                "aliases": (self.params["aliases_table_size"], AOR_MAX, size)}

    def init(self, ctx: Context) -> None:
        self.locks = LockSet.create()
        if ctx.tables is not None and self.mode != DbMode.DB_ONLY:
            self.tables = {d: ctx.tables[d] for d in DOMAINS}
        if self.mode != DbMode.NO_DB:
            self.db = open_db(self.params["db_url"])
            if self.db.dialect == "sqlite":
                try:
                    create_schema(self.db)
                except DbError as exc:
                    log.error("usrloc: cannot create the schema: %s", exc)
        if self.mode in (DbMode.WRITE_THROUGH, DbMode.WRITE_BACK):
            self.pending_load = True
            self.load(time.time())

    def timer(self, ctx: Context, now: float) -> float | None:
        """Expiry and write-back, a bounded slice of work per call."""
        mono = ctx.mono()
        if not self.passes:
            if mono < self.next_pass:
                return self.next_pass - mono
            self.next_pass = mono + self.timer_interval
            if self.pending_load:
                self.load(now)
            self.passes = [_Pass(d, list(range(t.stripes)), now)
                           for d, t in self.tables.items()]
            self.round_failed = False
            if self.mode == DbMode.DB_ONLY:
                self.delete_expired_rows(now)
                return self.timer_interval
        deadline = mono + PASS_BUDGET
        while self.passes:
            p = self.passes[0]
            p.failed = p.failed or self.round_failed  # one wait on a dead DB per round
            self.run_pass(p, now, deadline, ctx.mono)
            self.round_failed = self.round_failed or p.failed
            if p.stripes:
                return 0.0
            self.passes.pop(0)
            if p.flushed or p.expired:
                log.debug("usrloc %s: %d flushed, %d expired", p.domain, p.flushed, p.expired)
            if not self.passes and self.mode != DbMode.NO_DB and not self.round_failed:
                self.delete_expired_rows(now)
        return max(0.0, self.next_pass - ctx.mono())

    def shutdown(self, ctx: Context) -> None:
        """The timer process writes what is still dirty once the SIP workers are gone."""
        if ctx.proc.kind != "timer" or self.mode not in (DbMode.WRITE_THROUGH,
                                                          DbMode.WRITE_BACK):
            return
        _wait_for_sip_workers(ctx)
        left = self.flush_all(time.time())
        if left:
            log.error("usrloc: %d changed contacts could not be written to the DB at stop",
                      left)
        else:
            log.info("usrloc: location flushed to the DB")

    # ---- locking --------------------------------------------------------------------

    @contextmanager
    def locked(self, aor: bytes) -> Iterator[None]:
        """Serialise the writers of one AOR (all processes)."""
        locks = self.locks
        if locks is None:
            yield
            return
        i = zlib.crc32(aor) % AOR_LOCKS
        locks.acquire(i)
        try:
            yield
        finally:
            locks.release(i)

    # ---- reads ----------------------------------------------------------------------

    def records(self, domain: str, aor: bytes) -> list[Contact]:
        """Every record of ``aor`` as stored (expired and tombstones included)."""
        if self.mode == DbMode.DB_ONLY:
            return self.db_records(domain, aor)
        return [unpack(aor, v) for v in self.tables[domain].get_all(aor)]

    def get(self, domain: str, aor: bytes, now: float) -> list[Contact]:
        """The valid contacts of ``aor``, best first."""
        found = [c for c in self.records(domain, aor) if c.valid(now)]
        if len(found) > 1:
            found.sort(key=sort_key(self.desc_time))
        return found

    lookup = get

    # ---- writes ---------------------------------------------------------------------

    def apply(self, domain: str, aor: bytes, upserts: Sequence[Contact],
              deletes: Sequence[Contact], now: float) -> None:
        """Store ``upserts`` (matched by contact URI; new ones inserted) and remove
        ``deletes``; the caller holds :meth:`locked` for ``aor``."""
        if not upserts and not deletes:
            return
        if self.mode == DbMode.DB_ONLY:
            with self.db_or_fail().transaction() as db:
                for c in deletes:
                    db.delete(domain, {"ruid": c.ruid.decode()})
                for c in upserts:
                    c.ruid = c.ruid or new_ruid()
                    db.replace(domain, self.db_row(c), ["ruid"])
            return
        tracked = self.mode != DbMode.NO_DB
        size = self.data_size
        new = {c.contact: c for c in upserts}
        gone = {c.contact for c in deletes}
        seen: set[bytes] = set()
        written: list[Contact] = []      # what the DB must learn (write-through)
        removed: list[Contact] = []
        packed = {k: pack(c, size) for k, c in new.items()}  # ContactTooLong before any write

        def fn(value: bytes) -> bytes | None:
            old = unpack(aor, value)
            key = old.contact
            if key in seen:
                return None  # a duplicate left by an older bug or a crash: keep one
            if key in new:
                seen.add(key)
                c = new[key]
                c.ruid = c.ruid or old.ruid
                c.version = old.version + 1
                c.dirty = int(tracked)
                c.state = State.LIVE
                written.append(c)
                return pack(c, size)
            if key in gone and old.state == State.LIVE:
                seen.add(key)
                if not tracked:
                    return None
                old.state = State.DELETED
                old.dirty = 1
                old.version += 1
                removed.append(old)
                return pack(old, size)
            return value

        table = self.tables[domain]
        table.update_all(aor, fn)
        for key, c in new.items():
            if key not in seen:
                c.ruid = c.ruid or new_ruid()
                c.dirty = int(tracked)
                c.state = State.LIVE
                table.add(aor, pack(c, size))
                written.append(c)
        if self.mode == DbMode.WRITE_THROUGH and time.monotonic() >= self.db_retry_at:
            result = self.write(domain, written, removed)
            if result.failed:  # the timer process retries; do not wait on a dead DB per REGISTER
                self.db_retry_at = time.monotonic() + DB_RETRY
            self.mark_clean(domain, result.done)

    def delete_aor(self, domain: str, aor: bytes, now: float) -> int:
        """Remove every contact of ``aor`` (the caller holds the lock); how many."""
        current = [c for c in self.records(domain, aor) if c.state == State.LIVE]
        self.apply(domain, aor, (), current, now)
        return len(current)

    # ---- the database ---------------------------------------------------------------

    def db_or_fail(self) -> Database:
        if self.db is None:
            raise DbError("usrloc: no database (db_mode 0)")
        return self.db

    def split_aor(self, aor: bytes) -> tuple[str, str | None]:
        text = aor.decode("utf-8", "replace")
        if self.use_domain and "@" in text:
            user, _, dom = text.partition("@")
            return user, dom
        return text, None

    def aor_of_row(self, username: str, domain: str | None) -> bytes:
        if self.use_domain and domain:
            return f"{username}@{domain}".encode()
        return username.encode()

    def db_row(self, c: Contact) -> dict[str, Any]:
        user, dom = self.split_aor(c.aor)
        return {
            "ruid": c.ruid, "username": user, "domain": dom, "contact": c.contact,
            "received": c.received or None, "path": c.path or None, "expires": c.expires,
            "q": c.q / 1000.0 if c.q >= 0 else -1.0, "callid": c.callid, "cseq": c.cseq,
            "last_modified": c.last_modified, "flags": 0, "cflags": c.cflags,
            "user_agent": c.user_agent, "socket": c.socket or None,
            "methods": None if c.methods < 0 else c.methods,
        }

    _COLUMNS = ("ruid", "username", "domain", "contact", "received", "path", "expires", "q",
                "callid", "cseq", "last_modified", "cflags", "user_agent", "socket", "methods")

    def contact_of_row(self, row: tuple[Any, ...]) -> Contact:
        (ruid, user, dom, contact, received, path, expires, q, callid, cseq, modified,
         cflags, ua, sock, methods) = row
        return Contact(
            self.aor_of_row(user or "", dom), _b(contact), int(expires or 0),
            -1 if q is None or q < 0 else int(round(q * 1000)), _b(callid), int(cseq or 0),
            int(cflags or 0), _b(received), _b(path), _b(ua), _b(sock),
            -1 if methods is None else int(methods), _b(ruid), int(modified or 0),
            float(modified or 0))

    def db_records(self, domain: str, aor: bytes) -> list[Contact]:
        user, dom = self.split_aor(aor)
        where: dict[str, Any] = {"username": user}
        if self.use_domain:
            where["domain"] = dom
        rows = self.db_or_fail().select(domain, self._COLUMNS, where, order_by="id")
        # Hosts sharing the database may both have inserted one contact: the newest wins.
        found: dict[bytes, Contact] = {}
        for row in rows:
            c = self.contact_of_row(row)
            old = found.get(c.contact)
            if old is None or c.last_modified >= old.last_modified:
                found[c.contact] = c
        return list(found.values())

    def write(self, domain: str, upserts: Sequence[Contact],
              deletes: Sequence[Contact]) -> _Flush:
        """Put changes into the DB, batched in transactions; never raises."""
        out = _Flush()
        db = self.db
        if db is None:
            return out
        items = [(c, False) for c in upserts] + [(c, True) for c in deletes]
        for start in range(0, len(items), FLUSH_BATCH):
            batch = items[start:start + FLUSH_BATCH]
            try:
                with db.transaction():
                    self._write_rows(db, domain, batch)
            except DbUnavailable as exc:
                self._db_down(exc)
                out.failed = True
                return out
            except DbError as exc:
                # One bad row must not block the rest for ever: isolate it.
                log.warning("usrloc: batch write to %s failed (%s), retrying row by row",
                            domain, exc)
                for item in batch:
                    try:
                        self._write_rows(db, domain, [item])
                    except DbUnavailable as exc2:
                        self._db_down(exc2)
                        out.failed = True
                        return out
                    except DbError as exc2:
                        log.error("usrloc: dropping contact %r of %r from the DB write: %s",
                                  item[0].contact, item[0].aor, exc2)
                    out.done.append((item[0].aor, item[0].ruid, item[0].version))
                continue
            out.done += [(c.aor, c.ruid, c.version) for c, _ in batch]
        if self.db_down_logged:
            log.info("usrloc: the DB takes writes again")
            self.db_down_logged = False
        return out

    def _write_rows(self, db: Database, domain: str, items: list[tuple[Contact, bool]]) -> None:
        for c, deleted in items:
            if deleted:
                db.delete(domain, {"ruid": c.ruid.decode()})
            else:
                db.replace(domain, self.db_row(c), ["ruid"])

    def _db_down(self, exc: Exception) -> None:
        if not self.db_down_logged:
            log.error("usrloc: DB unavailable, keeping changes in memory: %s", exc)
            self.db_down_logged = True

    def mark_clean(self, domain: str, done: Sequence[tuple[bytes, bytes, int]]) -> None:
        """Clear the dirty mark of records written, unless they changed since; drop
        tombstones whose deletion reached the DB."""
        if not done:
            return
        table = self.tables[domain]
        by_aor: dict[bytes, dict[bytes, int]] = {}
        for aor, ruid, version in done:
            by_aor.setdefault(aor, {})[ruid] = version

        for aor, versions in by_aor.items():
            def fn(value: bytes, versions: dict[bytes, int] = versions,
                   aor: bytes = aor) -> bytes | None:
                c = unpack(aor, value)
                if not c.dirty or versions.get(c.ruid) != c.version:
                    return value
                if c.state == State.DELETED:
                    return None
                return value[:_DIRTY_AT] + b"\x00" + value[_DIRTY_AT + 1:]
            table.update_all(aor, fn)

    def delete_expired_rows(self, now: float) -> None:
        """Expired rows out of the DB (permanent ones, expires = 0, stay)."""
        db = self.db
        if db is None:
            return
        for domain in DOMAINS:
            try:
                db.delete(domain, {"expires <": int(now), "expires >": 1})
            except DbError as exc:
                self._db_down(exc)
                return

    def load(self, now: float) -> bool:
        """Read the DB into memory (modes 1, 2); merge: memory wins. True when done."""
        db = self.db
        if db is None or not self.tables:
            self.pending_load = False
            return True
        loaded = 0
        try:
            for domain in DOMAINS:
                rows = db.select(domain, self._COLUMNS, order_by="id")
                by_aor: dict[bytes, list[Contact]] = {}
                for row in rows:
                    c = self.contact_of_row(row)
                    if c.expires and c.expires <= now:
                        continue
                    if len(c.aor) > AOR_MAX or not c.aor:
                        log.warning("usrloc: skipping %s row with AOR %r", domain, c.aor)
                        continue
                    by_aor.setdefault(c.aor, []).append(c)
                loaded += self._merge(domain, by_aor)
        except DbError as exc:
            log.error("usrloc: cannot load the location from the DB (%s); the timer "
                      "process retries", exc)
            return False
        self.pending_load = False
        log.info("usrloc: %d contacts loaded from the DB", loaded)
        return True

    def _merge(self, domain: str, by_aor: dict[bytes, list[Contact]]) -> int:
        table = self.tables[domain]
        size = self.data_size
        added = 0
        for aor, contacts in by_aor.items():
            with self.locked(aor):
                have = {unpack(aor, v).contact for v in table.get_all(aor)}
                for c in contacts:
                    if c.contact in have:
                        continue
                    try:
                        value = pack(c, size)
                    except ContactTooLong:
                        log.warning("usrloc: contact %r of %r too long for memory", c.contact,
                                    aor)
                        continue
                    table.add(aor, value)
                    have.add(c.contact)
                    added += 1
        return added

    # ---- timer work -----------------------------------------------------------------

    def run_pass(self, p: _Pass, now: float, deadline: float, mono: Any) -> None:
        """Process stripes of ``p`` until done or past ``deadline``."""
        table = self.tables[p.domain]
        tracked = self.mode in (DbMode.WRITE_THROUGH, DbMode.WRITE_BACK)
        while p.stripes:
            s = p.stripes.pop(0)
            expired: dict[bytes, set[bytes]] = {}
            dirty: list[Contact] = []
            for entry in table.scan(stripes=(s,)):
                exp = _expires_of(entry.value)
                if exp and exp <= now:
                    expired.setdefault(entry.key, set()).add(unpack(entry.key, entry.value).ruid)
                elif tracked and entry.value[_DIRTY_AT] and not p.failed:
                    dirty.append(unpack(entry.key, entry.value))
            for aor, ruids in expired.items():
                with self.locked(aor):
                    def gone(value: bytes, aor: bytes = aor, ruids: set[bytes] = ruids) -> bool:
                        c = unpack(aor, value)
                        return bool(c.expires) and c.expires <= now and c.ruid in ruids
                    p.expired += table.delete_if(aor, gone)
            if dirty:
                result = self.write(p.domain, [c for c in dirty if c.state == State.LIVE],
                                    [c for c in dirty if c.state == State.DELETED])
                self.mark_clean(p.domain, result.done)
                p.flushed += len(result.done)
                if result.failed:
                    p.failed = True  # the rest of this pass only expires
            if mono() >= deadline:
                return

    def flush_all(self, now: float) -> int:
        """Write every dirty record now (graceful stop, ctl, tests); returns how many
        are still dirty afterwards."""
        left = 0
        failed = False
        for domain, table in self.tables.items():
            p = _Pass(domain, list(range(table.stripes)), now, failed=failed)
            self.run_pass(p, now, float("inf"), time.monotonic)
            failed = failed or p.failed
            left += sum(1 for e in table.scan() if e.value[_DIRTY_AT])
        if self.mode != DbMode.NO_DB and not failed:
            self.delete_expired_rows(now)
        return left

    # ---- iteration (natping, ctl) -----------------------------------------------------

    def iter_contacts(self, *, domain: str = "location", nated_only: bool = False,
                      nat_mask: int = 0, slice_index: int = 0, slices: int = 1,
                      now: float | None = None) -> Iterator[Contact]:
        """Valid contacts of one slice (partitioned by AOR hash: a slice is every
        ``slices``-th stripe of the table, so a pinger can spread one round over time).
        ``nated_only`` keeps those with a bit of ``nat_mask`` in their cflags."""
        now = time.time() if now is None else now
        if self.mode == DbMode.DB_ONLY:
            try:
                rows = self.db_or_fail().select(domain, self._COLUMNS)
            except DbError as exc:
                log.warning("usrloc: cannot read contacts: %s", exc)
                return
            for row in rows:
                c = self.contact_of_row(row)
                if slices > 1 and zlib.crc32(c.aor) % slices != slice_index:
                    continue
                if c.valid(now) and (not nated_only or c.cflags & nat_mask):
                    yield c
            return
        table = self.tables[domain]
        stripes = [s for s in range(table.stripes) if s % slices == slice_index]
        for entry in table.scan(stripes=stripes):
            c = unpack(entry.key, entry.value)
            if c.valid(now) and (not nated_only or c.cflags & nat_mask):
                yield c

    # ---- ctl --------------------------------------------------------------------------

    def rpc_ul(self, ctx: Context, args: list[str]) -> Any:
        """ul show [AOR] | ul rm AOR | ul add TABLE AOR URI [RUID] | ul flush."""
        if not args:
            raise ValueError("usage: ul show [AOR] | ul rm AOR | ul add TABLE AOR URI | ul flush")
        sub, rest = args[0], args[1:]
        if sub in ("show", "dump"):
            table = "location"
            if rest and rest[0] in DOMAINS and len(rest) > 1:
                table, rest = rest[0], rest[1:]
            return self.show(table, rest[0] if rest else None)
        if sub == "rm":
            table = rest[0] if len(rest) > 1 and rest[0] in DOMAINS else "location"
            if len(rest) > 1 and rest[0] in DOMAINS:
                rest = rest[1:]
            if len(rest) != 1:
                raise ValueError("usage: ul rm [TABLE] AOR")
            return self.remove(table, rest[0])
        if sub == "add":
            if len(rest) not in (3, 4) or rest[0] not in DOMAINS:
                raise ValueError("usage: ul add TABLE AOR URI [RUID]")
            return self.add_permanent(rest[0], rest[1], rest[2], rest[3] if len(rest) > 3 else "")
        if sub == "flush":
            if self.mode == DbMode.NO_DB:
                return {"flushed": 0, "left": 0}
            left = self.flush_all(time.time())
            return {"left": left}
        raise ValueError(f"unknown ul command {sub!r} (show, rm, add, flush)")

    def rpc_ul_rm(self, ctx: Context, args: list[str]) -> Any:
        """SER FIFO ul_rm: TABLE AOR."""
        if len(args) != 2 or args[0] not in DOMAINS:
            raise ValueError("usage: ul_rm TABLE AOR")
        return self.remove(args[0], args[1])

    def rpc_ul_show_contact(self, ctx: Context, args: list[str]) -> Any:
        """SER FIFO ul_show_contact: TABLE AOR."""
        if len(args) != 2 or args[0] not in DOMAINS:
            raise ValueError("usage: ul_show_contact TABLE AOR")
        return self.show(args[0], args[1])

    def normalise_aor(self, text: str) -> bytes:
        aor = text.removeprefix("sip:").lower()
        if not self.use_domain:
            aor = aor.split("@", 1)[0]
        return aor.encode()

    def show(self, domain: str, aor_text: str | None) -> list[dict[str, Any]]:
        now = time.time()
        if aor_text is not None:
            aor = self.normalise_aor(aor_text)
            contacts = self.get(domain, aor, now)
            if not contacts:
                raise ValueError(f"no contacts for {aor.decode('utf-8', 'replace')}")
        else:
            contacts = sorted(self.iter_contacts(domain=domain, now=now),
                              key=lambda c: (c.aor, -c.q, c.created))
        return [_show_row(c, now) for c in contacts]

    def remove(self, domain: str, aor_text: str) -> dict[str, Any]:
        aor = self.normalise_aor(aor_text)
        with self.locked(aor):
            n = self.delete_aor(domain, aor, time.time())
        if not n:
            raise ValueError(f"no contacts for {aor.decode('utf-8', 'replace')}")
        return {"aor": aor.decode("utf-8", "replace"), "removed": n}

    def add_permanent(self, domain: str, aor_text: str, uri: str, ruid: str) -> dict[str, Any]:
        aor = self.normalise_aor(aor_text)
        now = time.time()
        c = Contact(aor, uri.encode(), 0, -1, b"natserverctl", 1, 0, user_agent=b"natserverctl",
                    ruid=ruid.encode(), last_modified=int(now), created=now)
        with self.locked(aor):
            self.apply(domain, aor, [c], (), now)
        return {"aor": aor.decode(), "contact": uri}


def _b(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _show_row(c: Contact, now: float) -> dict[str, Any]:
    return {
        "aor": c.aor.decode("utf-8", "replace"),
        "contact": c.contact.decode("utf-8", "replace"),
        "received": c.received.decode("utf-8", "replace") or None,
        "expires": "permanent" if c.expires == 0 else c.remaining(now),
        "q": None if c.q < 0 else c.q / 1000.0,
        "callid": c.callid.decode("utf-8", "replace"),
        "cseq": c.cseq,
        "cflags": c.cflags,
        "user_agent": c.user_agent.decode("utf-8", "replace"),
        "socket": c.socket.decode("utf-8", "replace") or None,
        "ruid": c.ruid.decode("utf-8", "replace"),
        "synced": not c.dirty,
    }


def _wait_for_sip_workers(ctx: Context) -> None:
    """Graceful stop: the workers finish the packet in hand; their last saves must be in
    memory before the final flush reads it."""
    board = getattr(ctx.tables, "procs", None)
    if board is None:
        return
    from natserver.workers import SIP_WORKER, plan
    slots = [p.index for p in plan(ctx.cfg) if p.kind == SIP_WORKER]
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline:
        pids = [board.pid(i) for i in slots]
        if not any(pid and _alive(pid) for pid in pids):
            return
        time.sleep(0.02)
    log.warning("usrloc: SIP workers still running after %.0f s; flushing anyway", STOP_WAIT)


def _alive(pid: int) -> bool:
    if not pid_alive(pid):
        return False
    # A worker that exited but is not reaped yet is a zombie: as good as gone.
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return False


def get_usrloc(ctx: Context) -> Usrloc:
    ul = ctx.module("usrloc")
    if not isinstance(ul, Usrloc):
        raise RuntimeError("usrloc is not loaded (loadmodule \"usrloc.so\")")
    return ul


def iter_contacts(ctx: Context, *, nated_only: bool = False, nat_mask: int | None = None,
                  slice_index: int = 0, slices: int = 1, now: float | None = None,
                  domain: str = "location") -> Iterator[Contact]:
    """Valid contacts for the pinger (see :meth:`Usrloc.iter_contacts`); ``nat_mask``
    defaults to the registrar's ``nat_flag`` bit."""
    ul = get_usrloc(ctx)
    if nat_mask is None:
        reg = ctx.module("registrar")
        nat_mask = 1 << int(reg.params["nat_flag"]) if reg is not None else 0
    return ul.iter_contacts(domain=domain, nated_only=nated_only, nat_mask=nat_mask,
                            slice_index=slice_index, slices=slices, now=now)


def _db_mode(value: Any) -> int:
    return int_range(0, 3)(value)


RPC = (
    Rpc("ul", Usrloc.rpc_ul, "ul show [AOR] | ul rm AOR | ul add TABLE AOR URI | ul flush"),
    Rpc("ul_rm", Usrloc.rpc_ul_rm, "remove every contact of an AOR: TABLE AOR (SER FIFO)"),
    Rpc("ul_show_contact", Usrloc.rpc_ul_show_contact, "contacts of an AOR: TABLE AOR (SER FIFO)"),
)
FUNCTIONS = ()
PARAMS = (
    Param("db_url", str, "", check=as_str,
          doc="database for db_mode 1-3; sqlite:// or empty = the embedded default"),
    Param("db_mode", int, 0, check=_db_mode,
          doc="0 memory, 1 write-through, 2 write-back, 3 DB only"),
    Param("timer_interval", int, 60, check=int_range(1, 86400),
          doc="seconds between expiry runs and write-back flushes"),
    Param("use_domain", int, 0, check=int_range(0, 1), doc="AOR is user@domain"),
    Param("desc_time_order", int, 0, check=int_range(0, 1),
          doc="equal q: newest contact first"),
    Param("max_contact_data", int, 512, check=int_range(128, 4096),
          doc="bytes per contact for URI, received, Call-ID, User-Agent, socket, ruid"),
    Param("aliases_table_size", int, 1024, check=int_range(16, 1 << 22),
          doc="aliases held in shared memory"),
)
MODULE = Usrloc
