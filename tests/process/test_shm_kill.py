"""SIGKILL a process inside a table operation: nobody wedges, nothing torn shows.

The moments are made real rather than mocked: a writer process is frozen with SIGSTOP,
inspected through the shared mapping (its pid in a stripe header means it is inside a
write; a WRITING slot means the payload is half copied) and only then SIGKILLed. Large
values make the write window most of the writer's time, so few tries are needed.
"""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import struct
import time
import zlib

import pytest

from natserver.shm import LockSet, SlotState, Table, TableFull

HEAD = struct.Struct("<QQQ")  # seq, writer, check
CHECK = 0x9E3779B97F4A7C15
WAIT = 5.0


def make_value(size: int, seq: int, writer: int) -> bytes:
    head = HEAD.pack(seq, writer, (seq * 31 + writer) ^ CHECK)
    return head + bytes([seq % 251]) * (size - HEAD.size)


def check_value(v: bytes) -> int:
    """The value's seq; AssertionError if any byte of it is not from one write."""
    seq, writer, check = HEAD.unpack_from(v)
    assert check == (seq * 31 + writer) ^ CHECK, "torn value header"
    assert v.count(bytes([seq % 251]), HEAD.size) == len(v) - HEAD.size, "torn value body"
    return seq


def key(i: int) -> bytes:
    return b"key-%d" % i


def writer_loop(table: Table, me: int, keys: int) -> None:
    """Random writes forever (until killed)."""
    rnd = random.Random(me)
    vs = table.value_size
    seq = me * 10 ** 9
    while True:
        seq += 1
        k = key(rnd.randrange(keys))
        op = rnd.randrange(4)
        try:
            if op == 0:
                table.put(k, make_value(vs, seq, me))
            elif op == 1:
                table.update(k, lambda old: make_value(vs, seq, me))
            elif op == 2:
                table.add(k, make_value(vs, seq, me))
            else:
                table.delete(k)
        except TableFull:
            table.delete(k)


def fork(fn, *args) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        finally:
            os._exit(code)
    return pid


def kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def writing_slots(table: Table) -> list[int]:
    m, off, rsz = table._m, table._off, table.record_size
    return [i for i in range(table.capacity) if m[off + i * rsz] == SlotState.WRITING]


def busy_stripes(table: Table) -> list[int]:
    return [s for s in range(table.stripes) if table._w[table._sh + 4 * s]]


def stop_inside_write(pid: int, table: Table, *, want_torn: bool, limit: float) -> list[int]:
    """Freeze ``pid`` until it is caught inside a write; returns the WRITING slots.

    Leaves the process stopped; fails after ``limit`` seconds of tries.
    """
    rnd = random.Random(pid)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        select.select([], [], [], rnd.uniform(0, 0.003))
        os.kill(pid, signal.SIGSTOP)
        _, status = os.waitpid(pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), "writer died on its own"
        torn = writing_slots(table)
        if busy_stripes(table) and (torn or not want_torn):
            return torn
        os.kill(pid, signal.SIGCONT)
    raise AssertionError("never caught the writer inside a write")


def assert_consistent(table: Table, keys: int) -> None:
    for i in range(keys):
        for v in table.get_all(key(i)):
            check_value(v)
    entries = list(table.scan())
    for e in entries:
        check_value(e.value)
    assert table.check() == []
    assert table.count() == len(entries)


@pytest.fixture
def big_table():
    locks = LockSet.create()
    table = Table.create("victim", capacity=64, key_size=16, value_size=256 * 1024,
                         stripes=4, lockset=locks)
    yield table
    table.close()
    locks.close()


def test_writer_killed_mid_write_leaves_no_torn_record(big_table, caplog):
    table = big_table
    keys = 24
    for i in range(keys):
        table.put(key(i), make_value(table.value_size, i, 0))
    caplog.set_level(logging.WARNING, logger="natserver.shm")
    for round_ in range(3):
        pid = fork(writer_loop, table, round_ + 1, keys)
        try:
            torn = stop_inside_write(pid, table, want_torn=True, limit=20)
            stripes = busy_stripes(table)
        finally:
            kill_and_reap(pid)
        assert torn and stripes
        for slot in torn:
            assert table._m[table._off + slot * table.record_size] == SlotState.WRITING
        assert_consistent(table, keys)  # locks every stripe: the dead writer's is free
        assert busy_stripes(table) == []
        for slot in torn:
            assert table._m[table._off + slot * table.record_size] != SlotState.WRITING
    repairs = [r for r in caplog.records if "died while writing" in r.getMessage()]
    assert len(repairs) >= 3


def test_killed_lock_holder_does_not_block_others(tmp_path):
    locks = LockSet.create()
    table = Table.create("held", capacity=32, key_size=16, value_size=8, stripes=2,
                         lockset=locks)
    counter = struct.Struct("<Q")
    table.put(b"hot", counter.pack(41))
    held_r, held_w = os.pipe()
    done_r, done_w = os.pipe()
    started_r, started_w = os.pipe()

    def hold_forever() -> None:
        def fn(old: bytes | None) -> bytes:
            os.write(held_w, b"H")
            while True:  # inside update(): the stripe lock is held
                time.sleep(1)

        table.update(b"hot", fn)

    def contend() -> None:
        start = time.monotonic()
        os.write(started_w, b"S")  # the parent times its exclusion window from here
        table.update(b"hot", lambda old: counter.pack(counter.unpack(old)[0] + 1))
        os.write(done_w, struct.pack("<d", time.monotonic() - start))

    holder = fork(hold_forever)
    contender = 0
    try:
        assert select.select([held_r], [], [], WAIT)[0], "holder never took the lock"
        assert os.read(held_r, 1) == b"H"
        lock = table._lock_base + zlib.crc32(b"hot") % table.stripes  # documented hash
        assert locks.holder(lock) == holder
        contender = fork(contend)
        assert select.select([started_r], [], [], WAIT)[0] and os.read(started_r, 1) == b"S"
        assert not select.select([done_r], [], [], 0.3)[0], "the lock did not exclude"
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
        holder = 0
        assert select.select([done_r], [], [], WAIT)[0], "lock not free after SIGKILL"
        (waited,) = struct.unpack("<d", os.read(done_r, 8))
        assert 0.3 <= waited < 0.3 + WAIT
        _, status = os.waitpid(contender, 0)
        contender = 0
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        # the holder's fn never returned, so it wrote nothing; the contender's +1 counts
        assert counter.unpack(table.get(b"hot"))[0] == 42
        assert table.check() == []
    finally:
        for pid in (holder, contender):
            if pid:
                kill_and_reap(pid)
        for fd in (held_r, held_w, done_r, done_w, started_r, started_w):
            os.close(fd)
        table.close()
        locks.close()


def survivor(table: Table, me: int, deadline: float, out_w: int) -> None:
    """Bump shared counters until ``deadline``; report every acknowledged version."""
    rnd = random.Random(me)
    vs = table.value_size
    acks = []
    while time.monotonic() < deadline:
        i = rnd.randrange(8)

        def bump(old: bytes | None) -> bytes:
            return make_value(vs, 1 if old is None else check_value(old) + 1, me)

        acks.append((i, check_value(table.update(b"ctr-%d" % i, bump))))
    data = struct.pack(f"<{2 * len(acks)}Q", *(x for pair in acks for x in pair))
    os.write(out_w, struct.pack("<I", len(data)))
    view = memoryview(data)
    while view:
        view = view[os.write(out_w, view[:65536]):]


def read_report(fd: int) -> list[tuple[int, int]]:
    def read_exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            assert select.select([fd], [], [], WAIT)[0], "no report from a survivor"
            chunk = os.read(fd, n - len(buf))
            assert chunk
            buf += chunk
        return buf

    (size,) = struct.unpack("<I", read_exact(4))
    flat = struct.unpack(f"<{size // 8}Q", read_exact(size))
    return list(zip(flat[::2], flat[1::2]))


def test_repeated_kills_under_load_lose_no_acknowledged_update(tmp_path):
    locks = LockSet.create()
    table = Table.create("load", capacity=64, key_size=16, value_size=64 * 1024,
                         stripes=2, lockset=locks)
    duration = 2.0
    deadline = time.monotonic() + duration
    pipes = [os.pipe() for _ in range(2)]
    survivors = [fork(survivor, table, 1 + n, deadline, pipes[n][1]) for n in range(2)]
    kills = 0
    try:
        while time.monotonic() < deadline - 0.3:
            victim = fork(writer_loop, table, 100 + kills, 8)
            try:
                stop_inside_write(victim, table, want_torn=False, limit=5)
            finally:
                kill_and_reap(victim)
            kills += 1
        reports = [read_report(r) for r, _ in pipes]
        for pid in survivors:
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        survivors = []
    finally:
        for pid in survivors:
            kill_and_reap(pid)
        for r, w in pipes:
            os.close(r)
            os.close(w)
    try:
        assert kills >= 3
        assert all(len(rep) > 20 for rep in reports)
        for i in range(8):
            acked = [v for rep in reports for k, v in rep if k == i]
            assert len(acked) == len(set(acked)), "a version acknowledged twice"
            if acked:
                assert check_value(table.get(b"ctr-%d" % i)) >= max(acked)
        assert table.check() == []
        for e in table.scan():
            check_value(e.value)
    finally:
        table.close()
        locks.close()
