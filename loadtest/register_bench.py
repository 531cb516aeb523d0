"""REGISTER-with-digest handling cost, in-process: the real receive path, the compiled
seed route[2] (www_authorize -> www_challenge / check_to / consume_credentials / save),
usrloc db_mode 2 in shared memory, auth_db on SQLite or MariaDB - with 1,000 and
100,000 subscribers (and as many bindings already in the location table).

    python loadtest/register_bench.py [--sizes 1000,100000] [--count 3000] [--repeat 5]
                                      [--backends sqlite,mariadb] [--seconds 30]

One round is what a UA does: REGISTER -> 401 (a nonce), REGISTER with credentials ->
200. Only the server's side is timed (``receive()`` of each request, sending into a
list); the client's digest is computed outside the clock. Each figure is the median of
``--repeat`` measurements (the machine may be shared); loops are bounded by ``--count``
rounds and by ``--seconds`` per measurement. MariaDB is a throwaway server
started like the test fixture (tests/helpers/mariadb.py), over TCP on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from natserver.context import Context, ListTransport  # noqa: E402
from natserver.db import Database, open_db  # noqa: E402
from natserver.db.schema import create_schema  # noqa: E402
from natserver.modules.usrloc import Contact  # noqa: E402
from natserver.receive import receive  # noqa: E402
from natserver.script import load  # noqa: E402
from natserver.shm import Tables  # noqa: E402

DOMAIN = "example.org"
SRC = ("192.0.2.50", 5062)
LOCAL = ("127.0.0.1", 5060)
NONCE = re.compile(rb'nonce="([0-9a-f]+)"')

CFG = """
listen=127.0.0.1
port=5060
ul_table_size=%(table)d
loadmodule "sl.so"
loadmodule "textops.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
loadmodule "uri_db.so"
modparam("auth_db|uri_db|usrloc", "db_url", "%(url)s")
modparam("auth_db", "calculate_ha1", 1)
modparam("auth_db", "password_column", "password")
modparam("usrloc", "db_mode", 2)
modparam("registrar", "nat_flag", 6)
route {
  if (method=="REGISTER") { route(2); break; };
  sl_send_reply("404", "Not Here");
}
route[2] {
  sl_send_reply("100", "Trying");
  if (!www_authorize("", "subscriber")) {
    www_challenge("", "0");
    break;
  };
  if (!check_to()) {
    sl_send_reply("401", "Unauthorized");
    break;
  };
  consume_credentials();
  if (!save("location")) {
    sl_reply_error();
  };
}
"""


def populate(db: Database, n: int) -> None:
    batch = 5000
    for start in range(0, n, batch):
        rows = [{"username": f"user{i}", "domain": DOMAIN, "password": f"pw{i}",
                 "ha1": "", "ha1b": ""} for i in range(start, min(n, start + batch))]
        with db.transaction():
            db.insert_many("subscriber", rows)


def build(url: str, n: int, tmp: Path) -> Context:
    script = load(str(tmp / "bench.cfg"), text=CFG % {"url": url, "table": n + 20000})
    ctx = Context(script.config)
    ctx.script = script
    ctx.secret = os.urandom(16)
    ctx.set_modules(script.modules)
    ctx.transport = ListTransport()
    specs: dict[str, tuple[int, int, int]] = {}
    for module in ctx.modules.values():
        specs.update(module.shm_tables(ctx))
    ctx.tables = Tables.build(specs)
    for module in ctx.modules.values():
        module.init(ctx)
    ul = ctx.modules["usrloc"]
    now = time.time()
    for i in range(n):  # every subscriber already bound once: a full location table
        aor = f"user{i}".encode()
        ul.apply("location", aor, [Contact(aor, b"sip:user%d@10.1.%d.%d:5060" % (
            i, i // 250 % 250, i % 250), int(now) + 3600, -1, b"pre", 1, created=now)], (), now)
    return ctx


def request(user: str, cseq: int, auth: str | None) -> bytes:
    lines = [
        f"REGISTER sip:{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/UDP {SRC[0]}:{SRC[1]};rport;branch=z9hG4bK{user}x{cseq}",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{DOMAIN}>;tag=f{cseq}",
        f"To: <sip:{user}@{DOMAIN}>",
        f"Call-ID: bench-{user}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{user}@{SRC[0]}:{SRC[1]}>",
        "Expires: 3600",
        "User-Agent: register_bench",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def rounds(ctx: Context, n: int, count: int, seconds: float,
           base: int = 10) -> tuple[float, float, int]:
    """(mean server seconds for the 401 request, for the 200 request, rounds done).
    CSeqs start at ``base``: each user keeps one Call-ID, so they must keep growing."""
    transport = ctx.transport
    rng = random.Random(7)
    t401 = t200 = 0.0
    done = 0
    deadline = time.monotonic() + seconds
    clock = time.perf_counter
    for k in range(count):
        i = rng.randrange(n)
        user = f"user{i}"
        data = request(user, base + 2 * k, None)
        now = time.time()
        t0 = clock()
        receive(ctx, data, SRC, LOCAL, now)
        t401 += clock() - t0
        sent = transport.take()
        reply = sent[-1][0]
        assert reply.startswith(b"SIP/2.0 401"), reply[:40]
        nonce = NONCE.search(reply).group(1).decode()  # type: ignore[union-attr]
        ha2 = md5(f"REGISTER:sip:{DOMAIN}")
        resp = md5(f"{md5(f'{user}:{DOMAIN}:pw{i}')}:{nonce}:{ha2}")
        auth = (f'Digest username="{user}", realm="{DOMAIN}", nonce="{nonce}", '
                f'uri="sip:{DOMAIN}", response="{resp}"')
        data = request(user, base + 2 * k + 1, auth)
        t0 = clock()
        receive(ctx, data, SRC, LOCAL, now)
        t200 += clock() - t0
        reply = transport.take()[-1][0]
        assert reply.startswith(b"SIP/2.0 200"), reply[:60]
        done += 1
        if done % 200 == 0 and time.monotonic() > deadline:
            break
    return t401 / done, t200 / done, done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,100000")
    ap.add_argument("--count", type=int, default=3000, help="rounds per measurement")
    ap.add_argument("--repeat", type=int, default=5, help="measurements per figure (median)")
    ap.add_argument("--seconds", type=float, default=30.0, help="cap per measurement")
    ap.add_argument("--backends", default="sqlite,mariadb")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")
    work = Path(tempfile.mkdtemp(prefix="ns-regbench-"))
    server = None
    results = []
    try:
        if "mariadb" in backends:
            from tests.helpers.mariadb import start_mariadb
            server = start_mariadb(work / "mariadb")
            # The test fixture's 16 MB buffer pool would put 100,000 subscribers on disk:
            # give it room, as any real server has.
            conn = server.admin()
            with conn.cursor() as cur:
                cur.execute("SET GLOBAL innodb_buffer_pool_size = 268435456")
            conn.close()
        for backend in backends:
            ctxs = {}
            for n in sizes:
                if backend == "sqlite":
                    url = f"sqlite://{work / f'bench{n}.db'}"
                else:
                    assert server is not None
                    url = server.url(server.create_database())
                with open_db(url) as db:
                    create_schema(db)
                    populate(db, n)
                ctxs[n] = build(url, n, work)
                rounds(ctxs[n], n, 200, args.seconds)  # warm caches and statement plans
            # Sizes take turns, so a busy spell of a shared machine hits them alike.
            runs: dict[int, list[tuple[float, float, int]]] = {n: [] for n in sizes}
            for r in range(max(1, args.repeat)):
                for n in sizes:
                    runs[n].append(rounds(ctxs[n], n, args.count, args.seconds,
                                          base=1000 + 2 * args.count * r))
            for n in sizes:
                ordered = sorted(runs[n], key=lambda run: run[0] + run[1])
                a, b, done = ordered[len(ordered) // 2]
                results.append((backend, n, a, b, done))
                for module in ctxs[n].modules.values():
                    db = getattr(module, "db", None)
                    if db is not None:
                        db.close()
                ctxs[n].tables.close()
        print(f"{'backend':8} {'subscribers':>11} {'401 us':>8} {'200 us':>8} "
              f"{'round us':>9} {'per request us':>15} {'rounds':>7}")
        for backend, n, a, b, done in results:
            print(f"{backend:8} {n:>11,} {a * 1e6:>8.0f} {b * 1e6:>8.0f} {(a + b) * 1e6:>9.0f} "
                  f"{(a + b) * 1e6 / 2:>15.0f} {done:>7}")
        print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
              f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f} (median of {args.repeat})")
    finally:
        if server is not None:
            server.cleanup()
        for p in sorted(work.rglob("*"), reverse=True):
            p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
        work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
