"""Throwaway MariaDB servers for tests, and the ``db_url`` fixture that runs a test on
both storage backends.

Use from any conftest.py (fixtures are found by name in the conftest's namespace)::

    from tests.helpers.mariadb import db_url, mariadb_server, mariadb_url  # noqa: F401

or once for the whole suite, in tests/conftest.py: ``pytest_plugins =
("tests.helpers.mariadb",)``. Either way a process starts one server at most.

- ``mariadb_server`` (session scope): one ``MariaDB`` per pytest process, so one per
  xdist worker. Its data directory lives under the worker's tmp dir and is deleted at
  the end. Start-up costs about 1.5 s (``mariadb-install-db`` ~1.2 s + ``mariadbd`` to
  first connection ~0.2 s, measured by ``loadtest/db_bench.py``), paid once per worker.
  A server per worker (rather than one shared through a lock file) keeps the workers
  independent: a test may stop, restart or kill connections of *its* server without
  disturbing tests running in other workers, and nothing has to decide which worker
  shuts the shared server down.
- ``mariadb_url``: a fresh database ``t_<hex>`` on that server for one test, as
  ``mysql://natserver:<password>@127.0.0.1:<port>/t_<hex>`` (TCP, with a password that
  needs percent-encoding), dropped afterwards.
- ``db_url``: parametrised ``["sqlite", "mariadb"]``; ``sqlite:///<tmp_path>/natserver.db``
  or a ``mariadb_url``. The MariaDB server starts only when a ``mariadb`` case runs, so
  ``-m "not mariadb"`` never needs it.

When ``mariadbd`` is not installed the MariaDB cases are skipped with the reason; set
``NATSERVER_REQUIRE_MARIADB=1`` (CI) to make that an error instead.

The server is started with ``--no-defaults`` (the machine's my.cnf plays no part),
listens on 127.0.0.1 at a free port and on a unix socket in its directory, and is bound
to the test process with ``PR_SET_PDEATHSIG`` so a killed pytest cannot leave it behind.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pymysql
import pytest

USER = "natserver"
# Every character that a db_url must percent-encode.
PASSWORD = "n@t:s/rv%pw?#1"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
_PR_SET_PDEATHSIG = 1
# Tests need atomic commits, not durability across a power cut: no fsync, no doublewrite.
# This halves CREATE/DROP TABLE (a fresh schema per test) on a disk-backed /tmp.
_FAST_INNODB = (
    "--innodb-log-file-size=4M",
    "--innodb-buffer-pool-size=16M",
    "--innodb-flush-log-at-trx-commit=2",
    "--innodb-flush-method=nosync",
    "--innodb-doublewrite=0",
    "--skip-sync-frm",
)


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for directory in ("/usr/sbin", "/usr/local/sbin", "/usr/bin"):
            path = os.path.join(directory, name)
            if os.access(path, os.X_OK):
                return path
    return None


def mariadb_missing() -> str | None:
    """Why a throwaway MariaDB cannot be started here, or None."""
    if _find("mariadbd", "mysqld") is None:
        return "mariadbd not installed (apt-get install mariadb-server)"
    if _find("mariadb-install-db", "mysql_install_db") is None:
        return "mariadb-install-db not installed (apt-get install mariadb-server)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class MariaDB:
    """One mariadbd with its own data directory; ``start``/``stop``/``restart`` keep the
    data and the port."""

    basedir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    install_seconds: float = 0.0
    start_seconds: float = 0.0  # the last start, until the first connection succeeded
    _databases: list[str] = field(default_factory=list)

    @property
    def datadir(self) -> Path:
        return self.basedir / "data"

    @property
    def socket(self) -> str:
        return str(self.basedir / "mysqld.sock")

    @property
    def error_log(self) -> Path:
        return self.basedir / "error.log"

    def install(self) -> None:
        tool = _find("mariadb-install-db", "mysql_install_db")
        cmd = [
            str(tool),
            "--no-defaults",
            "--auth-root-authentication-method=normal",
            f"--datadir={self.datadir}",
            # Its own temporary directory: the bootstrap's temporary tables in a shared
            # /tmp were seen to vanish under a concurrent install (ERROR 1051).
            f"--tmpdir={self.basedir}",
            "--skip-test-db",
            "--skip-name-resolve",
            *_FAST_INNODB,
        ]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        t0 = time.monotonic()
        with open(self.basedir / "install.log", "wb") as out:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
        self.install_seconds = time.monotonic() - t0
        if rc != 0:
            tail = (self.basedir / "install.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mariadb-install-db failed ({rc}):\n{tail}")

    def _command(self) -> list[str]:
        cmd = [
            str(_find("mariadbd", "mysqld")),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={self.basedir / 'mysqld.pid'}",
            f"--log-error={self.error_log}",
            f"--tmpdir={self.basedir}",
            "--skip-log-bin",
            "--skip-name-resolve",
            *_FAST_INNODB,
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            "--max-connections=300",
        ]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        return cmd

    def start(self) -> float:
        """Start mariadbd and wait until it accepts connections; returns the seconds taken."""
        if self.proc is not None and self.proc.poll() is None:
            return 0.0
        for attempt in range(3):
            if not self.port or attempt:
                self.port = free_port()
            t0 = time.monotonic()
            self.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
            if self._wait_ready():
                self.start_seconds = time.monotonic() - t0
                return self.start_seconds
            log_tail = ""
            if self.error_log.exists():
                log_tail = self.error_log.read_text(errors="replace")[-3000:]
            self.stop()
            if "Address already in use" not in log_tail or attempt == 2:
                raise RuntimeError(f"mariadbd did not start:\n{log_tail}")
        raise AssertionError("unreachable")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                pymysql.connect(unix_socket=self.socket, user="root", connect_timeout=2).close()
                return True
            except pymysql.err.OperationalError:
                time.sleep(0.02)
        return False

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL after ``STOP_TIMEOUT``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def restart(self) -> float:
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.basedir, ignore_errors=True)

    def admin(self, database: str | None = None) -> pymysql.connections.Connection:
        """A root connection over the unix socket (autocommit)."""
        return pymysql.connect(
            unix_socket=self.socket, user="root", database=database, autocommit=True,
            charset="utf8mb4",
        )

    def create_user(self) -> None:
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                for host in ("127.0.0.1", "localhost"):
                    cur.execute(
                        f"CREATE USER IF NOT EXISTS '{USER}'@'{host}' IDENTIFIED BY %s",
                        (PASSWORD,),
                    )
                    cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'{host}'")
        finally:
            conn.close()

    def create_database(self, name: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        finally:
            conn.close()
        self._databases.append(name)
        return name

    def drop_database(self, name: str) -> None:
        if self.proc is None:
            return
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()

    def url(self, database: str, *, unix: bool = False) -> str:
        """``mysql://`` URL for ``database`` as the password user, over TCP or the socket."""
        creds = f"{quote(USER, safe='')}:{quote(PASSWORD, safe='')}"
        if unix:
            return f"mysql://{creds}@localhost/{database}?unix_socket={quote(self.socket)}"
        return f"mysql://{creds}@127.0.0.1:{self.port}/{database}"


def start_mariadb(basedir: Path | None = None) -> MariaDB:
    """Install and start a fresh server (caller cleans up with ``cleanup()``)."""
    reason = mariadb_missing()
    if reason:
        raise RuntimeError(reason)
    if basedir is None or len(str(basedir)) > 80:
        # A unix socket path must fit in 108 bytes.
        basedir = Path(tempfile.mkdtemp(prefix="ns-mariadb-"))
    basedir.mkdir(parents=True, exist_ok=True)
    server = MariaDB(basedir)
    try:
        server.install()
        server.start()
        server.create_user()
    except BaseException:
        server.cleanup()
        raise
    return server


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("NATSERVER_REQUIRE_MARIADB") == "1":
        pytest.fail(f"NATSERVER_REQUIRE_MARIADB=1 but {reason}")
    pytest.skip(reason)


# Each conftest.py that imports the fixtures gets its own session-scoped copy of them;
# this keeps it to one server per process all the same.
_SERVERS: dict[int, MariaDB] = {}


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """One throwaway MariaDB for this pytest process (one per xdist worker)."""
    shared = _SERVERS.get(os.getpid())
    if shared is not None:
        yield shared
        return
    reason = mariadb_missing()
    if reason:
        _skip_or_fail(reason)
    server = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    _SERVERS[os.getpid()] = server
    try:
        yield server
    finally:
        _SERVERS.pop(os.getpid(), None)
        server.cleanup()


@pytest.fixture
def mariadb_url(mariadb_server: MariaDB) -> Iterator[str]:
    """A fresh, empty database on the worker's server, as a password-bearing TCP URL."""
    if mariadb_server.proc is None or mariadb_server.proc.poll() is not None:
        mariadb_server.start()  # a previous test stopped it and failed before restarting
    name = mariadb_server.create_database()
    try:
        yield mariadb_server.url(name)
    finally:
        if mariadb_server.proc is None or mariadb_server.proc.poll() is not None:
            mariadb_server.start()
        mariadb_server.drop_database(name)


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on both backends: an SQLite file in tmp_path, or a fresh MariaDB
    database. ``request.param`` is the backend name."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'natserver.db'}"
    return request.getfixturevalue("mariadb_url")
