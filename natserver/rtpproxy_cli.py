"""``natserver-rtpproxy``: natserver's relay processes alone, as an rtpproxy replacement.

    natserver-rtpproxy -l IP -s udp:0.0.0.0:7722 -m MIN -M MAX [-n RELAYS] [-t TIMEOUT]
                       [-A ADVERTISED_IP] [-L strict|rtpproxy] [-F] [-d LEVEL] [-p PIDFILE]

For Kamailio/OpenSIPS's rtpproxy module or a natserver on another host
(``rtpproxy_sock="udp:relayhost:7722"``). Flags follow rtpproxy's: ``-l`` the address
the relay ports are bound on (and the one U/L replies give, unless ``-A``), ``-s`` the
control socket (``udp:HOST:PORT`` or ``unix:PATH``), ``-m``/``-M`` the port range,
``-F``/``-f`` stay in the foreground (log to stderr), ``-d`` the log level (DBUG, INFO,
WARN, ERR, CRIT or SER's -3..4). ``-t``/``-T`` is the idle timeout in seconds (rtpproxy's
``-T``; its ``-t`` TOS has no use here).

The same relay processes as inside natserver (natserver/workers/rtp_relay.py) under a
small supervisor of their own: shared-memory session table, control socket and
notification socketpairs made before fork, one process per port slice, respawned at
once after a crash (the sessions survive it), SIGTERM/SIGINT stop everything.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import sys
import time

import setproctitle

from natserver import daemon
from natserver import log as logsetup
from natserver.config import Config
from natserver.context import Context, Proc
from natserver.rtp.store import TABLE_NAME, table_spec
from natserver.stats import COUNTER_NAMES
from natserver.workers import RTP_RELAY, rtp_relay
from natserver.workers.base import ChildSpec, child_main

log = logging.getLogger("natserver.rtpproxy")

LEVELS = {"DBUG": 4, "DEBUG": 4, "INFO": 3, "NOTICE": 2, "WARN": 1, "WARNING": 1, "ERR": -1,
          "ERROR": -1, "CRIT": -2}
STOP_WAIT = 5.0
RESPAWN_BACKOFF = 1.0       # a relay that dies within this of its start waits this long
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD, signal.SIGHUP)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="natserver-rtpproxy",
                                description="natserver's RTP relays as a standalone rtpproxy")
    p.add_argument("-l", dest="listen", default="0.0.0.0",
                   help="address relay ports are bound on (and advertised unless -A)")
    p.add_argument("-A", dest="advertise", default=None, help="IP given in U/L replies")
    p.add_argument("-s", dest="control", default="udp:127.0.0.1:7722",
                   help="control socket: udp:HOST:PORT or unix:PATH")
    p.add_argument("-m", dest="port_min", type=int, default=35000, help="lowest relay port")
    p.add_argument("-M", dest="port_max", type=int, default=65000, help="highest relay port")
    p.add_argument("-n", dest="relays", type=int, default=1, help="relay processes")
    p.add_argument("-t", "-T", dest="timeout", type=int, default=60,
                   help="seconds without media before a session is removed")
    p.add_argument("-L", dest="latch", choices=("strict", "rtpproxy"), default="strict",
                   help="latching policy (natserver's rtp_latch_mode)")
    p.add_argument("-F", "-f", dest="foreground", action="store_true",
                   help="stay in the foreground, log to stderr")
    p.add_argument("-d", dest="level", default="INFO", help="log level")
    p.add_argument("-p", dest="pidfile", default="", help="pidfile")
    p.add_argument("--sessions", type=int, default=4096, help="session table size")
    args = p.parse_args(argv)
    level = args.level.split(":")[0].upper()
    if level in LEVELS:
        args.debug = LEVELS[level]
    else:
        try:
            args.debug = int(level)
        except ValueError:
            p.error(f"unknown log level {args.level!r}")
    if args.relays < 1 or args.relays > 64:
        p.error("-n must be within 1..64")
    if not 1024 <= args.port_min < args.port_max <= 65535:
        p.error("need 1024 <= -m < -M <= 65535")
    return args


class RelaySupervisor:
    """Forks the relay slots, respawns them, stops them."""

    def __init__(self, args: argparse.Namespace, log_args: dict[str, object],
                 notifier: daemon.Notifier) -> None:
        self.args = args
        self.log_args = log_args
        self.notifier = notifier
        self.pid = os.getpid()
        self.count = int(args.relays)
        self.pids: dict[int, int] = {}          # pid -> slot
        self.due: dict[int, float] = {}         # slot -> monotonic respawn time
        self.spawned: dict[int, float] = {}
        self.stopping = False
        self.booting = True
        self.wake_r = self.wake_w = -1
        self.plane: rtp_relay.Plane | None = None
        self.ctx: Context | None = None

    def prepare(self) -> None:
        from natserver.shm import Tables
        a = self.args
        advertise = a.advertise if a.advertise is not None else (
            "" if a.listen in ("0.0.0.0", "::") else a.listen)
        self.plane = rtp_relay.open_plane(
            count=self.count, port_min=a.port_min, port_max=a.port_max, ip=a.listen,
            advertise=advertise, timeout=a.timeout, latch_mode=a.latch, control=a.control)
        cfg = Config({"rtp_relays": self.count, "rtp_port_min": a.port_min,
                      "rtp_port_max": a.port_max, "rtp_timeout": a.timeout,
                      "rtp_advertise": advertise, "rtp_latch_mode": a.latch,
                      "rtp_table_size": a.sessions, "children": 1})
        ctx = Context(cfg)
        ctx.set_modules({})
        ctx.proc = Proc("supervisor", 0, 1, 0)
        ctx.tables = Tables.build({TABLE_NAME: table_spec(a.sessions)},
                                  proc_slots=self.count + 1, counter_names=COUNTER_NAMES)
        self.ctx = ctx

    def spawn(self, slot: int) -> None:
        assert self.ctx is not None and self.plane is not None
        proc = Proc(RTP_RELAY, slot, self.count, slot)
        # the children must not hold the start-up pipe: the waiting parent reads to EOF
        fds = tuple(fd for fd in (self.wake_r, self.wake_w, self.notifier.fd) if fd >= 0)
        spec = ChildSpec(proc=proc, parent=self.pid, board=self.ctx.tables.procs,
                         close_fds=fds, log_args=dict(self.log_args),
                         extra={"rtp": self.plane})
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            log.error("cannot fork relay %d: %s", slot, exc.strerror)
            self.due[slot] = time.monotonic() + RESPAWN_BACKOFF
            return
        if pid == 0:
            spec.sigmask = mask
            child_main(self.ctx, spec, rtp_relay.main)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.pids[pid] = slot
        self.spawned[slot] = time.monotonic()
        self.due.pop(slot, None)
        self.ctx.tables.procs.claim(slot, pid, self.spawned[slot])
        log.info("started %s (pid %d)", self.plane.title(slot), pid)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.pids.pop(pid, None)
            if slot is None:
                continue
            assert self.ctx is not None
            self.ctx.tables.procs.release(slot)
            if self.stopping:
                continue
            lived = time.monotonic() - self.spawned.get(slot, 0.0)
            log.error("rtp relay %d (pid %d) ended (status %d): respawning", slot, pid, status)
            self.due[slot] = time.monotonic() + (RESPAWN_BACKOFF if lived < RESPAWN_BACKOFF
                                                 else 0.0)

    def run(self) -> int:
        setproctitle.setproctitle("natserver-rtpproxy: supervisor")
        try:
            self.prepare()
        except (rtp_relay.PlaneError, OSError, ValueError) as exc:
            log.critical("start-up failed: %s", exc)
            self.notifier.failed(str(exc))
            self.cleanup()
            return 1
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in SIGNALS:
            signal.signal(sig, lambda *_: None)
        for slot in range(1, self.count + 1):
            self.spawn(slot)
        deadline = 0.0
        while True:
            try:
                select.select([self.wake_r], [], [], 0.02 if self.booting else 0.5)
            except InterruptedError:
                pass
            for sig in self._signals():
                if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT) and not self.stopping:
                    log.log(logsetup.NOTICE, "stopping")
                    self.stopping = True
                    deadline = time.monotonic() + STOP_WAIT
                    for pid in self.pids:
                        _kill(pid, signal.SIGTERM)
                elif sig == signal.SIGHUP:
                    logsetup.setup(**self.log_args)  # type: ignore[arg-type]
            self.reap()
            if self.stopping:
                if not self.pids:
                    break
                if time.monotonic() > deadline:
                    for pid in self.pids:
                        _kill(pid, signal.SIGKILL)
                    deadline = time.monotonic() + STOP_WAIT
                continue
            now = time.monotonic()
            for slot, when in list(self.due.items()):
                if when <= now:
                    self.spawn(slot)
            if self.booting:
                self._check_boot()
        self.cleanup()
        log.log(logsetup.NOTICE, "natserver-rtpproxy stopped")
        return 0

    def _check_boot(self) -> None:
        assert self.ctx is not None and self.plane is not None
        procs = self.ctx.tables.procs
        if all(procs.heartbeat(k) > self.spawned.get(k, 1e18) for k in range(1, self.count + 1)):
            self.booting = False
            control = self.plane.control.url if self.plane.control else "none"
            log.log(logsetup.NOTICE, "natserver-rtpproxy ready: control %s, %d relay(s), "
                    "ports %d-%d", control, self.count, self.args.port_min, self.args.port_max)
            self.notifier.ready()

    def _signals(self) -> list[int]:
        seen: list[int] = []
        while True:
            try:
                data = os.read(self.wake_r, 512)
            except (BlockingIOError, InterruptedError):
                return seen
            if not data:
                return seen
            seen += [s for s in data if s not in seen]

    def cleanup(self) -> None:
        if self.plane is not None:
            self.plane.close(unlink=True)
            self.plane = None
        if self.ctx is not None and self.ctx.tables is not None:
            self.ctx.tables.close()
            self.ctx.tables = None
        if self.args.pidfile:
            daemon.remove_pidfile(self.args.pidfile, self.pid)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pidfile:
        try:
            daemon.check_pidfile(args.pidfile)
        except daemon.PidfileError as exc:
            sys.stderr.write(f"natserver-rtpproxy: {exc}\n")
            return 1
    notifier = daemon.daemonize() if not args.foreground else daemon.Notifier()
    log_args: dict[str, object] = {"debug": args.debug, "to_stderr": args.foreground}
    logsetup.setup(**log_args)  # type: ignore[arg-type]
    logsetup.set_process("rtpproxy")
    sup = RelaySupervisor(args, log_args, notifier)
    if args.pidfile:
        try:
            daemon.write_pidfile(args.pidfile, os.getpid())
        except daemon.PidfileError as exc:
            log.warning("%s: running without a pidfile", exc)
            args.pidfile = ""
    return sup.run()


if __name__ == "__main__":
    sys.exit(main())
