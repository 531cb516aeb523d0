"""natserverctl's database commands (natserver.ctl_db) against the auth modules: a user
added, re-passworded and removed with natserverctl logs in (or not) through
www_authorize, on SQLite and MariaDB."""

from __future__ import annotations

import orjson
import pytest

from natserver import ctlcli
from natserver.db import open_db
from tests.helpers.regclient import authorization, parse_challenge, register
from tests.modules.conftest import SRC, cfg_text


def natserverctl(capsys, *args: str) -> tuple[int, object]:
    code = ctlcli.main(["--json", *args])
    out = capsys.readouterr().out
    return code, orjson.loads(out) if out.strip() else None


def login(h, user: str, password: str) -> int:
    r = h.final(register(user, "example.org", SRC, contact=f"<sip:{user}@192.0.2.50>"))
    chal = parse_challenge(r.get("WWW-Authenticate"))
    auth = authorization(chal, user, password, "REGISTER", "sip:example.org")
    return h.final(register(user, "example.org", SRC, contact=f"<sip:{user}@192.0.2.50>",
                            auth=auth)).status


@pytest.fixture
def cfg_file(tmp_path, db_url):
    """A cfg naming the database, as natserverctl -f reads it."""
    path = tmp_path / "natserver.cfg"
    path.write_text(cfg_text(db_url))
    return str(path)


def test_add_passwd_rm_through_the_cfg(capsys, make, db_url, cfg_file):
    assert natserverctl(capsys, "-f", cfg_file, "db", "init")[0] == 0
    code, data = natserverctl(capsys, "-f", cfg_file, "add", "alice@example.org", "s3cret")
    assert code == 0 and data == {"added": "alice@example.org", "password_stored": True}
    assert natserverctl(capsys, "-f", cfg_file, "add", "alice@example.org", "x")[0] == 1
    h = make(cfg_text(db_url))
    assert login(h, "alice", "s3cret") == 200
    assert natserverctl(capsys, "-f", cfg_file, "passwd", "alice@example.org", "n3w")[0] == 0
    assert login(h, "alice", "s3cret") == 401
    assert login(h, "alice", "n3w") == 200
    assert natserverctl(capsys, "-f", cfg_file, "rm", "alice@example.org")[0] == 0
    assert login(h, "alice", "n3w") == 401
    assert natserverctl(capsys, "-f", cfg_file, "rm", "alice@example.org")[0] == 1


def test_hashes_only_when_the_cfg_does_not_calculate_ha1(capsys, make, db_url, tmp_path):
    text = cfg_text(db_url).replace('modparam("auth_db", "calculate_ha1", 1)\n', "").replace(
        'modparam("auth_db", "password_column", "password")\n', "")
    path = tmp_path / "hashes.cfg"
    path.write_text(text)
    natserverctl(capsys, "-f", str(path), "db", "init")
    code, data = natserverctl(capsys, "-f", str(path), "add", "bob@example.org", "pw")
    assert data["password_stored"] is False
    with open_db(db_url) as db:
        assert db.select("subscriber", ["password"], {"username": "bob"}) == [("",)]
    assert login(make(text), "bob", "pw") == 200


def test_usage_and_print(capsys, db_url):
    assert ctlcli.main(["--db", db_url, "add", "nodomain", "pw"]) == 2
    assert ctlcli.main(["--db", db_url, "db", "init", "--print"]) == 0
    sql = capsys.readouterr().out
    assert "CREATE TABLE IF NOT EXISTS" in sql and "subscriber" in sql
    assert ("`" in sql) == db_url.startswith("mysql")


def test_alias_rows(capsys, db_url):
    natserverctl(capsys, "--db", db_url, "db", "init")
    code, data = natserverctl(capsys, "--db", db_url, "alias", "add", "help@example.org",
                              "sip:alice@example.org")
    assert code == 0 and data["server_updated"] is False  # no server to tell
    assert natserverctl(capsys, "--db", db_url, "alias", "show")[1] == [
        {"alias": "help@example.org", "uri": "sip:alice@example.org"}]
    assert natserverctl(capsys, "--db", db_url, "alias", "rm", "help@example.org")[0] == 0
    assert natserverctl(capsys, "--db", db_url, "alias", "rm", "help@example.org")[0] == 1
