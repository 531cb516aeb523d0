"""POSIX ERE -> Python re translation (natserver.script.regex), checked against glibc's own
regcomp/regexec through ctypes: SER compiled its cfg regexes with that library."""

from __future__ import annotations

import ctypes
import ctypes.util
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natserver.script.regex import compile_ere, translate

REG_EXTENDED, REG_ICASE, REG_NEWLINE = 1, 2, 4


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "regcomp") else None


LIBC = _libc()


def glibc_search(pattern: str, subjects: list[bytes], icase: bool,
                 newline: bool) -> list[bool] | None:
    """regexec results for each subject, or None when regcomp refuses the pattern."""
    assert LIBC is not None
    flags = REG_EXTENDED | (REG_ICASE if icase else 0) | (REG_NEWLINE if newline else 0)
    preg = ctypes.create_string_buffer(512)   # larger than any regex_t
    if LIBC.regcomp(preg, pattern.encode(), flags) != 0:
        return None
    try:
        return [LIBC.regexec(preg, s, 0, None, 0) == 0 for s in subjects]
    finally:
        LIBC.regfree(preg)


def matches(pattern: str, subject: bytes, **flags: bool) -> bool:
    return compile_ere(pattern, **flags).search(subject) is not None


def bad(pattern: str) -> str:
    with pytest.raises(ValueError) as info:
        compile_ere(pattern)
    return str(info.value)


# ---- examples

def test_seed_patterns():
    status = compile_ere("(180)|(183)|2[0-9][0-9]")
    assert [bool(status.search(s)) for s in (b"180", b"183", b"200", b"299", b"181", b"100")] \
        == [True, True, True, True, False, False]
    contact = compile_ere(r"^Contact:[ ]*\*", newline=True)
    assert contact.search(b"REGISTER sip:x SIP/2.0\r\ncontact:  *\r\n")
    assert not contact.search(b"REGISTER sip:x SIP/2.0\r\nContact: <sip:a@b>\r\n")
    length = compile_ere("^Content-Length:[ ]*0", newline=True)
    assert length.search(b"INVITE x SIP/2.0\r\nContent-Length: 0\r\n\r\n")
    assert not length.search(b"INVITE x SIP/2.0\r\nContent-Length: 10\r\n\r\n")


def test_bracket_expressions():
    assert matches("[]a]", b"]") and matches("[^]a]", b"b") and not matches("[^]a]", b"]")
    assert matches(r"[\]", b"\\") and matches(r"[\w]", b"w") and not matches(r"^[\w]$", b"x")
    assert matches("[[:alpha:]][[:digit:]]", b"a1") and not matches("[[:digit:]]", b"a")
    assert matches("^[[:space:]]+$", b" \t\r\n") and matches("[[:punct:]]", b"~")
    assert matches("[a-]", b"-") and matches("[-a]", b"-") and matches("[[.-.]]", b"-")
    assert matches("[[=e=]]", b"E") and matches("^[^[:alpha:]]$", b"1")
    assert matches("[&&]", b"&") and matches("[~~]", b"~") and matches("[||]", b"|")


def test_repetition_of_repetition_is_not_lazy_or_possessive():
    assert compile_ere("a+?b").search(b"aab").group() == b"aab"
    assert compile_ere("a**b").search(b"aab").group() == b"aab"
    assert compile_ere("(ab){1,2}{2}").search(b"abababab").group() == b"abababab"


def test_intervals_and_literal_braces():
    assert matches("^a{2}$", b"aa") and not matches("^a{2}$", b"aaa")
    assert matches("^a{,2}$", b"") and matches("^a{1,}$", b"aaaa") and matches("^a{,}$", b"aaa")
    assert matches(r"a\{1\}", b"a{1}") and matches("}", b"}") and matches("]", b"]")


def test_unmatched_close_paren_is_a_literal():
    assert matches("a)", b"a)") and not matches("a)", b"a")


def test_back_references_and_gnu_anchors():
    assert matches(r"(a|b)\1", b"xbb") and not matches(r"^(a|b)\1$", b"ab")
    assert matches(r"\<foo\>", b"a foo b") and not matches(r"\<foo", b"afoo")
    assert matches(r"\`a", b"ab") and not matches(r"b\'", b"ba")
    assert matches(r"\d", b"d") and not matches(r"\d", b"1")   # glibc has no \d


def test_dollar_and_dot_without_regnewline():
    assert not matches("a$", b"a\n")
    assert matches("a.b", b"a\nb")
    assert matches("a[^x]b", b"a\nb")
    assert not matches("^b", b"a\nb")


def test_regnewline():
    assert matches("^b$", b"a\nb\nc", newline=True)
    assert not matches("a.b", b"a\nb", newline=True)
    assert not matches("a[^x]b", b"a\nb", newline=True)
    assert matches(r"a\sb", b"a\nb", newline=True)


def test_case():
    assert matches("invite", b"INVITE") and not matches("invite", b"INVITE", icase=False)
    assert matches("[A-C]", b"b") and not matches("[A-C]", b"b", icase=False)


def test_non_ascii_literals_repeat_as_a_whole():
    assert compile_ere("^é+$").search("éé".encode())
    assert "non-ASCII" in bad("[é]")


@pytest.mark.parametrize("pattern, why", [
    ("*a", "repetition operator without an operand"),
    ("a|+b", "repetition operator without an operand"),
    ("(?a)", "repetition operator without an operand"),
    ("^*", "repetition operator without an operand"),
    ("{1}", "repetition operator without an operand"),
    ("a{", "unterminated interval {"),
    ("a{x}", "invalid interval {x}"),
    ("a{}", "invalid interval {}"),
    ("a{2,1}", "invalid interval {2,1}"),
    ("a{32768}", "interval {32768} is too large (max 32767)"),
    ("(a", "unmatched ("),
    ("[a", "unterminated ["),
    ("[[:alpha:]", "unterminated ["),
    ("[[:foo:]]", "unknown character class [:foo:]"),
    ("[z-a]", "invalid range z-a"),
    ("[a-c-e]", "a range cannot start where another ends"),
    ("[[:alpha:]-z]", "a character class cannot start a range"),
    ("[[.ab.]]", "unknown collating element [.ab.]"),
    ("a\\", "trailing backslash"),
    (r"\1(a)", r"invalid back reference \1"),
    (r"(a)|\1", r"invalid back reference \1"),
])
def test_errors(pattern, why):
    assert bad(pattern) == f"bad regular expression {pattern!r}: {why}"


def test_translation_is_plain_python_re():
    assert translate("(180)|(183)|2[0-9][0-9]") == "(180)|(183)|2[0-9][0-9]"
    assert translate("a$") == r"a\Z" and translate("a$", newline=True) == "a$"
    assert translate("[^a]", newline=True) == "[^a\\n]"
    re.compile(translate("[[:punct:]]"))


# ---- against glibc

FRAGMENTS = ["a", "b", "B", "x", ":", "-", ".", "*", "+", "?", "|", "(", ")", "{2}", "{1,}",
             "{,2}", "{", "}", "[ab]", "[^a]", "[]a]", "[a-]", "[[:alpha:]]", "[[:digit:]]",
             "[^[:space:]]", "\\.", "\\*", "\\(", "\\{", "1"]
SUBJECT = st.text(alphabet="abAB1x.:-*(){}\n ", max_size=8).map(str.encode)


@pytest.mark.skipif(LIBC is None, reason="no libc regcomp to compare with")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=6),
       anchored=st.tuples(st.booleans(), st.booleans()),
       icase=st.booleans(), newline=st.booleans(),
       subjects=st.lists(SUBJECT, min_size=1, max_size=6))
def test_same_results_as_glibc(parts, anchored, icase, newline, subjects):
    # Anchors only at the ends: glibc gives odd answers for `$` inside a pattern.
    pattern = ("^" if anchored[0] else "") + "".join(parts) + ("$" if anchored[1] else "")
    expected = glibc_search(pattern, subjects, icase, newline)
    try:
        rx = compile_ere(pattern, icase=icase, newline=newline)
    except ValueError:
        assert expected is None, f"glibc accepts {pattern!r}"
        return
    assert expected is not None, f"glibc refuses {pattern!r}"
    assert [rx.search(s) is not None for s in subjects] == expected, pattern
