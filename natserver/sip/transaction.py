"""RFC 3261 transaction state machines (section 17, with RFC 6026's Accepted states),
sans-IO: one table, no sockets, no clock - ``now`` is always a parameter.

A proxy transaction is one server machine (the request that came in) plus one client
machine per branch (and one per CANCEL it sends). Each :class:`Machine` is a handful of
numbers that fit a shared-memory record: its kind, its state, a retransmission deadline
with its interval, and one "end" deadline with the timer it stands for. Nothing here
knows about messages; :mod:`natserver.modules.tm` feeds events in and carries out the
actions that come back.

The whole behaviour is :data:`TABLE`: ``(kind, state, event) -> Step(state, actions,
arm)``. A pair that is not in the table is ignored (the event is absorbed, nothing
changes) - e.g. a provisional reply after the final one.

Timers. Retransmissions (A for INVITE clients, E for non-INVITE clients, G for INVITE
servers resending a non-2xx final) start at T1 and double (E and G stop doubling at T2;
a non-INVITE client that got a provisional retransmits every T2). The "end" timer of a
state is the one that moves the machine on: B/F (no final reply in time), C (no final
reply after a provisional), D/K/M (client linger), H (no ACK), I/J/L (server linger).
natserver takes the durations of SER/Kamailio tm, configurable as tm modparams:

- B and F are ``fr_timer`` (30 s; RFC 3261: 64*T1 = 32 s);
- C is ``fr_inv_timer`` (120 s; RFC 3261: more than 3 min), restarted by each
  provisional reply as RFC 3261 16.6 asks;
- the linger states D, J, L and M last ``wt_timer`` (5 s) instead of 64*T1: a
  transaction leaves shared memory 5 s after its end, as in SER/Kamailio. Late 2xx
  retransmissions are still relayed afterwards, statelessly, by the core;
- H is 64*T1, I and K are T4.

After Timer C an INVITE branch stays in Proceeding waiting for the 487 its CANCEL asks
for; that wait is armed as Timer B (``fr_timer``) and ends the branch if nothing comes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


class Kind(enum.IntEnum):
    """IST/NIST: INVITE/non-INVITE server; ICT/NICT: INVITE/non-INVITE client."""

    IST = 1
    NIST = 2
    ICT = 3
    NICT = 4


class State(enum.IntEnum):
    NONE = 0
    TRYING = 1
    CALLING = 2
    PROCEEDING = 3
    COMPLETED = 4
    CONFIRMED = 5
    ACCEPTED = 6
    TERMINATED = 7


class Event(enum.IntEnum):
    NONE = 0
    START = 1          # the machine is created
    # server side: the request again, what the TU sends, the ACK
    REQUEST = 2        # a retransmission of the request
    SEND_1XX = 3
    SEND_2XX = 4
    SEND_FINAL = 5     # 300-699
    ACK = 6
    # client side: what comes back
    RECV_1XX = 7
    RECV_2XX = 8
    RECV_FINAL = 9     # 300-699
    # timers
    TIMER_A = 10
    TIMER_B = 11
    TIMER_C = 12
    TIMER_D = 13
    TIMER_E = 14
    TIMER_F = 15
    TIMER_G = 16
    TIMER_H = 17
    TIMER_I = 18
    TIMER_J = 19
    TIMER_K = 20
    TIMER_L = 21
    TIMER_M = 22


class Action(enum.IntFlag):
    """What the caller must do after a step (retransmission timing is already done)."""

    NONE = 0
    SEND_REPLY = 1        # server: transmit the reply the TU handed in
    RESEND_REPLY = 2      # server: retransmit the last reply sent
    RESEND_REQUEST = 4    # client: retransmit the request
    PASS_UP = 8           # client: give the reply to the TU; server: give it the ACK
    SEND_ACK = 16         # client: ACK the non-2xx final reply (hop by hop)
    TIMEOUT = 32          # tell the TU that this machine timed out
    # timing, carried out by Machine.handle
    START_RETRANSMIT = 64   # interval T1
    BACKOFF = 128           # double the interval (capped at T2 except for Timer A)
    SLOW_RETRANSMIT = 256   # interval T2
    STOP_RETRANSMIT = 512


A = Action
E = Event
K = Kind
S = State


class Step(NamedTuple):
    state: State
    actions: Action = Action.NONE
    arm: Event = Event.NONE   # the end timer to start (its deadline replaces the old one)


# Which timer a retransmission deadline stands for, per kind.
RETRANSMIT_TIMER = {K.ICT: E.TIMER_A, K.NICT: E.TIMER_E, K.IST: E.TIMER_G, K.NIST: E.NONE}
# Timers whose interval stops doubling at T2.
_CAPPED = frozenset((K.NICT, K.IST))

_ICT_FINAL = Step(S.COMPLETED, A.PASS_UP | A.SEND_ACK | A.STOP_RETRANSMIT, E.TIMER_D)
_ICT_2XX = Step(S.ACCEPTED, A.PASS_UP | A.STOP_RETRANSMIT, E.TIMER_M)
_NICT_FINAL = Step(S.COMPLETED, A.PASS_UP | A.STOP_RETRANSMIT, E.TIMER_K)
_NIST_FINAL = Step(S.COMPLETED, A.SEND_REPLY, E.TIMER_J)

TABLE: dict[tuple[Kind, State, Event], Step] = {
    # ---- INVITE server (17.2.1 + RFC 6026); created in Proceeding (100 sent by the TU)
    (K.IST, S.NONE, E.START): Step(S.PROCEEDING),
    (K.IST, S.PROCEEDING, E.REQUEST): Step(S.PROCEEDING, A.RESEND_REPLY),
    (K.IST, S.PROCEEDING, E.SEND_1XX): Step(S.PROCEEDING, A.SEND_REPLY),
    (K.IST, S.PROCEEDING, E.SEND_2XX): Step(S.ACCEPTED, A.SEND_REPLY, E.TIMER_L),
    (K.IST, S.PROCEEDING, E.SEND_FINAL):
        Step(S.COMPLETED, A.SEND_REPLY | A.START_RETRANSMIT, E.TIMER_H),
    (K.IST, S.COMPLETED, E.REQUEST): Step(S.COMPLETED, A.RESEND_REPLY),
    (K.IST, S.COMPLETED, E.TIMER_G): Step(S.COMPLETED, A.RESEND_REPLY | A.BACKOFF),
    (K.IST, S.COMPLETED, E.ACK): Step(S.CONFIRMED, A.STOP_RETRANSMIT, E.TIMER_I),
    (K.IST, S.COMPLETED, E.TIMER_H): Step(S.TERMINATED, A.TIMEOUT | A.STOP_RETRANSMIT),
    # a proxy relays every 2xx of a forked INVITE, even after another branch's final
    (K.IST, S.COMPLETED, E.SEND_2XX): Step(S.COMPLETED, A.SEND_REPLY),
    (K.IST, S.CONFIRMED, E.SEND_2XX): Step(S.CONFIRMED, A.SEND_REPLY),
    (K.IST, S.CONFIRMED, E.TIMER_I): Step(S.TERMINATED),
    (K.IST, S.ACCEPTED, E.SEND_2XX): Step(S.ACCEPTED, A.SEND_REPLY),
    (K.IST, S.ACCEPTED, E.ACK): Step(S.ACCEPTED, A.PASS_UP),
    (K.IST, S.ACCEPTED, E.TIMER_L): Step(S.TERMINATED),
    (K.IST, S.TERMINATED, E.SEND_2XX): Step(S.TERMINATED, A.SEND_REPLY),

    # ---- non-INVITE server (17.2.2)
    (K.NIST, S.NONE, E.START): Step(S.TRYING),
    (K.NIST, S.TRYING, E.SEND_1XX): Step(S.PROCEEDING, A.SEND_REPLY),
    (K.NIST, S.TRYING, E.SEND_2XX): _NIST_FINAL,
    (K.NIST, S.TRYING, E.SEND_FINAL): _NIST_FINAL,
    (K.NIST, S.PROCEEDING, E.REQUEST): Step(S.PROCEEDING, A.RESEND_REPLY),
    (K.NIST, S.PROCEEDING, E.SEND_1XX): Step(S.PROCEEDING, A.SEND_REPLY),
    (K.NIST, S.PROCEEDING, E.SEND_2XX): _NIST_FINAL,
    (K.NIST, S.PROCEEDING, E.SEND_FINAL): _NIST_FINAL,
    (K.NIST, S.COMPLETED, E.REQUEST): Step(S.COMPLETED, A.RESEND_REPLY),
    (K.NIST, S.COMPLETED, E.TIMER_J): Step(S.TERMINATED),

    # ---- INVITE client (17.1.1 + RFC 6026; Timer C from 16.6/16.8)
    (K.ICT, S.NONE, E.START): Step(S.CALLING, A.START_RETRANSMIT, E.TIMER_B),
    (K.ICT, S.CALLING, E.TIMER_A): Step(S.CALLING, A.RESEND_REQUEST | A.BACKOFF),
    (K.ICT, S.CALLING, E.TIMER_B): Step(S.TERMINATED, A.TIMEOUT | A.STOP_RETRANSMIT),
    (K.ICT, S.CALLING, E.RECV_1XX):
        Step(S.PROCEEDING, A.PASS_UP | A.STOP_RETRANSMIT, E.TIMER_C),
    (K.ICT, S.CALLING, E.RECV_2XX): _ICT_2XX,
    (K.ICT, S.CALLING, E.RECV_FINAL): _ICT_FINAL,
    (K.ICT, S.PROCEEDING, E.RECV_1XX): Step(S.PROCEEDING, A.PASS_UP, E.TIMER_C),
    (K.ICT, S.PROCEEDING, E.RECV_2XX): _ICT_2XX,
    (K.ICT, S.PROCEEDING, E.RECV_FINAL): _ICT_FINAL,
    # Timer C: the TU cancels the branch and gives it a 408; wait fr_timer for the 487
    (K.ICT, S.PROCEEDING, E.TIMER_C): Step(S.PROCEEDING, A.TIMEOUT, E.TIMER_B),
    (K.ICT, S.PROCEEDING, E.TIMER_B): Step(S.TERMINATED),
    (K.ICT, S.COMPLETED, E.RECV_FINAL): Step(S.COMPLETED, A.SEND_ACK),
    (K.ICT, S.COMPLETED, E.TIMER_D): Step(S.TERMINATED),
    (K.ICT, S.ACCEPTED, E.RECV_2XX): Step(S.ACCEPTED, A.PASS_UP),
    (K.ICT, S.ACCEPTED, E.TIMER_M): Step(S.TERMINATED),
    # a branch that timed out still relays a late 2xx and ACKs a late final
    (K.ICT, S.TERMINATED, E.RECV_2XX): Step(S.TERMINATED, A.PASS_UP),
    (K.ICT, S.TERMINATED, E.RECV_FINAL): Step(S.TERMINATED, A.SEND_ACK),

    # ---- non-INVITE client (17.1.2); also every CANCEL natserver sends
    (K.NICT, S.NONE, E.START): Step(S.TRYING, A.START_RETRANSMIT, E.TIMER_F),
    (K.NICT, S.TRYING, E.TIMER_E): Step(S.TRYING, A.RESEND_REQUEST | A.BACKOFF),
    (K.NICT, S.TRYING, E.TIMER_F): Step(S.TERMINATED, A.TIMEOUT | A.STOP_RETRANSMIT),
    (K.NICT, S.TRYING, E.RECV_1XX): Step(S.PROCEEDING, A.PASS_UP | A.SLOW_RETRANSMIT),
    (K.NICT, S.TRYING, E.RECV_2XX): _NICT_FINAL,
    (K.NICT, S.TRYING, E.RECV_FINAL): _NICT_FINAL,
    (K.NICT, S.PROCEEDING, E.TIMER_E): Step(S.PROCEEDING, A.RESEND_REQUEST | A.SLOW_RETRANSMIT),
    (K.NICT, S.PROCEEDING, E.TIMER_F): Step(S.TERMINATED, A.TIMEOUT | A.STOP_RETRANSMIT),
    (K.NICT, S.PROCEEDING, E.RECV_1XX): Step(S.PROCEEDING, A.PASS_UP),
    (K.NICT, S.PROCEEDING, E.RECV_2XX): _NICT_FINAL,
    (K.NICT, S.PROCEEDING, E.RECV_FINAL): _NICT_FINAL,
    (K.NICT, S.COMPLETED, E.TIMER_K): Step(S.TERMINATED),
}


@dataclass(frozen=True, slots=True)
class Timers:
    """Timer values in seconds (tm modparams; see the module docstring)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    fr: float = 30.0       # fr_timer: B, F
    fr_inv: float = 120.0  # fr_inv_timer: C
    wait: float = 5.0      # wt_timer: D, J, L, M

    def duration(self, timer: Event) -> float:
        """How long the end timer ``timer`` runs."""
        if timer in (E.TIMER_B, E.TIMER_F):
            return self.fr
        if timer is E.TIMER_C:
            return self.fr_inv
        if timer is E.TIMER_H:
            return 64 * self.t1
        if timer in (E.TIMER_I, E.TIMER_K):
            return self.t4
        if timer in (E.TIMER_D, E.TIMER_J, E.TIMER_L, E.TIMER_M):
            return self.wait
        raise ValueError(f"{timer!r} is not an end timer")


def step(kind: Kind, state: State, event: Event) -> Step | None:
    """The table entry, or None when the event does not apply (ignore it)."""
    return TABLE.get((kind, state, event))


# The table as the hot path reads it: the actions as a plain int (IntFlag arithmetic
# costs a Python call per operation) and the retransmission timing decided once.
_R_KEEP, _R_START, _R_BACKOFF, _R_SLOW, _R_STOP = range(5)


def _timing(acts: Action) -> int:
    if acts & A.START_RETRANSMIT:
        return _R_START
    if acts & A.BACKOFF:
        return _R_BACKOFF
    if acts & A.SLOW_RETRANSMIT:
        return _R_SLOW
    if acts & A.STOP_RETRANSMIT:
        return _R_STOP
    return _R_KEEP


_FAST: dict[tuple[Kind, State, Event], tuple[State, int, int, Event]] = {
    key: (entry.state, int(entry.actions), _timing(entry.actions), entry.arm)
    for key, entry in TABLE.items()
}
# Stored numbers back to members without an Enum call (about 1 us each).
_KIND_OF = {int(k): k for k in Kind}
_STATE_OF = tuple(State)
_EVENT_OF = tuple(Event)
_TERMINATED = S.TERMINATED


class Machine:
    """One transaction machine as it is kept in a shared record: kind, state, the
    retransmission deadline (0 = none) with its interval, the end deadline (0 = none)
    with the timer it stands for. ``as_tuple``/``from_tuple`` are the stored form."""

    __slots__ = ("kind", "state", "retr_due", "retr_ival", "end_due", "end_timer")

    def __init__(self, kind: Kind, state: State = S.NONE, retr_due: float = 0.0,
                 retr_ival: float = 0.0, end_due: float = 0.0,
                 end_timer: Event = E.NONE) -> None:
        self.kind = kind
        self.state = state
        self.retr_due = retr_due
        self.retr_ival = retr_ival
        self.end_due = end_due
        self.end_timer = end_timer

    @classmethod
    def start(cls, kind: Kind, now: float, timers: Timers) -> Machine:
        """A new machine in its initial state, its first timers running."""
        machine = cls(kind)
        machine.handle(E.START, now, timers)
        return machine

    @classmethod
    def from_tuple(cls, t: tuple | list) -> Machine:
        return cls(_KIND_OF[t[0]], _STATE_OF[t[1]], t[2], t[3], t[4], _EVENT_OF[t[5]])

    def as_tuple(self) -> tuple:
        return (self.kind.value, self.state.value, self.retr_due, self.retr_ival,
                self.end_due, self.end_timer.value)

    def __repr__(self) -> str:
        return (f"Machine({self.kind.name} {self.state.name} retr={self.retr_due:.3f}/"
                f"{self.retr_ival:g} end={self.end_timer.name}@{self.end_due:.3f})")

    @property
    def terminated(self) -> bool:
        return self.state is _TERMINATED

    def handle(self, event: Event, now: float, timers: Timers) -> int:
        """Apply ``event``: new state, timers re-armed. Returns the :class:`Action` flags
        for the caller as a plain int (0: the event did not apply)."""
        entry = _FAST.get((self.kind, self.state, event))
        if entry is None:
            return 0
        state, acts, timing, arm = entry
        self.state = state
        if timing:
            if timing == _R_START:
                self.retr_ival = timers.t1
                self.retr_due = now + timers.t1
            elif timing == _R_BACKOFF:
                ival = self.retr_ival * 2 or timers.t1
                if self.kind in _CAPPED and ival > timers.t2:
                    ival = timers.t2
                self.retr_ival = ival
                self.retr_due = now + ival
            elif timing == _R_SLOW:
                self.retr_ival = timers.t2
                self.retr_due = now + timers.t2
            else:
                self.retr_due = 0.0
        if arm:
            self.end_timer = arm
            self.end_due = now + timers.duration(arm)
        if state is _TERMINATED:
            self.retr_due = 0.0
            self.end_due = 0.0
            self.end_timer = E.NONE
        return acts

    def due(self) -> float:
        """The earliest deadline, 0.0 when no timer runs."""
        r, e = self.retr_due, self.end_due
        if r and (not e or r < e):
            return r
        return e

    def expired(self, now: float) -> Event:
        """The timer event that is due at ``now`` (retransmission first), or NONE."""
        if self.retr_due and self.retr_due <= now and RETRANSMIT_TIMER[self.kind]:
            return RETRANSMIT_TIMER[self.kind]
        if self.end_due and self.end_due <= now:
            return self.end_timer
        return E.NONE

    def fire(self, now: float, timers: Timers) -> tuple[Event, int]:
        """Handle the timer due at ``now``; ``(event, actions)``, NONE when none is. A
        deadline the current state has no row for is dropped, so it cannot fire again
        and again."""
        if self.retr_due and self.retr_due <= now:
            event = RETRANSMIT_TIMER[self.kind]
            acts = self.handle(event, now, timers) if event else 0
            if not acts:
                self.retr_due = 0.0
            if event:
                return event, acts
        if self.end_due and self.end_due <= now:
            event = self.end_timer
            acts = self.handle(event, now, timers)
            if self.end_timer is event and self.end_due and self.end_due <= now:
                self.end_due = 0.0
                self.end_timer = E.NONE
            return event, acts
        return E.NONE, 0
