"""register: users REGISTER with digest auth (401 -> authorized REGISTER -> 200).

Without ``reregister`` every unit is a fresh registration (new Call-ID, as SIPp's
scenarios do) of the next user in turn, at the target rate: the "max REGISTER/s"
figure. With ``reregister=P`` each user registers once at the target rate, then again
every P seconds with the same Call-ID and a growing CSeq, as a phone does.
"""

from __future__ import annotations

from loadtest.engine import Loop
from loadtest.scenarios.common import Reg, Registrar, Scenario, Settings
from loadtest.stats import Stats


class Register(Scenario):
    name = "register"
    primary = "register"
    unit = "registrations"

    def __init__(self, cfg: Settings, loop: Loop, stats: Stats) -> None:
        super().__init__(cfg, loop, stats)
        if not self.users:
            raise ValueError("register needs users")
        self.reg = Registrar(self)
        self.next = 0
        self.done_cb = self._done
        self.again_cb = self._again

    def start(self, now: float) -> None:
        cfg = self.cfg
        if cfg.reregister and self.next >= len(self.users):
            return          # everyone is registered; the period drives from now on
        if cfg.limit and self.reg.open >= cfg.limit:
            self.stats.counters["limited"] = self.stats.counters.get("limited", 0) + 1
            return
        user = self.users[self.next % len(self.users)]
        self.next += 1
        if not cfg.reregister:
            user.call_id = b""
        self.stats.counters["started"] += 1
        self.reg.register(user, self.uac_port, now, self.done_cb)

    def _done(self, reg: Reg, ok: bool, now: float) -> None:
        if ok:
            self.stats.counters["ok"] += 1
        if self.cfg.reregister and not self.stopping:
            self.loop.timers.at(reg.t0 + self.cfg.reregister, self.again_cb, reg.user)

    def _again(self, user, gen: int, now: float) -> None:  # noqa: ANN001
        if self.stopping:
            return
        self.stats.counters["started"] += 1
        self.reg.register(user, self.uac_port, now, self.done_cb)

    def in_flight(self) -> int:
        return self.reg.open
