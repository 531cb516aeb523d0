"""The cfg lexer: tokens, positions, comments, strings, numbers and lexical errors."""

from __future__ import annotations

import pytest

from natserver.errors import CfgError
from natserver.script.lexer import Tok, tokenize


def kinds(text: str) -> list[Tok]:
    return [t.kind for t in tokenize(text)][:-1]


def values(text: str) -> list[object]:
    return [t.value for t in tokenize(text)][:-1]


def one_string(text: str) -> str:
    toks = tokenize(text)
    assert [t.kind for t in toks] == [Tok.STRING, Tok.EOF]
    return str(toks[0].value)


def lex_error(text: str) -> CfgError:
    with pytest.raises(CfgError) as info:
        tokenize(text, "t.cfg")
    return info.value


def test_positions_count_lines_and_columns_from_one():
    toks = tokenize('debug=3\n  route {\n\tbreak;\n}', "t.cfg")
    got = [(t.kind, t.value, t.line, t.col) for t in toks]
    assert got == [
        (Tok.ID, "debug", 1, 1), (Tok.ASSIGN, "=", 1, 6), (Tok.NUMBER, 3, 1, 7),
        (Tok.ID, "route", 2, 3), (Tok.LBRACE, "{", 2, 9),
        (Tok.ID, "break", 3, 2), (Tok.SEMI, ";", 3, 7),
        (Tok.RBRACE, "}", 4, 1), (Tok.EOF, "", 4, 2),
    ]


def test_positions_after_multiline_string_and_comment():
    toks = tokenize('a("x\ny") /* c\n c */ b # c\n c')
    assert [(t.value, t.line, t.col) for t in toks if t.kind is Tok.ID] == [
        ("a", 1, 1), ("b", 3, 7), ("c", 4, 2)]


def test_hash_and_slash_comments():
    assert values("a # b c\nd // e f\ng") == ["a", "d", "g"]


def test_block_comments_nest():
    assert values("a /* b /* c */ d */ e") == ["a", "e"]


def test_unterminated_comment_is_reported_at_its_start():
    err = lex_error("a\n  /* x /* y */\nb")
    assert (err.file, err.line, err.col) == ("t.cfg", 2, 3)
    assert "unterminated comment" in err.message


def test_directive_lines_are_comments_with_a_warning_unless_known():
    warnings: list[str] = []
    toks = tokenize("#!KAMAILIO\n#!define WITH_NAT\n  #!ifdef X\na", "t.cfg", warnings)
    assert [t.value for t in toks][:-1] == ["a"]
    assert warnings == ["t.cfg:2:1: preprocessor directive '#!define WITH_NAT' ignored",
                        "t.cfg:3:3: preprocessor directive '#!ifdef X' ignored"]


def test_string_escapes():
    assert one_string(r'"a\nb\rc\ad\te\"f\\g"') == 'a\nb\rc\ad\te"f\\g'
    assert one_string(r'"\x41\x4g\101\12"') == "A\x04gA\n"


def test_unknown_escapes_keep_the_backslash():
    assert one_string(r'"^Contact:[ ]*\*"') == r"^Contact:[ ]*\*"
    assert one_string(r'"(a)\1 \d \. \x"') == r"(a)\1 \d \. \x"


def test_backslash_newline_is_removed_inside_strings_and_eaten_outside():
    assert one_string('"ab\\\ncd"') == "abcd"
    assert values('a \\\n b') == ["a", "b"]


def test_strings_may_span_lines():
    assert one_string('"a\nb"') == "a\nb"


def test_single_quoted_strings_are_raw():
    assert one_string(r"'a\nb\*'") == r"a\nb\*"


def test_unterminated_strings_are_reported_at_the_quote():
    err = lex_error('a\n  b("x);\n')
    assert (err.line, err.col) == (2, 5)
    assert "unterminated string" in err.message
    err = lex_error("x='abc")
    assert (err.line, err.col, err.message) == (1, 3, "unterminated string")


def test_numbers_decimal_hex_octal():
    assert values("0 7 42 0x1F 0X10 010 09") == [0, 7, 42, 31, 16, 8, 0, 9]
    toks = tokenize("0x1F")
    assert toks[0].text == "0x1F"


def test_booleans_are_numbers():
    assert [(t.kind, t.value) for t in tokenize("yes true on enable no false off disable")][:-1] \
        == [(Tok.NUMBER, 1)] * 4 + [(Tok.NUMBER, 0)] * 4


def test_identifiers_take_the_longest_match():
    assert [(t.kind, t.value) for t in tokenize("record_route route yes_no t_on_reply")][:-1] == [
        (Tok.ID, "record_route"), (Tok.ID, "route"), (Tok.ID, "yes_no"), (Tok.ID, "t_on_reply")]


def test_msg_len_is_one_token():
    assert [(t.kind, t.col) for t in tokenize("msg:len>max_len")][:-1] == [
        (Tok.MSGLEN, 1), (Tok.GT, 8), (Tok.ID, 9)]


def test_operators():
    assert kinds("= == != =~ > < >= <= ! && || & | and or not") == [
        Tok.ASSIGN, Tok.EQ, Tok.NE, Tok.MATCH, Tok.GT, Tok.LT, Tok.GE, Tok.LE, Tok.NOT,
        Tok.AND, Tok.OR, Tok.AND, Tok.OR, Tok.AND, Tok.OR, Tok.NOT]
    assert kinds("a!=b") == [Tok.ID, Tok.NE, Tok.ID]
    assert kinds("{}()[];,.:- / *") == [
        Tok.LBRACE, Tok.RBRACE, Tok.LPAREN, Tok.RPAREN, Tok.LBRACKET, Tok.RBRACKET, Tok.SEMI,
        Tok.COMMA, Tok.DOT, Tok.COLON, Tok.MINUS, Tok.SLASH, Tok.STAR]


def test_minus_is_a_separate_token():
    assert kinds("-1") == [Tok.MINUS, Tok.NUMBER]


@pytest.mark.parametrize("text, line, col", [("a @ b", 1, 3), ("x\n\t $y", 2, 3), ("é", 1, 1),
                                             ("a \\ b", 1, 3)])
def test_bad_characters_are_errors_at_their_position(text, line, col):
    err = lex_error(text)
    assert (err.file, err.line, err.col) == ("t.cfg", line, col)
    assert "unexpected character" in err.message
    assert str(err).startswith(f"t.cfg:{line}:{col}: ")


def test_crlf_line_endings():
    toks = tokenize('a # c\r\n  b("x\\\r\ny")\r\n')
    assert [(t.value, t.line, t.col) for t in toks if t.kind in (Tok.ID, Tok.STRING)] == [
        ("a", 1, 1), ("b", 2, 3), ("xy", 2, 5)]
