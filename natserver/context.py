"""The Context: built once from the cfg (in the supervisor, before fork) and passed down.

It holds the parsed globals, the compiled script, the module instances, the shared
memory tables and, in each child, that process's transport and identity. Nothing here
opens sockets; the process files in ``natserver/workers/`` fill in ``transport``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from natserver.config import Config

if TYPE_CHECKING:
    from natserver.modules import Module
    from natserver.script import Script


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
        self._myself: set[tuple[str, int]] = set()
        self._myself_any_port: set[str] = set()
        self.refresh_myself()

    def module(self, name: str) -> Module | None:
        return self.modules.get(name)

    def refresh_myself(self) -> None:
        """Recompute the (host, port) pairs that count as this server (listen + alias)."""
        pairs = {(h.lower().strip("[]"), p) for h, p in self.cfg.listens()}
        any_port: set[str] = set()
        for alias in self.cfg.alias:
            host = alias.host.lower().strip("[]")
            if alias.port == 0:
                any_port.add(host)
            else:
                pairs.add((host, alias.port))
        self._myself = pairs
        self._myself_any_port = any_port

    def is_myself(self, host: str, port: int | None) -> bool:
        """SER check_self(): does host[:port] name one of our listen sockets or aliases?"""
        host = host.lower().strip("[]")
        if host in self._myself_any_port:
            return True
        return (host, port or 5060) in self._myself

    @property
    def listen(self) -> tuple[str, int]:
        """The first listen socket's address: the source of every SIP packet we send."""
        return self.cfg.listens()[0]
