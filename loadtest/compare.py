"""natserver and Kamailio side by side: the same users, the same scenarios, the same
generator, pairs run back to back; the table goes into BENCHMARKS.md.

    python -m loadtest.compare [--out BENCHMARKS.md] [--pairs 3] [--servers kamailio,natserver]

Both servers run inside a network namespace made for the run (they forward to
addresses read from messages), with ``children=2``; the generator runs there too.
Figures: the highest REGISTER/s with digest auth and calls/s with proxy auth that stay
under 1% failed (``--max-rate``), p99 response times at 50% of natserver's maximum
(Kamailio's when natserver cannot run yet), server CPU-seconds per 1,000 units from
/proc at a fixed rate, and natserver's goodput at 1.5x and 2x its maximum. These
machines are noisy, so every figure is measured in pairs - one server, then the
other, straight away - and the ratio quoted is the median of the pairs' ratios.

The natserver part is isolated in ``NatserverProc`` (start: ``natserver -f CFG -D -E``,
counters: ``natserverctl --json stats``, users: ``natserverctl add user@domain pw``);
while natserver cannot register users it is skipped with a message.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import logging
import os
import re
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
import psutil

from loadtest.kamailio import Kamailio, available
from loadtest.scenarios.common import rule_users

log = logging.getLogger("loadtest.compare")

ROOT = Path(__file__).resolve().parents[1]
NATSERVER_CFG = ROOT / "conf" / "natserver.cfg"
GEN_PORT = 40000          # the namespace is the run's own: these ports are free
BEGIN = "<!-- loadtest/compare.py: begin -->"
END = "<!-- loadtest/compare.py: end -->"


class NotReady(RuntimeError):
    """The server cannot take part yet (missing feature); the message says why."""


class Server(Protocol):
    name: str
    host: str
    port: int

    def stop(self) -> None: ...
    def cpu_seconds(self) -> float: ...
    def counters(self) -> dict[str, int]: ...


# -- natserver (isolated so that the lead can wire it) ------------------------------------

_LISTEN_RE = re.compile(r"listening on udp:([0-9.]+):(\d+)")


def natserver_cfg(text: str, *, host: str, port: int, children: int, fifo: str, db_url: str) -> str:
    """conf/natserver.cfg with what an operator changes: listen, port, children, the
    FIFO, the db_url lines; foreground and stderr logging for a benchmark."""
    sets = {"listen": host, "port": str(port), "children": str(children), "fork": "no",
            "log_stderror": "yes", "fifo": f'"{fifo}"', "debug": "2"}
    for name, value in sets.items():
        text, n = re.subn(rf"^{name}\s*=.*$", f"{name}={value}", text, flags=re.M)
        if not n:
            text = f"{name}={value}\n" + text
    text = re.sub(r'"(mysql|sqlite|postgres)://[^"]*"', f'"{db_url}"', text)
    return text


class NatserverProc:
    """natserver started as ``natserver -f CFG -D -E`` (in ``netns`` when given)."""

    name = "natserver"

    def __init__(self, users: list[tuple[bytes, bytes]], *, children: int = 2,
                 host: str = "127.0.0.1", port: int = 0, netns: str | None = None,
                 cfg: Path = NATSERVER_CFG) -> None:
        self.users = users
        self.children = children
        self.host = host
        self.port = port or 20000 + int.from_bytes(os.urandom(2), "big") % 40000
        self.netns = netns
        self.dir = Path(tempfile.mkdtemp(prefix="lt-ns-"))
        self.cfg_path = self.dir / "natserver.cfg"
        self.db_url = f"sqlite://{self.dir / 'natserver.db'}"
        self.cfg_text = natserver_cfg(cfg.read_text(), host=host, port=self.port,
                                      children=children, fifo=str(self.dir / "fifo"),
                                      db_url=self.db_url)
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def _cmd(self, *args: str) -> list[str]:
        exe = shutil.which("natserver")
        base = [exe] if exe else [sys.executable, "-m", "natserver"]
        cmd = [*base, *args]
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def ctl(self, *args: str, json: bool = True) -> subprocess.CompletedProcess[str]:
        exe = shutil.which("natserverctl")
        base = [exe] if exe else [sys.executable, "-m", "natserver.ctlcli"]
        return subprocess.run([*base, "-f", str(self.cfg_path), *(["--json"] if json else []), *args],
                              capture_output=True, text=True, timeout=30, env=_env())

    def start(self, timeout: float = 20.0) -> NatserverProc:
        self.cfg_path.write_text(self.cfg_text)
        check = subprocess.run(self._cmd("-f", str(self.cfg_path), "-c"), capture_output=True,
                               text=True, env=_env(), timeout=60)
        if check.returncode != 0:
            raise NotReady(f"natserver refuses the cfg: {(check.stderr or check.stdout).strip()[-300:]}")
        self.proc = subprocess.Popen(self._cmd("-f", str(self.cfg_path), "-D", "-E"),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=_env(), cwd=str(self.dir))
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                if _LISTEN_RE.search(line):
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise NotReady("natserver did not start:\n" + "\n".join(self.lines[-20:]))
        return self

    def provision(self) -> None:
        """``natserverctl db init`` and ``natserverctl add user@domain password`` for
        every user, in the database the cfg's db_url lines now name; NotReady while
        natserverctl cannot do that."""
        domain = f"{self.host}:{self.port}"
        rest = self.users[1:]
        steps = [("db", "init")] + [("add", f"{u.decode()}@{domain}", p.decode()) for u, p in self.users[:1]]
        if not self.db_url.startswith("sqlite://"):
            steps += [("add", f"{u.decode()}@{domain}", p.decode()) for u, p in rest]
            rest = []
        for step in steps:
            done = self.ctl("--db", self.db_url, *step, json=False)
            if done.returncode != 0:
                raise NotReady(f"natserverctl {step[0]} is not available yet: "
                               + (done.stderr or done.stdout).strip()[-200:])
        if rest:
            # a process per user takes minutes for a thousand: the rest go in one
            # transaction, in the columns and with the HA1 convention `add` used above
            db = sqlite3.connect(self.db_url.removeprefix("sqlite://"))
            try:
                with db:
                    db.executemany(
                        "INSERT INTO subscriber (username, domain, password, ha1, ha1b) "
                        "VALUES (?, ?, ?, ?, ?)",
                        [(u.decode(), domain, p.decode(), _md5(f"{u.decode()}:{domain}:{p.decode()}"),
                          _md5(f"{u.decode()}@{domain}:{domain}:{p.decode()}")) for u, p in rest])
            finally:
                db.close()

    def counters(self) -> dict[str, int]:
        done = self.ctl("stats")
        if done.returncode != 0:
            return {}
        rows = orjson.loads(done.stdout)
        out: dict[str, int] = {}
        for row in rows if isinstance(rows, list) else []:
            for k, v in row.items():
                if isinstance(v, int) and k not in ("proc", "pid"):
                    out[k] = out.get(k, 0) + v
        return out

    def cpu_seconds(self) -> float:
        return _tree_cpu(self.proc.pid if self.proc else 0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class KamailioServer:
    """loadtest.kamailio.Kamailio with the interface compare needs."""

    name = "kamailio"

    def __init__(self, users: list[tuple[bytes, bytes]], *, children: int = 2,
                 netns: str | None = None) -> None:
        self.kam = Kamailio(users, children=children, netns=netns)

    def start(self) -> KamailioServer:
        self.kam.start()
        return self

    @property
    def host(self) -> str:
        return self.kam.host

    @property
    def port(self) -> int:
        return self.kam.port

    def counters(self) -> dict[str, int]:
        return self.kam.stats()

    def cpu_seconds(self) -> float:
        return self.kam.cpu_seconds()

    def stop(self) -> None:
        self.kam.stop()


def _tree_cpu(pid: int) -> float:
    return sum(user + system for user, system in tree_cpu_by_title(pid).values())


def tree_cpu_by_title(pid: int) -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds of ``pid`` and its descendants, summed per process
    title (``natserver: sip worker 1/2`` ...)."""
    if not pid:
        return {}
    try:
        main = psutil.Process(pid)
        procs = [main, *main.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out: dict[str, tuple[float, float]] = {}
    for p in procs:
        try:
            t = p.cpu_times()
            title = " ".join(p.cmdline()).strip() or p.name()
        except psutil.NoSuchProcess:
            continue
        user, system = out.get(title, (0.0, 0.0))
        out[title] = (user + t.user, system + t.system)
    return out


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))


# -- the generator, run inside the namespace ------------------------------------------------

def generator(netns: str, server: Server, scenario: str, *args: str) -> dict[str, Any]:
    """One ``natserver-loadtest`` run against ``server``; its JSON document."""
    with tempfile.NamedTemporaryFile(prefix="lt-cmp-", suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    try:
        cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "loadtest", scenario,
               "-t", f"{server.host}:{server.port}", *args, "--json", str(out), "-q"]
        subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=str(ROOT), timeout=3600)
        if not out.stat().st_size:
            raise RuntimeError(f"generator wrote nothing: {shlex.join(cmd)}")
        return orjson.loads(out.read_bytes())
    finally:
        out.unlink(missing_ok=True)


@dataclass(slots=True)
class Figure:
    """One row of the table: a value per server per pair."""

    name: str
    unit: str
    command: str
    values: dict[str, list[float]] = field(default_factory=dict)
    higher_is_better: bool = True

    def add(self, server: str, value: float) -> None:
        self.values.setdefault(server, []).append(value)

    def median(self, server: str) -> float | None:
        v = self.values.get(server)
        return statistics.median(v) if v else None

    def ratio(self) -> float | None:
        """Median over pairs of natserver / Kamailio."""
        a, b = self.values.get("natserver", []), self.values.get("kamailio", [])
        pairs = [x / y for x, y in zip(a, b) if y]
        return statistics.median(pairs) if pairs else None


@dataclass(slots=True)
class Plan:
    users: int = 1000
    duration: float = 5.0
    procs: int = 2
    hold: float = 0.5
    start_rate_register: float = 1000
    start_rate_call: float = 200
    pairs: int = 3


def probe(netns: str, server: Server, scenario: str) -> str:
    """Empty when ``server`` completes one unit of ``scenario``, else the causes."""
    args = {"register": ["-u", "2", "-m", "1"],
            "call": ["-u", "2", "--callees", "1", "-m", "1", "--hold", "0"]}[scenario]
    doc = generator(netns, server, scenario, *args, "-r", "10", "-d", "0", "--timeout", "4")
    return "" if doc["summary"]["ok"] == 1 else str(doc["causes"])


def run_pair(netns: str, all_servers: dict[str, Server], plan: Plan, figures: dict[str, Figure],
             natserver_max: dict[str, float], can: dict[str, set[str]]) -> None:
    """Every figure once per server, servers back to back. A server takes part in the
    register and call rows only when ``can[server]`` holds that scenario."""
    # fixed generator ports: every run registers the same contacts (see --local-port)
    base = ["-u", str(plan.users), "-p", str(plan.procs), "--local-port", str(GEN_PORT)]
    for scenario, start in (("register", plan.start_rate_register), ("call", plan.start_rate_call)):
        servers = {k: v for k, v in all_servers.items() if scenario in can.get(k, set())}
        if not servers:
            continue
        extra = ["--hold", str(plan.hold)] if scenario == "call" else []
        args = [*base, *extra, "--max-rate", "-r", str(start), "-d", str(plan.duration)]
        fig = figures.setdefault(f"max {scenario}", Figure(
            f"max {'REGISTER/s with digest auth' if scenario == 'register' else 'calls/s with proxy auth'} "
            "(< 1% failed)", "/s", "natserver-loadtest " + scenario + " " + shlex.join(args)))
        for name, srv in servers.items():
            doc = generator(netns, srv, scenario, *args)
            best = doc["max_rate"]["rate"]
            fig.add(name, best)
            if name == "natserver":
                natserver_max[scenario] = best
        # p99 and CPU at half of natserver's maximum (Kamailio's when natserver is absent)
        half = 0.5 * (natserver_max.get(scenario) or fig.median("kamailio") or start)
        fixed = [*base, *extra, "-r", f"{half:.0f}", "-d", str(plan.duration)]
        p99 = figures.setdefault(f"p99 {scenario}", Figure(
            f"p99 {scenario} response time at 50% of natserver's max", "ms",
            "natserver-loadtest " + scenario + " " + shlex.join(fixed), higher_is_better=False))
        cpu = figures.setdefault(f"cpu {scenario}", Figure(
            f"server CPU-s per 1,000 {'registrations' if scenario == 'register' else 'calls'}",
            "s", p99.command, higher_is_better=False))
        # the generator's own cost, against SIPp's ~50 us per registration, ~150 per call
        gen = figures.setdefault(f"generator {scenario}", Figure(
            f"generator CPU us per {'registration' if scenario == 'register' else 'call'} "
            "(both sides)", "us", p99.command, higher_is_better=False))
        for name, srv in servers.items():
            c0 = srv.cpu_seconds()
            doc = generator(netns, srv, scenario, *fixed)
            used = srv.cpu_seconds() - c0
            p99.add(name, doc["latency_ms"][doc["stats"]["primary"]].get("p99", 0.0))
            ok = doc["summary"]["ok"]
            if ok:
                cpu.add(name, used / ok * 1000)
                gen.add(name, doc["summary"]["generator_cpu_us_per_unit"])
    args = ["-r", "2000", "-d", str(plan.duration)]
    opt = figures.setdefault("cpu options", Figure(
        "server CPU-s per 1,000 stateless OPTIONS", "s",
        "natserver-loadtest options " + shlex.join(args), higher_is_better=False))
    for name, srv in all_servers.items():
        c0 = srv.cpu_seconds()
        doc = generator(netns, srv, "options", *args)
        if doc["summary"]["ok"]:
            opt.add(name, (srv.cpu_seconds() - c0) / doc["summary"]["ok"] * 1000)
    for mult in (1.5, 2.0):
        for scenario in ("register", "call"):
            able = [k for k in ("natserver", "kamailio") if scenario in can.get(k, set())]
            if not able:
                continue
            srv_name = able[0]
            top = natserver_max.get(scenario) if srv_name == "natserver" else figures[f"max {scenario}"].median("kamailio")
            if not top:
                continue
            extra = ["--hold", str(plan.hold)] if scenario == "call" else []
            args = [*base, *extra, "-r", f"{top * mult:.0f}", "-d", str(plan.duration), "--timeout", "8"]
            fig = figures.setdefault(f"overload {scenario} {mult}", Figure(
                f"{srv_name} {scenario} goodput at {mult}x its max (share of max)", "",
                "natserver-loadtest " + scenario + " " + shlex.join(args)))
            doc = generator(netns, all_servers[srv_name], scenario, *args)
            fig.add(srv_name, doc["summary"]["goodput"] / top)


def render(figures: dict[str, Figure], servers: list[str], date: str) -> str:
    head = ("| figure | natserver | Kamailio 5.6 | natserver/Kamailio (median of pairs) | command | date |\n"
            "|---|---|---|---|---|---|\n")
    rows = []
    for fig in figures.values():
        def cell(name: str) -> str:
            m = fig.median(name)
            if m is None:
                return "n/a" if name in servers else "not run"
            return f"{m:,.3f}" if abs(m) < 10 else f"{m:,.0f}"
        ratio = fig.ratio()
        rows.append(f"| {fig.name} | {cell('natserver')} | {cell('kamailio')} | "
                    f"{'' if ratio is None else f'{ratio:.2f}'} | `{fig.command}` | {date} |")
    return head + "\n".join(rows) + "\n"


def write_benchmarks(path: Path, table: str, note: str) -> None:
    """Replace (or append) the section this script owns in ``path``."""
    block = f"{BEGIN}\n## natserver vs Kamailio (loadtest/compare.py)\n\n{note}\n\n{table}{END}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per trial")
    p.add_argument("--procs", type=int, default=2, help="generator processes")
    p.add_argument("--children", type=int, default=2)
    p.add_argument("--servers", default="kamailio,natserver")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if os.geteuid() != 0:
        sys.stderr.write("compare: needs root (the servers run in a network namespace)\n")
        return 2
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    users = rule_users(args.users)
    netns = f"lt-cmp-{os.urandom(4).hex()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
    servers: dict[str, Server] = {}
    notes = []
    try:
        if "kamailio" in wanted:
            reason = available()
            if reason:
                notes.append(f"Kamailio skipped: {reason}.")
            else:
                servers["kamailio"] = KamailioServer(users, children=args.children, netns=netns).start()
        if "natserver" in wanted:
            ns = NatserverProc(users, children=args.children, netns=netns)
            try:
                servers["natserver"] = ns.start()
                ns.provision()
            except NotReady as exc:
                if "natserver" not in servers:
                    ns.stop()
                notes.append(f"natserver: {exc}")
                log.warning("natserver: %s", exc)
        can: dict[str, set[str]] = {}
        for name, srv in servers.items():
            can[name] = set()
            for scenario in ("register", "call"):
                why = probe(netns, srv, scenario)
                if why:
                    notes.append(f"{name} left out of the {scenario} rows: one {scenario} "
                                 f"failed with {why}.")
                    log.warning("%s cannot %s: %s", name, scenario, why)
                else:
                    can[name].add(scenario)
        if not servers:
            sys.stderr.write("compare: no server could run\n" + "\n".join(notes) + "\n")
            return 1
        plan = Plan(users=args.users, duration=args.duration, procs=args.procs, pairs=args.pairs)
        figures: dict[str, Figure] = {}
        natserver_max: dict[str, float] = {}
        for i in range(plan.pairs):
            log.info("pair %d/%d", i + 1, plan.pairs)
            run_pair(netns, servers, plan, figures, natserver_max, can)
        date = datetime.date.today().isoformat()
        table = render(figures, list(servers), date)
        note = (f"Both servers with children={args.children}, the seed's logic without the RTP "
                f"relay (Kamailio: loadtest/kamailio/seed.cfg on SQLite in WAL mode), {args.users} "
                f"users, generator with --procs {args.procs}, {plan.pairs} pair(s) run back to back "
                f"on {os.cpu_count()} CPUs. Produced by `python -m loadtest.compare "
                f"{shlex.join(argv if argv is not None else sys.argv[1:])}`. " + " ".join(notes))
        write_benchmarks(args.out, table, note)
        sys.stdout.write(table)
        return 0
    finally:
        for srv in servers.values():
            srv.stop()
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
