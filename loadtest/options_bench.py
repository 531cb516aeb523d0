"""OPTIONS throughput of the real server: answered per second and CPU per message.

    python -m loadtest.options_bench [--children 1 2] [--modes per_worker shared]
                                     [--senders 2] [--sockets 32] [--window 128]
                                     [--duration 5] [--json] [--no-netns]

For every (reuseport mode, children) pair it starts natserver (``-D -E``) with a cfg
that answers OPTIONS statelessly, lets several sender processes keep a bounded window
of OPTIONS in flight from many client sockets on 127.0.0.1 for ``--duration`` seconds,
and reads the CPU time of every server process from /proc before and after. Output:
answered/s, server CPU microseconds per answered message, server CPU use, sender CPU,
and ``late``: requests without an answer within 0.2 s (lost, or answered late).

Bounded: every run stops after ``--duration`` seconds or ``--max-count`` requests per
sender, whichever comes first. As root the whole benchmark re-executes itself inside a
fresh loopback-only network namespace (``--no-netns`` to stay where you are); packets
go to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
LISTEN_RE = re.compile(r"listening on udp:([0-9.]+):(\d+)")

CFG = """
debug=2
fork=no
log_stderror=yes
listen=127.0.0.1
port=0
children={children}
reuseport="{mode}"
loadmodule "sl.so"
loadmodule "maxfwd.so"
route {{
  if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); break; }};
  if (method=="OPTIONS") {{ sl_send_reply("200", "OK"); break; }};
  sl_send_reply("404", "Not Here");
}}
"""


def options(port: int, src_port: int, n: int) -> bytes:
    return (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{src_port};branch=z9hG4bK-{src_port}-{n};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:bench@127.0.0.1>;tag={src_port}x{n}\r\n"
        f"To: <sip:127.0.0.1:{port}>\r\n"
        f"Call-ID: {src_port}-{n}@bench\r\n"
        f"CSeq: 1 OPTIONS\r\n"
        f"Content-Length: 0\r\n\r\n").encode()


# ---- sender process ---------------------------------------------------------------

def sender(port: int, sockets: int, window: int, duration: float, max_count: int,
           rate: float, start_at: float, out: mp.Queue) -> None:
    socks = []
    for _ in range(sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    per_sock = max(1, window // sockets)
    msgs = [[options(port, s.getsockname()[1], n) for n in range(64)] for s in socks]
    outstanding = [0] * sockets
    last_reply = [0.0] * sockets
    dst = ("127.0.0.1", port)
    sent = answered = late = 0
    poller = select.poll()
    fd_index = {}
    for i, s in enumerate(socks):
        poller.register(s, select.POLLIN)
        fd_index[s.fileno()] = i
    while time.time() < start_at:
        time.sleep(0.001)
    cpu0 = time.process_time()
    t0 = time.monotonic()
    end = t0 + duration
    n = 0
    while True:
        now = time.monotonic()
        if now >= end or sent >= max_count:
            break
        budget = int((now - t0) * rate) - sent if rate else max_count
        for i, s in enumerate(socks):
            if outstanding[i] and now - last_reply[i] > 0.2:
                # no answer for 0.2 s (lost, or the worker is starved of CPU): count the
                # requests as late and reopen the window rather than stall it
                late += outstanding[i]
                outstanding[i] = 0
            while outstanding[i] < per_sock and sent < max_count and budget > 0:
                budget -= 1
                try:
                    s.sendto(msgs[i][n & 63], dst)
                except BlockingIOError:
                    break
                if not outstanding[i]:
                    last_reply[i] = now
                outstanding[i] += 1
                sent += 1
                n += 1
        for fd, _ in poller.poll(2 if rate else 20):
            i = fd_index[fd]
            s = socks[i]
            while True:
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    break
                if data.startswith(b"SIP/2.0 200"):
                    answered += 1
                if outstanding[i]:
                    outstanding[i] -= 1
                last_reply[i] = time.monotonic()
    elapsed = time.monotonic() - t0
    # collect the late answers of what is still in flight (not counted as sent later)
    drain_end = time.monotonic() + 0.3
    while time.monotonic() < drain_end and any(outstanding):
        for fd, _ in poller.poll(20):
            i = fd_index[fd]
            try:
                while True:
                    data = socks[i].recv(4096)
                    if data.startswith(b"SIP/2.0 200"):
                        answered += 1
                    outstanding[i] = max(0, outstanding[i] - 1)
            except BlockingIOError:
                pass
    out.put({"sent": sent, "answered": answered, "late": late + sum(outstanding),
             "elapsed": elapsed, "cpu": time.process_time() - cpu0})
    for s in socks:
        s.close()


# ---- the server under test ---------------------------------------------------------

class Server:
    def __init__(self, children: int, mode: str, tmp: Path) -> None:
        cfg = tmp / f"bench-{mode}-{children}.cfg"
        cfg.write_text(CFG.format(children=children, mode=mode))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        self.proc = subprocess.Popen([sys.executable, "-m", "natserver", "-f", str(cfg), "-D", "-E"],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, env=env)
        self.port = 0
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line)
                m = LISTEN_RE.search(line)
                if m and not self.port:
                    self.port = int(m.group(2))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30) or not self.port:
            self.stop()
            raise RuntimeError("natserver did not start:\n" + "".join(self.lines[-20:]))

    def processes(self) -> list[psutil.Process]:
        me = psutil.Process(self.proc.pid)
        return [me, *me.children(recursive=True)]

    def cpu(self) -> dict[int, float]:
        out = {}
        for p in self.processes():
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Result:
    mode: str
    children: int
    senders: int
    sent: int
    answered: int
    late: int
    seconds: float
    answered_per_s: float
    server_cpu_s: float
    server_cpu_us_per_msg: float
    server_cpu_pct: float
    sender_cpu_pct: float


def run_one(mode: str, children: int, args: argparse.Namespace, tmp: Path) -> Result:
    srv = Server(children, mode, tmp)
    try:
        time.sleep(0.5)  # every child in its loop
        q: mp.Queue = mp.Queue()
        start_at = time.time() + 0.5
        procs = [mp.Process(target=sender, args=(srv.port, args.sockets, args.window,
                                                  args.duration, args.max_count,
                                                  args.rate / args.senders, start_at, q))
                 for _ in range(args.senders)]
        for p in procs:
            p.start()
        while time.time() < start_at:
            time.sleep(0.001)
        cpu0 = srv.cpu()
        t0 = time.monotonic()
        results = [q.get(timeout=args.duration + 30) for _ in procs]
        cpu1 = srv.cpu()
        wall = time.monotonic() - t0
        for p in procs:
            p.join(5)
    finally:
        srv.stop()
    server_cpu = sum(cpu1[pid] - cpu0.get(pid, 0.0) for pid in cpu1)
    answered = sum(r["answered"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    return Result(
        mode=mode, children=children, senders=args.senders,
        sent=sum(r["sent"] for r in results), answered=answered,
        late=sum(r["late"] for r in results), seconds=round(elapsed, 2),
        answered_per_s=round(answered / elapsed, 1),
        server_cpu_s=round(server_cpu, 2),
        server_cpu_us_per_msg=round(1e6 * server_cpu / answered, 1) if answered else 0.0,
        server_cpu_pct=round(100 * server_cpu / wall, 1),
        sender_cpu_pct=round(100 * sum(r["cpu"] for r in results) / wall, 1))


def in_netns(argv: list[str]) -> int:
    """Re-run this benchmark inside a new loopback-only network namespace."""
    name = f"nsbench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        return subprocess.run(["ip", "netns", "exec", name, sys.executable, "-m",
                               "loadtest.options_bench", "--no-netns", *argv], env=env).returncode
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m loadtest.options_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", default=["per_worker", "shared"],
                        choices=["per_worker", "shared"])
    parser.add_argument("--senders", type=int, default=2, help="sender processes")
    parser.add_argument("--sockets", type=int, default=32, help="client sockets per sender")
    parser.add_argument("--window", type=int, default=128,
                        help="requests in flight per sender")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--max-count", type=int, default=2_000_000,
                        help="requests per sender at most")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="total requests per second (0: as many as the window allows)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-netns", action="store_true",
                        help="do not re-run inside a fresh network namespace (root only)")
    args = parser.parse_args(argv)
    if not args.no_netns and os.geteuid() == 0:
        return in_netns(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="options-bench-") as tmp:
        for _ in range(args.repeat):
            for mode in args.modes:
                for children in args.children:
                    results.append(run_one(mode, children, args, Path(tmp)))
                    if not args.json:
                        r = results[-1]
                        print(f"{r.mode:<10} children={r.children} answered/s={r.answered_per_s:>9.1f}"
                              f"  cpu/msg={r.server_cpu_us_per_msg:>6.1f} us"
                              f"  server cpu={r.server_cpu_pct:>5.1f}%"
                              f"  senders cpu={r.sender_cpu_pct:>5.1f}%"
                              f"  late={r.late}", flush=True)
    if args.json:
        sys.stdout.write(orjson.dumps([asdict(r) for r in results],
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.repeat > 1:
        print(f"{args.repeat} runs each (load average now {os.getloadavg()[0]:.1f}):")
        for mode in args.modes:
            for children in args.children:
                runs = [r for r in results if r.mode == mode and r.children == children]
                rate = statistics.median(r.answered_per_s for r in runs)
                best = max(r.answered_per_s for r in runs)
                cpu = statistics.median(r.server_cpu_us_per_msg for r in runs)
                print(f"{mode:<10} children={children} answered/s median={rate:>8.1f}"
                      f" best={best:>8.1f}  cpu/msg median={cpu:>6.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
