"""The cfg syntax tree: what the parser reads, before any name is resolved.

Every node carries the line and column (1-based) the compiler reports errors at.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union


class RouteKind(enum.IntEnum):
    REQUEST = 0      # route{} / route[N]
    ONREPLY = 1      # onreply_route[N]
    FAILURE = 2      # failure_route[N]

    @property
    def keyword(self) -> str:
        return ("route", "onreply_route", "failure_route")[self]


@dataclass(frozen=True, slots=True)
class Str:
    value: str
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Num:
    value: int
    line: int
    col: int


Value = Union[Str, Num]


# ---- top level

@dataclass(frozen=True, slots=True)
class Assign:
    """``name=value``: a global parameter. ``value`` is a string, a number, or the text
    of a bare host/listen value (``udp:192.0.2.13:5060``) as a Str."""

    name: str
    value: Value
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class LoadModule:
    path: Str
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class ModParam:
    modules: Str       # POSIX ERE over module names
    name: Str
    value: Value
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class RouteBlock:
    kind: RouteKind
    number: Num        # 0 for `route {`
    body: Block
    line: int
    col: int


# ---- statements

@dataclass(frozen=True, slots=True)
class Block:
    stmts: tuple[Stmt, ...]
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Call:
    """A function call or built-in: ``f("a", 2)``, ``break``, ``route(1)``, ``setflag(6)``."""

    name: str
    args: tuple[Value, ...]
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class If:
    cond: Expr
    then: Stmt
    orelse: Stmt | None
    line: int
    col: int


Stmt = Union[Block, Call, If]


# ---- expressions

@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class And:
    left: Expr
    right: Expr
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Or:
    left: Expr
    right: Expr
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Myself:
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class MaxLen:
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Compare:
    """``left op right``: left is one of method, uri (status), from_uri, to_uri, msg:len,
    src_ip, dst_ip, src_port, dst_port, proto, af. ``myself == uri`` is stored as
    ``uri == myself``. A bare host or ID on the right is a Str holding its text."""

    left: str
    op: str            # == != =~ > < >= <=
    right: Str | Num | Myself | MaxLen
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Number:
    """A number used as a condition: non-zero is true."""

    value: int
    line: int
    col: int


Expr = Union[Not, And, Or, Compare, Number, Call, If, Block]
TopItem = Union[Assign, LoadModule, ModParam, RouteBlock]


@dataclass(frozen=True, slots=True)
class ConfigFile:
    file: str
    items: tuple[TopItem, ...]
