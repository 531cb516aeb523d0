"""Stateless forwarding done by the core, outside any script (SER forward.c).

A reply that matches no transaction (a 2xx retransmitted after the INVITE transaction
ended, a reply to a request forwarded statelessly) is relayed by its Via headers:
our own top Via is removed and the reply goes to the next Via's received/rport address.
"""

from __future__ import annotations

import logging

from natserver.context import Context
from natserver.errors import SipError
from natserver.sip.build import build_forward_reply, next_via_address
from natserver.sip.edits import Edits
from natserver.sip.message import Message

log = logging.getLogger("natserver.forward")


def forward_reply(ctx: Context, msg: Message, edits: Edits | None = None) -> bool:
    """Relay ``msg`` (a reply) to the next Via; False when it is not ours to relay."""
    try:
        vias = msg.vias
        if len(vias) < 2:
            # A reply with a single Via was addressed to us (a ping answer, a stray).
            return False
        top = vias[0]
        if not ctx.is_myself(top.host, top.port):
            log.info("dropping reply %d: top Via %s:%s is not ours", msg.status, top.host, top.port)
            return False
        data = build_forward_reply(msg, edits)
        addr = next_via_address(msg)
    except SipError as exc:
        log.info("cannot relay reply %d: %s", msg.status, exc)
        return False
    if ctx.stats is not None:
        ctx.stats.fwd_replies += 1
    return ctx.transport.send(data, addr)
