"""Per-message parse + route cost of a REGISTER and an INVITE over the seed's main route
(conf/natserver.cfg compiled), in-process, no sockets.

    python -m loadtest.parse_bench [--count 2000] [--repeat 5] [--json]

The server is ``loadtest.hotpath_bench.Server``: conf/natserver.cfg as loadtest.compare
runs it (a temporary SQLite with 1,000 subscribers), the modules initialised as a SIP
worker, the real shared-memory tables, datagrams sent into a list. The messages are the
load generator's (``hotpath_bench.Uac``). Timed with ``time.process_time`` around
``receive()`` only, per message kind; each figure is the best of ``--repeat`` runs of
``--count`` messages (the least disturbed run on a shared machine):

- ``REGISTER -> 100 + 401``: the main route's sanity checks, then route[2]: search,
  nat_uac_test, sl_send_reply 100, www_authorize (no credentials) and www_challenge;
- ``REGISTER auth -> 100 + 200``: the same with credentials: the subscriber read from
  SQLite, check_to, consume_credentials, save (usrloc db_mode 2, shared memory);
- ``INVITE -> 407``: sanity checks, record_route, loose_route, route[3]:
  proxy_authorize (no credentials), proxy_challenge;
- ``INVITE auth -> 100 + INVITE``: with credentials: check_from, lookup("aliases"),
  lookup("location"), route[4], t_relay (a transaction in shared memory).

The messages each kind needs first (the 401/407 whose nonce the credentials answer, the
callee's REGISTER, a 486 and ACK that end each relayed INVITE's transaction, the timers
that expire them) run outside the clock. For scale, the same bytes are parsed alone:
the boundary scan, plus the five headers a proxy always reads, plus every parsed view
(``loadtest.sip_bench``'s touch functions) - lazy parsing is what keeps the first two
far below the third. Every loop is bounded by ``--count``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest import sipmsg  # noqa: E402
from loadtest.hotpath_bench import (  # noqa: E402
    DOMAIN, UAC, UAS, USERS, Ids, Server, Uac, expect, register_callees, user)
from loadtest.sip_bench import touch5, touch_all  # noqa: E402
from natserver.sip.message import Message  # noqa: E402

KINDS = {
    "REGISTER": "REGISTER -> 100 + 401",
    "REGISTER auth": "REGISTER auth -> 100 + 200",
    "INVITE": "INVITE -> 407",
    "INVITE auth": "INVITE auth -> 100 + INVITE",
}


class Clocked:
    """``receive()`` of the messages the run times, CPU seconds summed per kind."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.spent: dict[str, float] = dict.fromkeys(KINDS, 0.0)
        self.samples: dict[str, bytes] = {}

    def feed(self, kind: str, data: bytes, src: tuple[str, int]) -> list[bytes]:
        t = time.process_time()
        out = self.server.feed(data, src)
        self.spent[kind] += time.process_time() - t
        self.samples.setdefault(kind, data)
        return out


def register_round(server: Server, clk: Clocked, uac: Uac, i: int) -> None:
    name, pw = user(1 + i % (USERS // 2))
    out = clk.feed("REGISTER", uac.register(name, UAC[1]), UAC)
    expect(out, b"SIP/2.0 100", b"SIP/2.0 401")
    auth = uac.authorization(b"Authorization", out[1], 401, name, pw, b"REGISTER",
                             uac.reg_uri)
    expect(clk.feed("REGISTER auth", uac.register(name, UAC[1], auth), UAC),
           b"SIP/2.0 100", b"SIP/2.0 200")


def invite_round(server: Server, clk: Clocked, uac: Uac, i: int) -> None:
    half = USERS // 2
    caller = user(1 + i % half)
    callee = user(half + 1 + i % half)
    ids = uac.ids
    server.mono += 0.005
    ruri = b"sip:%s@%s" % (callee[0], DOMAIN)
    cid, ftag, key = ids.key() + b"@lt", ids.key(), ids.key()
    out = clk.feed("INVITE", uac.invite(ruri, caller[0], ftag, cid, 1, key), UAC)
    expect(out, b"SIP/2.0 407")
    server.feed(_ack(uac, ruri, caller[0], ftag, sipmsg.to_tag(out[0]) or b"", cid, 1, key),
                UAC)
    auth = uac.authorization(b"Proxy-Authorization", out[0], 407, caller[0], caller[1],
                             b"INVITE", ruri)
    key = ids.key()
    out = clk.feed("INVITE auth", uac.invite(ruri, caller[0], ftag, cid, 2, key, auth), UAC)
    expect(out, b"SIP/2.0 100", b"INVITE ")
    # the callee refuses: the transaction ends, its timers run after the measured loop
    req = sipmsg.parse_request(out[1])
    assert req is not None
    out = server.feed(sipmsg.reply(req, 486, b"Busy Here", ids.key()), UAS)
    busy = next((d for d in out if d.startswith(b"SIP/2.0 486")), None)
    assert busy is not None, [d[:40] for d in out]
    server.feed(_ack(uac, ruri, caller[0], ftag, sipmsg.to_tag(busy) or b"", cid, 2, key), UAC)


def _ack(uac: Uac, ruri: bytes, caller: bytes, ftag: bytes, rtag: bytes, cid: bytes,
         cseq: int, key: bytes) -> bytes:
    """The UAC's ACK for a non-2xx final reply (same branch as its INVITE)."""
    return (b"ACK %s SIP/2.0\r\n%s%s;rport\r\nMax-Forwards: 70\r\n"
            b"From: <sip:%s@%s>;tag=%s\r\nTo: <%s>;tag=%s\r\nCall-ID: %s\r\n"
            b"CSeq: %d ACK\r\nUser-Agent: natserver-loadtest\r\nContent-Length: 0\r\n\r\n" % (
                ruri, uac.via, key, caller, DOMAIN, ftag, ruri, rtag, cid, cseq))


def drain(server: Server) -> None:
    """Expire every transaction of the run (not timed)."""
    table = server.ctx.tables["transactions"]
    for _ in range(1000):
        if not table.count():
            return
        server.mono += 5.0
        server.timers()
    raise AssertionError(f"{table.count()} transactions left after the run")


def one_run(server: Server, uac: Uac, count: int) -> Clocked:
    clk = Clocked(server)
    for i in range(count):
        register_round(server, clk, uac, i)
    for i in range(count):
        invite_round(server, clk, uac, i)
    drain(server)
    return clk


def parse_only(data: bytes, count: int, repeat: int) -> dict[str, float]:
    """CPU us per message of parsing ``data`` alone, three depths, best of ``repeat``."""
    cases: dict[str, Callable[[bytes], object]] = {
        "scan": Message.parse, "scan + 5 headers": touch5, "scan + all views": touch_all}
    out = {}
    for name, fn in cases.items():
        best = float("inf")
        for _ in range(repeat):
            t = time.process_time()
            for _ in range(count):
                fn(data)
            best = min(best, time.process_time() - t)
        out[name] = best / count * 1e6
    return out


def measure(count: int, repeat: int, work: Path) -> dict[str, object]:
    server = Server(work)
    try:
        uac = Uac(Ids())
        register_callees(server, uac)
        warm = one_run(server, uac, min(count, 100))   # statements, caches, resolver
        gc.collect()
        best: dict[str, float] = dict.fromkeys(KINDS, float("inf"))
        for _ in range(repeat):
            spent = one_run(server, uac, count).spent
            for kind, t in spent.items():
                best[kind] = min(best[kind], t)
        route = {}
        for kind, t in best.items():
            us = t / count * 1e6
            route[kind] = {"label": KINDS[kind], "bytes": len(warm.samples[kind]),
                           "us_per_message": us, "messages_per_s": 1e6 / us if us else 0.0}
        parse = {kind: parse_only(warm.samples[kind], count, repeat) for kind in KINDS}
        return {"count": count, "repeat": repeat, "python": platform.python_version(),
                "cpus": os.cpu_count(), "loadavg": os.getloadavg()[0],
                "route": route, "parse": parse}
    finally:
        server.close()


def render(doc: dict[str, object]) -> str:
    route = doc["route"]
    parse = doc["parse"]
    assert isinstance(route, dict) and isinstance(parse, dict)
    lines = [f"parse + route over conf/natserver.cfg, in-process: {doc['count']} messages per "
             f"kind, best of {doc['repeat']} (CPU time)",
             f"  {'message':<30} {'bytes':>6} {'us/message':>11} {'messages/s':>11}"]
    for kind, row in route.items():
        lines.append(f"  {row['label']:<30} {row['bytes']:>6} {row['us_per_message']:>11.1f} "
                     f"{row['messages_per_s']:>11,.0f}")
    lines.append("parse alone, the same bytes (us/message):")
    lines.append(f"  {'message':<30} {'scan':>8} {'+5 hdrs':>8} {'all':>8}")
    for kind, row in parse.items():
        lines.append(f"  {kind:<30} {row['scan']:>8.1f} {row['scan + 5 headers']:>8.1f} "
                     f"{row['scan + all views']:>8.1f}")
    lines.append(f"python {doc['python']}, {doc['cpus']} cpus, load average "
                 f"{doc['loadavg']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000, help="messages per kind per run")
    ap.add_argument("--repeat", type=int, default=5, help="runs (best taken)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = ap.parse_args(argv)
    if args.count < 1 or args.repeat < 1:
        ap.error("--count and --repeat must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="ns-parse-"))
    try:
        doc = measure(args.count, args.repeat, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
