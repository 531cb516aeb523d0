"""The cfg compiler: name resolution and every compile error with its file:line:col, and
the execution semantics of compiled routes (SER's return convention, cfg-language.md §7).

Routes run over the test modules of tests/unit/cfgmods (found by their own finder); their
functions record each call in m.vars["trace"].
"""

from __future__ import annotations

import logging

import pytest

from natserver.errors import CfgError
from natserver.modules import RouteType
from natserver.script import Script, load
from natserver.script.compiler import EXPR_ERROR
from tests.unit.cfgmods import REPLY, finder, msgctx, parse_message, reply, request

HEAD = 'loadmodule "/usr/lib/ser/modules/rec.so"\n'


def compile_cfg(text: str, *, head: str = HEAD) -> Script:
    return load("t.cfg", text=head + text, finder=finder)


def cfg_error(text: str, *, head: str = HEAD) -> CfgError:
    with pytest.raises(CfgError) as info:
        compile_cfg(text, head=head)
    return info.value


def where(err: CfgError) -> tuple[str, int, int, str]:
    return (err.file, err.line, err.col, err.message)


def run(text: str, msg=None, *, head: str = HEAD) -> tuple[int, list, object]:
    """Compile, run route{} over ``msg`` (an INVITE by default); (result, trace, m)."""
    script = compile_cfg(text, head=head)
    m = msgctx(script, msg if msg is not None else request())
    result = script.run_request(m)
    return result, m.vars.get("trace", []), m


def run_reply(text: str, n: int = 1, msg=None) -> tuple[int, list, object]:
    script = compile_cfg(text)
    m = msgctx(script, msg if msg is not None else reply(200))
    result = script.run_onreply(n, m)
    return result, m.vars.get("trace", []), m


# ---- the Script object

def test_script_tables_config_and_modules():
    script = compile_cfg('debug=4\nlisten=192.0.2.13\nmodparam("rec", "count", 5)\n'
                         'route { t("a"); }\nroute[2] { t("b"); }\n'
                         'onreply_route[3] { t("c"); }\nfailure_route[4] { t("d"); }\n')
    assert script.config.debug == 4
    assert script.config.listens() == [("192.0.2.13", 5060)]
    assert list(script.modules) == ["rec"] and script.modules["rec"].params["count"] == 5
    for table in (script.request, script.onreply, script.failure):
        assert len(table) == 20
    assert [i for i, r in enumerate(script.request) if r] == [0, 2]
    assert [i for i, r in enumerate(script.onreply) if r] == [3]
    assert [i for i, r in enumerate(script.failure) if r] == [4]
    assert script.warnings == []


def test_missing_routes_return_one():
    script = compile_cfg("")
    m = msgctx(script, request())
    assert script.run_request(m) == 1
    assert script.run_onreply(5, m) == 1
    assert script.run_failure(5, m) == 1


def test_failure_route_runs():
    script = compile_cfg('failure_route[2] { t("f"); break; t("no"); }')
    m = msgctx(script, request(), RouteType.FAILURE)
    assert script.run_failure(2, m) == 0
    assert m.vars["trace"] == ["f"]


# ---- return values and control flow (SER rules)

def test_statements_run_in_order_and_the_last_value_is_returned():
    assert run('route { t("a"); ret("b", -4); }')[:2] == (-4, ["a", "b"])


def test_break_ends_the_main_route():
    assert run('route { t("a"); break; t("b"); }')[:2] == (0, ["a"])


def test_break_inside_if_climbs_out_to_the_route_body():
    assert run('route { if (1) { t("a"); if (1) { break; }; t("b"); }; t("c"); }')[:2] \
        == (0, ["a"])


def test_break_leaves_only_the_current_route():
    result, trace, _ = run('route { route(1); t("after"); }\n'
                           'route[1] { t("in1"); break; t("never"); }')
    assert (result, trace) == (1, ["in1", "after"])


def test_function_returning_zero_as_a_statement_ends_the_block():
    assert run('route { ret("a", 0); t("b"); }')[:2] == (0, ["a"])


def test_negative_results_do_not_stop():
    assert run('route { ret("a", -1); ret("b", -2); t("c"); }')[:2] == (1, ["a", "b", "c"])


def test_zero_as_a_condition_drops():
    result, trace, _ = run('route { if (ret("c", 0)) { t("then"); } else { t("else"); };'
                           ' t("after"); }')
    assert (result, trace) == (0, ["c"])


def test_drop_passes_through_not_and_or():
    assert run('route { if (!ret("c", 0)) t("then"); else t("else"); t("x"); }')[:2] \
        == (0, ["c"])
    assert run('route { if (ret("a", 0) || t("b")) t("then"); t("x"); }')[:2] == (0, ["a"])
    assert run('route { if (t("a") && ret("b", 0)) t("then"); else t("e"); t("x"); }')[:2] \
        == (0, ["a", "b"])
    assert run('route { if (ret("a", -1) || ret("b", 0)) t("then"); t("x"); }')[:2] \
        == (0, ["a", "b"])


def test_drop_in_a_called_route_ends_only_that_route():
    result, trace, _ = run('route { route(1); t("after"); }\n'
                           'route[1] { if (ret("c", 0)) t("then"); t("no"); }')
    assert (result, trace) == (1, ["c", "after"])


def test_if_returns_the_branch_value_and_one_without_a_branch():
    assert run('route { if (ret("a", -1)) t("then"); }')[:2] == (1, ["a"])
    assert run('route { if (t("a")) ret("b", -7); }')[:2] == (-7, ["a", "b"])
    assert run('route { if (ret("a", -1)) t("x"); else ret("b", -3); }')[:2] == (-3, ["a", "b"])


def test_short_circuit():
    assert run('route { if (ret("a", -1) && t("b")) t("x"); }')[1] == ["a"]
    assert run('route { if (t("a") || t("b")) t("x"); }')[1] == ["a", "x"]
    assert run('route { if (ret("a", -1) || t("b")) t("x"); }')[1] == ["a", "b", "x"]
    assert run('route { if (t("a") && ret("b", -1)) t("x"); else t("y"); }')[1] \
        == ["a", "b", "y"]


def test_not_negates_function_results():
    assert run('route { if (!ret("a", -5)) t("yes"); }')[1] == ["a", "yes"]
    assert run('route { if (!t("a")) t("yes"); else t("no"); }')[1] == ["a", "no"]
    assert run('route { if (!!t("a")) t("yes"); }')[1] == ["a", "yes"]


def test_else_if_chain():
    text = ('route { if (method == "INVITE") t("inv"); else if (method == "REGISTER") '
            't("reg"); else if (method == "BYE") { t("bye"); } else t("other"); }')
    assert run(text, request(b"INVITE"))[1] == ["inv"]
    assert run(text, request(b"REGISTER"))[1] == ["reg"]
    assert run(text, request(b"BYE"))[1] == ["bye"]
    assert run(text, request(b"OPTIONS"))[1] == ["other"]


def test_block_then_if_without_else_is_a_new_statement():
    text = ('route {\n if (method=="ACK") {\n t("ack");\n } if (method=="CANCEL") {\n'
            ' t("cancel");\n break;\n } else if (method=="INVITE") {\n t("invite");\n };\n'
            ' t("end");\n}')
    assert run(text, request(b"ACK"))[1] == ["ack", "end"]
    assert run(text, request(b"CANCEL"))[1] == ["cancel"]
    assert run(text, request(b"INVITE"))[1] == ["invite", "end"]


def test_route_call_returns_one_unless_the_route_was_negative():
    base = 'route { if (route(1)) t("true"); else t("false"); }\n'
    assert run(base + 'route[1] { ret("r", -3); }')[1] == ["r", "false"]
    assert run(base + 'route[1] { ret("r", 0); }')[1] == ["r", "true"]
    assert run(base + 'route[1] { ret("r", 5); }')[1] == ["r", "true"]
    assert run(base + 'route[1] { }')[1] == ["true"]


def test_route_call_as_a_statement_with_a_negative_result_goes_on():
    assert run('route { route(1); t("b"); }\nroute[1] { ret("a", -1); }')[:2] == (1, ["a", "b"])


def test_undefined_route_is_empty_and_warned_about():
    script = compile_cfg('route {\n  route(7); t("b");\n}')
    assert script.warnings == ["t.cfg:3:9: route[7] is not defined: route(7) does nothing"]
    m = msgctx(script, request())
    assert script.run_request(m) == 1 and m.vars["trace"] == ["b"]


def test_same_route_number_twice_appends_the_bodies():
    text = 'route { t("a"); }\nroute[1] { t("x"); }\nroute { t("b"); route(1); }'
    assert run(text)[1] == ["a", "b", "x"]


def test_exit_stops_the_whole_script():
    result, trace, _ = run('route { route(1); t("after"); }\nroute[1] { t("a"); exit; t("b"); }')
    assert (result, trace) == (0, ["a"])


def test_return_leaves_the_route_with_its_value():
    base = 'route { if (route(1)) t("true"); else t("false"); t("end"); }\n'
    assert run(base + 'route[1] { if (1) { return(-2); }; t("no"); }')[1] == ["false", "end"]
    assert run(base + 'route[1] { t("r"); return; t("no"); }')[1] == ["r", "true", "end"]
    assert run(base + 'route[1] { return(0); }')[:2] == (0, [])
    assert run('route { t("a"); return(-9); t("b"); }')[:2] == (-9, ["a"])


def test_nesting_is_limited_to_100_route_calls(caplog):
    with caplog.at_level(logging.ERROR, logger="natserver.script"):
        result, trace, _ = run('route { route(1); t("after"); }\nroute[1] { t("x"); route(1); }')
    assert result == 0
    assert trace == ["x"] * 100
    assert "more than 100 nested route calls" in caplog.text


def test_nesting_counter_is_reset_after_each_message():
    script = compile_cfg('route { route(1); }\nroute[1] { t("x"); if (ret("n", -1)) route(1); }')
    for _ in range(3):
        m = msgctx(script, request())
        assert script.run_request(m) == 1
        assert m.vars["trace"] == ["x", "n"]


def test_mutual_recursion_is_limited_too():
    result, trace, _ = run('route { route(1); }\nroute[1] { t("1"); route(2); }\n'
                           'route[2] { t("2"); route(1); }')
    assert result == 0 and len(trace) == 100


def test_drop_in_onreply_route_suppresses_the_reply():
    result, trace, m = run_reply('onreply_route[1] { t("a"); drop; t("b"); }')
    assert (result, trace, m.vars.get("drop")) == (0, ["a"], True)


def test_drop_in_request_route_is_break():
    result, trace, m = run('route { t("a"); drop(); t("b"); }')
    assert (result, trace, m.vars.get("drop")) == (0, ["a"], None)


def test_onreply_route_return_value_and_break():
    assert run_reply('onreply_route[1] { t("a"); break; t("b"); }')[:2] == (0, ["a"])


# ---- core functions

def test_flags():
    result, trace, m = run('route { setflag(6); setflag(0); setflag(31);\n'
                           ' if (isflagset(6)) t("6"); resetflag(6);\n'
                           ' if (isflagset(6)) t("6 again"); if (!isflagset(5)) t("not 5"); }')
    assert trace == ["6", "not 5"]
    assert m.flags == (1 << 0) | (1 << 31)


def test_flags_are_visible_in_called_routes():
    assert run('route { setflag(3); route(1); }\nroute[1] { if (isflagset(3)) t("y"); }')[1] \
        == ["y"]


def test_force_rport_and_add_rport():
    for stmt in ("force_rport;", "force_rport();", "add_rport;", "add_rport();"):
        _, _, m = run(f"route {{ {stmt} }}")
        assert m.force_rport is True
    _, _, m = run('route { t("x"); }')
    assert m.force_rport is False


def test_log(caplog):
    with caplog.at_level(logging.DEBUG, logger="natserver.script"):
        result, _, _ = run('route { log("plain\\n"); log(-1, "an error"); log(1, "warned"); }')
    assert result == 1
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "natserver.script"]
    assert records == [(logging.DEBUG, "plain"), (logging.ERROR, "an error"),
                       (logging.WARNING, "warned")]


# ---- module functions

def test_overloads_are_chosen_by_argument_count():
    assert run('route { over(); over("a"); over("a", "b"); three("x", "y", "z"); }')[1] == [
        ("over", 0), ("over", 1, "a"), ("over", 2, "a", "b"), ("three", "x", "y", "z")]


def test_fixups_run_once_at_compile_time():
    assert run('route { named("abc"); small(3); small("4"); }')[1] == [
        ("named", "ABC"), ("small", 3), ("small", 4)]


def test_core_functions_come_first_and_numbers_reach_string_fixups():
    # rec also exports a `t`; `other` loaded second does not shadow it.
    head = HEAD + 'loadmodule "other.so"\n'
    assert run('route { t(12); other_t("o"); }', head=head)[1] == ["12", ("other", "o")]


def test_modparams_reach_the_module():
    head = HEAD + 'loadmodule "other.so"\n'
    text = ('modparam("rec", "count", 9)\nmodparam("rec", "label", "lbl")\n'
            'modparam("REC|other", "count", "12")\nmodparam("rec", "mode", "b")\n'
            'route { params_seen(); }')
    result, trace, _ = run(text, head=head)
    assert trace == [{"count": 12, "label": "lbl", "mode": "b"}]
    script = compile_cfg(text, head=head)
    assert script.modules["other"].params == {"count": 12, "label": ""}


def test_function_returning_zero_in_a_condition_of_a_called_route():
    result, trace, _ = run('route { route(2); t("z"); }\n'
                           'route[2] { if (!ret("a", 0)) { t("x"); } t("y"); }')
    assert (result, trace) == (1, ["a", "z"])


# ---- conditions

@pytest.mark.parametrize("expr, method, expected", [
    ('method == "INVITE"', b"INVITE", True),
    ('method == "invite"', b"INVITE", True),
    ('method == "INV"', b"INVITE", False),
    ('method == "INVITEX"', b"INVITE", False),
    ('method != "INV"', b"INVITE", True),
    ("method == REGISTER", b"REGISTER", True),
    ('method =~ "^(inv|ack)"', b"INVITE", True),
    ('method =~ "^reg"', b"INVITE", False),
    ('!(method == "INVITE")', b"INVITE", False),
    ('!(method =~ "vit")', b"INVITE", False),
])
def test_method_compare(expr, method, expected):
    _, trace, _ = run(f'route {{ if ({expr}) t("yes"); else t("no"); }}', request(method))
    assert trace == (["yes"] if expected else ["no"])


def test_method_in_a_reply_is_the_cseq_method():
    assert run_reply('onreply_route[1] { if (method == "BYE") t("bye"); }',
                     msg=reply(200, b"BYE"))[1] == ["bye"]


@pytest.mark.parametrize("expr, expected", [
    ('uri == "sip:BOB@example.org"', True),
    ('uri == "sip:bob@example.org;x"', False),
    ('uri != "sip:bob@example.org"', False),
    ('uri =~ "@EXAMPLE\\.org$"', True),
    ('uri =~ "^sip:bob@example.org$"', True),
    ('uri =~ "^bob"', False),
    ('status == "sip:bob@example.org"', True),
])
def test_uri_compare_in_requests(expr, expected):
    _, trace, _ = run(f'route {{ if ({expr}) t("yes"); else t("no"); }}')
    assert trace == (["yes"] if expected else ["no"])


def test_uri_is_the_rewritten_request_uri():
    script = compile_cfg('route { if (uri == "sip:new@example.org") t("new"); }')
    m = msgctx(script, request())
    m.new_uri = b"sip:new@example.org"
    script.run_request(m)
    assert m.vars["trace"] == ["new"]


def test_uri_in_onreply_route_is_the_status_code():
    text = ('onreply_route[1] { if (uri == "183") t("183"); if (status =~ "^18") t("18x");\n'
            ' if (status =~ "(180)|(183)|2[0-9][0-9]") t("seed"); }')
    assert run_reply(text, msg=reply(183, reason=b"Session Progress"))[1] == ["183", "18x", "seed"]
    assert run_reply(text, msg=reply(200))[1] == ["seed"]
    assert run_reply(text, msg=reply(100, reason=b"Trying"))[1] == []


def test_msg_len():
    msg = request()
    size = len(msg.buf)
    text = (f'route {{ if (msg:len > max_len) t("big"); if (msg:len == {size}) t("eq");\n'
            f' if (msg:len < {size}) t("lt"); if (msg:len >= {size}) t("ge");\n'
            f' if (!(msg:len <= {size - 1})) t("not le"); }}')
    assert run(text, msg)[1] == ["eq", "ge", "not le"]
    assert run('max_len=512\nroute { if (msg:len > max_len) t("big"); }', msg)[1] == (
        ["big"] if size > 512 else [])


def test_numbers_as_conditions():
    assert run('route { if (1) t("1"); if (0) t("0"); if (-1) t("-1"); if (!0) t("!0"); }')[1] \
        == ["1", "-1", "!0"]


def test_source_and_destination_elements():
    # msgctx() receives from 192.0.2.50:5060 on 192.0.2.13:5060
    text = ('route { if (src_ip == 192.0.2.50) t("src"); if (src_ip == 10.0.0.0/8) t("ten");\n'
            ' if (src_ip == 192.0.2.0/24) t("net"); if (dst_ip != 192.0.2.13) t("dst");\n'
            ' if (src_port == 5060 && dst_port <= 5060) t("ports"); if (proto == udp) t("udp");\n'
            ' if (proto == tcp) t("tcp"); if (af == inet) t("v4"); if (af == inet6) t("v6");\n'
            ' if (src_ip =~ "^192\\.") t("re"); }')
    assert run(text)[1] == ["src", "net", "ports", "udp", "v4", "re"]


def test_block_and_if_as_condition_elements():
    assert run('route { if ({ t("a"); ret("b", -1); }) t("yes"); else t("no"); }')[1] == [
        "a", "b", "no"]
    assert run('route { if (if (t("a")) t("b");) t("yes"); }')[1] == ["a", "b", "yes"]


def test_uri_myself():
    pytest.importorskip("natserver.sip.uri")
    head = HEAD + "listen=192.0.2.13\nalias=example.net\nalias=other.example:5070\n"
    text = ('route { if (uri == myself) t("me"); else t("not me"); '
            'if (myself != uri) t("ne"); }')
    cases = {
        b"sip:bob@192.0.2.13": ["me"], b"sip:bob@192.0.2.13:5060": ["me"],
        b"sip:bob@192.0.2.13:5070": ["not me", "ne"], b"sip:bob@EXAMPLE.NET": ["me"],
        b"sip:other.example:5070": ["me"], b"sip:other.example": ["not me", "ne"],
        b"sip:bob@example.org": ["not me", "ne"],
    }
    for ruri, expected in cases.items():
        assert run(text, request(ruri=ruri), head=head)[1] == expected, ruri


def test_from_and_to_uri():
    text = ('route { if (from_uri == "SIP:alice@example.org") t("from");\n'
            ' if (to_uri =~ "^sip:bob@") t("to"); if (from_uri != "sip:x@y") t("ne"); }')
    assert run(text)[1] == ["from", "to", "ne"]


def test_from_and_to_uri_myself():
    head = HEAD + "listen=192.0.2.13\nalias=example.org\n"
    text = ('route { if (from_uri == myself) t("from"); if (myself == to_uri) t("to");\n'
            ' if (uri == myself) t("uri"); }')
    assert run(text, request(ruri=b"sip:bob@example.com"), head=head)[1] == ["from", "to"]


def test_method_of_a_reply_with_a_broken_cseq_counts_as_false(caplog):
    broken = parse_message(REPLY.replace(b"CSeq: 1 %(method)s", b"CSeq: x y")
                           % {b"status": 200, b"reason": b"OK"})
    with caplog.at_level(logging.WARNING, logger="natserver.script"):
        result, trace, _ = run_reply(
            'onreply_route[1] {\n if (method == "INVITE") t("a"); else t("b");\n'
            ' if (method != "INVITE") t("c"); else t("d"); }', msg=broken)
    assert (result, trace) == (1, ["b", "d"])
    assert "t.cfg:3:6: condition cannot be evaluated (400 Bad CSeq header)" in caplog.text


def test_an_element_that_errors_is_false_even_under_not(caplog):
    pytest.importorskip("natserver.sip.uri")
    head = HEAD + "listen=192.0.2.13\n"
    with caplog.at_level(logging.WARNING, logger="natserver.script"):
        # In a reply `uri` is the status code, which is no URI.
        result, trace, _ = run_reply(
            'onreply_route[1] {\n if (uri == myself) t("a"); else t("b");\n'
            ' if (!(uri == myself)) t("c"); else t("d");\n'
            ' if (uri == myself || t("e")) t("f"); else t("g"); }')
    assert trace == ["b", "d", "g"]
    assert "t.cfg:3:6: condition cannot be evaluated" in caplog.text


def test_expr_error_value_is_negative():
    assert EXPR_ERROR < 0


# ---- compile errors, each at its exact file:line:col

@pytest.mark.parametrize("text, line, col, message", [
    ("foo=1", 2, 1, "unknown global parameter 'foo'"),
    ("debug=99", 2, 7, "bad value for 'debug': 99 is out of range -3..9"),
    ("fork=maybe", 2, 6, "bad value for 'fork': expected yes/no, got 'maybe'"),
    ("listen=tcp:192.0.2.1", 2, 8,
     "bad value for 'listen': only UDP is supported (listen=tcp:192.0.2.1)"),
    ('loadmodule "/usr/lib/ser/modules/nope.so"', 2, 12, "unknown module 'nope'"),
    ("route {\n  nope();\n}", 3, 3, "unknown function 'nope'"),
    ('route {\n  if (t("a") && nope("x")) break;\n}', 3, 17, "unknown function 'nope'"),
    ('route { over("a", "b", "c"); }', 2, 9,
     "function 'over' takes 0, 1 or 2 arguments, got 3"),
    ("route { t(); }", 2, 9, "function 't' takes 1 argument, got 0"),
    ('route { params_seen("x"); }', 2, 9, "function 'params_seen' takes no arguments, got 1"),
    ('route { small("1"); small(\n  "9"); }', 3, 3,
     "bad argument to 'small': 9 is out of range 1..5"),
    ('route { named(""); }', 2, 15, "bad argument to 'named': an empty name is not allowed"),
    ('route { rsearch("a(b"); }', 2, 17,
     "bad argument to 'rsearch': bad regular expression 'a(b': unmatched ("),
    ('route {\n if (uri =~ "x[") break; }', 3, 13,
     "bad regular expression 'x[': unterminated ["),
    ('route { if (method =~ "*a") break; }', 2, 23,
     "bad regular expression '*a': repetition operator without an operand"),
    ('modparam("rec", "nope", 1)', 2, 17, "module 'rec' has no parameter 'nope'"),
    ('modparam("r.c|x", "count", 1)\nmodparam("xyz", "count", 1)', 3, 10,
     "modparam: no module loaded so far matches 'xyz'"),
    ('modparam("re", "count", 1)', 2, 10, "modparam: no module loaded so far matches 're'"),
    ('modparam("other", "count", 1)\nloadmodule "other.so"', 2, 10,
     "modparam: no module loaded so far matches 'other'"),
    ('modparam("rec(", "count", 1)', 2, 10,
     "bad regular expression '^(rec()$': unmatched ("),
    ('modparam("rec", "label", 5)', 2, 26,
     "parameter 'label' of module 'rec' needs a string, got the number 5"),
    ('modparam("rec", "count", "many")', 2, 26,
     "parameter 'count' of module 'rec' needs a number, got 'many'"),
    ('modparam("rec", "count", 101)', 2, 26,
     "bad value for parameter 'count' of module 'rec': 101 is out of range 0..100"),
    ('modparam("rec", "mode", "c")', 2, 25,
     "bad value for parameter 'mode' of module 'rec': mode must be a or b, not 'c'"),
    ('loadmodule "other.so"\nmodparam("other", "label", "explode")', 2, 12,
     "module 'other': label 'explode' is refused by the module"),
    ('route { reply_only("x"); }', 2, 9, "function 'reply_only' is not allowed in route"),
    ('onreply_route[1] {\n  request_only("x");\n}', 3, 3,
     "function 'request_only' is not allowed in onreply_route"),
    ('onreply_route[1] { not_in_reply("x"); }', 2, 20,
     "function 'not_in_reply' is not allowed in onreply_route"),
    ('failure_route[1] { route(2); }\nroute[2] { failure_only("x"); }', 3, 12,
     "function 'failure_only' is not allowed in route"),
    ('route { failure_only("x"); }', 2, 9, "function 'failure_only' is not allowed in route"),
    ("route { setflag(32); }", 2, 17, "bad argument to 'setflag': flag 32 is out of range 0..31"),
    ("route { if (isflagset(-1)) break; }", 2, 23,
     "bad argument to 'isflagset': flag -1 is out of range 0..31"),
    ('route { log(7, "x"); }', 2, 13, "bad argument to 'log': log level 7 is out of range -3..4"),
    ("route { route(20); }", 2, 15, "route number 20 is out of range 0..19"),
    ('route { route("1"); }', 2, 9, "route() takes one route number"),
    ("route { break(1); }", 2, 15, "break takes no arguments"),
    ('route { return("x"); }', 2, 9, "return takes at most one number"),
    ("route[25] { }", 2, 7, "route number 25 is out of range 0..19"),
    ("route { if (src_ip == example.com) break; }", 2, 23,
     "src_ip needs an IP address or network: 'example.com' does not appear to be an IPv4 or "
     "IPv6 address"),
    ("route { if (proto == sctp6) break; }", 2, 22, "unknown protocol 'sctp6'"),
    ("route { if (af == ipx) break; }", 2, 19, "unknown address family 'ipx' (inet or inet6)"),
    ('route {\n  t("a")\n}', 4, 1, "syntax error: expected ';' after t, got '}'"),
    ('route { t("a); }', 2, 11, "unterminated string"),
    ("/* open", 2, 1, "unterminated comment"),
])
def test_compile_errors(text, line, col, message):
    assert where(cfg_error(text)) == ("t.cfg", line, col, message)


def test_compile_error_text_is_file_line_col_message():
    err = cfg_error("route {\n  nope();\n}")
    assert str(err) == "t.cfg:3:3: unknown function 'nope'"


def test_duplicate_loadmodule_is_a_warning():
    script = compile_cfg('loadmodule "rec.so"\nroute { t("a"); }')
    assert script.warnings == ["t.cfg:2:12: module 'rec' is already loaded"]
    assert list(script.modules) == ["rec"]


def test_modparam_regex_is_anchored_and_case_insensitive():
    head = HEAD + 'loadmodule "other.so"\n'
    script = compile_cfg('modparam("OTHER|rec", "count", 3)\nmodparam("o.*", "count", 4)',
                         head=head)
    assert script.modules["rec"].params["count"] == 3
    assert script.modules["other"].params["count"] == 4
    err = cfg_error('modparam("ec", "count", 1)', head=head)
    assert (err.line, err.col) == (3, 10)


def test_load_reads_the_file(tmp_path):
    path = tmp_path / "x.cfg"
    path.write_text(HEAD + 'route { t("a"); }\n')
    script = load(str(path), finder=finder)
    assert script.file == str(path)
    path.write_text(HEAD + "route { nope(); }\n")
    with pytest.raises(CfgError) as info:
        load(str(path), finder=finder)
    assert (info.value.file, info.value.line, info.value.col) == (str(path), 2, 9)


def test_load_refuses_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "x.cfg"
    path.write_bytes(b"debug=3\n  fifo=\"\xff\"\n")
    with pytest.raises(CfgError) as info:
        load(str(path), finder=finder)
    assert (info.value.line, info.value.col) == (2, 9)


def test_the_first_error_in_the_text_is_reported():
    err = cfg_error('loadmodule "nope.so"\ndebug=99\nroute { nope(); }')
    assert (err.line, err.col) == (2, 12)
    err = cfg_error('debug=99\nloadmodule "nope.so"')
    assert (err.line, err.col) == (2, 7)


def test_lexer_warnings_reach_the_script():
    script = compile_cfg("#!define WITH_NAT\nroute { }")
    assert script.warnings == ["t.cfg:2:1: preprocessor directive '#!define WITH_NAT' ignored"]
