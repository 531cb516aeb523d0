"""Striped locks that the kernel releases when their holder dies.

A :class:`LockSet` is one lock file created by the supervisor before fork; lock *i* is
the POSIX record lock (``fcntl.lockf``, i.e. ``F_SETLKW``) on byte *i* of that file.
Why this kind of lock:

- The kernel drops a process's record locks when it exits, however it exits: a worker
  killed with SIGKILL inside a critical section never wedges the server (a
  ``multiprocessing.Lock`` would stay taken forever). What it may leave behind is a
  half-written record; :mod:`natserver.shm.table` detects and repairs that.
- POSIX record locks belong to the *process*, not to the file descriptor, so the one
  descriptor every child inherits across fork works as is, and a child does not
  inherit its parent's locks. Open-file-description (OFD) locks would belong to the
  description the children share with the supervisor, i.e. every process would be the
  same owner; they are not used.
- Locking never touches the file's data; byte ranges past EOF are fine, so the file
  stays empty. It lives in /dev/shm (tmpfs, local) and is unlinked at once unless a
  path is asked for (a standalone tool can then :meth:`LockSet.open` it).

Rules the callers keep (all enforced or documented where they bite):

- Closing *any* descriptor of the lock file drops *all* of this process's locks on it.
  The file is unlinked, so nobody opens it by accident; never close ``fd`` in a child.
- Record locks of one process do not exclude each other: taking a stripe the process
  already holds succeeds at once and the first release frees it. One process therefore
  holds at most one stripe at a time; a nested :meth:`LockSet.acquire` raises
  RuntimeError instead of silently losing mutual exclusion (and holding one stripe at a
  time also rules out deadlocks between processes).

Measured lock+unlock cost: ``python -m loadtest.shm_bench``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import tempfile
import weakref

# struct flock for F_GETLK on Linux (short type, short whence, off_t start, off_t len,
# pid_t pid); fcntl() copies it into a larger buffer, so trailing padding is harmless.
_FLOCK = struct.Struct("@hhqqi")


def _default_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def _after_fork(ref: weakref.ReferenceType[LockSet]) -> None:
    locks = ref()
    if locks is not None:
        locks.pid = os.getpid()
        locks.held = -1  # record locks are not inherited by fork


class LockSet:
    """Exclusive locks ``0 .. size-1`` on one inherited lock file.

    ``pid`` is this process's pid, refreshed after every fork (so the hot path never
    pays for ``os.getpid()``); ``held`` is the lock this process holds, or -1.
    """

    __slots__ = ("fd", "path", "size", "pid", "held", "__weakref__")

    def __init__(self, fd: int, path: str | None) -> None:
        self.fd = fd
        self.path = path  # None: the file is already unlinked
        self.size = 0
        self.pid = os.getpid()
        self.held = -1
        os.register_at_fork(after_in_child=lambda ref=weakref.ref(self): _after_fork(ref))

    @classmethod
    def create(cls, *, path: str | None = None, directory: str | None = None) -> LockSet:
        """A new lock file: unlinked at once, or kept at ``path`` for :meth:`open`."""
        if path is not None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            return cls(fd, path)
        fd, tmp = tempfile.mkstemp(prefix="natserver-locks-", dir=directory or _default_dir())
        os.unlink(tmp)
        return cls(fd, None)

    @classmethod
    def open(cls, path: str) -> LockSet:
        """Join the locks of a LockSet created with a ``path`` (standalone tools)."""
        return cls(os.open(path, os.O_RDWR), path)

    def reserve(self, count: int) -> int:
        """Reserve ``count`` consecutive locks; returns the first one's number."""
        if count < 1:
            raise ValueError("reserve at least one lock")
        first = self.size
        self.size += count
        return first

    def acquire(self, i: int) -> None:
        """Take lock ``i``, waiting as long as a live process holds it."""
        if self.held >= 0:
            raise RuntimeError(f"lock {i} requested while this process holds lock {self.held}")
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, i)
        self.held = i

    def try_acquire(self, i: int) -> bool:
        """Take lock ``i`` if nobody holds it; False if another process does."""
        if self.held >= 0:
            raise RuntimeError(f"lock {i} requested while this process holds lock {self.held}")
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, i)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
        self.held = i
        return True

    def release(self, i: int) -> None:
        self.held = -1
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, i)

    def holder(self, i: int) -> int:
        """Pid of *another* process holding lock ``i``, 0 if none (Linux F_GETLK layout)."""
        query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, i, 1, 0)
        kind, _, _, _, pid = _FLOCK.unpack(fcntl.fcntl(self.fd, fcntl.F_GETLK, query))
        return 0 if kind == fcntl.F_UNLCK else pid

    def close(self, *, unlink: bool = False) -> None:
        """Close the file (this drops every lock this process holds on it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if unlink and self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None
