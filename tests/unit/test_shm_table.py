"""natserver.shm.table, natserver.shm.counters and the Tables builder, in one process.

Collisions, chains and wraparound are produced with keys chosen by their documented
hash (stripe = crc32 % stripes, home = crc32 // stripes % slots_per_stripe). Torn
records are produced by writing into the mapping at the documented record offsets.
"""

from __future__ import annotations

import os
import random
import struct
import uuid
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natserver.config import Config
from natserver.errors import TableFull
from natserver.shm import (
    CFG_SIZES, Entry, LockSet, ProcSlots, SlotState, Table, Tables, capacities,
    default_stripes,
)

VS = 8


def val(n: int) -> bytes:
    return struct.pack("<Q", n)


def num(v: bytes | None) -> int | None:
    return None if v is None else struct.unpack("<Q", v)[0]


@pytest.fixture
def locks():
    ls = LockSet.create()
    yield ls
    ls.close()


def make(locks: LockSet, capacity: int = 8, stripes: int = 1, key_size: int = 16,
         value_size: int = VS, name: str = "t") -> Table:
    return Table.create(name, capacity=capacity, key_size=key_size, value_size=value_size,
                        stripes=stripes, lockset=locks)


def home_of(table: Table, key: bytes) -> tuple[int, int]:
    """``(stripe, home index entry)`` of ``key`` (the documented hash)."""
    h = zlib.crc32(key)
    return h % table.stripes, h // table.stripes % (2 * (table.capacity // table.stripes))


def keys_at(table: Table, home: int, count: int, stripe: int = 0) -> list[bytes]:
    """``count`` distinct keys of stripe ``stripe`` whose home index entry is ``home``."""
    out = []
    i = 0
    while len(out) < count:
        key = b"k%d" % i
        if home_of(table, key) == (stripe, home):
            out.append(key)
        i += 1
    return out


def entries(table: Table, stripe: int = 0) -> dict[int, int]:
    """The stripe's index as {entry position: record index} (occupied entries only)."""
    isz = 2 * (table.capacity // table.stripes)
    start = table._ix + 2 * stripe * isz
    w = table._w
    return {j: w[start + 2 * j + 1] - 1 for j in range(isz) if w[start + 2 * j + 1]}


def slot_state(table: Table, index: int) -> int:
    return table._m[table._off + index * table.record_size]


def poke(table: Table, index: int, at: int, data: bytes) -> None:
    """Write ``data`` at byte ``at`` of record ``index`` (the documented layout)."""
    o = table._off + index * table.record_size + at
    table._m[o:o + len(data)] = data


# ---- basic operations --------------------------------------------------------------

def test_put_get_roundtrip_and_missing_key(locks):
    t = make(locks)
    assert t.get(b"a") is None
    t.put(b"a", val(1))
    t.put(b"b", val(2))
    assert num(t.get(b"a")) == 1 and num(t.get(b"b")) == 2
    assert t.get(b"c") is None
    assert t.count() == 2
    assert t.check() == []


def test_put_replaces_in_place_and_keeps_the_handle(locks):
    t = make(locks)
    first = t.put(b"a", val(1))
    again = t.put(b"a", val(2))
    assert again == first
    assert num(t.get(b"a")) == 2
    assert t.count() == 1
    assert num(t.get_at(*first)) == 2


def test_empty_and_binary_keys_up_to_key_size(locks):
    t = make(locks, key_size=4)
    t.put(b"", val(1))
    t.put(b"\x00\xff\x00\xff", val(2))
    t.put(b"\x00\xff\x00", val(3))  # a prefix is another key
    assert [num(t.get(k)) for k in (b"", b"\x00\xff\x00\xff", b"\x00\xff\x00")] == [1, 2, 3]


def test_key_too_long_and_wrong_value_size_raise_value_error(locks):
    t = make(locks, key_size=4)
    with pytest.raises(ValueError):
        t.put(b"12345", val(1))
    with pytest.raises(ValueError):
        t.get(b"12345")
    with pytest.raises(ValueError):
        t.put(b"a", b"short")
    with pytest.raises(ValueError):
        t.add(b"a", b"x" * (VS + 1))
    with pytest.raises(ValueError):
        t.update(b"a", lambda old: b"bad")
    assert t.get(b"a") is None  # nothing was written, no lock left behind
    assert locks.held == -1
    t.put(b"a", val(1))
    with pytest.raises(ValueError):
        t.update(b"a", lambda old: b"bad")
    assert num(t.get(b"a")) == 1


def test_add_is_a_multimap_get_returns_the_first(locks):
    t = make(locks)
    t.add(b"aor", val(1))
    t.add(b"aor", val(2))
    t.add(b"aor", val(3))
    t.add(b"other", val(9))
    assert [num(v) for v in t.get_all(b"aor")] == [1, 2, 3]
    assert num(t.get(b"aor")) == 1
    t.put(b"aor", val(10))  # replaces the first only
    assert [num(v) for v in t.get_all(b"aor")] == [10, 2, 3]
    assert t.get_all(b"none") == []
    assert t.count() == 4


def test_delete_removes_the_first_record(locks):
    t = make(locks)
    assert t.delete(b"a") is False
    t.add(b"a", val(1))
    t.add(b"a", val(2))
    assert t.delete(b"a") is True
    assert [num(v) for v in t.get_all(b"a")] == [2]
    assert t.delete(b"a") is True
    assert t.delete(b"a") is False
    assert t.count() == 0
    assert t.check() == []


def test_delete_if_deletes_matching_records_only(locks):
    t = make(locks)
    for i in range(5):
        t.add(b"a", val(i))
    t.add(b"b", val(2))
    assert t.delete_if(b"a", lambda v: num(v) % 2 == 0) == 3
    assert [num(v) for v in t.get_all(b"a")] == [1, 3]
    assert num(t.get(b"b")) == 2
    assert t.delete_if(b"a", lambda v: False) == 0
    assert t.count() == 3


def test_update_inserts_modifies_deletes_and_returns_the_new_value(locks):
    t = make(locks)
    seen = []

    def bump(old):
        seen.append(old)
        return val((num(old) or 0) + 1)

    assert num(t.update(b"c", bump)) == 1
    assert num(t.update(b"c", bump)) == 2
    assert seen == [None, val(1)]
    assert num(t.get(b"c")) == 2
    assert t.update(b"c", lambda old: None) is None
    assert t.get(b"c") is None
    assert t.update(b"c", lambda old: None) is None  # absent stays absent
    assert t.count() == 0


def test_update_same_value_keeps_record_and_handle(locks):
    t = make(locks)
    h = t.put(b"a", val(5))
    assert t.update(b"a", lambda old: old) == val(5)
    assert t.find(b"a") == h


def test_update_fn_exception_writes_nothing_and_releases_the_lock(locks):
    t = make(locks)
    t.put(b"a", val(1))

    def boom(old):
        raise KeyError("from fn")

    with pytest.raises(KeyError):
        t.update(b"a", boom)
    with pytest.raises(KeyError):
        t.update(b"new", boom)
    assert locks.held == -1
    assert num(t.get(b"a")) == 1 and t.get(b"new") is None


def test_update_all_modifies_and_deletes_but_never_inserts(locks):
    t = make(locks)
    assert t.update_all(b"a", lambda v: val(0)) == []
    assert t.get(b"a") is None
    for i in range(4):
        t.add(b"a", val(i))
    kept = t.update_all(b"a", lambda v: None if num(v) == 2 else val(num(v) * 10))
    assert [num(v) for v in kept] == [0, 10, 30]
    assert [num(v) for v in t.get_all(b"a")] == [0, 10, 30]
    assert t.count() == 3


def test_nested_table_call_from_fn_is_refused(locks):
    t = make(locks)
    other = make(locks, name="other")
    t.put(b"a", val(1))
    with pytest.raises(RuntimeError):
        t.update(b"a", lambda old: other.get(b"x"))
    assert locks.held == -1
    assert num(t.get(b"a")) == 1


# ---- handles -----------------------------------------------------------------------

def test_handles_find_the_record_until_it_is_deleted(locks):
    t = make(locks)
    idx, gen = t.put(b"tx", val(1))
    assert t.find(b"tx") == (idx, gen)
    assert num(t.get_at(idx, gen)) == 1
    assert num(t.update_at(idx, gen, lambda v: val(num(v) + 1))) == 2
    assert num(t.get(b"tx")) == 2
    assert t.delete_at(idx, gen) is True
    assert t.get_at(idx, gen) is None
    assert t.delete_at(idx, gen) is False
    called = []
    assert t.update_at(idx, gen, lambda v: called.append(v) or v) is None
    assert called == []
    assert t.get(b"tx") is None


def test_a_reused_record_slot_gets_a_new_generation(locks):
    t = make(locks, capacity=1)
    idx, gen = t.put(b"tx", val(1))
    t.delete(b"tx")
    idx2, gen2 = t.put(b"other", val(2))
    assert (idx2, gen2) == (idx, gen + 1)
    assert t.get_at(idx, gen) is None
    assert num(t.get_at(idx2, gen2)) == 2


def test_records_do_not_move_when_others_are_deleted(locks):
    t = make(locks, capacity=16)
    handles = {b"k%d" % i: t.put(b"k%d" % i, val(i)) for i in range(12)}
    for i in range(0, 12, 2):
        t.delete(b"k%d" % i)
    for i in range(1, 12, 2):
        assert num(t.get_at(*handles[b"k%d" % i])) == i
        assert t.find(b"k%d" % i) == handles[b"k%d" % i]


def test_update_at_none_deletes(locks):
    t = make(locks)
    h = t.add(b"a", val(1))
    assert t.update_at(*h, lambda v: None) is None
    assert t.get(b"a") is None and t.count() == 0


def test_handle_index_out_of_range_raises(locks):
    t = make(locks)
    for bad in (-1, t.capacity):
        with pytest.raises(ValueError):
            t.get_at(bad, 1)


def test_generation_wraps_to_one_never_zero(locks):
    t = make(locks)
    poke(t, 0, 8, struct.pack("=I", 0xFFFFFFFF))  # the last generation slot 0 had
    assert t.add(b"a", val(1)) == (0, 1)


# ---- index chains, deletion, wraparound ----------------------------------------------

def test_colliding_keys_chain_and_survive_deletes_in_the_middle(locks):
    t = make(locks)
    a, b, c = keys_at(t, 2, 3)
    for i, k in enumerate((a, b, c)):
        t.put(k, val(i))
    assert entries(t) == {2: 0, 3: 1, 4: 2}
    assert t.delete(b)
    assert entries(t) == {2: 0, 3: 2}  # c shifted back: no tombstone left
    assert num(t.get(c)) == 2
    assert t.delete(a)
    assert entries(t) == {2: 2}
    assert num(t.get(c)) == 2 and t.get(a) is None and t.get(b) is None
    assert t.check() == []


def test_backward_shift_leaves_entries_whose_home_is_after_the_hole(locks):
    t = make(locks)
    (a,) = keys_at(t, 2, 1)
    d, e = keys_at(t, 3, 2)
    for k in (a, d, e):
        t.put(k, val(0))
    assert entries(t) == {2: 0, 3: 1, 4: 2}
    t.delete(a)
    assert entries(t) == {3: 1, 4: 2}  # home 3 may not move to 2
    assert t.get(d) is not None and t.get(e) is not None
    t.delete(d)
    assert entries(t) == {3: 2}
    assert t.check() == []


def test_chain_wraps_around_the_end_of_the_index(locks):
    t = make(locks, capacity=8)  # 16 index entries
    keys = keys_at(t, 15, 3)
    (z,) = keys_at(t, 0, 1)
    for i, k in enumerate(keys + [z]):
        t.put(k, val(i))
    assert entries(t) == {15: 0, 0: 1, 1: 2, 2: 3}
    assert t.delete(keys[0])
    assert entries(t) == {15: 1, 0: 2, 1: 3}  # all shifted back across the wrap
    assert [num(t.get(k)) for k in keys + [z]] == [None, 1, 2, 3]
    assert t.delete(keys[1])
    assert entries(t) == {15: 2, 0: 3}
    assert t.check() == []


def test_backward_shift_across_the_wrap_leaves_an_entry_at_its_home(locks):
    t = make(locks, capacity=8)
    (p,) = keys_at(t, 15, 1)
    (q,) = keys_at(t, 0, 1)
    t.put(p, val(1))
    t.put(q, val(2))
    assert entries(t) == {15: 0, 0: 1}
    t.delete(p)
    assert entries(t) == {0: 1}  # q is at its home: it may not move to 15
    assert num(t.get(q)) == 2
    assert t.check() == []


def test_chain_wraps_within_one_stripe_of_several(locks):
    t = make(locks, capacity=16, stripes=2)  # 8 records, 16 entries per stripe
    keys = keys_at(t, 15, 2, stripe=1)
    for i, k in enumerate(keys):
        t.put(k, val(i))
    assert entries(t, 1) == {15: 8, 0: 9} and entries(t, 0) == {}
    assert [num(t.get(k)) for k in keys] == [0, 1]
    assert t.check() == []


def test_insert_delete_churn_keeps_probes_short(locks):
    t = make(locks, capacity=64)
    rnd = random.Random(7)
    live = [b"k%d" % i for i in range(48)]  # 75 % of the records
    for k in live:
        t.add(k, val(0))
    for n in range(3000):
        t.delete(live.pop(rnd.randrange(len(live))))
        live.append(b"n%d" % n)
        t.add(live[-1], val(n))
    stats = t.stats()
    assert stats["valid"] == 48 and stats["empty"] == 16
    assert len(entries(t)) == 48  # no garbage left in the index
    assert stats["longest_probe"] <= 24
    assert t.check() == []


# ---- full table ----------------------------------------------------------------------

def test_full_table_raises_table_full_with_its_name(locks):
    t = make(locks, capacity=8, name="tm")
    for i in range(8):
        t.add(b"k%d" % i, val(i))
    with pytest.raises(TableFull) as err:
        t.add(b"x", val(0))
    assert err.value.table == "tm"
    with pytest.raises(TableFull):
        t.put(b"x", val(0))
    with pytest.raises(TableFull):
        t.update(b"x", lambda old: val(0))
    assert t.get(b"x") is None
    assert t.put(b"k3", val(33)) == t.find(b"k3")  # replacing needs no free record
    assert t.update(b"k3", lambda old: val(34)) == val(34)
    t.delete(b"k5")
    t.put(b"x", val(7))
    assert num(t.get(b"x")) == 7
    assert t.count() == 8
    assert t.check() == []


def test_full_stripe_raises_even_when_other_stripes_have_room(locks):
    t = make(locks, capacity=8, stripes=2)  # 4 records per stripe
    for k in keys_at(t, 0, 4, stripe=0):
        t.add(k, val(0))
    with pytest.raises(TableFull):
        t.add(keys_at(t, 5, 1, stripe=0)[0], val(0))
    t.add(keys_at(t, 1, 1, stripe=1)[0], val(0))
    assert t.count() == 5


# ---- torn records ------------------------------------------------------------------

def test_record_left_writing_is_absent_and_its_slot_reusable(locks):
    t = make(locks, capacity=2)
    a, b = keys_at(t, 2, 2)
    ia = t.put(a, val(1))[0]
    t.put(b, val(2))
    poke(t, ia, 0, bytes([SlotState.WRITING]))  # a torn write of a
    assert [e.key for e in t.scan()] == [b]
    assert t.get(a) is None  # the lookup met the torn record: stripe repaired
    assert slot_state(t, ia) == SlotState.EMPTY
    assert num(t.get(b)) == 2
    assert t.put(a, val(3))[0] == ia  # the only free record slot
    assert num(t.get(a)) == 3
    assert t.count() == 2 and t.check() == []


def test_bad_checksum_is_absent_and_repaired(locks, caplog):
    t = make(locks)
    idx, gen = t.put(b"a", val(1))
    t.put(b"b", val(2))
    poke(t, idx, 20, b"\xee")  # one payload byte changed, crc not updated
    assert b"a" not in [e.key for e in t.scan()]
    assert t.get_at(idx, gen) is None
    assert t.get(b"a") is None
    assert "is torn" in caplog.text
    assert t.count() == 1
    assert t.check() == []
    t.put(b"a", val(4))
    assert num(t.get(b"a")) == 4


def test_corrupt_crc_field_is_reported_by_check_then_repaired_by_a_lookup(locks):
    t = make(locks)
    t.add(b"a", val(1))
    idx, _ = t.add(b"a", val(2))
    poke(t, idx, 4, b"\x00\x00\x00\x00")
    assert any("bad checksum" in p for p in t.check())
    assert t.get_all(b"a") == [val(1)]
    assert t.check() == []


def test_garbage_state_byte_is_reported_then_freed(locks):
    t = make(locks)
    idx, _ = t.put(b"a", val(1))
    poke(t, idx, 0, b"\x77")
    assert any("state 119" in p for p in t.check())
    assert t.get(b"a") is None
    assert t.check() == [] and slot_state(t, idx) == SlotState.EMPTY


def test_dead_writer_stripe_is_repaired_on_next_lock(locks, caplog):
    t = make(locks, capacity=16, stripes=2)
    keys = keys_at(t, 1, 3, stripe=0)
    for i, k in enumerate(keys):
        t.put(k, val(i))
    torn = t.find(keys[1])[0]
    # what a writer killed inside a write leaves: its pid in the stripe header and a
    # WRITING record
    t._w[t._sh] = 999999
    poke(t, torn, 0, bytes([SlotState.WRITING]))
    assert t.count() == 2  # count() repairs the flagged stripe first
    assert "pid 999999 died while writing" in caplog.text
    assert t._w[t._sh] == 0
    assert [num(t.get(k)) for k in keys] == [0, None, 2]
    assert t.check() == []


def test_repair_rebuilds_a_half_shifted_index(locks):
    t = make(locks)
    keys = keys_at(t, 4, 3)
    for i, k in enumerate(keys):
        t.put(k, val(i))
    # a delete killed half-way: record freed, its entry gone, the next not shifted back
    first = t.find(keys[0])[0]
    t._w[t._sh] = 4242
    poke(t, first, 0, bytes([SlotState.EMPTY]))
    start = t._ix + 2 * 4
    t._w[start] = t._w[start + 1] = 0
    assert num(t.get(keys[2])) == 2  # the lock repaired first; the index is whole again
    assert t.get(keys[0]) is None and num(t.get(keys[1])) == 1
    assert t.count() == 2 and t.check() == []


def test_repair_reindexes_a_record_written_but_not_indexed(locks):
    t = make(locks)
    idx, _ = t.put(b"a", val(1))
    start = t._ix + 2 * home_of(t, b"a")[1]
    t._w[start] = t._w[start + 1] = 0
    t._w[t._sh] = 4242  # killed between "record VALID" and "index entry written"
    assert num(t.get(b"a")) == 1
    assert t.check() == []


# ---- scans -------------------------------------------------------------------------

def test_scan_yields_every_record_with_handles_and_filters(locks):
    t = make(locks, capacity=64, stripes=4, key_size=8)
    want = {}
    for i in range(40):
        key = b"k%d" % i
        want[key] = t.put(key, val(i))
    found = list(t.scan())
    assert len(found) == 40 == t.count()
    for e in found:
        assert isinstance(e, Entry)
        assert want[e.key] == (e.index, e.gen)
        assert num(e.value) == int(e.key[1:])
        assert t.get_at(e.index, e.gen) == e.value
    odd = {e.key for e in t.scan(lambda k, v: num(v) % 2 == 1)}
    assert odd == {b"k%d" % i for i in range(1, 40, 2)}
    by_stripe = [{e.key for e in t.scan(stripes=[s])} for s in range(4)]
    assert set().union(*by_stripe) == set(want) and sum(map(len, by_stripe)) == 40
    assert {e.key for e in t} == set(want)
    with pytest.raises(ValueError):
        list(t.scan(stripes=[4]))


def test_scan_lets_the_consumer_modify_the_table(locks):
    t = make(locks, capacity=32, stripes=2)
    for i in range(10):
        t.put(b"k%d" % i, val(i))
    for e in t.scan(lambda k, v: num(v) < 5):  # no lock is held while yielding
        assert t.delete_at(e.index, e.gen)
    assert sorted(num(e.value) for e in t) == [5, 6, 7, 8, 9]


# ---- model check ---------------------------------------------------------------------

OPS = st.lists(
    st.tuples(st.sampled_from(["put", "add", "delete", "delete_if", "update", "update_all",
                               "handle"]),
              st.integers(0, 11), st.integers(0, 3)),
    max_size=80)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_random_operations_match_a_model_of_ordered_lists(locks, ops):
    """Records per key, oldest first; "the first record" is the oldest."""
    t = make(locks, capacity=12, stripes=2, name="model")
    model: dict[bytes, list[int]] = {}
    for seq, (op, k, arg) in enumerate(ops, start=1000):  # seq: a value never used twice
        key = b"key%d" % k
        recs = model.setdefault(key, [])
        try:
            if op == "put":
                t.put(key, val(seq))
                recs[:1] = [seq]
            elif op == "add":
                t.add(key, val(seq))
                recs.append(seq)
            elif op == "delete":
                assert t.delete(key) == bool(recs)
                recs[:1] = []
            elif op == "delete_if":  # drop the records whose value is 0 mod arg+1
                dropped = [r for r in recs if r % (arg + 1) == 0]
                assert t.delete_if(key, lambda x: num(x) % (arg + 1) == 0) == len(dropped)
                recs[:] = [r for r in recs if r % (arg + 1)]
            elif op == "update":  # arg 0 deletes, else replaces the first (or inserts)
                new = t.update(key, lambda old: None if arg == 0 else val(seq))
                assert new == (None if arg == 0 else val(seq))
                if arg == 0:
                    recs[:1] = []
                elif recs:
                    recs[0] = seq
                else:
                    recs.append(seq)
            elif op == "update_all":  # arg 0 deletes odd values, else bumps all
                kept = t.update_all(key, lambda x: None if arg == 0 and num(x) % 2 else
                                    val(num(x) + 2))
                recs[:] = [r + 2 for r in recs if not (arg == 0 and r % 2)]
                assert [num(x) for x in kept] == recs
            elif op == "handle" and recs:
                handle = t.find(key)
                assert num(t.get_at(*handle)) == recs[0]
                assert num(t.update_at(*handle, lambda x: val(seq))) == seq
                recs[0] = seq
        except TableFull:
            assert op in ("put", "add", "update") and not (op != "add" and recs)
        for key2, recs2 in model.items():
            assert [num(x) for x in t.get_all(key2)] == recs2
            assert num(t.get(key2)) == (recs2[0] if recs2 else None)
    assert t.count() == sum(map(len, model.values()))
    assert t.check() == []
    assert sorted((e.key, num(e.value)) for e in t.scan()) == sorted(
        (key, r) for key, recs in model.items() for r in recs)
    t.close()


def test_get_all_lists_records_oldest_first_across_deletes(locks):
    t = make(locks)
    for i in (1, 2, 3):
        t.add(b"aor", val(i))
    t.delete(b"aor")
    t.add(b"aor", val(4))
    t.delete_if(b"aor", lambda v: num(v) == 3)
    t.add(b"aor", val(5))
    assert [num(v) for v in t.get_all(b"aor")] == [2, 4, 5]


# ---- Tables builder and counters -----------------------------------------------------

def test_tables_build_sizes_from_cfg_with_headroom_and_a_summary():
    cfg = Config()
    caps = capacities(cfg)
    assert set(caps) == {name for name, _ in CFG_SIZES}
    assert caps["transactions"] == cfg.tm_table_size
    specs = {"transactions": (caps["transactions"], 64, 96), "location": (100, 32, 40)}
    tables = Tables.build(specs, proc_slots=3, counter_names=("a", "b"))
    try:
        tm = tables["transactions"]
        assert tm.capacity >= cfg.tm_table_size / 0.75
        assert tm.stripes == default_stripes(tm.capacity) and tm.capacity % tm.stripes == 0
        assert tables.get("location").capacity >= 134 and tables.get("nope") is None
        lines = tables.summary()
        assert lines[0].startswith("shm table transactions: ")
        assert "process slots: 3 x 2 counters" in lines[2]
        assert lines[-1].startswith("shm total:")
        assert tables.nbytes == tm.nbytes + tables["location"].nbytes + tables.procs.nbytes
        tm.put(b"branch", bytes(96))
        assert tables["transactions"].count() == 1
    finally:
        tables.close()


def test_default_stripes_scale_with_slots():
    assert default_stripes(64) == 1
    assert default_stripes(5462) == 16
    assert default_stripes(21846) == 64
    assert default_stripes(10 ** 7) == 128


def test_named_segments_can_be_attached_by_a_tool_and_are_unlinked():
    prefix = f"nstest-{uuid.uuid4().hex[:12]}"
    tables = Tables.build({"location": (50, 16, 8)}, proc_slots=2, counter_names=("x",),
                          shm_prefix=prefix)
    try:
        tables["location"].put(b"aor", val(5))
        tables.procs.writer(1).store([7])
        tool = Tables.attach(prefix, ["location"], counter_names=("x",))
        assert num(tool["location"].get(b"aor")) == 5
        tool["location"].put(b"aor2", val(6))
        assert tool.procs.totals() == {"x": 7}
        tool.close()
        assert num(tables["location"].get(b"aor2")) == 6
        assert os.path.exists(f"/dev/shm/{prefix}.location")
    finally:
        tables.close(unlink=True)
    assert not any(name.startswith(prefix) for name in os.listdir("/dev/shm"))


def test_table_attach_refuses_a_foreign_segment():
    prefix = f"nstest-{uuid.uuid4().hex[:12]}"
    procs = ProcSlots.create(1, ("a",), shm_name=prefix)
    ls = LockSet.create()
    try:
        with pytest.raises(ValueError):
            Table.attach(prefix, ls)
        with pytest.raises(ValueError):
            ProcSlots.attach(prefix, ("a", "b"))
    finally:
        procs.close(unlink=True)
        ls.close()


def test_proc_slots_heartbeats_counters_and_retirement():
    p = ProcSlots.create(3, ("requests", "replies", "errors"))
    try:
        p.claim(0, 1234, now=100.0)
        assert p.pid(0) == 1234 and p.heartbeat(0) == 100.0
        w = p.writer(0)
        w.beat(101.5)
        w.store([5, 6, 7])
        w.add(2, 3)
        p.store(2, [1, 1])  # fewer values than counters: the rest stay
        assert p.heartbeat(0) == 101.5
        assert p.values(0) == [5, 6, 10]
        assert p.totals() == {"requests": 6, "replies": 7, "errors": 10}
        p.release(0)  # the child died: totals keep its counts
        assert p.pid(0) == 0 and p.values(0) == [0, 0, 0]
        assert p.retired() == [5, 6, 10]
        assert p.totals() == {"requests": 6, "replies": 7, "errors": 10}
        p.claim(0, 5678, now=200.0)
        p.writer(0).store([1, 0, 0])
        assert p.totals()["requests"] == 7
        big = 2 ** 64 - 1
        p.writer(1).store([big])
        assert p.values(1)[0] == big
        with pytest.raises(ValueError):
            p.writer(3)
        with pytest.raises(ValueError):
            p.writer(0).store([1, 2, 3, 4])
    finally:
        p.close()


def test_proc_slots_refuse_duplicate_names():
    with pytest.raises(ValueError):
        ProcSlots.create(1, ("a", "a"))
