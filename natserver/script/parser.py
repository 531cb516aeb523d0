"""The cfg parser: tokens -> :mod:`natserver.script.ast` (the grammar of cfg-language.md §10).

Recursive descent. It resolves no names: global parameters, modules and functions are
checked by the compiler, which has the positions from the tree.
"""

from __future__ import annotations

from natserver.errors import CfgError
from natserver.script import ast
from natserver.script.lexer import Tok, Token, tokenize

ROUTE_COUNT = 20  # SER's RT_NO: route[0..19], onreply_route/failure_route[1..19]

# Words the grammar gives a meaning; none of them can name a function.
_EXPR_LEFT = frozenset({"method", "uri", "status", "from_uri", "to_uri",
                        "src_ip", "dst_ip", "src_port", "dst_port", "proto", "af"})
_URI_LEFT = frozenset({"uri", "status", "from_uri", "to_uri"})
_RESERVED = _EXPR_LEFT | {"if", "else", "myself", "max_len", "loadmodule", "modparam",
                          "onreply_route", "failure_route"}
_COMPARE_OPS = {Tok.EQ: "==", Tok.NE: "!=", Tok.MATCH: "=~", Tok.GT: ">", Tok.LT: "<",
                Tok.GE: ">=", Tok.LE: "<="}
_STR_OPS = ("==", "!=", "=~")
_EQ_OPS = ("==", "!=")
_INT_OPS = ("==", "!=", ">", "<", ">=", "<=")
# Built-ins that may be written without parentheses.
_BARE_CALLS = frozenset({"break", "drop", "exit", "return", "force_rport", "add_rport"})
_HOST_PARTS = (Tok.ID, Tok.NUMBER)
_PROTOS = frozenset({"udp", "tcp", "tls", "sctp"})


def parse(text: str, file: str = "<cfg>", warnings: list[str] | None = None) -> ast.ConfigFile:
    """Parse a whole cfg. Raises CfgError(file, line, col) on the first error."""
    return _Parser(tokenize(text, file, warnings), file).config()


class _Parser:
    __slots__ = ("toks", "i", "file")

    def __init__(self, toks: list[Token], file: str) -> None:
        self.toks = toks
        self.i = 0
        self.file = file

    # ---- token helpers

    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def peek(self, ahead: int = 1) -> Token:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def next(self) -> Token:
        tok = self.toks[self.i]
        if tok.kind is not Tok.EOF:
            self.i += 1
        return tok

    def at(self, kind: Tok, value: str | None = None) -> bool:
        tok = self.tok
        return tok.kind is kind and (value is None or tok.value == value)

    def accept(self, kind: Tok, value: str | None = None) -> Token | None:
        if self.at(kind, value):
            return self.next()
        return None

    def expect(self, kind: Tok, what: str) -> Token:
        if self.tok.kind is not kind:
            raise self.unexpected(what)
        return self.next()

    def unexpected(self, what: str, tok: Token | None = None) -> CfgError:
        tok = tok or self.tok
        got = "end of file" if tok.kind is Tok.EOF else repr(tok.text)
        return CfgError(self.file, tok.line, tok.col, f"syntax error: expected {what}, got {got}")

    def error(self, tok: Token | ast.Str | ast.Num, message: str) -> CfgError:
        return CfgError(self.file, tok.line, tok.col, message)

    # ---- top level

    def config(self) -> ast.ConfigFile:
        items: list[ast.TopItem] = []
        while not self.at(Tok.EOF):
            tok = self.tok
            if self.accept(Tok.SEMI):
                continue
            if tok.kind is not Tok.ID:
                raise self.unexpected("a parameter, loadmodule, modparam or route block")
            word = tok.value
            if word == "loadmodule":
                self.next()
                path = self.string("a module path string")
                items.append(ast.LoadModule(path, tok.line, tok.col))
            elif word == "modparam":
                items.append(self.modparam())
            elif word in ("route", "onreply_route", "failure_route"):
                items.append(self.route_block())
            elif self.peek().kind is Tok.ASSIGN:
                self.next()
                self.next()
                items.append(ast.Assign(str(word), self.assign_value(), tok.line, tok.col))
            else:
                raise self.unexpected("'=' after a parameter name", self.peek())
        return ast.ConfigFile(self.file, tuple(items))

    def string(self, what: str) -> ast.Str:
        tok = self.expect(Tok.STRING, what)
        return ast.Str(str(tok.value), tok.line, tok.col)

    def value(self, what: str) -> ast.Str | ast.Num:
        """A STRING or a (possibly negative) NUMBER."""
        tok = self.tok
        if tok.kind is Tok.STRING:
            self.next()
            return ast.Str(str(tok.value), tok.line, tok.col)
        if tok.kind is Tok.NUMBER:
            self.next()
            return ast.Num(int(tok.value), tok.line, tok.col)
        if tok.kind is Tok.MINUS and self.peek().kind is Tok.NUMBER:
            self.next()
            return ast.Num(-int(self.next().value), tok.line, tok.col)
        raise self.unexpected(what)

    def modparam(self) -> ast.ModParam:
        start = self.next()
        self.expect(Tok.LPAREN, "'('")
        modules = self.string("a module name regex string")
        self.expect(Tok.COMMA, "','")
        name = self.string("a parameter name string")
        self.expect(Tok.COMMA, "','")
        value = self.value("a string or number")
        self.expect(Tok.RPAREN, "')'")
        return ast.ModParam(modules, name, value, start.line, start.col)

    def assign_value(self) -> ast.Str | ast.Num:
        """NUMBER | STRING | ID | listen value (``[proto:]host[:port]``) as its text."""
        tok = self.tok
        nxt = self.peek()
        if tok.kind in (Tok.STRING, Tok.MINUS) or (
                tok.kind is Tok.NUMBER and nxt.kind not in (Tok.DOT, Tok.COLON, Tok.MINUS)):
            return self.value("a value")
        text = ""
        if (tok.kind is Tok.ID and str(tok.value).lower() in _PROTOS or tok.kind is Tok.STAR) \
                and nxt.kind is Tok.COLON:
            text = f"{tok.text}:"
            self.next()
            self.next()
        text += self.host("a value")
        if self.at(Tok.COLON):
            self.next()
            port = self.tok
            if port.kind not in (Tok.NUMBER, Tok.STAR):
                raise self.unexpected("a port number or '*'")
            self.next()
            text += f":{port.text}"
        return ast.Str(text, tok.line, tok.col)

    def host(self, what: str) -> str:
        """``ipv4 | "[" ipv6 "]" | ID { ("."|"-") ID }`` as its text."""
        tok = self.tok
        if tok.kind is Tok.LBRACKET:
            self.next()
            parts = ["["]
            while not self.at(Tok.RBRACKET):
                part = self.tok
                if part.kind not in (Tok.NUMBER, Tok.ID, Tok.COLON, Tok.DOT):
                    raise self.unexpected("an IPv6 address and ']'")
                parts.append(part.text)
                self.next()
            self.next()
            parts.append("]")
            return "".join(parts)
        if tok.kind not in _HOST_PARTS:
            raise self.unexpected(what)
        parts = [tok.text]
        self.next()
        while self.tok.kind in (Tok.DOT, Tok.MINUS) and self.peek().kind in _HOST_PARTS:
            parts.append(self.next().text)
            parts.append(self.next().text)
        return "".join(parts)

    def route_block(self) -> ast.RouteBlock:
        tok = self.next()
        kind = {"route": ast.RouteKind.REQUEST, "onreply_route": ast.RouteKind.ONREPLY,
                "failure_route": ast.RouteKind.FAILURE}[str(tok.value)]
        if kind is ast.RouteKind.REQUEST and self.at(Tok.LBRACE):
            number = ast.Num(0, tok.line, tok.col)
        else:
            self.expect(Tok.LBRACKET, "'['" if kind is not ast.RouteKind.REQUEST else "'[' or '{'")
            ntok = self.expect(Tok.NUMBER, "a route number")
            number = ast.Num(int(ntok.value), ntok.line, ntok.col)
            self.expect(Tok.RBRACKET, "']'")
            low = 0 if kind is ast.RouteKind.REQUEST else 1
            if not low <= number.value < ROUTE_COUNT:
                raise self.error(number, f"{kind.keyword} number {number.value} is out of "
                                         f"range {low}..{ROUTE_COUNT - 1}")
        if not self.at(Tok.LBRACE):
            raise self.unexpected("'{'")
        return ast.RouteBlock(kind, number, self.block(), tok.line, tok.col)

    # ---- statements

    def block(self) -> ast.Block:
        start = self.expect(Tok.LBRACE, "'{'")
        stmts: list[ast.Stmt] = []
        while not self.accept(Tok.RBRACE):
            if self.at(Tok.EOF):
                raise self.unexpected("'}'")
            stmt = self.statement()
            if stmt is not None:
                stmts.append(stmt)
        return ast.Block(tuple(stmts), start.line, start.col)

    def statement(self) -> ast.Stmt | None:
        """``block | ";" | ifstm | cmd ";"``; None for an empty statement."""
        tok = self.tok
        if tok.kind is Tok.SEMI:
            self.next()
            return None
        if tok.kind is Tok.LBRACE:
            return self.block()
        if tok.kind is Tok.ID and tok.value == "if":
            return self.if_statement()
        call = self.command()
        if not self.accept(Tok.SEMI):
            raise self.unexpected(f"';' after {call.name}")
        return call

    def if_statement(self) -> ast.If:
        tok = self.next()
        cond = self.expr()
        then = self.branch()
        orelse = None
        if self.at(Tok.ID, "else"):
            self.next()
            orelse = self.branch()
        return ast.If(cond, then, orelse, tok.line, tok.col)

    def branch(self) -> ast.Stmt:
        tok = self.tok
        stmt = self.statement()
        return stmt if stmt is not None else ast.Block((), tok.line, tok.col)

    def command(self) -> ast.Call:
        """``ID "(" [value {"," value}] ")"``, or a built-in written without parentheses."""
        tok = self.tok
        if tok.kind is not Tok.ID or tok.value in _RESERVED:
            raise self.unexpected("a statement")
        name = str(tok.value)
        self.next()
        if name == "return" and (self.at(Tok.NUMBER) or self.at(Tok.MINUS)):
            return ast.Call(name, (self.value("a number"),), tok.line, tok.col)  # Kamailio
        if not self.at(Tok.LPAREN):
            if name in _BARE_CALLS:
                return ast.Call(name, (), tok.line, tok.col)
            raise self.unexpected(f"'(' after {name}")
        self.next()
        args: list[ast.Value] = []
        if not self.accept(Tok.RPAREN):
            while True:
                args.append(self.value("a string or number argument"))
                if self.accept(Tok.RPAREN):
                    break
                self.expect(Tok.COMMA, "',' or ')'")
        return ast.Call(name, tuple(args), tok.line, tok.col)

    # ---- expressions: ! binds tighter than &&, && tighter than ||; all left-associative

    def expr(self) -> ast.Expr:
        left = self.and_expr()
        while self.at(Tok.OR):
            tok = self.next()
            left = ast.Or(left, self.and_expr(), tok.line, tok.col)
        return left

    def and_expr(self) -> ast.Expr:
        left = self.not_expr()
        while self.at(Tok.AND):
            tok = self.next()
            left = ast.And(left, self.not_expr(), tok.line, tok.col)
        return left

    def not_expr(self) -> ast.Expr:
        if self.at(Tok.NOT):
            tok = self.next()
            return ast.Not(self.not_expr(), tok.line, tok.col)
        return self.primary()

    def primary(self) -> ast.Expr:
        tok = self.tok
        if tok.kind is Tok.LPAREN:
            self.next()
            inner = self.expr()
            self.expect(Tok.RPAREN, "')'")
            return inner
        if tok.kind is Tok.NUMBER:
            self.next()
            return ast.Number(int(tok.value), tok.line, tok.col)
        if tok.kind is Tok.MINUS and self.peek().kind is Tok.NUMBER:
            self.next()
            return ast.Number(-int(self.next().value), tok.line, tok.col)
        if tok.kind is Tok.MSGLEN:
            self.next()
            op = self.operator(_INT_OPS)
            if self.at(Tok.ID, "max_len"):
                mtok = self.next()
                limit = ast.MaxLen(mtok.line, mtok.col)
                return ast.Compare("msg:len", op, limit, tok.line, tok.col)
            return ast.Compare("msg:len", op, self.number_value(), tok.line, tok.col)
        if tok.kind is Tok.LBRACE:
            return self.block()
        if tok.kind is not Tok.ID:
            raise self.unexpected("an expression")
        word = str(tok.value)
        if word == "if":
            return self.if_statement()
        if word == "myself":
            self.next()
            op = self.operator(_EQ_OPS)
            right = self.tok
            if right.kind is not Tok.ID or right.value not in _URI_LEFT:
                raise self.unexpected("uri, from_uri or to_uri after myself")
            self.next()
            return ast.Compare(str(right.value), op, ast.Myself(tok.line, tok.col),
                               tok.line, tok.col)
        if word in _EXPR_LEFT:
            self.next()
            return self.comparison(word, tok)
        return self.command()

    def comparison(self, left: str, tok: Token) -> ast.Compare:
        if left in ("src_port", "dst_port", "af", "proto"):
            op = self.operator(_INT_OPS if left.endswith("port") else _EQ_OPS)
            right = self.tok
            if left.endswith("port"):
                value: ast.Str | ast.Num | ast.Myself = self.number_value()
            elif right.kind is Tok.NUMBER:
                value = self.number_value()
            elif right.kind is Tok.ID:
                self.next()
                value = ast.Str(str(right.value), right.line, right.col)
            else:
                raise self.unexpected("a name or number")
            return ast.Compare(left, op, value, tok.line, tok.col)
        op = self.operator(_STR_OPS)
        right = self.tok
        if right.kind is Tok.ID and right.value == "myself" and left != "method":
            if left not in _URI_LEFT:
                raise self.error(right, "myself can only be compared with uri, from_uri or to_uri")
            if op == "=~":
                raise self.error(right, "myself can only be compared with == or !=")
            self.next()
            return ast.Compare(left, op, ast.Myself(right.line, right.col), tok.line, tok.col)
        if right.kind is Tok.STRING:
            self.next()
            return ast.Compare(left, op, ast.Str(str(right.value), right.line, right.col),
                               tok.line, tok.col)
        if right.kind is Tok.ID and left == "method":
            self.next()
            return ast.Compare(left, op, ast.Str(str(right.value), right.line, right.col),
                               tok.line, tok.col)
        if left != "method" and (right.kind in _HOST_PARTS or right.kind is Tok.LBRACKET):
            text = self.host("a string or host")
            if left in ("src_ip", "dst_ip") and self.at(Tok.SLASH):
                self.next()
                text += "/" + self.number_text()
            return ast.Compare(left, op, ast.Str(text, right.line, right.col), tok.line, tok.col)
        raise self.unexpected("a string" if left == "method" else "a string, host or myself")

    def operator(self, allowed: tuple[str, ...]) -> str:
        tok = self.tok
        op = _COMPARE_OPS.get(tok.kind)
        if op is None or op not in allowed:
            raise self.unexpected(" ".join(allowed))
        self.next()
        return op

    def number_value(self) -> ast.Num:
        tok = self.tok
        value = self.value("a number")
        if not isinstance(value, ast.Num):
            raise self.unexpected("a number", tok)
        return value

    def number_text(self) -> str:
        return self.expect(Tok.NUMBER, "a number").text
