"""The timer process: runs the modules' ``timer(ctx, now)`` hooks.

Each module that defines the hook is called when it asked to be (the hook returns the
seconds until its next run; None means once a second). tm retransmissions and 408s,
usrloc expiry and the db_mode 2 write-back flush arrive here with their issues; what
the hooks send leaves from listen:port through the socket inherited from the
supervisor (``ctx.transport``). On SIGTERM the loop ends and the modules' ``shutdown``
runs here too - the place for usrloc's final flush.
"""

from __future__ import annotations

from natserver.context import Context
from natserver.workers.base import Child, run_hooks


def main(ctx: Context, child: Child) -> int:
    return run_hooks(ctx, child, "timer")
