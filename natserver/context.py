"""The Context: built once from the cfg (in the supervisor, before fork) and passed down.

It holds the parsed globals, the compiled script, the module instances, the shared
memory tables and, in each child, that process's transport and identity. Nothing here
opens sockets; the process files in ``natserver/workers/`` fill in ``transport``.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from natserver.config import Config
from natserver.errors import SipError

if TYPE_CHECKING:
    from natserver.modules import Module
    from natserver.overload import Shedder
    from natserver.script import Script
    from natserver.sip.message import Message


class Transport(Protocol):
    """Where a process sends datagrams from its listen:port socket."""

    def send(self, data: bytes, addr: tuple[str, int]) -> bool: ...


@dataclass(slots=True)
class ListTransport:
    """A transport that keeps what was sent: the sans-IO sink tests read."""

    sent: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)

    def send(self, data: bytes, addr: tuple[str, int]) -> bool:
        self.sent.append((data, addr))
        return True

    def take(self) -> list[tuple[bytes, tuple[str, int]]]:
        out, self.sent = self.sent, []
        return out


@dataclass(slots=True)
class Proc:
    """Which process this is: kind ("sip worker", "timer"...), slot (1-based) and count."""

    kind: str = "main"
    slot: int = 0
    count: int = 1
    index: int = 0  # position in the shared per-process tables (heartbeats, stats)

    @property
    def title(self) -> str:
        if self.count > 1 or self.kind in ("sip worker", "rtp relay"):
            return f"natserver: {self.kind} {self.slot}/{self.count}"
        return f"natserver: {self.kind}"


class Context:
    """Server-wide state shared by every module and process (no hidden globals)."""

    def __init__(self, cfg: Config, cfg_path: str = "") -> None:
        self.cfg = cfg
        self.cfg_path = cfg_path
        self.script: Script | None = None
        self.modules: dict[str, Module] = {}
        self.tables: Any = None                  # natserver.shm tables, made before fork
        self.transport: Transport = ListTransport()
        self.proc = Proc()
        self.stats: Any = None                   # this process's shm counters
        self.clock: Callable[[], float] = time.time
        self.mono: Callable[[], float] = time.monotonic
        self.secret = b""                        # random bytes shared by all processes
        self.shedder: Shedder | None = None      # SIP workers: load shedding (overload.py)
        # Modules whose receive-path hooks are overridden, in load order (see set_modules).
        self.request_hooks: list[Module] = []
        self.reply_hooks: list[Module] = []
        self.post_script_hooks: list[Module] = []
        from natserver import __version__
        self.server_header = f"natserver ({__version__})".encode() if cfg.server_signature else None
        self._sl_tag_prefix = b""
        self._myself: set[tuple[str, int]] = set()
        self._myself_any_port: set[str] = set()
        self.refresh_myself()

    def refresh_myself(self) -> None:
        """Recompute what ``uri==myself`` matches: every listen host:port and every alias
        (an alias without a port matches any port). Call again if the listen port
        changes (``port=0`` is resolved before the supervisor builds the Context)."""
        self._myself = {(host.lower(), port) for host, port in self.cfg.listens()}
        self._myself |= {(a.host.lower(), a.port) for a in self.cfg.alias if a.port}
        if self.cfg.advertised_address:
            self._myself.add((self.advertised[0].lower(), self.advertised[1]))
        self._myself_any_port = {a.host.lower() for a in self.cfg.alias if not a.port}

    def is_myself(self, host: str, port: int) -> bool:
        """Is host:port one of our own addresses (SER check_self)?"""
        host = host.lower()
        return host in self._myself_any_port or (host, port) in self._myself

    def module(self, name: str) -> Module | None:
        return self.modules.get(name)

    def set_modules(self, modules: dict[str, Module]) -> None:
        """Install the script's module instances and collect the hooks they override."""
        from natserver.modules import Module as Base
        self.modules = modules
        self.request_hooks = [m for m in modules.values()
                              if type(m).on_request is not Base.on_request]
        self.reply_hooks = [m for m in modules.values()
                            if type(m).on_reply is not Base.on_reply]
        self.post_script_hooks = [m for m in modules.values()
                                  if type(m).post_script is not Base.post_script]

    @property
    def sl_tag_prefix(self) -> bytes:
        """The part of our stateless To-tags that is the same in every process, so an ACK
        for any worker's reply is recognised by any worker (made on first use)."""
        if not self._sl_tag_prefix:
            host, port = self.listen
            seed = f"natserver-sl {host}:{port}".encode()
            self._sl_tag_prefix = hashlib.md5(seed).hexdigest()[:16].encode()
        return self._sl_tag_prefix

    def sl_tag(self, msg: Message) -> bytes:
        """The To-tag of a stateless reply to ``msg``: the prefix + a per-request part."""
        try:
            branch = (msg.via1.branch or "").encode()
        except SipError:  # a broken Via still gets a tag
            branch = b""
        return b"%s.%04x" % (self.sl_tag_prefix, zlib.crc32(branch) & 0xFFFF)

    def is_sl_tag(self, tag: str | None) -> bool:
        """Does a To-tag belong to one of our stateless replies?"""
        return bool(tag) and tag.encode().startswith(self.sl_tag_prefix + b".")

    @property
    def listen(self) -> tuple[str, int]:
        """The first listen socket's address: the source of every SIP packet we send."""
        return self.cfg.listens()[0]

    @property
    def advertised(self) -> tuple[str, int]:
        """The address natserver writes about itself (Via, Record-Route): the listen
        address, or ``advertised_address``/``advertised_port`` for a server behind 1:1
        NAT, whose peers reach it at an address it does not own."""
        host, port = self.listen
        return (self.cfg.advertised_address or host, self.cfg.advertised_port or port)
