"""Debian's Kamailio as a reference server: provision a SQLite database, start it on
127.0.0.1:<port> with ``loadtest/kamailio/seed.cfg``, read its counters over the ctl
socket, measure its CPU from /proc, stop it by pid.

The schema comes from Kamailio's own SQL files (``/usr/share/kamailio/db_sqlite``,
shipped by kamailio-sqlite-modules): version, subscriber, location, and "aliases" - a
second usrloc table with location's columns, because the seed calls
``lookup("aliases")``. The database runs in WAL mode, as in the reference figures.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

log = logging.getLogger("loadtest.kamailio")

SEED_CFG = Path(__file__).resolve().parent / "kamailio" / "seed.cfg"
SCHEMA_DIR = Path("/usr/share/kamailio/db_sqlite")
SCHEMA_FILES = ("standard-create.sql", "auth_db-create.sql", "usrloc-create.sql")

# Used only when the schema files are missing: the columns the seed's modules read.
FALLBACK_SCHEMA = """
CREATE TABLE version (id INTEGER PRIMARY KEY NOT NULL, table_name VARCHAR(32) NOT NULL UNIQUE,
                      table_version INTEGER DEFAULT 0 NOT NULL);
INSERT INTO version (table_name, table_version) VALUES ('version', 1);
CREATE TABLE subscriber (id INTEGER PRIMARY KEY NOT NULL, username VARCHAR(64) DEFAULT '' NOT NULL,
                         domain VARCHAR(64) DEFAULT '' NOT NULL, password VARCHAR(64) DEFAULT '' NOT NULL,
                         ha1 VARCHAR(128) DEFAULT '' NOT NULL, ha1b VARCHAR(128) DEFAULT '' NOT NULL,
                         UNIQUE (username, domain));
INSERT INTO version (table_name, table_version) VALUES ('subscriber', 7);
CREATE TABLE location (id INTEGER PRIMARY KEY NOT NULL, ruid VARCHAR(64) DEFAULT '' NOT NULL UNIQUE,
    username VARCHAR(64) DEFAULT '' NOT NULL, domain VARCHAR(64) DEFAULT NULL,
    contact VARCHAR(512) DEFAULT '' NOT NULL, received VARCHAR(128) DEFAULT NULL,
    path VARCHAR(512) DEFAULT NULL, expires TIMESTAMP DEFAULT '2030-05-28 21:32:15' NOT NULL,
    q REAL DEFAULT 1.0 NOT NULL, callid VARCHAR(255) DEFAULT 'Default-Call-ID' NOT NULL,
    cseq INTEGER DEFAULT 1 NOT NULL, last_modified TIMESTAMP DEFAULT '2000-01-01 00:00:01' NOT NULL,
    flags INTEGER DEFAULT 0 NOT NULL, cflags INTEGER DEFAULT 0 NOT NULL,
    user_agent VARCHAR(255) DEFAULT '' NOT NULL, socket VARCHAR(64) DEFAULT NULL,
    methods INTEGER DEFAULT NULL, instance VARCHAR(255) DEFAULT NULL,
    reg_id INTEGER DEFAULT 0 NOT NULL, server_id INTEGER DEFAULT 0 NOT NULL,
    connection_id INTEGER DEFAULT 0 NOT NULL, keepalive INTEGER DEFAULT 0 NOT NULL,
    partition INTEGER DEFAULT 0 NOT NULL);
INSERT INTO version (table_name, table_version) VALUES ('location', 9);
"""


def kamailio_binary() -> str | None:
    return shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if os.access("/usr/sbin/kamailio", os.X_OK) else None)


def kamcmd_binary() -> str | None:
    return shutil.which("kamcmd") or (
        "/usr/sbin/kamcmd" if os.access("/usr/sbin/kamcmd", os.X_OK) else None)


def available() -> str:
    """Empty when Kamailio, kamcmd and the SQLite module are installed, else why not."""
    if not kamailio_binary():
        return "kamailio is not installed"
    if not kamcmd_binary():
        return "kamcmd is not installed"
    mods = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
    if mods.is_dir() and not (mods / "db_sqlite.so").exists():
        return "kamailio-sqlite-modules is not installed"
    return ""


def schema_sql() -> str:
    """Kamailio's SQL for the tables the seed uses, plus the "aliases" usrloc table."""
    if not all((SCHEMA_DIR / f).exists() for f in SCHEMA_FILES):
        log.warning("%s not found; using a minimal schema", SCHEMA_DIR)
        text = FALLBACK_SCHEMA
    else:
        text = "\n".join((SCHEMA_DIR / f).read_text() for f in SCHEMA_FILES)
    location = re.search(r"CREATE TABLE location \(.*?\);", text, re.S)
    if location is None:
        raise RuntimeError("no location table in the Kamailio schema")
    aliases = location.group(0).replace("CREATE TABLE location", "CREATE TABLE aliases", 1)
    # constraint names are global in SQLite
    aliases = re.sub(r"CONSTRAINT (\w+)", r"CONSTRAINT aliases_\1", aliases)
    return (text + "\n" + aliases +
            "\nINSERT INTO version (table_name, table_version) VALUES ('aliases', "
            "(SELECT table_version FROM version WHERE table_name = 'location'));\n")


def create_db(path: Path, users: Sequence[tuple[bytes, bytes]], domain: str) -> None:
    """A fresh SQLite database with Kamailio's schema, in WAL mode, and ``users``."""
    if path.exists():
        path.unlink()
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema_sql())
        rows = []
        for user, password in users:
            u, p = user.decode(), password.decode()
            realm = domain.split(":")[0]
            rows.append((u, domain, p, hashlib.md5(f"{u}:{realm}:{p}".encode()).hexdigest()))
        db.executemany("INSERT INTO subscriber (username, domain, password, ha1) VALUES (?, ?, ?, ?)",
                       rows)
        db.commit()
    finally:
        db.close()


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Kamailio:
    """One Kamailio instance for a load test; use as a context manager."""

    def __init__(self, users: Sequence[tuple[bytes, bytes]], *, children: int = 2,
                 host: str = "127.0.0.1", port: int = 0, netns: str | None = None,
                 cfg: Path = SEED_CFG, shm_mb: int = 256, pkg_mb: int = 32,
                 defines: Sequence[str] = (), domain: str | None = None,
                 workdir: Path | None = None) -> None:
        self.users = list(users)
        self.children = children
        self.host = host
        self.port = port
        self.netns = netns
        self.cfg = cfg
        self.shm_mb = shm_mb
        self.pkg_mb = pkg_mb
        self.defines = list(defines)
        self.domain = domain
        # unix socket paths must stay short: a private directory under /tmp
        self.rundir = Path(tempfile.mkdtemp(prefix="lt-kam-"))
        self.workdir = workdir or self.rundir
        self.db = self.workdir / "kamailio.db"
        self.ctl = self.rundir / "ctl"
        self.log_path = self.workdir / "kamailio.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: set[int] = set()

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def command(self) -> list[str]:
        binary = kamailio_binary()
        if binary is None:
            raise RuntimeError("kamailio is not installed")
        cmd = [binary, "-f", str(self.cfg), "-DD", "-E", "-Y", str(self.rundir),
               "-m", str(self.shm_mb), "-M", str(self.pkg_mb),
               "-l", f"udp:{self.host}:{self.port}",
               "-A", f'DBURL="sqlite://{self.db}"', "-A", f'CTLSOCK="unix:{self.ctl}"',
               "-A", f"CHILDREN={self.children}"]
        for d in self.defines:
            cmd += ["-A", d]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    def start(self, timeout: float = 15.0) -> Kamailio:
        if not self.port:
            # a fresh namespace has every port free; outside one, ask the kernel
            self.port = 20000 + int.from_bytes(os.urandom(2), "big") % 40000 if self.netns \
                else _free_udp_port(self.host)
        domain = self.domain or f"{self.host}:{self.port}"
        create_db(self.db, self.users, domain)
        logf = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, cwd=str(self.rundir))
        finally:
            logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ctl.exists():
                try:
                    self.rpc("core.uptime")
                    self._collect_pids()
                    return self
                except RuntimeError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"kamailio did not start in {timeout} s:\n{self.log_tail()}")

    def _collect_pids(self) -> None:
        if self.proc is None:
            return
        try:
            main = psutil.Process(self.proc.pid)
            self.pids = {main.pid} | {c.pid for c in main.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def rpc(self, *args: str, timeout: float = 10.0) -> str:
        binary = kamcmd_binary()
        if binary is None:
            raise RuntimeError("kamcmd is not installed")
        done = subprocess.run([binary, "-s", f"unix:{self.ctl}", *args], capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"kamcmd {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def stats(self) -> dict[str, int]:
        """Every statistic (``group:name`` -> value), e.g. ``sl:401_replies``."""
        out: dict[str, int] = {}
        for line in self.rpc("stats.get_statistics", "all").splitlines():
            name, sep, value = line.strip().partition(" = ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name.strip()] = int(value)
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU of the main process and its children, from /proc."""
        self._collect_pids()
        total = 0.0
        for pid in self.pids:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return total

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        self._collect_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.pids - {self.proc.pid}:
            try:
                if psutil.Process(pid).ppid() in (1, self.proc.pid):
                    os.kill(pid, signal.SIGKILL)
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        self.proc = None
        shutil.rmtree(self.rundir, ignore_errors=True)

    def __enter__(self) -> Kamailio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
