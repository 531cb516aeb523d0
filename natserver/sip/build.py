"""Outgoing SIP built from a received message: local replies, forwarded requests and
replies, and the hop-by-hop CANCEL and ACK of a branch we sent.

Forwarded messages are the received buffer with splices applied (:mod:`edits`): untouched
bytes leave as they came. Local replies and CANCEL/ACK copy whole header rows as written.

Rules (functions.md "Local replies", force_rport; RFC 3261 18.2, RFC 3581 4):
- a top Via gets ``;received=<src-ip>`` when its host is not the source IP, when it
  already had ``received``, and whenever ``rport`` is filled in (RFC 3581 requires the
  pair); it gets ``;rport=<src-port>`` when it carried ``rport`` or ``force_rport`` is
  set; an existing parameter is rewritten in place, a new one appended;
- a local reply goes to the source IP, to the source port when the Via has ``rport`` or
  ``force_rport`` is set, else to the Via port (5060 when none).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from natserver.errors import SipError
from natserver.sip.edits import Edits
from natserver.sip.headers import Hdr, missing
from natserver.sip.message import Message

CRLF = b"\r\n"
_VIA = Hdr.VIA
_TO = Hdr.TO
_FROM = Hdr.FROM
_CALL_ID = Hdr.CALL_ID
_CSEQ = Hdr.CSEQ
_ROUTE = Hdr.ROUTE
_CL = Hdr.CONTENT_LENGTH
# Rows a local reply copies, in the order they came (SER build_res_buf_from_sip_req).
_REPLY_COPY = frozenset((Hdr.VIA, Hdr.RECORD_ROUTE, Hdr.FROM, Hdr.TO, Hdr.CALL_ID, Hdr.CSEQ))

Span = tuple[int, int, bytes]
_BLANK = b" \t\r\n\x0b\x0c"  # what bytes.rstrip() removes


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def same_ip(host: str, ip: str) -> bool:
    """Is a Via host the same address as a socket's IP (IPv6 may be written two ways)?"""
    if host == ip:
        return True
    if ":" in host and ":" in ip:
        try:
            return ipaddress.ip_address(host) == ipaddress.ip_address(ip)
        except ValueError:
            return False
    return False


def via_fix(msg: Message, src: tuple[str, int], force_rport: bool) -> list[Span]:
    """The splices that put ``received``/``rport`` on the top Via (empty when the Via
    needs none, or cannot be parsed - a broken Via is copied as it is)."""
    try:
        via = msg.via1
    except SipError:
        return []
    ip, port = src
    ops: list[Span] = []
    has_rport = via.rport is not None
    add_rport = has_rport or force_rport
    spans = via.spans if via.received is not None or has_rport else {}
    if add_rport or via.received is not None or not same_ip(via.host, ip):
        text = b";received=" + ip.encode("ascii")
        span = spans.get("received")
        ops.append((span[0], span[1], text) if span else (via.params_end, via.params_end, text))
    if add_rport:
        text = b";rport=%d" % port
        span = spans.get("rport")
        ops.append((span[0], span[1], text) if span else (via.params_end, via.params_end, text))
        ops.sort(key=lambda op: (op[0], op[1]))  # received goes after a rewritten rport
    return ops


def reply_address(msg: Message, src: tuple[str, int], force_rport: bool) -> tuple[str, int]:
    """Where a local reply to ``msg`` goes: the source IP, and the source port when the
    top Via asked for rport (or force_rport), else the Via's port or 5060."""
    if force_rport:
        return src
    try:
        via = msg.via1
    except SipError:
        return src
    if via.rport is not None:
        return src
    return src[0], via.port if via.port is not None else 5060


def _splice(buf: bytes, start: int, end: int, ops: list[Span]) -> bytes:
    """``buf[start:end]`` with sorted, non-overlapping ``ops`` applied."""
    parts = []
    cur = start
    for s, e, d in ops:
        parts.append(buf[cur:s])
        parts.append(d)
        cur = e
    parts.append(buf[cur:end])
    return b"".join(parts)


def build_reply(msg: Message, status: int, reason: bytes | str, *, src: tuple[str, int],
                to_tag: bytes | str | None = None, force_rport: bool = False,
                headers: Sequence[bytes | str] = (), body: bytes = b"",
                content_type: bytes | str | None = None,
                server: bytes | str | None = None) -> bytes:
    """A local reply to the request ``msg``. Copies every Via (the top one fixed by
    :func:`via_fix`), Record-Route, From, To, Call-ID and CSeq row in received order;
    ``to_tag`` goes on a To without a tag; then ``headers`` (lines, CRLF optional),
    ``Server:``, ``Content-Type:`` (when given), ``Content-Length:`` and ``body``.
    Broken headers are copied as they are, so a 400 can still be answered."""
    buf = msg.buf
    parts = [b"SIP/2.0 %d %s\r\n" % (status, _bytes(reason))]
    append = parts.append
    top_via_done = False
    to_done = not to_tag
    copy = _REPLY_COPY
    # Consecutive rows that go out as they came (a line ending in CRLF with no blank
    # before it: nearly every row) are copied as one slice: From, To, Call-ID and CSeq
    # usually follow each other.
    run = -1
    run_end = -1
    for h, s, _c, e in msg.rows:
        if h not in copy:
            if run >= 0:
                append(buf[run:run_end])
                run = -1
            continue
        if buf[e - 2] == 13 and buf[e - 3] not in _BLANK:
            end = e - 2
        else:  # a bare LF, trailing blanks or a folded value: rstrip as SER does
            end = s + len(buf[s:e].rstrip())
        if h is _VIA and not top_via_done:
            top_via_done = True
            ops = via_fix(msg, src, force_rport)
            if ops:
                if run >= 0:
                    append(buf[run:run_end])
                    run = -1
                append(_splice(buf, s, end, ops))
                append(CRLF)
                continue
        elif h is _TO and not to_done:
            to_done = True
            try:
                tagless = msg.to.tag is None
            except SipError:
                tagless = False
            if tagless:
                if run >= 0:
                    append(buf[run:run_end])
                    run = -1
                append(buf[s:end])
                append(b";tag=" + _bytes(to_tag))  # type: ignore[arg-type]
                append(CRLF)
                continue
        if end == e - 2:
            if run < 0:
                run = s
            run_end = e
            continue
        if run >= 0:
            append(buf[run:run_end])
            run = -1
        append(buf[s:end])
        append(CRLF)
    if run >= 0:
        append(buf[run:run_end])
    for line in headers:
        append(_bytes(line).rstrip(b"\r\n"))
        append(CRLF)
    if server:
        append(b"Server: %s\r\n" % _bytes(server))
    if content_type:
        append(b"Content-Type: %s\r\n" % _bytes(content_type))
    append(b"Content-Length: %d\r\n\r\n" % len(body))
    append(body)
    return b"".join(parts)


def _fix_content_length(msg: Message, edits: Edits) -> None:
    """Make Content-Length tell the size of the outgoing body (added when missing)."""
    size = msg.body_end - msg.body_start + edits.delta(msg.body_start, msg.body_end)
    # rows a script removed (remove_hf) no longer count
    rows = [r for r in msg.cl_rows if not edits.covers(r[1], r[3])]
    if not rows:
        edits.insert(msg.headers_end, b"Content-Length: %d\r\n" % size)
    elif size != msg.content_length:
        for r in rows:
            f = msg.field(r)
            edits.replace(f.vstart, f.vend, b"%d" % size)


def build_forward_request(msg: Message, edits: Edits | None, *, via: bytes,
                          ruri: bytes | None = None, src: tuple[str, int],
                          force_rport: bool = False) -> bytes:
    """The request as forwarded: ``Via: <via>`` as the first header line, the received
    top Via fixed by :func:`via_fix`, the R-URI replaced by ``ruri`` when different,
    ``edits`` applied (the caller's object is not changed), Content-Length rewritten or
    added, bytes past Content-Length dropped. Max-Forwards is the maxfwd module's."""
    e = edits.copy() if edits is not None else Edits()
    e.insert(msg.first_line_end, b"Via: " + via + CRLF, first=True)
    for s, end, data in via_fix(msg, src, force_rport):
        e.replace(s, end, data)
    if ruri is not None and ruri != msg.ruri:
        e.replace(msg.ruri_start, msg.ruri_end, ruri)
    _fix_content_length(msg, e)
    return e.apply(msg.buf, msg.body_end)


def build_forward_reply(msg: Message, edits: Edits | None = None) -> bytes:
    """The reply as relayed: its first Via value removed (the whole row, or just that
    value when the row carries several), ``edits`` applied, Content-Length fixed."""
    e = edits.copy() if edits is not None else Edits()
    vias = msg.vias
    if not vias:
        raise missing(_VIA)
    top = vias[0]
    row = msg.first_row(_VIA)
    if len(vias) > 1 and vias[1].start < row[3]:
        e.delete(top.start, vias[1].start)
    else:
        e.delete(row[1], row[3])
    _fix_content_length(msg, e)
    return e.apply(msg.buf, msg.body_end)


def next_via_address(msg: Message) -> tuple[str, int]:
    """Where a relayed reply goes (RFC 3261 18.2.2 + RFC 3581): the second Via's maddr,
    else its received (else sent-by host), with the rport value, else the sent-by port,
    else 5060."""
    vias = msg.vias
    if len(vias) < 2:
        raise SipError(400, "No second Via header")
    via = vias[1]
    port = via.port if via.port is not None else 5060
    if via.maddr:
        return via.maddr, port
    host = via.received or via.host
    if via.rport and via.rport.isdigit() and 0 < int(via.rport) < 65536:
        port = int(via.rport)
    return host, port


def _row(msg: Message, h: Hdr) -> bytes:
    """The first row of ``h`` as written, with a CRLF."""
    f = msg.get(h)
    if f is None:
        raise missing(h)
    return msg.buf[f.start:f.vend] + CRLF


def _hop_request(method: bytes, invite: Message, to_row: bytes) -> bytes:
    buf = invite.buf
    via = invite.via1
    parts = [b"%s %s SIP/2.0\r\n" % (method, invite.ruri),
             b"Via: " + buf[via.start:via.end] + CRLF]
    parts += [buf[f.start:f.vend] + CRLF for f in invite.get_all(_ROUTE)]
    parts += [_row(invite, _FROM), to_row, _row(invite, _CALL_ID),
              b"CSeq: %d %s\r\n" % (invite.cseq.num, method),
              b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"]
    return b"".join(parts)


def build_cancel(invite: Message) -> bytes:
    """CANCEL for an INVITE we sent (RFC 3261 9.1): same R-URI, Call-ID, From, To and
    CSeq number, its top Via only, its Route rows."""
    return _hop_request(b"CANCEL", invite, _row(invite, _TO))


def build_ack(invite: Message, reply: Message) -> bytes:
    """ACK for a non-2xx final reply to an INVITE we sent (RFC 3261 17.1.1.3): as the
    CANCEL, but with the reply's To (and its tag) and CSeq method ACK."""
    return _hop_request(b"ACK", invite, _row(reply, _TO))
