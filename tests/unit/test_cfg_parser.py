"""The cfg parser: the grammar of cfg-language.md §10 into the syntax tree, and syntax errors."""

from __future__ import annotations

import pytest

from natserver.errors import CfgError
from natserver.script import ast
from natserver.script.ast import (
    And, Assign, Block, Call, Compare, If, LoadModule, MaxLen, ModParam, Myself, Not, Num,
    Number, Or, RouteBlock, RouteKind, Str,
)
from natserver.script.parser import parse


def items(text: str) -> tuple:
    return parse(text, "t.cfg").items


def body(stmts: str) -> tuple:
    """The statements of `route { stmts }`."""
    (block,) = items("route {\n" + stmts + "\n}")
    return block.body.stmts


def cond(expr: str) -> ast.Expr:
    (stmt,) = body(f"if ({expr}) break;")
    return stmt.cond


def syntax_error(text: str) -> CfgError:
    with pytest.raises(CfgError) as info:
        parse(text, "t.cfg")
    return info.value


def shape(node: object) -> object:
    """The tree without positions, for compact comparisons."""
    if isinstance(node, (Str, Num)):
        return node.value
    if isinstance(node, Call):
        return (node.name, *[shape(a) for a in node.args])
    if isinstance(node, Block):
        return [shape(s) for s in node.stmts]
    if isinstance(node, If):
        return ("if", shape(node.cond), shape(node.then),
                None if node.orelse is None else shape(node.orelse))
    if isinstance(node, Not):
        return ("!", shape(node.operand))
    if isinstance(node, And):
        return ("&&", shape(node.left), shape(node.right))
    if isinstance(node, Or):
        return ("||", shape(node.left), shape(node.right))
    if isinstance(node, Compare):
        return (node.left, node.op, shape(node.right))
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Myself):
        return "myself"
    if isinstance(node, MaxLen):
        return "max_len"
    raise AssertionError(node)


# ---- top level

def test_global_assignments_keep_value_and_positions():
    got = items('debug=3\nfork=yes\nlog_stderror=no\nfifo="/tmp/x"\ndebug = -1\n')
    assert got == (
        Assign("debug", Num(3, 1, 7), 1, 1),
        Assign("fork", Num(1, 2, 6), 2, 1),
        Assign("log_stderror", Num(0, 3, 14), 3, 1),
        Assign("fifo", Str("/tmp/x", 4, 6), 4, 1),
        Assign("debug", Num(-1, 5, 9), 5, 1),
    )


@pytest.mark.parametrize("value", [
    "192.0.2.13", "udp:192.0.2.13", "udp:192.0.2.13:5060", "192.0.2.13:5070",
    "[2001:db8::1]", "udp:[2001:db8::1]:5062", "[::1]", "sip-1.example.com",
    "example.com:5060", "UDP:host", "localhost", "*:5060", "host:*", "010.1.1.1",
])
def test_listen_values_are_kept_as_written(value):
    (item,) = items(f"listen={value}   # comment\n")
    assert item == Assign("listen", Str(value, 1, 8), 1, 1)


def test_listen_value_stops_at_the_next_assignment():
    got = items("listen=192.0.2.13\nport=5060\nalias=example.net\n")
    assert [(i.name, i.value.value) for i in got] == [
        ("listen", "192.0.2.13"), ("port", 5060), ("alias", "example.net")]


def test_loadmodule_and_modparam():
    got = items('loadmodule "/usr/lib/ser/modules/sl.so"\n'
                'modparam("auth_db|usrloc", "db_url", "mysql://x")\n'
                'modparam("rr", "enable_full_lr", 1)\nmodparam("x", "y", -2);\n')
    assert got == (
        LoadModule(Str("/usr/lib/ser/modules/sl.so", 1, 12), 1, 1),
        ModParam(Str("auth_db|usrloc", 2, 10), Str("db_url", 2, 28), Str("mysql://x", 2, 38), 2, 1),
        ModParam(Str("rr", 3, 10), Str("enable_full_lr", 3, 16), Num(1, 3, 34), 3, 1),
        ModParam(Str("x", 4, 10), Str("y", 4, 15), Num(-2, 4, 20), 4, 1),
    )


def test_route_blocks():
    got = items("route { break; }\nroute[3] { }\nonreply_route[1] { }\nfailure_route[19] {}\n")
    assert [(b.kind, b.number.value, b.line) for b in got] == [
        (RouteKind.REQUEST, 0, 1), (RouteKind.REQUEST, 3, 2), (RouteKind.ONREPLY, 1, 3),
        (RouteKind.FAILURE, 19, 4)]
    assert isinstance(got[0], RouteBlock) and shape(got[0].body) == [("break",)]


@pytest.mark.parametrize("text, line, col, message", [
    ("route[20] {}", 1, 7, "route number 20 is out of range 0..19"),
    ("\nonreply_route[0] {}", 2, 15, "onreply_route number 0 is out of range 1..19"),
    ("failure_route[20] {}", 1, 15, "failure_route number 20 is out of range 1..19"),
])
def test_route_numbers_out_of_range(text, line, col, message):
    err = syntax_error(text)
    assert (err.line, err.col, err.message) == (line, col, message)


# ---- statements

def test_calls_with_zero_to_three_arguments():
    got = body('a(); b("x"); c("x", 2); d(1, "y", -3);')
    assert [shape(s) for s in got] == [("a",), ("b", "x"), ("c", "x", 2), ("d", 1, "y", -3)]
    assert (got[2].line, got[2].col, got[2].args[1].col) == (2, 14, 21)


def test_builtins_with_and_without_parentheses():
    got = body("break; break(); drop; drop(); exit; return; return(2); return 3; "
               "force_rport; force_rport(); add_rport; route(1); setflag(6); "
               "resetflag(6); isflagset(6);")
    assert [shape(s) for s in got] == [
        ("break",), ("break",), ("drop",), ("drop",), ("exit",), ("return",), ("return", 2),
        ("return", 3), ("force_rport",), ("force_rport",), ("add_rport",), ("route", 1),
        ("setflag", 6), ("resetflag", 6), ("isflagset", 6)]


def test_empty_statements_and_blocks():
    assert [shape(s) for s in body(";; a(); {} { b(); };")] == [("a",), [], [("b",)]]


def test_if_else_if_else():
    (stmt,) = body('if (a()) b(); else if (c()) { d(); } else e();')
    assert shape(stmt) == ("if", ("a",), ("b",), ("if", ("c",), [("d",)], ("e",)))


def test_if_needs_no_semicolon_and_both_block_endings_parse():
    got = body('if (a()) { b(); }\nc();\nif (d()) { e(); };\nf();')
    assert [shape(s) for s in got] == [
        ("if", ("a",), [("b",)], None), ("c",), ("if", ("d",), [("e",)], None), ("f",)]


def test_block_followed_by_if_without_else_is_two_statements():
    got = body('if (method=="ACK") {\n route(1);\n break;\n} if (method=="CANCEL") {\n'
               ' route(1);\n} else if (method=="INVITE") { route(3); };')
    assert len(got) == 2
    assert shape(got[0]) == ("if", ("method", "==", "ACK"), [("route", 1), ("break",)], None)
    assert shape(got[1])[0] == "if" and shape(got[1])[3][0] == "if"
    assert (got[1].line, got[1].col) == (5, 3)


def test_else_binds_to_the_nearest_if():
    (stmt,) = body("if (a()) if (b()) c(); else d();")
    assert shape(stmt) == ("if", ("a",), ("if", ("b",), ("c",), ("d",)), None)


# ---- expressions

def test_precedence_not_and_or():
    assert shape(cond("a() || b() && !c()")) == ("||", ("a",), ("&&", ("b",), ("!", ("c",))))
    assert shape(cond("(a() || b()) && c()")) == ("&&", ("||", ("a",), ("b",)), ("c",))
    assert shape(cond("a() && b() && c()")) == ("&&", ("&&", ("a",), ("b",)), ("c",))
    assert shape(cond("!!a()")) == ("!", ("!", ("a",)))
    assert shape(cond("a() or b() and not c()")) == shape(cond("a() | b() & ! c()"))


def test_comparisons():
    assert shape(cond('method=="INVITE"')) == ("method", "==", "INVITE")
    assert shape(cond("method != REGISTER")) == ("method", "!=", "REGISTER")
    assert shape(cond('method =~ "^(INVITE|ACK)$"')) == ("method", "=~", "^(INVITE|ACK)$")
    assert shape(cond("uri==myself")) == ("uri", "==", "myself")
    assert shape(cond("myself != uri")) == ("uri", "!=", "myself")
    assert shape(cond('status=~"(180)|(183)|2[0-9][0-9]"')) == (
        "status", "=~", "(180)|(183)|2[0-9][0-9]")
    assert shape(cond("uri == sip.example.com")) == ("uri", "==", "sip.example.com")
    assert shape(cond('from_uri =~ "alice"')) == ("from_uri", "=~", "alice")
    assert shape(cond("to_uri == myself")) == ("to_uri", "==", "myself")
    assert shape(cond("msg:len > max_len")) == ("msg:len", ">", "max_len")
    assert shape(cond("msg:len <= 0x100")) == ("msg:len", "<=", 256)
    assert shape(cond("src_ip == 10.0.0.0/8")) == ("src_ip", "==", "10.0.0.0/8")
    assert shape(cond("dst_ip != [::1]")) == ("dst_ip", "!=", "[::1]")
    assert shape(cond("src_port >= 1024")) == ("src_port", ">=", 1024)
    assert shape(cond("proto == udp && af == inet6")) == (
        "&&", ("proto", "==", "udp"), ("af", "==", "inet6"))
    assert shape(cond("1")) == 1 and shape(cond("-1")) == -1


def test_function_if_and_block_elements():
    assert shape(cond('t("x") && route(2)')) == ("&&", ("t", "x"), ("route", 2))
    assert shape(cond("{ a(); }")) == [("a",)]


def test_seed_like_condition_positions():
    (stmt,) = body('  if (isflagset(6) && status=~"(180)|(183)") {}')
    expr = stmt.cond
    assert (expr.line, expr.col) == (2, 20)                 # the &&
    assert (expr.left.line, expr.left.col) == (2, 7)        # isflagset
    assert (expr.right.line, expr.right.col, expr.right.right.col) == (2, 23, 31)


# ---- syntax errors with their exact position

@pytest.mark.parametrize("text, line, col, message", [
    ("route {\n  a()\n  b();\n}", 3, 3, "syntax error: expected ';' after a, got 'b'"),
    ("route {\n  a();\n", 3, 1, "syntax error: expected '}', got end of file"),
    ("route {\n  if (method == ) a();\n}", 2, 17, "syntax error: expected a string, got ')'"),
    ("route {\n  if (a() b();\n}", 2, 11, "syntax error: expected ')', got 'b'"),
    ("route { foo; }", 1, 12, "syntax error: expected '(' after foo, got ';'"),
    ("route { method; }", 1, 9, "syntax error: expected a statement, got 'method'"),
    ("route { else a(); }", 1, 9, "syntax error: expected a statement, got 'else'"),
    ("route { a(b); }", 1, 11, "syntax error: expected a string or number argument, got 'b'"),
    ("route { a(\"x\" \"y\"); }", 1, 15, "syntax error: expected ',' or ')', got '\"y\"'"),
    ("route { if (method > \"X\") a(); }", 1, 20, "syntax error: expected == != =~, got '>'"),
    ("route { if (uri =~ myself) a(); }", 1, 20,
     "myself can only be compared with == or !="),
    ("route { if (src_ip == myself) a(); }", 1, 23,
     "myself can only be compared with uri, from_uri or to_uri"),
    ("route { if (myself == method) a(); }", 1, 23,
     "syntax error: expected uri, from_uri or to_uri after myself, got 'method'"),
    ("route { if (msg:len > \"1\") a(); }", 1, 23, "syntax error: expected a number, got '\"1\"'"),
    ("route { if () a(); }", 1, 13, "syntax error: expected an expression, got ')'"),
    ("debug 3", 1, 7, "syntax error: expected '=' after a parameter name, got '3'"),
    ("42", 1, 1,
     "syntax error: expected a parameter, loadmodule, modparam or route block, got '42'"),
    ("loadmodule sl", 1, 12, "syntax error: expected a module path string, got 'sl'"),
    ('modparam("a", "b")', 1, 18, "syntax error: expected ',', got ')'"),
    ("onreply_route { }", 1, 15, "syntax error: expected '[', got '{'"),
    ("route[1] break;", 1, 10, "syntax error: expected '{', got 'break'"),
    ("listen=udp:", 1, 12, "syntax error: expected a value, got end of file"),
])
def test_syntax_errors(text, line, col, message):
    err = syntax_error(text)
    assert (err.file, err.line, err.col, err.message) == ("t.cfg", line, col, message)
