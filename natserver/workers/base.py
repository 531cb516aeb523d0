"""What every child process does after fork, and the loops of the simple kinds.

The supervisor forks and calls :func:`child_main` with a :class:`ChildSpec`. The child
then: drops the supervisor's signal set-up and descriptors, asks the kernel for
SIGTERM if the supervisor dies, sets its title (``natserver: sip worker 2/4``) and log
prefix, gets fresh counters, binds its own socket when it has one, runs every module's
``child_init``, and enters its kind's loop. Each loop iteration calls
:meth:`Child.tick` (cheap: one clock read); at most every ``FLUSH_INTERVAL`` that writes
the heartbeat and copies the counters into the process's shared slot, checks that the
parent still lives and reopens the logs after SIGHUP.

Signals in a child: SIGTERM = finish the packet in hand, run the modules' ``shutdown``,
exit 0; SIGINT ignored (Ctrl-C on a foreground server reaches the whole process group -
the supervisor turns it into an orderly stop, the children must not leave on their
own); SIGQUIT = exit at once; SIGHUP = reopen logs; SIGABRT (sent when the heartbeat
is stale) dumps every thread's Python stack to stderr, then kills the process.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import setproctitle

from natserver import log as logsetup
from natserver.context import Context, Proc
from natserver.stats import Stats

if TYPE_CHECKING:
    from natserver.modules import Module

log = logging.getLogger("natserver.worker")

# How often a child writes its heartbeat and counters into shared memory (seconds).
FLUSH_INTERVAL = 0.1
# Longest a helper loop (timer, natping, ctl) sleeps: keeps its heartbeat fresh.
IDLE_WAIT = 0.5
# Linux prctl(PR_SET_PDEATHSIG): the signal a child gets when its parent dies.
PR_SET_PDEATHSIG = 1


@dataclass(slots=True)
class ChildSpec:
    """What the supervisor hands a child at fork (all of it inherited, nothing pickled)."""

    proc: Proc
    parent: int                               # the supervisor's pid
    board: Any                                # per-process heartbeats, pids, counters (shm)
    sock: socket.socket | None = None         # inherited listen socket (send, maybe read)
    bind: tuple[str, int] | None = None       # bind an own SO_REUSEPORT socket here
    close_fds: tuple[int, ...] = ()           # the supervisor's own descriptors
    log_args: dict[str, Any] = field(default_factory=dict)   # for log.setup on SIGHUP
    extra: dict[str, Any] = field(default_factory=dict)      # kind-specific (ctl endpoints)
    sigmask: set[int] | None = None           # restored once the child's handlers are in


class Child:
    """The running child: its slot, socket, stop/reopen flags and heartbeat."""

    __slots__ = ("spec", "proc", "index", "board", "sock", "stopping", "reopen",
                 "next_flush", "ctx", "_wake_r", "_wake_w")

    def __init__(self, ctx: Context, spec: ChildSpec) -> None:
        self.ctx = ctx
        self.spec = spec
        self.proc = spec.proc
        self.index = spec.proc.index
        self.board = spec.board
        self.sock = spec.sock
        self.stopping = False
        self.reopen = False
        self.next_flush = 0.0
        self._wake_r = -1
        self._wake_w = -1

    # ---- loop helpers ------------------------------------------------------------

    def is_stopping(self) -> bool:
        return self.stopping

    def tick(self, now: float = 0.0) -> float | None:
        """Once per loop iteration (``serve``'s tick). Returns how long the loop may
        sleep before the counters of the last packets must be published (<= 0.1 s)."""
        t = time.monotonic()
        if t >= self.next_flush:
            self.flush(t)
            return None
        return self.next_flush - t

    def flush(self, t: float) -> None:
        """Heartbeat + counters into shm; parent-death and SIGHUP checks."""
        self.next_flush = t + FLUSH_INTERVAL
        board = self.board
        if board is not None:
            board.beat(self.index, t)
            stats = self.ctx.stats
            if stats is not None:
                board.store(self.index, stats.values())
        if os.getppid() != self.spec.parent and not self.stopping:
            log.warning("the supervisor is gone: stopping")
            self.stopping = True
        if self.reopen:
            self.reopen = False
            if self.spec.log_args:
                logsetup.setup(**self.spec.log_args)

    @property
    def wake_fd(self) -> int:
        """Readable when a signal arrived (for loops that select on more than this)."""
        return self._wake_r

    def drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` s; a signal (SIGTERM, SIGHUP) ends the wait at once."""
        if self._wake_r < 0:
            time.sleep(max(0.0, timeout))
            return
        ready, _, _ = select.select([self._wake_r], [], [], max(0.0, timeout))
        if ready:
            self.drain_wake()

    # ---- signals -------------------------------------------------------------------

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self.reopen = True

    def install_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        # The supervisor's no-op handlers would swallow these; restore child semantics.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGQUIT, _quit_now)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            faulthandler.register(signal.SIGABRT, file=sys.stderr, all_threads=True, chain=True)
        except (ValueError, RuntimeError, OSError):
            pass  # no usable stderr: SIGABRT still kills with its default action


def _quit_now(signum: int, frame: object) -> None:
    os._exit(0)


def _set_pdeathsig(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when the supervisor dies."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the getppid() check in flush() still stops the child


def child_main(ctx: Context, spec: ChildSpec, entry: Callable[[Context, Child], int]) -> NoReturn:
    """Run one child to its end and leave with ``os._exit`` (never return into the
    supervisor's stack, never run its atexit handlers)."""
    code = 1
    try:
        code = _run(ctx, spec, entry)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - any crash is logged; the supervisor respawns
        log.exception("%s crashed", spec.proc.title)
        code = 1
    finally:
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except (OSError, ValueError):
                pass
    os._exit(code)


def _run(ctx: Context, spec: ChildSpec, entry: Callable[[Context, Child], int]) -> int:
    child = Child(ctx, spec)
    child.install_signals()
    if spec.sigmask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, spec.sigmask)
    for fd in spec.close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _set_pdeathsig(signal.SIGTERM)
    if os.getppid() != spec.parent:  # died between fork and prctl
        return 0
    proc = spec.proc
    setproctitle.setproctitle(proc.title)
    logsetup.set_process(proc.title.removeprefix("natserver: "))
    ctx.proc = proc
    ctx.stats = Stats()
    if spec.bind is not None:
        from natserver.workers.sip import bind_udp
        child.sock = bind_udp(*spec.bind, reuseport=True)
    if child.sock is not None:
        from natserver.workers.sip import SocketTransport
        ctx.transport = SocketTransport(child.sock, ctx)
    for module in ctx.modules.values():
        module.child_init(ctx)
    code = entry(ctx, child)
    if child.stopping:
        for module in ctx.modules.values():
            try:
                module.shutdown(ctx)
            except Exception:  # one module's failure must not skip the others
                log.exception("%s: shutdown failed", module.NAME)
    child.flush(time.monotonic())
    return code


# ---- entry functions of the simple kinds -------------------------------------------

def run_sip_worker(ctx: Context, child: Child) -> int:
    """A SIP worker: read listen:port and run the receive path until SIGTERM."""
    from natserver.workers.sip import serve
    if child.sock is None:
        raise RuntimeError("a SIP worker without a socket")
    child.flush(time.monotonic())  # first heartbeat: the worker is in its loop now
    serve(ctx, child.sock, child.is_stopping, worker_tick(ctx, child))
    return 0


def worker_tick(ctx: Context, child: Child) -> Callable[[float], float | None]:
    """The SIP worker's per-iteration tick: the child's own (heartbeat, counters), then
    every module's ``worker_timer`` (tm timers); the shortest wait wins."""
    from natserver.modules import Module
    hooks = [m for m in ctx.modules.values()
             if type(m).worker_timer is not Module.worker_timer]
    if not hooks:
        return child.tick
    own = child.tick
    monotonic = time.monotonic

    def tick(now: float) -> float | None:
        delay = own(now)
        t = monotonic()
        for module in hooks:
            try:
                d = module.worker_timer(ctx, t)
            except Exception:  # a module bug must not take the worker down
                log.exception("%s.worker_timer failed", module.NAME)
                continue
            if d is not None and (delay is None or d < delay):
                delay = d
        return delay
    return tick


def run_hooks(ctx: Context, child: Child, hook: str, default: float = 1.0) -> int:
    """Call ``module.<hook>(ctx, now)`` on every module that defines it, each when it
    asked to run again (the hook returns seconds, or None for ``default``)."""
    from natserver.modules import Module
    base = getattr(Module, hook)
    mods: list[Module] = [m for m in ctx.modules.values() if getattr(type(m), hook) is not base]
    due = [0.0] * len(mods)
    while not child.stopping:
        t = time.monotonic()
        now = ctx.clock()
        for i, module in enumerate(mods):
            if due[i] > t:
                continue
            try:
                delay = getattr(module, hook)(ctx, now)
            except Exception:  # a module bug must not take the process down
                log.exception("%s.%s failed", module.NAME, hook)
                delay = None
            due[i] = t + (default if delay is None else max(0.0, delay))
        t = time.monotonic()
        child.flush(t)
        child.wait(min([IDLE_WAIT] + [d - t for d in due]))
    return 0
