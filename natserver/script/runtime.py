"""The per-message state a compiled route runs with (SER's struct sip_msg plus its action state).

One :class:`MsgCtx` is made for every received message (request or reply) and for every
locally generated event that runs a route. Script functions take it as ``m``. It holds
no sockets: outgoing datagrams go through ``m.ctx.transport``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from natserver.errors import Err
from natserver.modules import RouteType

from natserver.sip.edits import Edits

if TYPE_CHECKING:
    from natserver.context import Context
    from natserver.sip.message import Message


@dataclass(slots=True)
class Branch:
    """An extra destination for parallel forking (appended by ``lookup``)."""

    uri: bytes
    dst_uri: bytes | None = None
    q: int = -1          # q * 1000, -1 when the contact had none
    flags: int = 0


class MsgCtx:
    """Everything the script knows about the message in hand."""

    __slots__ = (
        "ctx", "msg", "src_ip", "src_port", "local_ip", "local_port", "route_type",
        "now", "flags", "new_uri", "dst_uri", "branches", "force_rport", "edits",
        "reply_headers", "error", "auth", "received", "on_reply", "rr_added",
        "replied", "tx", "contact_fixed", "vars",
    )

    def __init__(
        self,
        ctx: Context,
        msg: Message,
        src: tuple[str, int],
        local: tuple[str, int],
        route_type: RouteType,
        now: float,
    ) -> None:
        self.ctx = ctx
        self.msg = msg
        self.src_ip, self.src_port = src
        self.local_ip, self.local_port = local
        self.route_type = route_type
        self.now = now                        # wall-clock time.time() at receive
        self.flags = 0                        # the 32 message flags (setflag/isflagset)
        self.new_uri: bytes | None = None     # R-URI after lookup/rewrite; None = unchanged
        self.dst_uri: bytes | None = None     # next hop (received, Route); None = the R-URI
        self.branches: list[Branch] = []      # further destinations (parallel forking)
        self.force_rport = False              # force_rport(): reply to the source port
        self.edits: Edits | None = None       # splices for the outgoing copy, made on demand
        self.reply_headers: list[bytes] = []  # extra header lines for local replies
        self.error: Err | None = None         # last failed operation, for sl_reply_error
        self.auth: Any = None                 # credentials www/proxy_authorize accepted
        self.received: bytes | None = None    # fix_nated_register: b"sip:ip:port"
        self.on_reply = 0                     # t_on_reply route number, 0 = none
        self.rr_added = False                 # record_route() already ran
        self.replied = False                  # a local reply was sent for this request
        self.tx: Any = None                   # tm: the transaction this message belongs to
        self.contact_fixed = False            # fix_nated_contact() already ran
        self.vars: dict[str, Any] = {}        # per-message scratch for modules (rare paths)

    @property
    def src(self) -> tuple[str, int]:
        return (self.src_ip, self.src_port)

    @property
    def ruri(self) -> bytes:
        """The current Request-URI: the rewritten one, else the one received."""
        return self.new_uri if self.new_uri is not None else self.msg.ruri

    def get_edits(self) -> Edits:
        """The splice list for the outgoing copy of this message (created on first use)."""
        if self.edits is None:
            self.edits = Edits()
        return self.edits

    def fail(self, code: Err) -> int:
        """Remember ``code`` for sl_reply_error and return SER's "false"."""
        self.error = code
        return -1
