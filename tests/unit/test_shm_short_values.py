"""natserver.shm.table: values shorter than value_size (``allow_shorter_values``).

A table sized for its largest record keeps smaller ones at their own size: read back as
written by every process, checksummed over what they hold, torn ones still refused.
"""

from __future__ import annotations

import os
import signal

import pytest

from natserver.shm import LockSet, SlotState, Table


@pytest.fixture
def locks():
    ls = LockSet.create()
    yield ls
    ls.close()


def make(locks: LockSet, value_size: int = 64, capacity: int = 8) -> Table:
    t = Table.create("short", capacity=capacity, key_size=8, value_size=value_size, stripes=1,
                     lockset=locks)
    t.allow_shorter_values()
    return t


def poke(table: Table, index: int, at: int, data: bytes) -> None:
    o = table._off + index * table.record_size + at
    table._m[o:o + len(data)] = data


def test_short_values_read_back_as_written(locks):
    t = make(locks)
    h = t.put(b"a", b"abc")
    t.add(b"b", b"")
    t.add(b"b", b"x" * 64)
    assert t.get(b"a") == b"abc" and t.get_at(*h) == b"abc"
    assert t.get_all(b"b") == [b"", b"x" * 64]
    assert t.update(b"a", lambda old: old + b"def") == b"abcdef"
    assert t.get(b"a") == b"abcdef"
    assert t.update(b"a", lambda old: b"z") == b"z" and t.get(b"a") == b"z"
    assert sorted((e.key, e.value) for e in t.scan()) == [
        (b"a", b"z"), (b"b", b""), (b"b", b"x" * 64)]
    assert t.update_all(b"b", lambda old: old[:1]) == [b"", b"x"]
    assert t.check() == []


def test_a_value_longer_than_the_table_is_still_refused(locks):
    t = make(locks, value_size=16)
    with pytest.raises(ValueError):
        t.put(b"a", b"y" * 17)
    assert t.get(b"a") is None and locks.held == -1


def test_only_processes_that_allow_them_write_short_values(locks):
    t = make(locks)
    plain = Table(t._m, locks, None)  # a second view without allow_shorter_values()
    with pytest.raises(ValueError):
        plain.put(b"a", b"abc")
    t.put(b"a", b"abc")
    assert plain.get(b"a") == b"abc"  # but every view reads them
    plain._v.release()
    plain._w.release()


def test_a_damaged_tail_is_a_torn_record(locks, caplog):
    t = make(locks)
    idx, gen = t.put(b"a", b"abc")
    t.put(b"b", b"defg")
    poke(t, idx, 1, (5).to_bytes(3, "little"))  # the length field, not the checksum
    assert t.get_at(idx, gen) is None
    assert t.get(b"a") is None and "is torn" in caplog.text
    assert t.get(b"b") == b"defg" and t.count() == 1 and t.check() == []


def test_a_byte_of_a_short_value_changed_is_a_torn_record(locks):
    t = make(locks)
    t.put(b"b", b"defg")
    idx, _ = t.put(b"a", b"abc")
    poke(t, idx, 21, b"\xee")
    assert b"a" not in [e.key for e in t.scan()]
    assert t.get(b"a") is None and t.get(b"b") == b"defg"


def test_writer_killed_inside_a_short_write_leaves_no_record(locks):
    t = make(locks)
    idx, _ = t.put(b"a", b"abc")
    poke(t, idx, 0, bytes([SlotState.WRITING]))
    t._w[t._sh] = os.getpid() + 100000  # a writer's pid left in the stripe header
    assert t.get(b"a") is None
    assert t.check() == [] and t.count() == 0


# ---- lookups in an empty stripe ------------------------------------------------------------

def test_lookup_in_an_empty_stripe_needs_no_lock(locks):
    """A miss on an empty stripe answers at once, even while another process holds the
    stripe's lock (a locked lookup would wait for it)."""
    t = make(locks)
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child holds stripe 0's lock until told
        locks.acquire(t._lock_base)
        os.write(ready_w, b"x")
        os.read(done_r, 1)
        os._exit(0)
    def waited(signum: int, frame: object) -> None:
        raise AssertionError("the lookup waited for the stripe lock")

    old = signal.signal(signal.SIGALRM, waited)
    try:
        assert os.read(ready_r, 1) == b"x"
        signal.alarm(5)
        assert t.get(b"a") is None and t.get_all(b"a") == [] and t.find(b"a") is None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        os.write(done_w, b"y")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)
    t.put(b"a", b"1")
    assert t.get(b"a") == b"1"


def test_empty_stripe_with_a_dead_writer_is_repaired_not_skipped(locks, caplog):
    t = make(locks)
    t._w[t._sh] = 999999  # a writer's pid left behind, no record counted
    assert t.get(b"a") is None
    assert "repaired" in caplog.text and t._w[t._sh] == 0
