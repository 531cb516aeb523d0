"""The routing script: ser.cfg compiled once into closures, run for every message.

``load(path)`` reads, parses and compiles a cfg (lexer -> parser -> compiler) and returns
a :class:`Script`. Every error is a ``CfgError`` with file:line:col; warnings (ignored
directives, undefined routes called...) are collected in ``Script.warnings``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from natserver.errors import CfgError
from natserver.script.compiler import compile_config
from natserver.script.core import ScriptExit
from natserver.script.parser import parse

if TYPE_CHECKING:
    from natserver.config import Config
    from natserver.modules import Module, ModuleSpec
    from natserver.script.runtime import MsgCtx

Route = Callable[["MsgCtx"], int]

__all__ = ["Script", "load", "parse"]


class Script:
    """A compiled cfg: globals, module instances and the route tables (20 slots each;
    None where the cfg defines no such route)."""

    __slots__ = ("file", "config", "modules", "request", "onreply", "failure", "warnings")

    def __init__(self, file: str, config: Config, modules: dict[str, Module],
                 request: list[Route | None], onreply: list[Route | None],
                 failure: list[Route | None], warnings: list[str]) -> None:
        self.file = file
        self.config = config
        self.modules = modules          # name -> instance, in loadmodule order
        self.request = request          # route{} is request[0]
        self.onreply = onreply
        self.failure = failure
        self.warnings = warnings

    def run_request(self, m: MsgCtx) -> int:
        """Run route{} for a request; its SER return value (0 after break/drop/exit)."""
        return _run(self.request[0], m)

    def run_onreply(self, n: int, m: MsgCtx) -> int:
        """Run onreply_route[n] for a reply (1 when the cfg has no such route).
        After a ``drop`` in it, ``m.vars.get("drop")`` is True: do not relay the reply."""
        return _run(self.onreply[n], m)

    def run_failure(self, n: int, m: MsgCtx) -> int:
        """Run failure_route[n] (1 when the cfg has no such route)."""
        return _run(self.failure[n], m)


def _run(route: Route | None, m: MsgCtx) -> int:
    if route is None:
        return 1
    try:
        return route(m)
    except ScriptExit:
        return 0


def load(path: str, *, text: str | None = None,
         finder: Callable[[str], ModuleSpec | None] | None = None) -> Script:
    """Read (unless ``text`` is given), parse and compile the cfg at ``path``.

    ``finder(name)`` gives the module a ``loadmodule`` names (default:
    ``natserver.modules.find``). Module instances are created (with their modparams)
    but not initialised: no I/O happens here.
    """
    if text is None:
        with open(path, "rb") as f:
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            raise CfgError(path, line, col, "the file is not UTF-8 text") from None
    if finder is None:
        from natserver.modules import find as finder
    warnings: list[str] = []
    tree = parse(text, path, warnings)
    compiled = compile_config(tree, finder, warnings)
    return Script(path, compiled.config, compiled.modules, compiled.request, compiled.onreply,
                  compiled.failure, compiled.warnings)
