"""Per-relay port tables (natserver/rtp/ports.py)."""

import pytest

from natserver.rtp.ports import PortsExhausted, PortTable, relay_slices


def test_slices_are_disjoint_even_aligned_and_cover_the_range():
    slices = relay_slices(35000, 65000, 3)
    assert len(slices) == 3
    ports = [p for lo, hi in slices for p in range(lo, hi + 1)]
    assert len(ports) == len(set(ports))
    assert all(lo % 2 == 0 and hi % 2 == 1 for lo, hi in slices)
    assert slices[0][0] == 35000 and slices[-1][1] == 64999
    assert relay_slices(35001, 35010, 2) == [(35002, 35005), (35006, 35009)]


def test_slices_refuse_too_small_ranges():
    with pytest.raises(ValueError):
        relay_slices(35000, 35002, 2)


def test_allocate_even_ports_in_shuffled_order_until_exhausted():
    t = PortTable(40000, 40019, seed=7)
    got = [t.allocate() for _ in range(10)]
    assert sorted(got) == list(range(40000, 40020, 2))
    assert got != sorted(got)                       # not a guessable sequence
    assert t.in_use == t.capacity == 10
    with pytest.raises(PortsExhausted):
        t.allocate()


def test_released_port_comes_back_last():
    t = PortTable(40000, 40009, seed=3)
    first = t.allocate()
    t.release(first)
    order = [t.allocate() for _ in range(5)]
    assert order[-1] == first


def test_try_bind_skips_refused_ports():
    t = PortTable(40000, 40009, seed=3)
    busy = set(range(40000, 40008, 2))
    assert t.allocate(lambda p: p not in busy) == 40008
    with pytest.raises(PortsExhausted):
        t.allocate(lambda p: p not in busy)
    assert t.in_use == 1


def test_claim_and_contains():
    t = PortTable(40000, 40009)
    t.claim(40004)
    assert 40004 in t and t.in_use == 1
    assert 40004 not in [t.allocate() for _ in range(4)]
    with pytest.raises(ValueError):
        t.claim(40005)
