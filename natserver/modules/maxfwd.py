"""maxfwd: Max-Forwards processing (SER/Kamailio modules/maxfwd)."""

from __future__ import annotations

from natserver.modules import Function, Module, Param, int_range
from natserver.script.runtime import MsgCtx
from natserver.sip.headers import Hdr


class Maxfwd(Module):
    NAME = "maxfwd"

    def mf_process_maxfwd_header(self, m: MsgCtx, default: int) -> int:
        """Add ``Max-Forwards: default`` when absent, -1 when it is 0, else decrement it.

        A value above max_limit is first lowered to max_limit + 1 (Kamailio); the new
        number is written without SER's space padding. A non-numeric value makes the
        parser raise 400, which the receive path answers.
        """
        msg = m.msg
        value = msg.max_forwards
        if value is None:
            m.get_edits().insert(msg.first_line_end, b"Max-Forwards: %d\r\n" % default)
            return 1
        if value == 0:
            return -1
        limit = self.params["max_limit"]
        if value > limit:
            value = limit + 1
        field = msg.get(Hdr.MAX_FORWARDS)
        m.get_edits().replace(field.vstart, field.vend, b"%d" % (value - 1))
        return 1


FUNCTIONS = (
    Function("mf_process_maxfwd_header", Maxfwd.mf_process_maxfwd_header,
             args=(int_range(0, 255),)),
)
PARAMS = (Param("max_limit", int, 70, check=int_range(0, 255),
                doc="values above this are lowered to it before the decrement"),)
MODULE = Maxfwd
