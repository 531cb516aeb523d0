"""The cfg lexer: text -> tokens with file:line:col (SER 0.9 cfg.lex, the subset ser.cfg uses).

Columns count characters from 1 (a TAB is one column). Comments: ``#`` and ``//`` to the
end of the line, ``/* */`` nesting; ``#!`` lines are Kamailio preprocessor directives,
read as comments with a warning unless they are a compatibility marker
(``#!SER``, ``#!KAMAILIO``...). Keywords are left as ``ID`` tokens for the parser,
except the word forms of the logical operators and of the boolean constants.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from natserver.errors import CfgError


class Tok(enum.IntEnum):
    ID = enum.auto()
    NUMBER = enum.auto()
    STRING = enum.auto()
    MSGLEN = enum.auto()      # msg:len
    LBRACE = enum.auto()
    RBRACE = enum.auto()
    LPAREN = enum.auto()
    RPAREN = enum.auto()
    LBRACKET = enum.auto()
    RBRACKET = enum.auto()
    SEMI = enum.auto()
    COMMA = enum.auto()
    DOT = enum.auto()
    COLON = enum.auto()
    MINUS = enum.auto()
    SLASH = enum.auto()
    STAR = enum.auto()
    ASSIGN = enum.auto()      # =
    EQ = enum.auto()          # ==
    NE = enum.auto()          # !=
    MATCH = enum.auto()       # =~
    GT = enum.auto()
    LT = enum.auto()
    GE = enum.auto()
    LE = enum.auto()
    NOT = enum.auto()         # ! not
    AND = enum.auto()         # && & and
    OR = enum.auto()          # || | or
    EOF = enum.auto()


@dataclass(frozen=True, slots=True)
class Token:
    kind: Tok
    value: str | int   # the string's value, the number, else the text
    text: str          # the source text of the token
    line: int
    col: int


# Two-character operators first: the longest match wins.
_OPERATORS = (
    ("==", Tok.EQ), ("!=", Tok.NE), ("=~", Tok.MATCH), (">=", Tok.GE), ("<=", Tok.LE),
    ("&&", Tok.AND), ("||", Tok.OR),
    ("=", Tok.ASSIGN), (">", Tok.GT), ("<", Tok.LT), ("!", Tok.NOT), ("&", Tok.AND),
    ("|", Tok.OR), ("{", Tok.LBRACE), ("}", Tok.RBRACE), ("(", Tok.LPAREN),
    (")", Tok.RPAREN), ("[", Tok.LBRACKET), ("]", Tok.RBRACKET), (";", Tok.SEMI),
    (",", Tok.COMMA), (".", Tok.DOT), (":", Tok.COLON), ("-", Tok.MINUS), ("/", Tok.SLASH),
    ("*", Tok.STAR),
)
_OPS_BY_FIRST: dict[str, tuple[tuple[str, Tok], ...]] = {}
for _op in _OPERATORS:
    _OPS_BY_FIRST[_op[0][0]] = (*_OPS_BY_FIRST.get(_op[0][0], ()), _op)

_WORD_OPERATORS = {"and": Tok.AND, "or": Tok.OR, "not": Tok.NOT}
_BOOLEANS = {"yes": 1, "true": 1, "on": 1, "enable": 1,
             "no": 0, "false": 0, "off": 0, "disable": 0}
# `#!` lines natserver reads silently: Kamailio's compatibility-mode markers.
KNOWN_DIRECTIVES = frozenset({"SER", "KAMAILIO", "OPENSER", "MAXCOMPAT", "ALL"})

_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "a": "\a", "t": "\t", '"': '"', "\\": "\\"}
_WHITESPACE = " \t\r\b\n"
_HEX = "0123456789abcdefABCDEF"
_OCT = "01234567"


def tokenize(text: str, file: str = "<cfg>", warnings: list[str] | None = None) -> list[Token]:
    """All tokens of ``text``, ending with an EOF token. Raises CfgError at the bad spot."""
    return _Lexer(text, file, warnings if warnings is not None else []).run()


class _Lexer:
    __slots__ = ("text", "file", "warnings", "pos", "line", "line_start", "tokens")

    def __init__(self, text: str, file: str, warnings: list[str]) -> None:
        self.text = text
        self.file = file
        self.warnings = warnings
        self.pos = 0
        self.line = 1
        self.line_start = 0   # offset of the current line's first character
        self.tokens: list[Token] = []

    def error(self, pos: int, message: str) -> CfgError:
        line, col = self.where(pos)
        return CfgError(self.file, line, col, message)

    def where(self, pos: int) -> tuple[int, int]:
        """line, col of offset ``pos`` (at or after the current line's start)."""
        line, start = self.line, self.line_start
        nl = self.text.find("\n", start)
        while 0 <= nl < pos:
            line += 1
            start = nl + 1
            nl = self.text.find("\n", start)
        return line, pos - start + 1

    def advance_to(self, pos: int) -> None:
        """Move to ``pos``, counting the newlines passed."""
        text = self.text
        nl = text.find("\n", self.pos, pos)
        while nl >= 0:
            self.line += 1
            self.line_start = nl + 1
            nl = text.find("\n", nl + 1, pos)
        self.pos = pos

    def emit(self, kind: Tok, value: str | int, start: int, end: int) -> None:
        line, col = self.where(start)
        self.tokens.append(Token(kind, value, self.text[start:end], line, col))
        self.advance_to(end)

    def run(self) -> list[Token]:
        text = self.text
        n = len(text)
        while True:
            self.skip_blanks()
            pos = self.pos
            if pos >= n:
                break
            c = text[pos]
            if c == '"':
                self.string(pos)
            elif c == "'":
                end = text.find("'", pos + 1)
                if end < 0:
                    raise self.error(pos, "unterminated string")
                self.emit(Tok.STRING, text[pos + 1:end], pos, end + 1)
            elif c.isdigit():
                self.number(pos)
            elif c.isascii() and c.isalpha():
                self.word(pos)
            elif c in _OPS_BY_FIRST:
                for op, kind in _OPS_BY_FIRST[c]:
                    if text.startswith(op, pos):
                        self.emit(kind, op, pos, pos + len(op))
                        break
            else:
                raise self.error(pos, f"unexpected character {c!r}")
        line, col = self.where(n)
        self.tokens.append(Token(Tok.EOF, "", "", line, col))
        return self.tokens

    def skip_blanks(self) -> None:
        """Skip whitespace, backslash-newline and comments."""
        text = self.text
        n = len(text)
        pos = self.pos
        while pos < n:
            c = text[pos]
            if c in _WHITESPACE:
                pos += 1
            elif c == "\\" and text.startswith("\n", pos + 1):
                pos += 2
            elif c == "\\" and text.startswith("\r\n", pos + 1):
                pos += 3
            elif c == "#":
                end = text.find("\n", pos)
                end = n if end < 0 else end
                if text.startswith("#!", pos):
                    self.directive(pos, text[pos + 2:end].strip())
                pos = end
            elif c == "/" and text.startswith("//", pos):
                end = text.find("\n", pos)
                pos = n if end < 0 else end
            elif c == "/" and text.startswith("/*", pos):
                pos = self.block_comment(pos)
            else:
                break
        self.advance_to(pos)

    def block_comment(self, start: int) -> int:
        """The offset after the ``/* */`` comment at ``start`` (nested comments counted)."""
        text = self.text
        depth = 0
        pos = start
        while True:
            opening = text.find("/*", pos)
            closing = text.find("*/", pos)
            if closing < 0:
                raise self.error(start, "unterminated comment")
            if 0 <= opening < closing:
                depth += 1
                pos = opening + 2
            else:
                depth -= 1
                pos = closing + 2
                if depth == 0:
                    return pos

    def directive(self, pos: int, body: str) -> None:
        name = body.split(None, 1)[0] if body else ""
        if name.upper() in KNOWN_DIRECTIVES or name.startswith("/"):  # markers and a shebang
            return
        line, col = self.where(pos)
        self.warnings.append(
            f"{self.file}:{line}:{col}: preprocessor directive '#!{body}' ignored")

    def string(self, start: int) -> None:
        """A ``"..."`` string with SER's escapes; any other backslash stays as written."""
        text = self.text
        n = len(text)
        out: list[str] = []
        pos = start + 1
        while True:
            end = _find_any(text, '"\\', pos)
            if end < 0:
                raise self.error(start, "unterminated string")
            out.append(text[pos:end])
            if text[end] == '"':
                pos = end + 1
                break
            if end + 1 >= n:
                raise self.error(start, "unterminated string")
            c = text[end + 1]
            pos = end + 2
            if c in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[c])
            elif c == "\n":
                pass                                   # backslash-newline is removed
            elif c == "\r" and text.startswith("\n", pos):
                pos += 1
            elif c == "x" and pos < n and text[pos] in _HEX:
                digits = 2 if pos + 1 < n and text[pos + 1] in _HEX else 1
                out.append(chr(int(text[pos:pos + digits], 16)))
                pos += digits
            elif c in _OCT and pos < n and text[pos] in _OCT:
                digits = 3 if pos + 1 < n and text[pos + 1] in _OCT else 2
                # SER stores the value in a char: \777 wraps like C does.
                out.append(chr(int(text[end + 1:end + 1 + digits], 8) & 0xFF))
                pos = end + 1 + digits
            else:
                out.append("\\" + c)                   # kept: "\*" is a regex's \*
        self.emit(Tok.STRING, "".join(out), start, pos)

    def number(self, start: int) -> None:
        text = self.text
        n = len(text)
        pos = start
        if text.startswith(("0x", "0X"), pos) and pos + 2 < n and text[pos + 2] in _HEX:
            pos += 2
            while pos < n and text[pos] in _HEX:
                pos += 1
            value = int(text[start + 2:pos], 16)
        elif text[pos] == "0":
            pos += 1
            while pos < n and text[pos] in _OCT:
                pos += 1
            value = int(text[start:pos], 8)
        else:
            while pos < n and text[pos].isdigit() and text[pos].isascii():
                pos += 1
            value = int(text[start:pos])
        self.emit(Tok.NUMBER, value, start, pos)

    def word(self, start: int) -> None:
        text = self.text
        if text.startswith("msg:len", start):
            self.emit(Tok.MSGLEN, "msg:len", start, start + 7)
            return
        n = len(text)
        pos = start + 1
        while pos < n and (text[pos].isascii() and (text[pos].isalnum() or text[pos] == "_")):
            pos += 1
        word = text[start:pos]
        if word in _WORD_OPERATORS:
            self.emit(_WORD_OPERATORS[word], word, start, pos)
        elif word in _BOOLEANS:
            self.emit(Tok.NUMBER, _BOOLEANS[word], start, pos)
        else:
            self.emit(Tok.ID, word, start, pos)


def _find_any(text: str, chars: str, pos: int) -> int:
    """The first offset >= pos holding one of ``chars``, or -1."""
    best = -1
    for c in chars:
        i = text.find(c, pos)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best
