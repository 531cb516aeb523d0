"""Test-only modules for the cfg compiler tests, found by :func:`finder` instead of
``natserver.modules.find``. Their functions record each call in ``m.vars["trace"]``."""

from __future__ import annotations

import importlib
from typing import Any

from natserver.modules import ModuleSpec, RouteType
from natserver.script.runtime import MsgCtx
from natserver.sip.message import Message

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


def parse_message(buf: bytes) -> Message:
    return Message.parse(buf)


def request(method: bytes = b"INVITE", ruri: bytes = b"sip:bob@example.org") -> Message:
    return parse_message(REQUEST % {b"method": method, b"ruri": ruri})


def reply(status: int = 200, method: bytes = b"INVITE", reason: bytes = b"OK") -> Message:
    return parse_message(REPLY % {b"status": status, b"method": method, b"reason": reason})


class StandInContext:
    """Context.is_myself for as long as natserver.context cannot build one: the listen
    sockets and the aliases (an alias without a port matches any port)."""

    def __init__(self, names: set[tuple[str, int]], any_port: set[str]) -> None:
        self.names = names
        self.any_port = any_port

    def is_myself(self, host: str, port: int) -> bool:
        host = host.lower()
        return host in self.any_port or (host, port) in self.names


def context(config: Any) -> Any:
    """A real Context over ``config`` when it can be built, else the stand-in
    (myself = every listen host:port and alias of ``config``)."""
    from natserver.context import Context
    try:
        ctx = Context(config)
    except AttributeError:
        names = {(h.lower(), p) for h, p in config.listens()}
        names |= {(a.host.lower(), a.port) for a in config.alias if a.port}
        return StandInContext(names, {a.host.lower() for a in config.alias if not a.port})
    return ctx


def msgctx(script: Any, msg: Any, route_type: RouteType | None = None) -> MsgCtx:
    if route_type is None:
        route_type = RouteType.REQUEST if msg.is_request else RouteType.ONREPLY
    return MsgCtx(context(script.config), msg, ("192.0.2.50", 5060), ("192.0.2.13", 5060),
                  route_type, 0.0)
