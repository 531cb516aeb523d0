"""usrloc: records, slices for the pinger, ctl rows, and what happens to acknowledged
bindings when the database goes away (a stopped MariaDB; a SQLite file locked by
another writer) - on SQLite and MariaDB."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager

import pytest

from natserver.db import open_db
from natserver.db.url import parse_db_url
from natserver.modules.usrloc import Contact, ContactTooLong, State, iter_contacts, pack, unpack
from tests.helpers.regclient import contact_values, register
from tests.modules.conftest import SRC, cfg_text


def reg(h, user="alice", contact="<sip:alice@192.0.2.50:5062>", expires=None, headers=()):
    return h.final(register(user, "example.org", SRC, contact=contact, expires=expires,
                            headers=["X-No-Auth: yes", *headers]))


def db_rows(url):
    with open_db(url) as db:
        return sorted(db.select("location", ["username", "contact"]))


@pytest.fixture
def url(schema_url):
    """The test database; SQLite gives up on a lock after 50 ms instead of 5 s."""
    return schema_url + "?busy_timeout=50" if schema_url.startswith("sqlite") else schema_url


@pytest.fixture
def outage(request, url):
    """``with outage(): ...`` - the database cannot take writes (really)."""
    if url.startswith("sqlite"):
        path = parse_db_url(url).path

        @contextmanager
        def down():
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            try:
                yield
            finally:
                conn.execute("ROLLBACK")
                conn.close()
        return down
    server = request.getfixturevalue("mariadb_server")

    @contextmanager
    def stopped():
        server.stop()
        try:
            yield
        finally:
            server.start()
    return stopped


def test_record_round_trip():
    c = Contact(b"alice", b"sip:alice@10.0.0.1:5060;transport=udp", 1_700_000_600, 500,
                b"call-1@host", 42, 64, b"sip:203.0.113.7:4000", b"", b"UA/1.0",
                b"udp:1.2.3.4:5060", -1, b"ns-abc", 1_700_000_000, 1_700_000_000.25,
                State.LIVE, 1, 3)
    assert unpack(b"alice", pack(c, 512)) == c
    with pytest.raises(ContactTooLong):
        pack(Contact(b"a", b"sip:" + b"x" * 600), 512)


def test_slices_partition_the_table_for_the_pinger(make, schema_url):
    h = make(cfg_text(schema_url))
    for i in range(60):
        reg(h, user=f"u{i}", contact=f"<sip:u{i}@10.0.0.{i}>",
            headers=["X-Test-Nat: yes"] if i % 3 == 0 else [])
    seen = []
    for i in range(4):
        seen += [c.aor for c in iter_contacts(h.ctx, slice_index=i, slices=4, now=h.now)]
    assert sorted(seen) == sorted(f"u{i}".encode() for i in range(60))
    nated = {c.aor for c in iter_contacts(h.ctx, nated_only=True, now=h.now)}
    assert nated == {f"u{i}".encode() for i in range(0, 60, 3)}


def test_ctl_rows(make, schema_url):
    h = make(cfg_text(schema_url, db_mode=2))
    ul = h.ul
    reg(h, contact="<sip:alice@10.0.0.1>;q=0.5")
    [row] = ul.rpc_ul(h.ctx, ["show", "alice"])
    assert (row["aor"], row["contact"], row["q"], row["synced"]) == (
        "alice", "sip:alice@10.0.0.1", 0.5, False)
    assert ul.rpc_ul(h.ctx, ["flush"]) == {"left": 0}
    assert ul.rpc_ul(h.ctx, ["show"])[0]["synced"] is True
    assert ul.rpc_ul(h.ctx, ["add", "aliases", "help", "sip:alice@example.org"])
    assert ul.rpc_ul_show_contact(h.ctx, ["aliases", "help"])[0]["expires"] == "permanent"
    assert ul.rpc_ul(h.ctx, ["rm", "alice"]) == {"aor": "alice", "removed": 1}
    with pytest.raises(ValueError):
        ul.rpc_ul(h.ctx, ["show", "alice"])
    with pytest.raises(ValueError):
        ul.rpc_ul(h.ctx, ["rm", "alice"])
    ul.rpc_ul(h.ctx, ["flush"])
    assert db_rows(schema_url) == []


def test_load_merges_with_memory_winning(make, schema_url):
    h = make(cfg_text(schema_url, db_mode=2))
    reg(h, contact="<sip:alice@10.0.0.1>", expires=600)
    with open_db(schema_url) as db:
        for contact in ("sip:alice@10.0.0.1", "sip:alice@10.0.0.2"):
            db.insert("location", {"ruid": "r-" + contact, "username": "alice",
                                   "contact": contact, "expires": int(h.now) + 100,
                                   "callid": "old", "cseq": 1, "last_modified": 0})
    assert h.ul.load(h.now)
    got = {c.contact: c.callid for c in h.ul.get("location", b"alice", h.now)}
    assert got[b"sip:alice@10.0.0.2"] == b"old"
    assert got[b"sip:alice@10.0.0.1"] != b"old"


def test_graceful_stop_flushes_in_the_timer_process(make, schema_url):
    h = make(cfg_text(schema_url, db_mode=2))
    for i in range(20):
        reg(h, user=f"u{i}", contact=f"<sip:u{i}@10.0.0.{i}>")
    assert db_rows(schema_url) == []
    h.ul.shutdown(h.ctx)  # a SIP worker's shutdown writes nothing
    assert db_rows(schema_url) == []
    h.ctx.proc.kind = "timer"
    h.ul.shutdown(h.ctx)
    assert len(db_rows(schema_url)) == 20


def test_expired_write_back_contact_never_reaches_the_db(make, schema_url):
    h = make(cfg_text(schema_url, db_mode=2))
    reg(h, expires=60)
    h.timer(61)
    assert db_rows(schema_url) == [] and h.ul.tables["location"].count() == 0


def test_write_through_keeps_serving_when_the_db_is_down(make, url, outage):
    h = make(cfg_text(url, db_mode=1))
    reg(h, user="before", contact="<sip:before@10.0.0.9>")
    with outage():
        r = reg(h)
        assert r.status == 200 and contact_values(r.get("Contact"))
        assert h.ul.get("location", b"alice", h.now)[0].dirty == 1
        r = reg(h, user="before", contact="<sip:before@10.0.0.9>", expires=0)  # a removal
        assert r.status == 200
        h.timer()  # the flush fails quietly, everything stays dirty
        assert sum(1 for e in h.ul.tables["location"].scan() if e.value[43]) == 2
    h.timer()
    assert db_rows(url) == [("alice", "sip:alice@192.0.2.50:5062")]
    assert all(not c.dirty for c in h.ul.get("location", b"alice", h.now))
    assert h.ul.tables["location"].count() == 1  # the tombstone is gone too


def test_write_back_flushes_after_an_outage(make, url, outage):
    h = make(cfg_text(url, db_mode=2))
    with outage():
        for i in range(5):
            reg(h, user=f"u{i}", contact=f"<sip:u{i}@10.0.0.{i}>")
        h.timer()
    assert db_rows(url) == []
    h.timer()
    assert len(db_rows(url)) == 5


def test_db_only_answers_500_when_the_db_is_down(make, url, outage):
    h = make(cfg_text(url, db_mode=3))
    with outage():
        r = reg(h)
        assert r.status == 500 and r.reason == "Server Internal Error"
        assert r.get("P-Registrar-Error")
    assert reg(h).status == 200
    assert db_rows(url) == [("alice", "sip:alice@192.0.2.50:5062")]


@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
def test_load_is_retried_when_the_db_is_down_at_start(make, url, outage):
    with open_db(url) as db:
        db.insert("location", {"ruid": "r1", "username": "alice", "contact": "sip:alice@10.0.0.1",
                               "expires": 0, "callid": "c", "cseq": 1, "last_modified": 0})
    with outage():
        h = make(cfg_text(url, db_mode=2))
        assert h.ul.pending_load
        reg(h, user="bob", contact="<sip:bob@10.0.0.2>")
    h.timer()
    assert not h.ul.pending_load
    assert [c.contact for c in h.ul.get("location", b"alice", h.now)] == [b"sip:alice@10.0.0.1"]
    assert len(db_rows(url)) == 2
