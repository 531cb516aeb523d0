"""The exception types that cross module lines, and SER's internal error codes.

Errors carry their answer: a ``SipError`` knows the status to send, a ``CfgError``
knows the file:line:col to print, a ``TableFull`` knows which shared table ran out.
"""

from __future__ import annotations

import enum


class SipError(Exception):
    """A message that cannot be processed; ``status``/``reason`` is the reply to send."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class CfgError(Exception):
    """A configuration error, printed as ``file:line:col: message``."""

    def __init__(self, file: str, line: int, col: int, message: str) -> None:
        super().__init__(f"{file}:{line}:{col}: {message}")
        self.file = file
        self.line = line
        self.col = col
        self.message = message


class TableFull(Exception):
    """A fixed-capacity shared-memory table has no free slot for a new record."""

    def __init__(self, table: str) -> None:
        super().__init__(f"shared table {table!r} is full")
        self.table = table


class DbError(Exception):
    """The database could not answer (connection lost and not re-established, SQL error)."""


class Err(enum.IntEnum):
    """SER's internal error codes (error.h); ``sl_reply_error`` turns them into replies."""

    UNSPEC = 1
    OUT_OF_MEM = 2
    BAD_RE = 3
    BAD_ADDRESS = 4
    BUG = 5
    CFG = 6
    NO_SOCKET = 7
    BAD_VIA = 8
    BAD_TUPEL = 9
    SCRIPT = 10
    EXEC = 11
    TOO_MANY_BRANCHES = 12
    BAD_TO = 13
    INVALID_PARAMS = 14
    Q_INV_CHAR = 15
    Q_EMPTY = 16
    Q_TOO_BIG = 17
    Q_DEC_MISSING = 18
    NO_DESTINATION = 19
    SEND = 477
    BAD_URI = 479
    BAD_SERVER = 500
    BAD_REQ = 400
    LOOP = 482
    TABLE_FULL = 503


# (status, text) per code, as SER's err2reason_phrase() words them.
ERROR_REPLIES: dict[Err, tuple[int, str]] = {
    Err.SEND: (477, "Unfortunately error on sending to next hop occurred"),
    Err.BAD_ADDRESS: (478, "Unresolvable destination"),
    Err.NO_DESTINATION: (478, "Unresolvable destination"),
    Err.BAD_URI: (479, "Regretfully, we were not able to process the URI"),
    Err.BAD_REQ: (400, "Bad Request"),
    Err.BAD_TUPEL: (400, "Transaction tuple incomplete"),
    Err.BAD_TO: (400, "Bad To"),
    Err.Q_INV_CHAR: (400, "Invalid character in q parameter"),
    Err.Q_EMPTY: (400, "Empty q parameter"),
    Err.Q_TOO_BIG: (400, "q parameter too big"),
    Err.Q_DEC_MISSING: (400, "Decimal part missing in q"),
    Err.LOOP: (482, "Loop Detected"),
    Err.TABLE_FULL: (503, "Service Unavailable"),
    Err.EXEC: (500, "Error in executing script"),
    Err.TOO_MANY_BRANCHES: (500, "Too many branches"),
}

DEFAULT_ERROR_REPLY = (500, "I'm terribly sorry, server error occurred")


def error_reply(code: Err) -> tuple[int, str]:
    """The ``(status, reason)`` SER's sl_reply_error sends for ``code`` (reason gets ``(n/SL)``)."""
    status, text = ERROR_REPLIES.get(code, DEFAULT_ERROR_REPLY)
    return status, f"{text} ({int(code)}/SL)"
