"""ShmStore: relay sessions in a real shared-memory table (natserver/rtp/store.py)."""

import os

import pytest

from natserver.rtp import protocol as P
from natserver.rtp.control import ControlConfig, ControlServer
from natserver.rtp.ports import PortTable
from natserver.rtp.session import DictStore, Session, SideState
from natserver.rtp.store import ShmStore, merge_packet_state, table_spec
from natserver.shm import LockSet, Table


@pytest.fixture
def table():
    locks = LockSet.create()
    capacity, key_size, value_size = table_spec(64)
    t = Table.create("rtp_sessions", capacity=capacity, key_size=key_size,
                     value_size=value_size, stripes=4, lockset=locks)
    yield t
    t.close()
    locks.close()


def session(callid=b"c1", tag=b"ft", media=1, port=20000) -> Session:
    s = Session(callid, [tag, b""], media, created=10.0, updated=10.0)
    s.sides[0].port, s.sides[1].port = port, port + 2
    return s


def test_put_replaces_by_ident_and_keeps_other_streams(table):
    store = ShmStore(table)
    store.put(session(media=1, port=20000))
    store.put(session(media=2, port=20004))
    store.put(session(tag=b"other", media=1, port=20008))
    again = session(media=1, port=20000)
    again.sides[0].sig_ip, again.sides[0].sig_port = "127.0.0.1", 4000
    store.put(again)
    got = {(s.tags[0], s.media): s for s in store.get(b"c1")}
    assert len(got) == 3 and len(table.get_all(b"c1")) == 3
    assert got[(b"ft", 1)].sides[0].sig_port == 4000
    assert got[(b"ft", 2)].sides[0].port == 20004
    assert store.find(b"c1", b"other", 1).sides[0].port == 20008
    assert store.find(b"c1", b"nobody", 1) is None


def test_delete_removes_only_that_stream(table):
    store = ShmStore(table)
    store.put(session(media=1))
    store.put(session(media=2))
    store.delete(session(media=1))
    assert [s.media for s in store.get(b"c1")] == [2]
    store.delete(session(media=2))
    assert store.get(b"c1") == [] and table.count() == 0


def test_iterate_sees_every_call(table):
    store = ShmStore(table)
    for i in range(10):
        store.put(session(callid=b"call-%d" % i))
    assert sorted(s.callid for s in store.iterate()) == sorted(b"call-%d" % i for i in range(10))


def test_write_back_merges_packet_state_when_no_command_came_between(table):
    store = ShmStore(table)
    s = session()
    store.put(s)
    relay = store.get(b"c1")[0]
    relay.sides[0].state = SideState.LATCHED
    relay.sides[0].peer_ip, relay.sides[0].peer_port = "192.0.2.1", 5000
    relay.sides[0].packets = 7
    relay.sides[1].last_packet = 12.0
    assert store.write_back(relay)
    got = store.get(b"c1")[0]
    assert got.sides[0].peer == ("192.0.2.1", 5000) and got.sides[0].state == SideState.LATCHED
    assert got.sides[0].packets == 7 and got.sides[1].last_packet == 12.0


def test_write_back_never_undoes_a_command(table):
    store = ShmStore(table)
    store.put(session())
    relay = store.get(b"c1")[0]            # the relay's copy
    cmd = store.get(b"c1")[0]              # a command on another relay, meanwhile
    cmd.updated = 11.0
    cmd.sides[1].updated = 11.0
    cmd.sides[1].state = SideState.SIGNALLED
    cmd.sides[1].peer_ip, cmd.sides[1].peer_port = "127.0.0.1", 6000
    store.put(cmd)
    relay.sides[0].packets = 3
    relay.sides[1].peer_ip = ""            # stale view of side 1
    store.write_back(relay)
    got = store.get(b"c1")[0]
    assert got.sides[1].peer == ("127.0.0.1", 6000) and got.updated == 11.0
    assert got.sides[0].packets == 3


def test_write_back_of_a_deleted_session_adds_nothing(table):
    store = ShmStore(table)
    assert not store.write_back(session())
    assert table.count() == 0


def test_counters_never_go_back():
    a, b = session(), session()
    a.sides[0].packets, b.sides[0].packets = 10, 4
    merged = merge_packet_state(a, b)
    assert merged.sides[0].packets == 10


def test_control_commands_run_the_same_over_shm_as_over_a_dict(table):
    """The executor's U/L/D flow gives the same replies and records on both stores."""
    base = 30000
    results = []
    for store in (DictStore(), ShmStore(table)):
        server = ControlServer(store, PortTable(base, base + 99, seed=1),
                               ControlConfig(advertise="127.0.0.1"))
        replies = []
        for line in (b"U c9 127.0.0.1 4000 ft", b"L c9 127.0.0.1 4002 ft tt",
                     b"U c9 127.0.0.1 4000 ft;2", b"Q c9 ft tt", b"D c9 ft tt"):
            reply, _ = server.stream(line, 100.0)
            replies.append(P.parse_reply(reply).text)
        results.append((replies, sorted(s.media for s in store.iterate())))
    assert results[0] == results[1]
    assert results[1][1] == []
