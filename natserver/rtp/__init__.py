"""The RTP relay: sessions and latching, port tables, the rtpproxy control protocol
(server and client), and the forwarding engine a relay process runs.

- ``session``  the session record (fixed-size layout) and its state machines
- ``ports``    per-relay port slices and tables
- ``protocol`` rtpproxy commands and replies, the reply cache
- ``control``  the command executor and the server-side wire wrapper
- ``client``   nathelper's side: relay set, retries, blocking transport
- ``fastio``   recvmmsg/sendmmsg batches through ctypes
- ``engine``   sockets, epoll and forwarding for one relay
"""

from natserver.rtp.control import ControlConfig, ControlServer, Outcome, RelayStats, execute
from natserver.rtp.ports import PortsExhausted, PortTable, relay_slices
from natserver.rtp.protocol import Command, ECode, Op, ProtocolError, Reply, ReplyCache
from natserver.rtp.session import (
    DictStore,
    LatchMode,
    LatchPolicy,
    Session,
    SessionStore,
    Side,
    pack,
    unpack,
)

__all__ = [
    "Command", "ControlConfig", "ControlServer", "DictStore", "ECode", "LatchMode",
    "LatchPolicy", "Op", "Outcome", "PortTable", "PortsExhausted", "ProtocolError",
    "RelayStats", "Reply", "ReplyCache", "Session", "SessionStore", "Side", "execute",
    "pack", "relay_slices", "unpack",
]
