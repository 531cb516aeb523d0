"""Storage cost: throwaway-MariaDB start-up, and the auth_db lookup (``SELECT password
FROM subscriber WHERE username=? AND domain=?``) on 1,000 and 100,000 subscribers, on
SQLite and MariaDB, through ``natserver.db`` and through the bare driver.

    python loadtest/db_bench.py [--sizes 1000,100000] [--queries 20000] [--backends sqlite,mariadb]

Every loop is bounded by a count and by ``--seconds`` per measurement. MariaDB runs as
the test fixture runs it (tests/helpers/mariadb.py), on 127.0.0.1 over TCP.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from natserver.db import Database, open_db  # noqa: E402
from natserver.db.schema import create_schema  # noqa: E402


def populate(db: Database, n: int) -> None:
    batch = 5000
    for start in range(0, n, batch):
        rows = [
            {"username": f"user{i}", "domain": "example.org", "password": f"pw{i}",
             "ha1": f"{i:032x}", "ha1b": f"{i:032x}"}
            for i in range(start, min(n, start + batch))
        ]
        with db.transaction():
            db.insert_many("subscriber", rows)


def bench_interface(db: Database, n: int, queries: int, seconds: float) -> tuple[float, int]:
    rng = random.Random(1)
    names = [f"user{rng.randrange(n)}" for _ in range(queries)]
    deadline = time.monotonic() + seconds
    done = 0
    t0 = time.perf_counter()
    for name in names:
        rows = db.select("subscriber", ["password"], {"username": name, "domain": "example.org"})
        if not rows:
            raise SystemExit(f"lookup of {name} found nothing")
        done += 1
        if done % 1000 == 0 and time.monotonic() > deadline:
            break
    return (time.perf_counter() - t0) / done, done


def bench_raw(db: Database, n: int, queries: int, seconds: float) -> tuple[float, int]:
    """The same query on the driver's own cursor: the floor the interface adds to."""
    rng = random.Random(1)
    names = [f"user{rng.randrange(n)}" for _ in range(queries)]
    deadline = time.monotonic() + seconds
    done = 0
    if db.dialect == "sqlite":
        conn = sqlite3.connect(db.url.path, isolation_level=None)
        sql = 'SELECT "password" FROM "subscriber" WHERE "username" = ? AND "domain" = ?'
        t0 = time.perf_counter()
        for name in names:
            conn.execute(sql, (name, "example.org")).fetchall()
            done += 1
            if done % 1000 == 0 and time.monotonic() > deadline:
                break
        elapsed = time.perf_counter() - t0
        conn.close()
        return elapsed / done, done
    conn = db._connect()
    cur = conn.cursor()
    sql = "SELECT `password` FROM `subscriber` WHERE `username` = %s AND `domain` = %s"
    t0 = time.perf_counter()
    for name in names:
        cur.execute(sql, (name, "example.org"))
        cur.fetchall()
        done += 1
        if done % 1000 == 0 and time.monotonic() > deadline:
            break
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed / done, done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,100000")
    ap.add_argument("--queries", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=20.0, help="cap per measurement")
    ap.add_argument("--backends", default="sqlite,mariadb")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")
    work = Path(tempfile.mkdtemp(prefix="ns-dbbench-"))
    server = None
    results = []
    try:
        if "mariadb" in backends:
            from tests.helpers.mariadb import start_mariadb

            t0 = time.monotonic()
            server = start_mariadb(work / "mariadb")
            total = time.monotonic() - t0
            restarts = []
            for _ in range(3):
                restarts.append(server.restart())
            print(f"mariadb fixture: install-db {server.install_seconds:.2f} s, first start "
                  f"{total - server.install_seconds:.2f} s (incl. user), total {total:.2f} s; "
                  f"restart to ready {min(restarts):.2f}-{max(restarts):.2f} s")
        for backend in backends:
            for n in sizes:
                if backend == "sqlite":
                    db = open_db(f"sqlite://{work / f'bench{n}.db'}")
                else:
                    assert server is not None
                    db = open_db(server.url(server.create_database()))
                create_schema(db)
                t0 = time.perf_counter()
                populate(db, n)
                fill = time.perf_counter() - t0
                per_q, count = bench_interface(db, n, args.queries, args.seconds)
                raw_q, raw_count = bench_raw(db, n, args.queries, args.seconds)
                results.append((backend, n, fill, per_q, count, raw_q, raw_count))
                db.close()
        print(f"{'backend':8} {'subscribers':>11} {'fill s':>7} {'natserver.db us/q':>18} "
              f"{'driver us/q':>12} {'queries':>8}")
        for backend, n, fill, per_q, count, raw_q, raw_count in results:
            print(f"{backend:8} {n:>11,} {fill:>7.2f} {per_q * 1e6:>18.1f} {raw_q * 1e6:>12.1f} "
                  f"{count:>8}")
        print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
              f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}")
    finally:
        if server is not None:
            server.cleanup()
        for p in sorted(work.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
