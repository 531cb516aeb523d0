"""The rtpproxy control protocol: parse and format commands and replies, reply cache.

One model serves both ends: natserver's relays parse what Kamailio's rtpproxy module
(or natserver's own nathelper) sends, and the client formats the same :class:`Command`
for remote relays, real rtpproxy or rtpengine's rtpproxy-compatible listener.

Wire format (tokens separated by SP, TAB, CR, LF; replies end in ``\\n``)::

    [cookie ]U[mods] callid addr port from_tag[;N] [to_tag[;N] [notify_sock notify_tag]]
    [cookie ]L[mods] callid addr port from_tag[;N] to_tag[;N]
    [cookie ]D[w] callid from_tag [to_tag]
    [cookie ]Q[v] callid from_tag [to_tag [counter ...]]
    [cookie ]V | VF yyyymmdd | I[b] | X | G[v] [stat ...]
    P/S/R/C/N (play, stop, record, copy, stop recording) are parsed for completeness.

The cookie exists on datagram transports only (``udp:``); on ``unix:`` streams the
command is sent bare. Errors are ``E<n>`` with the modern rtpproxy numbers.
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from dataclasses import dataclass, field

VERSION = b"20040107"
# VF answers 1 for these capability dates (rtpproxy-protocol.md §2): basic, multi-stream
# tag;N, Q statistics, codec list in C (accepted and ignored: natserver relays opaquely).
CAPABILITIES = frozenset({b"20040107", b"20050322", b"20080403", b"20081102"})


class Op(enum.Enum):
    VERSION = "V"
    VERSION_FEATURE = "VF"
    UPDATE = "U"
    LOOKUP = "L"
    DELETE = "D"
    QUERY = "Q"
    INFO = "I"
    DELETE_ALL = "X"
    STATS = "G"
    PLAY = "P"
    NOPLAY = "S"
    RECORD = "R"
    COPY = "C"
    NORECORD = "N"


class ECode(enum.IntEnum):
    """Modern rtpproxy error codes (rtpp_command_ecodes.h) that natserver answers."""

    UNKNOWN_COMMAND = 0
    ARG_COUNT = 1
    MODIFIERS = 2
    BAD_PORT = 5
    BAD_TAG = 6
    BAD_VERSION = 7
    BAD_PTIME = 13
    BAD_CODECS = 14
    BAD_LOCAL_ADDR = 15
    BAD_REMOTE_ADDR = 16
    REPLY_TOO_BIG = 25
    BAD_ADDRESS = 37
    SESSION_UNKNOWN = 50
    PLAY_FAILED = 60
    QUERY_FAILED = 62
    COPY_FAILED = 65
    STATS_FAILED = 68
    NO_PORTS = 71
    BIND_FAILED = 72
    NOTIFY_OFF = 75
    TABLE_FULL = 81
    OVERLOAD = 98
    SHUTDOWN = 99


class ProtocolError(Exception):
    """A command that cannot be parsed; ``code`` is the E-code to answer."""

    def __init__(self, code: ECode, message: str) -> None:
        super().__init__(f"E{int(code)}: {message}")
        self.code = code


# Per command: (min, max) argument counts after the command token, and the modifier
# letters it takes (upper case; lower case is accepted too). One row per command.
@dataclass(frozen=True, slots=True)
class Syntax:
    min_args: int
    max_args: int
    mods: str


SYNTAX: dict[Op, Syntax] = {
    Op.VERSION: Syntax(0, 0, ""),
    Op.VERSION_FEATURE: Syntax(1, 1, ""),
    Op.UPDATE: Syntax(4, 7, "*"),
    Op.LOOKUP: Syntax(4, 5, "*"),
    Op.DELETE: Syntax(2, 3, "W"),
    Op.QUERY: Syntax(2, 64, "V"),
    Op.INFO: Syntax(0, 0, "B"),
    Op.DELETE_ALL: Syntax(0, 0, ""),
    Op.STATS: Syntax(0, 64, "V"),
    Op.PLAY: Syntax(4, 5, "*"),
    Op.NOPLAY: Syntax(2, 3, ""),
    Op.RECORD: Syntax(2, 3, "*"),
    Op.COPY: Syntax(3, 4, "*"),
    Op.NORECORD: Syntax(2, 3, ""),
}

_SEP = re.compile(rb"[ \t\r\n]+")


@dataclass(frozen=True, slots=True)
class Modifiers:
    """U/L modifiers, parsed. Unknown letters end up in ``unknown`` (logged, ignored)."""

    asymmetric: bool | None = None   # A -> True, S -> False, neither -> None
    weak: bool = False               # W
    ipv6: bool = False               # 6
    bridge: str = ""                 # I/E letters in order
    ptime: int = 0                   # Z<ms>
    codecs: bytes = b""              # C<pt,...>
    local: bytes = b""               # L<addr> or L{label}
    remote: bytes = b""              # R<addr>
    new_port: bool = False           # N
    unknown: str = ""


def parse_modifiers(mods: str) -> Modifiers:
    """U/L modifiers as rtpproxy reads them; ProtocolError for a malformed value."""
    asym: bool | None = None
    weak = ipv6 = new_port = False
    bridge = unknown = ""
    ptime = 0
    codecs = local = remote = b""
    i, n = 0, len(mods)
    while i < n:
        c = mods[i].upper()
        i += 1
        if c == "A":
            asym = True
        elif c == "S":
            asym = False
        elif c == "W":
            weak = True
        elif c == "6":
            ipv6 = True
        elif c in "IE":
            bridge += c
        elif c == "N":
            new_port = True
        elif c == "Z":
            j = i
            while j < n and mods[j].isdigit():
                j += 1
            if j == i or not 0 < int(mods[i:j]) < 1000:
                raise ProtocolError(ECode.BAD_PTIME, f"bad Z modifier in {mods!r}")
            ptime, i = int(mods[i:j]), j
        elif c == "C":
            j = i
            while j < n and (mods[j].isdigit() or mods[j] == ","):
                j += 1
            if j == i:
                raise ProtocolError(ECode.BAD_CODECS, f"bad C modifier in {mods!r}")
            codecs, i = mods[i:j].encode(), j
        elif c in "LR":
            value, i = _modifier_address(mods, i)
            if not value:
                code = ECode.BAD_LOCAL_ADDR if c == "L" else ECode.BAD_REMOTE_ADDR
                raise ProtocolError(code, f"bad {c} modifier in {mods!r}")
            if c == "L":
                local = value
            else:
                remote = value
        else:
            unknown += mods[i - 1]
    return Modifiers(asym, weak, ipv6, bridge, ptime, codecs, local, remote, new_port,
                     unknown)


def _modifier_address(mods: str, i: int) -> tuple[bytes, int]:
    """An address after L/R: ``{label}``, ``[IPv6]``, or an IPv4 run of digits and dots."""
    if i < len(mods) and mods[i] in "{[":
        end = mods.find("}" if mods[i] == "{" else "]", i)
        if end < 0:
            return b"", i
        return mods[i + 1:end].encode(), end + 1
    j = i
    while j < len(mods) and (mods[j].isdigit() or mods[j] == "."):
        j += 1
    return mods[i:j].encode(), j


@dataclass(frozen=True, slots=True)
class Command:
    """One control command. Fields a command lacks stay empty; ``args`` holds the rest
    (VF's version, Q/G counter names, P/C operands)."""

    op: Op
    mods: str = ""
    callid: bytes = b""
    addr: bytes = b""
    port: bytes = b""
    from_tag: bytes = b""
    to_tag: bytes = b""
    notify_sock: bytes = b""
    notify_tag: bytes = b""
    args: tuple[bytes, ...] = ()
    cookie: bytes = b""

    @property
    def modifiers(self) -> Modifiers:
        return parse_modifiers(self.mods)


def _split_op(token: bytes) -> tuple[Op, str]:
    text = token.decode("ascii", "replace")
    head = text[:1].upper()
    if head == "V" and text[1:2].upper() == "F":
        return Op.VERSION_FEATURE, text[2:]
    for op in Op:
        if op.value == head:
            return op, text[1:]
    raise ProtocolError(ECode.UNKNOWN_COMMAND, f"unknown command {text[:16]!r}")


def split_cookie(data: bytes) -> tuple[bytes, bytes]:
    """(cookie, rest) of a datagram; the cookie is the first token."""
    data = data.lstrip(b" \t\r\n")
    m = _SEP.search(data)
    if m is None:
        return data, b""
    return data[:m.start()], data[m.end():]


def parse_command(data: bytes, *, cookie: bool = False) -> Command:
    """Parse one command (with its leading cookie when ``cookie``); ProtocolError."""
    ck = b""
    if cookie:
        ck, data = split_cookie(data)
    tokens = [t for t in _SEP.split(data) if t]
    if not tokens:
        raise ProtocolError(ECode.UNKNOWN_COMMAND, "empty command")
    op, mods = _split_op(tokens[0])
    syn = SYNTAX[op]
    args = tokens[1:]
    if not syn.min_args <= len(args) <= syn.max_args:
        raise ProtocolError(ECode.ARG_COUNT, f"{op.value}: {len(args)} arguments")
    if mods and syn.mods != "*" and any(c.upper() not in syn.mods for c in mods):
        raise ProtocolError(ECode.MODIFIERS, f"{op.value}: modifiers {mods!r}")
    if op in (Op.UPDATE, Op.LOOKUP):
        if syn.mods == "*":
            parse_modifiers(mods)  # malformed values are refused here, not at execution
        callid, addr, port, from_tag = args[:4]
        to_tag = args[4] if len(args) in (5, 7) else b""
        nsock = ntag = b""
        if len(args) == 6:      # U callid addr port from notify_sock notify_tag
            nsock, ntag = args[4], args[5]
        elif len(args) == 7:
            nsock, ntag = args[5], args[6]
        if not port.isdigit() or int(port) > 65535:
            raise ProtocolError(ECode.BAD_PORT, f"bad port {port[:8]!r}")
        _check_tags(from_tag, to_tag)
        return Command(op, mods, callid, addr, port, from_tag, to_tag, nsock, ntag, (), ck)
    if op in (Op.DELETE, Op.NOPLAY, Op.RECORD, Op.NORECORD):
        _check_tags(args[1], args[2] if len(args) > 2 else b"")
        return Command(op, mods, args[0], from_tag=args[1],
                       to_tag=args[2] if len(args) > 2 else b"", cookie=ck)
    if op is Op.QUERY:
        return Command(op, mods, args[0], from_tag=args[1],
                       to_tag=args[2] if len(args) > 2 else b"", args=tuple(args[3:]), cookie=ck)
    if op is Op.VERSION_FEATURE:
        if not args[0].isdigit():
            raise ProtocolError(ECode.BAD_VERSION, f"bad VF argument {args[0][:16]!r}")
        return Command(op, args=(args[0],), cookie=ck)
    if op is Op.PLAY:   # P callid prompt codecs from [to]
        return Command(op, mods, args[0], from_tag=args[3],
                       to_tag=args[4] if len(args) > 4 else b"", args=(args[1], args[2]),
                       cookie=ck)
    if op is Op.COPY:   # C callid target from [to]
        return Command(op, mods, args[0], from_tag=args[2],
                       to_tag=args[3] if len(args) > 3 else b"", args=(args[1],), cookie=ck)
    return Command(op, mods, args=tuple(args), cookie=ck)


def _check_tags(from_tag: bytes, to_tag: bytes) -> None:
    for tag in (from_tag, to_tag):
        head, sep, num = tag.rpartition(b";")
        if sep and (not head or not num.isdigit() or int(num) < 1):
            raise ProtocolError(ECode.BAD_TAG, f"bad stream number in tag {tag[:32]!r}")


def format_command(cmd: Command) -> bytes:
    """The wire form of ``cmd`` (with its cookie when it has one), ending in ``\\n``."""
    op = cmd.op
    parts: list[bytes] = [(op.value + cmd.mods).encode()]
    if op in (Op.UPDATE, Op.LOOKUP):
        parts += [cmd.callid, cmd.addr, cmd.port, cmd.from_tag]
        if cmd.to_tag:
            parts.append(cmd.to_tag)
        if cmd.notify_sock:
            parts += [cmd.notify_sock, cmd.notify_tag]
    elif op in (Op.DELETE, Op.NOPLAY, Op.RECORD, Op.NORECORD, Op.QUERY):
        parts += [cmd.callid, cmd.from_tag]
        if cmd.to_tag:
            parts.append(cmd.to_tag)
        parts += list(cmd.args)
    elif op is Op.PLAY:
        parts += [cmd.callid, *cmd.args, cmd.from_tag] + ([cmd.to_tag] if cmd.to_tag else [])
    elif op is Op.COPY:
        parts += [cmd.callid, *cmd.args, cmd.from_tag] + ([cmd.to_tag] if cmd.to_tag else [])
    else:
        parts += list(cmd.args)
    if cmd.cookie:
        parts.insert(0, cmd.cookie)
    return b" ".join(parts) + b"\n"


# -- replies ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Reply:
    """A reply, kept as text with the readings clients use."""

    text: bytes
    cookie: bytes = b""

    @property
    def is_error(self) -> bool:
        return self.text[:1] == b"E" and self.text[1:].split(b" ")[0].isdigit()

    @property
    def code(self) -> int | None:
        """The E-code of an error reply."""
        return int(self.text[1:].split(b" ")[0]) if self.is_error else None

    @property
    def port(self) -> int:
        """The port of a U/L reply; 0 for "0", errors and anything else."""
        first = self.text.split(b" ", 1)[0]
        return int(first) if first.isdigit() and int(first) <= 65535 else 0

    @property
    def ip(self) -> bytes:
        """The address a U/L reply names (b"" when the relay gave none)."""
        tokens = self.text.split()
        return tokens[1] if len(tokens) > 1 and not self.is_error else b""

    @property
    def ipv6(self) -> bool:
        tokens = self.text.split()
        return len(tokens) > 2 and tokens[2] == b"6"


def parse_reply(data: bytes, *, cookie: bool = False) -> Reply:
    ck = b""
    if cookie:
        ck, data = split_cookie(data)
    return Reply(data.rstrip(b"\r\n").rstrip(), ck)


def format_reply(text: bytes, cookie: bytes = b"") -> bytes:
    """``[cookie ]text\\n``."""
    return (cookie + b" " + text if cookie else text) + b"\n"


def port_reply(port: int, ip: str = "", ipv6: bool = False) -> bytes:
    """U/L reply text: ``port``, ``port ip`` or ``port ip 6``."""
    if not ip:
        return str(port).encode()
    return f"{port} {ip}{' 6' if ipv6 else ''}".encode()


def error_reply(code: ECode | int) -> bytes:
    return b"E%d" % int(code)


# -- the reply cache ----------------------------------------------------------------
@dataclass(slots=True)
class ReplyCache:
    """Replies by (peer, cookie) for ``ttl`` seconds: a retransmitted command gets the
    first answer again instead of running twice (a retried U must not allocate twice).
    """

    ttl: float = 30.0
    max_entries: int = 65536
    _entries: OrderedDict[tuple[object, bytes], tuple[float, bytes]] = field(
        default_factory=OrderedDict)
    hits: int = 0

    def get(self, peer: object, cookie: bytes, now: float) -> bytes | None:
        self.expire(now)
        hit = self._entries.get((peer, cookie))
        if hit is None:
            return None
        self.hits += 1
        return hit[1]

    def put(self, peer: object, cookie: bytes, reply: bytes, now: float) -> None:
        key = (peer, cookie)
        self._entries.pop(key, None)
        self._entries[key] = (now + self.ttl, reply)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, (deadline, _) = next(iter(entries.items()))
            if deadline > now:
                break
            del entries[key]

    def __len__(self) -> int:
        return len(self._entries)
