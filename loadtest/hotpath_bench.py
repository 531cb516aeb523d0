"""CPU of the SIP hot path, in-process, over the production cfg (conf/natserver.cfg).

    python -m loadtest.hotpath_bench [--scenarios options,register,call] [--count 2000]
                                     [--repeat 5] [--profile] [--profile-top 40]

The receive path runs in this process exactly as a SIP worker runs it: the Context is
built as the supervisor builds it (modules' ``init`` with the real shared-memory tables
and the secret, then ``child_init`` as sip worker 1/2), the cfg is conf/natserver.cfg as
``loadtest.compare`` rewrites it for a benchmark (listen, db_url: a temporary SQLite
file with the subscribers provisioned), and datagrams go into a ListTransport. The
UAs are simulated with the load generator's own SIP (loadtest/sipmsg.py), message for
message what ``natserver-loadtest`` sends; only ``receive()`` and the worker's timer
hook are timed (``time.process_time``), summed per message kind.

Scenarios (one "operation" each):

- ``options``: a stateless OPTIONS to the server (the cfg's monitoring answer).
- ``register``: REGISTER -> 100 + 401, REGISTER with credentials -> 100 + 200 (the
  seed's route[2]: search, nat_uac_test, www_authorize on SQLite, check_to,
  consume_credentials, save with usrloc db_mode 2).
- ``call``: INVITE -> 407, ACK, INVITE with Proxy-Authorization -> 100 + relayed
  INVITE, 180, 200, ACK (loose-routed, stateless), BYE, 200 - between two registered
  users, with tm's timers run on a virtual clock (200 calls per second), so every
  transaction also expires inside the measurement.

Each figure is the best of ``--repeat`` runs of ``--count`` operations (the machine is
shared: the minimum is the least disturbed run). ``--profile`` adds a cProfile of one
more run per scenario (tottime and cumulative).

End to end (needs root: the server forwards to addresses read from messages, so it
runs in a network namespace made for the run, with the generator):

    python -m loadtest.hotpath_bench e2e [--scenarios register,call] [--children 2]
                                         [--rate-register 300] [--rate-call 100]
                                         [--count 1500] [--repeat 3]

natserver (``-D -E``, conf/natserver.cfg as ``loadtest.compare`` runs it, 1,000
subscribers provisioned the same way) and ``natserver-loadtest`` (2 generator
processes); the server's CPU (every process, from /proc) per 1,000 operations at a
fixed rate, two ways: ``run``, the whole generator run as loadtest.compare counts it
(the call scenario's callees register first, and that is in it), and ``marginal``,
the difference between a run of ``--count`` operations and one of a fifth as many,
divided by the difference in operations - what one more operation costs, set-up and
start-up excluded (the idle processes' CPU during the extra seconds stays in).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import os
import pstats
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest import sipmsg  # noqa: E402
from loadtest.compare import NATSERVER_CFG, natserver_cfg  # noqa: E402
from natserver.context import Context, ListTransport, Proc  # noqa: E402
from natserver.db import open_db  # noqa: E402
from natserver.db.schema import create_schema  # noqa: E402
from natserver.modules import Module  # noqa: E402
from natserver.receive import receive  # noqa: E402
from natserver.script import load  # noqa: E402
from natserver.shm import Tables  # noqa: E402
from natserver.stats import COUNTER_NAMES, Stats  # noqa: E402

HOST = "127.0.0.1"
PORT = 5060
LISTEN = (HOST, PORT)
DOMAIN = b"%s:%d" % (HOST.encode(), PORT)        # what the generator uses: the target
UAC = (HOST, 40001)
UAS = (HOST, 40002)
UA = b"natserver-loadtest"
USERS = 1000                                      # subscribers (half of them callees)
WALL0 = 1.7e9                                     # virtual wall clock = WALL0 + mono
CALL_STEP = 0.005                                 # virtual seconds between calls


def user(n: int) -> tuple[bytes, bytes]:
    """The generator's default user rule: user0001 / pass0001."""
    return b"user%04d" % n, b"pass%04d" % n


# ---- the server in this process ---------------------------------------------------------

class Server:
    """natserver's receive path over the production cfg, built like the supervisor
    builds it, with a virtual clock the benchmark moves."""

    def __init__(self, work: Path, cfg_path: Path = NATSERVER_CFG) -> None:
        self.db_url = f"sqlite://{work / 'natserver.db'}"
        self._provision(self.db_url)
        text = natserver_cfg(cfg_path.read_text(), host=HOST, port=PORT, children=2,
                             fifo=str(work / "fifo"), db_url=self.db_url)
        script = load(str(work / "natserver.cfg"), text=text)
        self.mono = 1000.0
        ctx = Context(script.config, str(work / "natserver.cfg"))
        ctx.script = script
        ctx.secret = b"hotpath-bench-16"  # fixed: every run sends the same bytes
        ctx.set_modules(script.modules)
        ctx.proc = Proc("supervisor", 0, 1, 0)
        ctx.mono = lambda: self.mono
        ctx.clock = lambda: WALL0 + self.mono
        specs: dict[str, tuple[int, int, int]] = {}
        for module in ctx.modules.values():
            specs.update(module.shm_tables(ctx))
        ctx.tables = Tables.build(specs, proc_slots=8, counter_names=COUNTER_NAMES)
        for module in ctx.modules.values():
            module.init(ctx)
        # what natserver.workers.base does in a SIP worker after fork
        ctx.proc = Proc("sip worker", 1, 2, 1)
        ctx.stats = Stats()
        self.transport = ListTransport()
        ctx.transport = self.transport
        for module in ctx.modules.values():
            module.child_init(ctx)
        self.ctx = ctx
        self.hooks = [m for m in ctx.modules.values()
                      if type(m).worker_timer is not Module.worker_timer]

    @staticmethod
    def _provision(url: str) -> None:
        """``natserverctl db init`` and the subscribers, as loadtest.compare does."""
        with open_db(url) as db:
            create_schema(db)
        conn = sqlite3.connect(url.removeprefix("sqlite://"))
        with conn:
            rows = []
            for n in range(1, USERS + 1):
                name, pw = user(n)
                dom = DOMAIN.decode()
                rows.append((name.decode(), dom, pw.decode(),
                             _md5(b"%s:%s:%s" % (name, DOMAIN, pw)),
                             _md5(b"%s@%s:%s:%s" % (name, DOMAIN, DOMAIN, pw))))
            conn.executemany("INSERT INTO subscriber (username, domain, password, ha1, ha1b) "
                             "VALUES (?, ?, ?, ?, ?)", rows)
        conn.close()

    def feed(self, data: bytes, src: tuple[str, int]) -> list[bytes]:
        receive(self.ctx, data, src, LISTEN, WALL0 + self.mono)
        return [d for d, _ in self.transport.take()]

    def timers(self) -> None:
        for module in self.hooks:
            module.worker_timer(self.ctx, self.mono)

    def close(self) -> None:
        for module in self.ctx.modules.values():
            db = getattr(module, "db", None)
            if db is not None:
                db.close()
        self.ctx.tables.close()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---- the measurement ----------------------------------------------------------------------

class Meter:
    """CPU time of the server's steps, per kind; optionally under a profiler."""

    def __init__(self, server: Server, prof: cProfile.Profile | None = None,
                 transcript: list[bytes] | None = None) -> None:
        self.server = server
        self.spent: dict[str, float] = {}
        self.prof = prof
        self.transcript = transcript
        self.sampler: Sampler | None = None

    def feed(self, kind: str, data: bytes, src: tuple[str, int]) -> list[bytes]:
        cpu = time.process_time
        prof = self.prof
        t = cpu()
        if prof is not None:
            prof.enable()
        sampler = self.sampler
        if sampler is not None:
            sampler.active = True
        out = self.server.feed(data, src)
        if sampler is not None:
            sampler.active = False
        if prof is not None:
            prof.disable()
        self.spent[kind] = self.spent.get(kind, 0.0) + cpu() - t
        if self.transcript is not None:
            self.transcript += out
        return out

    def timers(self) -> None:
        t = time.process_time()
        if self.prof is not None:
            self.prof.enable()
        if self.sampler is not None:
            self.sampler.active = True
        self.server.timers()
        if self.sampler is not None:
            self.sampler.active = False
        if self.prof is not None:
            self.prof.disable()
        self.spent["timers"] = self.spent.get("timers", 0.0) + time.process_time() - t


class Sampler:
    """A statistical profiler: every ``interval`` s of CPU (ITIMER_PROF) the stack of the
    interrupted frame is counted - per function, inclusive and exclusive - while
    ``active``. Shares without cProfile's per-call overhead, which inflates call-heavy
    code several times over."""

    def __init__(self, interval: float = 0.0005) -> None:
        self.interval = interval
        self.active = False
        self.samples = 0
        self.inclusive: dict[str, int] = {}
        self.exclusive: dict[str, int] = {}

    def _on_prof(self, signum: int, frame: object) -> None:
        if not self.active or frame is None:
            return
        self.samples += 1
        seen = set()
        f = frame
        first = True
        while f is not None:
            code = f.f_code  # type: ignore[attr-defined]
            name = f"{Path(code.co_filename).name}:{code.co_firstlineno}({code.co_name})"
            if first:
                self.exclusive[name] = self.exclusive.get(name, 0) + 1
                first = False
            if name not in seen:
                seen.add(name)
                self.inclusive[name] = self.inclusive.get(name, 0) + 1
            f = f.f_back  # type: ignore[attr-defined]

    def __enter__(self) -> Sampler:
        import signal
        signal.signal(signal.SIGPROF, self._on_prof)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_DFL)

    def report(self, top: int) -> str:
        total = max(1, self.samples)
        lines = [f"{self.samples} samples; shares of the server's time (receive + timers)",
                 f"{'incl %':>7} {'excl %':>7}  function"]
        rows = sorted(self.inclusive.items(), key=lambda kv: -kv[1])
        for name, n in rows[:top]:
            lines.append(f"{100 * n / total:7.1f} {100 * self.exclusive.get(name, 0) / total:7.1f}"
                         f"  {name}")
        lines.append("exclusive, top:")
        rows = sorted(self.exclusive.items(), key=lambda kv: -kv[1])
        for name, n in rows[:top]:
            lines.append(f"        {100 * n / total:7.1f}  {name}")
        return "\n".join(lines)


def expect(out: list[bytes], *firsts: bytes) -> None:
    """The server sent exactly these datagrams (by their first bytes), in order."""
    got = [d[:len(f)] for d, f in zip(out, firsts)]
    if len(out) != len(firsts) or got != list(firsts):
        raise AssertionError(f"expected {firsts}, got {[d[:40] for d in out]}")


class Ids:
    def __init__(self) -> None:
        self.n = 0

    def key(self) -> bytes:
        self.n += 1
        return b"bench0%010x" % self.n


class Uac:
    """The generator's UAC and registration client, in plain bytes (loadtest/sipmsg.py)."""

    def __init__(self, ids: Ids) -> None:
        self.ids = ids
        self.via = b"Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK" % (HOST.encode(), UAC[1])
        self.cseq: dict[bytes, int] = {}
        self.call_ids: dict[bytes, bytes] = {}
        self.tags: dict[bytes, bytes] = {}
        self.reg_uri = b"sip:" + DOMAIN
        self.reg_ha2 = sipmsg.ha2(b"REGISTER", self.reg_uri)
        self.sdp = sipmsg.sdp(HOST.encode(), 9, 1)

    def register(self, name: bytes, port: int, auth: bytes = b"") -> bytes:
        if name not in self.call_ids:
            self.call_ids[name] = self.ids.key() + b"@lt"
            self.tags[name] = self.ids.key()
        cseq = self.cseq[name] = self.cseq.get(name, 0) + 1
        return (b"REGISTER %s SIP/2.0\r\n%s%s;rport\r\nMax-Forwards: 70\r\n"
                b"From: <sip:%s@%s>;tag=%s\r\nTo: <sip:%s@%s>\r\nCall-ID: %s\r\n"
                b"CSeq: %d REGISTER\r\nContact: <sip:%s@%s:%d>\r\nExpires: 3600\r\n"
                b"%sUser-Agent: %s\r\nContent-Length: 0\r\n\r\n" % (
                    self.reg_uri, self.via, self.ids.key(), name, DOMAIN, self.tags[name],
                    name, DOMAIN, self.call_ids[name], cseq, name, HOST.encode(), port, auth,
                    UA))

    def authorization(self, header: bytes, reply: bytes, status: int, name: bytes,
                      pw: bytes, method: bytes, uri: bytes) -> bytes:
        ch = sipmsg.challenge(reply, status)
        assert ch is not None, reply
        return sipmsg.authorization(header, ch, name, sipmsg.ha1(name, ch.realm, pw), method,
                                    uri, b"")

    def invite(self, ruri: bytes, caller: bytes, ftag: bytes, cid: bytes, cseq: int,
               key: bytes, auth: bytes = b"") -> bytes:
        return (b"INVITE %s SIP/2.0\r\n%s%s;rport\r\nMax-Forwards: 70\r\n"
                b"From: <sip:%s@%s>;tag=%s\r\nTo: <%s>\r\nCall-ID: %s\r\nCSeq: %d INVITE\r\n"
                b"Contact: <sip:%s@%s:%d>\r\n%sUser-Agent: %s\r\n"
                b"Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s" % (
                    ruri, self.via, key, caller, DOMAIN, ftag, ruri, cid, cseq, caller,
                    HOST.encode(), UAC[1], auth, UA, len(self.sdp), self.sdp))

    def in_dialog(self, method: bytes, target: bytes, route: bytes, caller: bytes,
                  ftag: bytes, ruri: bytes, rtag: bytes, cid: bytes, cseq: int,
                  key: bytes) -> bytes:
        return (b"%s %s SIP/2.0\r\n%s%s;rport\r\nMax-Forwards: 70\r\n%s"
                b"From: <sip:%s@%s>;tag=%s\r\nTo: <%s>;tag=%s\r\nCall-ID: %s\r\n"
                b"CSeq: %d %s\r\nUser-Agent: %s\r\nContent-Length: 0\r\n\r\n" % (
                    method, target, self.via, key, route, caller, DOMAIN, ftag, ruri, rtag,
                    cid, cseq, method, UA))


def do_options(server: Server, meter: Meter, uac: Uac, i: int) -> None:
    key = uac.ids.key()
    data = (b"OPTIONS sip:%s SIP/2.0\r\n%s%s;rport\r\nMax-Forwards: 70\r\n"
            b"From: <sip:%s@%s>;tag=%s\r\nTo: <sip:%s>\r\nCall-ID: %s@lt\r\n"
            b"CSeq: 1 OPTIONS\r\nUser-Agent: %s\r\nContent-Length: 0\r\n\r\n" % (
                DOMAIN, uac.via, key, user(1)[0], DOMAIN, key, DOMAIN, key, UA))
    expect(meter.feed("OPTIONS", data, UAC), b"SIP/2.0 200")


def do_register(server: Server, meter: Meter, uac: Uac, i: int) -> None:
    name, pw = user(1 + i % USERS)
    out = meter.feed("REGISTER", uac.register(name, UAC[1]), UAC)
    expect(out, b"SIP/2.0 100", b"SIP/2.0 401")
    auth = uac.authorization(b"Authorization", out[1], 401, name, pw, b"REGISTER",
                             uac.reg_uri)
    out = meter.feed("REGISTER auth", uac.register(name, UAC[1], auth), UAC)
    expect(out, b"SIP/2.0 100", b"SIP/2.0 200")


def do_call(server: Server, meter: Meter, uac: Uac, i: int) -> None:
    half = USERS // 2
    caller = user(1 + i % half)
    callee = user(half + 1 + i % half)
    ids = uac.ids
    server.mono += CALL_STEP
    ruri = b"sip:%s@%s" % (callee[0], DOMAIN)
    cid = ids.key() + b"@lt"
    ftag = ids.key()
    key = ids.key()
    out = meter.feed("INVITE", uac.invite(ruri, caller[0], ftag, cid, 1, key), UAC)
    expect(out, b"SIP/2.0 407")
    rtag = sipmsg.to_tag(out[0]) or b""
    ack = (b"ACK %s SIP/2.0\r\n%s%s;rport\r\nMax-Forwards: 70\r\n"
           b"From: <sip:%s@%s>;tag=%s\r\nTo: <%s>;tag=%s\r\nCall-ID: %s\r\n"
           b"CSeq: 1 ACK\r\nUser-Agent: %s\r\nContent-Length: 0\r\n\r\n" % (
               ruri, uac.via, key, caller[0], DOMAIN, ftag, ruri, rtag, cid, UA))
    expect(meter.feed("ACK 407", ack, UAC))
    auth = uac.authorization(b"Proxy-Authorization", out[0], 407, caller[0], caller[1],
                             b"INVITE", ruri)
    out = meter.feed("INVITE auth", uac.invite(ruri, caller[0], ftag, cid, 2, ids.key(), auth),
                     UAC)
    expect(out, b"SIP/2.0 100", b"INVITE ")
    req = sipmsg.parse_request(out[1])
    assert req is not None
    tag = ids.key()
    contact = b"Contact: <sip:%s@%s:%d>\r\n" % (callee[0], HOST.encode(), UAS[1])
    expect(meter.feed("180", sipmsg.reply(req, 180, b"Ringing", tag, contact), UAS),
           b"SIP/2.0 180")
    ok = sipmsg.reply(req, 200, b"OK", tag, contact, uac.sdp)
    out = meter.feed("200", ok, UAS)
    expect(out, b"SIP/2.0 200")
    target = sipmsg.contact_uri(out[0]) or ruri
    route = b"".join(b"Route: %s\r\n" % r for r in reversed(sipmsg.route_set(out[0])))
    rtag = sipmsg.to_tag(out[0]) or b""
    ack = uac.in_dialog(b"ACK", target, route, caller[0], ftag, ruri, rtag, cid, 2, ids.key())
    expect(meter.feed("ACK", ack, UAC), b"ACK ")
    bye = uac.in_dialog(b"BYE", target, route, caller[0], ftag, ruri, rtag, cid, 3, ids.key())
    out = meter.feed("BYE", bye, UAC)
    expect(out, b"BYE ")
    req = sipmsg.parse_request(out[0])
    assert req is not None
    expect(meter.feed("200 BYE", sipmsg.reply(req, 200, b"OK", None), UAS), b"SIP/2.0 200")
    meter.timers()


def register_callees(server: Server, uac: Uac) -> None:
    """Every callee bound at the UAS address (the call scenario's prepare phase). Sent
    from the UAC socket, as the generator sends them: from the UAS address, with the
    UAC's port in Via, nat_uac_test("19") saw a NAT, the bindings kept the NAT flag and
    every call took route[4] and force_rtp_proxy, which the generator's calls do not."""
    meter = Meter(server)
    for n in range(USERS // 2 + 1, USERS + 1):
        name, pw = user(n)
        out = meter.feed("REGISTER", uac.register(name, UAS[1]), UAC)
        auth = uac.authorization(b"Authorization", out[1], 401, name, pw, b"REGISTER",
                                 uac.reg_uri)
        expect(meter.feed("REGISTER", uac.register(name, UAS[1], auth), UAC),
               b"SIP/2.0 100", b"SIP/2.0 200")


def drain(server: Server, meter: Meter) -> None:
    """Let every transaction of the run expire (timer hook CPU counted)."""
    server.mono += 40.0
    for _ in range(10000):
        meter.timers()
        if not server.ctx.tables["transactions"].count():
            return
    raise AssertionError("transactions left after the run")


SCENARIOS: dict[str, tuple[Callable[[Server, Meter, Uac, int], None], str]] = {
    "options": (do_options, "stateless OPTIONS"),
    "register": (do_register, "REGISTER -> 401 -> REGISTER -> 200"),
    "call": (do_call, "call with proxy auth"),
}


def run(server: Server, uac: Uac, scenario: str, count: int,
        prof: cProfile.Profile | None = None,
        transcript: list[bytes] | None = None,
        sampler: Sampler | None = None) -> dict[str, float]:
    fn = SCENARIOS[scenario][0]
    meter = Meter(server, prof, transcript)
    meter.sampler = sampler
    for i in range(count):
        fn(server, meter, uac, i)
    if scenario == "call":
        drain(server, meter)
    return meter.spent


def measure(scenario: str, count: int, repeat: int, profile: bool, top: int,
            work: Path, transcript: Path | None = None,
            sample: bool = False) -> dict[str, float]:
    server = Server(work / scenario)
    try:
        uac = Uac(Ids())
        if scenario == "call":
            register_callees(server, uac)
        sent: list[bytes] = []
        # warm caches, statements, resolver; the datagrams of this run are the transcript
        run(server, uac, scenario, min(count, 200), transcript=sent)
        if transcript is not None:
            with transcript.open("ab") as fh:
                fh.write(b"".join(b"%d\n%s\n" % (len(d), d) for d in sent))
        gc.collect()
        best: dict[str, float] | None = None
        for _ in range(repeat):
            spent = run(server, uac, scenario, count)
            if best is None or sum(spent.values()) < sum(best.values()):
                best = spent
        assert best is not None
        total = sum(best.values())
        print(f"{scenario}: {SCENARIOS[scenario][1]}, {count} x best of {repeat}: "
              f"{total / count * 1e6:.1f} us CPU per operation")
        for kind, t in best.items():
            print(f"  {kind:<14} {t / count * 1e6:8.1f} us")
        if sample:
            sampler = Sampler()
            with sampler:
                run(server, uac, scenario, count, sampler=sampler)
            print(f"--- {scenario}: sampled profile (one run) ---")
            print(sampler.report(top))
        if profile:
            prof = cProfile.Profile()
            run(server, uac, scenario, count, prof)
            for order in ("tottime", "cumulative"):
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats(order).print_stats(top)
                print(f"--- {scenario}: cProfile by {order} (one run, profiler overhead "
                      f"included) ---")
                print(_trim(buf.getvalue()))
        return {"total_us": total / count * 1e6} | {
            k: t / count * 1e6 for k, t in best.items()}
    finally:
        server.close()


def _trim(text: str) -> str:
    """pstats output without its header lines and with paths relative to the repo."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(line.replace(str(ROOT) + "/", "") for line in lines[start:] if line)


# ---- end to end ---------------------------------------------------------------------------

def e2e(scenarios: list[str], children: int, rates: dict[str, float], count: int,
        repeat: int) -> None:
    import subprocess

    from loadtest.compare import NatserverProc, generator, tree_cpu_by_title
    from loadtest.scenarios.common import rule_users

    if os.geteuid() != 0:
        raise SystemExit("e2e needs root (the server runs in a network namespace)")
    netns = f"ns-hot-{os.urandom(4).hex()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
    server = NatserverProc(rule_users(USERS), children=children, netns=netns)
    try:
        server.start()
        server.provision()
        time.sleep(1.0)
        c0 = server.cpu_seconds()
        time.sleep(5.0)
        idle = (server.cpu_seconds() - c0) / 5.0
        print(f"natserver children={children}: idle CPU {idle * 100:.2f} % of a core")
        base = ["-u", str(USERS), "-p", "2", "-d", "0", "--timeout", "8"]
        for scenario in scenarios:
            extra = ["--hold", "0.5"] if scenario == "call" else []
            rate = rates[scenario]
            per_run: list[float] = []
            marginal: list[float] = []
            by_process: list[tuple[dict, dict, int]] = []
            for _ in range(repeat):
                used = {}
                for n in (count // 5, count):
                    c0 = server.cpu_seconds()
                    by0 = tree_cpu_by_title(server.proc.pid if server.proc else 0)
                    doc = generator(netns, server, scenario, *base, *extra, "-r", f"{rate:g}",
                                    "-m", str(n))
                    used[n] = (server.cpu_seconds() - c0, doc["summary"]["ok"])
                    by1 = tree_cpu_by_title(server.proc.pid if server.proc else 0)
                    if doc["summary"]["ok"] < n * 0.99:
                        print(f"  warning: {scenario} {doc['summary']['ok']} of {n} ok: "
                              f"{doc.get('causes')}")
                (c_small, ok_small), (c_big, ok_big) = used[count // 5], used[count]
                by_process.append((by0, by1, max(ok_big, 1)))
                per_run.append(c_big / max(ok_big, 1) * 1000)
                marginal.append((c_big - c_small) / max(ok_big - ok_small, 1) * 1000)
            print(f"{scenario} at {rate:g}/s, {count} per run, best of {repeat}: "
                  f"run {min(per_run):.3f} CPU-s per 1,000 (all runs "
                  f"{', '.join(f'{v:.3f}' for v in per_run)}), marginal "
                  f"{min(marginal):.3f} (all {', '.join(f'{v:.3f}' for v in marginal)})")
            # where the server's CPU went in the best run: per process, user and kernel
            by0, by1, ok = by_process[per_run.index(min(per_run))]
            for title in sorted(by1):
                u0, s0 = by0.get(title, (0.0, 0.0))
                du, ds = by1[title][0] - u0, by1[title][1] - s0
                if du + ds > 0.0005 * ok:
                    print(f"    {title:<40} user {du / ok * 1000:6.3f}  "
                          f"system {ds / ok * 1000:6.3f} CPU-s per 1,000")
        print(f"load average {os.getloadavg()[0]:.2f}")
    finally:
        server.stop()
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["e2e"]:
        ap = argparse.ArgumentParser(description="end to end: server CPU per 1,000")
        ap.add_argument("--scenarios", default="register,call")
        ap.add_argument("--children", type=int, default=2)
        ap.add_argument("--rate-register", type=float, default=300.0)
        ap.add_argument("--rate-call", type=float, default=100.0)
        ap.add_argument("--count", type=int, default=1500)
        ap.add_argument("--repeat", type=int, default=3)
        a = ap.parse_args(argv[1:])
        e2e(a.scenarios.split(","), a.children,
            {"register": a.rate_register, "call": a.rate_call}, a.count, a.repeat)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default="options,register,call")
    ap.add_argument("--count", type=int, default=2000, help="operations per run")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure (best taken)")
    ap.add_argument("--profile", action="store_true", help="add a cProfile breakdown")
    ap.add_argument("--sample", action="store_true",
                    help="add a sampled profile (low overhead: shares per function)")
    ap.add_argument("--profile-top", type=int, default=40)
    ap.add_argument("--transcript", type=Path,
                    help="append every datagram the server sent in the first (warm-up) run "
                         "to this file: the same code sends the same bytes (compare runs)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ns-hotpath-"))
    try:
        for scenario in args.scenarios.split(","):
            (work / scenario).mkdir()
            measure(scenario, args.count, args.repeat, args.profile, args.profile_top, work,
                    args.transcript, args.sample)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
              f"load average {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
