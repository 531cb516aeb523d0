"""RTP relay benchmark: two-way streams through a forwarder, loss and CPU per packet.

Targets (each started fresh for every run, in its own process):

- ``engine``     natserver's relay engine (``natserver.rtp.engine``) driven over the
                 rtpproxy protocol (U/L on a UDP control socket), batched I/O on;
- ``engine-nobatch``  the same with recvmmsg/sendmmsg off (plain recv/send);
- ``echo``       ``loadtest/echo_bench.py``, a bare Python recvfrom/sendto forwarder;
- ``rtpengine``  Debian's rtpengine in userspace mode (``--table=-1``), sessions made
                 with its rtpproxy-compatible UDP control (``--listen-udp``).
- ``relay``      natserver's relay process (``natserver/workers/rtp_relay.py``) as the
                 standalone ``natserver-rtpproxy -n 1`` runs it (CPU of its supervisor
                 and the relay process together).

Load: ``--senders`` processes (default 2) each own two UDP sockets on 127.0.0.1, one
playing side A and one side B of their share of ``--streams``, and send 172-byte RTP
packets (12-byte header + 160 bytes) round-robin over their streams with sendmmsg,
paced to ``--pps`` in total (both directions together), receiving with recvmmsg.
Every packet carries its phase (warm-up or measured) so loss is counted exactly for
the measured interval. The forwarder's CPU time comes from /proc/<pid>/stat
(utime + stime, all threads) over the measured interval.

    python -m loadtest.rtp_bench --target engine --streams 100 --pps 100000
    python -m loadtest.rtp_bench --target rtpengine --streams 100 --search
    python -m loadtest.rtp_bench --all --streams 1 100 1000 --pps 50000 100000

Every loop is bounded in time; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from natserver.rtp import fastio
from natserver.rtp import protocol as P

IP = "127.0.0.1"
PACKET = 172
RTP_HEADER = bytes([0x80, 0x00, 0, 1, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78])
PHASE_AT = 12            # payload byte: 0 warm-up, 1 measured
TARGETS = ("engine", "engine-nobatch", "echo", "rtpengine", "relay")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def udp_rcvbuf_errors() -> int:
    """Datagrams the kernel dropped for full receive buffers, machine-wide."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- targets -------------------------------------------------------------------------
class Target:
    """A forwarder process: start, make sessions, stop."""

    pid: int = 0

    def start(self, streams: int) -> None:
        raise NotImplementedError

    def session(self, index: int, a: tuple[str, int], b: tuple[str, int]) -> tuple[int, int]:
        """Relay ports (where A sends, where B sends) for stream ``index``."""
        raise NotImplementedError

    def cpu(self) -> float:
        """CPU seconds of the forwarder so far."""
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class RtpproxyTarget(Target):
    """Sessions over the rtpproxy protocol: U from A's address, L from B's."""

    control: tuple[str, int] = (IP, 0)

    def _command(self, text: bytes) -> P.Reply:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            cookie = b"%d_%d" % (os.getpid(), time.monotonic_ns())
            for _ in range(5):
                s.sendto(cookie + b" " + text, self.control)
                try:
                    while True:
                        reply = P.parse_reply(s.recv(4096), cookie=True)
                        if reply.cookie == cookie:
                            return reply
                except TimeoutError:
                    continue
        raise RuntimeError(f"no reply to {text!r} from {self.control}")

    def session(self, index: int, a: tuple[str, int], b: tuple[str, int]) -> tuple[int, int]:
        callid = b"bench-%d-%d" % (os.getpid(), index)
        u = self._command(b"U %s %s %d tagA;1" % (callid, a[0].encode(), a[1]))
        lk = self._command(b"L %s %s %d tagA;1 tagB;1" % (callid, b[0].encode(), b[1]))
        if not u.port or not lk.port:
            raise RuntimeError(f"session setup failed: U {u.text!r}, L {lk.text!r}")
        # U answers the port B sends to, L the port A sends to
        return lk.port, u.port

    def _wait_control(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self._command(b"V").text:
                    return
            except RuntimeError:
                time.sleep(0.1)
        raise RuntimeError("forwarder control socket did not come up")


class EngineTarget(RtpproxyTarget):
    def __init__(self, batch: bool, port_min: int, port_max: int) -> None:
        self.batch, self.port_min, self.port_max = batch, port_min, port_max

    def start(self, streams: int) -> None:
        cmd = [sys.executable, "-m", "loadtest.rtp_bench", "serve", "--port-min",
               str(self.port_min), "--port-max", str(self.port_max)]
        if not self.batch:
            cmd.append("--no-batch")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=_repo_root(),
                                     text=True)
        info = json.loads(self.proc.stdout.readline())
        self.pid = info["pid"]
        self.control = (IP, info["control"])
        self._wait_control()


class RtpengineTarget(RtpproxyTarget):
    def __init__(self, port_min: int, port_max: int) -> None:
        self.port_min, self.port_max = port_min, port_max

    def start(self, streams: int) -> None:
        exe = shutil.which("rtpengine")
        if exe is None:
            raise RuntimeError("rtpengine is not installed")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((IP, 0))
            port = probe.getsockname()[1]
        self.control = (IP, port)
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [exe, "--config-file=none", "--foreground", "--table=-1", f"--interface={IP}",
             f"--listen-udp={IP}:{port}", f"--port-min={self.port_min}",
             f"--port-max={self.port_max}", "--log-stderr", "--log-level=4",
             "--timeout=60"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self._wait_control()


class RelayTarget(RtpproxyTarget):
    """natserver's relay process (natserver/workers/rtp_relay.py) as
    ``natserver-rtpproxy`` runs it: its small supervisor and one relay process; the CPU
    counted is both (the supervisor idles)."""

    def __init__(self, port_min: int, port_max: int) -> None:
        self.port_min, self.port_max = port_min, port_max

    def start(self, streams: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((IP, 0))
            port = probe.getsockname()[1]
        self.control = (IP, port)
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "natserver.rtpproxy_cli", "-l", IP, "-s", f"udp:{IP}:{port}",
             "-m", str(self.port_min), "-M", str(self.port_max), "-n", "1", "-F", "-d", "ERR",
             "-t", "60"], stdout=self.log, stderr=subprocess.STDOUT, cwd=_repo_root())
        self.pid = self.proc.pid
        self._wait_control()

    def cpu(self) -> float:
        total = cpu_seconds(self.pid)
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            kids = []
        for kid in kids:
            try:
                total += cpu_seconds(kid)
            except OSError:
                pass
        return total


class EchoTarget(Target):
    def start(self, streams: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.echo_bench", "--pairs", str(streams),
             "--seconds", "600"], stdout=subprocess.PIPE, cwd=_repo_root(), text=True)
        info = json.loads(self.proc.stdout.readline())
        self.pid = info["pid"]
        self.pairs = info["pairs"]

    def session(self, index: int, a: tuple[str, int], b: tuple[str, int]) -> tuple[int, int]:
        return self.pairs[index][0], self.pairs[index][1]


def make_target(name: str, port_min: int, port_max: int) -> Target:
    if name == "engine":
        return EngineTarget(True, port_min, port_max)
    if name == "engine-nobatch":
        return EngineTarget(False, port_min, port_max)
    if name == "rtpengine":
        return RtpengineTarget(port_min, port_max)
    if name == "echo":
        return EchoTarget()
    if name == "relay":
        return RelayTarget(port_min, port_max)
    raise ValueError(name)


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- load generator ------------------------------------------------------------------
@dataclass(slots=True)
class SenderResult:
    sent: int = 0
    sent_measured: int = 0
    received: int = 0
    received_measured: int = 0
    received_at_a: int = 0     # B->A packets (all phases), to see a one-way failure
    received_at_b: int = 0
    cpu_measured: float = 0.0


class _Stream:
    """One direction's prebuilt messages: ``length`` packets round-robin over the
    streams, each stream's packets carrying consecutive RTP sequence numbers."""

    def __init__(self, sock: socket.socket, ports: list[int], ssrc_base: int) -> None:
        n = len(ports)
        self.sock = sock
        self.fd = sock.fileno()
        self.n = n
        self.length = n * max(1, math.ceil(256 / n))
        self.per_lap = self.length // n
        self.mm = fastio.Mmsg(self.length, PACKET, names=True)
        for j in range(self.length):
            payload = bytearray(RTP_HEADER + bytes(PACKET - len(RTP_HEADER)))
            struct.pack_into("!I", payload, 8, ssrc_base + j % n)
            self.mm.fill(j, bytes(payload), fastio.sockaddr(IP, ports[j % n]))
        self.cursor = 0
        self.lap = 0
        self.phase = 0
        self._number()

    def _number(self) -> None:
        """Sequence numbers and timestamps of the next lap (and the phase byte)."""
        buf = self.mm.buf
        base = self.lap * self.per_lap
        n = self.n
        for j in range(self.length):
            seq = base + j // n
            struct.pack_into("!HI", buf, j * PACKET + 2, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF)
            buf[j * PACKET + PHASE_AT] = self.phase

    def send(self, k: int) -> int:
        k = min(k, self.length - self.cursor)
        sent = self.mm.send(self.fd, self.cursor, k)
        if sent > 0:
            self.cursor += sent
            if self.cursor == self.length:
                self.cursor = 0
                self.lap += 1
                self._number()
        return sent


def _sender(sock_a: socket.socket, sock_b: socket.socket, dests: list[tuple[int, int]],
            rate: float, t0: float, warmup: float, seconds: float, drain: float,
            conn) -> None:
    """Send A->relay and B->relay packets for ``dests`` at ``rate`` pps in total."""
    base = (os.getpid() & 0xFFFF) << 16
    out = [_Stream(sock_a, [d[0] for d in dests], base),
           _Stream(sock_b, [d[1] for d in dests], base + 0x8000)]
    rx = [(s.fileno(), fastio.Mmsg(256, 2048, names=False)) for s in (sock_a, sock_b)]
    res = SenderResult()
    mark = t0 + warmup
    end = mark + seconds
    measured = False
    cpu0 = 0.0
    batch = 32
    turn = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if not measured and now >= mark:
            measured = True
            cpu0 = time.process_time()
            for st in out:
                st.phase = 1
                for j in range(st.length):
                    st.mm.buf[j * PACKET + PHASE_AT] = 1
        due = int((now - t0) * rate) - res.sent if now >= t0 else 0
        while due > 0:
            sent = out[turn].send(min(due, batch))
            turn ^= 1
            if sent <= 0:
                break
            res.sent += sent
            if measured:
                res.sent_measured += sent
            due -= sent
        got = _receive(rx, res, measured)
        if not got and due <= 0:
            time.sleep(0.0002)
    res.cpu_measured = time.process_time() - cpu0
    stop = time.monotonic() + drain
    while time.monotonic() < stop:
        if not _receive(rx, res, True):
            time.sleep(0.001)
    conn.send(asdict(res))
    conn.close()


def _receive(rx, res: SenderResult, measured: bool) -> int:
    total = 0
    for k, (fd, mm) in enumerate(rx):
        while True:
            n = mm.recv(fd)
            if n <= 0:
                break
            total += n
            res.received += n
            if k:
                res.received_at_b += n
            else:
                res.received_at_a += n
            view = mm.view
            size = mm.size
            m = 0
            for i in range(n):
                m += view[i * size + PHASE_AT]
            res.received_measured += m
            if n < mm.count:
                break
    return total


def run(target_name: str, streams: int, pps: float, seconds: float = 5.0,
        warmup: float = 1.5, senders: int = 2, port_min: int = 40000,
        port_max: int = 49999) -> dict:
    """One measured run; returns the figures as a dict."""
    target = make_target(target_name, port_min, port_max)
    target.start(streams)
    socks = []
    try:
        for _ in range(senders):
            pair = []
            for _ in range(2):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                fastio.set_buffers(s, rcv=8 << 20, snd=4 << 20)
                s.bind((IP, 0))
                s.setblocking(False)
                pair.append(s)
            socks.append(pair)
        shares: list[list[tuple[int, int]]] = [[] for _ in range(senders)]
        for i in range(streams):
            a, b = socks[i % senders]
            shares[i % senders].append(target.session(i, a.getsockname(), b.getsockname()))
        ctx = mp.get_context("fork")
        t0 = time.monotonic() + 0.3
        procs = []
        for k in range(senders):
            if not shares[k]:
                continue
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_sender, args=(socks[k][0], socks[k][1], shares[k],
                                                  pps * len(shares[k]) / streams, t0, warmup,
                                                  seconds, 0.5, w), daemon=True)
            p.start()
            procs.append((p, r))
        time.sleep(max(0.0, t0 + warmup - time.monotonic()))
        cpu0 = target.cpu()
        busy0, steal0 = machine_busy()
        drops0 = udp_rcvbuf_errors()
        time.sleep(max(0.0, t0 + warmup + seconds - time.monotonic()))
        cpu1 = target.cpu()
        busy1, steal1 = machine_busy()
        drops1 = udp_rcvbuf_errors()
        total = SenderResult()
        for p, r in procs:
            if not r.poll(seconds + warmup + 30):
                raise RuntimeError("a sender did not report")
            got = r.recv()
            p.join(5)
            for k, v in got.items():
                setattr(total, k, getattr(total, k) + v)
    finally:
        target.stop()
        for pair in socks:
            for s in pair:
                s.close()
    delivered = total.received_measured
    loss = 100.0 * (total.sent_measured - delivered) / max(1, total.sent_measured)
    cpu = cpu1 - cpu0
    return {
        "target": target_name,
        "streams": streams,
        "pps_target": int(pps),
        "pps_sent": round(total.sent_measured / seconds),
        "pps_delivered": round(delivered / seconds),
        "loss_pct": round(max(0.0, loss), 4),
        "cpu_s_per_million": round(cpu / max(1, delivered) * 1e6, 2),
        "forwarder_cpu_pct": round(100 * cpu / seconds, 1),
        "generator_cpu_pct": round(100 * total.cpu_measured / seconds, 1),
        "received_a_b": [total.received_at_a, total.received_at_b],
        # CPU the rest of the machine used meanwhile: other work competing with the run
        "other_cpu_pct": round(100 * max(0.0, (busy1 - busy0) - cpu - total.cpu_measured)
                               / seconds, 1),
        "steal_pct": round(100 * (steal1 - steal0) / seconds, 1),
        # full socket buffers (machine-wide): loss beyond these was late, not dropped
        "kernel_drops": drops1 - drops0,
        "seconds": seconds,
    }


def clean_run(target_name: str, streams: int, pps: float, max_other: float = 100.0,
              tries: int = 3, **kw) -> dict:
    """``run``, repeated (up to ``tries``, 10 s apart) while the rest of the machine used
    more than ``max_other`` % CPU meanwhile; the last try is marked ``contended``."""
    for attempt in range(tries):
        r = run(target_name, streams, pps, **kw)
        r["contended"] = r["other_cpu_pct"] > max_other
        if not r["contended"] or attempt == tries - 1:
            return r
        time.sleep(10)
    raise AssertionError("unreachable")


def search(target_name: str, streams: int, lo: float, hi: float, loss_max: float = 0.1,
           step: float = 5000, **kw) -> tuple[dict | None, list[dict]]:
    """The highest rate (to ``step``) with loss below ``loss_max`` %: bisection."""
    runs = []
    best = None
    while hi - lo > step:
        mid = round((lo + hi) / 2 / step) * step
        r = clean_run(target_name, streams, mid, **kw)
        runs.append(r)
        _print(r)
        if r["loss_pct"] < loss_max and r["pps_sent"] >= 0.98 * mid:
            best, lo = r, mid
        else:
            hi = mid
    return best, runs


def _print(r: dict) -> None:
    sys.stdout.write(
        f"{r['target']:15s} streams={r['streams']:5d} target={r['pps_target']:7d} "
        f"sent={r['pps_sent']:7d} delivered={r['pps_delivered']:7d} "
        f"loss={r['loss_pct']:7.3f}% cpu/M={r['cpu_s_per_million']:5.2f}s "
        f"fwd_cpu={r['forwarder_cpu_pct']:5.1f}% gen_cpu={r['generator_cpu_pct']:5.1f}% "
        f"other_cpu={r['other_cpu_pct']:5.1f}%{' CONTENDED' if r.get('contended') else ''}\n")
    sys.stdout.flush()


# -- the engine as a forwarder process (the "engine" target) -----------------------
def serve(argv: list[str]) -> int:
    """A relay for the benchmark: Engine + rtpproxy control on a UDP socket."""
    from natserver.rtp.control import ControlConfig, ControlServer, remove
    from natserver.rtp.engine import Engine
    from natserver.rtp.ports import PortTable
    from natserver.rtp.session import DictStore

    ap = argparse.ArgumentParser(prog="rtp_bench serve")
    ap.add_argument("--port-min", type=int, default=40000)
    ap.add_argument("--port-max", type=int, default=49999)
    ap.add_argument("--no-batch", action="store_true")
    ap.add_argument("--seconds", type=float, default=600.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    engine = Engine(IP, batch=not args.no_batch)
    store = DictStore()
    cfg = ControlConfig(advertise=IP)
    server = ControlServer(store, engine.allocator(PortTable(args.port_min, args.port_max)),
                           cfg, stats=engine.stats)
    ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctl.bind((IP, 0))
    ctl.setblocking(False)

    def on_control(now: float) -> None:
        try:
            data, peer = ctl.recvfrom(65535)
        except OSError:
            return
        for s in engine.take_changes():
            store.put(s)
        reply, out = server.datagram(data, peer, now)
        if reply:
            ctl.sendto(reply, peer)
        if out is not None:
            engine.apply(out)

    engine.watch(ctl.fileno(), on_control)
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sys.stdout.write(json.dumps({"pid": os.getpid(), "control": ctl.getsockname()[1]}) + "\n")
    sys.stdout.flush()
    deadline = time.monotonic() + args.seconds
    next_expiry = 0.0
    while not stop and time.monotonic() < deadline:
        engine.poll(0.2)
        now = engine.clock()
        if now >= next_expiry:
            next_expiry = now + 1.0
            for s in engine.idle(now, cfg.timeout):
                remove(s, store, server.ports, engine.stats, timeout=True)
                engine.unbind(s)
    engine.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=TARGETS, default="engine")
    ap.add_argument("--all", action="store_true", help="every target in turn")
    ap.add_argument("--streams", type=int, nargs="+", default=[100])
    ap.add_argument("--pps", type=float, nargs="+", default=[100000])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--senders", type=int, default=2)
    ap.add_argument("--search", action="store_true",
                    help="bisect for the highest pps with loss < --loss")
    ap.add_argument("--lo", type=float, default=50000)
    ap.add_argument("--hi", type=float, default=300000)
    ap.add_argument("--loss", type=float, default=0.1)
    ap.add_argument("--step", type=float, default=5000, help="search resolution, pps")
    ap.add_argument("--max-other", type=float, default=100.0,
                    help="repeat a run (3 tries) when other processes used more CPU, %%")
    ap.add_argument("--json", action="store_true", help="one JSON object per run")
    args = ap.parse_args(argv)
    if not 1 <= args.senders <= 8 or args.seconds > 60:
        ap.error("--senders 1..8 and --seconds <= 60")
    targets = TARGETS if args.all else (args.target,)
    kw = {"seconds": args.seconds, "warmup": args.warmup, "senders": args.senders,
          "max_other": args.max_other}
    results = []
    for target in targets:
        for streams in args.streams:
            if args.search:
                best, runs = search(target, streams, args.lo, args.hi, args.loss, args.step,
                                    **kw)
                results += runs
                if best:
                    sys.stdout.write(f"max {target} streams={streams}: {best['pps_delivered']} "
                                     f"pps at {best['loss_pct']}% loss, "
                                     f"{best['cpu_s_per_million']} CPU-s/M\n")
                continue
            for pps in args.pps:
                r = clean_run(target, streams, pps, **kw)
                results.append(r)
                _print(r)
    if args.json:
        for r in results:
            sys.stdout.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
