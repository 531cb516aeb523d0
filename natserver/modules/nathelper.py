"""nathelper: far-end NAT traversal (SER modules/nathelper).

Three parts, each in its own section below:

1. **NAT detection and fixing** (request, reply and branch routes):
   ``nat_uac_test(tests)``, ``fix_nated_contact()``, ``fix_nated_register()``.
   ``force_rport()`` is a core function (natserver/script/core.py).
2. **Keepalives** (the natping process): every ``natping_interval`` seconds each
   contact of the location table - only the NAT-marked ones with ``ping_nated_only=1``
   - gets 4 zero bytes (or a SIP OPTIONS with ``sipping_flag``) from the SIP socket
   bound to listen:port, sent to its ``received`` address, else its Contact URI.
3. **RTP proxy**: ``force_rtp_proxy([flags[, ip]])`` and ``unforce_rtp_proxy()``
   speak the rtpproxy protocol (natserver/rtp/client.py) to the relays in
   ``rtpproxy_sock`` - natserver's own relay processes serve its first entry, a real
   rtpproxy or rtpengine's rtpproxy-compatible port can take their place. One client
   per process, made on first use after the fork.

force_rtp_proxy (functions.md, rtpproxy-protocol.md §4):

- an INVITE sends ``U`` (creates), a reply ``L`` (completes; L's "0" = unknown call
  gives -1); flag ``l`` sends ``L`` with the tags swapped from a request (re-INVITE:
  updates the sender, never creates). Other requests (ACK included: the seed never
  asks, and SER refused them) give -1;
- the address sent is the SIP source IP, or the stream's SDP ``c=`` with ``r``/``a``;
  the port is the ``m=`` port; modifiers ``A`` (a), ``S`` (w), ``I``/``E`` (i/e) and
  ``6`` for an IPv6 address;
- one command per ``m=`` line with a non-zero port, tags ``tag;N`` (N = the m= line's
  number) when the relay answered ``VF 20050322`` with 1 - also for a single stream,
  as Kamailio does: rtpengine's rtpproxy port parses nothing else (without ``;N`` it
  falls back to echoing the port, a silent no-op). A relay without 20050322 gets bare
  tags and only the first stream (SER 0.9);
- the SDP is rewritten through the message's Edits (natserver/sip/sdp.py): every
  ``c=`` of a relayed stream and the session ``c=`` get the reply's IP, else the 2nd
  argument, else the local IP the message arrived on (a null reply IP, as rtpengine
  gives for some streams, does not count) - except a null ``c=`` (hold),
  which stays null; each ``m=`` port and ``a=rtcp:`` (port + 1) follow the relay;
  ``o=`` only with ``o``; ``a=nortpproxy:yes`` is appended. The builders rewrite
  Content-Length;
- SDP that carries ``a=nortpproxy:yes`` is left alone (-1) unless ``f``; missing or
  non-SDP bodies, missing Call-ID/From-tag, a reply without To-tag, malformed SDP
  (logged) give -1 with the message unchanged, as does any stream the relay refuses.
  ``c`` is accepted (the session ``c=`` is always rewritten).
- Relays that are down, full or refuse are logged once per 10 s burst (the next line
  counts what was swallowed); the script decides whether the call goes on.

unforce_rtp_proxy sends ``D callid from-tag [to-tag]`` and returns 1 whatever the
relay answers; -1 without Call-ID/From-tag or without any relay.

``rtpproxy_sock`` set to ``""`` means the built-in relays' ``rtp_control_sock`` when
``rtp_relays`` > 0, else no relay at all (both functions -1, one warning).
Not done (as in SER 0.9): late offer (an INVITE without SDP, the offer in the 200 and
the answer in the ACK) is not relayed; SDP inside multipart bodies is not looked at;
Kamailio's flags ``z``, ``1``/``2``/``3``/``b``, ``x`` and ``t`` are refused at start.

Decisions (shared/reference/functions.md, nathelper-natping.md):

- nat_uac_test follows SER 0.9's order (16, 2, 1, 8, 4) and then Kamailio's 32, 64
  and 128. Bit 2 compares addresses only (a Via that already has ``received`` does
  not count by itself), "private" includes 100.64/10 (natserver/addr.py). Bit 64
  (WebSocket) is accepted and never true: natserver has no WebSocket transport.
  Other bits are refused at start-up.
- fix_nated_contact rewrites only the outgoing copy (an edit), always writes the port,
  brackets IPv6, drops ``maddr`` (Kamailio: it would override the fixed host) and
  refuses a second call, ``Contact: *``, a missing Contact and non-UDP URIs (SER).
- fix_nated_register always stores ``sip:<src-ip>:<src-port>`` for save() (SER's
  AVP 42 behaviour; no ``received_avp`` to configure).
- The pinger never resolves names: a target that is not an IP literal (or of the
  other address family than the listen socket) is skipped and logged once.

Keepalive schedule (STYLE.md 14): the location table is cut into ``K`` slices (its
shm stripes, grouped when there are more stripes than ticks: at most
``MAX_TICKS_PER_SECOND`` ticks per second); tick ``k`` of the natping process pings
slice ``k % K`` and is due at ``start + k * interval / K`` - computed from the start,
so the schedule never drifts, and each contact is pinged once per interval with the
load spread evenly over it. After a stall longer than an interval, one full round
runs and the schedule continues in phase. In db_mode 3 (no shm table) the DB is read
once per round and the rows are spread over the ticks the same way.
``natserverctl nh_enable_ping 0|1`` switches pinging off and on for the whole server
(a byte in shared memory; ``nathelper.enable_ping`` is Kamailio's name for it).

SIP pings (Kamailio's, optional): contacts whose cflags carry bit ``sipping_flag``
(``sipping_bflag``), or every contact with ``ping_nated_only=0``, get an OPTIONS
built like Kamailio's, sent statelessly. Replies with one Via, CSeq method
``sipping_method`` and our Call-ID prefix are swallowed before the script. With
``keepalive_timeout`` > 0, a contact that has not answered for that many seconds
(counted from its registration or the pinger's start, whichever is later) is removed.
The registrar stores only the ``nat_flag`` bit in cflags, so out of the box
``sipping_flag`` equal to ``nat_flag`` selects the NATed contacts.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import socket
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from natserver.addr import format_host, ip_family, is_private, parse_hostport, same_ip
from natserver.errors import DbError, SipError, TableFull
from natserver.modules import Function, Module, Param, RouteType, Rpc, as_int, as_str, int_range
from natserver.script.runtime import MsgCtx
from natserver.sip.message import Message
from natserver.rtp import protocol as P
from natserver.rtp.client import BlockingClient, RelaySet
from natserver.sip import sdp
from natserver.sip.sdp import first_connection_address
from natserver.sip.uri import Uri, parse_uri

if TYPE_CHECKING:
    from natserver.context import Context
    from natserver.modules.usrloc import Contact

log = logging.getLogger("natserver.nathelper")

SIP_PORT = 5060

# ---- nat_uac_test bits ------------------------------------------------------------------
# (plain ints: the tests run per message)
NAT_C_1918 = 0x01    # first Contact host is private
NAT_RCVD = 0x02      # source IP != top Via host
NAT_V_1918 = 0x04    # top Via host is private
NAT_S_1918 = 0x08    # first SDP c= address is private
NAT_RPORT = 0x10     # source port != top Via port
NAT_O_1918 = 0x20    # source IP is private (Kamailio)
NAT_WS = 0x40        # arrived over WebSocket (Kamailio): never, natserver has no WS
NAT_C_PORT = 0x80    # Contact port != source port (Kamailio)
NAT_TESTS = 0xFF


def nat_tests(value: Any) -> int:
    """Fixup of nat_uac_test's argument: a bit mask of the supported tests."""
    n = as_int(value)
    if n <= 0:
        raise ValueError(f"nat_uac_test needs at least one test bit, got {n}")
    if n & ~NAT_TESTS:
        raise ValueError(f"nat_uac_test: unsupported test bits {n & ~NAT_TESTS:#x} "
                         "(natserver has 1, 2, 4, 8, 16, 32, 64, 128)")
    return n


def _first_contact_uri(msg: Message) -> tuple[Any, Uri] | None:
    """The first Contact value and its parsed URI; None for no, ``*`` or a bad Contact."""
    try:
        contacts = msg.contacts
        if contacts.star or not contacts.items:
            return None
        first = contacts.items[0]
        return first, first.uri
    except SipError:
        return None


def sdp_is_private(msg: Message) -> bool:
    """nat_uac_test bit 8: the first c= of an SDP body is a private IPv4 address."""
    body = msg.body
    if not body:
        return False
    try:
        ctype = msg.content_type
    except SipError:
        return False
    if ctype is not None and ctype != b"application/sdp":
        return False
    addr = first_connection_address(body)
    return addr is not None and is_private(addr.decode("latin-1"))


def nat_uac_test(m: MsgCtx, tests: int) -> int:
    """1 when any selected test holds, else -1 (evaluated in SER's order)."""
    msg = m.msg
    via = None
    if tests & (NAT_RPORT | NAT_RCVD | NAT_V_1918):
        try:
            via = msg.via1
        except SipError:
            via = None
    if via is not None:
        if tests & NAT_RPORT and m.src_port != (via.port if via.port is not None else SIP_PORT):
            return 1
        if tests & NAT_RCVD and not same_ip(via.host, m.src_ip):
            return 1
    contact = None
    if tests & (NAT_C_1918 | NAT_C_PORT):
        contact = _first_contact_uri(msg)
    if tests & NAT_C_1918 and contact is not None and is_private(contact[1].host):
        return 1
    if tests & NAT_S_1918 and sdp_is_private(msg):
        return 1
    if tests & NAT_V_1918 and via is not None and is_private(via.host):
        return 1
    if tests & NAT_O_1918 and is_private(m.src_ip):
        return 1
    if tests & NAT_C_PORT and contact is not None and contact[1].scheme != "tel":
        port = contact[1].port
        if m.src_port != (port if port else SIP_PORT):
            return 1
    return -1


def _drop_param(tail: bytes, name: bytes) -> bytes:
    """``tail`` (a URI's text after host:port: ``;params?headers``) without param
    ``name`` (case-insensitive)."""
    params, q, headers = tail.partition(b"?")
    kept = [p for p in params.split(b";")[1:] if p.split(b"=", 1)[0].strip().lower() != name]
    out = b"".join(b";" + p for p in kept)
    return out + q + headers


def nated_uri(uri_text: bytes, uri: Uri, ip: str, port: int) -> bytes:
    """``uri_text`` with host:port replaced by ``ip:port`` (port always written, IPv6
    bracketed), ``maddr`` dropped, every other byte kept."""
    tail = uri_text[uri.hostport_end:]
    if "maddr" in uri.params:
        tail = _drop_param(tail, b"maddr")
    return b"%s%s:%d%s" % (uri_text[:uri.host_start], format_host(ip).encode("ascii"),
                           port, tail)


def fix_nated_contact(m: MsgCtx) -> int:
    """First Contact URI's host:port := the packet's source (in the outgoing copy)."""
    if m.contact_fixed:
        log.warning("fix_nated_contact() called twice for one message; check the cfg")
        return -1
    found = _first_contact_uri(m.msg)
    if found is None:
        return -1
    na, uri = found
    if uri.scheme == "tel" or uri.transport != "udp":
        return -1
    new = nated_uri(na.uri_text, uri, m.src_ip, m.src_port)
    try:
        m.get_edits().replace(na.uri_start, na.uri_end, new)
    except ValueError as exc:  # another function already rewrote that span
        log.warning("fix_nated_contact: %s", exc)
        return -1
    m.contact_fixed = True
    return 1


def fix_nated_register(m: MsgCtx) -> int:
    """Remember ``sip:<src-ip>:<src-port>`` as the binding's received address (save())."""
    if m.msg.method != b"REGISTER":
        return -1
    m.received = b"sip:%s:%d" % (format_host(m.src_ip).encode("ascii"), m.src_port)
    return 1


# ---- keepalives: schedule, targets, packets ---------------------------------------------

PING = b"\x00\x00\x00\x00"      # SER's sbuf: not SIP, ignored by the UA
MAX_TICKS_PER_SECOND = 10       # finest slicing of an interval
TARGET_CACHE_MAX = 1 << 18      # contact URI -> address entries kept by the pinger
IDLE = 3600.0                   # natping hook delay when pinging is off by cfg
SKIP_LOG_MAX = 20               # unpingable targets logged one by one per round
_KA = struct.Struct("<d")       # keepalive table value: last answer (epoch s)
KA_KEY_MAX = 64                 # longest ruid the keepalive table keys


@dataclass(slots=True)
class Schedule:
    """Drift-free ticks: tick ``n`` is due at ``start + n * interval / slices`` and
    pings slice ``n % slices``. Times are monotonic seconds."""

    interval: float
    slices: int
    start: float
    tick: int = 0         # the next tick to run
    lagged: int = 0       # ticks dropped after stalls longer than an interval

    @property
    def step(self) -> float:
        return self.interval / self.slices

    def due(self, now: float) -> list[int]:
        """The slices whose tick has come (in order); advances the schedule."""
        reached = int((now - self.start) // self.step) + 1
        n = reached - self.tick
        if n <= 0:
            return []
        if n > self.slices:  # stalled for more than a round: one round, then in phase
            self.lagged += n - self.slices
            self.tick = reached - self.slices
            n = self.slices
        first = self.tick
        self.tick = reached
        return [(first + i) % self.slices for i in range(n)]

    def delay(self, now: float) -> float:
        """Seconds until the next tick is due."""
        return max(0.0, self.start + self.tick * self.step - now)


def slice_count(interval: int, stripes: int) -> int:
    """How many ticks one interval is cut into for a table of ``stripes`` stripes."""
    return max(1, min(stripes, int(interval * MAX_TICKS_PER_SECOND)))


def ping_target(uri: bytes, family: int) -> tuple[tuple[str, int] | None, str]:
    """Where a keepalive for ``uri`` (a received or Contact URI) goes: ``((ip, port),
    "")``, or ``(None, why not)``."""
    try:
        u = parse_uri(uri)
    except SipError:
        return None, "not a SIP URI"
    if u.scheme != "sip":
        return None, f"{u.scheme}: URI"
    if u.transport != "udp":
        return None, f"transport={u.transport}"
    fam = ip_family(u.host)
    if fam is None:
        return None, "host is not an IP address (no DNS in the pinger)"
    if fam != family:
        return None, "address family differs from the listen socket's"
    return (u.host, u.port or SIP_PORT), ""


def sipping_prefix(secret: bytes) -> bytes:
    """The fixed Call-ID part of our OPTIONS pings: the same in every process (made
    from the server secret), unpredictable from outside."""
    return hashlib.blake2s(secret + b"nathelper-sipping", digest_size=4).hexdigest().encode()


def build_sipping(*, method: bytes, contact: bytes, from_uri: bytes, via_host: str,
                  via_port: int, ruid: bytes, aor_hash: int, counter: int,
                  prefix: bytes, ticks: int, path: bytes = b"") -> bytes:
    """A stateless keepalive request as Kamailio's sip_pinger builds it: the From tag
    carries ``<ruid>-<aor hash>-<counter>`` so an answer names its contact."""
    host = format_host(via_host).encode("ascii")
    lines = [
        b"%s %s SIP/2.0" % (method, contact),
        b"Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK%07d" % (host, via_port,
                                                        1000000 + counter % 9000000),
    ]
    if path:
        lines.append(b"Route: " + path)
    lines += [
        b"From: %s;tag=%s-%x-%x" % (from_uri, ruid, aor_hash, counter),
        b"To: <%s>" % contact,
        b"Call-ID: %s-%x-%x@%s" % (prefix, counter, ticks, host),
        b"CSeq: 1 %s" % method,
        b"Max-Forwards: 70",
        b"Content-Length: 0",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def ka_ruid(msg: Message) -> bytes | None:
    """The contact ruid named by the From tag of an answer to our OPTIONS ping."""
    try:
        tag = msg.from_.tag
    except SipError:
        return None
    if not tag:
        return None
    parts = tag.rsplit("-", 2)
    if len(parts) != 3 or not parts[0]:
        return None
    return parts[0].encode("latin-1")


class Pinger:
    """The natping process's keepalive state (created there on the first call)."""

    __slots__ = ("mod", "ctx", "schedule", "family", "cache", "snapshot", "db_mode",
                 "via", "advertised", "prefix", "counter", "started", "round_sent",
                 "round_skipped", "round_removed", "round_unlogged", "usrloc")

    def __init__(self, mod: Nathelper, ctx: Context, mono: float, now: float) -> None:
        from natserver.modules.usrloc import get_usrloc
        self.mod = mod
        self.ctx = ctx
        self.usrloc = get_usrloc(ctx)
        table = self.usrloc.tables.get("location") if self.usrloc.tables else None
        self.db_mode = table is None
        stripes = int(mod.interval) if table is None else table.stripes
        self.schedule = Schedule(float(mod.interval), slice_count(mod.interval, stripes), mono)
        self.via = mod.send_address(ctx)
        self.advertised = ctx.advertised  # what the pings' Via names (1:1 NAT)
        self.family = socket.AF_INET6 if ":" in self.via[0] else socket.AF_INET
        self.cache: dict[bytes, tuple[str, int] | None] = {}
        self.snapshot: list[Contact] | None = None
        self.prefix = sipping_prefix(ctx.secret)
        self.counter = 0
        self.started = now
        self.round_sent = self.round_skipped = self.round_removed = self.round_unlogged = 0

    def run(self, now: float, mono: float) -> float:
        """Ping the slices that are due; seconds until the next tick."""
        sched = self.schedule
        for k in sched.due(mono):
            if self.mod.enabled():
                self.ping_slice(k, now)
            if k == sched.slices - 1:
                self.end_round(now)
        return sched.delay(mono)

    def contacts(self, k: int, now: float) -> Iterable[Contact]:
        mod = self.mod
        if not self.db_mode:
            return self.usrloc.iter_contacts(
                nated_only=mod.nated_only, nat_mask=mod.nat_mask, slice_index=k,
                slices=self.schedule.slices, now=now)
        if k == 0 or self.snapshot is None:
            self.snapshot = list(self.usrloc.iter_contacts(
                nated_only=mod.nated_only, nat_mask=mod.nat_mask, now=now))
        return [c for c in self.snapshot[k::self.schedule.slices] if c.valid(now)]

    def target(self, uri: bytes) -> tuple[str, int] | None:
        """Resolve (and cache) a target; an unusable one is logged when first seen (at
        most SKIP_LOG_MAX per round, the rest only counted)."""
        cache = self.cache
        if len(cache) >= TARGET_CACHE_MAX:
            cache.clear()
        addr, why = ping_target(uri, self.family)
        if addr is None:
            self.round_unlogged += 1
            if self.round_unlogged <= SKIP_LOG_MAX:
                log.warning("natping: not pinging %s: %s", uri.decode("latin-1"), why)
        cache[uri] = addr
        return addr

    def ping_slice(self, k: int, now: float) -> None:
        mod = self.mod
        send = self.ctx.transport.send
        cache = self.cache
        sip_mask = mod.sipping_mask
        sip_all = mod.sipping_all
        sent = skipped = 0
        for c in self.contacts(k, now):
            uri = c.received or c.contact
            try:
                dst = cache[uri]
            except KeyError:
                dst = self.target(uri)
            if dst is None:
                skipped += 1
                continue
            if sip_all or c.cflags & sip_mask:
                if mod.ka_timeout and self.keepalive_lost(c, now):
                    continue
                data = self.options(c)
            else:
                data = PING
            if send(data, dst):
                sent += 1
        self.round_sent += sent
        self.round_skipped += skipped
        stats = self.ctx.stats
        if stats is not None:
            stats.natpings += sent

    def options(self, c: Contact) -> bytes:
        self.counter += 1
        mod = self.mod
        return build_sipping(
            method=mod.sipping_method, contact=c.contact, from_uri=mod.sipping_from,
            via_host=self.advertised[0], via_port=self.advertised[1], ruid=c.ruid,
            aor_hash=zlib.crc32(c.aor), counter=self.counter, prefix=self.prefix,
            ticks=int(self.ctx.mono()) & 0xFFFFFFFF, path=c.path)

    def keepalive_lost(self, c: Contact, now: float) -> bool:
        """Remove ``c`` when it has not answered a ping for keepalive_timeout seconds."""
        mod = self.mod
        ka = mod.ka_table
        last = max(float(c.last_modified), self.started)
        value = ka.get(c.ruid) if ka is not None and 0 < len(c.ruid) <= KA_KEY_MAX else None
        if value is not None:
            last = max(last, _KA.unpack(value)[0])
        if now - last <= mod.ka_timeout:
            return False
        ul = self.usrloc
        try:
            with ul.locked(c.aor):
                # re-read under the AOR lock: a REGISTER since the scan keeps the binding
                same = [r for r in ul.records("location", c.aor)
                        if r.contact == c.contact and r.valid(now)]
                if not same or same[0].version != c.version:
                    return False
                ul.apply("location", c.aor, (), (c,), now)
        except DbError as exc:
            log.warning("natping: cannot remove %s: %s", c.contact.decode("latin-1"), exc)
            return False
        if value is not None:
            ka.delete(c.ruid)
        self.round_removed += 1
        log.info("natping: %s of %s did not answer %s for %.0f s: removed",
                 c.contact.decode("latin-1"), c.aor.decode("latin-1"),
                 mod.sipping_method.decode(), now - last)
        return True

    def end_round(self, now: float) -> None:
        if self.round_unlogged > SKIP_LOG_MAX:
            log.warning("natping: %d more targets not pingable this round",
                        self.round_unlogged - SKIP_LOG_MAX)
        if self.round_sent or self.round_skipped or self.round_removed:
            log.debug("natping round: %d sent, %d skipped, %d removed",
                      self.round_sent, self.round_skipped, self.round_removed)
        self.round_sent = self.round_skipped = self.round_removed = self.round_unlogged = 0
        if self.schedule.lagged:
            log.warning("natping fell behind: %d ticks dropped", self.schedule.lagged)
            self.schedule.lagged = 0
        ka = self.mod.ka_table
        if ka is not None:
            # answers of contacts that are gone: nothing refreshes them any more
            limit = now - self.mod.ka_timeout - 2 * self.mod.interval
            for entry in ka.scan(lambda key, value: _KA.unpack(value)[0] < limit):
                ka.delete_if(entry.key, lambda value: _KA.unpack(value)[0] < limit)


# ---- the module -------------------------------------------------------------------------

def _flag(value: Any) -> int:
    return int_range(-1, 31)(value)


def _socket(value: Any) -> str:
    text = as_str(value).strip()
    if text:
        parse_hostport(text.removeprefix("udp:"))
    return text


class Nathelper(Module):
    NAME = "nathelper"

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        p = params
        # keepalives
        self.interval: int = p["natping_interval"]
        self.nated_only = bool(p["ping_nated_only"])
        self.nat_mask: int | None = None          # the registrar's nat_flag bit (init)
        flag = p["sipping_bflag"] if p["sipping_bflag"] >= 0 else p["sipping_flag"]
        self.sipping_mask = 1 << flag if flag >= 0 else 0
        self.sipping_all = bool(self.sipping_mask) and not self.nated_only
        sipping_from = p["sipping_from"].strip()
        if self.sipping_mask and not sipping_from:
            raise ValueError("SIP ping (sipping_flag) needs sipping_from")
        if sipping_from and not sipping_from.startswith("<"):
            sipping_from = f"<{sipping_from}>"
        self.sipping_from = sipping_from.encode()
        self.sipping_method = p["sipping_method"].strip().upper().encode()
        self.ka_timeout: int = p["keepalive_timeout"] if self.sipping_mask else 0
        self.force_socket: str = p["force_socket"]
        self.ka_table: Any = None
        self.switch: mmap.mmap | None = None
        self.pinger: Pinger | None = None
        self._prefix = b""
        # RTP proxy: one client per process (rtp_client)
        self.relay_spec: str = p["rtpproxy_sock"].strip()
        self.rtp_timeout = float(p["rtpproxy_tout"])
        self.rtp_retries: int = p["rtpproxy_retr"]
        tout = p["rtpproxy_disable_tout"]
        self.disable_tout = float(tout) if tout >= 0 else float(1 << 40)
        if self.relay_spec:
            RelaySet.from_spec(self.relay_spec)   # a bad entry is a start-up error
        self.client: BlockingClient | None = None
        self.client_pid = 0
        self.burst = Burst()
        self.relay_warned = False

    # ---- lifecycle --------------------------------------------------------------------

    def shm_tables(self, ctx: Context) -> dict[str, tuple[int, int, int]]:
        if self.interval > 0 and self.ka_timeout > 0:
            return {"nh_keepalive": (int(ctx.cfg.ul_table_size), KA_KEY_MAX, _KA.size)}
        return {}

    def init(self, ctx: Context) -> None:
        if self.interval <= 0:
            return
        if ctx.module("usrloc") is None:
            raise RuntimeError("nathelper: natping_interval needs usrloc "
                               "(loadmodule \"usrloc.so\")")
        reg = ctx.module("registrar")
        if reg is not None:
            self.nat_mask = 1 << int(reg.params["nat_flag"])
        elif self.nated_only:
            raise RuntimeError("nathelper: ping_nated_only=1 needs the registrar's nat_flag "
                               "(loadmodule \"registrar.so\")")
        # One byte every process maps: the ctl switch (1 = pinging on).
        self.switch = mmap.mmap(-1, mmap.PAGESIZE)
        self.switch[0] = 1
        if self.ka_timeout and ctx.tables is not None:
            self.ka_table = ctx.tables.get("nh_keepalive")
        self.send_address(ctx)  # warn about a foreign force_socket at start

    def send_address(self, ctx: Context) -> tuple[str, int]:
        """The address keepalives leave from: listen:port (the socket the natping
        process inherited). ``force_socket`` can only name that socket."""
        listen = ctx.listen
        if self.force_socket:
            host, port = parse_hostport(self.force_socket.removeprefix("udp:"))
            if not (same_ip(host, listen[0]) and port == listen[1]):
                log.error("nathelper: force_socket %s is not the listen socket %s:%s; "
                          "using the listen socket", self.force_socket, *listen)
        return listen

    def enabled(self) -> bool:
        return self.switch is None or self.switch[0] == 1

    # ---- NAT detection and fixing -----------------------------------------------------

    def nat_uac_test(self, m: MsgCtx, tests: int) -> int:
        return nat_uac_test(m, tests)

    def fix_nated_contact(self, m: MsgCtx) -> int:
        return fix_nated_contact(m)

    def fix_nated_register(self, m: MsgCtx) -> int:
        return fix_nated_register(m)

    # ---- keepalives -------------------------------------------------------------------

    def natping(self, ctx: Context, now: float) -> float | None:
        if self.interval <= 0:
            return IDLE
        pinger = self.pinger
        if pinger is None:
            pinger = self.pinger = Pinger(self, ctx, ctx.mono(), now)
        return pinger.run(now, ctx.mono())

    def on_reply(self, m: MsgCtx) -> bool:
        """Swallow answers to our OPTIONS pings (and note them for keepalive_timeout)."""
        if not self.sipping_mask:
            return False
        msg = m.msg
        if not self._prefix:
            self._prefix = sipping_prefix(m.ctx.secret) + b"-"
        try:
            if msg.cseq.method != self.sipping_method:
                return False
            if not msg.call_id.startswith(self._prefix):
                return False
            if len(msg.vias) != 1:
                return False
        except SipError:
            return False
        ka = self.ka_table
        if ka is not None:
            ruid = ka_ruid(msg)
            if ruid is not None and len(ruid) <= KA_KEY_MAX:
                try:
                    ka.put(ruid, _KA.pack(m.now))
                except TableFull:
                    log.warning("nathelper: keepalive table full")
        return True

    def rpc_enable_ping(self, ctx: Context, args: list[str]) -> Any:
        """nh_enable_ping [0|1]: show or switch keepalives for the whole server."""
        if self.switch is None:
            raise ValueError("NAT pinging is off in the cfg (natping_interval=0)")
        if args:
            if len(args) != 1 or args[0] not in ("0", "1"):
                raise ValueError("usage: nh_enable_ping [0|1]")
            self.switch[0] = int(args[0])
        return {"enabled": self.switch[0] == 1, "natping_interval": self.interval,
                "ping_nated_only": int(self.nated_only),
                "sipping": bool(self.sipping_mask)}

    # ---- RTP proxy --------------------------------------------------------------------

    def rtp_client(self, m: MsgCtx) -> BlockingClient | None:
        """This process's client of the relays in ``rtpproxy_sock`` (None: disabled).
        Created on first use, so each SIP worker has its own sockets after the fork."""
        client = self.client
        if client is not None and self.client_pid == os.getpid():
            return client
        spec = self.relay_spec
        if not spec:
            # rtpproxy_sock set to "": the built-in relays' own socket, if there are any
            cfg = m.ctx.cfg
            if int(getattr(cfg, "rtp_relays", 0) or 0) > 0:
                spec = str(getattr(cfg, "rtp_control_sock", "") or "")
        if not spec:
            return None
        relays = RelaySet.from_spec(spec, self.disable_tout)
        self.client = client = BlockingClient(relays, timeout=self.rtp_timeout,
                                              retries=self.rtp_retries, clock=m.ctx.mono)
        self.client_pid = os.getpid()
        return client

    def force_rtp_proxy(self, m: MsgCtx, flags: RtpFlags | None = None, ip: str = "") -> int:
        client = self.rtp_client(m)
        if client is None:
            if not self.relay_warned:
                self.relay_warned = True
                log.warning("nathelper: force_rtp_proxy(): no relay (rtpproxy_sock is "
                            "empty and there are no built-in relays); returning -1")
            return -1
        return force_rtp_proxy(m, client, flags or NO_FLAGS, ip, self.burst)

    def unforce_rtp_proxy(self, m: MsgCtx) -> int:
        client = self.rtp_client(m)
        if client is None:
            return -1
        return unforce_rtp_proxy(m, client, self.burst)

    def child_init(self, ctx: Context) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None   # the parent's sockets are not ours: start afresh

    def shutdown(self, ctx: Context) -> None:
        if self.client is not None and self.client_pid == os.getpid():
            self.client.close()
        self.client = None


# ---- RTP proxy: force_rtp_proxy / unforce_rtp_proxy -------------------------------------

RTP_FLAGS = "lraifeocw"
BURST_WINDOW = 10.0     # seconds: relay failures inside one window are logged once


@dataclass(slots=True)
class Burst:
    """Log a relay failure once per window; the next line says how many were swallowed."""

    window: float = BURST_WINDOW
    until: float = float("-inf")
    swallowed: int = 0

    def note(self, now: float, text: str, *args: Any) -> None:
        if now < self.until:
            self.swallowed += 1
            return
        if self.swallowed:
            text += " (and %d similar failures in the last %.0f s)"
            args = (*args, self.swallowed, self.window)
        self.swallowed = 0
        self.until = now + self.window
        log.error("nathelper: " + text, *args)


@dataclass(frozen=True, slots=True)
class RtpFlags:
    """force_rtp_proxy's flags (functions.md): SER's l r a f i e, Kamailio's o c w."""

    lookup: bool = False        # l: only update an existing session (L, tags swapped)
    trust_sdp: bool = False     # r: send the SDP address instead of the source IP
    asymmetric: bool = False    # a: modifier A (implies r)
    force: bool = False         # f: ignore a=nortpproxy:yes
    origin: bool = False        # o: rewrite o= too
    symmetric: bool = False     # w: modifier S
    bridge: str = ""            # i/e: modifiers I/E in the order given

    @classmethod
    def parse(cls, text: str) -> RtpFlags:
        t = text.lower()
        return cls(lookup="l" in t, trust_sdp="r" in t or "a" in t, asymmetric="a" in t,
                   force="f" in t, origin="o" in t, symmetric="w" in t,
                   bridge="".join(c.upper() for c in t if c in "ie"))

    def mods(self, ipv6: bool) -> str:
        # c (session c= too) needs no modifier: natserver always rewrites the session c=
        return (("A" if self.asymmetric else "") + ("S" if self.symmetric else "")
                + self.bridge + ("6" if ipv6 else ""))


NO_FLAGS = RtpFlags()


def _sdp_of(m: MsgCtx, name: str) -> sdp.Sdp | None:
    """The message's SDP, parsed; None (and a log line for broken SDP) otherwise."""
    msg = m.msg
    body = msg.body
    if not body.strip():
        return None
    try:
        ctype = msg.content_type
    except SipError:
        ctype = b"?"
    if ctype is not None and ctype != b"application/sdp":
        return None
    try:
        return sdp.parse(body)
    except sdp.SdpError as exc:
        log.warning("%s(): malformed SDP from %s:%d (Call-ID %r): %s", name, m.src_ip,
                    m.src_port, _text(msg, "call_id"), exc)
        return None


def _text(msg: Message, what: str) -> str:
    try:
        return getattr(msg, what).decode("latin-1")[:80]
    except (SipError, AttributeError):
        return "?"


def _dialog(m: MsgCtx) -> tuple[bytes, bytes, bytes] | None:
    """(Call-ID, From-tag, To-tag) - None when Call-ID or From-tag is missing."""
    msg = m.msg
    try:
        callid = msg.call_id
        ftag = (msg.from_.tag or "").encode("latin-1")
        try:
            ttag = (msg.to.tag or "").encode("latin-1")
        except SipError:
            ttag = b""
    except SipError:
        return None
    if not callid or not ftag:
        return None
    return callid, ftag, ttag


def force_rtp_proxy(m: MsgCtx, client: BlockingClient, flags: RtpFlags, ip: str,
                    burst: Burst) -> int:
    """Create (offer, U) or complete (answer, L) the relay session of each stream and
    point the outgoing SDP at the relay. 1, or -1 with the message unchanged."""
    msg = m.msg
    if msg.is_request:
        if msg.method != b"INVITE":
            return -1
        lookup = flags.lookup
    else:
        lookup = True       # a reply: the answer, or the answer to a re-INVITE
    if m.vars.get("rtp_forced"):
        log.warning("force_rtp_proxy() called twice for one message; check the cfg")
        return -1
    parsed = _sdp_of(m, "force_rtp_proxy")
    if parsed is None:
        return -1
    if parsed.nortpproxy and not flags.force:
        return -1
    dialog = _dialog(m)
    if dialog is None:
        return -1
    callid, ftag, ttag = dialog
    if lookup and not ttag:
        return -1           # L names both parties
    if not msg.is_request:
        tags = (ftag, ttag)
    elif flags.lookup:
        tags = (ttag, ftag)   # L with the tags swapped: updates the sender, never creates
    else:
        tags = (ftag, ttag)
    streams = [s for s in parsed.media if s.port != 0]
    if not streams:
        return -1
    op = P.Op.LOOKUP if lookup else P.Op.UPDATE
    now = m.ctx.mono()
    ports: list[int | None] = [None] * len(parsed.media)
    new_ip = ""
    for _ in range(len(client.relays.relays)):
        relay = client.ready(callid)
        if relay is None:
            burst.note(now, "force_rtp_proxy(): no rtpproxy answers (Call-ID %s)",
                       callid.decode("latin-1"))
            return -1
        # tag;N whenever the relay numbers streams (Kamailio does the same; rtpengine's
        # rtpproxy port even requires it), bare tags and the first stream only for a
        # relay without 20050322 (SER 0.9)
        numbered = relay.multistream
        todo = streams if numbered else streams[:1]
        failed = False
        for s in todo:
            addr = m.src_ip
            if flags.trust_sdp:
                conn = parsed.connection(s)
                if conn is not None:
                    addr = conn.addr.decode("latin-1")
            suffix = b";%d" % s.index if numbered else b""
            cmd = P.Command(op, flags.mods(":" in addr), callid, addr.encode("latin-1"),
                            b"%d" % s.port, tags[0] + suffix,
                            tags[1] + suffix if tags[1] else b"")
            reply = client.send(relay, cmd)
            if reply is None:
                client.relays.failed(relay, client.clock())
                failed = True
                break
            if not 0 < reply.port < 65536:
                if reply.is_error:
                    burst.note(now, "force_rtp_proxy(): rtpproxy %s refused %s: %s",
                               relay.spec.url, cmd.op.value, reply.text.decode("latin-1"))
                return -1   # L's "0": no such session (never created, or "l")
            ports[s.index - 1] = reply.port
            if not new_ip and reply.ip and reply.ip not in sdp.NULL_ADDRESSES:
                new_ip = reply.ip.decode("latin-1")
        if not failed:
            break
    else:
        burst.note(now, "force_rtp_proxy(): no rtpproxy answers (Call-ID %s)",
                   callid.decode("latin-1"))
        return -1
    new_ip = new_ip or ip or m.local_ip
    try:
        sdp.record_edits(m.get_edits(), msg.body_start, parsed, new_ip, ports,
                         origin=flags.origin)
    except ValueError as exc:   # another function already rewrote part of the body
        log.warning("force_rtp_proxy(): %s", exc)
        return -1
    m.vars["rtp_forced"] = True
    return 1


def unforce_rtp_proxy(m: MsgCtx, client: BlockingClient, burst: Burst) -> int:
    """D callid from-tag [to-tag]: 1 whatever the relay says (SER)."""
    dialog = _dialog(m)
    if dialog is None:
        return -1
    callid, ftag, ttag = dialog
    if client.command(P.Command(P.Op.DELETE, callid=callid, from_tag=ftag,
                                to_tag=ttag)) is None:
        burst.note(m.ctx.mono(), "unforce_rtp_proxy(): no rtpproxy answers (Call-ID %s)",
                   callid.decode("latin-1"))
    return 1


_ROUTES_FIX = RouteType.REQUEST | RouteType.ONREPLY | RouteType.BRANCH
_ROUTES_RTP = RouteType.REQUEST | RouteType.ONREPLY | RouteType.FAILURE | RouteType.BRANCH


def _rtp_flags(value: Any) -> RtpFlags:
    """Fixup of force_rtp_proxy's flags: parsed once, unknown letters refused at start."""
    text = as_str(value)
    bad = set(text.lower()) - set(RTP_FLAGS)
    if bad:
        raise ValueError(f"force_rtp_proxy: unknown flags {''.join(sorted(bad))!r}")
    return RtpFlags.parse(text)


FUNCTIONS = (
    Function("nat_uac_test", Nathelper.nat_uac_test, args=(nat_tests,), routes=RouteType.ANY,
             doc="NAT detection: 1 when any selected test holds"),
    Function("fix_nated_contact", Nathelper.fix_nated_contact, routes=_ROUTES_FIX,
             doc="first Contact host:port := the source address (outgoing copy)"),
    Function("fix_nated_register", Nathelper.fix_nated_register,
             doc="store the source address as the binding's received address"),
    Function("force_rtp_proxy", Nathelper.force_rtp_proxy, routes=_ROUTES_RTP),
    Function("force_rtp_proxy", Nathelper.force_rtp_proxy, args=(_rtp_flags,),
             routes=_ROUTES_RTP),
    Function("force_rtp_proxy", Nathelper.force_rtp_proxy, args=(_rtp_flags, as_str),
             routes=_ROUTES_RTP),
    Function("unforce_rtp_proxy", Nathelper.unforce_rtp_proxy, routes=_ROUTES_RTP),
)
PARAMS = (
    # keepalives
    Param("natping_interval", int, 0, check=int_range(0, 86400),
          doc="seconds between keepalives to each contact; 0 = off"),
    Param("ping_nated_only", int, 0, check=int_range(0, 1),
          doc="1 = only contacts with the NAT mark; 0 = every contact"),
    Param("force_socket", str, "", check=_socket,
          doc="ip:port keepalives leave from (must be the listen socket)"),
    Param("sipping_flag", int, -1, check=_flag,
          doc="contact flag selecting OPTIONS pings instead of 4 bytes (-1 = off)"),
    Param("sipping_bflag", int, -1, check=_flag, doc="Kamailio's name for sipping_flag"),
    Param("sipping_from", str, "", check=as_str, doc="From URI of OPTIONS pings"),
    Param("sipping_method", str, "OPTIONS", check=as_str, doc="method of SIP pings"),
    Param("keepalive_timeout", int, 0, check=int_range(0, 1 << 30),
          doc="remove a SIP-pinged contact silent this many seconds (0 = never)"),
    Param("received_avp", str, "", check=as_str,
          doc="accepted for SER/Kamailio cfgs; natserver always stores received"),
    # RTP proxy (the relay wiring reads these)
    Param("rtpproxy_sock", str, "unix:/var/run/rtpproxy.sock", check=as_str,
          doc="rtpproxy control socket(s) with =weights; the built-in relays serve the "
              "first (or rtp_control_sock); \"\" = rtp_control_sock when rtp_relays > 0, "
              "else no relay"),
    Param("rtpproxy_tout", int, 1, check=int_range(0, 3600),
          doc="seconds to wait for an rtpproxy answer"),
    Param("rtpproxy_retr", int, 5, check=int_range(0, 100),
          doc="retransmissions of an unanswered rtpproxy command"),
    Param("rtpproxy_disable_tout", int, 60, check=int_range(-1, 86400),
          doc="seconds an unreachable rtpproxy is left alone before a retry"),
)
RPC = (
    Rpc("nh_enable_ping", Nathelper.rpc_enable_ping,
        "nh_enable_ping [0|1]: show or switch NAT keepalives"),
    Rpc("nathelper.enable_ping", Nathelper.rpc_enable_ping, "Kamailio's name for nh_enable_ping"),
)
MODULE = Nathelper
