"""Cost of natserver.shm operations: ``python -m loadtest.shm_bench [--ops N] [--json]``.

Prints nanoseconds per operation for a transaction-sized table (64-byte keys, 200-byte
values, 16384 records + headroom, as ``tm_table_size`` gives): single process, then
``--procs`` forked processes contending on the same table (every process on all
stripes, and every process on one hot stripe), plus the cost of a stripe lock
(lock + unlock) and of the hash candidates. Every loop is bounded by its count.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import select
import struct
import sys
import time
import zlib
from collections.abc import Callable

from natserver.shm import LockSet, Table, default_stripes

KEY_SIZE = 64
VALUE_SIZE = 200
RECORDS = 16384
PREFILL = 10000


def branch(i: int) -> bytes:
    return b"z9hG4bK-%08x-1---d8754z-%d" % (i * 2654435761 & 0xFFFFFFFF, i)


def per_op(fn: Callable[[int], None], ops: int, repeat: int = 3) -> tuple[float, float]:
    """Best of ``repeat`` runs of ``fn(ops)``: (wall, CPU) ns per operation. CPU time
    is the figure to trust on a machine busy with other work."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        w0, c0 = time.perf_counter_ns(), time.process_time_ns()
        fn(ops)
        wall = min(wall, (time.perf_counter_ns() - w0) / ops)
        cpu = min(cpu, (time.process_time_ns() - c0) / ops)
    return wall, cpu


def make_table(locks: LockSet) -> Table:
    slots = RECORDS * 4 // 3
    table = Table.create("bench", capacity=slots, key_size=KEY_SIZE, value_size=VALUE_SIZE,
                         stripes=default_stripes(slots), lockset=locks)
    value = bytes(VALUE_SIZE)
    for i in range(PREFILL):
        table.put(branch(i), value)
    return table


def single(table: Table, locks: LockSet, ops: int) -> dict[str, tuple[float, float]]:
    keys = [branch(i) for i in range(PREFILL)]
    missing = [branch(i) for i in range(PREFILL, 2 * PREFILL)]
    value = b"v" * VALUE_SIZE
    handles = [table.find(k) for k in keys[:1000]]
    nk = len(keys)
    out: dict[str, tuple[float, float]] = {}

    def loop_get(n: int) -> None:
        get = table.get
        for i in range(n):
            get(keys[i % nk])

    def loop_get_miss(n: int) -> None:
        get = table.get
        for i in range(n):
            get(missing[i % nk])

    def loop_put(n: int) -> None:
        put = table.put
        for i in range(n):
            put(keys[i % nk], value)

    def loop_add_delete(n: int) -> None:
        add, delete = table.add, table.delete
        for i in range(n // 2):
            add(missing[i % nk], value)
            delete(missing[i % nk])

    counter = struct.Struct("<Q")

    def bump(old: bytes | None) -> bytes:
        return old if old is None else counter.pack(counter.unpack_from(old)[0] + 1) + old[8:]

    def loop_update(n: int) -> None:
        update = table.update
        for i in range(n):
            update(keys[i % nk], bump)

    def loop_get_at(n: int) -> None:
        get_at = table.get_at
        for i in range(n):
            get_at(*handles[i % 1000])

    def loop_lock(n: int) -> None:
        acquire, release = locks.acquire, locks.release
        for i in range(n):
            acquire(i & 63)
            release(i & 63)

    def loop_lockf(n: int) -> None:
        fd, lockf, ex, un = locks.fd, fcntl.lockf, fcntl.LOCK_EX, fcntl.LOCK_UN
        for i in range(n):
            lockf(fd, ex, 1, i & 63)
            lockf(fd, un, 1, i & 63)

    def loop_empty(n: int) -> None:
        for i in range(n):
            keys[i % nk]

    out["get (hit)"] = per_op(loop_get, ops)
    out["get (miss)"] = per_op(loop_get_miss, ops)
    out["put (replace)"] = per_op(loop_put, ops)
    out["add+delete, per op"] = per_op(loop_add_delete, ops)
    out["update (read-modify-write)"] = per_op(loop_update, ops)
    out["get_at (handle)"] = per_op(loop_get_at, ops)
    out["lock+unlock (LockSet)"] = per_op(loop_lock, ops)
    out["lock+unlock (bare fcntl.lockf)"] = per_op(loop_lockf, ops)
    out["loop overhead (included above)"] = per_op(loop_empty, ops)
    return out


def hashes(ops: int) -> dict[str, tuple[float, float]]:
    keys = [branch(i) for i in range(1000)]
    secret = os.urandom(16)
    crc32 = zlib.crc32
    blake2b = hashlib.blake2b
    record = bytes(12 + VALUE_SIZE + 40)

    def loop_crc(n: int) -> None:
        for i in range(n):
            crc32(keys[i % 1000])

    def loop_blake(n: int) -> None:
        for i in range(n):
            int.from_bytes(blake2b(keys[i % 1000], digest_size=8).digest(), "little")

    def loop_blake_keyed(n: int) -> None:
        for i in range(n):
            int.from_bytes(blake2b(keys[i % 1000], digest_size=8, key=secret).digest(),
                           "little")

    def loop_checksum(n: int) -> None:
        for _ in range(n):
            crc32(record)

    return {
        "hash crc32 (used)": per_op(loop_crc, ops),
        "hash blake2b-64": per_op(loop_blake, ops),
        "hash blake2b-64 keyed": per_op(loop_blake_keyed, ops),
        f"record checksum crc32 ({len(record)} B)": per_op(loop_checksum, ops),
    }


def contended(table: Table, procs: int, ops: int, hot: bool) -> dict[str, float]:
    """``procs`` processes, each ``ops`` operations (3 get : 1 put): wall and CPU ns per
    op as seen by one process (mean over processes) and the aggregate rate."""
    keys = [branch(i) for i in range(PREFILL)]
    if hot:  # only keys of stripe 0: every operation contends for one lock
        keys = [k for k in keys if zlib.crc32(k) % table.stripes == 0]
    value = b"w" * VALUE_SIZE
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pids = []
    for p in range(procs):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.read(go_r, 1)
                get, put = table.get, table.put
                nk = len(keys)
                t0, c0 = time.perf_counter_ns(), time.process_time_ns()
                for i in range(ops):
                    k = keys[(i * 7 + p * 1013) % nk]
                    if i & 3:
                        get(k)
                    else:
                        put(k, value)
                os.write(res_w, struct.pack("<QQ", time.perf_counter_ns() - t0,
                                            time.process_time_ns() - c0))
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    t0 = time.perf_counter_ns()
    os.write(go_w, b"g" * procs)
    elapsed = []
    deadline = time.monotonic() + 600
    while len(elapsed) < procs and time.monotonic() < deadline:
        if select.select([res_r], [], [], 1.0)[0]:
            elapsed.append(struct.unpack("<QQ", os.read(res_r, 16)))
    wall = time.perf_counter_ns() - t0
    for pid in pids:
        os.waitpid(pid, 0)
    for fd in (go_r, go_w, res_r, res_w):
        os.close(fd)
    if len(elapsed) < procs:
        raise RuntimeError("a benchmark process did not report")
    return {"wall ns/op, per process": sum(e[0] for e in elapsed) / procs / ops,
            "CPU ns/op, per process": sum(e[1] for e in elapsed) / procs / ops,
            "aggregate ops/s": procs * ops / (wall / 1e9)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.shm_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=100_000, help="operations per loop")
    parser.add_argument("--procs", type=int, default=4, help="contending processes")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if not 1000 <= args.ops <= 10_000_000 or not 1 <= args.procs <= 64:
        parser.error("--ops must be 1000..10000000 and --procs 1..64")
    locks = LockSet.create()
    table = make_table(locks)
    report: dict[str, object] = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "table": f"{table.capacity} records x {table.record_size} B, {table.stripes} stripes, "
                 f"{PREFILL} keys",
        "single process, ns/op": single(table, locks, args.ops),
        "hashing, ns/op": hashes(args.ops),
        f"{args.procs} processes, all stripes": contended(table, args.procs, args.ops, False),
        f"{args.procs} processes, one hot stripe": contended(table, args.procs, args.ops,
                                                             True),
    }
    table.close()
    locks.close()
    if args.json:
        import orjson
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    load = os.getloadavg()[0]
    print(f"load average (1 min) at the end: {load:.1f}")
    for section, body in report.items():
        if not isinstance(body, dict):
            print(f"{section}: {body}")
            continue
        print(f"{section}:")
        for name, value in body.items():
            if isinstance(value, tuple):
                print(f"  {name:<38} {value[0]:>9,.0f} ns wall {value[1]:>9,.0f} ns CPU")
            else:
                unit = "" if "ops/s" in name else " ns"
                print(f"  {name:<38} {value:>9,.0f}{unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
