"""The SER/Kamailio schema on both backends: DDL, idempotent init, rows written the way
kamctl writes them, compatibility with Kamailio's own shipped schema and tools, and the
DATETIME encodings each Kamailio driver uses."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natserver.db import Database, open_db, schema
from natserver.db.schema import (
    DEFAULT_TABLES,
    KAMAILIO_DEFAULT_EXPIRES,
    NEVER,
    TABLES,
    create_schema,
    schema_sql,
)
from tests.helpers.mariadb import MariaDB

KAMAILIO_SQLITE_DDL = Path("/usr/share/kamailio/db_sqlite")


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def columns_of(db: Database, table: str) -> list[str]:
    if db.dialect == "mysql":
        rows = db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() "
            "AND table_name = ? ORDER BY ordinal_position", [table])
    else:
        rows = [(r[1],) for r in db.execute(f'PRAGMA table_info("{table}")')]
    return [r[0] for r in rows]


def test_create_schema_is_idempotent(db_url: str) -> None:
    db = open_db(db_url)
    assert create_schema(db) == list(DEFAULT_TABLES)
    assert create_schema(db) == []
    assert set(DEFAULT_TABLES) <= db.tables()
    versions = dict(db.select("version", ["table_name", "table_version"]))
    assert versions == {"version": 1, "subscriber": 7, "location": 9, "aliases": 8, "uri": 1}
    for name in DEFAULT_TABLES:
        assert columns_of(db, name) == [c.name for c in TABLES[name].columns]
    # Another process opening the same database and initialising it changes nothing.
    assert create_schema(open_db(db_url)) == []
    assert len(db.select("version", ["id"])) == 5


def _init(url: str) -> None:
    create_schema(open_db(url))


def test_concurrent_init(db_url: str) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_init, args=(db_url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    db = open_db(db_url)
    assert create_schema(db) == []
    assert sorted(db.select("version", ["table_name"])) == sorted((t,) for t in DEFAULT_TABLES)


def test_create_schema_adds_only_missing_tables(db_url: str) -> None:
    db = open_db(db_url)
    assert create_schema(db, ["subscriber"]) == ["version", "subscriber"]
    db.insert("subscriber", {"username": "keep", "domain": "d"})
    assert create_schema(db) == ["location", "aliases", "uri"]
    assert db.select("subscriber", ["username"]) == [("keep",)]


def test_kamctl_add_row_is_read_back(db_url: str) -> None:
    """``kamctl add alice secret`` with SIP_DOMAIN=example.org and STORE_PLAINTEXT_PW=1
    runs exactly this INSERT (kamctl.base, ``subscriber add``)."""
    db = open_db(db_url)
    create_schema(db)
    user, domain, password = "alice", "example.org", "secret"
    ha1 = md5(f"{user}:{domain}:{password}")
    ha1b = md5(f"{user}@{domain}:{domain}:{password}")
    db.execute(
        "insert into subscriber (username,\t\t\t\tdomain,ha1,ha1b,password) \t\t\t\t"
        f"values ('{user}','{domain}','{ha1}','{ha1b}','{password}');"
    )
    rows = db.select("subscriber", ["username", "domain", "password", "ha1", "ha1b"],
                     {"username": "alice", "domain": "example.org"})
    assert rows == [(user, domain, password, ha1, ha1b)]
    # What auth_db computes with calculate_ha1=1 matches the stored ha1.
    assert md5(f"{rows[0][0]}:{rows[0][1]}:{rows[0][2]}") == rows[0][3]
    assert ha1 == "543e1aec5d3614f03141652d6ada51b2"  # as kamctl printed it for these values


def test_location_row_defaults(db_url: str) -> None:
    db = open_db(db_url)
    create_schema(db)
    db.insert("location", {"ruid": "r", "username": "u", "contact": "sip:u@h"})
    row = db.select("location", ["domain", "received", "path", "expires", "q", "callid", "cseq",
                                 "last_modified", "flags", "cflags", "user_agent", "socket",
                                 "methods", "instance", "reg_id", "partition"])[0]
    if db.dialect == "mysql":
        far = schema.datetime_to_epoch(KAMAILIO_DEFAULT_EXPIRES)
    else:
        far = schema.utc_text_to_epoch(KAMAILIO_DEFAULT_EXPIRES)
    assert row == (None, None, None, far, 1.0, "Default-Call-ID", 1,
                   db.time_from_db("2000-01-01 00:00:01"), 0, 0, "", None, None, None, 0, 0)
    # `partition` is a reserved word in MySQL: quoted identifiers make it usable.
    assert db.update("location", {"partition": 0}, {"partition": 3}) == 1
    assert db.select("location", ["partition"], {"partition >": 1}) == [(3,)]


def test_utf8_values(db_url: str) -> None:
    db = open_db(db_url)
    create_schema(db)
    agent = "Linphone/5.2 (Ubuntu) — ñandú 📞"
    db.insert("location", {"ruid": "r", "username": "u", "contact": "sip:u@h", "user_agent": agent})
    assert db.select("location", ["user_agent"]) == [(agent,)]


def test_schema_sql_script_runs(tmp_path: Path) -> None:
    script = schema_sql("sqlite")
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.executescript(script)
    assert conn.execute("SELECT COUNT(*) FROM version").fetchone() == (5,)
    conn.close()
    db = open_db(f"sqlite://{tmp_path / 's.db'}")
    assert create_schema(db) == []
    assert "ON DUPLICATE" not in schema_sql("mysql") and "`partition` INT(11)" in schema_sql("mysql")


@pytest.mark.mariadb
def test_mysql_schema_sql_runs_in_the_mariadb_client(mariadb_server: MariaDB, mariadb_url: str) -> None:
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is None:
        pytest.skip("no mariadb client")
    name = mariadb_url.rsplit("/", 1)[1]
    subprocess.run([client, "--no-defaults", "-S", mariadb_server.socket, "-u", "root", name],
                   input=schema_sql("mysql").encode(), check=True, timeout=60)
    db = open_db(mariadb_url)
    assert create_schema(db) == []
    # kamctl's INSERT through the command-line client, as kamctl itself runs it.
    ha1, ha1b = md5("bob:example.org:pw"), md5("bob@example.org:example.org:pw")
    subprocess.run([client, "--no-defaults", "-S", mariadb_server.socket, "-u", "root", name, "-e",
                    "insert into subscriber (username,domain,ha1,ha1b,password) "
                    f"values ('bob','example.org','{ha1}','{ha1b}','pw');"], check=True, timeout=60)
    assert db.select("subscriber", ["ha1", "ha1b"], {"username": "bob"}) == [(ha1, ha1b)]


def _kamailio_tables(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    for name in ("standard", "auth_db", "usrloc", "registrar", "uri_db"):
        conn.executescript((KAMAILIO_SQLITE_DDL / f"{name}-create.sql").read_text())
    return conn


def _shape(conn: sqlite3.Connection, table: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    cols = [tuple(r[1:]) for r in conn.execute(f"PRAGMA table_info({table})")]
    indexes = []
    for _, name, unique, *_ in conn.execute(f"PRAGMA index_list({table})"):
        members = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})"))
        indexes.append((name, unique, members))
    return cols, sorted(indexes)


@pytest.mark.skipif(not KAMAILIO_SQLITE_DDL.is_dir(), reason="Kamailio's db_sqlite schema not installed")
def test_sqlite_ddl_matches_kamailio(tmp_path: Path) -> None:
    """Column for column (name, type, NOT NULL, default, key) and index for index, our
    SQLite DDL is what Kamailio 5.6 ships."""
    theirs = _kamailio_tables(tmp_path / "kamailio.db")
    db = open_db(f"sqlite://{tmp_path / 'natserver.db'}")
    create_schema(db)
    db.close()
    ours = sqlite3.connect(tmp_path / "natserver.db")
    for table in DEFAULT_TABLES:
        assert _shape(ours, table) == _shape(theirs, table), table
    theirs_versions = dict(theirs.execute("SELECT table_name, table_version FROM version"))
    for table in DEFAULT_TABLES:
        assert theirs_versions[table] == TABLES[table].version


@pytest.mark.skipif(shutil.which("kamdbctl") is None and not os.path.exists("/usr/sbin/kamdbctl"),
                    reason="kamailio (kamdbctl/kamctl) not installed")
def test_database_made_by_kamdbctl_and_kamctl(tmp_path: Path) -> None:
    """``kamdbctl create`` + ``kamctl add``: natserver uses the result as it is."""
    path = tmp_path / "kamailio.db"
    env = dict(os.environ, HOME=str(tmp_path), DBENGINE="SQLITE", DB_PATH=str(path),
               SIP_DOMAIN="example.org", STORE_PLAINTEXT_PW="1", INSTALL_EXTRA_TABLES="no",
               INSTALL_PRESENCE_TABLES="no", INSTALL_DBUID_TABLES="no",
               PATH=os.environ.get("PATH", "") + ":/usr/sbin")
    subprocess.run(["kamdbctl", "create"], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                   capture_output=True, check=True, timeout=60)
    subprocess.run(["kamctl", "add", "alice", "secret"], env=env, cwd=tmp_path,
                   stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=60)
    db = open_db(f"sqlite://{path}")
    assert create_schema(db) == []  # nothing missing
    assert db.select("subscriber", ["password", "ha1", "ha1b"], {"username": "alice"}) == [
        ("secret", md5("alice:example.org:secret"), md5("alice@example.org:example.org:secret"))]
    now = int(time.time())
    db.replace("location", {"ruid": "ul-1", "username": "alice", "domain": "example.org",
                            "contact": "sip:alice@192.0.2.5:5060", "expires": now + 3600,
                            "received": "sip:203.0.113.7:40312", "cflags": 64}, ["ruid"])
    assert db.select("location", ["expires", "received", "cflags"]) == [
        (now + 3600, "sip:203.0.113.7:40312", 64)]
    # Kamailio's db_sqlite reads the column as a Julian day (sqlite_to_timet).
    raw = db.execute("SELECT expires FROM location")[0][0]
    assert int(86400.0 * (raw - 2440587.5) + 0.5) in (now + 3600, now + 3599)
    assert db.journal_mode() == "wal"


# -- DATETIME encodings ------------------------------------------------------------------

@given(st.integers(min_value=0, max_value=2**32))
def test_julian_round_trip(t: int) -> None:
    jd = schema.epoch_to_julian(t)
    assert schema.julian_to_epoch(jd) == t
    assert abs(jd - (t / 86400.0 + 2440587.5)) < 1e-5


@given(st.integers(min_value=86400, max_value=2**31 - 86400))
def test_local_datetime_round_trip(t: int) -> None:
    assert schema.datetime_to_epoch(schema.epoch_to_datetime(t)) in (t, t + 3600, t - 3600)


def test_text_and_zero_dates() -> None:
    assert schema.utc_text_to_epoch("1970-01-01 00:00:00") == 0
    assert schema.utc_text_to_epoch("2030-05-28 21:32:15") == 1906234335
    assert schema.datetime_to_epoch("0000-00-00 00:00:00") == NEVER
    assert schema.julian_to_epoch(schema.epoch_to_julian(NEVER)) == NEVER


@pytest.fixture
def berlin_time() -> None:
    if not Path("/usr/share/zoneinfo/Europe/Berlin").exists():
        pytest.skip("no tzdata")
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_datetime_storage_per_dialect(db_url: str, berlin_time: None) -> None:
    """MySQL stores local time (Kamailio's db_mysql); SQLite a UTC Julian day
    (Kamailio's db_sqlite)."""
    db = open_db(db_url)
    create_schema(db)
    t = 1_700_000_000  # 2023-11-14 22:13:20 UTC, 23:13:20 in Berlin
    db.insert("location", {"ruid": "r", "username": "u", "contact": "c", "expires": t})
    raw = db.execute("SELECT expires FROM location")[0][0]
    if db.dialect == "mysql":
        assert str(raw) == "2023-11-14 23:13:20"
    else:
        # Kamailio encodes t - 0.5 s (timet_to_sqlite), so SQLite's datetime() shows
        # the second before; db_sqlite's decoding adds the 0.5 s back, as we do.
        assert raw == (t - 0.5) / 86400.0 + 2440587.5
        assert db.execute("SELECT datetime(expires) FROM location")[0][0] == "2023-11-14 22:13:19"
    assert db.select("location", ["expires"]) == [(t,)]
