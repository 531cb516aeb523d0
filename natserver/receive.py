"""The receive path (SER receive.c): one datagram in, the script run, datagrams out.

Sans-IO: the worker hands in the bytes, the source and receiving addresses and the
time; everything goes out through ``ctx.transport``. Nothing a packet contains can
raise out of :func:`receive` - a bad message gets its SIP answer or a log line.
"""

from __future__ import annotations

import logging

from natserver import forward
from natserver.context import Context
from natserver.errors import SipError, TableFull
from natserver.modules import RouteType
from natserver.script.runtime import MsgCtx
from natserver.sip.build import build_reply, reply_address
from natserver.sip.message import Message

log = logging.getLogger("natserver.receive")

# SER's MIN_UDP_PACKET: shorter datagrams are keepalives (CRLF, 4 zero bytes), not SIP.
MIN_UDP_PACKET = 32
# Largest UDP payload; the cfg's max_len decides what we accept, this what we can read.
UDP_MAX = 65535


def receive(ctx: Context, data: bytes, src: tuple[str, int], local: tuple[str, int],
            now: float) -> None:
    """Process one received datagram completely."""
    stats = ctx.stats
    if len(data) < MIN_UDP_PACKET:
        if stats is not None:
            stats.keepalives += 1
        return
    try:
        msg = Message.parse(data, ctx.cfg.max_len)
    except SipError as exc:
        _answer_unparsable(ctx, data, src, exc)
        return
    try:
        if msg.is_request:
            _request(ctx, msg, src, local, now)
        else:
            _reply(ctx, msg, src, local, now)
    except SipError as exc:
        # A header the script touched late turned out broken.
        if msg.is_request:
            _answer(ctx, msg, src, exc.status, exc.reason)
        if stats is not None:
            stats.bad_messages += 1
        log.info("bad message from %s:%s: %s", src[0], src[1], exc)
    except Exception:  # the worker must survive any bug triggered by one packet
        if stats is not None:
            stats.errors += 1
        log.exception("error processing message from %s:%s (%r...)", src[0], src[1],
                      data[:60])
        if msg.is_request and msg.method != b"ACK":
            _answer(ctx, msg, src, 500, "Server Internal Error")


def _request(ctx: Context, msg: Message, src: tuple[str, int], local: tuple[str, int],
             now: float) -> None:
    if ctx.stats is not None:
        ctx.stats.requests += 1
    msg.validate_request()
    m = MsgCtx(ctx, msg, src, local, RouteType.REQUEST, now)
    for mod in ctx.request_hooks:
        if mod.on_request(m):
            return
    shedder = ctx.shedder
    if shedder is not None and shedder.shedding and shedder.sheds(msg):
        shedder.shed += 1
        if ctx.stats is not None:
            ctx.stats.shed += 1
        _answer(ctx, msg, src, 503, "Service Unavailable", headers=shedder.headers())
        return
    try:
        ctx.script.run_request(m)
    except TableFull as exc:
        log.error("%s: answering 503", exc)
        if not m.replied and msg.method != b"ACK":
            _answer(ctx, msg, src, 503, "Service Unavailable", force_rport=m.force_rport)
        return
    for mod in ctx.post_script_hooks:
        mod.post_script(m)


def _reply(ctx: Context, msg: Message, src: tuple[str, int], local: tuple[str, int],
           now: float) -> None:
    if ctx.stats is not None:
        ctx.stats.replies += 1
    m = MsgCtx(ctx, msg, src, local, RouteType.ONREPLY, now)
    for mod in ctx.reply_hooks:
        if mod.on_reply(m):
            return
    forward.forward_reply(ctx, msg)


def _answer(ctx: Context, msg: Message, src: tuple[str, int], status: int, reason: str,
            *, force_rport: bool = False, headers: tuple[bytes, ...] = ()) -> None:
    """A stateless error reply, if the message carries enough to route one."""
    if not msg.is_request or msg.method == b"ACK":
        return
    try:
        data = build_reply(msg, status, reason, src=src, to_tag=ctx.sl_tag(msg),
                           force_rport=force_rport, headers=headers,
                           server=ctx.server_header)
        addr = reply_address(msg, src, force_rport)
    except SipError as exc:
        log.info("cannot answer %d to %s:%s: %s", status, src[0], src[1], exc)
        return
    ctx.transport.send(data, addr)


def _answer_unparsable(ctx: Context, data: bytes, src: tuple[str, int],
                       exc: SipError) -> None:
    """Answer a message the parser refused, when it is a request we can still route."""
    if ctx.stats is not None:
        ctx.stats.bad_messages += 1
    log.info("refused message from %s:%s: %d %s", src[0], src[1], exc.status, exc.reason)
    try:
        # Too large for max_len is still a well-formed message: read it to answer it.
        msg = Message.parse(data, UDP_MAX)
    except SipError:
        return
    _answer(ctx, msg, src, exc.status, exc.reason)
