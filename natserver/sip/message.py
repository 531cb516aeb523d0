"""A SIP message over one immutable ``bytes`` buffer (SER's struct sip_msg, lazily).

:meth:`Message.parse` reads the first line, finds every header line's boundaries once
(one ``(hdr, start, colon, end)`` row per header, no objects), and locates the body by
Content-Length. Everything else is parsed on first access and cached: the ``vias``,
``to``, ``cseq``... views, and the :class:`HeaderField` objects themselves. Every parsed
value keeps its offsets in ``buf``, so changes are recorded as splices
(:mod:`natserver.sip.edits`) and the buffer is never copied or modified.

Bad input raises :class:`~natserver.errors.SipError` and nothing else: at parse time for
the framing (first line, header lines, Content-Length), at access time for a value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from natserver.errors import SipError
from natserver.sip import digest
from natserver.sip.headers import (
    LONG_NAMES, NAMES, TOKEN, Contacts, CSeq, Hdr, NameAddr, Via, bad, lookup, missing,
    parse_call_id, parse_content_type, parse_cseq, parse_name_addr, parse_name_addrs,
    parse_tokens, parse_uint, parse_value, parse_vias, unfold,
)
from natserver.sip.uri import SCHEMES, Uri, parse_uri

_REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([^\x00-\x20\x7f]+) ([A-Za-z]+/[0-9]+\.[0-9]+)")
_STATUS_LINE = re.compile(rb"([Ss][Ii][Pp]/[0-9]+\.[0-9]+) ([1-6][0-9][0-9])"
                          rb"(?:[ \t]([^\x00-\x08\x0a-\x1f\x7f]*))?")
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*")
_TOKEN = re.compile(TOKEN)
# A header line and its folded continuation lines: (name, rest after the colon). Anchored
# at line starts and possessive, so a line without a colon costs one pass, not one pass
# per byte (a 60 kB colon-less line took 28 s unanchored).
_HEADER_LINE = re.compile(rb"^([^:\r\n \t][^:\r\n]*+):([^\n]*\n(?:[ \t][^\n]*\n)*)", re.M)
_CL = Hdr.CONTENT_LENGTH
_VIA = Hdr.VIA
_FROM = Hdr.FROM
_TO = Hdr.TO
_CALL_ID = Hdr.CALL_ID
_CSEQ = Hdr.CSEQ
_CONTACT = Hdr.CONTACT
_ROUTE = Hdr.ROUTE
_RECORD_ROUTE = Hdr.RECORD_ROUTE
_PATH = Hdr.PATH
_MAX_FORWARDS = Hdr.MAX_FORWARDS
_EXPIRES = Hdr.EXPIRES
_MIN_EXPIRES = Hdr.MIN_EXPIRES
_OTHER = Hdr.OTHER
_CTYPE = Hdr.CONTENT_TYPE
_FOLD = (32, 9)  # a line starting with SP or HT continues the one before
_BLANK = b" \t\r\n\x0b\x0c"  # what bytes.strip() removes

Row = tuple[int, int, int, int]  # (hdr, line start, colon, line end incl. terminator)
T = TypeVar("T")


class cached_property(Generic[T]):  # noqa: N801 - reads like functools.cached_property
    """functools.cached_property without the lock Python 3.11 takes on every first access
    (a message belongs to one thread). Computed once, then found in the instance dict;
    an exception caches nothing."""

    def __init__(self, func: Callable[[Any], T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, cls: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]
        value = obj.__dict__[self.name] = self.func(obj)
        return value


class HeaderField:
    """One header row: ``start``/``end`` span the whole line(s) with the terminator and
    any folded continuation; ``vstart``/``vend`` the value, trimmed; ``value`` is the value
    with folds turned into single spaces."""

    __slots__ = ("hdr", "name", "start", "end", "vstart", "vend", "_buf")

    def __init__(self, buf: bytes, hdr: Hdr, start: int, colon: int, end: int) -> None:
        self._buf = buf
        self.hdr = hdr
        self.name = buf[start:colon] if buf[colon - 1] not in b" \t" else \
            buf[start:colon].rstrip(b" \t")
        self.start = start
        self.end = end
        # "Name: value<CRLF>" by index, without copying the line; blanks to trim at either
        # end (or an empty value) take the strips
        v = colon + 2 if buf[colon + 1] == 32 else colon + 1
        e = end - 2 if buf[end - 2] == 13 else end - 1
        if v < e and buf[v] not in _BLANK and buf[e - 1] not in _BLANK:
            self.vstart = v
            self.vend = e
        else:
            raw = buf[colon + 1:end]
            lead = raw.lstrip()
            self.vstart = colon + 1 + len(raw) - len(lead)
            self.vend = self.vstart + len(lead.rstrip())

    @property
    def value(self) -> bytes:
        return unfold(self._buf[self.vstart:self.vend])

    def __repr__(self) -> str:
        return f"HeaderField({self.name!r}: {self.value!r})"


class Message:
    """A parsed SIP request or reply. Build one with :meth:`Message.parse`.

    Attributes set at parse: ``buf``, ``is_request``, ``method`` (``b""`` in replies),
    ``ruri`` with ``ruri_start``/``ruri_end``, ``status`` (0 in requests), ``reason``,
    ``first_line_end`` (offset of the first header line), ``headers_end`` (offset of the
    empty line), ``body_start``, ``body_end`` and ``content_length``.
    """

    def __init__(self, buf: bytes, is_request: bool, method: bytes, ruri: bytes,
                 ruri_start: int, status: int, reason: bytes, first_line_end: int,
                 rows: list[Row], first: dict[int, Row], headers_end: int, body_start: int,
                 body_end: int, content_length: int | None, cl_rows: list[Row]) -> None:
        self.buf = buf
        self.is_request = is_request
        self.method = method
        self.ruri = ruri
        self.ruri_start = ruri_start
        self.ruri_end = ruri_start + len(ruri)
        self.status = status
        self.reason = reason
        self.first_line_end = first_line_end
        self.rows = rows  # (hdr, line start, colon, line end) per header row
        self._first = first  # hdr -> its first row
        self.headers_end = headers_end
        self.body_start = body_start
        self.body_end = body_end
        self.content_length = content_length
        self.cl_rows = cl_rows  # the Content-Length rows (the builders rewrite them)
        self._fields: dict[int, HeaderField] = {}  # row start -> field, made on demand

    @classmethod
    def parse(cls, buf: bytes, max_len: int = 65535) -> Message:
        """Parse the framing of one datagram; ``SipError`` when it is not a SIP message."""
        return _parse(cls, buf, max_len)

    def __repr__(self) -> str:
        if self.is_request:
            return f"<Message {self.method.decode('latin-1')} {self.ruri.decode('latin-1')}>"
        return f"<Message {self.status} {self.reason.decode('latin-1')}>"

    # ---- header rows --------------------------------------------------------------------
    def field(self, row: Row) -> HeaderField:
        """The HeaderField of one of ``rows`` (made once)."""
        f = self._fields.get(row[1])
        if f is None:
            h, s, c, e = row
            f = self._fields[s] = HeaderField(self.buf, h, s, c, e)  # type: ignore[arg-type]
        return f

    _field = field

    def first_row(self, hdr: Hdr) -> Row | None:
        """The first row of a known header, None when absent."""
        return self._first.get(hdr)

    @cached_property
    def hdrs(self) -> list[HeaderField]:
        """Every header row, in order."""
        return [self._field(r) for r in self.rows]

    def get(self, hdr: Hdr) -> HeaderField | None:
        """The first row of a known header, None when absent."""
        row = self._first.get(hdr)
        return None if row is None else self._field(row)

    def get_all(self, hdr: Hdr) -> list[HeaderField]:
        return [self._field(r) for r in self.rows if r[0] == hdr]

    def find(self, name: bytes | str) -> HeaderField | None:
        """The first row called ``name`` (any case; compact forms resolved)."""
        if isinstance(name, str):
            name = name.encode("latin-1")
        h = lookup(name)
        if h != _OTHER:
            return self.get(h)
        low = name.lower()
        for row in self.rows:
            if row[0] == _OTHER and self.buf[row[1]:row[2]].rstrip(b" \t").lower() == low:
                return self._field(row)
        return None

    def find_all(self, name: bytes | str) -> list[HeaderField]:
        """Every row called ``name`` (any case; compact forms resolved)."""
        if isinstance(name, str):
            name = name.encode("latin-1")
        h = lookup(name)
        if h != _OTHER:
            return self.get_all(h)
        low = name.lower()
        return [self._field(r) for r in self.rows
                if r[0] == _OTHER and self.buf[r[1]:r[2]].rstrip(b" \t").lower() == low]

    def _spans(self, hdr: Hdr) -> list[tuple[int, int]]:
        """``(value start, line end)`` of every row of ``hdr``: what the parsers read."""
        return [(r[2] + 1, r[3]) for r in self.rows if r[0] == hdr]

    def parsed(self, field: HeaderField) -> Any:
        """A row's value parsed by the header table's parser for it (raw bytes for text)."""
        return parse_value(self.buf, field.vstart, field.vend, field.hdr)

    # ---- parsed views -------------------------------------------------------------------
    def _top_via_row(self) -> list[Via]:
        """The values of the first Via row, parsed once for ``via1`` and ``vias``."""
        top = self.__dict__.get("_top_vias")
        if top is None:
            row = self._first.get(_VIA)
            if row is None:
                raise missing(_VIA)
            top = self.__dict__["_top_vias"] = parse_vias(self.buf, row[2] + 1, row[3])
        return top

    @cached_property
    def vias(self) -> list[Via]:
        """Every Via value of every Via row, top first."""
        first = self._first.get(_VIA)
        if first is None:
            return []
        out = list(self._top_via_row())
        buf = self.buf
        for h, s, c, e in self.rows:
            if h is _VIA and s != first[1]:
                out += parse_vias(buf, c + 1, e)
        return out

    @cached_property
    def via1(self) -> Via:
        """The top Via (only the first row is parsed)."""
        return self._top_via_row()[0]

    @cached_property
    def from_(self) -> NameAddr:
        row = self._first.get(_FROM)
        if row is None:
            raise missing(_FROM)
        return parse_name_addr(self.buf, row[2] + 1, row[3], _FROM)

    @cached_property
    def to(self) -> NameAddr:
        row = self._first.get(_TO)
        if row is None:
            raise missing(_TO)
        return parse_name_addr(self.buf, row[2] + 1, row[3], _TO)

    @cached_property
    def call_id(self) -> bytes:
        row = self._first.get(_CALL_ID)
        if row is None:
            raise missing(_CALL_ID)
        return parse_call_id(self.buf, row[2] + 1, row[3])

    @cached_property
    def cseq(self) -> CSeq:
        row = self._first.get(_CSEQ)
        if row is None:
            raise missing(_CSEQ)
        return parse_cseq(self.buf, row[2] + 1, row[3])

    @cached_property
    def contacts(self) -> Contacts:
        star = [False]
        items: list[NameAddr] = []
        for s, e in self._spans(_CONTACT):
            items += parse_name_addrs(self.buf, s, e, _CONTACT, star)
        return Contacts(star[0], items)

    def name_addrs(self, hdr: Hdr) -> list[NameAddr]:
        """Every name-addr value over all rows of ``hdr`` (Route, Path, Refer-To...)."""
        out: list[NameAddr] = []
        for s, e in self._spans(hdr):
            out += parse_name_addrs(self.buf, s, e, hdr)
        return out

    @cached_property
    def routes(self) -> list[NameAddr]:
        return self.name_addrs(_ROUTE)

    @cached_property
    def record_routes(self) -> list[NameAddr]:
        return self.name_addrs(_RECORD_ROUTE)

    @cached_property
    def paths(self) -> list[NameAddr]:
        return self.name_addrs(_PATH)

    def _uint(self, hdr: Hdr) -> int | None:
        row = self._first.get(hdr)
        return None if row is None else parse_uint(self.buf, row[2] + 1, row[3], hdr)

    @cached_property
    def max_forwards(self) -> int | None:
        return self._uint(_MAX_FORWARDS)

    @cached_property
    def expires(self) -> int | None:
        return self._uint(_EXPIRES)

    @cached_property
    def min_expires(self) -> int | None:
        return self._uint(_MIN_EXPIRES)

    @cached_property
    def content_type(self) -> bytes | None:
        """``type/subtype`` in lower case, parameters dropped; None when absent."""
        row = self._first.get(_CTYPE)
        return None if row is None else parse_content_type(self.buf, row[2] + 1, row[3])

    @cached_property
    def body(self) -> bytes:
        return self.buf[self.body_start:self.body_end]

    @cached_property
    def parsed_ruri(self) -> Uri:
        """The Request-URI, parsed (``SipError(400, "Bad Request-URI")`` when broken)."""
        try:
            return parse_uri(self.ruri)
        except SipError as exc:
            if exc.status == 416:
                raise
            raise SipError(400, "Bad Request-URI") from None

    def tokens(self, hdr: Hdr) -> list[str]:
        """All tokens of a token-list header over all its rows (Require, Supported...),
        lower-case."""
        out: list[str] = []
        for s, e in self._spans(hdr):
            out += parse_tokens(self.buf, s, e, hdr)
        return out

    def authorizations(self, hdr: Hdr = Hdr.AUTHORIZATION) -> list[digest.Credentials]:
        """The credentials in every ``Authorization`` (or ``Proxy-Authorization``) row,
        each knowing its header line's span (``hdr_start``/``hdr_end``)."""
        cache = self.__dict__.setdefault("_creds", {})
        found = cache.get(hdr)
        if found is None:
            if hdr not in (Hdr.AUTHORIZATION, Hdr.PROXY_AUTHORIZATION):
                raise ValueError(f"{hdr!r} carries no credentials")
            found = []
            name = LONG_NAMES[hdr].decode()
            for _, s, c, e in [r for r in self.rows if r[0] == hdr]:
                creds = digest.parse_credentials(self.buf, c + 1, e, name)
                creds.hdr_start, creds.hdr_end = s, e
                found.append(creds)
            cache[hdr] = found
        return found

    def challenges(self, hdr: Hdr = Hdr.WWW_AUTHENTICATE) -> list[digest.Challenge]:
        """The challenges of every ``WWW-Authenticate`` (``Proxy-Authenticate``) row."""
        if hdr not in (Hdr.WWW_AUTHENTICATE, Hdr.PROXY_AUTHENTICATE):
            raise ValueError(f"{hdr!r} carries no challenges")
        name = LONG_NAMES[hdr].decode()
        return [digest.parse_challenge(self.buf, s, e, name) for s, e in self._spans(hdr)]

    def validate_request(self) -> None:
        """Check what every request must carry (RFC 3261 8.1.1; Max-Forwards is added by
        the proxy when missing): Via, From, To, Call-ID, CSeq with the request's method."""
        if not self.vias:
            raise missing(_VIA)
        _ = self.from_, self.to, self.call_id
        if self.cseq.method != self.method:
            raise SipError(400, "CSeq method does not match the request method")


def _header_name(name: bytes) -> Hdr:
    """The Hdr of a name not spelled as in the NAMES table (or OTHER), checked."""
    name = name.rstrip(b" \t")
    h = NAMES.get(name) or NAMES.get(name.lower())
    if h is None:
        if not _TOKEN.fullmatch(name):
            raise SipError(400, "Bad header name")
        h = _OTHER
    return h


def _scan_fault(buf: bytes, start: int, end: int) -> None:
    """Raise the error for the first header line the fast scan could not take."""
    seen = False
    for line in buf[start:end].split(b"\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            if not seen:
                raise SipError(400, "Bad header folding")
        elif line.find(b":") <= 0:
            raise SipError(400, "Bad header line")
        seen = True
    raise SipError(400, "Bad header line")  # a CR inside a header name


Scan = tuple[list[Row], dict[int, Row], list[Row]]  # rows, first row per hdr, Content-Length rows


def _scan_plain(buf: bytes, start: int, end: int) -> Scan | None:
    """The header rows of a block where every line ends in CRLF, none is folded and every
    name is a known spelling or a plain token: what nearly every UA sends. A split and one
    dict lookup per line, without the regex scan's copy of every value: 6-8 % less per
    parse of a 13-header INVITE. None for anything else, which :func:`_scan_careful`
    reads (and refuses with the same errors as ever)."""
    lines = buf[start:end].split(b"\r\n")
    if buf.count(b"\n", start, end) != len(lines) - 1:
        return None  # a line ends in a bare LF
    lines.pop()  # the block ends with CRLF: the last item is empty
    rows: list[Row] = []
    first: dict[int, Row] = {}
    cl_rows: list[Row] = []
    get = NAMES.get
    append = rows.append
    setdefault = first.setdefault
    p = start
    for line in lines:
        c = line.find(b":")
        if c <= 0:
            return None
        h = get(line[:c])
        if h is None:
            name = line[:c]
            if line[0] in _FOLD or b"\r" in name:
                return None
            h = _header_name(name)
        e = p + len(line) + 2
        row = (h, p, p + c, e)
        append(row)
        setdefault(h, row)
        if h is _CL:
            cl_rows.append(row)
        p = e
    return rows, first, cl_rows


def _scan_careful(buf: bytes, start: int, end: int) -> Scan:
    """The header rows of any block: bare-LF line ends, folded lines, odd names."""
    rows: list[Row] = []
    first: dict[int, Row] = {}
    cl_rows: list[Row] = []
    # One findall over the block; each match is a line plus its folded continuations.
    # Anything it skips (a line without a colon, a fold with nothing before it) makes
    # the offsets fall short of headers_end: the careful scan then names the fault.
    p = start
    get = NAMES.get
    append = rows.append
    setdefault = first.setdefault
    for name, rest in _HEADER_LINE.findall(buf, start, end):
        colon = p + len(name)
        e = colon + 1 + len(rest)
        h = get(name)
        if h is None:
            h = _header_name(name)
        row = (h, p, colon, e)
        append(row)
        setdefault(h, row)
        if h is _CL:
            cl_rows.append(row)
        p = e
    if p != end:
        _scan_fault(buf, start, end)
    return rows, first, cl_rows


def _parse(cls: type[Message], buf: bytes, max_len: int) -> Message:
    if type(buf) is not bytes:  # a bytearray/memoryview from recv_into: names must hash
        buf = bytes(buf)
    n = len(buf)
    if n > max_len:
        raise SipError(513, "Message Too Large")
    pos = 0
    while pos < n and buf[pos] in b"\r\n":  # RFC 3261 7.5: ignore CRLFs before the start line
        pos += 1
    nl = buf.find(b"\n", pos)
    if nl < 0:
        raise SipError(400, "Bad first line")
    line_end = nl - 1 if buf[nl - 1] == 13 else nl
    if buf.find(b"\0", pos, line_end) >= 0:
        raise SipError(400, "NUL byte in the first line")
    first_line_end = nl + 1

    if buf.startswith(b"SIP/", pos) or buf[pos:pos + 4].upper() == b"SIP/":
        m = _STATUS_LINE.fullmatch(buf, pos, line_end)
        if m is None:
            raise SipError(400, "Bad status line")
        if m.group(1).upper() != b"SIP/2.0":
            raise SipError(505, "Version Not Supported")
        is_request = False
        method = ruri = b""
        ruri_start = 0
        status = int(m.group(2))
        reason = m.group(3) or b""
    else:
        m = _REQUEST_LINE.fullmatch(buf, pos, line_end)
        if m is None:
            raise SipError(400, "Bad request line")
        version = m.group(3).upper()
        if version != b"SIP/2.0":
            raise SipError(505 if version.startswith(b"SIP/") else 400,
                           "Version Not Supported" if version.startswith(b"SIP/")
                           else "Bad request line")
        is_request = True
        method = m.group(1)
        ruri = m.group(2)
        ruri_start = m.start(2)
        colon = ruri.find(b":")
        scheme = ruri[:colon].lower()
        if scheme not in SCHEMES:
            if colon > 0 and _SCHEME.fullmatch(scheme):
                raise SipError(416, "Unsupported URI Scheme")
            raise SipError(400, "Bad Request-URI")
        status = 0
        reason = b""

    # The empty line: the first "\n\r\n" or "\n\n" after the start line.
    if buf.startswith(b"\r\n", first_line_end) or buf.startswith(b"\n", first_line_end):
        headers_end = first_line_end
    else:
        k = buf.find(b"\n\r\n", first_line_end)
        j = buf.find(b"\n\n", first_line_end, n if k < 0 else k + 1)
        if j >= 0:
            k = j
        if k < 0:
            raise SipError(400, "Missing empty line after the headers")
        headers_end = k + 1
    body_start = headers_end + (2 if buf[headers_end] == 13 else 1)

    if headers_end > first_line_end:
        if buf.find(b"\0", first_line_end, headers_end) >= 0:
            raise SipError(400, "NUL byte in the headers")
        rows, first, cl_rows = (_scan_plain(buf, first_line_end, headers_end)
                                or _scan_careful(buf, first_line_end, headers_end))
    else:
        rows, first, cl_rows = [], {}, []

    # Content-Length is authoritative over UDP (RFC 3261 18.3): extra bytes are dropped.
    content_length = None
    body_end = n
    if cl_rows:
        for _, _, c, e in cl_rows:
            value = parse_uint(buf, c + 1, e, _CL)
            if content_length is not None and value != content_length:
                raise bad(_CL)
            content_length = value
        body_end = body_start + content_length  # type: ignore[operator]
        if body_end > n:
            raise SipError(400, "Content-Length larger than the body received")
    return cls(buf, is_request, method, ruri, ruri_start, status, reason, first_line_end,
               rows, first, headers_end, body_start, body_end, content_length, cl_rows)
