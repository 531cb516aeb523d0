"""The sans-IO transaction machines (RFC 3261 17, RFC 6026): every row of the table,
the timer arithmetic, and whole exchanges driven with a hand-moved clock."""

from __future__ import annotations

import pytest

from natserver.sip.transaction import (
    RETRANSMIT_TIMER, TABLE, Action, Event, Kind, Machine, State, Step, Timers, step,
)

A = Action
E = Event
K = Kind
S = State
T = Timers(t1=0.5, t2=4.0, t4=5.0, fr=30.0, fr_inv=120.0, wait=5.0)


def started(kind: Kind, now: float = 100.0) -> Machine:
    return Machine.start(kind, now, T)


# ---- the table itself ---------------------------------------------------------------

# (kind, state, event) -> (state, actions that must be set, timer armed). Every row of
# TABLE is listed here, so a change to the table must change this list too.
EXPECTED = {
    (K.IST, S.NONE, E.START): (S.PROCEEDING, A.NONE, E.NONE),
    (K.IST, S.PROCEEDING, E.REQUEST): (S.PROCEEDING, A.RESEND_REPLY, E.NONE),
    (K.IST, S.PROCEEDING, E.SEND_1XX): (S.PROCEEDING, A.SEND_REPLY, E.NONE),
    (K.IST, S.PROCEEDING, E.SEND_2XX): (S.ACCEPTED, A.SEND_REPLY, E.TIMER_L),
    (K.IST, S.PROCEEDING, E.SEND_FINAL):
        (S.COMPLETED, A.SEND_REPLY | A.START_RETRANSMIT, E.TIMER_H),
    (K.IST, S.COMPLETED, E.REQUEST): (S.COMPLETED, A.RESEND_REPLY, E.NONE),
    (K.IST, S.COMPLETED, E.TIMER_G): (S.COMPLETED, A.RESEND_REPLY | A.BACKOFF, E.NONE),
    (K.IST, S.COMPLETED, E.ACK): (S.CONFIRMED, A.STOP_RETRANSMIT, E.TIMER_I),
    (K.IST, S.COMPLETED, E.TIMER_H): (S.TERMINATED, A.TIMEOUT | A.STOP_RETRANSMIT, E.NONE),
    (K.IST, S.COMPLETED, E.SEND_2XX): (S.COMPLETED, A.SEND_REPLY, E.NONE),
    (K.IST, S.CONFIRMED, E.SEND_2XX): (S.CONFIRMED, A.SEND_REPLY, E.NONE),
    (K.IST, S.CONFIRMED, E.TIMER_I): (S.TERMINATED, A.NONE, E.NONE),
    (K.IST, S.ACCEPTED, E.SEND_2XX): (S.ACCEPTED, A.SEND_REPLY, E.NONE),
    (K.IST, S.ACCEPTED, E.ACK): (S.ACCEPTED, A.PASS_UP, E.NONE),
    (K.IST, S.ACCEPTED, E.TIMER_L): (S.TERMINATED, A.NONE, E.NONE),
    (K.IST, S.TERMINATED, E.SEND_2XX): (S.TERMINATED, A.SEND_REPLY, E.NONE),
    (K.NIST, S.NONE, E.START): (S.TRYING, A.NONE, E.NONE),
    (K.NIST, S.TRYING, E.SEND_1XX): (S.PROCEEDING, A.SEND_REPLY, E.NONE),
    (K.NIST, S.TRYING, E.SEND_2XX): (S.COMPLETED, A.SEND_REPLY, E.TIMER_J),
    (K.NIST, S.TRYING, E.SEND_FINAL): (S.COMPLETED, A.SEND_REPLY, E.TIMER_J),
    (K.NIST, S.PROCEEDING, E.REQUEST): (S.PROCEEDING, A.RESEND_REPLY, E.NONE),
    (K.NIST, S.PROCEEDING, E.SEND_1XX): (S.PROCEEDING, A.SEND_REPLY, E.NONE),
    (K.NIST, S.PROCEEDING, E.SEND_2XX): (S.COMPLETED, A.SEND_REPLY, E.TIMER_J),
    (K.NIST, S.PROCEEDING, E.SEND_FINAL): (S.COMPLETED, A.SEND_REPLY, E.TIMER_J),
    (K.NIST, S.COMPLETED, E.REQUEST): (S.COMPLETED, A.RESEND_REPLY, E.NONE),
    (K.NIST, S.COMPLETED, E.TIMER_J): (S.TERMINATED, A.NONE, E.NONE),
    (K.ICT, S.NONE, E.START): (S.CALLING, A.START_RETRANSMIT, E.TIMER_B),
    (K.ICT, S.CALLING, E.TIMER_A): (S.CALLING, A.RESEND_REQUEST | A.BACKOFF, E.NONE),
    (K.ICT, S.CALLING, E.TIMER_B): (S.TERMINATED, A.TIMEOUT | A.STOP_RETRANSMIT, E.NONE),
    (K.ICT, S.CALLING, E.RECV_1XX):
        (S.PROCEEDING, A.PASS_UP | A.STOP_RETRANSMIT, E.TIMER_C),
    (K.ICT, S.CALLING, E.RECV_2XX): (S.ACCEPTED, A.PASS_UP | A.STOP_RETRANSMIT, E.TIMER_M),
    (K.ICT, S.CALLING, E.RECV_FINAL):
        (S.COMPLETED, A.PASS_UP | A.SEND_ACK | A.STOP_RETRANSMIT, E.TIMER_D),
    (K.ICT, S.PROCEEDING, E.RECV_1XX): (S.PROCEEDING, A.PASS_UP, E.TIMER_C),
    (K.ICT, S.PROCEEDING, E.RECV_2XX):
        (S.ACCEPTED, A.PASS_UP | A.STOP_RETRANSMIT, E.TIMER_M),
    (K.ICT, S.PROCEEDING, E.RECV_FINAL):
        (S.COMPLETED, A.PASS_UP | A.SEND_ACK | A.STOP_RETRANSMIT, E.TIMER_D),
    (K.ICT, S.PROCEEDING, E.TIMER_C): (S.PROCEEDING, A.TIMEOUT, E.TIMER_B),
    (K.ICT, S.PROCEEDING, E.TIMER_B): (S.TERMINATED, A.NONE, E.NONE),
    (K.ICT, S.COMPLETED, E.RECV_FINAL): (S.COMPLETED, A.SEND_ACK, E.NONE),
    (K.ICT, S.COMPLETED, E.TIMER_D): (S.TERMINATED, A.NONE, E.NONE),
    (K.ICT, S.ACCEPTED, E.RECV_2XX): (S.ACCEPTED, A.PASS_UP, E.NONE),
    (K.ICT, S.ACCEPTED, E.TIMER_M): (S.TERMINATED, A.NONE, E.NONE),
    (K.ICT, S.TERMINATED, E.RECV_2XX): (S.TERMINATED, A.PASS_UP, E.NONE),
    (K.ICT, S.TERMINATED, E.RECV_FINAL): (S.TERMINATED, A.SEND_ACK, E.NONE),
    (K.NICT, S.NONE, E.START): (S.TRYING, A.START_RETRANSMIT, E.TIMER_F),
    (K.NICT, S.TRYING, E.TIMER_E): (S.TRYING, A.RESEND_REQUEST | A.BACKOFF, E.NONE),
    (K.NICT, S.TRYING, E.TIMER_F): (S.TERMINATED, A.TIMEOUT | A.STOP_RETRANSMIT, E.NONE),
    (K.NICT, S.TRYING, E.RECV_1XX): (S.PROCEEDING, A.PASS_UP | A.SLOW_RETRANSMIT, E.NONE),
    (K.NICT, S.TRYING, E.RECV_2XX): (S.COMPLETED, A.PASS_UP | A.STOP_RETRANSMIT, E.TIMER_K),
    (K.NICT, S.TRYING, E.RECV_FINAL):
        (S.COMPLETED, A.PASS_UP | A.STOP_RETRANSMIT, E.TIMER_K),
    (K.NICT, S.PROCEEDING, E.TIMER_E):
        (S.PROCEEDING, A.RESEND_REQUEST | A.SLOW_RETRANSMIT, E.NONE),
    (K.NICT, S.PROCEEDING, E.TIMER_F):
        (S.TERMINATED, A.TIMEOUT | A.STOP_RETRANSMIT, E.NONE),
    (K.NICT, S.PROCEEDING, E.RECV_1XX): (S.PROCEEDING, A.PASS_UP, E.NONE),
    (K.NICT, S.PROCEEDING, E.RECV_2XX):
        (S.COMPLETED, A.PASS_UP | A.STOP_RETRANSMIT, E.TIMER_K),
    (K.NICT, S.PROCEEDING, E.RECV_FINAL):
        (S.COMPLETED, A.PASS_UP | A.STOP_RETRANSMIT, E.TIMER_K),
    (K.NICT, S.COMPLETED, E.TIMER_K): (S.TERMINATED, A.NONE, E.NONE),
}


def test_every_table_row_is_expected():
    assert set(TABLE) == set(EXPECTED)


@pytest.mark.parametrize("row", sorted(EXPECTED, key=lambda r: (r[0], r[1], r[2])),
                         ids=lambda r: f"{r[0].name}-{r[1].name}-{r[2].name}")
def test_table_row(row):
    state, actions, arm = EXPECTED[row]
    assert step(*row) == Step(state, actions, arm)


@pytest.mark.parametrize("row", sorted(EXPECTED, key=lambda r: (r[0], r[1], r[2])),
                         ids=lambda r: f"{r[0].name}-{r[1].name}-{r[2].name}")
def test_machine_applies_row(row):
    """Machine.handle moves to the row's state and runs its timers."""
    kind, state, event = row
    mach = Machine(kind, state, retr_due=50.0, retr_ival=1.0, end_due=90.0,
                   end_timer=E.TIMER_B)
    acts = mach.handle(event, 10.0, T)
    want_state, want_acts, arm = EXPECTED[row]
    assert mach.state is want_state and acts == want_acts
    if want_state is S.TERMINATED:
        assert (mach.retr_due, mach.end_due, mach.end_timer) == (0.0, 0.0, E.NONE)
        return
    if arm is not E.NONE:
        assert mach.end_timer is arm and mach.end_due == 10.0 + T.duration(arm)
    else:
        assert (mach.end_due, mach.end_timer) == (90.0, E.TIMER_B)
    if acts & A.START_RETRANSMIT:
        assert (mach.retr_due, mach.retr_ival) == (10.5, 0.5)
    elif acts & A.BACKOFF:
        assert (mach.retr_due, mach.retr_ival) == (12.0, 2.0)
    elif acts & A.SLOW_RETRANSMIT:
        assert (mach.retr_due, mach.retr_ival) == (14.0, 4.0)
    elif acts & A.STOP_RETRANSMIT:
        assert mach.retr_due == 0.0
    else:
        assert (mach.retr_due, mach.retr_ival) == (50.0, 1.0)


def test_unknown_pairs_are_ignored():
    mach = started(K.ICT)
    before = mach.as_tuple()
    assert mach.handle(E.ACK, 101.0, T) == A.NONE
    assert mach.as_tuple() == before
    assert step(K.NIST, S.COMPLETED, E.SEND_2XX) is None


def test_round_trip_through_a_record_tuple():
    mach = started(K.NICT)
    back = Machine.from_tuple(list(mach.as_tuple()))
    assert back.as_tuple() == mach.as_tuple()
    assert back.kind is K.NICT and back.state is S.TRYING and back.end_timer is E.TIMER_F
    assert "NICT TRYING" in repr(back)


def test_durations():
    assert T.duration(E.TIMER_B) == T.duration(E.TIMER_F) == 30.0
    assert T.duration(E.TIMER_C) == 120.0
    assert T.duration(E.TIMER_H) == 32.0
    assert T.duration(E.TIMER_I) == T.duration(E.TIMER_K) == 5.0
    for t in (E.TIMER_D, E.TIMER_J, E.TIMER_L, E.TIMER_M):
        assert T.duration(t) == 5.0
    with pytest.raises(ValueError):
        T.duration(E.TIMER_A)


def test_retransmit_timer_letters():
    assert RETRANSMIT_TIMER[K.ICT] is E.TIMER_A
    assert RETRANSMIT_TIMER[K.NICT] is E.TIMER_E
    assert RETRANSMIT_TIMER[K.IST] is E.TIMER_G


# ---- timers over time -----------------------------------------------------------------

def run_until(mach: Machine, until: float) -> list[tuple[float, Event, Action]]:
    """Fire every timer of ``mach`` in order until ``until``: (time, event, actions)."""
    fired = []
    while True:
        due = mach.due()
        if not due or due > until:
            return fired
        ev, acts = mach.fire(due, T)
        fired.append((round(due, 6), ev, acts))


def test_timer_a_doubles_without_cap_until_b():
    mach = started(K.ICT, 0.0)
    fired = run_until(mach, 40.0)
    retrans = [t for t, ev, _ in fired if ev is E.TIMER_A]
    assert retrans == [0.5, 1.5, 3.5, 7.5, 15.5]          # 0.5, 1, 2, 4, 8 s apart
    assert fired[-1][:2] == (30.0, E.TIMER_B)             # fr_timer
    assert fired[-1][2] & A.TIMEOUT
    assert mach.terminated and mach.due() == 0.0


def test_timer_e_caps_at_t2_and_f_ends():
    mach = started(K.NICT, 0.0)
    fired = run_until(mach, 31.0)
    retrans = [t for t, ev, _ in fired if ev is E.TIMER_E]
    assert retrans[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # 0.5 1 2 4 4 4
    assert fired[-1][1] is E.TIMER_F and mach.terminated


def test_nict_provisional_switches_to_t2():
    mach = started(K.NICT, 0.0)
    mach.handle(E.RECV_1XX, 0.2, T)
    assert mach.state is S.PROCEEDING and mach.retr_due == pytest.approx(4.2)
    fired = run_until(mach, 13.0)
    assert [t for t, ev, _ in fired] == [4.2, 8.2, 12.2]
    assert all(acts & A.RESEND_REQUEST for _, _, acts in fired)


def test_timer_g_retransmits_final_until_ack():
    mach = started(K.IST, 0.0)
    assert mach.handle(E.SEND_FINAL, 0.0, T) & A.SEND_REPLY
    fired = run_until(mach, 8.0)
    assert [t for t, ev, _ in fired] == [0.5, 1.5, 3.5, 7.5]   # capped at T2 after that
    assert mach.handle(E.ACK, 8.0, T) & A.STOP_RETRANSMIT
    assert mach.state is S.CONFIRMED and mach.retr_due == 0.0
    assert mach.due() == 13.0  # Timer I = T4
    run_until(mach, 13.0)
    assert mach.terminated


def test_timer_h_without_ack():
    mach = started(K.IST, 0.0)
    mach.handle(E.SEND_FINAL, 0.0, T)
    fired = run_until(mach, 40.0)
    assert fired[-1][1] is E.TIMER_H and fired[-1][0] == 32.0
    assert fired[-1][2] & A.TIMEOUT
    gs = [t for t, ev, _ in fired if ev is E.TIMER_G]
    assert gs[-1] < 32.0 and all(b - a <= 4.0 + 1e-9 for a, b in zip(gs, gs[1:]))


def test_timer_c_then_wait_for_the_final():
    mach = started(K.ICT, 0.0)
    mach.handle(E.RECV_1XX, 1.0, T)
    assert (mach.end_timer, mach.end_due) == (E.TIMER_C, 121.0)
    mach.handle(E.RECV_1XX, 50.0, T)              # each provisional restarts C
    assert mach.end_due == 170.0
    ev, acts = mach.fire(170.0, T)
    assert ev is E.TIMER_C and acts & A.TIMEOUT and mach.state is S.PROCEEDING
    assert (mach.end_timer, mach.end_due) == (E.TIMER_B, 200.0)
    assert mach.handle(E.RECV_FINAL, 171.0, T) & A.SEND_ACK   # the 487 after the CANCEL
    assert mach.state is S.COMPLETED


def test_linger_states_end():
    for kind, event, timer in ((K.ICT, E.RECV_FINAL, E.TIMER_D),
                               (K.ICT, E.RECV_2XX, E.TIMER_M),
                               (K.NICT, E.RECV_2XX, E.TIMER_K)):
        mach = started(kind, 0.0)
        mach.handle(event, 1.0, T)
        assert mach.end_timer is timer and mach.retr_due == 0.0
        ev, _ = mach.fire(mach.end_due, T)
        assert ev is timer and mach.terminated
    for event, timer in ((E.SEND_2XX, E.TIMER_L),):
        mach = started(K.IST, 0.0)
        mach.handle(event, 1.0, T)
        assert mach.fire(mach.end_due, T)[0] is timer and mach.terminated
    mach = started(K.NIST, 0.0)
    mach.handle(E.SEND_FINAL, 1.0, T)
    assert mach.fire(6.0, T)[0] is E.TIMER_J and mach.terminated


def test_expired_and_fire_when_nothing_is_due():
    mach = started(K.ICT, 0.0)
    assert mach.expired(0.4) is E.NONE
    assert mach.fire(0.4, T) == (E.NONE, A.NONE)
    assert mach.expired(0.5) is E.TIMER_A


def test_stale_deadline_is_cleared_by_fire():
    """A deadline the state does not handle (a record written by an older version, a
    hand-made machine) fires once and is dropped instead of firing forever."""
    mach = Machine(K.NIST, S.TRYING, retr_due=1.0, retr_ival=0.5, end_due=2.0,
                   end_timer=E.TIMER_B)
    assert mach.fire(5.0, T) == (E.TIMER_B, A.NONE)  # NIST has no retransmission timer
    assert mach.due() == 0.0 and mach.state is S.TRYING
    assert mach.fire(5.0, T) == (E.NONE, A.NONE)


def test_due_is_the_earliest_deadline():
    mach = Machine(K.ICT, S.CALLING, retr_due=5.0, end_due=3.0, end_timer=E.TIMER_B)
    assert mach.due() == 3.0
    mach.retr_due = 0.0
    assert mach.due() == 3.0
    mach.end_due = 0.0
    assert mach.due() == 0.0


def test_invite_exchange_with_ack_for_a_486():
    """UAS side and UAC side of one rejected call, both machines driven together."""
    server = started(K.IST, 0.0)
    client = started(K.ICT, 0.0)
    assert client.handle(E.RECV_1XX, 0.1, T) & A.PASS_UP
    assert server.handle(E.SEND_1XX, 0.1, T) & A.SEND_REPLY
    acts = client.handle(E.RECV_FINAL, 2.0, T)
    assert acts & A.SEND_ACK and acts & A.PASS_UP
    assert server.handle(E.SEND_FINAL, 2.0, T) & A.SEND_REPLY
    assert client.handle(E.RECV_FINAL, 2.5, T) == A.SEND_ACK   # retransmitted 486
    assert server.handle(E.REQUEST, 2.6, T) == A.RESEND_REPLY
    assert server.handle(E.ACK, 3.0, T) == A.STOP_RETRANSMIT
    assert server.handle(E.ACK, 3.1, T) == A.NONE               # absorbed in Confirmed
