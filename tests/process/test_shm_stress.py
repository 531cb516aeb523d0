"""Four forked processes hammer one shared table for a bounded time.

Each process logs what the table acknowledged:
- shared keys, updated by everybody with ``update`` (version + 1): every version of a
  key must have been acknowledged exactly once (no lost or doubled read-modify-write)
  and the table must end at the highest one;
- its own keys (a multimap): add / put / delete / delete_if / update_all against a model
  kept by that process alone, while the other processes churn the same stripes;
- reads of shared keys must never go back in version, never show a torn value, and
  scans must never show a record that fails its own consistency check.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import struct
import time
from collections import Counter

from natserver.shm import LockSet, Table, TableFull

PROCS = 4
DURATION = 2.5
SHARED = 12
OWN = 10
VALUE = struct.Struct("<QQQ")  # version (or payload), writer, check
CHECK = 0x9E3779B97F4A7C15


def pack(a: int, b: int) -> bytes:
    return VALUE.pack(a, b, (a * 31 + b) ^ CHECK)


def unpack(v: bytes) -> tuple[int, int]:
    a, b, check = VALUE.unpack(v)
    if check != (a * 31 + b) ^ CHECK:
        raise AssertionError(f"inconsistent value {v!r}")
    return a, b


def shared_key(i: int) -> bytes:
    return b"shared-%d" % i


def own_key(p: int, i: int) -> bytes:
    return b"own-%d-%d" % (p, i)


def worker(table: Table, p: int, deadline: float, out: str) -> None:
    rnd = random.Random(p)
    acks: dict[int, list[int]] = {i: [] for i in range(SHARED)}
    seen = [0] * SHARED
    model: dict[int, Counter[int]] = {i: Counter() for i in range(OWN)}
    problems: list[str] = []
    ops = fulls = 0
    seq = 0
    while time.monotonic() < deadline:
        ops += 1
        seq += 1
        r = rnd.random()
        try:
            if r < 0.35:
                i = rnd.randrange(SHARED)

                def bump(old: bytes | None) -> bytes:
                    return pack(1 if old is None else unpack(old)[0] + 1, p)

                version = unpack(table.update(shared_key(i), bump))[0]
                acks[i].append(version)
                seen[i] = max(seen[i], version)
            elif r < 0.5:
                i = rnd.randrange(SHARED)
                v = table.get(shared_key(i))
                version = 0 if v is None else unpack(v)[0]
                if version < seen[i]:
                    problems.append(f"shared {i}: read {version} after {seen[i]}")
                seen[i] = max(seen[i], version)
            elif r < 0.995:
                i = rnd.randrange(OWN)
                key = own_key(p, i)
                kind = rnd.randrange(5)
                if kind == 0:
                    table.add(key, pack(seq, p))
                    model[i][seq] += 1
                elif kind == 1:
                    before = table.get(key)
                    table.put(key, pack(seq, p))
                    if before is not None:
                        model[i][unpack(before)[0]] -= 1
                    model[i][seq] += 1
                elif kind == 2:
                    before = table.get(key)
                    if table.delete(key) != (before is not None):
                        problems.append(f"own {i}: delete disagrees with get")
                    if before is not None:
                        model[i][unpack(before)[0]] -= 1
                elif kind == 3:
                    n = table.delete_if(key, lambda v: unpack(v)[0] % 3 == 0)
                    gone = sum(c for s, c in model[i].items() if s % 3 == 0)
                    if n != gone:
                        problems.append(f"own {i}: delete_if removed {n}, model {gone}")
                    for s in [s for s in model[i] if s % 3 == 0]:
                        del model[i][s]
                else:
                    kept = table.update_all(key, lambda v: pack(unpack(v)[0] + 3, p))
                    model[i] = Counter({s + 3: c for s, c in model[i].items()})
                    if sorted(unpack(v)[0] for v in kept) != sorted(model[i].elements()):
                        problems.append(f"own {i}: update_all kept other records")
                model[i] = +model[i]
            else:
                for entry in table.scan():
                    unpack(entry.value)
        except TableFull:
            fulls += 1
        except AssertionError as exc:
            problems.append(str(exc))
    with open(out, "w") as f:
        json.dump({"acks": acks, "model": {i: sorted(c.elements()) for i, c in model.items()},
                   "problems": problems, "ops": ops, "fulls": fulls}, f)


def run_children(table: Table, tmp_path, duration: float) -> list[dict]:
    deadline = time.monotonic() + duration
    pids = []
    for p in range(PROCS):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                worker(table, p, deadline, str(tmp_path / f"worker{p}.json"))
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    limit = time.monotonic() + duration + 30
    try:
        for pid in pids:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
                    break
                assert time.monotonic() < limit, "a stress worker did not finish"
                select.select([], [], [], 0.05)
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    results = []
    for p in range(PROCS):
        with open(tmp_path / f"worker{p}.json") as f:
            results.append(json.load(f))
    return results


def test_concurrent_updates_lose_nothing_and_the_table_ends_as_acknowledged(tmp_path):
    locks = LockSet.create()
    # 4 stripes of 64 slots: every process meets the others in every stripe
    table = Table.create("stress", capacity=256, key_size=16, value_size=VALUE.size,
                         stripes=4, lockset=locks)
    try:
        results = run_children(table, tmp_path, DURATION)
        problems = [msg for r in results for msg in r["problems"]]
        assert problems == []
        assert all(r["ops"] > 100 for r in results)
        for i in range(SHARED):
            acked = [v for r in results for v in r["acks"][str(i)]]
            final = table.get(shared_key(i))
            top = 0 if final is None else unpack(final)[0]
            assert len(acked) == len(set(acked)), f"shared {i}: a version acknowledged twice"
            assert set(acked) == set(range(1, top + 1)), f"shared {i}: lost updates"
            if acked:
                writer = [p for p, r in enumerate(results) if top in r["acks"][str(i)]]
                assert unpack(final)[1] == writer[0]
        for p, r in enumerate(results):
            for i in range(OWN):
                have = sorted(unpack(v)[0] for v in table.get_all(own_key(p, i)))
                assert have == r["model"][str(i)], f"process {p} key {i}"
        total = sum(len(r["model"][str(i)]) for r in results for i in range(OWN))
        assert table.count() == total + sum(table.get(shared_key(i)) is not None
                                            for i in range(SHARED))
        assert table.check() == []
    finally:
        table.close()
        locks.close()
