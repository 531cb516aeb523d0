"""natserver.shm.locks: fcntl record locks shared by forked processes.

Exclusion between processes needs a second process, so these tests fork small helpers
that talk back through a pipe; every wait is bounded.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid

import pytest

from natserver.shm import LockSet

WAIT = 5.0


@pytest.fixture
def locks():
    ls = LockSet.create()
    yield ls
    ls.close()


def fork_holder(locks: LockSet, i: int, *, release_on: int | None = None) -> tuple[int, int]:
    """Fork a child that takes lock ``i``, writes b"L" to a pipe and holds the lock
    until it reads a byte from ``release_on`` (or forever). Returns (pid, read fd)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            locks.acquire(i)
            os.write(w, b"L")
            if release_on is None:
                while True:
                    time.sleep(1)
            os.read(release_on, 1)
            locks.release(i)
            os.write(w, b"U")
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def read_byte(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], WAIT)
    assert ready, "helper process did not answer in time"
    return os.read(fd, 1)


def reap(pid: int) -> int:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("helper did not exit")


def acquire_within(locks: LockSet, i: int, seconds: float) -> float:
    """Poll for lock ``i``; returns how long it took (fails after ``seconds``)."""
    start = time.monotonic()
    while not locks.try_acquire(i):
        assert time.monotonic() - start < seconds, f"lock {i} still held after {seconds}s"
        time.sleep(0.002)
    return time.monotonic() - start


def test_acquire_release_in_one_process(locks):
    first = locks.reserve(4)
    assert (first, locks.reserve(2), locks.size) == (0, 4, 6)
    locks.acquire(3)
    assert locks.held == 3
    locks.release(3)
    assert locks.held == -1
    assert locks.try_acquire(3) is True
    locks.release(3)
    with pytest.raises(ValueError):
        locks.reserve(0)


def test_nested_acquire_is_refused(locks):
    locks.acquire(1)
    try:
        with pytest.raises(RuntimeError):
            locks.acquire(2)
        with pytest.raises(RuntimeError):
            locks.try_acquire(1)
    finally:
        locks.release(1)


def test_lock_excludes_other_processes_until_released(locks):
    release_r, release_w = os.pipe()
    pid, r = fork_holder(locks, 7, release_on=release_r)
    try:
        assert read_byte(r) == b"L"
        assert locks.holder(7) == pid
        assert locks.try_acquire(7) is False
        assert locks.try_acquire(8) is True  # other bytes are other locks
        assert locks.holder(8) == 0  # our own lock is not reported to ourselves
        locks.release(8)
        os.write(release_w, b"x")
        assert read_byte(r) == b"U"
        acquire_within(locks, 7, WAIT)
        locks.release(7)
        assert os.WEXITSTATUS(reap(pid)) == 0
    finally:
        os.close(r)
        os.close(release_r)
        os.close(release_w)


def test_lock_of_a_process_killed_with_sigkill_is_released(locks):
    pid, r = fork_holder(locks, 2)
    try:
        assert read_byte(r) == b"L"
        assert locks.try_acquire(2) is False
        os.kill(pid, signal.SIGKILL)
        assert os.WTERMSIG(reap(pid)) == signal.SIGKILL
        waited = acquire_within(locks, 2, WAIT)
        locks.release(2)
        assert waited < WAIT
    finally:
        os.close(r)


def test_blocking_acquire_waits_for_the_holder(locks):
    release_r, release_w = os.pipe()
    pid, r = fork_holder(locks, 0, release_on=release_r)
    try:
        assert read_byte(r) == b"L"
        start = time.monotonic()
        os.write(release_w, b"x")
        locks.acquire(0)  # blocks until the child's release
        locks.release(0)
        assert time.monotonic() - start < WAIT
        assert read_byte(r) == b"U"
        reap(pid)
    finally:
        for fd in (r, release_r, release_w):
            os.close(fd)


def test_child_gets_its_own_pid_and_no_inherited_lock_state(locks):
    locks.acquire(5)  # held by the parent while it forks
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ok = locks.pid == os.getpid() and locks.held == -1
            # the child does not own the parent's lock: it cannot take it
            ok = ok and locks.try_acquire(5) is False
            os.write(w, b"1" if ok else b"0")
            code = 0
        finally:
            os._exit(code)
    try:
        os.close(w)
        assert read_byte(r) == b"1"
        reap(pid)
        assert locks.pid == os.getpid()
    finally:
        locks.release(5)
        os.close(r)


def test_named_lock_file_is_shared_with_an_unrelated_process(tmp_path):
    path = str(tmp_path / f"locks-{uuid.uuid4().hex}")
    locks = LockSet.create(path=path)
    try:
        locks.acquire(4)
        probe = ("import sys; from natserver.shm import LockSet; "
                 "ls = LockSet.open(sys.argv[1]); "
                 "print(ls.try_acquire(4), ls.try_acquire(5) if not ls.held >= 0 else 'held')")
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=root)
        out = subprocess.run([sys.executable, "-c", probe, path], capture_output=True,
                             text=True, timeout=30, env=env, check=True).stdout.split()
        assert out == ["False", "True"]
        locks.release(4)
    finally:
        locks.close(unlink=True)
    assert not os.path.exists(path)


def test_anonymous_lock_file_is_unlinked_at_once():
    ls = LockSet.create()
    try:
        assert ls.path is None
        target = os.readlink(f"/proc/self/fd/{ls.fd}")
        assert target.endswith(" (deleted)")
        assert not os.path.exists(target[:-len(" (deleted)")])
    finally:
        ls.close()
