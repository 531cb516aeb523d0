"""POSIX extended regular expressions (regcomp REG_EXTENDED), translated to Python ``re``.

SER compiles every regex of the cfg (``=~``, textops ``search``, modparam module names)
with glibc's regcomp. Python's ``re`` reads most EREs the same way; the differences this
translation removes:

- bracket expressions: ``]`` first is a literal, a backslash is a literal, ``[:alpha:]``
  classes, ``[.x.]``/``[=x=]`` single characters;
- ``*``, ``+``, ``?`` and ``{`` directly after ``(``, ``|``, ``^`` or at the start are
  errors (glibc REG_BADRPT), and a repeated repetition (``a**``, ``a+?``) repeats the
  repetition instead of becoming Python's possessive or lazy form;
- ``{`` after an atom must open a valid interval (``{n}``, ``{n,}``, ``{n,m}``, ``{,m}``);
- an unmatched ``)`` is a literal (RE_UNMATCHED_RIGHT_PAREN_ORD);
- ``$`` without REG_NEWLINE matches only at the very end (Python's would also match
  before a final newline);
- ``\\<``, ``\\>``, ``\\``` and ``\\'`` (GNU anchors); any other escaped character is
  that character literally, including letters (``\\d`` is ``d``: glibc has no ``\\d``).

Matching is leftmost-first (Python) rather than POSIX leftmost-longest: the same strings
match, but a capture group may cover a shorter text.
"""

from __future__ import annotations

import re

# glibc's RE_DUP_MAX: the largest count an interval accepts.
_DUP_MAX = 0x7FFF
_INTERVAL = re.compile(r"(\d*)(,?)(\d*)")

_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "0-9A-Za-z",
    "upper": "A-Z",
    "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v",
    "blank": " \\t",
    "punct": "!-/:-@\\[-`{-\\~",
    "print": " -~",
    "graph": "!-~",
    "cntrl": "\\x00-\\x1f\\x7f",
    "xdigit": "0-9A-Fa-f",
}

_ESCAPES = {
    "w": r"\w", "W": r"\W", "s": r"\s", "S": r"\S",
}
_ANCHOR_ESCAPES = {
    "b": r"\b", "B": r"\B", "<": r"\b(?=\w)", ">": r"\b(?<=\w)", "`": r"\A", "'": r"\Z",
}


def compile_ere(pattern: str, *, icase: bool = True, newline: bool = False) -> re.Pattern[bytes]:
    """Compile a POSIX ERE for searching bytes.

    ``icase`` is REG_ICASE (ASCII case folding). ``newline`` is REG_NEWLINE: ``^``/``$``
    also match at line boundaries and neither ``.`` nor ``[^...]`` match a newline;
    without it ``.`` matches a newline too. A bad pattern raises ValueError.
    """
    translated = translate(pattern, newline=newline)
    flags = (re.IGNORECASE if icase else 0) | (re.MULTILINE if newline else re.DOTALL)
    try:
        return re.compile(translated.encode(), flags)
    except re.error as exc:
        raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None


def translate(pattern: str, *, newline: bool = False) -> str:
    """The Python ``re`` source equivalent to the POSIX ERE ``pattern``."""
    return _Translator(pattern, newline).run()


class _Translator:
    __slots__ = ("p", "newline", "out", "atom", "quantified", "open", "closed", "groups",
                 "top")

    def __init__(self, pattern: str, newline: bool) -> None:
        self.p = pattern
        self.newline = newline
        self.out: list[str] = []
        self.atom: int | None = None      # index in out where the last repeatable atom starts
        self.quantified = False           # that atom already carries a repetition
        self.open: list[_Group] = []
        self.closed: set[int] = set()     # groups a back reference may name here
        self.groups = 0
        self.top = _Group(0, 0, set())

    def fail(self, why: str) -> ValueError:
        return ValueError(f"bad regular expression {self.p!r}: {why}")

    def add_atom(self, text: str) -> None:
        self.atom = len(self.out)
        self.quantified = False
        self.out.append(text)

    def add_anchor(self, text: str) -> None:
        self.atom = None
        self.out.append(text)

    def repeat(self, quant: str) -> None:
        if self.atom is None:
            raise self.fail("repetition operator without an operand")
        if self.quantified:
            # ERE repeats the repetition; Python would read `a*+` as possessive, `a*?` as lazy.
            self.out[self.atom:] = ["(?:" + "".join(self.out[self.atom:]) + ")"]
        self.out.append(quant)
        self.quantified = True

    def run(self) -> str:
        p = self.p
        n = len(p)
        i = 0
        while i < n:
            c = p[i]
            if c == "\\":
                if i + 1 >= n:
                    raise self.fail("trailing backslash")
                self.escape(p[i + 1])
                i += 2
            elif c == "[":
                i = self.bracket(i)
            elif c == "(":
                self.groups += 1
                self.open.append(_Group(len(self.out), self.groups, set(self.closed)))
                self.out.append("(")
                self.atom = None
                i += 1
            elif c == ")":
                if self.open:
                    group = self.open.pop()
                    self.out.append(")")
                    self.closed |= group.seen
                    self.closed.add(group.number)
                    self.atom = group.start
                    self.quantified = False
                else:
                    self.add_atom(r"\)")
                i += 1
            elif c == "|":
                # glibc: a back reference may not name a group of another alternative.
                group = self.open[-1] if self.open else self.top
                group.seen |= self.closed
                self.closed = set(group.initial)
                self.add_anchor("|")
                i += 1
            elif c == "^":
                self.add_anchor("^")
                i += 1
            elif c == "$":
                self.add_anchor("$" if self.newline else r"\Z")
                i += 1
            elif c in "*+?":
                self.repeat(c)
                i += 1
            elif c == "{":
                i = self.interval(i)
            elif c == ".":
                self.add_atom(".")
                i += 1
            else:
                self.literal(c)
                i += 1
        if self.open:
            raise self.fail("unmatched (")
        return "".join(self.out)

    def escape(self, c: str) -> None:
        if "1" <= c <= "9":
            number = int(c)
            if number not in self.closed:
                raise self.fail(f"invalid back reference \\{c}")
            self.add_atom(f"(?:\\{c})")
        elif c in _ESCAPES:
            self.add_atom(_ESCAPES[c])
        elif c in _ANCHOR_ESCAPES:
            self.add_anchor(_ANCHOR_ESCAPES[c])
        else:
            self.literal(c)

    def literal(self, c: str) -> None:
        # A non-ASCII character is several bytes: group them so a repetition takes all.
        self.add_atom(re.escape(c) if c < "\x80" else f"(?:{c})")

    def interval(self, i: int) -> int:
        p = self.p
        if self.atom is None:
            raise self.fail("repetition operator without an operand")
        end = p.find("}", i)
        if end < 0:
            raise self.fail("unterminated interval {")
        body = p[i + 1:end]
        form = _INTERVAL.fullmatch(body)
        if form is None or not body:
            raise self.fail(f"invalid interval {{{body}}}")
        low_text, comma, high_text = form.groups()
        low = int(low_text) if low_text else 0
        high = int(high_text) if high_text else (None if comma else low)
        if low > _DUP_MAX or (high is not None and high > _DUP_MAX):
            raise self.fail(f"interval {{{body}}} is too large (max {_DUP_MAX})")
        if high is not None and low > high:
            raise self.fail(f"invalid interval {{{body}}}")
        if high is None:
            self.repeat(f"{{{low},}}")
        else:
            self.repeat(f"{{{low},{high}}}")
        return end + 1

    def bracket(self, i: int) -> int:
        """Translate the bracket expression at ``p[i] == "["``; return the index after it."""
        p = self.p
        n = len(p)
        j = i + 1
        negate = j < n and p[j] == "^"
        if negate:
            j += 1
        parts: list[str] = []
        first = True
        while True:
            if j >= n:
                raise self.fail("unterminated [")
            c = p[j]
            if c == "]" and not first:
                j += 1
                break
            first = False
            if c == "[" and j + 1 < n and p[j + 1] == ":":
                end = p.find(":]", j + 2)
                if end < 0:
                    raise self.fail("unterminated [:")
                name = p[j + 2:end]
                if name not in _CLASSES:
                    raise self.fail(f"unknown character class [:{name}:]")
                j = end + 2
                if j + 1 < n and p[j] == "-" and p[j + 1] != "]":
                    raise self.fail("a character class cannot start a range")
                parts.append(_CLASSES[name])
                continue
            start, j = self.bracket_char(j)
            if j + 1 < n and p[j] == "-" and p[j + 1] != "]":
                end_char, j = self.bracket_char(j + 1)
                if ord(start) > ord(end_char):
                    raise self.fail(f"invalid range {start}-{end_char}")
                parts.append(_class_char(start, self) + "-" + _class_char(end_char, self))
                if j + 1 < n and p[j] == "-" and p[j + 1] != "]":
                    raise self.fail("a range cannot start where another ends")
            else:
                parts.append(_class_char(start, self))
        if negate and self.newline:
            parts.append("\\n")
        self.add_atom("[" + ("^" if negate else "") + "".join(parts) + "]")
        return j

    def bracket_char(self, j: int) -> tuple[str, int]:
        """One character of a bracket expression (plain, ``[.x.]`` or ``[=x=]``)."""
        p = self.p
        if p[j] == "[" and j + 1 < len(p) and p[j + 1] in ".=":
            kind = p[j + 1]
            end = p.find(kind + "]", j + 2)
            if end < 0:
                raise self.fail(f"unterminated [{kind}")
            name = p[j + 2:end]
            if len(name) != 1:
                raise self.fail(f"unknown collating element [{kind}{name}{kind}]")
            return name, end + 2
        if p[j] == "[" and j + 1 < len(p) and p[j + 1] == ":":
            raise self.fail("a character class cannot end a range")
        return p[j], j + 1


class _Group:
    """An open group: where it starts in the output, its number, and the groups that
    were complete when it opened (``initial``) or in one of its finished alternatives."""

    __slots__ = ("start", "number", "initial", "seen")

    def __init__(self, start: int, number: int, initial: set[int]) -> None:
        self.start = start
        self.number = number
        self.initial = initial
        self.seen: set[int] = set()


def _class_char(c: str, t: _Translator) -> str:
    if ord(c) > 0x7F:
        # The pattern matches bytes: a multi-byte character cannot be one member of a set.
        raise t.fail(f"non-ASCII character {c!r} in a bracket expression")
    if not c.isalnum() and c.isprintable() and c != " ":
        # Escaped, so pairs like `--`, `&&`, `~~` never read as Python set operations.
        return "\\" + c
    if not c.isprintable():
        return f"\\x{ord(c):02x}"
    return c
