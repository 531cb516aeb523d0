"""natserver as the NAT tests' server under test (refserver.ServerUnderTest).

It runs the operator's configuration, conf/natserver.cfg (the seed's routing logic),
with only the values an operator changes rendered in: ``listen``, the database URLs
(an SQLite file in the test's directory), the FIFO, the relay's socket and a small RTP
port range, ``natping_interval`` from the scenario, and short tm timers so that an
INVITE to an unreachable contact ends in 408 within a test's wait. Subscribers are
provisioned and state is read with the real ``natserverctl``, as an operator would.

Negative controls build the same server from a cfg with one thing taken away
(``strip_rtp_proxy``: every ``force_rtp_proxy``/``unforce_rtp_proxy`` call removed).

Behind a 1:1 NAT (netns ``ServerNat``) the server listens on its private address;
``advertised_address`` (and ``advertised_port``) render SER's globals of that name, and
``aliases`` adds ``alias=`` lines (the public address as myself, without advertising
it: the control). ``domain`` is the SIP domain subscribers are provisioned in (default:
the advertised address, else the listen address).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import IO

from tests.helpers.netns import Host, Topology
from tests.helpers.refserver import Registration, RelaySession, wait_sip_ready

ROOT = Path(__file__).resolve().parents[2]
SEED_CFG = ROOT / "conf" / "natserver.cfg"
RELAY_PORTS = (30000, 30399)
# tm timers (seconds): the keepalive-off scenario waits for the 408 of an INVITE whose
# callee's NAT mapping is gone; SER's 30 s / 120 s defaults would outlast the test
FR_TIMER = 3
FR_INV_TIMER = 20

_BAD_LEVEL = re.compile(r"^\S+ \S+ natserver\[\d+\] .*? (ERROR|CRITICAL|ALERT) natserver")
_RTP_CALL = re.compile(r"\b(?:un)?force_rtp_proxy\s*\([^)]*\)\s*;?")


def natserver_problem() -> str | None:
    """Why natserver cannot serve the NAT scenarios here, or None."""
    import importlib
    import importlib.util
    try:
        importlib.import_module("natserver.workers.supervisor")
    except ImportError as e:
        return f"natserver cannot run: natserver.workers.supervisor: {e}"
    for mod in ("tm", "rr", "usrloc", "registrar", "auth_db", "nathelper"):
        if importlib.util.find_spec(f"natserver.modules.{mod}") is None:
            return f"natserver cannot run the seed cfg yet: natserver.modules.{mod} is missing"
    if not SEED_CFG.exists():
        return f"{SEED_CFG} is missing"
    return None


def strip_rtp_proxy(text: str) -> str:
    """The cfg with every force_rtp_proxy/unforce_rtp_proxy call removed: signalling
    unchanged, SDP no longer rewritten to the relay (the 'no relay' negative control).
    An emptied block stays valid (`{ }` and `if (...) { };` compile)."""
    out = _RTP_CALL.sub("", text)
    assert "rtp_proxy(" not in out
    return out


def render_cfg(seed: str, *, listen: str, db_url: str, fifo: str, rtpproxy_sock: str,
               natping_interval: int, rtp_ports: tuple[int, int] = RELAY_PORTS,
               fr_timer: int = FR_TIMER, fr_inv_timer: int = FR_INV_TIMER,
               advertised_address: str | None = None, advertised_port: int | None = None,
               aliases: Sequence[str] = ()) -> str:
    """conf/natserver.cfg with the operator's values for this test server."""
    subs: list[tuple[str, str]] = [
        (r"(?m)^listen=\S+", f"listen={listen}"),
        (r'(?m)^fifo=".*?"', f'fifo="{fifo}"'),
        (r'(?m)^fifo_db_url=".*?"', f'fifo_db_url="{db_url}"'),
        (r"(?m)^rtp_port_min=\d+", f"rtp_port_min={rtp_ports[0]}"),
        (r"(?m)^rtp_port_max=\d+", f"rtp_port_max={rtp_ports[1]}"),
        (r'(?m)^(modparam\("[^"]*", "db_url", )"[^"]*"\)', rf'\1"{db_url}")'),
        (r'(?m)^modparam\("nathelper", "natping_interval", \d+\)',
         f'modparam("nathelper", "natping_interval", {int(natping_interval)})'),
        (r'(?m)^modparam\("nathelper", "rtpproxy_sock", "[^"]*"\)',
         f'modparam("nathelper", "rtpproxy_sock", "{rtpproxy_sock}")'),
    ]
    text = seed
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text)
        assert n >= 1, f"conf/natserver.cfg has no line matching {pattern!r}"
    # the seed leaves tm at SER's defaults; the tests' waits need shorter ones
    tm = (f'modparam("tm", "fr_timer", {fr_timer})\n'
          f'modparam("tm", "fr_inv_timer", {fr_inv_timer})\n')
    text, n = re.subn(r'(?m)^(modparam\("usrloc", "db_mode", \d+\)\n)', r"\1" + tm, text)
    assert n == 1, "conf/natserver.cfg has no usrloc db_mode modparam to anchor tm's"
    extra = [f"alias={a}" for a in aliases]
    if advertised_address:
        extra.append(f'advertised_address="{advertised_address}"')
    if advertised_port:
        extra.append(f"advertised_port={int(advertised_port)}")
    if extra:
        text, n = re.subn(r"(?m)^(port=\d+.*\n)", lambda m: m.group(1) + "\n".join(extra) + "\n",
                          text)
        assert n == 1, "conf/natserver.cfg has no port= line to anchor the globals"
    return text


@dataclass(slots=True)
class NatServer:
    """natserver (supervisor, SIP workers, natping, ctl, RTP relay) in the server ns."""

    workdir: Path
    cfg_filter: object = None  # callable(str) -> str applied to the seed cfg (controls)
    fr_inv_timer: int = FR_INV_TIMER
    advertised_address: str | None = None  # SER's global: the public IP behind 1:1 NAT
    advertised_port: int | None = None
    aliases: tuple[str, ...] = ()
    domain: str | None = None  # subscribers' domain (default advertised, else listen)
    name: str = "natserver"
    topo: Topology | None = None
    host: Host | None = None
    proc: subprocess.Popen | None = None
    rundir: Path | None = None
    cfg_path: Path | None = None
    logs: list[IO[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to 108 bytes; pytest's tmp_path can be longer
        self.rundir = Path(tempfile.mkdtemp(prefix="ntns-"))

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.workdir / 'natserver.db'}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "natserver.log"

    def _write_cfg(self, natping_interval: int, listen: str) -> Path:
        assert self.rundir is not None
        seed = SEED_CFG.read_text()
        if self.cfg_filter is not None:
            seed = self.cfg_filter(seed)  # type: ignore[operator]
        text = render_cfg(seed, listen=listen, db_url=self.db_url,
                          fifo=str(self.rundir / "fifo"),
                          rtpproxy_sock=f"unix:{self.rundir / 'rtpproxy.sock'}",
                          natping_interval=natping_interval, fr_inv_timer=self.fr_inv_timer,
                          advertised_address=self.advertised_address,
                          advertised_port=self.advertised_port, aliases=self.aliases)
        path = self.workdir / "natserver.cfg"
        path.write_text(text)
        self.cfg_path = path
        return path

    def ctl(self, *args: str, json_out: bool = False, check: bool = True,
            timeout: float = 15.0) -> subprocess.CompletedProcess:
        """Run natserverctl against this server's cfg, as an operator on the server host
        would (from the root namespace: the ctl socket is a Unix socket, reachable from
        any network namespace)."""
        assert self.cfg_path is not None
        argv = [sys.executable, "-m", "natserver.ctlcli", "-f", str(self.cfg_path)]
        if json_out:
            argv.append("--json")
        argv += list(args)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           cwd=str(ROOT), env=_env())
        if check and r.returncode != 0:
            raise RuntimeError(f"natserverctl {' '.join(args)}: rc={r.returncode} "
                               f"{r.stdout.strip()} {r.stderr.strip()}")
        return r

    # ---- ServerUnderTest
    def start(self, topo: Topology, host: Host, *, natping_interval: int = 0) -> None:
        self.topo, self.host = topo, host
        cfg = self._write_cfg(natping_interval, host.ip)
        self.ctl("db", "init")
        f = open(self.log_path, "wb")
        self.logs.append(f)
        self.proc = topo.spawn(host, [sys.executable, "-m", "natserver", "-f", str(cfg),
                                      "-D", "-E"],
                               stdout=f, env=_env(), cwd=str(self.workdir))
        try:
            wait_sip_ready(topo, host, host.ip, timeout=15.0, proc=self.proc)
        except (RuntimeError, TimeoutError) as e:  # a cfg error is on the log's last lines
            raise RuntimeError(f"{e}\n{self.log_text()[-3000:]}") from None

    def provision(self, user: str, password: str) -> None:
        assert self.host is not None
        domain = self.domain or self.advertised_address or self.host.ip
        self.ctl("add", f"{user}@{domain}", password)

    def registrations(self) -> list[Registration]:
        rows = json.loads(self.ctl("ul", "show", json_out=True).stdout or "[]")
        out = []
        for row in rows:
            exp = row.get("expires")
            out.append(Registration(
                aor=str(row.get("aor", "")).partition("@")[0],
                contact=str(row.get("contact", "")),
                received=row.get("received") or None,
                expires=exp if isinstance(exp, int) else 0))
        return out

    def has_relay(self) -> bool:
        """Whether the running server answers `rtp` (its relay is built in)."""
        r = self.ctl("which", json_out=True, check=False)
        return r.returncode == 0 and '"rtp"' in r.stdout

    def relay_sessions(self) -> list[RelaySession]:
        r = self.ctl("rtp", json_out=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"natserverctl rtp: rc={r.returncode} {r.stdout.strip()} "
                               f"{r.stderr.strip()}")
        return parse_rtp_sessions(json.loads(r.stdout or "[]"))

    def log_text(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- natserver.log ({self.log_path})\n{text}"

    def log_problems(self) -> list[str]:
        """ERROR/CRITICAL/ALERT lines and tracebacks in the server's log: a scenario
        that passed while a worker raised, died or was respawned still hides a bug."""
        return [ln for ln in self.log_text().splitlines()
                if ln.startswith("Traceback") or _BAD_LEVEL.search(ln)]

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=3.0)
        for f in self.logs:
            f.close()
        self.logs.clear()
        if self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None


def parse_rtp_sessions(data: object) -> list[RelaySession]:
    """`natserverctl rtp --json` ({"sessions": [...], "relays": [...]}; one session row
    per call and media stream) -> one RelaySession per call: the relay ports of every
    side, the packets the relay received from both sides, and where each side's media
    goes (the latched address, else the signalled one)."""
    rows = data.get("sessions", []) if isinstance(data, dict) else []
    calls: dict[str, RelaySession] = {}
    for s in rows:
        callid = str(s.get("callid", ""))
        latched = s.get("latched") or []
        signalled = s.get("signalled") or []
        peers = tuple(lat or (signalled[i] if i < len(signalled) else "")
                      for i, lat in enumerate(latched))
        prev = calls.get(callid)
        ports = tuple(int(p) for p in s.get("ports") or [])
        packets = sum(int(n) for n in s.get("packets") or [])
        if prev is not None:
            ports, packets, peers = prev.ports + ports, prev.packets + packets, prev.peers + peers
        calls[callid] = RelaySession(call_id=callid, ports=ports, packets=packets, peers=peers)
    return list(calls.values())


def _env() -> dict[str, str]:
    import os
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
