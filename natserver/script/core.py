"""SER's core actions: flags, force_rport, log, and the control statements.

The callable ones are ordinary function rows of a :class:`Core` pseudo-module, looked up
before any loaded module. ``break``/``drop``/``exit``/``return``/``route(N)`` change the
flow of the script and are built by the compiler from the factories below.

Return values follow SER (cfg-language.md §7): > 0 go on, 0 end the current route block,
< 0 error/false and go on.

Extensions and decisions:
- flags: 0..31 are accepted (Kamailio; SER takes 1..31), checked at compile time.
- ``drop`` in an ``onreply_route`` ends the route and sets ``m.vars["drop"] = True``: tm
  then does not relay that (provisional) reply. Elsewhere ``drop`` is ``break``.
- ``exit`` (Kamailio) stops the whole script for this message: it raises
  :class:`ScriptExit`, which ``Script.run_*`` catch and turn into 0. ``return(0)`` is
  ``exit`` as in Kamailio; ``return(n)`` ends the current route with ``n``
  (``return`` alone is ``return(1)``).
- more than :data:`MAX_NESTING` nested ``route()`` calls log an error and stop the
  script the same way (SER returned an error and went on with a 100-deep stack).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from natserver.log import python_level
from natserver.modules import Function, Module, RouteType, as_int, as_str
from natserver.script.runtime import MsgCtx

log = logging.getLogger("natserver.script")

MAX_NESTING = 100      # SER's ROUTE_MAX_REC_LEV
FLAG_MAX = 31

Action = Callable[[MsgCtx], int]


class ScriptExit(Exception):
    """Stop running the script for this message (``exit``, ``return(0)``, nesting limit)."""


class RouteReturn(Exception):
    """``return(n)``: leave the current route with ``n``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value


def flag_mask(value: Any) -> int:
    """Fixup for a flag number: the bit mask of flag 0..31."""
    n = as_int(value)
    if not 0 <= n <= FLAG_MAX:
        raise ValueError(f"flag {n} is out of range 0..{FLAG_MAX}")
    return 1 << n


def log_level(value: Any) -> int:
    """Fixup for log()'s SER level (-3 ALERT .. 4 DBG): the Python logging level."""
    n = as_int(value)
    if not -3 <= n <= 4:
        raise ValueError(f"log level {n} is out of range -3..4")
    return python_level(n)


class Core(Module):
    """The core actions as methods, so they compile like module functions."""

    NAME = "core"

    def setflag(self, m: MsgCtx, mask: int) -> int:
        m.flags |= mask
        return 1

    def resetflag(self, m: MsgCtx, mask: int) -> int:
        m.flags &= ~mask
        return 1

    def isflagset(self, m: MsgCtx, mask: int) -> int:
        return 1 if m.flags & mask else -1

    def force_rport(self, m: MsgCtx) -> int:
        m.force_rport = True
        return 1

    def log(self, m: MsgCtx, text: str) -> int:
        # SER's log("text") logs at L_DBG.
        log.debug("%s", text.rstrip("\n"))
        return 1

    def log_at(self, m: MsgCtx, level: int, text: str) -> int:
        log.log(level, "%s", text.rstrip("\n"))
        return 1


FUNCTIONS = (
    Function("setflag", Core.setflag, args=(flag_mask,), routes=RouteType.ANY),
    Function("resetflag", Core.resetflag, args=(flag_mask,), routes=RouteType.ANY),
    Function("isflagset", Core.isflagset, args=(flag_mask,), routes=RouteType.ANY),
    Function("force_rport", Core.force_rport, routes=RouteType.ANY),
    Function("add_rport", Core.force_rport, routes=RouteType.ANY),
    Function("log", Core.log, args=(as_str,), routes=RouteType.ANY),
    Function("log", Core.log_at, args=(log_level, as_str), routes=RouteType.ANY),
)

# Names the compiler builds itself (they steer the flow of the script).
CONTROL = frozenset({"break", "drop", "exit", "return", "route"})


def stop(m: MsgCtx) -> int:
    """``break`` (and ``drop`` outside onreply_route): end the current route block."""
    return 0


def drop_reply(m: MsgCtx) -> int:
    """``drop`` in onreply_route: end the route and tell tm not to relay this reply."""
    m.vars["drop"] = True
    return 0


def exit_script(m: MsgCtx) -> int:
    raise ScriptExit


def make_return(value: int) -> Action:
    if value == 0:
        return exit_script

    def do_return(m: MsgCtx) -> int:
        raise RouteReturn(value)
    return do_return


def catch_return(body: Action) -> Action:
    """Wrap a route body that contains ``return``: its value becomes the route's value."""
    def route(m: MsgCtx) -> int:
        try:
            return body(m)
        except RouteReturn as ret:
            return ret.value
    return route


def make_route_call(table: list[Action | None], n: int, depth: list[int] | None) -> Action:
    """``route(n)``: run route[n]; 1 to the caller unless the route returned < 0.

    ``depth`` is the nesting counter shared by the script's recursive call sites; it is
    None for a call that cannot recurse (the target reaches no cycle), which needs no count.
    """
    if depth is None:
        def call(m: MsgCtx) -> int:
            r = table[n](m)  # type: ignore[misc]
            return r if r < 0 else 1
        return call

    def guarded_call(m: MsgCtx) -> int:
        level = depth[0]
        if level >= MAX_NESTING:
            log.error("route(%d): more than %d nested route calls, stopping the script",
                      n, MAX_NESTING)
            raise ScriptExit
        depth[0] = level + 1
        try:
            r = table[n](m)  # type: ignore[misc]
        finally:
            depth[0] = level
        return r if r < 0 else 1
    return guarded_call
