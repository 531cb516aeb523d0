"""textops: regular expressions over the message text and header edits (SER modules/textops).

``search`` runs over the message exactly as received (start line, headers, body); edits
made earlier in the script are not seen, as in SER. Patterns are POSIX EREs compiled
once at start-up with REG_ICASE and REG_NEWLINE.
"""

from __future__ import annotations

import re
from typing import Any

from natserver.modules import Function, Module, RouteType, as_str
from natserver.script.regex import compile_ere
from natserver.script.runtime import MsgCtx


def _ere(value: Any) -> re.Pattern[bytes]:
    return compile_ere(as_str(value), icase=True, newline=True)


def _header_line(value: Any) -> bytes:
    text = as_str(value)
    if ":" not in text:
        raise ValueError(f"expected 'Name: value', got {text!r}")
    data = text.encode()
    return data if data.endswith(b"\r\n") else data.rstrip(b"\r\n") + b"\r\n"


def _header_name(value: Any) -> bytes:
    text = as_str(value).strip()
    if not text or ":" in text or " " in text:
        raise ValueError(f"bad header name {text!r}")
    return text.encode()


class Textops(Module):
    NAME = "textops"

    def search(self, m: MsgCtx, pattern: re.Pattern[bytes]) -> int:
        return 1 if pattern.search(m.msg.buf) else -1

    def search_body(self, m: MsgCtx, pattern: re.Pattern[bytes]) -> int:
        return 1 if pattern.search(m.msg.body) else -1

    def is_present_hf(self, m: MsgCtx, name: bytes) -> int:
        return 1 if m.msg.find(name) is not None else -1

    def append_hf(self, m: MsgCtx, line: bytes) -> int:
        """Add a header line after the last header of the outgoing copy."""
        m.get_edits().insert(m.msg.headers_end, line)
        return 1

    def remove_hf(self, m: MsgCtx, name: bytes) -> int:
        """Remove every header line called ``name``; 1 when one was removed, else -1."""
        removed = 0
        low = name.lower()
        target = m.msg.find(name)
        for field in m.msg.hdrs:
            same = field.name.lower() == low or (
                target is not None and field.hdr == target.hdr and field.hdr.name != "OTHER")
            if same:
                m.get_edits().delete(field.start, field.end)
                removed += 1
        return 1 if removed else -1


FUNCTIONS = (
    Function("search", Textops.search, args=(_ere,), routes=RouteType.ANY),
    Function("search_body", Textops.search_body, args=(_ere,), routes=RouteType.ANY),
    Function("is_present_hf", Textops.is_present_hf, args=(_header_name,), routes=RouteType.ANY),
    Function("append_hf", Textops.append_hf, args=(_header_line,), routes=RouteType.ANY),
    Function("remove_hf", Textops.remove_hf, args=(_header_name,), routes=RouteType.ANY),
)
PARAMS = ()
MODULE = Textops
