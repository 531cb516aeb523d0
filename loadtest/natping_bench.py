"""CPU the natping process spends per interval:
``python -m loadtest.natping_bench [--contacts 10000 100000] [--interval 30] [--rounds 3]
[--sipping] [--json]``.

For each size the location table (shm, as usrloc db_mode 0 keeps it) is filled with
that many NAT-marked contacts whose ``received`` addresses are spread over a few sink
sockets on 127.0.0.1 (bound and never read: the kernel drops what overflows, nothing
leaves the host). nathelper's real ``natping`` hook is then driven through ``--rounds``
whole intervals on a simulated clock - the schedule's ticks run back to back - and sends
every keepalive with a real ``sendto`` from a socket bound on 127.0.0.1, as the natping
process does from the inherited listen socket. Reported per interval: packets, CPU
seconds (process time), CPU per contact, share of one core at that interval, the
ticks the interval is cut into and the most expensive tick (the largest burst).
Everything is bounded by the contact count and the number of rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from typing import Any

from natserver.context import Context
from natserver.modules.usrloc import Contact
from natserver.script import load
from natserver.shm import Tables
from natserver.stats import Stats
from natserver.workers.sip import SocketTransport

SINKS = 16
NAT_FLAG = 6


def cfg_text(contacts: int, interval: int, sipping: bool) -> str:
    extra = ""
    if sipping:
        extra = ('modparam("nathelper", "sipping_flag", 6)\n'
                 'modparam("nathelper", "sipping_from", "sip:pinger@example.com")\n')
    return f"""
listen=127.0.0.1
port=5060
children=1
ul_table_size={max(64, contacts)}
loadmodule "sl.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "nathelper.so"
modparam("usrloc", "db_mode", 0)
modparam("registrar", "nat_flag", {NAT_FLAG})
modparam("nathelper", "natping_interval", {interval})
modparam("nathelper", "ping_nated_only", 1)
{extra}
route {{ break; }}
"""


class Clock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.now = time.time()


def build(contacts: int, interval: int, sipping: bool, sinks: list[int],
          send_sock: socket.socket) -> tuple[Context, Clock]:
    with tempfile.TemporaryDirectory() as tmp:
        script = load(os.path.join(tmp, "bench.cfg"), text=cfg_text(contacts, interval, sipping))
    ctx = Context(script.config)
    ctx.script = script
    ctx.secret = os.urandom(16)
    ctx.set_modules(script.modules)
    ctx.stats = Stats()
    clock = Clock()
    ctx.mono = lambda: clock.mono
    ctx.clock = lambda: clock.now
    specs: dict[str, tuple[int, int, int]] = {}
    for module in ctx.modules.values():
        specs.update(module.shm_tables(ctx))
    ctx.tables = Tables.build(specs)
    for module in ctx.modules.values():
        module.init(ctx)
    ctx.transport = SocketTransport(send_sock, ctx)
    ul = ctx.modules["usrloc"]
    expires = int(clock.now) + 86400
    for i in range(contacts):
        aor = b"user%07d" % i
        c = Contact(aor, b"sip:%s@192.168.%d.%d:5060" % (aor, i // 250 % 250, i % 250 + 1),
                    expires, cflags=1 << NAT_FLAG, callid=b"bench-%d@x" % i, cseq=1,
                    received=b"sip:127.0.0.1:%d" % sinks[i % len(sinks)],
                    user_agent=b"natping_bench", socket=b"udp:127.0.0.1:5060",
                    created=clock.now, last_modified=int(clock.now))
        with ul.locked(aor):
            ul.apply("location", aor, [c], [], clock.now)
    return ctx, clock


def run_rounds(ctx: Context, clock: Clock, interval: int, rounds: int) -> list[dict[str, Any]]:
    nh = ctx.modules["nathelper"]
    out = []
    for _ in range(rounds):
        end = clock.mono + interval
        cpu = wall = worst = 0.0
        ticks = 0
        before = ctx.stats.natpings
        while clock.mono < end:
            c0, w0 = time.process_time(), time.perf_counter()
            delay = nh.natping(ctx, clock.now)
            c1 = time.process_time() - c0
            wall += time.perf_counter() - w0
            cpu += c1
            worst = max(worst, c1)
            ticks += 1
            step = 1.0 if delay is None else delay
            clock.mono += step
            clock.now += step
        sent = ctx.stats.natpings - before
        out.append({"sent": sent, "cpu_s": cpu, "wall_s": wall, "calls": ticks,
                    "worst_tick_ms": worst * 1000.0})
    return out


def measure(contacts: int, interval: int, rounds: int, sipping: bool) -> dict[str, Any]:
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(SINKS)]
    send_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in sinks:
            s.bind(("127.0.0.1", 0))
        send_sock.bind(("127.0.0.1", 0))
        t0 = time.perf_counter()
        ctx, clock = build(contacts, interval, sipping, [s.getsockname()[1] for s in sinks],
                           send_sock)
        fill = time.perf_counter() - t0
        try:
            results = run_rounds(ctx, clock, interval, rounds)
            stripes = ctx.tables["location"].stripes
            slices = ctx.modules["nathelper"].pinger.schedule.slices
        finally:
            ctx.tables.close()
    finally:
        for s in sinks:
            s.close()
        send_sock.close()
    best = min(results, key=lambda r: r["cpu_s"])
    assert all(r["sent"] == contacts for r in results), results
    return {
        "contacts": contacts, "interval_s": interval, "sipping": sipping, "rounds": rounds,
        "stripes": stripes, "ticks_per_interval": slices, "fill_s": round(fill, 2),
        "sent_per_interval": best["sent"],
        "cpu_s_per_interval": round(best["cpu_s"], 4),
        "cpu_us_per_contact": round(best["cpu_s"] / contacts * 1e6, 2),
        "core_share_pct": round(best["cpu_s"] / interval * 100.0, 3),
        "worst_tick_ms": round(max(r["worst_tick_ms"] for r in results), 2),
        "all_rounds_cpu_s": [round(r["cpu_s"], 4) for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contacts", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--interval", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sipping", action="store_true", help="OPTIONS pings instead of 4 bytes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.interval < 1 or args.rounds < 1 or min(args.contacts) < 1:
        ap.error("--interval, --rounds and --contacts must be positive")
    rows = [measure(n, args.interval, args.rounds, args.sipping) for n in args.contacts]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    kind = "OPTIONS" if args.sipping else "4-byte UDP"
    print(f"natping, {kind} keepalives, interval {args.interval} s, best of {args.rounds} rounds")
    print(f"{'contacts':>9} {'ticks':>6} {'sent':>8} {'CPU s/int':>10} {'us/contact':>11} "
          f"{'core %':>7} {'worst tick ms':>14}")
    for r in rows:
        print(f"{r['contacts']:>9} {r['ticks_per_interval']:>6} {r['sent_per_interval']:>8} "
              f"{r['cpu_s_per_interval']:>10.3f} {r['cpu_us_per_contact']:>11.2f} "
              f"{r['core_share_pct']:>7.2f} {r['worst_tick_ms']:>14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
