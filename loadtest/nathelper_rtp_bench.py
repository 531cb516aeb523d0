"""What force_rtp_proxy / unforce_rtp_proxy cost a SIP worker, per call, against a
real relay: natserver-rtpproxy over ``unix:`` and ``udp:``, and Debian's rtpengine over
its rtpproxy-compatible UDP port.

One call = force_rtp_proxy() on an INVITE with SDP (U), force_rtp_proxy() in
onreply_route on the 200 with SDP (L), unforce_rtp_proxy() on the BYE (D), run through
the compiled script in this process (the SIP worker's view: it waits for each answer,
as SER's nathelper did). Reported per call: wall time (the worker is busy that long),
this process's CPU, and the relay's CPU (from /proc). Bounded by ``--calls``.

The relays forward to addresses read from commands, so the whole run happens in a new
loopback-only network namespace (needs root)::

    python -m loadtest.nathelper_rtp_bench --calls 2000
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
CFG = """
listen=127.0.0.1
port=5060
children=1
loadmodule "sl.so"
loadmodule "nathelper.so"
modparam("nathelper", "rtpproxy_sock", "%s")
route {
  if (method=="BYE") { unforce_rtp_proxy(); break; };
  force_rtp_proxy();
}
onreply_route[1] {
  force_rtp_proxy();
}
"""
SDP = (b"v=0\r\no=- 1 1 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\n"
       b"m=audio %d RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n")


def message(first: str, callid: str, ttag: str, body: bytes = b"") -> bytes:
    lines = [first, "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-b1;rport"]
    if first.startswith("SIP/2.0"):
        lines.insert(1, "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-o1")
    lines += ["From: <sip:a@127.0.0.1>;tag=ft" + callid[-6:],
              "To: <sip:b@127.0.0.1>" + (f";tag={ttag}" if ttag else ""),
              f"Call-ID: {callid}", "CSeq: 1 INVITE", "Max-Forwards: 70"]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def run(sock: str, calls: int, relay_pids: list[int]) -> dict[str, float]:
    from natserver.context import Context, ListTransport
    from natserver.modules import RouteType
    from natserver.script import load
    from natserver.script.runtime import MsgCtx
    from natserver.sip.message import Message
    from natserver.stats import Stats

    script = load("bench.cfg", text=CFG % sock)
    ctx = Context(script.config, "bench.cfg")
    ctx.script = script
    ctx.set_modules(script.modules)
    ctx.stats = Stats()
    ctx.transport = ListTransport()
    ctx.mono = time.monotonic
    for module in script.modules.values():
        module.init(ctx)
        module.child_init(ctx)
    nh = script.modules["nathelper"]
    src, local = ("127.0.0.1", 5062), ("127.0.0.1", 5060)
    ok = 0

    def step(data: bytes, route: RouteType) -> int:
        m = MsgCtx(ctx, Message.parse(data), src, local, route, time.time())
        if route is RouteType.ONREPLY:
            script.run_onreply(1, m)
        else:
            script.run_request(m)
        return len(m.edits or ())

    tag = uuid.uuid4().hex[:6]
    step(message("INVITE sip:b@x SIP/2.0", f"warm-{tag}", "", SDP % 8000),
         RouteType.REQUEST)   # V/VF and connections out of the way
    procs = [psutil.Process(p) for p in relay_pids]
    relay0 = sum(sum(p.cpu_times()[:2]) for p in procs)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(calls):
        callid = f"b{i}-{tag}"
        port = 20000 + 2 * (i % 1000)
        if step(message("INVITE sip:b@x SIP/2.0", callid, "", SDP % port), RouteType.REQUEST):
            ok += 1
        if step(message("SIP/2.0 200 OK", callid, "tt", SDP % (port + 2000)),
                RouteType.ONREPLY):
            ok += 1
        step(message("BYE sip:b@x SIP/2.0", callid, "tt"), RouteType.REQUEST)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    relay = sum(sum(p.cpu_times()[:2]) for p in procs) - relay0
    if nh.client is not None:
        nh.client.close()
    return {"calls": calls, "rewritten": ok / 2, "wall_us": wall / calls * 1e6,
            "cpu_us": cpu / calls * 1e6, "relay_cpu_us": relay / calls * 1e6}


def _tree(pid: int) -> list[int]:
    try:
        p = psutil.Process(pid)
        return [pid] + [c.pid for c in p.children(recursive=True)]
    except psutil.Error:
        return [pid]


def _wait_udp(port: int, timeout: float = 10.0) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            s.sendto(b"w_1 V\n", ("127.0.0.1", port))
            try:
                if s.recv(100).startswith(b"w_1 "):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"no relay answers on udp:127.0.0.1:{port}")
    finally:
        s.close()


def _wait_unix(path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise RuntimeError(f"no relay socket {path}")


def inside(calls: int, which: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nhb-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        for kind in which:
            port = random.randrange(20000, 29999)
            if kind == "rtpengine":
                exe = shutil.which("rtpengine")
                if exe is None:
                    print("rtpengine: not installed")
                    continue
                argv = [exe, "--config-file=none", "--foreground", "--table=-1",
                        "--interface=127.0.0.1", f"--listen-udp=127.0.0.1:{port}",
                        "--port-min=40000", "--port-max=49999", "--delete-delay=0",
                        "--log-level=3"]
                sock = f"udp:127.0.0.1:{port}"
            else:
                transport = kind.split("-")[1]
                sock = (f"udp:127.0.0.1:{port}" if transport == "udp"
                        else f"unix:{tmp / 'rtpp.sock'}")
                argv = [sys.executable, "-m", "natserver.rtpproxy_cli", "-l", "127.0.0.1",
                        "-s", sock, "-m", "40000", "-M", "49999", "-F", "-d", "ERR"]
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=env, cwd=str(tmp))
            try:
                if sock.startswith("udp:"):
                    _wait_udp(port)
                else:
                    _wait_unix(sock[5:])
                time.sleep(0.3)
                r = run(sock, calls, _tree(proc.pid))
                print(f"{kind:22s} calls {r['calls']:5d}  SDP rewritten {r['rewritten']:6.0f}"
                      f"  wall/call {r['wall_us']:7.0f} us  worker CPU/call {r['cpu_us']:6.0f}"
                      f" us  relay CPU/call {r['relay_cpu_us']:6.0f} us", flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def in_netns(argv: list[str]) -> int:
    name = f"nsnhb-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        return subprocess.run(["ip", "netns", "exec", name, sys.executable, "-m",
                               "loadtest.nathelper_rtp_bench", *argv, "--no-netns"],
                              env=env, cwd=str(ROOT)).returncode
    finally:
        for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                  text=True).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m loadtest.nathelper_rtp_bench",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--relays", nargs="+",
                   default=["natserver-unix", "natserver-udp", "rtpengine"],
                   choices=["natserver-unix", "natserver-udp", "rtpengine"])
    p.add_argument("--no-netns", action="store_true")
    args = p.parse_args(argv)
    if not args.no_netns:
        if os.geteuid() != 0:
            print("needs root (the relays run in their own network namespace)",
                  file=sys.stderr)
            return 2
        return in_netns(argv)
    inside(args.calls, args.relays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
