"""The management protocol shared by the ctl process and ``natserverctl`` (sans-IO).

Two transports carry the same commands:

* SER's FIFO format, kept so old serctl-style scripts work::

      :command:reply_fifo_name\\n
      argument line\\n
      ...
      \\n                              <- an empty line ends the request

  The reply, written to the reply FIFO, is a status line (``200 ok``) followed by text
  lines. A relative reply name is looked up in the FIFO's directory, then in ``/tmp``
  (SER's ``fifo_dir``); natserver also accepts an absolute path.

* A unix stream socket for natserverctl: one JSON object per connection each way,
  ``{"cmd": "ps", "args": []}`` then ``{"status": 200, "reason": "ok", "data": ...}``.

Replies carry rows (a list of dicts), a dict, a list of strings or a string; the text
renderers here print them as aligned tables for humans and for FIFO replies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

# A request larger than this is refused (it is management traffic, not bulk data).
MAX_REQUEST = 64 * 1024
# Bytes of a FIFO request that may wait for its terminating empty line.
MAX_PENDING = MAX_REQUEST


class ProtocolError(ValueError):
    """A request or reply that does not follow the format."""


@dataclass(slots=True)
class Request:
    """One management request: command name, argument lines, and (FIFO) where to reply."""

    cmd: str
    args: list[str] = field(default_factory=list)
    reply_to: str = ""


@dataclass(slots=True)
class Reply:
    """A command's answer: SIP-like status, reason and the data rendered for the client."""

    status: int = 200
    reason: str = "ok"
    data: Any = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


# ---- FIFO (SER format)

def format_fifo_request(req: Request) -> bytes:
    """``:cmd:reply\\n`` + one line per argument + the empty line that ends it."""
    if not req.cmd or ":" in req.cmd or "\n" in req.cmd:
        raise ProtocolError(f"bad command name {req.cmd!r}")
    if ":" in req.reply_to or "\n" in req.reply_to:
        raise ProtocolError(f"bad reply fifo name {req.reply_to!r}")
    lines = [f":{req.cmd}:{req.reply_to}"]
    for arg in req.args:
        if "\n" in arg or arg == "":
            raise ProtocolError(f"a FIFO argument is one non-empty line, got {arg!r}")
        lines.append(arg)
    return ("\n".join(lines) + "\n\n").encode()


class FifoReader:
    """Splits the FIFO byte stream into requests; feed() what read() returned.

    Lines before a ``:cmd:reply`` line are skipped (and counted), as SER did; a request
    that grows beyond MAX_PENDING without its empty line is dropped.
    """

    __slots__ = ("_buf", "_current", "skipped")

    def __init__(self) -> None:
        self._buf = b""
        self._current: Request | None = None
        self.skipped = 0

    def feed(self, data: bytes) -> Iterator[Request]:
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_PENDING:
                    self._buf = b""
                    self._current = None
                    self.skipped += 1
                return
            line = self._buf[:nl].rstrip(b"\r").decode("utf-8", "replace")
            self._buf = self._buf[nl + 1:]
            if self._current is None:
                if not line:
                    continue
                try:
                    self._current = parse_fifo_first_line(line)
                except ProtocolError:
                    self.skipped += 1
                continue
            if line:
                self._current.args.append(line)
                if sum(len(a) for a in self._current.args) > MAX_REQUEST:
                    self._current = None
                    self.skipped += 1
                continue
            req, self._current = self._current, None
            yield req


def parse_fifo_first_line(line: str) -> Request:
    """``:cmd:reply_fifo`` -> Request (no args yet)."""
    if not line.startswith(":"):
        raise ProtocolError(f"a request starts with ':', got {line[:40]!r}")
    cmd, sep, reply_to = line[1:].partition(":")
    if not sep or not cmd.strip():
        raise ProtocolError(f"expected :command:reply_fifo, got {line[:40]!r}")
    return Request(cmd.strip(), [], reply_to.strip())


def format_fifo_reply(reply: Reply) -> bytes:
    """Status line, then the data as text lines (SER's ``200 ok`` + body)."""
    body = render(reply.data)
    head = f"{reply.status} {reply.reason}\n"
    return (head + body + ("\n" if body and not body.endswith("\n") else "")).encode()


def parse_fifo_reply(data: bytes) -> Reply:
    """The client side: status line + text body (the body stays text)."""
    text = data.decode("utf-8", "replace")
    first, _, body = text.partition("\n")
    code, _, reason = first.strip().partition(" ")
    if not code.isdigit():
        raise ProtocolError(f"bad FIFO reply status line {first[:60]!r}")
    return Reply(int(code), reason, body.rstrip("\n"))


def reply_fifo_name_ok(name: str) -> bool:
    """A relative reply name must be a plain file name (SER refused '/' and '.')."""
    if name.startswith("/"):
        return ".." not in name.split("/")
    return bool(name) and "/" not in name and not name.startswith(".")


# ---- unix socket (JSON)

def encode_request(req: Request) -> bytes:
    return orjson.dumps({"cmd": req.cmd, "args": req.args}) + b"\n"


def decode_request(data: bytes) -> Request:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"request is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("cmd"), str) or not obj["cmd"]:
        raise ProtocolError('expected {"cmd": "...", "args": [...]}')
    args = obj.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ProtocolError("args must be a list of strings")
    return Request(obj["cmd"], list(args))


def encode_reply(reply: Reply) -> bytes:
    return orjson.dumps({"status": reply.status, "reason": reply.reason, "data": reply.data},
                       option=orjson.OPT_NON_STR_KEYS, default=str) + b"\n"


def decode_reply(data: bytes) -> Reply:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"reply is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("status"), int):
        raise ProtocolError("reply without a status")
    return Reply(obj["status"], str(obj.get("reason", "")), obj.get("data"))


# ---- text rendering (natserverctl's human output and FIFO reply bodies)

def render(data: Any) -> str:
    """Rows -> aligned table; dict -> aligned ``key  value`` lines; list -> lines."""
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    if isinstance(data, dict):
        return format_dict(data)
    if isinstance(data, list | tuple):
        if data and all(isinstance(row, dict) for row in data):
            return format_table(list(data))
        return "\n".join(_cell(item) for item in data)
    return _cell(data)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Columns in first-seen key order; numbers right-aligned, text left-aligned."""
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    cells = [[_cell(row.get(col, "")) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    numeric = [all(_is_number(row.get(col)) for row in rows if row.get(col) not in (None, ""))
               for col in columns]
    lines = ["  ".join(_pad(col.upper(), w, num) for col, w, num in zip(columns, widths, numeric))]
    for r in cells:
        lines.append("  ".join(_pad(c, w, num) for c, w, num in zip(r, widths, numeric)))
    return "\n".join(line.rstrip() for line in lines)


def format_dict(data: dict[str, Any]) -> str:
    width = max((len(str(k)) for k in data), default=0)
    return "\n".join(f"{str(k):<{width}}  {_cell(v)}" for k, v in data.items())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _pad(text: str, width: int, right: bool) -> str:
    return text.rjust(width) if right else text.ljust(width)
