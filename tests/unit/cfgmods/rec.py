"""rec: functions that record their calls and return what the cfg asks for."""

from __future__ import annotations

from typing import Any

from natserver.modules import Function, Module, Param, RouteType, as_int, as_str, int_range
from natserver.script.regex import compile_ere
from natserver.script.runtime import MsgCtx


def trace(m: MsgCtx, entry: object) -> None:
    m.vars.setdefault("trace", []).append(entry)


def _upper(value: Any) -> str:
    text = as_str(value)
    if not text:
        raise ValueError("an empty name is not allowed")
    return text.upper()


class Rec(Module):
    NAME = "rec"

    def t(self, m: MsgCtx, name: str) -> int:
        """Record ``name``; true."""
        trace(m, name)
        return 1

    def ret(self, m: MsgCtx, name: str, value: int) -> int:
        """Record ``name``; return ``value``."""
        trace(m, name)
        return value

    def over0(self, m: MsgCtx) -> int:
        trace(m, ("over", 0))
        return 1

    def over1(self, m: MsgCtx, a: str) -> int:
        trace(m, ("over", 1, a))
        return 1

    def over2(self, m: MsgCtx, a: str, b: str) -> int:
        trace(m, ("over", 2, a, b))
        return 1

    def three(self, m: MsgCtx, a: str, b: str, c: str) -> int:
        trace(m, ("three", a, b, c))
        return 1

    def named(self, m: MsgCtx, name: str) -> int:
        trace(m, ("named", name))
        return 1

    def small(self, m: MsgCtx, n: int) -> int:
        trace(m, ("small", n))
        return 1

    def search(self, m: MsgCtx, pattern: Any) -> int:
        return 1 if pattern.search(m.msg.buf) else -1

    def params_seen(self, m: MsgCtx) -> int:
        trace(m, dict(self.params))
        return 1


FUNCTIONS = (
    Function("t", Rec.t, args=(as_str,), routes=RouteType.ANY),
    Function("ret", Rec.ret, args=(as_str, as_int), routes=RouteType.ANY),
    Function("over", Rec.over0, routes=RouteType.ANY),
    Function("over", Rec.over1, args=(as_str,), routes=RouteType.ANY),
    Function("over", Rec.over2, args=(as_str, as_str), routes=RouteType.ANY),
    Function("three", Rec.three, args=(as_str, as_str, as_str), routes=RouteType.ANY),
    Function("named", Rec.named, args=(_upper,), routes=RouteType.ANY),
    Function("small", Rec.small, args=(int_range(1, 5),), routes=RouteType.ANY),
    Function("rsearch", Rec.search,
             args=(lambda v: compile_ere(as_str(v), newline=True),), routes=RouteType.ANY),
    Function("params_seen", Rec.params_seen, routes=RouteType.ANY),
    Function("request_only", Rec.t, args=(as_str,), routes=RouteType.REQUEST),
    Function("reply_only", Rec.t, args=(as_str,), routes=RouteType.ONREPLY),
    Function("failure_only", Rec.t, args=(as_str,), routes=RouteType.FAILURE),
    Function("not_in_reply", Rec.t, args=(as_str,),
             routes=RouteType.REQUEST | RouteType.FAILURE),
)
PARAMS = (
    Param("count", int, 0, check=int_range(0, 100)),
    Param("label", str, "none"),
    Param("mode", str, "a", check=lambda v: v if v in ("a", "b") else _bad_mode(v)),
)
MODULE = Rec


def _bad_mode(value: object) -> str:
    raise ValueError(f"mode must be a or b, not {value!r}")
