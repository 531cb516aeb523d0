"""tm: the stateful proxy (SER/Kamailio modules/tm) over shared-memory transactions.

``t_relay()`` forwards a request statefully: one server transaction for the request
that came in, one client transaction per branch (R-URI plus the branches ``lookup``
appended). Replies are matched by the branch of natserver's own Via, whichever SIP
worker the kernel hands them to; ``onreply_route[N]`` armed with ``t_on_reply("N")``
runs for each with the flags the request had at ``t_relay``. Timers (retransmissions,
408s, CANCELs after ``fr_inv_timer``, the linger periods) are deadlines in the record.

Records. One shm table, "transactions", keyed by an 8-byte digest of the server
transaction key (RFC 3261 17.2.3: top Via branch + sent-by + method, ACK with its
INVITE; RFC 2543 requests: Call-ID, CSeq number, From tag, top Via). The digest also
names the branches natserver sends (``z9hG4bK<16 hex>.<branch>[.<onreply route>]``),
so a reply from downstream finds its record with one keyed operation, no second index.
A record is a fixed-size value holding a marshal'ed tuple: the server machine, one
client machine (plus one for its CANCEL) per branch (``natserver.sip.transaction``),
flags, the reply route, addresses, and the bytes later messages need - the forwarded
request (one copy; branches differ only in R-URI and Via), the header rows local
replies copy, the last reply sent upstream, the best final held while other branches
are pending. Every change is one ``update(key, fn)``: ``fn`` runs under the stripe lock,
decides, and records what to send; datagrams leave after the lock is released.

Timers. The record is the truth: each machine has its deadlines, the record has the
earliest one (``owner_due``) and its ``owner``, the process that will fire it. Owners
keep a local heap of (deadline, key) hints; a hint that no longer matches the record
costs one read and is dropped. Whoever changes a record so that it is due earlier than
its owner expects becomes the owner. A SIP worker that starts (also after a kill -9)
scans the table once for records owned by its slot; the timer process adopts records
whose owner is more than ``ORPHAN_LATE`` seconds late (an owner that is not coming
back, or is stuck), so no transaction loses its timers for more than a respawn.

Retransmissions. A byte-identical copy of a request this process relayed is answered
from its record before the script runs (a two-generation cache of datagram hashes);
one that reaches another worker runs the script and t_relay finds the record.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import marshal
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from natserver.errors import Err, SipError, TableFull, error_reply
from natserver.modules import Function, Module, Param, Rpc, int_range
from natserver.resolve import Resolver
from natserver.sip.build import (
    build_ack, build_cancel, build_forward_reply, build_forward_request, build_reply,
    next_via_address, reply_address,
)
from natserver.sip.headers import Hdr
from natserver.sip.message import Message
from natserver.sip.transaction import Action, Event, Kind, Machine, State, Timers
from natserver.sip.uri import parse_uri

if TYPE_CHECKING:
    from natserver.context import Context
    from natserver.script.runtime import MsgCtx

log = logging.getLogger("natserver.tm")

TABLE = "transactions"
KEY_SIZE = 8
MAX_BRANCHES = 12
COOKIE = "z9hG4bK"
# After this many seconds past its due time a record's owner is presumed gone.
ORPHAN_LATE = 2.0
SWEEP_INTERVAL = 10.0
# Heap entries handled per loop iteration, so a burst of timers never starves the socket.
TIMERS_PER_TICK = 100
# The retransmission cache (datagram hash -> transaction) keeps two generations of this
# many seconds each: long enough for a UAC's retransmissions (Timer B/F: 32 s).
SEEN_GENERATION = 20.0
SEEN_MAX = 100_000

Addr = tuple[str, int]
# A record: this header, then the marshal'ed rest (no padding: the table stores it at its
# own size). The flags and the reply route (read by the reply path) and the timer owner
# (read by scans) sit in the header, readable without unmarshalling.
_HEAD = struct.Struct("<IIBHd")  # marshal length, flags, onreply route, owner, owner_due
_HEAD_SIZE = _HEAD.size
_VERSION = 3
_AUTH = (401, 407)
_CHALLENGES = (Hdr.WWW_AUTHENTICATE, Hdr.PROXY_AUTHENTICATE)
# Rows of the incoming request a local reply copies (build.build_reply's list).
_REPLY_ROWS = frozenset((Hdr.VIA, Hdr.RECORD_ROUTE, Hdr.FROM, Hdr.TO, Hdr.CALL_ID, Hdr.CSEQ))
REASONS = {100: "trying -- your call is important to us", 408: "Request Timeout",
           487: "Request Terminated", 500: "Server Internal Error"}

# Action flags as plain ints: IntFlag arithmetic is a Python call per operation.
SEND_REPLY = int(Action.SEND_REPLY)
RESEND_REPLY = int(Action.RESEND_REPLY)
RESEND_REQUEST = int(Action.RESEND_REQUEST)
PASS_UP = int(Action.PASS_UP)
SEND_ACK = int(Action.SEND_ACK)
TIMEOUT = int(Action.TIMEOUT)
E = Event
S = State
_PENDING = (S.TRYING, S.PROCEEDING)   # server states that have sent no final yet


# ---- keys and branch ids ---------------------------------------------------------------

def txn_key(msg: Message, method: bytes) -> bytes:
    """The server transaction key of a request (RFC 3261 17.2.3) for ``method`` (pass
    b"INVITE" to find the INVITE an ACK or CANCEL belongs to). SipError when the
    message lacks what the key needs."""
    via = msg.via1
    branch = via.branch
    if branch and branch.startswith(COOKIE):
        return b"%s\0%s:%d\0%s" % (branch.encode("latin-1"), via.host.lower().encode("latin-1"),
                                   via.port or 5060, method)
    # RFC 2543 peer: the request's identity instead of the branch (17.2.3, last part).
    tag = msg.from_.tag or ""
    return b"\0".join((b"2543", method, msg.call_id, b"%d" % msg.cseq.num,
                       tag.encode("latin-1"), msg.buf[via.start:via.end]))


def txn_id(key: bytes) -> bytes:
    """The 8-byte record key (and branch id) of a transaction key."""
    return hashlib.blake2b(key, digest_size=KEY_SIZE).digest()


def parse_branch(branch: str | None) -> tuple[bytes, int, int] | None:
    """``(record key, branch number, onreply route hint)`` of one of natserver's
    stateful branches, None for anything else."""
    if not branch or len(branch) < 25 or branch[23] != "." or not branch.startswith(COOKIE):
        return None
    try:
        key = bytes.fromhex(branch[7:23])
        num, _, hint = branch[24:].partition(".")
        return key, int(num), int(hint) if hint else 0
    except ValueError:
        return None


# ---- the record ------------------------------------------------------------------------

class RecordTooBig(Exception):
    """The messages a transaction must keep do not fit ``record_size``."""


class Branch:
    """One destination: its client machine, its CANCEL's machine, what it answered."""

    __slots__ = ("ct", "cancel", "status", "final", "dst", "ruri", "cwant")

    def __init__(self, ct: Machine, dst: Addr, ruri: bytes, cancel: Machine | None = None,
                 status: int = 0, final: int = 0, cwant: bool = False) -> None:
        self.ct = ct
        self.cancel = cancel        # the CANCEL we sent on this branch
        self.status = status        # last status received
        self.final = final          # the final as the TU counts it (408 for a timeout)
        self.dst = dst
        self.ruri = ruri
        self.cwant = cwant          # cancel as soon as a provisional makes it possible

    def as_tuple(self) -> tuple:
        return (self.ct.as_tuple(), self.cancel.as_tuple() if self.cancel else None,
                self.status, self.final, self.dst, self.ruri, self.cwant)

    @classmethod
    def from_tuple(cls, t: tuple) -> Branch:
        return cls(Machine.from_tuple(t[0]), t[4], t[5],
                   Machine.from_tuple(t[1]) if t[1] else None, t[2], t[3], t[6])

    @property
    def done(self) -> bool:
        return self.ct.terminated and (self.cancel is None or self.cancel.terminated)


class Txn:
    """A transaction record, unpacked for one operation."""

    __slots__ = ("st", "flags", "on_reply", "hint", "canceled", "creator", "owner",
                 "owner_due", "src", "force_rport", "reply_addr", "head", "pre", "suf",
                 "rest", "last", "last_addr", "last_status", "best", "best_addr",
                 "best_status", "branches")

    def __init__(self, st: Machine) -> None:
        self.st = st
        self.flags = 0
        self.on_reply = 0
        self.hint = 0               # the route number written into the branch ids
        self.canceled = False       # the upstream client sent CANCEL
        self.creator = 0
        self.owner = 0
        self.owner_due = 0.0
        self.src: Addr = ("", 0)
        self.force_rport = False
        self.reply_addr: Addr = ("", 0)
        self.head = b""             # request line + the rows a local reply copies
        self.pre = b""              # request line before the R-URI
        self.suf = b""              # request line after the R-URI
        self.rest = b""             # the forwarded request after natserver's Via line
        self.last = b""             # last reply sent upstream (b"": none, or a local one)
        self.last_addr: Addr = ("", 0)
        self.last_status = 0
        self.best = b""             # best final held while branches are pending
        self.best_addr: Addr = ("", 0)
        self.best_status = 0
        self.branches: list[Branch] = []

    def pack(self, size: int) -> bytes:
        data = marshal.dumps((
            _VERSION, self.st.as_tuple(), self.hint, self.canceled, self.creator,
            self.src, self.force_rport, self.reply_addr,
            self.head, self.pre, self.suf, self.rest, self.last, self.last_addr,
            self.last_status, self.best, self.best_addr, self.best_status,
            tuple([b.as_tuple() for b in self.branches])))
        n = len(data)
        if n + _HEAD_SIZE > size:
            raise RecordTooBig(n + _HEAD_SIZE)
        # no padding: the table keeps a record at its own size (allow_shorter_values)
        return _HEAD.pack(n, self.flags, self.on_reply, self.owner, self.owner_due) + data

    @classmethod
    def load(cls, value: bytes) -> Txn:
        n, txn_flags, on_reply, owner, owner_due = _HEAD.unpack_from(value)
        t = marshal.loads(value[_HEAD_SIZE:_HEAD_SIZE + n])
        if t[0] != _VERSION:
            raise ValueError(f"record version {t[0]}")
        txn = cls(Machine.from_tuple(t[1]))
        txn.flags = txn_flags
        txn.on_reply = on_reply
        txn.owner = owner
        txn.owner_due = owner_due
        (_, _, txn.hint, txn.canceled, txn.creator, txn.src,
         txn.force_rport, txn.reply_addr, txn.head, txn.pre, txn.suf, txn.rest, txn.last,
         txn.last_addr, txn.last_status, txn.best, txn.best_addr, txn.best_status,
         branches) = t
        txn.branches = [Branch.from_tuple(b) for b in branches]
        return txn

    @property
    def invite(self) -> bool:
        return self.st.kind is Kind.IST

    def done(self) -> bool:
        return self.st.terminated and all(b.done for b in self.branches)

    def next_due(self) -> float:
        due = self.st.due()
        for b in self.branches:
            for mach in (b.ct, b.cancel):
                if mach is not None:
                    d = mach.due()
                    if d and (not due or d < due):
                        due = d
        return due


def owner_of(value: bytes) -> tuple[int, float]:
    """``(owner, owner_due)`` of a stored record, read from its header (for scans)."""
    return _HEAD.unpack_from(value)[3:]


def route_of(value: bytes) -> tuple[int, int]:
    """``(onreply route, flags)`` of a stored record, read from its header."""
    _, flags, route, _, _ = _HEAD.unpack_from(value)
    return route, flags


class Out:
    """What one record operation decided to send, carried out after the lock."""

    __slots__ = ("txn", "found", "sends", "locals", "resend_last", "requests", "cancels",
                 "acks", "push", "took", "absorbed", "pending", "need_route", "relayed")

    def __init__(self) -> None:
        self.txn: Txn | None = None
        self.found = False
        self.sends: list[tuple[bytes, Addr]] = []   # relayed replies
        self.locals: list[int] = []                 # local final replies (status)
        self.resend_last = False
        self.requests: list[int] = []               # branch requests to retransmit
        self.cancels: list[int] = []                # CANCELs to (re)send
        self.acks: list[int] = []                   # ACKs for non-2xx finals
        self.push = 0.0                             # deadline to put in our heap
        self.took = False
        self.absorbed = False
        self.pending = False
        self.need_route = False
        self.relayed = 0


class TxRef:
    """``m.tx`` after t_relay: the transaction's key, and the error when t_relay failed
    (sl_reply_error and the end of the script answer through :meth:`reply`)."""

    __slots__ = ("tm", "key", "error")

    def __init__(self, tm: Tm, key: bytes, error: Err | None = None) -> None:
        self.tm = tm
        self.key = key
        self.error = error

    def reply(self, m: MsgCtx, status: int, reason: str) -> bool:
        return self.tm.reply(m, self, status, reason)


def _rank(status: int, real: bool) -> tuple[int, int, int]:
    """Best-reply order (RFC 3261 16.7 step 6), lower is better: 6xx, then the lowest
    class; in a class a 401/407 first (the UA can answer it), a local timeout last."""
    return (0 if status >= 600 else 1, status // 100,
            0 if status in _AUTH else (1 if real else 2))


def _merge_challenges(best: bytes, msg: Message) -> bytes:
    """``best`` (a relayed 401/407) with the WWW-/Proxy-Authenticate rows of ``msg``
    added at the end of its headers (RFC 3261 16.7 step 7)."""
    rows = [msg.buf[f.start:f.vend] + b"\r\n" for h in _CHALLENGES for f in msg.get_all(h)]
    if not rows:
        return best
    end = best.find(b"\r\n\r\n")
    if end < 0:
        return best
    return best[:end + 2] + b"".join(rows) + best[end + 2:]


def _as_500(data: bytes) -> bytes:
    """A relayed 503 becomes a 500 (RFC 3261 16.7 step 6)."""
    eol = data.find(b"\r\n")
    return b"SIP/2.0 500 Server Internal Error" + data[eol:]


# ---- the module --------------------------------------------------------------------------

class Tm(Module):
    NAME = "tm"

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        p = params
        self.timers = Timers(t1=p["retr_timer1"] / 1000.0, t2=p["retr_timer2"] / 1000.0,
                             fr=float(p["fr_timer"]), fr_inv=float(p["fr_inv_timer"]),
                             wait=float(p["wt_timer"]))
        self.record_size = int(p["record_size"])
        self.table: Any = None
        self.me = 0                     # our owner id: process index + 1 (0 = nobody)
        self.heap: list[tuple[float, bytes]] = []
        self.armed: dict[bytes, float] = {}
        self.resolver = Resolver()
        self.via_prefix = b""
        self.next_sweep = 0.0
        self._uri_cache: dict[bytes, tuple[str, int] | Err] = {}
        self._full_logged = 0.0
        self._full_count = 0
        self.seen: dict[int, bytes] = {}       # hash(datagram) -> transaction key
        self.seen_old: dict[int, bytes] = {}
        self.seen_since = 0.0

    # ---- lifecycle ------------------------------------------------------------------

    def shm_tables(self, ctx: Context) -> dict[str, tuple[int, int, int]]:
        return {TABLE: (int(ctx.cfg.tm_table_size), KEY_SIZE, self.record_size)}

    def init(self, ctx: Context) -> None:
        self._setup(ctx)

    def child_init(self, ctx: Context) -> None:
        self._setup(ctx)
        if ctx.proc.kind in ("sip worker", "timer"):
            self.adopt_own(ctx)

    def _setup(self, ctx: Context) -> None:
        """Per-process state (a fork copies the parent's: start afresh)."""
        self.table = ctx.tables[TABLE] if ctx.tables is not None else None
        if self.table is not None:
            # Records are 1-2 kB in a table sized for record_size (4096): stored at their
            # own size, each operation checksums and copies a third as much.
            self.table.allow_shorter_values()
        self.me = ctx.proc.index + 1
        self.heap = []
        self.armed = {}
        self.resolver = Resolver()
        self._uri_cache = {}
        self.seen = {}
        self.seen_old = {}
        self.seen_since = ctx.mono()
        host, port = ctx.advertised
        if ":" in host:
            host = f"[{host}]"
        self.via_prefix = f"SIP/2.0/UDP {host}:{port};branch={COOKIE}".encode()

    def adopt_own(self, ctx: Context) -> int:
        """Put every record this process slot owns into our heap (after a respawn the
        previous holder of the slot left them); how many."""
        table = self.table
        if table is None or table.count() == 0:
            return 0
        me = self.me
        n = 0
        for entry in table.scan():
            try:
                owner, due = owner_of(entry.value)
            except (ValueError, EOFError, TypeError, struct.error):
                continue
            if owner == me and due:
                self._arm(entry.key, due)
                n += 1
        if n:
            log.info("tm: took over the timers of %d transactions of this slot", n)
        return n

    # ---- retransmissions before the script ---------------------------------------------

    def on_request(self, m: MsgCtx) -> bool:
        """A byte-identical retransmission of a request this process relayed is answered
        from its transaction without running the script again (cfg-language.md allows
        it when the transaction exists): no second auth check, rtpproxy command or DB
        lookup for a UAC that retransmits. Anything else goes on to the script, where
        t_relay still finds retransmissions that arrive at another worker."""
        msg = m.msg
        seen = self.seen
        if (not seen and not self.seen_old) or msg.method in (b"ACK", b"CANCEL"):
            return False
        h = hash(msg.buf)
        key = seen.get(h) or self.seen_old.get(h)
        if key is None or self.table is None:
            return False
        try:
            same = txn_id(txn_key(msg, msg.method)) == key
        except SipError:
            return False
        old = self.table.get(key) if same else None
        if old is None:
            seen.pop(h, None)
            self.seen_old.pop(h, None)
            return False
        self._retransmission(m, key, Txn.load(old))
        return True

    def _remember(self, buf: bytes, key: bytes, now: float) -> None:
        if now - self.seen_since > SEEN_GENERATION or len(self.seen) >= SEEN_MAX:
            self.seen_old = self.seen
            self.seen = {}
            self.seen_since = now
        self.seen[hash(buf)] = key

    # ---- script functions -------------------------------------------------------------

    def t_on_reply(self, m: MsgCtx, route: int) -> int:
        """Arm onreply_route[route] for the transaction t_relay creates (or has made)."""
        m.on_reply = route
        tx = m.tx
        if isinstance(tx, TxRef) and tx.error is None and self.table is not None:
            def fn(old: bytes | None) -> bytes | None:
                if old is None:
                    return None
                txn = Txn.load(old)
                txn.on_reply = route
                return txn.pack(self.record_size)
            try:
                self.table.update(tx.key, fn)
            except (RecordTooBig, ValueError):
                pass
        return 1

    def t_relay(self, m: MsgCtx) -> int:
        """Forward statefully (see the module docstring); 1 when forwarded, absorbed or
        answered, < 0 with ``m.error`` set when it cannot send."""
        method = m.msg.method
        if method == b"ACK":
            return self._relay_ack(m)
        if method == b"CANCEL":
            done = self._relay_cancel(m)
            if done is not None:
                return done
            return self._stateless(m)  # RFC 3261 16.10: no context, forward statelessly
        return self._relay(m)

    # ---- new requests -----------------------------------------------------------------

    def _relay(self, m: MsgCtx) -> int:
        msg = m.msg
        ctx = m.ctx
        now = ctx.mono()
        try:
            key = txn_id(txn_key(msg, msg.method))
        except SipError:
            return m.fail(Err.BAD_TUPEL)
        targets = [(m.ruri, m.dst_uri)]
        targets += [(b.uri, b.dst_uri) for b in m.branches[:MAX_BRANCHES - 1]]
        dsts: list[tuple[bytes, Addr]] = []
        error: Err | None = None
        for uri, dst in targets:
            found = self._destination(ctx, dst or uri, now)
            if isinstance(found, Err):
                error = error or found
                continue
            dsts.append((uri, found))
        if not dsts:
            assert error is not None
            old = self.table.get(key)
            if old is not None:  # a retransmission of a request we did relay once
                return self._retransmission(m, key, Txn.load(old))
            m.tx = TxRef(self, key, error)
            return m.fail(error)

        invite = msg.method == b"INVITE"
        hexkey = key.hex().encode()
        hint = m.on_reply
        via0 = self._via(hexkey, 0, hint)
        ruri0 = dsts[0][0]
        first = build_forward_request(msg, m.edits, via=via0, ruri=ruri0, src=m.src,
                                      force_rport=m.force_rport)
        head_len = msg.ruri_start + len(ruri0) + msg.first_line_end - msg.ruri_end
        txn = Txn(Machine.start(Kind.IST if invite else Kind.NIST, now, self.timers))
        txn.flags = m.flags
        txn.on_reply = txn.hint = hint
        txn.creator = txn.owner = self.me
        txn.src = m.src
        txn.force_rport = m.force_rport
        txn.reply_addr = reply_address(msg, m.src, m.force_rport)
        buf = msg.buf
        txn.head = buf[:msg.first_line_end] + b"".join(
            [buf[s:e] for h, s, _c, e in msg.rows if h in _REPLY_ROWS])
        txn.pre = buf[:msg.ruri_start]
        txn.suf = buf[msg.ruri_end:msg.first_line_end]
        txn.rest = first[head_len + len(via0) + 7:]
        ckind = Kind.ICT if invite else Kind.NICT
        txn.branches = [Branch(Machine.start(ckind, now, self.timers), addr, uri)
                        for uri, addr in dsts]
        txn.owner_due = txn.next_due()
        try:
            value = txn.pack(self.record_size)
        except RecordTooBig as exc:
            log.error("tm: a %s of %d bytes does not fit a transaction record "
                      "(record_size=%d needs %s): answering 500", msg.method.decode(),
                      len(msg.buf), self.record_size, exc)
            m.tx = TxRef(self, key, Err.OUT_OF_MEM)
            return m.fail(Err.OUT_OF_MEM)
        existing: list[bytes] = []

        def create(old: bytes | None) -> bytes | None:
            if old is not None:
                existing.append(old)
                return old
            return value
        try:
            self.table.update(key, create)
        except TableFull:
            self._table_full(ctx)
            m.tx = TxRef(self, key, Err.TABLE_FULL)
            return m.fail(Err.TABLE_FULL)
        if existing:
            return self._retransmission(m, key, Txn.load(existing[0]))

        stats = ctx.stats
        if stats is not None:
            stats.tm_created += 1
        m.tx = TxRef(self, key)
        self._remember(msg.buf, key, now)
        send = ctx.transport.send
        if invite:
            trying = build_reply(msg, 100, REASONS[100], src=m.src, force_rport=m.force_rport,
                                 server=ctx.server_header)
            send(trying, txn.reply_addr)
        sent = False
        for k, (_uri, addr) in enumerate(dsts):
            data = first if k == 0 else self._branch_request(txn, k, hexkey)
            sent = send(data, addr) or sent
        if not sent:
            self.table.delete(key)
            m.tx.error = Err.SEND
            return m.fail(Err.SEND)
        self._arm(key, txn.owner_due)
        return 1

    def _retransmission(self, m: MsgCtx, key: bytes, txn: Txn) -> int:
        """The request came again: answer with the last reply (17.2.1/17.2.2)."""
        ctx = m.ctx
        if ctx.stats is not None:
            ctx.stats.tm_retransmissions += 1
        m.tx = TxRef(self, key)
        if txn.st.handle(E.REQUEST, ctx.mono(), self.timers) & RESEND_REPLY:
            self._resend_last(ctx, key, txn, m)
        return 1

    def _relay_ack(self, m: MsgCtx) -> int:
        """ACK: absorbed when it acknowledges a non-2xx final we sent (hop by hop),
        forwarded statelessly otherwise (the ACK of a 2xx is end to end)."""
        ctx = m.ctx
        now = ctx.mono()
        try:
            key = txn_id(txn_key(m.msg, b"INVITE"))
        except SipError:
            return m.fail(Err.BAD_TUPEL)
        out = Out()

        def ack(old: bytes | None) -> bytes | None:
            if old is None:
                return None
            txn = Txn.load(old)
            if not txn.invite or txn.st.state not in (S.COMPLETED, S.CONFIRMED):
                return old
            out.absorbed = True
            if not txn.st.handle(E.ACK, now, self.timers):
                return old  # a repeated ACK in Confirmed
            return self._settle(txn, now, out)
        if self.table is not None:
            self.table.update(key, ack)
        if out.absorbed:
            if ctx.stats is not None:
                ctx.stats.tm_acks_absorbed += 1
            if out.push:
                self._arm(key, out.push)
            return 1
        return self._stateless(m, key)

    def _relay_cancel(self, m: MsgCtx) -> int | None:
        """CANCEL of an INVITE we relay: 200 to it, CANCEL on every pending branch that
        has a provisional reply (the others get it when theirs comes, Kamailio's
        cancel_b_method=1); None when there is no such INVITE."""
        msg = m.msg
        ctx = m.ctx
        now = ctx.mono()
        try:
            key = txn_id(txn_key(msg, b"INVITE"))
        except SipError:
            return None
        out = Out()

        def cancel(old: bytes | None) -> bytes | None:
            if old is None:
                return None
            out.found = True
            txn = out.txn = Txn.load(old)
            if not txn.invite or txn.st.state is not S.PROCEEDING:
                return old
            txn.canceled = True
            for k, b in enumerate(txn.branches):
                if not b.final:
                    out.pending = True
                    self._cancel_branch(txn, k, now, out)
            return self._settle(txn, now, out)
        if self.table is None:
            return None
        self.table.update(key, cancel)
        if not out.found:
            return None
        reason = "canceling" if out.pending else "ok -- no more pending branches"
        try:
            data = build_reply(msg, 200, reason, src=m.src, to_tag=self._tag(key),
                               force_rport=m.force_rport, server=ctx.server_header)
            ctx.transport.send(data, reply_address(msg, m.src, m.force_rport))
        except SipError as exc:
            log.info("tm: cannot answer CANCEL: %s", exc)
        m.replied = True
        self._execute(ctx, key, out)
        return 1

    def _stateless(self, m: MsgCtx, key: bytes | None = None) -> int:
        """Forward without a transaction (ACK of a 2xx, CANCEL without its INVITE);
        ``key`` names the branch (the request's own transaction id by default)."""
        msg = m.msg
        ctx = m.ctx
        found = self._destination(ctx, m.dst_uri or m.ruri, ctx.mono())
        if isinstance(found, Err):
            if msg.method == b"ACK":
                log.info("tm: ACK not forwarded: %s", error_reply(found)[1])
            return m.fail(found)
        if key is None:
            try:
                key = txn_id(txn_key(msg, msg.method))
            except SipError:
                return m.fail(Err.BAD_TUPEL)
        data = build_forward_request(msg, m.edits, via=self.via_prefix + key.hex().encode() + b".s",
                                     ruri=m.ruri, src=m.src, force_rport=m.force_rport)
        if not ctx.transport.send(data, found):
            return m.fail(Err.SEND)
        return 1

    # ---- destinations ----------------------------------------------------------------

    def _destination(self, ctx: Context, uri: bytes, now: float) -> Addr | Err:
        """Where a URI sends to (its host resolved, 5060 when it has no port), or the
        error t_relay reports: BAD_URI 479, BAD_ADDRESS 478, LOOP 482 (natserver
        itself)."""
        cache = self._uri_cache
        hostport = cache.get(uri)
        if hostport is None:
            try:
                u = parse_uri(uri)
            except SipError:
                hostport = Err.BAD_URI
            else:
                if u.scheme == "tel" or not u.host:
                    hostport = Err.BAD_URI
                else:
                    hostport = u.host_port()
            if len(cache) > 4096:
                cache.clear()
            cache[uri] = hostport
        if isinstance(hostport, Err):
            return hostport
        host, port = hostport
        if ctx.is_myself(host, port):
            return Err.LOOP
        ip = self.resolver.resolve(host, now)
        if ip is None:
            return Err.BAD_ADDRESS
        if ip != host and ctx.is_myself(ip, port):
            return Err.LOOP
        return ip, port

    def _via(self, hexkey: bytes, k: int, hint: int) -> bytes:
        if hint:
            return self.via_prefix + b"%s.%d.%d" % (hexkey, k, hint)
        return self.via_prefix + b"%s.%d" % (hexkey, k)

    def _branch_request(self, txn: Txn, k: int, hexkey: bytes) -> bytes:
        """The request as sent on branch ``k`` (byte for byte, for retransmissions)."""
        return b"".join((txn.pre, txn.branches[k].ruri, txn.suf, b"Via: ",
                         self._via(hexkey, k, txn.hint), b"\r\n", txn.rest))

    @staticmethod
    def _tag(key: bytes) -> bytes:
        """The To-tag of tm's own replies: fixed per transaction, never sl's prefix (so
        sl does not swallow the ACK our server transaction waits for)."""
        return key.hex().encode()

    # ---- replies from downstream --------------------------------------------------------

    def on_reply(self, m: MsgCtx) -> bool:
        msg = m.msg
        try:
            parsed = parse_branch(msg.via1.branch)
            if parsed is None:
                return False
            method = msg.cseq.method
        except SipError:
            return False
        key, k, hint = parsed
        if self.table is None:
            return False
        ctx = m.ctx
        local_cancel = method == b"CANCEL"
        ran = 0
        if hint and not local_cancel:
            ran = self._run_onreply(m, key)
            if ran < 0:
                return False
        status = msg.status
        for _ in range(2):
            data: bytes | None = None
            addr: Addr | None = None
            if not local_cancel and status > 100 and not (status < 200 and m.vars.get("drop")):
                try:
                    data = build_forward_reply(msg, m.edits)
                    addr = next_via_address(msg)
                except SipError as exc:
                    log.info("tm: cannot relay reply %d: %s", status, exc)
                    data = None
            now = ctx.mono()
            out = Out()
            fn = self._reply_fn(m, k, local_cancel, ran, data, addr, now, out)
            try:
                self.table.update(key, fn)
            except RecordTooBig:
                log.error("tm: transaction record too small for the reply %d", status)
                return True
            if not out.found:
                return False
            if out.need_route and not ran:
                ran = self._run_onreply(m, key)
                if ran < 0:
                    return False
                continue
            break
        txn = out.txn
        if ctx.stats is not None and txn is not None and txn.creator != self.me:
            ctx.stats.tm_replies_foreign += 1
        self._execute(ctx, key, out, msg)
        return True

    def _run_onreply(self, m: MsgCtx, key: bytes) -> int:
        """Run the transaction's onreply_route with its flags; the route number (0 when
        none is armed), -1 when the transaction is gone."""
        old = self.table.get(key)
        if old is None:
            return -1
        route, flags = route_of(old)
        if route:
            m.flags = flags
            script = m.ctx.script
            if script is not None:
                script.run_onreply(route, m)
        return route

    def _reply_fn(self, m: MsgCtx, k: int, local_cancel: bool, ran: int,
                  data: bytes | None, addr: Addr | None, now: float,
                  out: Out) -> Callable[[bytes | None], bytes | None]:
        msg = m.msg
        status = msg.status

        def fn(old: bytes | None) -> bytes | None:
            if old is None:
                return None
            txn = Txn.load(old)
            if k >= len(txn.branches):
                return old
            out.found = True
            out.txn = txn
            if not local_cancel and txn.on_reply and not ran:
                out.need_route = True  # t_on_reply came after the branch ids were made
                return old
            if ran:
                txn.flags = m.flags
            b = txn.branches[k]
            if local_cancel:
                if b.cancel is None:
                    return old
                b.cancel.handle(E.RECV_1XX if status < 200 else E.RECV_2XX if status < 300
                                else E.RECV_FINAL, now, self.timers)
                return self._settle(txn, now, out)
            self._branch_reply(txn, k, msg, data, addr, now, out)
            return self._settle(txn, now, out)
        return fn

    def _branch_reply(self, txn: Txn, k: int, msg: Message, data: bytes | None,
                      addr: Addr | None, now: float, out: Out) -> None:
        """A reply on branch ``k``: its client machine, then the proxy's choice
        (RFC 3261 16.7): 1xx and 2xx go up at once, finals wait for the best."""
        b = txn.branches[k]
        status = msg.status
        ev = E.RECV_1XX if status < 200 else E.RECV_2XX if status < 300 else E.RECV_FINAL
        acts = b.ct.handle(ev, now, self.timers)
        b.status = status
        if acts & SEND_ACK:
            out.acks.append(k)
        if not acts & PASS_UP:
            return
        if status < 200:
            if b.cwant and b.cancel is None:
                self._cancel_branch(txn, k, now, out)
            if data is None or addr is None:
                return
            if txn.st.handle(E.SEND_1XX, now, self.timers) & SEND_REPLY:
                out.sends.append((data, addr))
                self._set_last(txn, data, addr, status)
            return
        if status < 300:
            if not b.final:
                b.final = status
            if txn.st.handle(E.SEND_2XX, now, self.timers) & SEND_REPLY and data and addr:
                out.sends.append((data, addr))
                if txn.invite:
                    txn.last, txn.last_status = b"", status  # the UAS retransmits 2xx itself
                else:
                    self._set_last(txn, data, addr, status)
            if txn.invite:
                for j in range(len(txn.branches)):
                    if j != k and not txn.branches[j].final:
                        self._cancel_branch(txn, j, now, out)
            return
        if not b.final:
            b.final = status
            self._branch_final(txn, k, status, data, addr, msg, now, out)

    def _branch_final(self, txn: Txn, k: int, status: int, data: bytes | None,
                      addr: Addr | None, msg: Message | None, now: float, out: Out) -> None:
        """Branch ``k`` ended with ``status`` (``data`` None: a local timeout)."""
        if txn.invite and status >= 600:
            for j in range(len(txn.branches)):
                if j != k and not txn.branches[j].final:
                    self._cancel_branch(txn, j, now, out)
        if txn.st.state not in _PENDING:
            return  # a final (or 2xx) went upstream already
        real = data is not None and addr is not None
        new = _rank(status, real)
        if not txn.best_status or new < _rank(txn.best_status, bool(txn.best)):
            txn.best_status = status
            txn.best = data if real else b""  # type: ignore[assignment]
            txn.best_addr = addr if real else ("", 0)  # type: ignore[assignment]
        elif (real and msg is not None and status in _AUTH and txn.best_status in _AUTH
              and txn.best):
            txn.best = _merge_challenges(txn.best, msg)
        if all(b.final for b in txn.branches):
            self._relay_best(txn, now, out)

    def _relay_best(self, txn: Txn, now: float, out: Out) -> None:
        """Every branch has its final: send the best one upstream."""
        status = txn.best_status or 408
        data = txn.best
        if not data and txn.canceled:
            status = 487
        elif data and status == 503:
            data, status = _as_500(data), 500
        if not txn.st.handle(E.SEND_FINAL, now, self.timers) & SEND_REPLY:
            return
        if data:
            out.sends.append((data, txn.best_addr))
            self._set_last(txn, data, txn.best_addr, status)
        else:
            out.locals.append(status)
            txn.last, txn.last_status = b"", status
        txn.best = b""

    @staticmethod
    def _set_last(txn: Txn, data: bytes, addr: Addr, status: int) -> None:
        txn.last = data
        txn.last_addr = addr
        txn.last_status = status

    def _cancel_branch(self, txn: Txn, k: int, now: float, out: Out) -> None:
        """CANCEL branch ``k`` now if it has had a provisional reply, else as soon as it
        has one (RFC 3261 9.1: never before)."""
        b = txn.branches[k]
        if b.cancel is not None or b.ct.kind is not Kind.ICT:
            return
        if b.ct.state is S.PROCEEDING:
            b.cancel = Machine.start(Kind.NICT, now, self.timers)
            out.cancels.append(k)
        elif b.ct.state is S.CALLING:
            b.cwant = True

    # ---- record bookkeeping ----------------------------------------------------------

    def _settle(self, txn: Txn, now: float, out: Out) -> bytes | None:
        """The record to write back after a change: None (delete) when every machine has
        ended; takes timer ownership when the record is now due before its owner
        expects it."""
        if txn.done():
            return None
        due = txn.next_due()
        if not due:
            if txn.branches:
                log.warning("tm: transaction without a running timer removed (server %s)",
                            txn.st.state.name)
            return None
        if txn.owner == self.me:
            if due != txn.owner_due:
                txn.owner_due = due
                out.push = due
        elif not txn.owner_due or due < txn.owner_due:
            txn.owner = self.me
            txn.owner_due = due
            out.push = due
            out.took = True
        return self._pack(txn)

    def _pack(self, txn: Txn) -> bytes:
        """Pack, dropping what can be rebuilt or done without when it does not fit."""
        size = self.record_size
        try:
            return txn.pack(size)
        except RecordTooBig:
            pass
        if txn.last:
            log.warning("tm: record_size %d too small: not keeping the last reply", size)
            txn.last = b""
            try:
                return txn.pack(size)
            except RecordTooBig:
                pass
        if txn.best:
            log.warning("tm: record_size %d too small: best reply %d will be rebuilt "
                        "locally", size, txn.best_status)
            txn.best = b""
        return txn.pack(size)

    def _arm(self, key: bytes, due: float) -> None:
        if not due or self.armed.get(key) == due:
            return
        self.armed[key] = due
        heapq.heappush(self.heap, (due, key))

    def _table_full(self, ctx: Context) -> None:
        if ctx.stats is not None:
            ctx.stats.tm_table_full += 1
        self._full_count += 1
        t = ctx.mono()
        if t - self._full_logged >= 10.0:
            log.error("tm: transaction table full (tm_table_size=%d): %d requests answered "
                      "503", ctx.cfg.tm_table_size, self._full_count)
            self._full_logged = t
            self._full_count = 0

    # ---- carrying out decisions ------------------------------------------------------

    def _execute(self, ctx: Context, key: bytes, out: Out, reply: Message | None = None) -> None:
        """Send what an operation decided (after the stripe lock is released)."""
        stats = ctx.stats
        send = ctx.transport.send
        for data, addr in out.sends:
            send(data, addr)
        if stats is not None:
            stats.tm_replies_relayed += len(out.sends)
            if out.took:
                stats.tm_timer_takeovers += 1
        txn = out.txn
        if txn is not None:
            for status in out.locals:
                self._send_local(ctx, key, txn, status)
            if out.resend_last:
                self._resend_last(ctx, key, txn)
            hexkey = key.hex().encode()
            for k in out.requests:
                send(self._branch_request(txn, k, hexkey), txn.branches[k].dst)
            if stats is not None:
                stats.tm_retransmits += len(out.requests) + out.resend_last
            for k in out.cancels:
                self._hop(ctx, txn, k, hexkey, None)
            if reply is not None:
                for k in out.acks:
                    self._hop(ctx, txn, k, hexkey, reply)
        if out.push:
            self._arm(key, out.push)

    def _hop(self, ctx: Context, txn: Txn, k: int, hexkey: bytes, reply: Message | None) -> None:
        """CANCEL (``reply`` None) or non-2xx ACK for branch ``k``, built from the
        request sent on it."""
        try:
            inv = Message.parse(self._branch_request(txn, k, hexkey))
            data = build_cancel(inv) if reply is None else build_ack(inv, reply)
        except SipError as exc:
            log.warning("tm: cannot build %s for branch %d: %s",
                        "CANCEL" if reply is None else "ACK", k, exc)
            return
        ctx.transport.send(data, txn.branches[k].dst)
        if reply is None and ctx.stats is not None:
            ctx.stats.tm_cancels += 1

    def _local_reply(self, ctx: Context, key: bytes, txn: Txn, status: int) -> bytes | None:
        """tm's own reply built from the stored request rows (408, 487...)."""
        try:
            req = Message.parse(txn.head + b"\r\n")
            return build_reply(req, status, REASONS.get(status, "Error"), src=txn.src,
                               to_tag=self._tag(key) if status >= 180 else None,
                               force_rport=txn.force_rport, server=ctx.server_header)
        except SipError as exc:
            log.warning("tm: cannot build a local %d: %s", status, exc)
            return None

    def _send_local(self, ctx: Context, key: bytes, txn: Txn, status: int) -> None:
        data = self._local_reply(ctx, key, txn, status)
        if data is None:
            return
        ctx.transport.send(data, txn.reply_addr)
        if ctx.stats is not None:
            ctx.stats.tm_local_replies += 1
            if status == 408:
                ctx.stats.tm_timeouts += 1

    def _resend_last(self, ctx: Context, key: bytes, txn: Txn, m: MsgCtx | None = None) -> None:
        """Send the last reply upstream again (a retransmitted request, Timer G)."""
        send = ctx.transport.send
        if txn.last:
            send(txn.last, txn.last_addr)
        elif txn.last_status >= 200:
            if not (txn.invite and txn.last_status < 300):  # 2xx: the UAS retransmits
                data = self._local_reply(ctx, key, txn, txn.last_status)
                if data is not None:
                    send(data, txn.reply_addr)
        elif txn.invite:
            if m is not None:
                data = build_reply(m.msg, 100, REASONS[100], src=m.src,
                                   force_rport=m.force_rport, server=ctx.server_header)
            else:
                data = self._local_reply(ctx, key, txn, 100)
            if data is not None:
                send(data, txn.reply_addr)

    # ---- replies natserver makes through the transaction ---------------------------------

    def reply(self, m: MsgCtx, tx: TxRef, status: int, reason: str) -> bool:
        """Answer the request in ``m`` through its transaction (made if t_relay could not
        make one): the reply is kept, retransmissions of the request get it again, a
        non-2xx final to an INVITE is retransmitted until its ACK."""
        msg = m.msg
        if msg.method == b"ACK":
            return False
        ctx = m.ctx
        now = ctx.mono()
        key = tx.key
        try:
            data = build_reply(msg, status, reason, src=m.src,
                               to_tag=self._tag(key) if status >= 180 else None,
                               force_rport=m.force_rport, headers=m.reply_headers,
                               server=ctx.server_header)
            addr = reply_address(msg, m.src, m.force_rport)
        except SipError as exc:
            log.info("tm: cannot send %d: %s", status, exc)
            return False
        invite = msg.method == b"INVITE"
        ev = E.SEND_1XX if status < 200 else E.SEND_2XX if status < 300 else E.SEND_FINAL
        out = Out()

        def fn(old: bytes | None) -> bytes | None:
            if old is None:
                txn = Txn(Machine.start(Kind.IST if invite else Kind.NIST, now, self.timers))
                txn.creator = self.me
                txn.src = m.src
                txn.force_rport = m.force_rport
                txn.reply_addr = addr
            else:
                txn = Txn.load(old)
            out.txn = txn
            if txn.st.handle(ev, now, self.timers) & SEND_REPLY:
                out.found = True
                self._set_last(txn, data, addr, status)
                return self._settle(txn, now, out)
            return old
        sent_statefully = True
        if self.table is not None:
            try:
                self.table.update(key, fn)
            except TableFull:
                self._table_full(ctx)
                sent_statefully = False
            except RecordTooBig:
                sent_statefully = False
        if sent_statefully and not out.found:
            return False  # the transaction has already answered finally
        ctx.transport.send(data, addr)
        m.replied = True
        if ctx.stats is not None:
            ctx.stats.tm_local_replies += 1
        if out.push:
            self._arm(key, out.push)
        return True

    def post_script(self, m: MsgCtx) -> None:
        """Kamailio's delayed error reply: t_relay failed and the script sent nothing."""
        tx = m.tx
        if isinstance(tx, TxRef) and tx.error is not None and not m.replied:
            status, reason = error_reply(tx.error)
            tx.reply(m, status, reason)

    # ---- timers --------------------------------------------------------------------

    def worker_timer(self, ctx: Context, now: float) -> float | None:
        heap = self.heap
        if not heap:
            return None
        if heap[0][0] > now:
            return heap[0][0] - now
        armed = self.armed
        for _ in range(TIMERS_PER_TICK):
            if not heap or heap[0][0] > now:
                break
            due, key = heapq.heappop(heap)
            if armed.get(key) != due:
                continue  # superseded by a later push for the same record
            del armed[key]
            try:
                self._expire(ctx, key, now)
            except (ValueError, EOFError, TypeError, struct.error, RecordTooBig) as exc:
                log.error("tm: dropping a broken transaction record: %s", exc)
                self.table.delete(key)
        return max(0.0, heap[0][0] - now) if heap else None

    def timer(self, ctx: Context, now: float) -> float | None:
        """In the timer process: adopt orphaned records, then run the ones it owns."""
        t = ctx.mono()
        if t >= self.next_sweep:
            self.next_sweep = t + SWEEP_INTERVAL
            self.adopt_orphans(ctx, t)
        delay = self.worker_timer(ctx, t)
        wait = self.next_sweep - t
        return wait if delay is None else min(delay, wait)

    def adopt_orphans(self, ctx: Context, now: float) -> int:
        """Take over records whose owner is more than ORPHAN_LATE s late."""
        table = self.table
        if table is None or table.count() == 0:
            return 0
        late = now - ORPHAN_LATE
        me = self.me
        taken = 0
        for entry in table.scan():
            try:
                owner, due = owner_of(entry.value)
            except (ValueError, EOFError, TypeError, struct.error):
                continue
            if owner == me or not due or due >= late:
                continue
            out = Out()

            def adopt(old: bytes | None, out: Out = out) -> bytes | None:
                if old is None:
                    return None
                txn = Txn.load(old)
                if txn.owner == me or not txn.owner_due or txn.owner_due >= late:
                    return old
                txn.owner = me
                txn.owner_due = txn.next_due() or now
                out.push = txn.owner_due
                return txn.pack(self.record_size)
            table.update(entry.key, adopt)
            if out.push:
                self._arm(entry.key, out.push)
                taken += 1
        if taken:
            log.warning("tm: adopted the timers of %d transactions whose owner is gone", taken)
            if ctx.stats is not None:
                ctx.stats.tm_timer_takeovers += taken
        return taken

    def _expire(self, ctx: Context, key: bytes, now: float) -> None:
        """Fire whatever is due in one record we own."""
        out = Out()
        timers = self.timers

        def fire(old: bytes | None) -> bytes | None:
            if old is None:
                return None
            txn = Txn.load(old)
            if txn.owner != self.me:
                return old  # another process took it over
            out.txn = txn
            for _ in range(8):
                ev, acts = txn.st.fire(now, timers)
                if ev is E.NONE:
                    break
                if acts & RESEND_REPLY:
                    out.resend_last = True
            for k, b in enumerate(txn.branches):
                for _ in range(8):
                    ev, acts = b.ct.fire(now, timers)
                    if ev is E.NONE:
                        break
                    if acts & RESEND_REQUEST:
                        out.requests.append(k)
                    if acts & TIMEOUT:
                        if ev is E.TIMER_C:
                            self._cancel_branch(txn, k, now, out)
                        if not b.final:
                            b.final = 408
                            self._branch_final(txn, k, 408, None, None, None, now, out)
                if b.cancel is not None:
                    for _ in range(8):
                        ev, acts = b.cancel.fire(now, timers)
                        if ev is E.NONE:
                            break
                        if acts & RESEND_REQUEST:
                            out.cancels.append(k)
            txn.owner_due = 0.0  # our heap entry is spent; _settle pushes the next one
            return self._settle(txn, now, out)
        self.table.update(key, fire)
        self._execute(ctx, key, out)

    # ---- management ----------------------------------------------------------------

    def rpc_stats(self, ctx: Context, args: list[str]) -> object:
        table = ctx.tables[TABLE]
        return {"transactions": table.count(), "capacity": table.capacity,
                "record_size": self.record_size}


def _route_number(value: Any) -> int:
    return int_range(0, 19)(value)


FUNCTIONS = (
    Function("t_relay", Tm.t_relay),
    Function("t_on_reply", Tm.t_on_reply, args=(_route_number,)),
)
PARAMS = (
    Param("fr_timer", int, 30, check=int_range(1, 3600),
          doc="seconds a branch waits for a final reply (INVITE: for a first reply) "
              "before a 408"),
    Param("fr_inv_timer", int, 120, check=int_range(1, 86400),
          doc="seconds an INVITE branch waits for its final after a provisional; then "
              "CANCEL and 408"),
    Param("wt_timer", int, 5, check=int_range(1, 600),
          doc="seconds a finished transaction stays to absorb retransmissions"),
    Param("retr_timer1", int, 500, check=int_range(50, 60000), doc="T1 in milliseconds"),
    Param("retr_timer2", int, 4000, check=int_range(100, 600000), doc="T2 in milliseconds"),
    Param("record_size", int, 4096, check=int_range(1024, 65536),
          doc="bytes per transaction record in shared memory: the forwarded request, "
              "the last reply and a held final must fit (a bigger request gets 500)"),
)
RPC = (Rpc("tm_stats", Tm.rpc_stats, "transactions in shared memory"),)
MODULE = Tm
