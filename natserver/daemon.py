"""Daemonizing and the pidfile.

``daemonize()`` is the classic double fork (setsid between the forks, chdir /, umask,
stdio to /dev/null) with one addition: the process that ran the command waits on a
pipe until the daemon reports that every child is serving (or why it could not
start), and exits 0 or 1 accordingly - so ``natserver`` and the init script return a
real start-up status instead of "forked, good luck".

The pidfile holds the supervisor's pid. It is written to a temporary file and renamed
(readers never see half a number); a pidfile whose pid is gone or is not a natserver
process is stale and replaced; a live one refuses a second start.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

log = logging.getLogger("natserver.daemon")

DEFAULT_PIDFILE = "/run/natserver.pid"


class PidfileError(Exception):
    """The pidfile names a running natserver, or cannot be written."""


# ---- pidfile

def read_pidfile(path: str) -> int | None:
    """The pid in ``path``, or None when the file is missing, empty or not a number."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read(64).strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidfileError(f"cannot read pidfile {path}: {exc.strerror}") from None
    return int(text) if text.isdigit() and int(text) > 0 else None


def pid_alive(pid: int) -> bool:
    """Does a process with this pid exist (ours or another user's)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_natserver(pid: int) -> bool:
    """Is ``pid`` a natserver process: its command line (or setproctitle title) says so."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return False
    return b"natserver" in cmdline


def running_pid(path: str) -> int | None:
    """The pid of the natserver the pidfile names, if it still runs; None otherwise."""
    pid = read_pidfile(path)
    if pid is None or pid == os.getpid():
        return None
    if pid_alive(pid) and is_natserver(pid):
        return pid
    return None


def check_pidfile(path: str) -> None:
    """Refuse to start when the pidfile names a running natserver; forget a stale one."""
    pid = running_pid(path)
    if pid is not None:
        raise PidfileError(f"natserver is already running (pid {pid}, pidfile {path})")
    stale = read_pidfile(path)
    if stale is not None and stale != os.getpid():
        log.info("stale pidfile %s (pid %s is not a running natserver): replacing it",
                 path, stale)


def write_pidfile(path: str, pid: int) -> None:
    """Write ``pid`` atomically (temporary file + rename), refusing a live owner."""
    check_pidfile(path)
    tmp = f"{path}.{pid}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{pid}\n".encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise PidfileError(f"cannot write pidfile {path}: {exc.strerror}") from None


def remove_pidfile(path: str, pid: int) -> None:
    """Unlink the pidfile only if it still holds ``pid`` (a newer server may own it)."""
    try:
        if read_pidfile(path) == pid:
            os.unlink(path)
    except (OSError, PidfileError) as exc:
        log.warning("cannot remove pidfile %s: %s", path, exc)


# ---- daemonize

class Notifier:
    """The daemon's end of the start-up pipe: ``ready()`` or ``failed(why)``, once."""

    __slots__ = ("fd",)

    def __init__(self, fd: int = -1) -> None:
        self.fd = fd

    def ready(self) -> None:
        self._send(b"ok\n")

    def failed(self, why: str) -> None:
        self._send(f"error {why}\n".encode())

    def close(self) -> None:
        """Drop the pipe without a word (children call this right after fork)."""
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

    def _send(self, data: bytes) -> None:
        if self.fd < 0:
            return
        try:
            os.write(self.fd, data)
        except OSError:
            pass  # the waiting parent is gone (killed); nothing to tell
        self.close()


def daemonize(*, keep_stderr: bool = False, umask: int = 0o022) -> Notifier:
    """Detach from the terminal; returns in the daemon, never in the caller.

    The calling process waits until the daemon calls ``ready()`` (exit 0) or
    ``failed()``/dies (message on stderr, exit 1). ``keep_stderr`` leaves fd 2 open for
    a server that logs to stderr (``log_stderror=yes``, e.g. under systemd).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    rfd, wfd = os.pipe()
    if os.fork() > 0:
        os.close(wfd)
        os._exit(_wait_for_daemon(rfd))
    os.close(rfd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)  # the session leader goes; the daemon can never regain a terminal
    os.chdir("/")
    os.umask(umask)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    if not keep_stderr:
        os.dup2(null, 2)
    if null > 2:
        os.close(null)
    return Notifier(wfd)


def _wait_for_daemon(rfd: int) -> int:
    chunks = []
    while True:
        try:
            data = os.read(rfd, 4096)
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            break
        if not data:
            break
        chunks.append(data)
    text = b"".join(chunks).decode("utf-8", "replace").strip()
    if text.startswith("ok"):
        return 0
    if text.startswith("error "):
        sys.stderr.write(f"natserver: {text[6:]}\n")
    else:
        sys.stderr.write("natserver: the daemon exited during start-up (see the log)\n")
    sys.stderr.flush()
    return 1
