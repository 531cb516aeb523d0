"""Module system: one Python file per SER module, each exporting its script functions,
modparams and ctl commands as rows of three tables (Kamailio's cmd_export_t/param_export_t).

A module file defines a subclass of :class:`Module` and, after it, the tables::

    class Maxfwd(Module):
        NAME = "maxfwd"
        def mf_process_maxfwd_header(self, m, limit): ...

    FUNCTIONS = (Function("mf_process_maxfwd_header", Maxfwd.mf_process_maxfwd_header,
                          args=(int_range(0, 255),)),)
    PARAMS = (Param("max_limit", int, 70, check=int_range(0, 255)),)
    MODULE = Maxfwd

Script functions are methods ``(self, m: MsgCtx, *args) -> int`` with SER's truth
convention: > 0 true, < 0 false, 0 ends the current route block. Argument fixups run
once at compile time and turn the cfg's string/number into what the method takes; a
fixup raises ``ValueError`` with a message and the compiler reports it at file:line:col.
Aliases and arity overloads are extra rows with the same name.
"""

from __future__ import annotations

import enum
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from natserver.context import Context
    from natserver.script.runtime import MsgCtx


class RouteType(enum.IntFlag):
    """The route blocks a function may be called from (SER REQUEST_ROUTE, ONREPLY_ROUTE...)."""

    REQUEST = 1
    ONREPLY = 2
    FAILURE = 4
    BRANCH = 8
    ANY = REQUEST | ONREPLY | FAILURE | BRANCH


Fixup = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Function:
    """A script function: its cfg name, the method, one fixup per argument, allowed routes."""

    name: str
    method: Callable[..., int]
    args: tuple[Fixup, ...] = ()
    routes: RouteType = RouteType.REQUEST
    doc: str = ""


@dataclass(frozen=True, slots=True)
class Param:
    """A modparam: name, type (``int`` or ``str``), default, optional check (fixup-like)."""

    name: str
    type: type
    default: Any
    check: Fixup | None = None
    doc: str = ""


@dataclass(frozen=True, slots=True)
class Rpc:
    """A management command served by the ctl process (``ul show``, ``rtp``...).

    ``method(self, ctx, args: list[str]) -> object`` returns rows (a list of dicts) or a
    dict; natserverctl prints them as a table or as JSON.
    """

    name: str
    method: Callable[..., Any]
    doc: str = ""


class Module:
    """Base of every module. One instance per loaded module, created at cfg load time.

    Lifecycle: ``__init__(params)`` at compile time (params validated), ``shm_tables(ctx)``
    then ``init(ctx)`` once
    in the supervisor before fork (may allocate shared memory, open nothing per-process),
    ``child_init(ctx)`` in every child after fork, ``shutdown(ctx)`` on graceful stop.
    Hooks the receive path calls, in load order, when a module overrides them:
    ``on_request(m) -> bool`` before the script (True = consumed), ``on_reply(m) -> bool``
    for replies (True = consumed), ``post_script(m)`` after the request route.
    """

    NAME: ClassVar[str] = ""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def shm_tables(self, ctx: Context) -> dict[str, tuple[int, int, int]]:
        """Shared tables this module needs: name -> (capacity, key_size, value_size).

        The supervisor creates every module's tables before ``init`` and before fork;
        the module finds its own as ``ctx.tables[name]``.
        """
        return {}

    def init(self, ctx: Context) -> None:
        """Before fork, in the supervisor (tables exist by now)."""

    def child_init(self, ctx: Context) -> None:
        """After fork, in each child process."""

    def shutdown(self, ctx: Context) -> None:
        """On graceful stop."""

    def timer(self, ctx: Context, now: float) -> float | None:
        """In the timer process, when overridden: periodic work (tm timers, usrloc
        expiry and flush). Returns the seconds until the next call; None = 1 s."""
        return None

    def worker_timer(self, ctx: Context, now: float) -> float | None:
        """In every SIP worker, when overridden: called from the worker's loop after
        each packet and each idle wait, ``now`` = ``time.monotonic()``; runs what is due
        in this worker (the tm timers it owns). Keep it cheap when nothing is due.
        Returns the seconds until it next has work; None = nothing pending."""
        return None

    def natping(self, ctx: Context, now: float) -> float | None:
        """In the natping process, when overridden: send keepalives. Returns the
        seconds until the next call; None = 1 s."""
        return None

    def on_request(self, m: MsgCtx) -> bool:
        return False

    def on_reply(self, m: MsgCtx) -> bool:
        return False

    def post_script(self, m: MsgCtx) -> None:
        """After the request route ran."""


@dataclass(slots=True)
class ModuleSpec:
    """What a module file exports, gathered by :func:`find`."""

    name: str
    cls: type[Module]
    functions: tuple[Function, ...]
    params: dict[str, Param]
    rpc: tuple[Rpc, ...] = field(default_factory=tuple)

    def instantiate(self, values: dict[str, Any]) -> Module:
        params = {p.name: p.default for p in self.params.values()}
        params.update(values)
        return self.cls(params)


# Names SER's cfg may load that natserver provides under another file (kept explicit).
_ALIASES = {"db_mysql": "mysql", "db_sqlite": "sqlite", "siputils": "uri"}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def module_name(path: str) -> str:
    """``"/usr/local/lib/ser/modules/nathelper.so"`` -> ``"nathelper"``."""
    base = path.rsplit("/", 1)[-1]
    for suffix in (".so", ".py"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return _ALIASES.get(base, base)


def find(name: str) -> ModuleSpec | None:
    """The module called ``name`` (a basename), or None when natserver has no such module."""
    if not _NAME_RE.match(name):
        return None
    try:
        mod = importlib.import_module(f"natserver.modules.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"natserver.modules.{name}":
            return None
        raise
    cls = getattr(mod, "MODULE", None)
    if cls is None:
        return None
    return ModuleSpec(
        name=cls.NAME or name,
        cls=cls,
        functions=tuple(getattr(mod, "FUNCTIONS", ())),
        params={p.name: p for p in getattr(mod, "PARAMS", ())},
        rpc=tuple(getattr(mod, "RPC", ())),
    )


# ---- argument fixups shared by modules (each turns a cfg value into what a method takes)

def as_str(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return value


def as_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    text = value.strip()
    try:
        return int(text, 0) if text[:2].lower() in ("0x", "0o") else int(text)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None


def int_range(lo: int, hi: int) -> Fixup:
    def fixup(value: Any) -> int:
        n = as_int(value)
        if not lo <= n <= hi:
            raise ValueError(f"{n} is out of range {lo}..{hi}")
        return n
    return fixup


def as_bytes(value: Any) -> bytes:
    return as_str(value).encode()


def one_of(*choices: str) -> Fixup:
    def fixup(value: Any) -> str:
        text = as_str(value)
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text
    return fixup
