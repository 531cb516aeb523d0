"""The supervisor: start-up, fork by slot, respawn, signals, graceful stop.

Start-up, in order: (the cfg is already compiled by the CLI) pidfile, the listen
socket(s), the Context, shared memory (every module's ``shm_tables`` plus the
per-process slots), module ``init``, the ctl endpoints; then one child per slot of
``natserver.workers.plan(cfg)``. When every child has written its first heartbeat the
supervisor logs ``natserver listening on udp:HOST:PORT`` and tells a waiting
daemonizing parent that the server is up. A child that dies before its first
heartbeat during start-up stops the whole start (exit 1); after that, every death is
logged and the slot respawned.

The loop (arbiter style): wait on the signal wakeup pipe (at most 1 s) -> dispatch the
signals that arrived through ``DISPATCH`` -> reap -> abort children whose heartbeat is
stale (SIGABRT, then SIGKILL a second later) -> respawn empty slots that are due.
Signal handlers do nothing but let ``signal.set_wakeup_fd`` write the signal number.

Per-slot backoff: the first death respawns at once, each further death within a
minute doubles the wait (1, 2, 4 ... 30 s) and says so in the log; a minute of health
resets it. A crash loop is therefore visible and cheap, never a fork bomb, and the
other slots keep serving.

Sockets (``reuseport``): ``shared`` (the default) binds one socket before fork that
every worker reads and the sending-only processes (timer, natping) send from: any idle
worker takes the next datagram, a dead worker leaves nothing queued behind, and a
second server on the same port fails to bind. ``per_worker`` binds one SO_REUSEPORT
socket before fork that SIP worker 1 reads and timer/natping send from; workers 2..N
bind their own SO_REUSEPORT socket after fork, and the kernel hashes each source
4-tuple to one worker - so all traffic of one peer (an upstream proxy, a trunk) lands
on one worker. Measured on 2 cores (loadtest/options_bench.py): shared answers as much
or more with many clients and far more with one peer; CPU per message is the same.
With ``port=0`` the first socket takes a free port and the others follow it.
"""

from __future__ import annotations

import argparse
import enum
import errno
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import setproctitle

from natserver import daemon
from natserver import log as logsetup
from natserver.context import Context, Proc
from natserver.stats import COUNTER_NAMES
from natserver.workers import CTL, RTP_RELAY, SIP_WORKER, entry, plan
from natserver.workers.base import ChildSpec, child_main

if TYPE_CHECKING:
    from natserver.script import Script

log = logging.getLogger("natserver.supervisor")

LOOP_WAIT = 1.0             # longest sleep of the loop: reaping is never later than this
BOOT_WAIT = 0.02            # poll interval while waiting for the first heartbeats
GRACEFUL_TIMEOUT = 10.0     # SIGTERM -> SIGKILL for children that do not leave
FAST_TIMEOUT = 1.0          # SIGQUIT -> SIGKILL
KILL_WAIT = 2.0             # after SIGKILL, how long to wait for the reaping
ABORT_GRACE = 1.0           # SIGABRT -> SIGKILL for a child with a stale heartbeat
HEALTHY_AFTER = 60.0        # a child that lived this long resets its slot's backoff
BACKOFF_MAX = 30.0


class StartupError(Exception):
    """The server cannot start; the message says why (logged and sent to the parent)."""


# ---- slots: a small state machine per process slot --------------------------------

class SlotState(enum.IntEnum):
    WAITING = 0     # no process: (re)spawn when ``due``
    STARTING = 1    # forked, no heartbeat yet
    RUNNING = 2     # heartbeat seen
    ABORTING = 3    # heartbeat stale: SIGABRT sent, SIGKILL after ABORT_GRACE
    STOPPING = 4    # SIGTERM/SIGQUIT sent by a stop


class Event(enum.IntEnum):
    SPAWN = 0
    BEAT = 1
    STALE = 2
    STOP = 3
    EXIT = 4


S, E = SlotState, Event
TRANSITIONS: dict[tuple[SlotState, Event], SlotState] = {
    (S.WAITING, E.SPAWN): S.STARTING,
    (S.STARTING, E.BEAT): S.RUNNING,
    (S.STARTING, E.STALE): S.ABORTING,
    (S.RUNNING, E.STALE): S.ABORTING,
    (S.STARTING, E.STOP): S.STOPPING,
    (S.RUNNING, E.STOP): S.STOPPING,
    (S.ABORTING, E.STOP): S.STOPPING,
    (S.STARTING, E.EXIT): S.WAITING,
    (S.RUNNING, E.EXIT): S.WAITING,
    (S.ABORTING, E.EXIT): S.WAITING,
    (S.STOPPING, E.EXIT): S.WAITING,
}
LIVE = frozenset({S.STARTING, S.RUNNING, S.ABORTING, S.STOPPING})


@dataclass(slots=True)
class Backoff:
    """Respawn delays of one slot: 0 the first time, then 1, 2, 4 ... BACKOFF_MAX s."""

    failures: int = 0

    def next_delay(self, lived: float) -> float:
        if lived >= HEALTHY_AFTER:
            self.failures = 0
        delay = 0.0 if self.failures == 0 else min(BACKOFF_MAX, 2.0 ** (self.failures - 1))
        self.failures += 1
        return delay


@dataclass(slots=True)
class Slot:
    proc: Proc
    state: SlotState = SlotState.WAITING
    pid: int = 0
    spawned: float = 0.0        # monotonic time of the fork
    due: float = 0.0            # monotonic time of the next spawn (WAITING)
    aborted: float = 0.0        # monotonic time SIGABRT was sent
    ever_ready: bool = False    # wrote a heartbeat at least once (since any spawn)
    backoff: Backoff = field(default_factory=Backoff)

    def step(self, event: Event) -> SlotState:
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise RuntimeError(f"{self.proc.title}: no transition {self.state.name} + {event.name}")
        self.state = new
        return new


def describe_status(status: int) -> tuple[str, int]:
    """("exited with code 1" | "killed by SIGKILL", signal number or 0)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}", sig
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}", 0
    return f"ended with status {status}", 0


# ---- sockets ---------------------------------------------------------------------

def bind_listen(host: str, port: int, mode: str) -> socket.socket:
    """The socket bound before fork (StartupError when the address is taken)."""
    from natserver.workers.sip import bind_udp
    if mode == "per_worker" and port:
        # SO_REUSEPORT would silently join another server's group on this port (same
        # uid): probe without it first, so a second server fails like any other bind.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        probe = socket.socket(family, socket.SOCK_DGRAM)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartupError(f"cannot bind udp:{host}:{port}: {exc.strerror}") from None
        finally:
            probe.close()
    try:
        return bind_udp(host, port, reuseport=(mode == "per_worker"))
    except OSError as exc:
        raise StartupError(f"cannot bind udp:{host}:{port}: {exc.strerror}") from None


# ---- the supervisor ----------------------------------------------------------------

class Supervisor:
    """Owns the children of one server; ``run()`` returns the exit code."""

    def __init__(self, script: Script, cfg_path: str, *, log_args: dict[str, object],
                 pidfile: str = "", pidfile_required: bool = False,
                 notifier: daemon.Notifier | None = None) -> None:
        self.script = script
        self.cfg = script.config
        self.cfg_path = cfg_path
        self.log_args = log_args
        self.pidfile = pidfile
        self.pidfile_required = pidfile_required
        self.notifier = notifier or daemon.Notifier()
        self.pid = os.getpid()
        self.ctx: Context | None = None
        self.sock: socket.socket | None = None
        self.ends = None  # ctl.Endpoints
        self.plane = None  # rtp_relay.Plane: relay control socket, notification pairs
        self.slots: list[Slot] = []
        self.by_pid: dict[int, Slot] = {}
        self.booting = True
        self.stopping = False
        self.killed = False
        self.deadline = 0.0
        self.exit_code = 0
        self.wake_r = -1
        self.wake_w = -1
        self.entries: dict[str, Callable] = {}

    # ---- start-up ------------------------------------------------------------------

    def prepare(self) -> None:
        """Everything before the first fork; StartupError with the reason on failure."""
        cfg = self.cfg
        if self.pidfile:
            try:
                daemon.write_pidfile(self.pidfile, self.pid)
            except daemon.PidfileError as exc:
                if self.pidfile_required:
                    raise StartupError(str(exc)) from None
                log.warning("%s: running without a pidfile", exc)
                self.pidfile = ""
        listens = cfg.listens()
        if len(listens) > 1:
            log.warning("only the first listen= is served for now (%s:%s); ignoring %s",
                        listens[0][0], listens[0][1],
                        ", ".join(f"{h}:{p}" for h, p in listens[1:]))
        host, port = listens[0]
        self.sock = bind_listen(host, port, cfg.reuseport)
        if port == 0:
            cfg.port = self.sock.getsockname()[1]  # every other socket follows this one
        ctx = Context(cfg, self.cfg_path)
        ctx.script = self.script
        ctx.secret = os.urandom(16)
        ctx.set_modules(self.script.modules)
        ctx.proc = Proc("supervisor", 0, 1, 0)
        self.ctx = ctx
        from natserver.workers import rtp_relay
        try:  # before the slots: it may turn the relays off (rtp_relays=0)
            self.plane = rtp_relay.plane_from_cfg(cfg, self.script.modules)
        except rtp_relay.PlaneError as exc:
            raise StartupError(str(exc)) from None
        self.slots = [Slot(p) for p in plan(cfg) if p.index > 0]
        self._build_tables(ctx)
        for module in self.script.modules.values():
            module.init(ctx)
        from natserver.workers import ctl
        try:
            self.ends = ctl.open_endpoints(cfg)
        except ctl.CtlError as exc:
            raise StartupError(str(exc)) from None
        for slot in self.slots:  # import entry code once, before fork
            self.entries.setdefault(slot.proc.kind, entry(slot.proc.kind))

    def _build_tables(self, ctx: Context) -> None:
        from natserver.shm import Tables
        specs: dict[str, tuple[int, int, int]] = {}
        for module in ctx.modules.values():
            for name, spec in module.shm_tables(ctx).items():
                if name in specs and specs[name] != spec:
                    raise StartupError(f"shm table {name} requested twice with different sizes")
                specs[name] = spec
        if int(self.cfg.rtp_relays) > 0:
            from natserver.rtp.store import TABLE_NAME, table_spec
            specs[TABLE_NAME] = table_spec(int(self.cfg.rtp_table_size))
        try:
            ctx.tables = Tables.build(specs, proc_slots=len(self.slots) + 1,
                                      counter_names=COUNTER_NAMES)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot create shared memory: {exc}") from None
        for line in ctx.tables.summary():
            log.info("%s", line)

    def install_signals(self) -> None:
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in DISPATCH:
            signal.signal(sig, _no_op)

    # ---- children ------------------------------------------------------------------

    def spec_for(self, slot: Slot) -> ChildSpec:
        proc = slot.proc
        assert self.ctx is not None and self.sock is not None
        sock: socket.socket | None = self.sock
        bind = None
        if proc.kind == SIP_WORKER and self.cfg.reuseport == "per_worker" and proc.slot > 1:
            sock, bind = None, self.ctx.listen
        elif proc.kind in (CTL, RTP_RELAY):
            sock = None
        fds = [self.wake_r, self.wake_w]
        if self.notifier.fd >= 0:
            fds.append(self.notifier.fd)
        extra: dict[str, object] = {}
        if proc.kind == CTL:
            extra["ctl"] = self.ends
        elif self.ends is not None:
            fds.extend(self.ends.fds())
        if proc.kind == RTP_RELAY:
            extra["rtp"] = self.plane
        elif self.plane is not None:
            fds.extend(self.plane.fds())
        return ChildSpec(proc=proc, parent=self.pid, board=self.ctx.tables.procs, sock=sock,
                         bind=bind, close_fds=tuple(fds), log_args=dict(self.log_args),
                         extra=extra)

    def spawn(self, slot: Slot) -> None:
        assert self.ctx is not None
        spec = self.spec_for(slot)
        fn = self.entries[slot.proc.kind]
        spawned = time.monotonic()
        # Signals stay blocked across fork until the child has its own handlers: one
        # arriving in between would otherwise run the supervisor's no-op handler and
        # write into the supervisor's wakeup pipe.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, DISPATCH)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            log.error("cannot fork %s: %s; retrying in 1 s", slot.proc.title, exc.strerror)
            slot.due = spawned + 1.0
            return
        if pid == 0:
            spec.sigmask = mask
            child_main(self.ctx, spec, fn)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        slot.pid = pid
        slot.spawned = spawned
        self.by_pid[pid] = slot
        self.ctx.tables.procs.claim(slot.proc.index, pid, spawned)
        slot.step(Event.SPAWN)
        log.info("started %s (pid %d)", slot.proc.title, pid)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            slot = self.by_pid.pop(pid, None)
            if slot is None:
                log.debug("reaped pid %d (not a slot)", pid)
                continue
            self.exited(slot, status)

    def exited(self, slot: Slot, status: int) -> None:
        assert self.ctx is not None
        now = time.monotonic()
        what, sig = describe_status(status)
        expected = self.stopping or slot.state == SlotState.ABORTING
        hint = ""
        if sig == signal.SIGKILL and not expected:
            hint = " - perhaps out of memory?"
        level = logging.INFO if self.stopping else logging.ERROR
        log.log(level, "%s (pid %d) %s%s", slot.proc.title, slot.pid, what, hint)
        was_starting = slot.state == SlotState.STARTING
        procs = self.ctx.tables.procs
        if procs.heartbeat(slot.proc.index) > slot.spawned:
            slot.ever_ready = True  # it beat after the last check, then died
        procs.release(slot.proc.index)
        slot.step(Event.EXIT)
        slot.pid = 0
        if self.stopping:
            return
        if self.booting and was_starting and not slot.ever_ready:
            self.fail(f"{slot.proc.title} failed during start-up ({what})")
            return
        delay = slot.backoff.next_delay(now - slot.spawned)
        slot.due = now + delay
        if delay:
            log.warning("%s keeps failing (%d times in a row): respawning in %.0f s",
                        slot.proc.title, slot.backoff.failures, delay)

    def check_heartbeats(self) -> None:
        assert self.ctx is not None
        procs = self.ctx.tables.procs
        now = time.monotonic()
        timeout = float(self.cfg.heartbeat_timeout)
        for slot in self.slots:
            if slot.state not in (SlotState.STARTING, SlotState.RUNNING, SlotState.ABORTING):
                continue
            beat = procs.heartbeat(slot.proc.index)
            if slot.state == SlotState.STARTING and beat > slot.spawned:
                slot.step(Event.BEAT)
                slot.ever_ready = True
            if slot.state == SlotState.ABORTING:
                if now - slot.aborted >= ABORT_GRACE:
                    log.error("%s (pid %d) did not leave after SIGABRT: SIGKILL",
                              slot.proc.title, slot.pid)
                    _kill(slot.pid, signal.SIGKILL)
                    slot.aborted = now
                continue
            age = now - max(beat, slot.spawned)
            if age > timeout:
                log.error("%s (pid %d) sent no heartbeat for %.1f s: SIGABRT",
                          slot.proc.title, slot.pid, age)
                _kill(slot.pid, signal.SIGABRT)
                slot.aborted = now
                slot.step(Event.STALE)

    def respawn(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.state == SlotState.WAITING and slot.due <= now:
                self.spawn(slot)

    def check_boot(self) -> None:
        if all(slot.state == SlotState.RUNNING for slot in self.slots):
            self.booting = False
            assert self.sock is not None
            host, port = self.sock.getsockname()[:2]
            log.log(logsetup.NOTICE, "natserver listening on udp:%s:%s (%d sip workers, %s)",
                    host, port, self.cfg.children, self.cfg.reuseport)
            self.notifier.ready()

    # ---- signals -------------------------------------------------------------------

    def stop_graceful(self) -> None:
        if self.stopping:
            log.info("already stopping")
            return
        log.log(logsetup.NOTICE, "stopping (graceful)")
        self._stop(signal.SIGTERM, GRACEFUL_TIMEOUT)

    def stop_fast(self) -> None:
        log.log(logsetup.NOTICE, "stopping (fast)")
        self._stop(signal.SIGQUIT, FAST_TIMEOUT)

    def _stop(self, sig: int, grace: float) -> None:
        self.stopping = True
        self.deadline = time.monotonic() + grace
        for slot in self.slots:
            if slot.state in LIVE:
                _kill(slot.pid, sig)
                if slot.state != SlotState.STOPPING:
                    slot.step(Event.STOP)

    def reopen_logs(self) -> None:
        logsetup.setup(**self.log_args)  # type: ignore[arg-type]
        for slot in self.slots:
            if slot.state in LIVE:
                _kill(slot.pid, signal.SIGHUP)
        log.log(logsetup.NOTICE, "log targets reopened (SIGHUP)")

    def on_sigchld(self) -> None:
        self.reap()

    def fail(self, why: str) -> None:
        log.critical("start-up failed: %s", why)
        self.notifier.failed(why)
        self.exit_code = 1
        if not self.stopping:
            self._stop(signal.SIGTERM, GRACEFUL_TIMEOUT)

    # ---- the loop --------------------------------------------------------------------

    def run(self) -> int:
        setproctitle.setproctitle("natserver: supervisor")
        try:
            self.prepare()
        except StartupError as exc:
            log.critical("start-up failed: %s", exc)
            self.notifier.failed(str(exc))
            self.cleanup()
            return 1
        except Exception as exc:  # a module's init bug: say so, leave nothing behind
            log.exception("start-up failed")
            self.notifier.failed(f"start-up failed: {exc}")
            self.cleanup()
            return 1
        self.install_signals()
        for slot in self.slots:
            self.spawn(slot)
        while True:
            try:
                if self.iterate():
                    break
            except Exception:  # the supervisor must outlive its own bugs
                log.exception("supervisor loop error")
                time.sleep(0.1)
        self.cleanup()
        log.log(logsetup.NOTICE, "natserver stopped")
        return self.exit_code

    def iterate(self) -> bool:
        """One loop turn; True when the server has stopped."""
        self.wait(self.next_timeout())
        for sig in self.take_signals():
            DISPATCH[sig](self)
        self.reap()
        if self.stopping:
            return self.stop_progress()
        self.check_heartbeats()
        self.respawn()
        if self.booting:
            self.check_boot()
        return False

    def stop_progress(self) -> bool:
        live = [slot for slot in self.slots if slot.state in LIVE]
        if not live:
            return True
        now = time.monotonic()
        if now < self.deadline:
            return False
        if not self.killed:
            for slot in live:
                log.warning("%s (pid %d) did not stop in time: SIGKILL",
                            slot.proc.title, slot.pid)
                _kill(slot.pid, signal.SIGKILL)
            self.killed = True
            self.deadline = now + KILL_WAIT
            return False
        log.error("giving up on %s", ", ".join(str(s.pid) for s in live))
        return True

    def next_timeout(self) -> float:
        now = time.monotonic()
        timeout = BOOT_WAIT if self.booting else LOOP_WAIT
        if self.stopping:
            return max(0.0, min(timeout, self.deadline - now))
        for slot in self.slots:
            if slot.state == SlotState.WAITING:
                timeout = min(timeout, slot.due - now)
            elif slot.state == SlotState.ABORTING:
                timeout = min(timeout, slot.aborted + ABORT_GRACE - now)
        return max(0.0, timeout)

    def wait(self, timeout: float) -> None:
        try:
            select.select([self.wake_r], [], [], timeout)
        except InterruptedError:
            pass

    def take_signals(self) -> list[int]:
        """Signal numbers the wakeup fd delivered, each once, in arrival order."""
        seen: list[int] = []
        while True:
            try:
                data = os.read(self.wake_r, 4096)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            for sig in data:
                if sig in DISPATCH and sig not in seen:
                    seen.append(sig)
        return seen

    def cleanup(self) -> None:
        if self.plane is not None:
            self.plane.close(unlink=True)
            self.plane = None
        if self.ends is not None:
            self.ends.close(unlink=True)
            self.ends = None
        if self.ctx is not None and self.ctx.tables is not None:
            self.ctx.tables.close()
            self.ctx.tables = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.pidfile:
            daemon.remove_pidfile(self.pidfile, self.pid)


def _no_op(signum: int, frame: object) -> None:
    """Signal handlers only wake the loop (through the wakeup fd)."""


def _kill(pid: int, sig: int) -> None:
    if pid <= 0:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            log.warning("kill(%d, %d) failed: %s", pid, sig, exc.strerror)


DISPATCH: dict[int, Callable[[Supervisor], None]] = {
    signal.SIGTERM: Supervisor.stop_graceful,
    signal.SIGINT: Supervisor.stop_graceful,
    signal.SIGQUIT: Supervisor.stop_fast,
    signal.SIGHUP: Supervisor.reopen_logs,
    signal.SIGCHLD: Supervisor.on_sigchld,
}


# ---- entry from the CLI ------------------------------------------------------------

def run(script: Script, args: argparse.Namespace) -> int:
    """Daemonize when asked, set up logging, and run the supervisor to its end.

    ``fork=yes`` daemonizes unless ``-D`` or ``-E`` is given; ``fork=no`` keeps the
    supervisor in the foreground - it still forks the children (SER's fork=no meant
    one single process).
    """
    cfg = script.config
    to_stderr = bool(args.stderr or cfg.log_stderror)
    detach = bool(cfg.fork and not args.foreground and not args.stderr)
    pidfile = args.pidfile or cfg.pid_file or (daemon.DEFAULT_PIDFILE if detach else "")
    required = bool(args.pidfile or cfg.pid_file)
    if pidfile:
        try:
            daemon.check_pidfile(pidfile)
        except daemon.PidfileError as exc:
            sys.stderr.write(f"natserver: {exc}\n")
            return 1
    notifier = daemon.daemonize(keep_stderr=to_stderr) if detach else daemon.Notifier()
    log_args: dict[str, object] = {
        "debug": cfg.debug, "to_stderr": to_stderr, "facility": cfg.log_facility,
        "syslog_socket": cfg.syslog_socket,
    }
    logsetup.setup(**log_args)  # type: ignore[arg-type]
    logsetup.set_process("supervisor")
    for warning in getattr(script, "warnings", ()):
        log.warning("%s", warning)
    sup = Supervisor(script, os.path.abspath(args.cfg), log_args=log_args, pidfile=pidfile,
                     pidfile_required=required, notifier=notifier)
    return sup.run()
