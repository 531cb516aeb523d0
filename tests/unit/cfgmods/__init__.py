"""Test-only modules for the cfg compiler tests, found by :func:`finder` instead of
``natserver.modules.find``. Their functions record each call in ``m.vars["trace"]``."""

from __future__ import annotations

import importlib
from typing import Any

from natserver.modules import ModuleSpec, RouteType
from natserver.script.runtime import MsgCtx

NAMES = ("rec", "other")


def finder(name: str) -> ModuleSpec | None:
    """Like natserver.modules.find, over this package."""
    if name not in NAMES:
        return None
    mod = importlib.import_module(f"tests.unit.cfgmods.{name}")
    cls = mod.MODULE
    return ModuleSpec(name=cls.NAME, cls=cls, functions=tuple(mod.FUNCTIONS),
                      params={p.name: p for p in mod.PARAMS})


# ---- messages and contexts for running compiled routes

REQUEST = (
    b"%(method)s %(ruri)s SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKcfgtest\r\n"
    b"From: <sip:alice@example.org>;tag=a1\r\n"
    b"To: <sip:bob@example.org>\r\n"
    b"Call-ID: cfgtest-1\r\n"
    b"CSeq: 1 %(method)s\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
REPLY = (
    b"SIP/2.0 %(status)d %(reason)s\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.13:5060;branch=z9hG4bKours\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKcfgtest\r\n"
    b"From: <sip:alice@example.org>;tag=a1\r\n"
    b"To: <sip:bob@example.org>;tag=b1\r\n"
    b"Call-ID: cfgtest-1\r\n"
    b"CSeq: 1 %(method)s\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def real_message_class() -> Any:
    """natserver.sip.message.Message when that module exists, else None."""
    try:
        from natserver.sip.message import Message
    except ImportError:
        return None
    return Message


class StandInCSeq:
    def __init__(self, num: int, method: bytes) -> None:
        self.num = num
        self.method = method


class StandInMessage:
    """The attributes the compiler reads (docs/architecture.md), for as long as
    natserver.sip.message does not exist yet: first line and CSeq, nothing else."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        first, _, rest = buf.partition(b"\r\n")
        parts = first.split(b" ", 2)
        self.is_request = not first.startswith(b"SIP/2.0 ")
        if self.is_request:
            self.method, self.ruri, self.status = parts[0], parts[1], 0
        else:
            self.method, self.ruri, self.status = b"", b"", int(parts[1])
        cseq = [line for line in rest.split(b"\r\n") if line.lower().startswith(b"cseq:")][0]
        num, method = cseq.split(b":", 1)[1].split()
        self.cseq = StandInCSeq(int(num), method)


def parse_message(buf: bytes) -> Any:
    cls = real_message_class()
    return cls.parse(buf) if cls is not None else StandInMessage(buf)


def request(method: bytes = b"INVITE", ruri: bytes = b"sip:bob@example.org") -> Any:
    return parse_message(REQUEST % {b"method": method, b"ruri": ruri})


def reply(status: int = 200, method: bytes = b"INVITE", reason: bytes = b"OK") -> Any:
    return parse_message(REPLY % {b"status": status, b"method": method, b"reason": reason})


class StandInContext:
    """Context.is_myself for as long as natserver.context cannot build one."""

    def __init__(self, names: set[tuple[str, int]]) -> None:
        self.names = names

    def is_myself(self, host: str, port: int) -> bool:
        return (host.lower(), port) in self.names


def context(config: Any) -> Any:
    """A real Context over ``config`` when it can be built, else the stand-in
    (myself = every listen host:port and alias of ``config``)."""
    from natserver.context import Context
    try:
        ctx = Context(config)
    except AttributeError:
        names = {(h.lower(), p) for h, p in config.listens()}
        names |= {(a.host.lower(), a.port or config.port) for a in config.alias}
        return StandInContext(names)
    return ctx


def msgctx(script: Any, msg: Any, route_type: RouteType | None = None) -> MsgCtx:
    if route_type is None:
        route_type = RouteType.REQUEST if msg.is_request else RouteType.ONREPLY
    return MsgCtx(context(script.config), msg, ("192.0.2.50", 5060), ("192.0.2.13", 5060),
                  route_type, 0.0)
