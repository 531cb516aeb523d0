"""other: a second module for modparam regexes and for refusing bad parameters."""

from __future__ import annotations

from typing import Any

from natserver.modules import Function, Module, Param, RouteType, as_str


class Other(Module):
    NAME = "other"

    def __init__(self, params: dict[str, Any]) -> None:
        if params["label"] == "explode":
            raise ValueError("label 'explode' is refused by the module")
        super().__init__(params)

    def t(self, m: Any, name: str) -> int:
        m.vars.setdefault("trace", []).append(("other", name))
        return 1


FUNCTIONS = (
    Function("t", Other.t, args=(as_str,), routes=RouteType.ANY),
    Function("other_t", Other.t, args=(as_str,), routes=RouteType.ANY),
)
PARAMS = (
    Param("count", int, 7),
    Param("label", str, ""),
)
MODULE = Other
