"""The storage interface on both backends: CRUD, upsert, transactions, errors,
reconnects against a real MariaDB that is killed and restarted, SQLite WAL under a
concurrent writer, and fork safety."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path

import pymysql
import pytest

from natserver.db import Database, DbIntegrityError, DbUnavailable, open_db
from natserver.db.schema import NEVER, create_schema
from natserver.db.url import parse_db_url
from natserver.errors import DbError
from tests.helpers.mariadb import PASSWORD, USER, MariaDB


@pytest.fixture
def db(db_url: str) -> Database:
    database = open_db(db_url)
    create_schema(database)
    yield database
    database.close()


def add_contact(db: Database, ruid: str, user: str = "alice", **extra: object) -> None:
    row = {"ruid": ruid, "username": user, "domain": "example.org",
           "contact": f"sip:{user}@192.0.2.1:{5060 + len(ruid)}", "expires": 2_000_000_000}
    row.update(extra)
    db.insert("location", row)


# -- db_url ---------------------------------------------------------------------------

def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_db_url("sqlite:///var/x/n.db").path == "/var/x/n.db"
    monkeypatch.chdir(tmp_path)
    assert parse_db_url("sqlite://rel/n.db").path == str(tmp_path / "rel" / "n.db")
    env = {"NATSERVER_STATE_DIR": str(tmp_path / "state")}
    for empty in ("", "sqlite://", "sqlite:"):
        url = parse_db_url(empty, env=env)
        assert (url.scheme, url.path) == ("sqlite", str(tmp_path / "state" / "natserver.db"))
    assert parse_db_url("sqlite:///x.db?busy_timeout=250").options == {"busy_timeout": 250}

    url = parse_db_url("mysql://ser:p%40ss%3Aw%2Frd%25@db.example:3307/ser%5Fdb?read_timeout=3")
    assert (url.user, url.password, url.host, url.port, url.database) == (
        "ser", "p@ss:w/rd%", "db.example", 3307, "ser_db")
    assert url.options["read_timeout"] == 3 and url.options["connect_timeout"] == 5
    assert "p@ss" not in url.redacted() and "***" in url.redacted()
    url = parse_db_url("mysql://u:p@h/db?unix_socket=/run/x.sock")
    assert (url.unix_socket, url.port) == ("/run/x.sock", 3306)
    assert parse_db_url("mysql://u:p@[::1]:3310/db").host == "::1"
    assert parse_db_url("mysql://u:p@[::1]:3310/db").port == 3310
    # An unencoded '@' in the password: the last '@' ends the credentials.
    assert parse_db_url("mysql://u:a@b@h/db").password == "a@b"


@pytest.mark.parametrize("bad", [
    "postgres://u:p@h/db", "mysql://u:p@h", "mysql://u:p@h/", "mysql://u:p@h:99999/db",
    "mysql://u:p@h/db?timeout=3", "sqlite:///x.db?busy_timeout=soon", "mysql://u:p@/db",
])
def test_bad_urls_are_db_errors(bad: str) -> None:
    with pytest.raises(DbError):
        parse_db_url(bad)


@pytest.mark.mariadb
def test_wrong_password_is_unavailable(mariadb_server: MariaDB, mariadb_url: str) -> None:
    db = open_db(mariadb_url.replace("%40", "X", 1))
    with pytest.raises(DbUnavailable, match="cannot connect"):
        db.select("version", ["table_name"])
    assert not db.ping()


@pytest.mark.mariadb
def test_unix_socket_url(mariadb_server: MariaDB, mariadb_url: str) -> None:
    name = mariadb_url.rsplit("/", 1)[1]
    db = open_db(mariadb_server.url(name, unix=True))
    create_schema(db)
    db.insert("subscriber", {"username": "sock", "domain": "d"})
    assert db.execute("SELECT CURRENT_USER()")[0][0] == f"{USER}@localhost"
    tcp = open_db(mariadb_url)
    assert tcp.select("subscriber", ["username"]) == [("sock",)]
    assert tcp.execute("SELECT CURRENT_USER()")[0][0] == f"{USER}@127.0.0.1"
    assert PASSWORD not in repr(tcp)


# -- CRUD -------------------------------------------------------------------------------

def test_crud(db: Database) -> None:
    rid = db.insert("subscriber", {"username": "alice", "domain": "example.org", "password": "a"})
    assert rid > 0
    db.insert("subscriber", {"username": "bob", "domain": "example.org", "password": "b"})
    db.insert("subscriber", {"username": "carol", "domain": "other.net", "password": "c"})
    assert db.select("subscriber", ["password"], {"username": "alice"}) == [("a",)]
    assert db.select("subscriber", ["id", "username"], {"username": "alice"})[0][0] == rid
    assert db.select("subscriber", ["username"], {"domain": "example.org"}, order_by="username DESC") == [
        ("bob",), ("alice",)]
    assert db.select("subscriber", ["username"], order_by=["domain", "username"], limit=2) == [
        ("alice",), ("bob",)]
    assert db.select("subscriber", ["username"], {"username": ["bob", "carol", "zed"]},
                     order_by="username") == [("bob",), ("carol",)]
    assert db.select("subscriber", ["username"], {"username !=": ("alice", "bob")}) == [("carol",)]
    assert db.select("subscriber", ["username"], {"username": []}) == []
    assert db.select("subscriber", ["username"], {"username >": "b", "username <": "c"}) == [("bob",)]
    assert db.update("subscriber", {"domain": "example.org"}, {"password": "x"}) == 2
    # Matched rows, not changed rows, on both backends (MySQL needs CLIENT.FOUND_ROWS).
    assert db.update("subscriber", {"domain": "example.org"}, {"password": "x"}) == 2
    assert db.update("subscriber", {"username": "nobody"}, {"password": "x"}) == 0
    assert db.delete("subscriber", {"username": "bob"}) == 1
    assert db.delete("subscriber", {"username": "bob"}) == 0
    assert sorted(db.select("subscriber", ["username", "password"])) == [("alice", "x"), ("carol", "c")]
    assert db.delete("subscriber", {}) == 2


def test_null_and_bytes(db: Database) -> None:
    add_contact(db, "r1", received="sip:203.0.113.7:40312")
    add_contact(db, "r2")
    assert db.select("location", ["ruid"], {"received": None}) == [("r2",)]
    assert db.select("location", ["ruid"], {"received !=": None}) == [("r1",)]
    # Values arrive from the SIP layer as bytes; text comes back as str.
    db.insert("subscriber", {"username": b"d\xc3\xa9j\xc3\xa0", "domain": b"example.org", "password": "p"})
    assert db.select("subscriber", ["username"], {"username": "déjà"}) == [("déjà",)]
    assert db.select("subscriber", ["domain"], {"username": b"d\xc3\xa9j\xc3\xa0"}) == [("example.org",)]
    with pytest.raises(DbError, match="UTF-8"):
        db.select("subscriber", ["username"], {"username": b"\xff\xfe"})


def test_same_query_shape_with_other_values(db: Database) -> None:
    """Statements are reused per shape; NULL and lists must not reuse a scalar's."""
    add_contact(db, "a", received="x")
    add_contact(db, "b", received="y")
    add_contact(db, "c")
    cases = [("x", ["a"]), (None, ["c"]), ("y", ["b"]), (["x", "y"], ["a", "b"]), (b"x", ["a"]),
             (None, ["c"]), ([], []), ("x", ["a"])]
    for value, expect in cases * 2:
        rows = db.select("location", ["ruid"], {"received": value}, order_by="ruid")
        assert [r[0] for r in rows] == expect, value
    now = int(time.time())
    db.update("location", {"ruid": "a"}, {"expires": now})
    for _ in range(3):  # a time value in a reused statement is still converted
        assert db.select("location", ["ruid"], {"expires": now}) == [("a",)]


def test_unknown_identifiers_are_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="unknown table"):
        db.select("subscriber; DROP TABLE version", ["username"])
    with pytest.raises(ValueError, match="unknown column"):
        db.select("subscriber", ["username", "password FROM version --"])
    with pytest.raises(ValueError, match="unknown column"):
        db.insert("subscriber", {"usrname": "x"})
    with pytest.raises(ValueError, match="operator"):
        db.select("subscriber", ["username"], {"username LIKE": "%"})
    with pytest.raises(ValueError):
        db.select("subscriber", ["username"], order_by="username; DROP")
    assert "version" in db.tables()


def test_values_never_become_sql(db: Database) -> None:
    evil = "x' OR '1'='1"
    db.insert("subscriber", {"username": evil, "domain": "d", "password": "p"})
    db.insert("subscriber", {"username": "y", "domain": "d", "password": "q"})
    assert db.select("subscriber", ["username"], {"username": evil}) == [(evil,)]
    assert db.select("subscriber", ["username"], {"username": "x"}) == []


def test_insert_many(db: Database) -> None:
    rows = [{"username": f"u{i}", "domain": "d", "password": str(i)} for i in range(250)]
    assert db.insert_many("subscriber", rows) == 250
    assert db.insert_many("subscriber", []) == 0
    assert db.execute("SELECT COUNT(*) FROM subscriber")[0][0] == 250
    with pytest.raises(ValueError):
        db.insert_many("subscriber", [{"username": "a"}, {"domain": "b"}])


def test_replace_on_unique_key(db: Database) -> None:
    db.replace("subscriber", {"username": "a", "domain": "d", "password": "1"}, ["username", "domain"])
    db.replace("subscriber", {"username": "a", "domain": "d", "password": "2"}, ["domain", "username"])
    db.replace("subscriber", {"username": "a", "domain": "e", "password": "3"}, ["username", "domain"])
    assert sorted(db.select("subscriber", ["domain", "password"])) == [("d", "2"), ("e", "3")]
    # Only key columns: an existing row stays as it is.
    db.replace("subscriber", {"username": "a", "domain": "d"}, ["username", "domain"])
    assert db.select("subscriber", ["password"], {"domain": "d"}) == [("2",)]
    add_contact(db, "ruid-1", cseq=1)
    db.replace("location", {"ruid": "ruid-1", "username": "alice", "contact": "sip:new@h", "cseq": 7,
                            "expires": 2_100_000_000}, ["ruid"])
    assert db.select("location", ["contact", "cseq", "expires"]) == [("sip:new@h", 7, 2_100_000_000)]


def test_replace_on_other_columns(db: Database) -> None:
    # SER's usrloc keys a binding by AOR + Contact, which is an index but not unique.
    key = ["username", "domain", "contact"]
    row = {"ruid": "x1", "username": "a", "domain": "d", "contact": "sip:a@h", "cseq": 1}
    db.replace("location", row, key)
    db.replace("location", dict(row, cseq=2), key)
    db.replace("location", dict(row, ruid="x2", contact="sip:a@other", cseq=3), key)
    assert sorted(db.select("location", ["contact", "cseq"])) == [("sip:a@h", 2), ("sip:a@other", 3)]
    with pytest.raises(ValueError):
        db.replace("location", {"username": "a"}, ["ruid"])


def test_transactions(db: Database) -> None:
    with db.transaction():
        add_contact(db, "t1")
        with db.transaction():  # joins the outer one
            add_contact(db, "t2")
    assert len(db.select("location", ["ruid"])) == 2

    with pytest.raises(RuntimeError):
        with db.transaction():
            add_contact(db, "t3")
            db.delete("location", {"ruid": "t1"})
            raise RuntimeError("flush aborted")
    assert sorted(db.select("location", ["ruid"])) == [("t1",), ("t2",)]

    # A failing statement aborts the block; nothing of it is kept.
    with pytest.raises(DbIntegrityError):
        with db.transaction():
            add_contact(db, "t4")
            add_contact(db, "t1")  # duplicate ruid
    assert sorted(db.select("location", ["ruid"])) == [("t1",), ("t2",)]
    add_contact(db, "t5")  # the connection is usable afterwards
    assert len(db.select("location", ["ruid"])) == 3


def test_transaction_is_invisible_until_commit(db_url: str, db: Database) -> None:
    other = open_db(db_url)
    with db.transaction():
        add_contact(db, "hidden")
        assert other.select("location", ["ruid"]) == []
    assert other.select("location", ["ruid"]) == [("hidden",)]
    other.close()


def test_errors_are_db_errors(db: Database) -> None:
    with pytest.raises(DbError):
        db.execute("SELEC nonsense")
    with pytest.raises(DbError):
        db.execute("SELECT nosuchcolumn FROM subscriber")
    with pytest.raises(DbError):
        db.execute("SELECT * FROM nosuchtable")
    db.insert("subscriber", {"username": "a", "domain": "d"})
    with pytest.raises(DbIntegrityError):
        db.insert("subscriber", {"username": "a", "domain": "d"})
    assert issubclass(DbIntegrityError, DbError) and issubclass(DbUnavailable, DbError)
    assert db.select("subscriber", ["username"]) == [("a",)]  # still usable


def test_execute_placeholders(db: Database) -> None:
    db.insert("subscriber", {"username": "100%", "domain": "d?", "password": "p"})
    rows = db.execute("SELECT username, domain FROM subscriber WHERE username LIKE '%!%' ESCAPE '!' "
                      "AND domain = ? AND password = ?", ["d?", b"p"])
    assert rows == [("100%", "d?")]
    assert db.execute("SELECT COUNT(*) FROM subscriber WHERE domain = 'd?'") == [(1,)]
    assert db.execute("DELETE FROM subscriber WHERE username = ?", ("100%",)) == []
    assert db.execute("SELECT COUNT(*) FROM subscriber") == [(0,)]


def test_datetime_columns_are_epoch_seconds(db: Database) -> None:
    now = int(time.time())
    add_contact(db, "soon", expires=now + 60, last_modified=now)
    add_contact(db, "late", expires=now + 3600, last_modified=now)
    add_contact(db, "gone", expires=now - 5, last_modified=now)
    add_contact(db, "perm", expires=NEVER, last_modified=now)
    assert dict(db.select("location", ["ruid", "expires"])) == {
        "soon": now + 60, "late": now + 3600, "gone": now - 5, "perm": NEVER}
    # usrloc's timer: delete the expired ones, keep the permanent ones.
    assert db.delete("location", {"expires <": now, "expires !=": NEVER}) == 1
    assert sorted(db.select("location", ["ruid"], {"expires >": now}, order_by="expires")) == [
        ("late",), ("soon",)]
    assert db.select("location", ["ruid"], order_by="expires", limit=1) == [("perm",)]
    assert db.select("location", ["last_modified"], {"ruid": "late"}) == [(now,)]
    raw = db.execute("SELECT expires FROM location WHERE ruid = ?", ["late"])[0][0]
    assert db.time_from_db(raw) == now + 3600


# -- connection life -------------------------------------------------------------------

def test_ping_and_close(db: Database) -> None:
    assert db.ping()
    db.close()
    assert db.select("version", ["table_name"], {"table_name": "location"}) == [("location",)]
    with open_db(db.url) as again:
        assert again.ping()


def test_threads_share_one_database(db: Database) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(40):
                with db.transaction():
                    add_contact(db, f"t{n}-{i}", user=f"u{n}")
                    assert db.select("location", ["ruid"], {"ruid": f"t{n}-{i}"}) == [(f"t{n}-{i}",)]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert db.execute("SELECT COUNT(*) FROM location") == [(160,)]


def _connection_id(db: Database) -> object:
    if db.dialect == "mysql":
        return db.execute("SELECT CONNECTION_ID()")[0][0]
    return id(db._conn)


def test_fork_safety(db: Database) -> None:
    add_contact(db, "parent")
    parent_conn = _connection_id(db)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: any exception must end in os._exit, never in pytest
        code = 1
        try:
            os.close(read_fd)
            rows = db.select("location", ["ruid"])
            add_contact(db, "child")
            child_conn = _connection_id(db)
            ok = rows == [("parent",)] and child_conn != parent_conn and db.connects == 2
            os.write(write_fd, repr((rows, child_conn)).encode())
            code = 0 if ok else 2
        finally:
            os._exit(code)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    report = os.read(read_fd, 4096).decode()
    os.close(read_fd)
    assert os.waitstatus_to_exitcode(status) == 0, report
    # The parent's own session is untouched by the child (no COM_QUIT on its socket).
    assert _connection_id(db) == parent_conn
    assert db.connects == 1
    assert sorted(db.select("location", ["ruid"])) == [("child",), ("parent",)]


def _kill(server: MariaDB, connection_id: int) -> None:
    admin = server.admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f"KILL {int(connection_id)}")
    finally:
        admin.close()


@pytest.mark.mariadb
def test_reconnect_after_kill(mariadb_server: MariaDB, mariadb_url: str) -> None:
    db = open_db(mariadb_url)
    create_schema(db)
    add_contact(db, "k1")
    first = _connection_id(db)
    _kill(mariadb_server, first)
    assert db.select("location", ["ruid"]) == [("k1",)]
    assert db.connects == 2 and _connection_id(db) != first
    _kill(mariadb_server, _connection_id(db))
    add_contact(db, "k2")  # a write is retried too
    assert len(db.select("location", ["ruid"])) == 2


@pytest.mark.mariadb
def test_reconnect_after_server_restart(mariadb_server: MariaDB, mariadb_url: str) -> None:
    db = open_db(mariadb_url)
    create_schema(db)
    add_contact(db, "before")
    mariadb_server.restart()
    assert db.select("location", ["ruid"]) == [("before",)]
    assert db.connects == 2


@pytest.mark.mariadb
def test_server_down_then_back(mariadb_server: MariaDB, mariadb_url: str) -> None:
    db = open_db(mariadb_url)
    create_schema(db)
    add_contact(db, "r")
    mariadb_server.stop()
    try:
        with pytest.raises(DbUnavailable):
            db.select("location", ["ruid"])
        with pytest.raises(DbUnavailable):
            add_contact(db, "lost")
        assert not db.ping()
        with pytest.raises(DbUnavailable):
            with db.transaction():
                add_contact(db, "lost2")
    finally:
        mariadb_server.start()
    assert db.ping()
    assert db.select("location", ["ruid"]) == [("r",)]


@pytest.mark.mariadb
def test_connection_lost_inside_transaction(mariadb_server: MariaDB, mariadb_url: str) -> None:
    db = open_db(mariadb_url)
    create_schema(db)
    with pytest.raises(DbUnavailable, match="inside a transaction"):
        with db.transaction():
            add_contact(db, "a")
            _kill(mariadb_server, _connection_id(db))
            add_contact(db, "b")  # not retried: "a" died with the connection
    assert db.select("location", ["ruid"]) == []
    # A caller that swallows the error must not get autocommitted statements.
    with pytest.raises(DbUnavailable):
        with db.transaction():
            add_contact(db, "x")
            _kill(mariadb_server, _connection_id(db))
            try:
                add_contact(db, "y")
            except DbUnavailable:
                pass
            add_contact(db, "z")
    assert db.select("location", ["ruid"]) == []
    with db.transaction():  # the next batch starts on a new connection
        add_contact(db, "a")
        add_contact(db, "b")
    assert len(db.select("location", ["ruid"])) == 2


@pytest.mark.mariadb
def test_killed_during_commit_window(mariadb_server: MariaDB, mariadb_url: str) -> None:
    """A connection killed between statements of autocommit work is retried silently."""
    db = open_db(mariadb_url)
    create_schema(db)
    admin = mariadb_server.admin()
    try:
        for i in range(5):
            _kill(mariadb_server, _connection_id(db))
            db.replace("location", {"ruid": "same", "username": "u", "cseq": i}, ["ruid"])
    finally:
        admin.close()
    assert db.select("location", ["cseq"]) == [(4,)]
    assert db.connects == 6


# -- SQLite specifics ---------------------------------------------------------------------

def test_sqlite_wal_and_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "n.db"  # parent directories are created
    db = open_db(f"sqlite://{path}")
    create_schema(db)
    assert db.journal_mode() == "wal"
    assert db.execute("PRAGMA busy_timeout") == [(5000,)]
    assert db.execute("PRAGMA synchronous") == [(1,)]  # NORMAL
    raw = sqlite3.connect(path)  # WAL is a property of the file, seen by any connection
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    assert open_db(f"sqlite://{path}?busy_timeout=250").execute("PRAGMA busy_timeout") == [(250,)]


def test_sqlite_writer_lock_blocks_writers_not_readers(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'n.db'}?busy_timeout=100"
    db = open_db(url)
    create_schema(db)
    add_contact(db, "old")
    holder = sqlite3.connect(tmp_path / "n.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("DELETE FROM location")
    try:
        with pytest.raises(DbUnavailable, match="locked"):
            add_contact(db, "w")
        # WAL: readers see the last commit while a writer holds the lock (a rollback
        # journal would make this read fail with "database is locked").
        assert db.select("location", ["ruid"]) == [("old",)]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    add_contact(db, "w")


def _writer(url: str, batches: int, deadline: float, out: multiprocessing.Queue) -> None:
    db = open_db(url)
    errors, done = [], 0
    for b in range(batches):
        if time.monotonic() > deadline:
            break
        try:
            with db.transaction():  # a usrloc flush: a batch of upserts and deletes
                for i in range(20):
                    db.replace("location", {"ruid": f"r{i}", "username": f"u{i}", "cseq": b,
                                            "expires": 2_000_000_000 + b}, ["ruid"])
                db.delete("location", {"ruid": f"r{b % 20}"})
            done += 1
        except DbError as exc:
            errors.append(str(exc))
    out.put(("writer", done, errors[:5], len(errors)))


def _reader(url: str, writers_done: object, deadline: float, out: multiprocessing.Queue) -> None:
    db = open_db(url)
    errors, done = [], 0
    # Reads for as long as the writers write (and at least 200 rounds).
    while time.monotonic() < deadline and (done < 200 or not writers_done.is_set()):
        try:
            db.select("subscriber", ["password"], {"username": "alice", "domain": "example.org"})
            db.select("location", ["contact", "expires"], {"username": f"u{done % 20}"})
            done += 1
        except DbError as exc:
            errors.append(str(exc))
    out.put(("reader", done, errors[:5], len(errors)))


def test_sqlite_reader_and_writer_processes(tmp_path: Path) -> None:
    """Auth reads while two usrloc-like flushers write: no 'database is locked'
    (WAL + busy timeout + BEGIN IMMEDIATE)."""
    url = f"sqlite://{tmp_path / 'n.db'}"
    db = open_db(url)
    create_schema(db)
    db.insert("subscriber", {"username": "alice", "domain": "example.org", "password": "pw"})
    db.close()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    writers_done = ctx.Event()
    deadline = time.monotonic() + 30
    procs = [
        ctx.Process(target=_writer, args=(url, 150, deadline, out)),
        ctx.Process(target=_writer, args=(url, 150, deadline, out)),
        ctx.Process(target=_reader, args=(url, writers_done, deadline, out)),
    ]
    for p in procs:
        p.start()
    results = []
    for _ in procs:
        results.append(out.get(timeout=60))
        if sum(r[0] == "writer" for r in results) == 2:
            writers_done.set()
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    for kind, done, sample, count in results:
        assert count == 0, f"{kind}: {count} errors, e.g. {sample}"
        assert done > 0, kind
    assert sum(r[1] for r in results if r[0] == "writer") == 300


def test_tables_like_template(tmp_path: Path) -> None:
    from natserver.db import schema

    tables = dict(schema.TABLES)
    schema.table_like("location_b", "location", tables=tables)
    db = open_db(f"sqlite://{tmp_path / 'n.db'}", tables=tables)
    create_schema(db)
    for stmt in schema.table_sql(tables["location_b"], db.dialect):
        db.execute(stmt)
    db.insert("location_b", {"ruid": "1", "username": "x"})
    assert db.select("location_b", ["username"]) == [("x",)]
    assert "location_b" not in schema.TABLES
    with pytest.raises(ValueError):
        schema.table_like("bad name", "location", tables=tables)


@pytest.mark.mariadb
def test_mysql_errors_classified(mariadb_server: MariaDB, mariadb_url: str) -> None:
    db = open_db(mariadb_url)
    lost = pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
    assert db._is_lost(lost)
    assert not db._is_lost(pymysql.err.ProgrammingError(1064, "syntax"))
    deadlock = pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
    assert db._is_retryable(deadlock) and not db._is_lost(deadlock)
    assert not db._is_retryable(lost)
    assert db._translate("a = ? AND b LIKE 'x?%' AND c = `?` AND d = 'it\\'s?'") == (
        "a = %s AND b LIKE 'x?%%' AND c = `?` AND d = 'it\\'s?'")
