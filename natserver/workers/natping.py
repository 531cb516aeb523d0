"""The natping process: runs the modules' ``natping(ctx, now)`` hooks.

Only the process shell for now (loop, heartbeat, signals); nathelper's keepalive
scheduler plugs in through the hook, which returns the seconds until it wants to run
again. Keepalives leave from listen:port through the socket inherited from the
supervisor - never from an extra SO_REUSEPORT socket, which the kernel would start
handing incoming packets to.
"""

from __future__ import annotations

from natserver.context import Context
from natserver.workers.base import Child, run_hooks


def main(ctx: Context, child: Child) -> int:
    return run_hooks(ctx, child, "natping")
