"""Logging set-up: SER debug levels mapped to Python levels, stderr or syslog.

SER logs a message when its level is at or below ``debug``: ALERT -3, CRIT -2, ERR -1,
WARN 1, NOTICE 2, INFO 3, DBG 4. Python has no NOTICE, so natserver adds one (25,
between INFO and WARNING); ``debug=2`` (SER's default) therefore shows notices,
warnings and errors, and ``debug=3`` adds info.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

# SER debug value -> the lowest Python level that is logged.
_LEVELS = {-3: logging.CRITICAL, -2: logging.CRITICAL, -1: logging.ERROR, 0: logging.ERROR,
           1: logging.WARNING, 2: NOTICE, 3: logging.INFO}


def python_level(debug: int) -> int:
    """The Python logging threshold for SER's ``debug=N``."""
    if debug >= 4:
        return logging.DEBUG
    return _LEVELS.get(debug, logging.CRITICAL)


class _ProcessFilter(logging.Filter):
    """Adds ``%(proc)s`` - the process title part ("sip worker 2/4") - to each record."""

    def __init__(self) -> None:
        super().__init__()
        self.proc = "main"

    def filter(self, record: logging.LogRecord) -> bool:
        record.proc = self.proc
        return True


_FILTER = _ProcessFilter()


def set_process(name: str) -> None:
    """Name the current process in every log line from now on (called after fork)."""
    _FILTER.proc = name


def setup(debug: int, *, to_stderr: bool, facility: str = "LOG_DAEMON",
          syslog_socket: str = "/dev/log") -> None:
    """(Re)configure the root logger; also used to reopen the targets on SIGHUP."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handler: logging.Handler
    if to_stderr:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s natserver[%(process)d] %(proc)s %(levelname)s %(name)s: %(message)s"
    else:
        fac = getattr(logging.handlers.SysLogHandler, facility, logging.handlers.SysLogHandler.LOG_DAEMON)
        address: str | tuple[str, int] = syslog_socket
        if syslog_socket.startswith("udp:"):
            host, _, port = syslog_socket[4:].rpartition(":")
            address = (host, int(port))
        handler = _syslog_handler(address, fac)
        fmt = "natserver[%(process)d]: %(proc)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(_FILTER)
    root.addHandler(handler)
    root.setLevel(python_level(debug))


class NonBlockingSysLogHandler(logging.handlers.SysLogHandler):
    """A SysLogHandler that never blocks its process: when the syslog socket's queue is
    full (a stalled syslog daemon; Linux queues only ~10 datagrams on a unix socket),
    the line is dropped and counted instead of stopping a worker or the supervisor."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.dropped = 0
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _connect_unixsocket(self, address: str) -> None:  # type: ignore[override]
        super()._connect_unixsocket(address)  # type: ignore[misc]
        self.socket.setblocking(False)

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BlockingIOError):
            self.dropped += 1
            return
        super().handleError(record)


def _syslog_handler(address: str | tuple[str, int], facility: int) -> logging.Handler:
    if isinstance(address, str) and not os.path.exists(address):
        # No syslog daemon (containers): keep running and say so on stderr.
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        logging.getLogger("natserver.log").warning("syslog socket %s missing: logging to stderr", address)
        return handler
    socktype = socket.SOCK_DGRAM
    try:
        handler = NonBlockingSysLogHandler(address=address, facility=facility,
                                           socktype=socktype)
    except OSError as exc:
        # A socket path that is not (yet) a live syslog socket: same as missing.
        handler = logging.StreamHandler(sys.stderr)
        logging.getLogger("natserver.log").warning("syslog socket %s unusable (%s): logging to stderr",
                                                   address, exc.strerror)
        return handler
    # NOTICE is not one of logging's names: without this it would go out as "warning".
    handler.priority_map = {**handler.priority_map, "NOTICE": "notice"}
    return handler
