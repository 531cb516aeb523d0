"""CPU per stateful call through tm: INVITE, 100, 180, 200, ACK, BYE, 200 (7 messages
out of the proxy, 6 in) with Record-Route and loose routing.

    python -m loadtest.tm_bench inproc [--calls 3000] [--repeat 3] [--profile]
    python -m loadtest.tm_bench e2e [--children 1 2] [--calls 2000] [--parallel 20]

``inproc``: the receive path in this process with the real shared-memory table and a
transport that only keeps what is sent; a UAC and a UAS are simulated with plain byte
operations outside the measured sections. Measured: process CPU time of every
``receive()`` and of the worker's timer hook, over calls placed at 200 calls per
second of virtual time (the clock is moved by hand), so transactions linger and
expire as they would; per call and per message kind, best of ``--repeat`` runs.

``e2e``: the real server (``natserver -D -E``, ``children`` SIP workers) in a fresh
loopback-only network namespace; one generator process runs the UAC and UAS sockets
with at most ``--parallel`` calls in progress; the server's CPU time (all processes,
from /proc) over the run, divided by the calls completed. Bounded by ``--calls`` and
``--timeout``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import select
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
LISTEN_RE = re.compile(r"listening on udp:([0-9.]+):(\d+)")

ROUTES = """
route {
  if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); break; };
  if (msg:len > max_len) { sl_send_reply("513", "Message Overflow"); break; };
  if (method != "REGISTER") { record_route(); };
  if (loose_route()) { route(1); break; };
  if (method == "INVITE") { setflag(6); };
  route(1);
}
route[1] {
  t_on_reply("1");
  if (!t_relay()) { sl_reply_error(); };
}
onreply_route[1] {
  if (isflagset(6) && status =~ "(180)|(183)|2[0-9][0-9]") {
    if (!search("^Content-Length:[ ]*0")) { setflag(7); };
  };
}
"""
MODULES = """
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
modparam("rr", "enable_full_lr", 1)
"""

SDP = (b"v=0\r\no=alice 2890844526 2890844526 IN IP4 127.0.0.1\r\ns=call\r\n"
       b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\n"
       b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
       b"a=fmtp:101 0-15\r\na=sendrecv\r\n")


# ---- the two endpoints, in plain bytes ---------------------------------------------------

def invite(n: int, uac: tuple[str, int], uas: tuple[str, int], proxy: tuple[str, int]) -> bytes:
    return (f"INVITE sip:bob@{uas[0]}:{uas[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {uac[0]}:{uac[1]};branch=z9hG4bK-inv-{n};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: \"Alice\" <sip:alice@example.org>;tag=ft{n}\r\n"
            f"To: <sip:bob@example.org>\r\n"
            f"Call-ID: call-{n}@bench\r\n"
            f"CSeq: 1 INVITE\r\n"
            f"Contact: <sip:alice@{uac[0]}:{uac[1]}>\r\n"
            f"User-Agent: tm_bench\r\n"
            f"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
            f"Content-Type: application/sdp\r\n"
            f"Content-Length: {len(SDP)}\r\n\r\n").encode() + SDP


def _rows(msg: bytes) -> tuple[bytes, list[bytes]]:
    head = msg.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    return lines[0], lines[1:]


def reply(req: bytes, status: int, reason: bytes, tag: bytes, contact: bytes = b"",
          body: bytes = b"") -> bytes:
    """What a UAS answers to ``req`` (copied Vias, Record-Route, From, To+tag...)."""
    _, rows = _rows(req)
    out = [b"SIP/2.0 %d %s" % (status, reason)]
    for row in rows:
        name = row.split(b":", 1)[0].lower()
        if name in (b"via", b"record-route", b"from", b"call-id", b"cseq"):
            out.append(row)
        elif name == b"to":
            out.append(row if b";tag=" in row else row + b";tag=" + tag)
    if contact:
        out.append(b"Contact: " + contact)
    if body:
        out.append(b"Content-Type: application/sdp")
    out.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(out) + b"\r\n\r\n" + body


def in_dialog(method: bytes, ok: bytes, n: int, cseq: int, uac: tuple[str, int]) -> bytes:
    """ACK/BYE from the UAC built from the 200 (route set, remote target, tags)."""
    _, rows = _rows(ok)
    rr = [r.split(b":", 1)[1].strip() for r in rows if r.lower().startswith(b"record-route:")]
    contact = next(r.split(b":", 1)[1].strip() for r in rows if r.lower().startswith(b"contact:"))
    target = contact.strip(b"<>")
    to = next(r for r in rows if r.lower().startswith(b"to:"))
    frm = next(r for r in rows if r.lower().startswith(b"from:"))
    lines = [b"%s %s SIP/2.0" % (method, target),
             b"Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK-%s-%d;rport" % (
                 uac[0].encode(), uac[1], method.lower(), n),
             b"Max-Forwards: 70", frm, to, b"Call-ID: call-%d@bench" % n,
             b"CSeq: %d %s" % (cseq, method)]
    lines += [b"Route: " + r for r in reversed(rr)]
    lines.append(b"Content-Length: 0")
    return b"\r\n".join(lines) + b"\r\n\r\n"


# ---- in-process ---------------------------------------------------------------------------

BASELINE = """
route { sl_send_reply("200", "OK"); }
"""


def baseline(calls: int, repeat: int) -> float:
    """The floor of the receive path for the same six datagrams: each request answered
    by sl_send_reply, each reply (no transaction) relayed statelessly by the core.
    CPU microseconds per call."""
    from natserver.context import Context, ListTransport, Proc
    from natserver.receive import receive
    from natserver.script import load
    from natserver.stats import Stats

    listen = ("127.0.0.1", 5060)
    uac, uas = ("127.0.0.1", 5070), ("127.0.0.1", 5080)
    script = load("base.cfg", text=f"listen={listen[0]}\nport={listen[1]}\n"
                  'loadmodule "sl.so"\n' + BASELINE)
    ctx = Context(script.config, "base.cfg")
    ctx.script = script
    ctx.set_modules(script.modules)
    ctx.proc = Proc("sip worker", 1, 1, 1)
    ctx.stats = Stats()
    transport = ListTransport()
    ctx.transport = transport
    # the datagrams of one call as the proxy sees them (the replies carry its Via)
    proxy_via = b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKbench.0\r\n"
    best = None
    cpu = time.process_time
    for _ in range(repeat):
        spent = 0.0
        for i in range(calls):
            inv = invite(i, uac, uas, listen)
            fwd = inv.replace(b"\r\n", b"\r\n" + proxy_via, 1)
            ring = reply(fwd, 180, b"Ringing", b"t")
            ok = reply(fwd, 200, b"OK", b"t", b"<sip:bob@127.0.0.1:5080>", SDP)
            ack = in_dialog(b"ACK", ok, i, 1, uac)
            bye = in_dialog(b"BYE", ok, i, 2, uac)
            bye_ok = reply(bye.replace(b"\r\n", b"\r\n" + proxy_via, 1), 200, b"OK", b"t")
            for data, src in ((inv, uac), (ring, uas), (ok, uas), (ack, uac), (bye, uac),
                              (bye_ok, uas)):
                t = cpu()
                receive(ctx, data, src, listen, 0.0)
                spent += cpu() - t
            transport.take()
        if best is None or spent < best:
            best = spent
    assert best is not None
    return best / calls * 1e6


def inproc(calls: int, repeat: int, profile: bool) -> None:
    from natserver.context import Context, ListTransport, Proc
    from natserver.receive import receive
    from natserver.script import load
    from natserver.shm import Tables
    from natserver.stats import COUNTER_NAMES, Stats

    listen = ("127.0.0.1", 5060)
    uac, uas = ("127.0.0.1", 5070), ("127.0.0.1", 5080)
    script = load("bench.cfg", text=f"listen={listen[0]}\nport={listen[1]}\n" + MODULES + ROUTES)
    ctx = Context(script.config, "bench.cfg")
    specs: dict = {}
    for module in script.modules.values():
        specs.update(module.shm_tables(ctx))
    tables = Tables.build(specs, proc_slots=3, counter_names=COUNTER_NAMES)
    clock = [1000.0]
    ctx.script = script
    ctx.set_modules(script.modules)
    ctx.tables = tables
    ctx.proc = Proc("sip worker", 1, 1, 1)
    ctx.stats = Stats()
    ctx.mono = lambda: clock[0]
    transport = ListTransport()
    ctx.transport = transport
    for module in script.modules.values():
        module.init(ctx)
        module.child_init(ctx)
    tm = script.modules["tm"]
    cpu = time.process_time
    kinds = ("INVITE", "180", "200", "ACK", "BYE", "200 BYE", "timers")
    best: dict[str, float] | None = None
    n0 = 0
    prof = cProfile.Profile() if profile else None
    try:
        for _ in range(repeat):
            spent = dict.fromkeys(kinds, 0.0)
            sent = 0

            def step(kind: str, data: bytes, src: tuple[str, int]) -> list[bytes]:
                t = cpu()
                if prof:
                    prof.enable()
                receive(ctx, data, src, listen, clock[0])
                if prof:
                    prof.disable()
                spent[kind] += cpu() - t
                return [d for d, _ in transport.take()]

            for i in range(n0, n0 + calls):
                clock[0] += 0.005  # 200 calls per second of virtual time
                out = step("INVITE", invite(i, uac, uas, listen), uac)
                fwd = out[1]
                tag = b"ut%d" % i
                sent += len(out)
                sent += len(step("180", reply(fwd, 180, b"Ringing", tag), uas))
                ok = reply(fwd, 200, b"OK", tag, b"<sip:bob@127.0.0.1:5080>", SDP)
                out = step("200", ok, uas)
                sent += len(out)
                sent += len(step("ACK", in_dialog(b"ACK", out[0], i, 1, uac), uas))
                out = step("BYE", in_dialog(b"BYE", out[0], i, 2, uac), uac)
                sent += len(out)
                sent += len(step("200 BYE", reply(out[0], 200, b"OK", tag), uas))
                t = cpu()
                tm.worker_timer(ctx, clock[0])
                spent["timers"] += cpu() - t
            clock[0] += 10.0   # let the last ones expire too
            t = cpu()
            while tm.worker_timer(ctx, clock[0]) == 0.0:
                pass
            spent["timers"] += cpu() - t
            transport.take()
            n0 += calls
            assert sent == 7 * calls, f"{sent} datagrams for {calls} calls"
            assert tables["transactions"].count() == 0
            total = sum(spent.values())
            if best is None or total < sum(best.values()):
                best = spent
    finally:
        tables.close()
    assert best is not None
    total = sum(best.values())
    print(f"tm in-process: {calls} calls x best of {repeat}: "
          f"{total / calls * 1e6:.0f} us CPU per call (7 messages out, 6 in)")
    for kind in kinds:
        print(f"  {kind:<8} {best[kind] / calls * 1e6:7.1f} us")
    floor = baseline(calls, repeat)
    print(f"baseline (same six datagrams, each request answered by sl_send_reply, replies "
          f"relayed statelessly): {floor:.0f} us per call")
    if prof is not None:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(35)


# ---- end to end ---------------------------------------------------------------------------

E2E_CFG = """
debug=2
fork=no
log_stderror=yes
listen=127.0.0.1
port=0
children={children}
""" + MODULES


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _server_pids(pid: int) -> list[int]:
    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children()]
    except psutil.Error:
        return [pid]


def e2e_one(children: int, calls: int, parallel: int, timeout: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="tm-bench-"))
    cfg = tmp / "bench.cfg"
    cfg.write_text(E2E_CFG.format(children=children) + ROUTES)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "natserver", "-f", str(cfg), "-D", "-E"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=str(tmp))
    try:
        port = 0
        deadline = time.monotonic() + 20
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            found = LISTEN_RE.search(line)
            if found:
                port = int(found.group(2))
                break
        if not port:
            raise RuntimeError("natserver did not start")
        proxy = ("127.0.0.1", port)
        return _drive(proc.pid, proxy, calls, parallel, timeout) | {"children": children}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drive(pid: int, proxy: tuple[str, int], calls: int, parallel: int,
           timeout: float) -> dict:
    """Run ``calls`` calls, at most ``parallel`` at once, UAC and UAS in this process."""
    uac = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uac.bind(("127.0.0.1", 0))
    uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uas.bind(("127.0.0.1", 0))
    for s in (uac, uas):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setblocking(False)
    ua, us = uac.getsockname(), uas.getsockname()
    pids = _server_pids(pid)
    time.sleep(0.3)
    cpu0 = _cpu(pids)
    t0 = time.monotonic()
    started = done = 0
    active: dict[bytes, float] = {}
    while done < calls and time.monotonic() - t0 < timeout:
        while started < calls and len(active) < parallel:
            uac.sendto(invite(started, ua, us, proxy), proxy)
            active[b"call-%d@bench" % started] = time.monotonic()
            started += 1
        ready, _, _ = select.select([uac, uas], [], [], 0.5)
        for sock in ready:
            while True:
                try:
                    data, _src = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                done += _react(sock is uac, data, uac, uas, ua, proxy, active)
        now = time.monotonic()
        for cid, since in list(active.items()):
            if now - since > 10.0:  # lost: give up on this call
                del active[cid]
    elapsed = time.monotonic() - t0
    time.sleep(0.2)
    cpu = _cpu(pids) - cpu0
    uac.close()
    uas.close()
    return {"calls": done, "seconds": round(elapsed, 2), "calls_per_s": round(done / elapsed, 1),
            "server_cpu_s": round(cpu, 3),
            "us_per_call": round(cpu / max(done, 1) * 1e6, 1)}


def _call_id(data: bytes) -> bytes:
    i = data.find(b"\r\nCall-ID: ")
    return data[i + 11:data.find(b"\r\n", i + 11)]


def _react(at_uac: bool, data: bytes, uac: socket.socket, uas: socket.socket,
           ua: tuple[str, int], proxy: tuple[str, int], active: dict[bytes, float]) -> int:
    """One datagram at the UAC or the UAS; 1 when a call completed."""
    first = data[:data.find(b"\r\n")]
    cid = _call_id(data)
    n = int(cid.split(b"-")[1].split(b"@")[0])
    tag = b"ut%d" % n
    if not at_uac:
        if first.startswith(b"INVITE "):
            uas.sendto(reply(data, 180, b"Ringing", tag), proxy)
            ok = reply(data, 200, b"OK", tag, b"<sip:bob@%s:%d>" % (
                uas.getsockname()[0].encode(), uas.getsockname()[1]), SDP)
            uas.sendto(ok, proxy)
        elif first.startswith(b"BYE "):
            uas.sendto(reply(data, 200, b"OK", tag), proxy)
        return 0
    if first.startswith(b"SIP/2.0 200") and b" INVITE\r\n" in data:
        uac.sendto(in_dialog(b"ACK", data, n, 1, ua), proxy)
        uac.sendto(in_dialog(b"BYE", data, n, 2, ua), proxy)
    elif first.startswith(b"SIP/2.0 200") and b" BYE\r\n" in data:
        if active.pop(cid, None) is not None:
            return 1
    return 0


def e2e(children: list[int], calls: int, parallel: int, timeout: float) -> None:
    for n in children:
        r = e2e_one(n, calls, parallel, timeout)
        print(f"tm end to end, children={r['children']}: {r['calls']} calls in {r['seconds']} s "
              f"({r['calls_per_s']}/s, at most {parallel} at once): server CPU "
              f"{r['server_cpu_s']} s = {r['us_per_call']} us per call")


def in_netns(argv: list[str]) -> int:
    """Re-run this benchmark inside a new loopback-only network namespace: the server
    forwards to addresses it reads from messages."""
    name = f"nstmb-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        return subprocess.run(["ip", "netns", "exec", name, sys.executable, "-m",
                               "loadtest.tm_bench", *argv, "--no-netns"], env=env).returncode
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
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m loadtest.tm_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("inproc")
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    p = sub.add_parser("e2e")
    p.add_argument("--children", type=int, nargs="+", default=[1, 2])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--parallel", type=int, default=20)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--no-netns", action="store_true")
    args = parser.parse_args(argv)
    if args.mode == "inproc":
        inproc(args.calls, args.repeat, args.profile)
        return 0
    if not args.no_netns:
        if os.geteuid() != 0:
            print("e2e needs root (the server runs in its own network namespace)",
                  file=sys.stderr)
            return 2
        return in_netns(argv)
    e2e(args.children, args.calls, args.parallel, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
