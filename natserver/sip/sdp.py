"""SDP bodies: where the addresses and ports are, and rewriting them for the relay.

:func:`parse` finds, as byte offsets into the body, the session-level ``c=``, each
``m=`` line (media, port, port count, proto, formats) with its own ``c=``,
``a=rtcp:`` (RFC 3605) and direction attribute, the ``o=`` address and nathelper's
``a=nortpproxy:yes`` marker. Nothing is copied or decoded beyond what is asked.

:func:`rewrite_edits` turns a parsed body plus the relay's address and ports into
splices ``(start, end, data)`` relative to the body (add the body's offset to use them
with ``natserver.sip.edits.Edits``); :func:`rewrite` applies them and returns the new
body. The rules are nathelper's ``force_rtp_proxy``:

- every ``c=`` of a relayed stream, session- and media-level, gets the relay address;
  a null address (``0.0.0.0``/``::``, old-style hold) stays null;
- ``IP4``/``IP6`` is switched when the relay address is of the other family;
- each relayed ``m=`` gets its relay port (``/n`` kept); port-0 streams are untouched;
- ``a=rtcp:`` becomes the relay port + 1 (and its address the relay's);
- ``o=`` is rewritten only on request (Kamailio's ``o`` flag);
- ``a=nortpproxy:yes`` is appended once.

Malformed SDP raises :class:`SdpError` (a ValueError) and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from natserver.sip.edits import Edits

MARKER = b"a=nortpproxy:yes"
DIRECTIONS = (b"sendrecv", b"sendonly", b"recvonly", b"inactive")
NULL_ADDRESSES = (b"0.0.0.0", b"::", b"0:0:0:0:0:0:0:0")


class SdpError(ValueError):
    """The body is not SDP natserver can work on; the message says where."""


@dataclass(frozen=True, slots=True)
class Address:
    """``<addrtype> <address>`` inside a c=, o= or a=rtcp: line, as offsets."""

    type_start: int      # start of "IP4"/"IP6"
    type_end: int
    start: int           # the address (without a /ttl suffix)
    end: int
    addrtype: bytes
    addr: bytes

    @property
    def is_null(self) -> bool:
        return self.addr in NULL_ADDRESSES


@dataclass(frozen=True, slots=True)
class Rtcp:
    port: int
    port_start: int
    port_end: int
    address: Address | None


@dataclass(frozen=True, slots=True)
class Media:
    index: int           # 1-based, the rtpproxy ;N
    line_start: int
    line_end: int        # end of the m= line (before its line break)
    media: bytes
    port: int
    port_start: int
    port_end: int
    nports: int | None
    proto: bytes
    fmts: tuple[bytes, ...]
    conn: Address | None
    rtcp: Rtcp | None
    direction: bytes | None   # the media's own attribute, if any
    rtcp_mux: bool


@dataclass(frozen=True, slots=True)
class Sdp:
    body: bytes
    session_conn: Address | None
    origin: Address | None
    media: tuple[Media, ...]
    nortpproxy: bool
    direction: bytes | None   # session-level attribute, if any
    eol: bytes                # the body's line break, for what is added

    def connection(self, m: Media) -> Address | None:
        """The c= that applies to a stream (its own, else the session's)."""
        return m.conn if m.conn is not None else self.session_conn

    def stream_direction(self, m: Media) -> bytes:
        return m.direction or self.direction or b"sendrecv"


def _lines(body: bytes):
    """(start, end) of each line's content; the break (CRLF or LF) excluded."""
    pos, n = 0, len(body)
    while pos < n:
        nl = body.find(b"\n", pos)
        end = n if nl < 0 else nl
        content_end = end - 1 if end > pos and body[end - 1:end] == b"\r" else end
        yield pos, content_end
        pos = n if nl < 0 else nl + 1


_TOKEN = re.compile(rb"[^ \t]+")


def _tokens(body: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """Spans of space-separated tokens in body[start:end]."""
    return [m.span() for m in _TOKEN.finditer(body, start, end)]


def _address(body: bytes, spans: list[tuple[int, int]], what: str, line: int) -> Address:
    """``IN <addrtype> <addr>`` from three token spans."""
    (n0, n1), (t0, t1), (a0, a1) = spans
    if body[n0:n1] != b"IN":
        raise SdpError(f"line {line}: {what} network type is not IN")
    addrtype = body[t0:t1].upper()
    if addrtype not in (b"IP4", b"IP6"):
        raise SdpError(f"line {line}: {what} address type {body[t0:t1][:8]!r}")
    slash = body.find(b"/", a0, a1)
    if slash >= 0:
        a1 = slash  # multicast /ttl/count stays as it is
    if a1 <= a0:
        raise SdpError(f"line {line}: {what} without an address")
    return Address(t0, t1, a0, a1, addrtype, body[a0:a1])


def parse(body: bytes) -> Sdp:
    """Offsets of everything nathelper rewrites; SdpError for malformed SDP."""
    if not body.strip():
        raise SdpError("empty body")
    eol = b"\r\n" if b"\r\n" in body else b"\n"
    session_conn = origin = None
    session_dir = None
    marker = False
    media: list[Media] = []
    cur: dict | None = None
    seen_v = False
    for lineno, (start, end) in enumerate(_lines(body), 1):
        if start == end or not body[start:end].strip():
            continue
        if end - start < 2 or body[start + 1:start + 2] != b"=" or not body[start:start + 1].isalpha():
            raise SdpError(f"line {lineno}: not a <type>=<value> line")
        kind = body[start:start + 1]
        if not seen_v:
            if kind != b"v":
                raise SdpError("the body does not start with v=")
            seen_v = True
            continue
        vstart = start + 2
        if kind == b"m":
            if cur is not None:
                media.append(_media(cur))
            cur = _parse_m(body, _tokens(body, vstart, end), start, end, lineno,
                           len(media) + 1)
        elif kind == b"c":
            spans = _tokens(body, vstart, end)
            if len(spans) != 3:
                raise SdpError(f"line {lineno}: c= needs 3 fields")
            conn = _address(body, spans, "c=", lineno)
            if cur is None:
                if session_conn is None:
                    session_conn = conn
            elif cur["conn"] is None:
                cur["conn"] = conn
        elif kind == b"o":
            spans = _tokens(body, vstart, end)
            if len(spans) != 6:
                raise SdpError(f"line {lineno}: o= needs 6 fields")
            origin = _address(body, spans[3:], "o=", lineno)
        elif kind == b"a":
            value = body[vstart:end]
            if value.startswith(MARKER[2:]):
                marker = True
            elif value in DIRECTIONS:
                if cur is None:
                    session_dir = value
                else:
                    cur["direction"] = value
            elif value.lower().startswith(b"rtcp:") and cur is not None:
                cur["rtcp"] = _parse_rtcp(body, vstart + 5, end, lineno)
            elif value.lower() == b"rtcp-mux" and cur is not None:
                cur["mux"] = True
    if not seen_v:
        raise SdpError("the body does not start with v=")
    if cur is not None:
        media.append(_media(cur))
    return Sdp(body, session_conn, origin, tuple(media), marker, session_dir, eol)


def _parse_m(body: bytes, spans: list[tuple[int, int]], start: int, end: int, lineno: int,
             index: int) -> dict:
    if len(spans) < 3:
        raise SdpError(f"line {lineno}: m= needs media, port and proto")
    (m0, m1), (p0, p1), (r0, r1) = spans[:3]
    port_text = body[p0:p1]
    nports = None
    slash = port_text.find(b"/")
    if slash >= 0:
        count = port_text[slash + 1:]
        if not count.isdigit():
            raise SdpError(f"line {lineno}: bad port count in m=")
        nports = int(count)
        p1 = p0 + slash
        port_text = port_text[:slash]
    if not port_text.isdigit() or int(port_text) > 65535:
        raise SdpError(f"line {lineno}: bad m= port {port_text[:8]!r}")
    return {"index": index, "line_start": start, "line_end": end, "media": body[m0:m1],
            "port": int(port_text), "port_start": p0, "port_end": p1, "nports": nports,
            "proto": body[r0:r1], "fmts": tuple(body[a:b] for a, b in spans[3:]),
            "conn": None, "rtcp": None, "direction": None, "mux": False}


def _media(d: dict) -> Media:
    return Media(d["index"], d["line_start"], d["line_end"], d["media"], d["port"],
                 d["port_start"], d["port_end"], d["nports"], d["proto"], d["fmts"],
                 d["conn"], d["rtcp"], d["direction"], d["mux"])


def _parse_rtcp(body: bytes, start: int, end: int, lineno: int) -> Rtcp:
    spans = _tokens(body, start, end)
    if not spans or not body[spans[0][0]:spans[0][1]].isdigit() \
            or int(body[spans[0][0]:spans[0][1]]) > 65535:
        raise SdpError(f"line {lineno}: bad a=rtcp: port")
    if len(spans) not in (1, 4):
        raise SdpError(f"line {lineno}: a=rtcp: needs a port and optionally IN IP4|IP6 addr")
    address = _address(body, spans[1:], "a=rtcp:", lineno) if len(spans) == 4 else None
    p0, p1 = spans[0]
    return Rtcp(int(body[p0:p1]), p0, p1, address)


def first_connection_address(body: bytes) -> bytes | None:
    """The address of the first ``c=`` line (nat_uac_test bit 8); None when there is no
    SDP or no usable c= line. Never raises."""
    for start, end in _lines(body):
        if body[start:start + 2] == b"c=":
            parts = body[start + 2:end].split()
            if len(parts) == 3:
                return parts[2].split(b"/")[0]
            return None
    return None


def rewrite_edits(sdp: Sdp, new_ip: str, ports: Sequence[int | None], *,
                  origin: bool = False, marker: bool = True) -> list[tuple[int, int, bytes]]:
    """Splices (start, end, data), relative to the body, that point the streams at the
    relay. ``ports[i]`` is the relay port of stream i+1 (None or missing: leave it)."""
    ip = new_ip.encode()
    family = b"IP6" if ":" in new_ip else b"IP4"
    edits: list[tuple[int, int, bytes]] = []

    def address(a: Address | None) -> None:
        if a is None or a.is_null:
            return
        if a.addrtype != family:
            edits.append((a.type_start, a.end, family + sdp.body[a.type_end:a.start] + ip))
        else:
            edits.append((a.start, a.end, ip))

    relayed = False
    for m in sdp.media:
        port = ports[m.index - 1] if m.index <= len(ports) else None
        if port is None or m.port == 0:
            continue
        relayed = True
        edits.append((m.port_start, m.port_end, b"%d" % port))
        address(m.conn)
        if m.rtcp is not None:
            edits.append((m.rtcp.port_start, m.rtcp.port_end, b"%d" % (port + 1)))
            address(m.rtcp.address)
    if relayed:
        address(sdp.session_conn)
        if origin:
            address(sdp.origin)
    if marker and not sdp.nortpproxy:
        n = len(sdp.body)
        tail = b"" if sdp.body.endswith(b"\n") else sdp.eol
        edits.append((n, n, tail + MARKER + sdp.eol))
    edits.sort(key=lambda e: (e[0], e[1]))
    return edits


def record_edits(edits: Edits, body_start: int, sdp: Sdp, new_ip: str,
                 ports: Sequence[int | None], *, origin: bool = False,
                 marker: bool = True) -> None:
    """Record the rewrite into a message's :class:`~natserver.sip.edits.Edits`
    (``body_start``: the body's offset in the message)."""
    for start, end, data in rewrite_edits(sdp, new_ip, ports, origin=origin, marker=marker):
        edits.replace(body_start + start, body_start + end, data)


def apply_edits(body: bytes, edits: Sequence[tuple[int, int, bytes]]) -> bytes:
    """Apply sorted, non-overlapping splices to ``body``."""
    out = []
    pos = 0
    for start, end, data in edits:
        out.append(body[pos:start])
        out.append(data)
        pos = end
    out.append(body[pos:])
    return b"".join(out)


def rewrite(body: bytes, new_ip: str, ports: Sequence[int | None], *, origin: bool = False,
            marker: bool = True) -> bytes:
    """The body with the relay's address and ports (see :func:`rewrite_edits`)."""
    return apply_edits(body, rewrite_edits(parse(body), new_ip, ports, origin=origin,
                                           marker=marker))
