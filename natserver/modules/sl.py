"""sl: stateless replies (SER modules/sl).

``send_reply`` is the one place a local stateless reply is built and sent; registrar,
auth and the script's sl_send_reply all call it. The To-tag it adds is recognisable in
every worker, so the ACK for a stateless non-2xx reply is absorbed by its To-tag alone,
whatever branch the ACK's Via carries (an ACK relayed instead would come back to us and
bounce until Max-Forwards runs out).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from natserver.errors import Err, SipError, error_reply
from natserver.modules import Function, Module, as_str, int_range
from natserver.script.runtime import MsgCtx
from natserver.sip.build import build_reply, reply_address

log = logging.getLogger("natserver.sl")


def send_reply(m: MsgCtx, status: int, reason: str, *, headers: Sequence[bytes] = (),
               body: bytes = b"", content_type: bytes | None = None) -> bool:
    """Send a stateless reply to the request in ``m``; False when it cannot be routed."""
    msg = m.msg
    if msg.method == b"ACK":
        return False
    ctx = m.ctx
    # SER tags replies from 180 up; 100 Trying stays untagged as RFC 3261 allows.
    to_tag = ctx.sl_tag(msg) if status >= 180 else None
    extra = [*m.reply_headers, *headers]
    if 300 <= status < 400:
        targets = [m.ruri] + [b.uri for b in m.branches]
        extra.append(b"Contact: " + b", ".join(b"<" + t + b">" for t in targets))
    try:
        data = build_reply(msg, status, reason, src=m.src, to_tag=to_tag,
                           force_rport=m.force_rport, headers=extra, body=body,
                           content_type=content_type, server=ctx.server_header)
        addr = reply_address(msg, m.src, m.force_rport)
    except SipError as exc:
        log.info("cannot send %d %s: %s", status, reason, exc)
        return False
    m.replied = True
    if ctx.stats is not None:
        ctx.stats.sl_replies += 1
    return ctx.transport.send(data, addr)


class Sl(Module):
    NAME = "sl"

    def sl_send_reply(self, m: MsgCtx, status: int, reason: str) -> int:
        return 1 if send_reply(m, status, reason) else -1

    def sl_reply_error(self, m: MsgCtx) -> int:
        """Answer with the status derived from the last failed operation (SER err2reason)."""
        status, reason = error_reply(m.error if m.error is not None else Err.UNSPEC)
        if m.tx is not None:
            # t_relay ran for this request: answer through its transaction (Kamailio),
            # so retransmissions of the request get this reply again.
            return 1 if m.tx.reply(m, status, reason) else -1
        return 1 if send_reply(m, status, reason) else -1

    def on_request(self, m: MsgCtx) -> bool:
        """Absorb the ACK for one of our stateless replies (SER sl_filter_ACK)."""
        msg = m.msg
        if msg.method != b"ACK":
            return False
        try:
            tag = msg.to.tag
        except SipError:
            return False
        if m.ctx.is_sl_tag(tag):
            if m.ctx.stats is not None:
                m.ctx.stats.sl_acks_absorbed += 1
            return True
        return False


def _reason(value: object) -> str:
    text = as_str(value)
    if "\r" in text or "\n" in text:
        raise ValueError("a reason phrase cannot contain a line break")
    return text


FUNCTIONS = (
    Function("sl_send_reply", Sl.sl_send_reply, args=(int_range(100, 699), _reason)),
    Function("sl_reply_error", Sl.sl_reply_error),
)
PARAMS = ()
MODULE = Sl
