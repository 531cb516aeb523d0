"""natserver.sip.edits: splices applied once, in offset order, overlaps refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natserver.sip.edits import Edits
from natserver.sip.message import Message
from tests.unit import sip_torture as T

BUF = b"0123456789abcdefghij"


def test_no_edits_returns_the_buffer() -> None:
    assert Edits().apply(BUF) is BUF
    assert Edits().apply(BUF, 5) == b"01234"


def test_replace_insert_delete_in_offset_order() -> None:
    e = Edits()
    e.replace(10, 12, b"AB")      # "ab" -> "AB"
    e.insert(0, b"<")
    e.delete(3, 5)                # "34"
    e.insert(20, b">")
    assert e.apply(BUF) == b"<012" + b"56789AB" + b"cdefghij>"
    assert len(e) == 4
    assert list(e) == [(0, 0, b"<"), (3, 5, b""), (10, 12, b"AB"), (20, 20, b">")]


def test_inserts_at_one_offset_keep_call_order_and_first_goes_ahead() -> None:
    e = Edits()
    e.insert(5, b"a")
    e.insert(5, b"b")
    e.insert(5, b"VIA", first=True)
    e.replace(5, 7, b"__")        # a replacement starting there comes after the inserts
    e.insert(7, b"c")             # an insert at its end comes after it
    assert e.apply(BUF) == b"01234VIAab__c789abcdefghij"


@pytest.mark.parametrize(("first", "second"), [
    ((2, 6), (5, 8)), ((2, 6), (0, 3)), ((2, 6), (3, 4)), ((2, 6), (2, 6)), ((3, 4), (0, 10)),
    ((2, 6), (4, 4)),  # an insert strictly inside a replaced span
])
def test_overlapping_edits_are_refused(first: tuple[int, int], second: tuple[int, int]) -> None:
    e = Edits()
    e.replace(*first, b"x")
    with pytest.raises(ValueError):
        e.replace(*second, b"y")
    assert len(e) == 1


def test_touching_edits_are_fine() -> None:
    e = Edits()
    e.replace(2, 4, b"x")
    e.replace(4, 6, b"y")
    e.insert(2, b"<")
    e.insert(6, b">")
    assert e.apply(BUF) == b"01<xy>6789abcdefghij"


def test_identical_edits_apply_once() -> None:
    e = Edits()
    e.replace(2, 4, b"xx")
    e.replace(2, 4, b"xx")
    e.delete(8, 9)
    e.delete(8, 9)
    e.insert(12, b"!")
    e.insert(12, b"!")
    assert e.apply(BUF) == b"01xx4567" + b"9ab!cdefghij"
    assert len(e) == 3


def test_bad_spans() -> None:
    with pytest.raises(ValueError):
        Edits().replace(5, 4, b"")
    with pytest.raises(ValueError):
        Edits().insert(-1, b"")
    e = Edits()
    e.insert(15, b"x")
    with pytest.raises(ValueError):
        e.apply(BUF, 10)          # beyond the part of the buffer sent


def test_covers() -> None:
    e = Edits()
    e.delete(2, 8)
    e.insert(10, b"x")
    assert e.covers(2, 8) and e.covers(3, 5)
    assert not e.covers(1, 5) and not e.covers(7, 9) and not e.covers(10, 10)


def test_copy_is_independent() -> None:
    e = Edits()
    e.insert(1, b"a")
    c = e.copy()
    c.insert(2, b"b")
    assert len(e) == 1 and len(c) == 2


def test_delta_and_region_crossing() -> None:
    e = Edits()
    e.replace(2, 4, b"")          # -2, outside
    e.replace(10, 12, b"ABCD")    # +2, inside
    e.insert(15, b"xyz")          # +3, inside
    assert e.delta(10, 20) == 5
    assert e.delta(0, 5) == -2
    e.replace(8, 11 - 1, b"")     # ends at 10: touches, does not cross
    assert e.delta(10, 20) == 5
    e2 = Edits()
    e2.replace(8, 12, b"")
    with pytest.raises(ValueError):
        e2.delta(10, 20)


def test_body_helpers() -> None:
    m = Message.parse(T.request("MESSAGE", body="hello"))
    e = Edits()
    e.replace_body(m, b"bye")
    assert e.apply(m.buf).endswith(b"\r\n\r\nbye")
    e = Edits()
    e.append_body(m, b" world")
    assert e.apply(m.buf).endswith(b"\r\n\r\nhello world")
    assert e.delta(m.body_start, m.body_end) == 6


@settings(database=None, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 5), st.binary(max_size=4)),
                max_size=12))
def test_apply_equals_naive_splicing(ops: list[tuple[int, int, bytes]]) -> None:
    """Accepted edits give what applying them right to left on a copy gives."""
    e = Edits()
    accepted: list[tuple[int, int, bytes]] = []
    for start, length, data in ops:
        end = min(start + length, len(BUF))
        try:
            e.replace(start, end, data)
        except ValueError:
            continue
        if (start, end, data) not in accepted:
            accepted.append((start, end, data))
    expected = bytearray(BUF)
    # right to left; among inserts at one offset the later one goes in first
    order = sorted(range(len(accepted)), key=lambda i: (accepted[i][0], accepted[i][1], i))
    for i in reversed(order):
        start, end, data = accepted[i]
        expected[start:end] = data
    assert e.apply(BUF) == bytes(expected)
