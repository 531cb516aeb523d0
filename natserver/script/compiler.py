"""The cfg compiler: syntax tree -> Python closures, once, at start-up.

Every statement becomes a ``Callable[[MsgCtx], int]`` (SER's return convention: > 0 go
on, 0 end the current block, < 0 error/false and go on); a block calls its statements in
order and stops on 0. Module functions are bound to their instance and fixed arguments
here, so running a message walks no tree and looks nothing up by name.

Conditions return an int too: > 0 true, < 0 false, 0 "drop" (a function returned 0:
the ``if`` takes neither branch and returns 0), and :data:`EXPR_ERROR` for an element
that could not be evaluated (an unparsable URI...): it counts as false, is logged, and
``!``/``&&``/``||`` pass it through unchanged like SER's eval_expr does with drop.
"""

from __future__ import annotations

import ipaddress
import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from natserver.config import Config
from natserver.errors import CfgError, SipError
from natserver.modules import Function, Module, ModuleSpec, Param, RouteType, as_int, module_name
from natserver.script import ast, core
from natserver.script.core import Action
from natserver.script.parser import ROUTE_COUNT
from natserver.script.regex import compile_ere
from natserver.script.runtime import MsgCtx

log = logging.getLogger("natserver.script")

Finder = Callable[[str], "ModuleSpec | None"]

# A condition element that failed: false, and kept distinct from "false" so `!` keeps it false.
EXPR_ERROR = -(1 << 40)

_ROUTE_TYPES = {ast.RouteKind.REQUEST: RouteType.REQUEST,
                ast.RouteKind.ONREPLY: RouteType.ONREPLY,
                ast.RouteKind.FAILURE: RouteType.FAILURE}
_INT_OPS: dict[str, Callable[[int, int], bool]] = {
    "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt,
    ">=": operator.ge, "<=": operator.le}
_NEGATED = {"==": "!=", "!=": "==", ">": "<=", "<": ">=", ">=": "<", "<=": ">"}


def _one(m: MsgCtx) -> int:
    return 1


def _minus_one(m: MsgCtx) -> int:
    return -1


@dataclass(slots=True)
class Compiled:
    """What compile_config produces; ``natserver.script.Script`` wraps it."""

    config: Config
    modules: dict[str, Module]
    request: list[Action | None]
    onreply: list[Action | None]
    failure: list[Action | None]
    warnings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Loaded:
    spec: ModuleSpec
    basename: str
    path: ast.Str
    values: dict[str, Any] = field(default_factory=dict)


def compile_config(tree: ast.ConfigFile, finder: Finder, warnings: list[str]) -> Compiled:
    return _Compiler(tree, finder, warnings).run()


class _Compiler:
    def __init__(self, tree: ast.ConfigFile, finder: Finder, warnings: list[str]) -> None:
        self.tree = tree
        self.file = tree.file
        self.finder = finder
        self.warnings = warnings
        self.config = Config()
        self.loaded: list[_Loaded] = []
        self.functions: dict[str, list[tuple[Function, Module]]] = {}
        self.tables: dict[ast.RouteKind, list[Action | None]] = {
            kind: [None] * ROUTE_COUNT for kind in ast.RouteKind}
        self.depth = [0]                       # nesting counter of recursive route() calls
        self.kind = ast.RouteKind.REQUEST      # the route block being compiled
        self.has_return = False
        self.defined: set[int] = set()         # request routes with a body
        self.recursive: set[int] = set()       # request routes that can call themselves

    def error(self, node: Any, message: str) -> CfgError:
        return CfgError(self.file, node.line, node.col, message)

    def warn(self, node: Any, message: str) -> None:
        # Returned in Script.warnings: the caller prints them (logging may not be set up).
        self.warnings.append(f"{self.file}:{node.line}:{node.col}: {message}")

    def where(self, node: Any) -> str:
        return f"{self.file}:{node.line}:{node.col}"

    # ---- top level

    def run(self) -> Compiled:
        items = self.tree.items
        # In file order, so the first error reported is the first in the text; routes come
        # after every global (they read max_len) and every module.
        for item in items:
            if isinstance(item, ast.Assign):
                self.assign(item)
            elif isinstance(item, ast.LoadModule):
                self.loadmodule(item)
            elif isinstance(item, ast.ModParam):
                self.modparam(item)
        modules = self.instantiate()
        blocks = [item for item in items if isinstance(item, ast.RouteBlock)]
        self.defined = {b.number.value for b in blocks if b.kind is ast.RouteKind.REQUEST}
        self.recursive = _recursive_routes(blocks)
        bodies: dict[tuple[ast.RouteKind, int], list[Action]] = {}
        returns: set[tuple[ast.RouteKind, int]] = set()
        for block in blocks:
            self.kind = block.kind
            self.has_return = False
            key = (block.kind, block.number.value)
            bodies.setdefault(key, []).extend(self.statements(block.body.stmts))
            if self.has_return:
                returns.add(key)
        for (kind, number), actions in bodies.items():
            body = _sequence(actions)
            if (kind, number) in returns:
                body = core.catch_return(body)
            self.tables[kind][number] = body
        return Compiled(self.config, modules, self.tables[ast.RouteKind.REQUEST],
                        self.tables[ast.RouteKind.ONREPLY], self.tables[ast.RouteKind.FAILURE],
                        self.warnings)

    def assign(self, item: ast.Assign) -> None:
        try:
            self.config.set(item.name, item.value.value)
        except KeyError:
            raise self.error(item, f"unknown global parameter '{item.name}'") from None
        except ValueError as exc:
            raise self.error(item.value, f"bad value for '{item.name}': {exc}") from None

    def loadmodule(self, item: ast.LoadModule) -> None:
        basename = module_name(item.path.value)
        try:
            spec = self.finder(basename)
        except ImportError as exc:  # the module file exists but cannot be imported
            raise self.error(item.path, f"module '{basename}' cannot be loaded: {exc}") from None
        if spec is None:
            raise self.error(item.path, f"unknown module '{basename}'")
        if any(entry.spec.name == spec.name for entry in self.loaded):
            self.warn(item.path, f"module '{spec.name}' is already loaded")
            return
        self.loaded.append(_Loaded(spec, basename, item.path))

    def modparam(self, item: ast.ModParam) -> None:
        try:
            regex = compile_ere(f"^({item.modules.value})$", icase=True)
        except ValueError as exc:
            raise self.error(item.modules, str(exc)) from None
        matched = [entry for entry in self.loaded
                   if regex.search(entry.spec.name.encode())
                   or regex.search(entry.basename.encode())]
        if not matched:
            raise self.error(item.modules,
                             f"modparam: no module loaded so far matches '{item.modules.value}'")
        name = item.name.value
        for entry in matched:
            param = entry.spec.params.get(name)
            if param is None:
                raise self.error(item.name,
                                 f"module '{entry.spec.name}' has no parameter '{name}'")
            entry.values[name] = self.param_value(entry, param, item.value)

    def param_value(self, entry: _Loaded, param: Param, value: ast.Value) -> Any:
        raw: Any = value.value
        what = f"parameter '{param.name}' of module '{entry.spec.name}'"
        try:
            if param.type in (int, bool):
                if isinstance(value, ast.Str):
                    try:
                        raw = as_int(raw)
                    except ValueError:
                        raise ValueError(f"{what} needs a number, got {raw!r}") from None
            elif param.type is str and isinstance(value, ast.Num):
                raise ValueError(f"{what} needs a string, got the number {raw}")
            if param.check is not None:
                raw = param.check(raw)
        except ValueError as exc:
            message = str(exc)
            if what not in message:
                message = f"bad value for {what}: {message}"
            raise self.error(value, message) from None
        return raw

    def instantiate(self) -> dict[str, Module]:
        self.functions = {}
        core_module = core.Core({})
        for row in core.FUNCTIONS:
            self.functions.setdefault(row.name, []).append((row, core_module))
        modules: dict[str, Module] = {}
        for entry in self.loaded:
            try:
                instance = entry.spec.instantiate(entry.values)
            except ValueError as exc:
                raise self.error(entry.path, f"module '{entry.spec.name}': {exc}") from None
            modules[entry.spec.name] = instance
            for row in entry.spec.functions:
                self.functions.setdefault(row.name, []).append((row, instance))
        return modules

    # ---- statements

    def statements(self, stmts: tuple[ast.Stmt, ...]) -> list[Action]:
        return [self.statement(stmt) for stmt in stmts]

    def statement(self, stmt: ast.Stmt) -> Action:
        if isinstance(stmt, ast.Call):
            return self.call(stmt)
        if isinstance(stmt, ast.If):
            return self.if_statement(stmt)
        return _sequence(self.statements(stmt.stmts))

    def if_statement(self, stmt: ast.If) -> Action:
        cond = self.condition(stmt.cond)
        then = self.statement(stmt.then)
        if stmt.orelse is None:
            def if_then(m: MsgCtx) -> int:
                v = cond(m)
                if v > 0:
                    return then(m)
                return 0 if v == 0 else 1
            return if_then
        orelse = self.statement(stmt.orelse)

        def if_else(m: MsgCtx) -> int:
            v = cond(m)
            if v > 0:
                return then(m)
            if v == 0:
                return 0
            return orelse(m)
        return if_else

    def call(self, node: ast.Call) -> Action:
        name = node.name
        if name in core.CONTROL:
            return self.control(node)
        rows = self.functions.get(name)
        if not rows:
            raise self.error(node, f"unknown function '{name}'")
        count = len(node.args)
        fitting = [(row, inst) for row, inst in rows if len(row.args) == count]
        if not fitting:
            counts = sorted({len(row.args) for row, _ in rows})
            raise self.error(node, f"function '{name}' takes {_counts(counts)}, got {count}")
        route_type = _ROUTE_TYPES[self.kind]
        allowed = [(row, inst) for row, inst in fitting if row.routes & route_type]
        if not allowed:
            raise self.error(node, f"function '{name}' is not allowed in {self.kind.keyword}")
        row, instance = allowed[0]
        args = []
        for fixup, arg in zip(row.args, node.args):
            try:
                args.append(fixup(arg.value))
            except ValueError as exc:
                raise self.error(arg, f"bad argument to '{name}': {exc}") from None
        return _bind(row.method.__get__(instance, type(instance)), args)

    def control(self, node: ast.Call) -> Action:
        name = node.name
        args = node.args
        if name == "route":
            if len(args) != 1 or not isinstance(args[0], ast.Num):
                raise self.error(node, "route() takes one route number")
            n = args[0].value
            if not 0 <= n < ROUTE_COUNT:
                raise self.error(args[0], f"route number {n} is out of range 0..{ROUTE_COUNT - 1}")
            if n not in self.defined:
                self.warn(args[0], f"route[{n}] is not defined: route({n}) does nothing")
                return _one
            depth = self.depth if n in self.recursive else None
            return core.make_route_call(self.tables[ast.RouteKind.REQUEST], n, depth)
        if name == "return":
            if len(args) > 1 or (args and not isinstance(args[0], ast.Num)):
                raise self.error(node, "return takes at most one number")
            self.has_return = True
            return core.make_return(args[0].value if args else 1)
        if args:
            raise self.error(args[0], f"{name} takes no arguments")
        if name == "exit":
            return core.exit_script
        if name == "drop" and self.kind is ast.RouteKind.ONREPLY:
            return core.drop_reply
        return core.stop

    # ---- conditions

    def condition(self, expr: ast.Expr, negate: bool = False) -> Action:
        """A closure returning > 0 true, < 0 false, 0 drop (or EXPR_ERROR)."""
        if isinstance(expr, ast.Not):
            return self.condition(expr.operand, not negate)
        if isinstance(expr, ast.Compare):
            return self.compare(expr, negate)
        if isinstance(expr, ast.Number):
            return _minus_one if bool(expr.value) == negate else _one
        if isinstance(expr, ast.And | ast.Or):
            cond = self.logical(expr)
        elif isinstance(expr, ast.Call):
            cond = self.call(expr)
        else:
            cond = self.statement(expr)
        return _not(cond) if negate else cond

    def logical(self, expr: ast.And | ast.Or) -> Action:
        left = self.condition(expr.left)
        right = self.condition(expr.right)
        if isinstance(expr, ast.And):
            def both(m: MsgCtx) -> int:
                v = left(m)
                if v <= 0:           # false, drop or error: SER stops here
                    return v
                return right(m)
            return both

        def either(m: MsgCtx) -> int:
            v = left(m)
            if v < 0 and v != EXPR_ERROR:   # only a plain false goes on (SER)
                return right(m)
            return v
        return either

    def compare(self, node: ast.Compare, negate: bool) -> Action:
        op = node.op
        if negate:
            if op == "=~":
                return _not(self.compare(node, False))
            op = _NEGATED[op]
        left = node.left
        if left in ("uri", "status", "from_uri", "to_uri"):
            return self.compare_uri(node, op)
        if left == "method":
            return self.compare_method(node, op)
        if left == "msg:len":
            limit = (self.config.max_len if isinstance(node.right, ast.MaxLen)
                     else node.right.value)  # type: ignore[union-attr]
            test = _INT_OPS[op]
            return lambda m: 1 if test(len(m.msg.buf), limit) else -1
        if left in ("src_port", "dst_port"):
            number = node.right.value  # type: ignore[union-attr]
            test = _INT_OPS[op]
            if left == "src_port":
                return lambda m: 1 if test(m.src_port, number) else -1
            return lambda m: 1 if test(m.local_port, number) else -1
        if left in ("src_ip", "dst_ip"):
            return self.compare_ip(node, op)
        if left == "proto":
            value = str(node.right.value).lower()  # type: ignore[union-attr]
            if value not in ("udp", "tcp", "tls", "sctp", "1", "2", "3", "4"):
                raise self.error(node.right, f"unknown protocol {value!r}")
            is_udp = value in ("udp", "1")     # natserver receives UDP only
            return _one if is_udp == (op == "==") else _minus_one
        # af
        value = str(node.right.value).lower()  # type: ignore[union-attr]
        families = {"inet": False, "2": False, "inet6": True, "10": True}
        if value not in families:
            raise self.error(node.right, f"unknown address family {value!r} (inet or inet6)")
        want_v6 = families[value]
        yes, no = (1, -1) if op == "==" else (-1, 1)
        return lambda m: yes if (":" in m.src_ip) == want_v6 else no

    def regex(self, node: ast.Str) -> Any:
        try:
            return compile_ere(node.value, icase=True, newline=False)
        except ValueError as exc:
            raise self.error(node, str(exc)) from None

    def compare_method(self, node: ast.Compare, op: str) -> Action:
        where = self.where(node)
        right = node.right
        assert isinstance(right, ast.Str)
        if op == "=~":
            rx = self.regex(right)

            def method_matches(m: MsgCtx) -> int:
                msg = m.msg
                try:
                    method = msg.method if msg.is_request else msg.cseq.method
                except SipError as exc:
                    return _failed(where, exc)
                return 1 if rx.search(method) else -1
            return method_matches
        target = right.value.encode().upper()
        yes, no = (1, -1) if op == "==" else (-1, 1)

        def method_is(m: MsgCtx) -> int:
            msg = m.msg
            try:
                method = msg.method if msg.is_request else msg.cseq.method
            except SipError as exc:
                return _failed(where, exc)
            # Equal length and case-insensitive (Kamailio), not SER's prefix compare.
            return yes if method == target or method.upper() == target else no
        return method_is

    def compare_uri(self, node: ast.Compare, op: str) -> Action:
        where = self.where(node)
        subject = _URI_SUBJECTS["uri" if node.left == "status" else node.left]
        right = node.right
        if isinstance(right, ast.Myself):
            return self.compare_myself(node, op)
        assert isinstance(right, ast.Str)
        if op == "=~":
            rx = self.regex(right)

            def uri_matches(m: MsgCtx) -> int:
                try:
                    text = subject(m)
                except SipError as exc:
                    return _failed(where, exc)
                return 1 if rx.search(text) else -1
            return uri_matches
        target = right.value.encode().lower()
        yes, no = (1, -1) if op == "==" else (-1, 1)

        def uri_is(m: MsgCtx) -> int:
            try:
                text = subject(m)
            except SipError as exc:
                return _failed(where, exc)
            return yes if text.lower() == target else no
        return uri_is

    def compare_myself(self, node: ast.Compare, op: str) -> Action:
        from natserver.sip.uri import parse_uri  # the SIP package is imported on first use

        where = self.where(node)
        yes, no = (1, -1) if op == "==" else (-1, 1)
        left = "uri" if node.left == "status" else node.left
        if left == "uri":
            def uri_is_myself(m: MsgCtx) -> int:
                msg = m.msg
                try:
                    # In a reply `uri` is the status code: never a URI, so an error.
                    uri = parse_uri(m.ruri if msg.is_request else b"%d" % msg.status)
                except SipError as exc:
                    return _failed(where, exc)
                return yes if m.ctx.is_myself(uri.host, uri.port or 5060) else no
            return uri_is_myself
        header = operator.attrgetter("from_" if left == "from_uri" else "to")

        def header_uri_is_myself(m: MsgCtx) -> int:
            try:
                uri = header(m.msg).uri
            except SipError as exc:
                return _failed(where, exc)
            return yes if m.ctx.is_myself(uri.host, uri.port or 5060) else no
        return header_uri_is_myself

    def compare_ip(self, node: ast.Compare, op: str) -> Action:
        ip_of = operator.attrgetter("src_ip" if node.left == "src_ip" else "local_ip")
        right = node.right
        assert isinstance(right, ast.Str)
        if op == "=~":
            rx = self.regex(right)
            return lambda m: 1 if rx.search(ip_of(m).encode()) else -1
        yes, no = (1, -1) if op == "==" else (-1, 1)
        text = right.value.replace("[", "").replace("]", "")
        try:
            if "/" in text:
                net = ipaddress.ip_network(text, strict=False)
            else:
                address = str(ipaddress.ip_address(text))
        except ValueError as exc:
            raise self.error(right, f"{node.left} needs an IP address or network: {exc}") from None
        if "/" not in text:
            return lambda m: yes if ip_of(m) == address else no
        where = self.where(node)

        def in_network(m: MsgCtx) -> int:
            try:
                inside = ipaddress.ip_address(ip_of(m)) in net
            except ValueError as exc:
                return _failed(where, exc)
            return yes if inside else no
        return in_network


def _ruri_or_status(m: MsgCtx) -> bytes:
    msg = m.msg
    return m.ruri if msg.is_request else b"%d" % msg.status


_URI_SUBJECTS: dict[str, Callable[[MsgCtx], bytes]] = {
    "uri": _ruri_or_status,
    "from_uri": lambda m: m.msg.from_.uri_text,
    "to_uri": lambda m: m.msg.to.uri_text,
}


def _failed(where: str, exc: Exception) -> int:
    log.warning("%s: condition cannot be evaluated (%s), counts as false", where, exc)
    return EXPR_ERROR


def _not(cond: Action) -> Action:
    def negated(m: MsgCtx) -> int:
        v = cond(m)
        if v > 0:
            return -1
        if v == 0 or v == EXPR_ERROR:   # drop and error pass through `!`
            return v
        return 1
    return negated


def _bind(bound: Callable[..., int], args: list[Any]) -> Action:
    """The call ``bound(m, *args)`` as a one-argument closure (no tuple building for 0-2)."""
    if not args:
        return bound
    if len(args) == 1:
        a = args[0]
        return lambda m: bound(m, a)
    if len(args) == 2:
        a, b = args
        return lambda m: bound(m, a, b)
    fixed = tuple(args)
    return lambda m: bound(m, *fixed)


def _sequence(actions: list[Action]) -> Action:
    """Run ``actions`` in order; a 0 ends the block and is returned (SER run_actions)."""
    if not actions:
        return _one
    if len(actions) == 1:
        return actions[0]
    if len(actions) == 2:
        a, b = actions

        def two(m: MsgCtx) -> int:
            r = a(m)
            return r if not r else b(m)
        return two
    steps = tuple(actions)

    def many(m: MsgCtx) -> int:
        r = 1
        for step in steps:
            r = step(m)
            if not r:
                return r
        return r
    return many


def _counts(counts: list[int]) -> str:
    if counts == [0]:
        return "no arguments"
    words = [str(c) for c in counts]
    text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
    return f"{text} argument" + ("" if counts == [1] else "s")


def _route_calls(node: Any, out: set[int]) -> None:
    """Collect the N of every route(N) inside ``node``."""
    if isinstance(node, ast.Call):
        if node.name == "route" and node.args and isinstance(node.args[0], ast.Num):
            out.add(node.args[0].value)
    elif isinstance(node, ast.Block):
        for stmt in node.stmts:
            _route_calls(stmt, out)
    elif isinstance(node, ast.If):
        _route_calls(node.cond, out)
        _route_calls(node.then, out)
        if node.orelse is not None:
            _route_calls(node.orelse, out)
    elif isinstance(node, ast.Not):
        _route_calls(node.operand, out)
    elif isinstance(node, ast.And | ast.Or):
        _route_calls(node.left, out)
        _route_calls(node.right, out)


def _recursive_routes(blocks: list[ast.RouteBlock]) -> set[int]:
    """Request routes that can reach themselves through route() calls: only calls into
    these need the nesting counter (any other chain is at most 20 deep)."""
    graph: dict[int, set[int]] = {}
    for block in blocks:
        if block.kind is ast.RouteKind.REQUEST:
            _route_calls(block.body, graph.setdefault(block.number.value, set()))
    recursive = set()
    for start in graph:
        seen: set[int] = set()
        todo = list(graph[start])
        while todo:
            n = todo.pop()
            if n == start:
                recursive.add(start)
                break
            if n not in seen:
                seen.add(n)
                todo.extend(graph.get(n, ()))
    return recursive
