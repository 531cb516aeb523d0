"""The process kinds: the only code in natserver that owns sockets, loops and signals.

``KINDS`` is the registry (kind -> entry function, imported in the child only, so the
supervisor does not load what it never runs); ``plan(cfg)`` is the fixed set of process
slots the supervisor keeps alive. A slot's ``index`` is its place in the shared
per-process tables (heartbeat, pid, counters) - the same in every process and in the
ctl process that reports them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from natserver.context import Proc

if TYPE_CHECKING:
    from natserver.config import Config
    from natserver.context import Context
    from natserver.workers.base import Child

SUPERVISOR = "supervisor"
SIP_WORKER = "sip worker"
TIMER = "timer"
NATPING = "natping"
CTL = "ctl"
RTP_RELAY = "rtp relay"


@dataclass(frozen=True, slots=True)
class Kind:
    """A process kind: its name (the title's middle part) and its entry function."""

    name: str
    entry: str  # "module:function" - the function is ``(ctx, child) -> exit code``
    doc: str


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind(SIP_WORKER, "natserver.workers.base:run_sip_worker",
         "reads listen:port (SO_REUSEPORT), runs the compiled route script"),
    Kind(TIMER, "natserver.workers.timer:main",
         "module timers: tm retransmissions and 408s, usrloc expiry and DB flush"),
    Kind(NATPING, "natserver.workers.natping:main",
         "keepalives to NATed contacts, sent from listen:port"),
    Kind(CTL, "natserver.workers.ctl:main",
         "management commands on the FIFO and the ctl socket"),
    Kind(RTP_RELAY, "natserver.workers.rtp_relay:main",
         "RTP relay: one slice of rtp_port_min..max, serves the rtpproxy control socket"),
)}


def entry(kind: str) -> Callable[[Context, Child], int]:
    """The entry function of a kind, imported on demand."""
    module, _, func = KINDS[kind].entry.partition(":")
    fn: Callable[[Context, Child], int] = getattr(importlib.import_module(module), func)
    return fn


def plan(cfg: Config) -> list[Proc]:
    """Every process slot of a server with this cfg, in index order.

    Index 0 is the supervisor, then the SIP workers, then the helpers, then the
    ``rtp_relays`` relay slots. Slots are fixed: a respawned child takes its old slot.
    """
    n = cfg.children
    procs = [Proc(SUPERVISOR, 0, 1, 0)]
    procs += [Proc(SIP_WORKER, i, n, i) for i in range(1, n + 1)]
    procs += [Proc(kind, 1, 1, n + 1 + k) for k, kind in enumerate((TIMER, NATPING, CTL))]
    relays = int(getattr(cfg, "rtp_relays", 0))
    base = len(procs)
    procs += [Proc(RTP_RELAY, k, relays, base + k - 1) for k in range(1, relays + 1)]
    return procs
