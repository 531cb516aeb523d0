"""The event loop's parts: timers, rate control, client transactions (retransmission and
timeout on real UDP sockets, against the test responder)."""

from __future__ import annotations

import math
import time

import pytest

from loadtest.engine import RESOLUTION, Loop, RateControl, Timers, Transactions, udp_socket
from loadtest.stats import Stats
from tests.loadtest.responder import Responder


def test_timers_fire_in_order_never_early():
    timers = Timers()
    fired: list[tuple[str, float]] = []
    t0 = 1000.0
    for name, delay in (("c", 0.03), ("a", 0.01), ("b", 0.02), ("a2", 0.01)):
        timers.at(t0 + delay, lambda arg, gen, now: fired.append((arg, now)), name)
    assert timers.run(t0) == pytest.approx(t0 + 0.01, abs=2 * RESOLUTION)
    timers.run(t0 + 0.0099)
    assert fired == []
    timers.run(t0 + 0.01 + 2 * RESOLUTION)
    assert [f[0] for f in fired] == ["a", "a2"]
    nxt = timers.run(t0 + 0.1)
    assert [f[0] for f in fired] == ["a", "a2", "b", "c"] and nxt is None
    assert all(now >= t0 + 0.01 for _, now in fired)


def test_rate_control_steady_ramp_and_limits():
    rc = RateControl(rate=100, t0=0.0, duration=10)
    assert rc.due(0.5) == 50
    rc.started = 50
    assert rc.next_at() == pytest.approx(0.51)
    assert not rc.done(9.99) and rc.done(10.0)
    # a linear ramp over 2 s: 100 units by t=2 (area of the triangle), then 100/s
    ramp = RateControl(rate=100, ramp=2.0, t0=0.0)
    assert ramp.expected(1.0) == pytest.approx(25)
    assert ramp.expected(2.0) == pytest.approx(100)
    assert ramp.expected(3.0) == pytest.approx(200)
    ramp.started = 25
    assert ramp.next_at() == pytest.approx(math.sqrt(2 * 2.0 * 26 / 100))
    capped = RateControl(rate=100, t0=0.0, max_count=30)
    n = capped.due(5.0)
    assert n == 30                     # backlog cap (0.5 s = 50) and max both hold
    capped.started = n
    assert capped.done(5.0)
    behind = RateControl(rate=1000, t0=0.0)
    assert behind.due(10.0) == 500 and behind.skipped == 9500


def _drive(loop: Loop, until, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    loop.run(lambda now: -1.0 if until() or now > deadline else now + 0.01)


def _options(key: bytes, port: int) -> bytes:
    return (b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK%s\r\n"
            b"From: <sip:a@x>;tag=1\r\nTo: <sip:x>\r\nCall-ID: %s\r\nCSeq: 1 OPTIONS\r\n"
            b"Content-Length: 0\r\n\r\n" % (port, key, key))


def test_transaction_retransmits_per_t1_until_answered():
    with Responder(drop_first=2) as resp:
        loop, stats = Loop(), Stats()
        tx = Transactions(loop, stats, t1=0.05, t2=0.4, timeout=2.0)
        sock = udp_socket("127.0.0.1", 0, resp.addr)
        loop.add_reader(sock, lambda buf, addr, now: tx.on_response(buf, now), True)
        got: list[tuple[int, float]] = []
        key = b"0123456789abcdef"
        t0 = time.monotonic()
        tx.send(sock, None, key, _options(key, sock.getsockname()[1]), b"OPTIONS",
                lambda t, status, buf, now: got.append((status, now - t0)), None, t0)
        _drive(loop, lambda: bool(got))
        loop.close()
    assert [g[0] for g in got] == [200]
    # sent at 0, T1 (0.05) and 3*T1 (0.15): answered after the second retransmission
    assert got[0][1] >= 0.15
    tx.sync()
    assert stats.counters["retransmissions"] == 2 == stats.counters["retransmissions_OPTIONS"]
    assert stats.counters["sent_OPTIONS"] == 3 == resp.received["OPTIONS"]
    assert stats.counters["responses_200"] == 1 and tx.in_flight() == 0


def test_transaction_times_out_with_status_zero():
    with Responder(silent_every=1) as resp:
        loop, stats = Loop(), Stats()
        tx = Transactions(loop, stats, t1=0.05, t2=0.1, timeout=0.4)
        sock = udp_socket("127.0.0.1", 0, resp.addr)
        loop.add_reader(sock, lambda buf, addr, now: tx.on_response(buf, now), True)
        got: list[int] = []
        key = b"fedcba9876543210"
        t0 = time.monotonic()
        tx.send(sock, None, key, _options(key, sock.getsockname()[1]), b"OPTIONS",
                lambda t, status, buf, now: got.append(status), None, t0)
        _drive(loop, lambda: bool(got))
        elapsed = time.monotonic() - t0
        resp.drain(0.1)
        loop.close()
    assert got == [0]
    assert 0.4 <= elapsed < 2.0
    # non-INVITE: T1 doubling capped at T2 - at 0.05, 0.15, 0.25, 0.35 s (a busy machine
    # may delay the last one past the 0.4 s deadline)
    tx.sync()
    assert 4 <= resp.received["OPTIONS"] <= 5
    assert stats.counters["retransmissions"] == resp.received["OPTIONS"] - 1


def test_max_rate_search_brackets_the_knee():
    """The search logic alone, over a server model whose failures start at 1234/s: a
    deterministic stand-in for runs that take minutes on a real server."""
    from loadtest.procs import search_max_rate
    from loadtest.scenarios.common import Settings

    def model(cfg: Settings, procs: int) -> Stats:
        stats = Stats(primary="x")
        n = int(cfg.rate * cfg.duration)
        stats.counters.update(started=n, ok=n)
        if cfg.rate > 1234:
            stats.fail("timeout", n // 10)
        stats.hist("x").record(0.001)
        return stats

    best, trials = search_max_rate(Settings(rate=100, duration=2), 1, pause=0, runner=model,
                                   steps=10, confirm=1)
    assert 1234 / 1.03 <= best <= 1234
    # 1600 failed twice (the confirmation) before the bisection started
    assert [t.rate for t in trials[:6]] == [100, 200, 400, 800, 1600, 1600]
    assert trials[4].causes == {"timeout": 320}
    assert all(t.failure_ratio == 0 for t in trials if t.rate <= 1234)
    assert all(t.failure_ratio > 0.01 for t in trials if t.rate > 1234)


def test_max_rate_search_retries_a_failed_trial_once():
    from loadtest.procs import search_max_rate
    from loadtest.scenarios.common import Settings
    runs: list[float] = []

    def hiccup_at_400(cfg: Settings, procs: int) -> Stats:
        runs.append(cfg.rate)
        stats = Stats(primary="x")
        n = int(cfg.rate * cfg.duration)
        stats.counters.update(started=n, ok=n)
        first_400 = cfg.rate == 400 and runs.count(400) == 1
        if cfg.rate > 1000 or first_400:
            stats.fail("timeout", n // 2)
        return stats

    best, _ = search_max_rate(Settings(rate=100, duration=1), 1, pause=0, runner=hiccup_at_400,
                              steps=10, confirm=1)
    assert runs[:4] == [100, 200, 400, 400]
    assert 1000 / 1.03 <= best <= 1000
