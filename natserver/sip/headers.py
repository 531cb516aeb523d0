"""SIP header names and the parsers of header values.

One table, :data:`HEADERS`, declares every header natserver knows: its long name, its
compact form, whether its rows are comma lists that may be split, and which value parser
reads it. The :class:`Hdr` enum, the name -> Hdr map used by the boundary scan and the
parser dispatch (:data:`PARSERS`) are all derived from that table.

The value parsers work on the message buffer between two offsets and return objects
that keep their offsets into that buffer, so an edit can replace an exact span (a
Contact URI, the end of a Via's parameters). Inside a header span every CR/LF is part of
a folded line (the scan guarantees it), so the parsers treat CR and LF as white space and
never copy the value to unfold it first. Bad syntax raises ``SipError(400, "Bad <Name>
header")`` and nothing else.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from natserver.errors import SipError
from natserver.sip import digest
from natserver.sip.uri import Uri, parse_uri

# What a parser returns per header kind; ``None`` = the raw value is all there is.
VIA, NAME_ADDR, NAME_ADDRS, CSEQ, UINT, CALL_ID, CTYPE, TOKENS, CREDS, CHALLENGE = range(10)
TEXT = None

# (long name, compact form, comma list that may be split, value kind)
# Authorization & co. are never split (RFC 3261 7.3.1) even though they hold commas.
HEADERS: tuple[tuple[str, str | None, bool, int | None], ...] = (
    ("Via", "v", True, VIA),
    ("From", "f", False, NAME_ADDR),
    ("To", "t", False, NAME_ADDR),
    ("Call-ID", "i", False, CALL_ID),
    ("CSeq", None, False, CSEQ),
    ("Contact", "m", True, NAME_ADDRS),
    ("Max-Forwards", None, False, UINT),
    ("Content-Length", "l", False, UINT),
    ("Content-Type", "c", False, CTYPE),
    ("Route", None, True, NAME_ADDRS),
    ("Record-Route", None, True, NAME_ADDRS),
    ("Expires", None, False, UINT),
    ("Authorization", None, False, CREDS),
    ("Proxy-Authorization", None, False, CREDS),
    ("WWW-Authenticate", None, False, CHALLENGE),
    ("Proxy-Authenticate", None, False, CHALLENGE),
    ("User-Agent", None, False, TEXT),
    ("Server", None, False, TEXT),
    ("Supported", "k", True, TOKENS),
    ("Require", None, True, TOKENS),
    ("Proxy-Require", None, True, TOKENS),
    ("Unsupported", None, True, TOKENS),
    ("Allow", None, True, TOKENS),
    ("Event", "o", False, TEXT),
    ("Subject", "s", False, TEXT),
    ("Content-Encoding", "e", True, TOKENS),
    ("Refer-To", "r", False, NAME_ADDR),
    ("Referred-By", "b", False, NAME_ADDR),
    ("Allow-Events", "u", True, TOKENS),
    ("Session-Expires", "x", False, TEXT),
    ("Reject-Contact", "j", True, TEXT),
    ("Accept-Contact", "a", True, TEXT),
    ("Request-Disposition", "d", True, TOKENS),
    ("Identity", "y", False, TEXT),
    ("Identity-Info", "n", False, TEXT),
    ("Min-Expires", None, False, UINT),
    ("Retry-After", None, False, TEXT),
    ("Path", None, True, NAME_ADDRS),
    ("P-Registrar-Error", None, False, TEXT),
    ("Date", None, False, TEXT),
    ("Timestamp", None, False, TEXT),
    ("Organization", None, False, TEXT),
    ("Priority", None, False, TEXT),
    ("Accept", None, True, TEXT),
    ("Accept-Encoding", None, True, TEXT),
    ("Accept-Language", None, True, TEXT),
    ("Alert-Info", None, True, TEXT),
    ("Call-Info", None, True, TEXT),
    ("Error-Info", None, True, TEXT),
    ("In-Reply-To", None, True, TEXT),
    ("MIME-Version", None, False, TEXT),
    ("Reply-To", None, False, NAME_ADDR),
    ("Warning", None, True, TEXT),
)

# A known header; ``Hdr.OTHER`` for any other name. Member n is row n - 1 of HEADERS.
Hdr = enum.IntEnum(  # type: ignore[misc]
    "Hdr",
    [("OTHER", 0)] + [(n.upper().replace("-", "_"), i) for i, (n, *_) in enumerate(HEADERS, 1)],
    module=__name__,
)

LONG_NAMES: dict[int, bytes] = {Hdr.OTHER: b""}
COMPACT: dict[int, bytes | None] = {Hdr.OTHER: None}
IS_LIST: dict[int, bool] = {Hdr.OTHER: False}
KIND: dict[int, int | None] = {Hdr.OTHER: TEXT}
# Name as found on the wire -> Hdr. The spellings seen in practice are keys as they are,
# so the boundary scan lowers a name only for unusual spellings.
NAMES: dict[bytes, Hdr] = {}
for _member, (_name, _compact, _is_list, _kind) in zip(list(Hdr)[1:], HEADERS):
    _long = _name.encode()
    LONG_NAMES[_member] = _long
    COMPACT[_member] = _compact.encode() if _compact else None
    IS_LIST[_member] = _is_list
    KIND[_member] = _kind
    for _spelling in (_long, _long.lower(), _long.upper(), _long.title()):
        NAMES[_spelling] = _member
    if _compact:
        NAMES[_compact.encode()] = _member
        NAMES[_compact.upper().encode()] = _member
del _member, _name, _compact, _is_list, _kind, _long, _spelling


def lookup(name: bytes) -> Hdr:
    """The Hdr for a header name in any case, long or compact (``Hdr.OTHER`` if unknown)."""
    h = NAMES.get(name)
    if h is None:
        h = NAMES.get(name.lower(), Hdr.OTHER)
    return h


def bad(hdr: int) -> SipError:
    return SipError(400, f"Bad {LONG_NAMES[hdr].decode() or 'header'} header")


def missing(hdr: int) -> SipError:
    return SipError(400, f"Missing {LONG_NAMES[hdr].decode()} header")


# ---- shared lexical pieces ---------------------------------------------------------
# LWS inside a header span (folds keep their CRLF in the buffer).
W = rb"[ \t\r\n]*"
TOKEN = rb"[A-Za-z0-9\-.!%*_+`'~]+"
QUOTED = rb'"(?:[^"\\]|\\.)*+"'
# A parameter value: quoted, or anything up to the next separator (token, host, IPv6).
PVALUE = rb'(?:' + QUOTED + rb'|[^\x00-\x20\x7f;,"<>=]+)'
PARAMS = rb"(?:" + W + rb";" + W + TOKEN + rb"(?:" + W + rb"=" + W + PVALUE + rb")?)*+"

_PARAM = re.compile(rb";" + W + rb"(" + TOKEN + rb")(?:" + W + rb"=" + W + rb"(" + PVALUE
                    + rb"))?", re.S)
_UNESCAPE = re.compile(rb"\\(.)", re.S)


def unquote(value: bytes) -> bytes:
    """The contents of a quoted string with its escapes resolved (other values as is)."""
    if len(value) >= 2 and value[0] == 34 and value[-1] == 34:
        value = value[1:-1]
        return _UNESCAPE.sub(rb"\1", value) if b"\\" in value else value
    return value


def unfold(value: bytes) -> bytes:
    """A header value with each fold (the white space around a line break) turned into
    one space. Split, not a regex: ``[ \t]*\r?\n`` retried at every blank of a long
    run is quadratic (37 s for 60 kB)."""
    if b"\n" not in value:
        return value
    return b" ".join([p for p in (p.strip(b" \t\r") for p in value.split(b"\n")) if p])


def parse_params(buf: bytes, start: int, end: int) -> dict[str, str | None]:
    """``;name[=value]`` parameters between two offsets (already checked by a caller's
    regex): lower-case names -> values as written (quotes kept; None when there is no
    ``=``), the first of a repeated name wins."""
    params: dict[str, str | None] = {}
    if start == end:
        return params
    for name, value in _PARAM.findall(buf, start, end):
        key = _PARAM_NAMES.get(name) or name.decode("ascii").lower()
        if key not in params:
            params[key] = value.decode("latin-1") if value else None
    return params


def param_spans(buf: bytes, start: int, end: int) -> dict[str, tuple[int, int]]:
    """Where each parameter's ``;name[=value]`` text is (first of a name wins)."""
    spans: dict[str, tuple[int, int]] = {}
    for m in _PARAM.finditer(buf, start, end):
        spans.setdefault(m.group(1).decode("ascii").lower(), m.span())
    return spans


# Parameter names seen on nearly every message, already decoded.
_PARAM_NAMES = {n.encode(): n for n in (
    "branch", "rport", "received", "tag", "lr", "transport", "expires", "q", "maddr",
    "ttl", "user", "ftag", "rinstance", "ob", "reg-id", "+sip.instance")}


# ---- Via ----------------------------------------------------------------------------
class Via:
    """One Via value. ``start``/``end`` span it in the buffer (``end`` is also where a new
    parameter such as ``;received=`` goes: ``params_end``); ``rport``/``received`` are
    None when absent and "" when present without a value; ``spans`` locates each
    parameter's ``;name=value`` text so an edit can replace it (found on first use and
    kept: every local reply to a request with ``rport`` needs them)."""

    __slots__ = ("transport", "host", "port", "params", "branch", "received", "rport",
                 "start", "end", "params_start", "buf", "_spans")

    def __init__(self, transport: str, host: str, port: int | None,
                 params: dict[str, str | None], branch: str | None, received: str | None,
                 rport: str | None, start: int, end: int, params_start: int,
                 buf: bytes) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params
        self.branch = branch
        self.received = received
        self.rport = rport
        self.start = start
        self.end = end
        self.params_start = params_start
        self.buf = buf
        self._spans: dict[str, tuple[int, int]] | None = None

    def _key(self) -> tuple:
        return (self.transport, self.host, self.port, self.params, self.branch, self.received,
                self.rport, self.start, self.end, self.params_start)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Via) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Via(transport={self.transport!r}, host={self.host!r}, port={self.port!r}, "
                f"params={self.params!r}, start={self.start}, end={self.end})")

    @property
    def params_end(self) -> int:
        return self.end

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def spans(self) -> dict[str, tuple[int, int]]:
        spans = self._spans
        if spans is None:
            spans = self._spans = param_spans(self.buf, self.params_start, self.end)
        return spans

    def sent_by(self) -> tuple[str, int]:
        """The sent-by address with the default port (5060) filled in."""
        return self.host, self.port if self.port is not None else 5060


_VIA = re.compile(
    W + rb"(" + TOKEN + rb")" + W + rb"/" + W + TOKEN + W + rb"/" + W + rb"(" + TOKEN + rb")"
    + rb"[ \t\r\n]+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)"
    + rb"(?:" + W + rb":" + W + rb"([0-9]{1,5}))?"
    + rb"(" + PARAMS + rb")" + W, re.S)


def parse_vias(buf: bytes, start: int, end: int) -> list[Via]:
    """Every Via value in one header row."""
    out: list[Via] = []
    pos = start
    while True:
        m = _VIA.match(buf, pos, end)
        if m is None:
            raise bad(Hdr.VIA)
        proto, transport, host, port, params_text = m.groups()
        if proto != b"SIP" and proto.upper() != b"SIP":
            raise bad(Hdr.VIA)
        if host[0] == 91:  # '[' IPv6 reference
            host = host[1:-1]
        if port is not None:
            port = int(port)
            if port > 65535:
                raise bad(Hdr.VIA)
        ps, pe = m.span(5)
        if params_text:
            params = parse_params(buf, ps, pe)
            get = params.get
            # a bare ";rport" (or ";received") reads "" so that None means absent
            received = get("received")
            if received is None and "received" in params:
                received = ""
            rport = get("rport")
            if rport is None and "rport" in params:
                rport = ""
            branch = get("branch")
        else:
            params = {}
            branch = received = rport = None
        out.append(Via(transport.decode("ascii").upper(), host.decode("ascii").lower(), port,
                       params, branch, received, rport, m.start(1), pe, ps, buf))
        pos = m.end()
        if pos >= end:
            return out
        if buf[pos] != 44:  # ','
            raise bad(Hdr.VIA)
        pos += 1


# ---- name-addr (From, To, Contact, Route, Record-Route...) ----------------------------
class NameAddr:
    """``[display] <uri>;params`` or ``uri;params``: one value of a name-addr header.
    ``start``/``end`` span the value (``end`` = ``params_end``, where a new parameter
    goes), ``uri_start``/``uri_end`` the URI text.

    ``uri`` is parsed on first use (and raises ``SipError`` then), so a Contact with a
    scheme natserver does not route (``mailto:``) still gives its text and params.
    """

    __slots__ = ("display", "uri_text", "uri_start", "uri_end", "params", "tag", "start",
                 "end", "params_start", "_buf", "_uri")

    def __init__(self, display: str | None, uri_text: bytes, uri_start: int, uri_end: int,
                 params: dict[str, str | None], start: int, end: int, params_start: int,
                 buf: bytes) -> None:
        self.display = display
        self.uri_text = uri_text
        self.uri_start = uri_start
        self.uri_end = uri_end
        self.params = params
        self.tag = params.get("tag") if params else None
        self.start = start
        self.end = end
        self.params_start = params_start
        self._buf = buf
        self._uri: Uri | None = None

    @property
    def params_end(self) -> int:
        return self.end

    @property
    def spans(self) -> dict[str, tuple[int, int]]:
        return param_spans(self._buf, self.params_start, self.end)

    @property
    def uri(self) -> Uri:
        if self._uri is None:
            self._uri = parse_uri(self.uri_text)
        return self._uri

    @property
    def expires(self) -> int | None:
        """The ``expires`` parameter as a number; None when absent or not a number."""
        value = self.params.get("expires")
        return int(value) if value is not None and value.isdigit() and len(value) <= 10 else None

    def __repr__(self) -> str:
        return f"NameAddr({self.display!r}, {self.uri_text!r}, {self.params!r})"


_NAME_ADDR = re.compile(
    W + rb"((?:(" + QUOTED + rb")|((?:[A-Za-z0-9\-.!%*_+`'~\x80-\xff]+[ \t\r\n]*)*+))"
    + W + rb"<" + W + rb"([^<>\x00-\x20]*)" + W + rb">"
    + rb"|([^\x00-\x20;,<>\"]+))"
    + rb"(" + PARAMS + rb")" + W, re.S)
_STAR = re.compile(W + rb"\*" + W)


def _name_addr(buf: bytes, m: re.Match[bytes]) -> NameAddr:
    _, quoted, tokens, uri, spec, params_text = m.groups()
    if quoted is not None:
        display: str | None = unquote(quoted).decode("utf-8", "replace")
    elif tokens:
        display = b" ".join(tokens.split()).decode("utf-8", "replace")
    else:
        display = None
    if uri is not None:
        us, ue = m.span(4)
    else:
        uri = spec
        us, ue = m.span(5)
    ps, pe = m.span(6)
    params = parse_params(buf, ps, pe) if params_text else {}
    return NameAddr(display, uri, us, ue, params, m.start(1), pe, ps, buf)


def parse_name_addrs(buf: bytes, start: int, end: int, hdr: int,
                     star: list[bool] | None = None) -> list[NameAddr]:
    """Every name-addr value in one row. With ``star`` (Contact), a ``*`` value sets
    ``star[0]`` instead of raising."""
    out: list[NameAddr] = []
    pos = start
    rx = _NAME_ADDR
    while True:
        m = _STAR.match(buf, pos, end) if star is not None else None
        if m is not None and (m.end() >= end or buf[m.end()] == 44):
            star[0] = True  # type: ignore[index]
        else:
            m = rx.match(buf, pos, end)
            if m is None:
                raise bad(hdr)
            out.append(_name_addr(buf, m))
        pos = m.end()
        if pos >= end:
            return out
        if buf[pos] != 44:
            raise bad(hdr)
        pos += 1


def parse_name_addr(buf: bytes, start: int, end: int, hdr: int) -> NameAddr:
    """The single name-addr of a From/To-like header."""
    m = _NAME_ADDR.match(buf, start, end)
    if m is None or m.end() < end:
        raise bad(hdr)
    return _name_addr(buf, m)


@dataclass(slots=True)
class Contacts:
    """All Contact values of a message; ``star`` when one of them is ``*``."""

    star: bool
    items: list[NameAddr]


# ---- small values ---------------------------------------------------------------------
class CSeq(NamedTuple):
    """A tuple: a frozen dataclass costs a setattr call per field for every message."""

    num: int
    method: bytes


_CSEQ = re.compile(W + rb"([0-9]{1,10})[ \t\r\n]+(" + TOKEN + rb")" + W)


def parse_cseq(buf: bytes, start: int, end: int) -> CSeq:
    m = _CSEQ.fullmatch(buf, start, end)
    if m is None:
        raise bad(Hdr.CSEQ)
    num = int(m.group(1))
    if num >= 1 << 31:
        raise bad(Hdr.CSEQ)
    return CSeq(num, m.group(2))


def parse_uint(buf: bytes, start: int, end: int, hdr: int) -> int:
    """A header that is one number (Max-Forwards, Content-Length, Expires)."""
    value = buf[start:end].strip()
    if not value.isdigit() or len(value) > 10:
        raise bad(hdr)
    return int(value)


_CALL_ID = re.compile(W + rb"([!-~\x80-\xff]+)" + W)


def parse_call_id(buf: bytes, start: int, end: int) -> bytes:
    m = _CALL_ID.fullmatch(buf, start, end)
    if m is None:
        raise bad(Hdr.CALL_ID)
    return m.group(1)


_CTYPE = re.compile(W + rb"(" + TOKEN + rb")" + W + rb"/" + W + rb"(" + TOKEN + rb")"
                    + rb"(" + PARAMS + rb")" + W, re.S)


def parse_content_type(buf: bytes, start: int, end: int) -> bytes:
    """``type/subtype``, lower-cased, parameters dropped."""
    m = _CTYPE.fullmatch(buf, start, end)
    if m is None:
        raise bad(Hdr.CONTENT_TYPE)
    return m.group(1).lower() + b"/" + m.group(2).lower()


# The whole list checked by one regex (possessive: no backtracking), then split on commas.
_TOKEN_LIST = re.compile(W + TOKEN + rb"+" + W + rb"+(?:," + W + rb"+" + TOKEN + rb"+" + W
                         + rb"+)*+")


def parse_tokens(buf: bytes, start: int, end: int, hdr: int) -> list[str]:
    """A comma list of tokens (Supported, Require, Allow...), lower-cased."""
    if _TOKEN_LIST.fullmatch(buf, start, end) is None:
        if not buf[start:end].strip():
            return []  # "Supported:" with nothing is allowed
        raise bad(hdr)
    return [t.strip() for t in buf[start:end].decode("ascii").lower().split(",")]


# Value kind (the table's last column) -> parser(buf, start, end, hdr).
PARSERS: dict[int | None, Callable[[bytes, int, int, int], Any]] = {
    VIA: lambda b, s, e, h: parse_vias(b, s, e),
    NAME_ADDR: parse_name_addr,
    NAME_ADDRS: parse_name_addrs,
    CSEQ: lambda b, s, e, h: parse_cseq(b, s, e),
    UINT: parse_uint,
    CALL_ID: lambda b, s, e, h: parse_call_id(b, s, e),
    CTYPE: lambda b, s, e, h: parse_content_type(b, s, e),
    TOKENS: parse_tokens,
    CREDS: lambda b, s, e, h: digest.parse_credentials(b, s, e, LONG_NAMES[h].decode()),
    CHALLENGE: lambda b, s, e, h: digest.parse_challenge(b, s, e, LONG_NAMES[h].decode()),
    TEXT: lambda b, s, e, h: unfold(b[s:e].strip()),
}


def parse_value(buf: bytes, start: int, end: int, hdr: int) -> Any:
    """Parse one header row's value by the kind the table gives its header."""
    return PARSERS[KIND[hdr]](buf, start, end, hdr)
