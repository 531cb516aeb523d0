"""mixed: registrations and calls together, as a live system sees them.

Every user (callers on the UAC socket, callees on the UAS socket) registers in the
prepare phase, then re-registers every ``reregister`` seconds (60 by default) at a
random phase of its own, while calls run at the target rate. Registrations are units
of their own (``reg_started``/``reg_ok``); the failure ratio counts both kinds.
"""

from __future__ import annotations

import random

from loadtest.engine import Loop
from loadtest.scenarios.call import PREPARE_RATE, CallScenario
from loadtest.scenarios.common import Reg, Registrar, Settings, User
from loadtest.stats import Stats

DEFAULT_PERIOD = 60.0


class MixedScenario(CallScenario):
    name = "mixed"
    primary = "setup"
    unit = "calls"

    def __init__(self, cfg: Settings, loop: Loop, stats: Stats) -> None:
        super().__init__(cfg, loop, stats)
        self.period = cfg.reregister or DEFAULT_PERIOD
        self.reg = Registrar(self)
        self.callee_set = {id(u) for u in self.callees}
        self.everyone = self.callers + [u for u in self.callees if u not in self.callers]
        self.again_cb = self._again
        self.done_cb = self._done
        for name in ("reg_started", "reg_ok"):
            stats.counters.setdefault(name, 0)

    def contact_port(self, user: User) -> int:
        return self.uas_port if id(user) in self.callee_set else self.uac_port

    def prepare(self, now: float) -> bool:
        if self.prep_t0 < 0:
            self.prep_t0 = now
        due = min(len(self.everyone), int((now - self.prep_t0) * PREPARE_RATE) + 1)
        while self.prep_i < due:
            u = self.everyone[self.prep_i]
            self.prep_i += 1
            self.setup_reg.register(u, 0, now, self.cleared_cb, clear=True)
        return self.prep_i >= len(self.everyone) and self.setup_reg.open == 0

    def begin(self, now: float) -> None:
        rnd = random.Random()
        for u in self.everyone:
            self.loop.timers.at(now + rnd.uniform(0, self.period), self.again_cb, u)

    def _again(self, user: User, gen: int, now: float) -> None:
        if self.stopping:
            return
        self.stats.counters["reg_started"] += 1
        self.reg.register(user, self.contact_port(user), now, self.done_cb)

    def _done(self, reg: Reg, ok: bool, now: float) -> None:
        if ok:
            self.stats.counters["reg_ok"] += 1
        if not self.stopping:
            self.loop.timers.at(reg.t0 + self.period, self.again_cb, reg.user)

    def in_flight(self) -> int:
        return self.open + self.reg.open
