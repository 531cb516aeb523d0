"""Running a scenario: one process (``run_local``), several (``run_parallel``, one
shard of users and of the rate each), and the ``--max-rate`` search.

Children are forked after the parent parsed everything; each owns its sockets, users
and calls, prepares (the callees register), reports ready, and starts its load at the
moment the parent names - CLOCK_MONOTONIC is system-wide, so one number lines every
process up. Each child streams one JSON line per second (the live line and the
charts) and its full ``Stats`` at the end; the parent merges them.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import resource
import select
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

import orjson

from loadtest.engine import Loop, RateControl
from loadtest.scenarios import SCENARIOS
from loadtest.scenarios.common import Scenario, Settings, free_port_base, shard_of
from loadtest.stats import Stats

log = logging.getLogger("loadtest")

RowSink = Callable[[dict[str, Any]], None]
SERIES_KEYS = ("started", "ok", "reg_started", "reg_ok", "retransmissions", "sent",
               "received", "rtp_sent", "rtp_received")
START_DELAY = 0.2          # between "everyone is ready" and the first unit


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class SecondTicker:
    """Closes one row of ``stats.series`` per second of load."""

    def __init__(self, stats: Stats, scn: Scenario, loop: Loop, t0: float, sink: RowSink | None) -> None:
        self.stats = stats
        self.scn = scn
        self.loop = loop
        self.t0 = t0
        self.sink = sink
        self.k = 0
        # deltas start at the load phase: what the prepare phase did is not charted
        scn.sync()
        c = stats.counters
        self.last = {k: c.get(k, 0) for k in SERIES_KEYS}
        self.last_failed = stats.failed
        scn.window = {}
        loop.timers.at(t0 + 1, self.tick, None)

    def row(self) -> dict[str, Any]:
        self.scn.sync()
        c = self.stats.counters
        row: dict[str, Any] = {"t": self.k}
        for k in SERIES_KEYS:
            if k in c:
                row[k] = c[k] - self.last[k]
                self.last[k] = c[k]
        failed = self.stats.failed
        row["failed"] = failed - self.last_failed
        self.last_failed = failed
        row["up"] = self.scn.live()["up"]
        row["lat"] = self.scn.window
        self.scn.window = {}
        return row

    def tick(self, arg: None, gen: int, now: float) -> None:
        self.emit()
        self.loop.timers.at(self.t0 + self.k + 1, self.tick, None)

    def emit(self) -> None:
        row = self.row()
        self.k += 1
        self.stats.series.append(row)
        if self.sink is not None:
            self.sink(row)


def run_local(cfg: Settings, sink: RowSink | None = None,
              ready: Callable[[], float] | None = None) -> Stats:
    """Run ``cfg`` in this process. ``ready()`` (multi-process) reports the end of the
    prepare phase and returns the monotonic time at which the load starts."""
    stats = Stats(procs=1)
    loop = Loop()
    thresholds = gc.get_threshold()
    scn = SCENARIOS[cfg.scenario](cfg, loop, stats)
    try:
        deadline = time.monotonic() + cfg.prepare_timeout

        def prep(now: float) -> float:
            if scn.prepare(now):
                return -1.0
            if now > deadline:
                stats.fail("setup: prepare phase timed out")
                return -1.0
            return now + 0.005

        loop.run(prep)
        t0 = ready() if ready is not None else time.monotonic()
        loop.run(lambda now: -1.0 if now >= t0 else t0)
        # the hot objects (transactions, calls, timer entries) hold no reference cycles
        # and are freed by reference counting; the cyclic collector would only walk the
        # long-lived ones over and over (5-8% of the CPU per call, measured)
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)
        cpu0 = cpu_seconds()
        rc = RateControl(cfg.rate, cfg.ramp, cfg.duration, cfg.max_count, t0=t0)
        scn.begin(t0)
        ticker = SecondTicker(stats, scn, loop, t0, sink)
        start = scn.start

        def load(now: float) -> float:
            n = rc.due(now)
            if n:
                rc.started += n
                for _ in range(n):
                    start(now)
            if rc.done(now):
                return -1.0
            return rc.next_at()

        loop.run(load)
        stats.extra["load_seconds"] = time.monotonic() - t0
        scn.stopping = True
        drain = cfg.drain or (cfg.timeout + 1.0)
        drain_end = time.monotonic() + drain
        loop.run(lambda now: -1.0 if scn.in_flight() == 0 or now >= drain_end else now + 0.05)
        end = time.monotonic()
        if cfg.rtp:
            settle = end + 0.6
            loop.run(lambda now: -1.0 if now >= settle else settle)
        scn.finish(end)
        ticker.emit()
        scn.sync()
        stats.cpu = cpu_seconds() - cpu0
        stats.wall = end - t0
        stats.counters["skipped"] = rc.skipped
        stats.counters["send_errors"] = loop.send_errors
        stats.counters["handler_errors"] = loop.handler_errors
        stats.extra["target_rate"] = cfg.rate
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        scn.close()
    return stats


def shard_settings(cfg: Settings, i: int, n: int) -> Settings:
    users = shard_of(cfg.users, i, n)
    max_count = cfg.max_count // n + (1 if i < cfg.max_count % n else 0) if cfg.max_count else 0
    callees = 0
    if cfg.callees:
        callees = max(1, cfg.callees // n + (1 if i < cfg.callees % n else 0))
    return dataclasses.replace(cfg, users=users, rate=cfg.rate / n, max_count=max_count,
                               limit=(cfg.limit + n - 1) // n if cfg.limit else 0,
                               callees=callees, shard=i, shards=n,
                               local_port=cfg.local_port + 2 * i if cfg.local_port else 0)


class _Child:
    __slots__ = ("pid", "rfd", "wfd", "buf", "ready", "final", "error", "rows")

    def __init__(self, pid: int, rfd: int, wfd: int) -> None:
        self.pid = pid
        self.rfd = rfd
        self.wfd = wfd
        self.buf = b""
        self.ready = False
        self.final: Stats | None = None
        self.error = ""
        self.rows: dict[int, dict[str, Any]] = {}


def _child_main(cfg: Settings, up_w: int, down_r: int) -> None:
    def send(obj: Any) -> None:
        data = orjson.dumps(obj) + b"\n"
        while data:
            data = data[os.write(up_w, data):]

    def ready() -> float:
        send({"ready": True})
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(down_r, 64)
            if not chunk:
                raise SystemExit(1)
            line += chunk
        return float(line)

    def row_sink(row: dict[str, Any]) -> None:
        send({"row": {k: ({str(b): c for b, c in v.items()} if isinstance(v, dict) else v)
                      for k, v in row.items()}})

    try:
        stats = run_local(cfg, row_sink, ready)
        send({"final": stats.to_dict()})
    except Exception:  # noqa: BLE001 - reported to the parent, which fails the run
        send({"error": traceback.format_exc()})
        raise


def run_parallel(cfg: Settings, procs: int, sink: RowSink | None = None) -> Stats:
    """Run ``cfg`` over ``procs`` forked generator processes and merge what they saw."""
    if procs <= 1:
        return run_local(cfg, sink)
    children: list[_Child] = []
    for i in range(procs):
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(up_r)
            os.close(down_w)
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _child_main(shard_settings(cfg, i, procs), up_w, down_r)
            except BaseException:  # noqa: BLE001 - a child never returns into the parent
                code = 1
            finally:
                os._exit(code)
        os.close(up_w)
        os.close(down_r)
        children.append(_Child(pid, up_r, down_w))
    try:
        return _collect(children, cfg, sink)
    except BaseException:
        # a failed or interrupted run must not leave generators sending
        for ch in children:
            try:
                os.kill(ch.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        raise
    finally:
        for ch in children:
            for fd in (ch.rfd, ch.wfd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            try:
                os.waitpid(ch.pid, 0)
            except ChildProcessError:
                pass


def _collect(children: list[_Child], cfg: Settings, sink: RowSink | None) -> Stats:
    by_fd = {ch.rfd: ch for ch in children}
    open_fds = set(by_fd)
    started = False
    emitted = 0
    deadline_ready = time.monotonic() + cfg.prepare_timeout + 10
    while open_fds:
        readable, _, _ = select.select(list(open_fds), [], [], 1.0)
        if not started and time.monotonic() > deadline_ready:
            raise RuntimeError("generator processes did not get ready")
        for fd in readable:
            ch = by_fd[fd]
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                open_fds.discard(fd)
                continue
            ch.buf += chunk
            *lines, ch.buf = ch.buf.split(b"\n")
            for line in lines:
                msg = orjson.loads(line)
                if "ready" in msg:
                    ch.ready = True
                elif "row" in msg:
                    row = msg["row"]
                    row["lat"] = {int(b): c for b, c in row.get("lat", {}).items()}
                    ch.rows[row["t"]] = row
                elif "final" in msg:
                    ch.final = Stats.from_dict(msg["final"])
                elif "error" in msg:
                    ch.error = msg["error"]
        if not started and all(ch.ready for ch in children):
            started = True
            t0 = b"%.9f\n" % (time.monotonic() + START_DELAY)
            for ch in children:
                os.write(ch.wfd, t0)
        # a merged row goes out once every live child has closed that second
        while sink is not None and all(emitted in ch.rows or ch.final is not None or ch.rfd not in open_fds
                                       for ch in children) and any(emitted in ch.rows for ch in children):
            merged: dict[str, Any] = {"t": emitted}
            for ch in children:
                row = ch.rows.get(emitted)
                if row is None:
                    continue
                for k, v in row.items():
                    if k == "t":
                        continue
                    if isinstance(v, dict):
                        lat = merged.setdefault(k, {})
                        for b, c in v.items():
                            lat[b] = lat.get(b, 0) + c
                    else:
                        merged[k] = merged.get(k, 0) + v
            sink(merged)
            emitted += 1
    errors = [ch.error for ch in children if ch.error]
    if errors:
        raise RuntimeError("a generator process failed:\n" + errors[0])
    total = Stats()
    for ch in children:
        if ch.final is None:
            raise RuntimeError(f"generator process {ch.pid} ended without results")
        total.merge(ch.final)
    total.procs = len(children)
    total.extra["target_rate"] = cfg.rate
    return total


# -- the --max-rate search --------------------------------------------------------------

@dataclasses.dataclass(slots=True)
class Trial:
    rate: float
    achieved: float        # units started per second
    goodput: float         # units completed OK per second
    failure_ratio: float
    p99_ms: float
    cpu_us_per_unit: float
    causes: dict[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, rate: float, stats: Stats, duration: float) -> Trial:
        h = stats.hists.get(stats.primary)
        units = stats.units
        ok = stats.counters.get("ok", 0) + stats.counters.get("reg_ok", 0)
        return cls(rate=rate, achieved=units / duration if duration else 0.0,
                   goodput=ok / duration if duration else 0.0,
                   failure_ratio=stats.failure_ratio(),
                   p99_ms=h.percentile(99) / 1e3 if h else 0.0,
                   cpu_us_per_unit=stats.cpu / units * 1e6 if units else 0.0,
                   causes=dict(stats.causes))


def search_max_rate(cfg: Settings, procs: int, *, max_failures: float = 0.01,
                    steps: int = 6, pause: float = 2.0, confirm: int = 1,
                    on_trial: Callable[[Trial], None] | None = None,
                    runner: Callable[[Settings, int], Stats] = run_parallel,
                    ) -> tuple[float, list[Trial]]:
    """The highest rate with fewer than ``max_failures`` failed units: double from
    ``cfg.rate`` until a trial fails (or the generator cannot reach the rate), then
    bisect ``steps`` times (or until within 3%). Each trial lasts ``cfg.duration``
    seconds and is followed by ``pause`` seconds for the server to calm down. A failed
    trial is run again up to ``confirm`` times before the rate counts as too high:
    on a shared machine one hiccup of another process can fail a trial."""
    trials: list[Trial] = []
    if not cfg.local_port:
        # the same contacts in every trial: a registrar updates them instead of
        # collecting a binding per trial and user, which would slow the later trials
        cfg = dataclasses.replace(cfg, local_port=free_port_base(cfg.local_ip, 2 * max(1, procs)))

    def trial(rate: float) -> bool:
        for _ in range(1 + confirm):
            if attempt(rate):
                return True
        return False

    def attempt(rate: float) -> bool:
        stats = runner(dataclasses.replace(cfg, rate=rate), procs)
        t = Trial.of(rate, stats, cfg.duration)
        trials.append(t)
        if on_trial is not None:
            on_trial(t)
        if pause:
            time.sleep(pause)
        generator_bound = stats.counters.get("skipped", 0) > 0.02 * rate * cfg.duration
        if generator_bound:
            log.warning("the generator fell behind at %.0f/s; add --procs", rate)
        return t.failure_ratio < max_failures and not generator_bound

    lo, hi = 0.0, 0.0
    rate = cfg.rate
    while True:
        if trial(rate):
            lo = rate
            rate *= 2
        else:
            hi = rate
            break
        if rate > 1e7:
            return lo, trials
    for _ in range(steps):
        mid = (lo + hi) / 2 if lo else hi / 2
        if trial(mid):
            lo = mid
        else:
            hi = mid
        if lo and hi / lo < 1.03:
            break
    return lo, trials
