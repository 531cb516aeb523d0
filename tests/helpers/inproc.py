"""natserver in-process for module tests: a compiled cfg, real shared-memory tables, a
ListTransport that keeps what was sent, and a clock the test moves by hand.

``Proxy(cfg_text)`` runs the receive path on datagrams the test hands in and lets it
read what went out; ``proxy.advance(seconds)`` moves the monotonic clock and runs the
SIP worker's timer hooks, as a worker loop would. Several ``Proxy.worker(n)`` views
share the tables but not the heaps, like SIP workers of one server.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from natserver.context import Context, ListTransport, Proc
from natserver.receive import receive
from natserver.script import load
from natserver.shm import Tables
from natserver.stats import COUNTER_NAMES, Stats

LISTEN = ("192.0.2.13", 5060)


@dataclass
class Clock:
    t: float = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Sent:
    data: bytes
    addr: tuple[str, int]

    @property
    def first(self) -> bytes:
        return self.data.split(b"\r\n", 1)[0]


@dataclass
class Worker:
    """One simulated SIP worker: its own Context (module instances are per process)."""

    ctx: Context
    transport: ListTransport
    clock: Clock
    listen: tuple[str, int] = LISTEN
    out: list[Sent] = field(default_factory=list)

    def feed(self, data: bytes, src: tuple[str, int]) -> list[Sent]:
        receive(self.ctx, data, src, self.listen, 1.7e9 + self.clock.t)
        return self.take()

    def take(self) -> list[Sent]:
        got = [Sent(d, a) for d, a in self.transport.take()]
        self.out += got
        return got

    def run_timers(self) -> list[Sent]:
        for mod in self.ctx.modules.values():
            mod.worker_timer(self.ctx, self.clock.t)
        return self.take()

    @property
    def tm(self):
        return self.ctx.modules["tm"]


class Proxy:
    """A natserver built from ``cfg`` in this process (no sockets, no fork)."""

    def __init__(self, cfg: str, *, workers: int = 1, tables: Tables | None = None,
                 hosts: dict[str, str] | None = None,
                 listen: tuple[str, int] = LISTEN) -> None:
        head = "listen=%s\nport=%d\n" % listen
        self.clock = Clock()
        self.scripts = [load("test.cfg", text=head + cfg) for _ in range(workers)]
        first = self.scripts[0]
        specs: dict[str, tuple[int, int, int]] = {}
        ctx0 = Context(first.config, "test.cfg")
        for module in first.modules.values():
            specs.update(module.shm_tables(ctx0))
        self.tables = tables or Tables.build(specs, proc_slots=workers + 2,
                                             counter_names=COUNTER_NAMES)
        self.workers: list[Worker] = []
        for i, script in enumerate(self.scripts, 1):
            ctx = Context(script.config, "test.cfg")
            ctx.script = script
            ctx.secret = b"s" * 16
            ctx.set_modules(script.modules)
            ctx.tables = self.tables
            ctx.proc = Proc("sip worker", i, workers, i)
            ctx.stats = Stats()
            ctx.mono = self.clock
            ctx.clock = lambda: 1.7e9 + self.clock.t
            transport = ListTransport()
            ctx.transport = transport
            for module in script.modules.values():
                module.init(ctx)
            for module in script.modules.values():
                module.child_init(ctx)
            tm = script.modules.get("tm")
            if tm is not None:  # names resolve from a table: no DNS query leaves the test
                names = dict(hosts or {"localhost": "127.0.0.1"})
                tm.resolver.lookup = names.get
            self.workers.append(Worker(ctx, transport, self.clock, listen))

    def worker(self, n: int = 1) -> Worker:
        return self.workers[n - 1]

    def feed(self, data: bytes, src: tuple[str, int], worker: int = 1) -> list[Sent]:
        return self.worker(worker).feed(data, src)

    def advance(self, seconds: float, step: float = 0.05) -> list[Sent]:
        """Move the clock in small steps, running every worker's timers at each."""
        got: list[Sent] = []
        end = self.clock.t + seconds
        while self.clock.t < end - 1e-9:
            self.clock.t = min(end, self.clock.t + step)
            for w in self.workers:
                got += w.run_timers()
        return got

    def count(self) -> int:
        return self.tables["transactions"].count()

    def close(self) -> None:
        self.tables.close()
