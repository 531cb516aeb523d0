"""The server under test, as the NAT tests see it, and the reference implementation.

`ServerUnderTest` is what a NAT scenario needs from a SIP server: start it in the
public namespace, provision subscribers, list registrations and relay sessions, stop it.
`RefServer` implements it with Debian's kamailio 5.6 (registrar, digest auth on SQLite,
nathelper, rr, tm; cfg in tests/helpers/ref/kamailio.cfg) and rtpengine in userspace
(`--table=-1`). Running a scenario against it first proves the *test* right; natserver
then runs the same scenario through its own implementation of the protocol.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sqlite3
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from tests.helpers.netns import Host, Topology, udp_exchange, wait_until

log = logging.getLogger(__name__)

REF_DIR = Path(__file__).resolve().parent / "ref"
KAMAILIO_CFG = REF_DIR / "kamailio.cfg"
RELAY_PORTS = (30000, 30199)
NG_PORT = 2223  # rtpengine's control port, on the server namespace's own loopback


# ------------------------------------------------------------------------ interface
@dataclass(slots=True, frozen=True)
class Registration:
    """One contact binding. `received` is the NAT's public address the server saw the
    REGISTER from (`sip:ip:port`), None when the server did not consider it NATed."""

    aor: str          # the user part: "ua1"
    contact: str      # as registered: "sip:ua1@192.168.1.10:5060"
    received: str | None
    expires: int      # seconds left


@dataclass(slots=True, frozen=True)
class RelaySession:
    """One relayed call: the relay's own ports and the packets it relayed."""

    call_id: str
    ports: tuple[int, ...]   # relay-side RTP ports, one per leg
    packets: int             # RTP packets received by the relay, both legs
    peers: tuple[str, ...]   # "ip:port" each leg's media was learned from / sent to


class ServerUnderTest(Protocol):
    """A SIP registrar/proxy with a media relay, run inside the server namespace.

    `start` must return once SIP is answered on `host.ip:5060`. `natping_interval`
    (seconds, 0 = off) is the keepalive period to NATed contacts."""

    name: str

    def start(self, topo: Topology, host: Host, *, natping_interval: int = 0) -> None: ...

    def provision(self, user: str, password: str) -> None: ...

    def registrations(self) -> list[Registration]: ...

    def relay_sessions(self) -> list[RelaySession]: ...

    def log_text(self) -> str: ...

    def stop(self) -> None: ...


# ---------------------------------------------------------------------- SIP probing
def sip_options(topo: Topology, node: Host, ip: str, port: int = 5060,
                timeout: float = 0.5) -> int | None:
    """Send one OPTIONS from `node` and return the status code of the answer."""
    sock = topo.socket(node, bind=(node.ip, 0))
    try:
        lport = sock.getsockname()[1]
        tag = secrets.token_hex(4)
        msg = (f"OPTIONS sip:{ip}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {node.ip}:{lport};branch=z9hG4bK{tag};rport\r\n"
               f"Max-Forwards: 70\r\n"
               f"From: <sip:probe@{node.ip}>;tag={tag}\r\n"
               f"To: <sip:{ip}>\r\n"
               f"Call-ID: probe-{tag}@{node.ip}\r\n"
               f"CSeq: 1 OPTIONS\r\n"
               f"Content-Length: 0\r\n\r\n").encode()
        got = udp_exchange(sock, msg, (ip, port), timeout)
        if got is None:
            return None
        first = got[0].split(b"\r\n", 1)[0].split()
        return int(first[1]) if len(first) > 1 and first[1].isdigit() else None
    finally:
        sock.close()


def wait_sip_ready(topo: Topology, node: Host, ip: str, port: int = 5060,
                   timeout: float = 5.0, proc: subprocess.Popen | None = None) -> int:
    """Wait until anything answers SIP at ip:port (any status counts)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering SIP")
        status = sip_options(topo, node, ip, port, timeout=0.2)
        if status is not None:
            return status
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no SIP answer from {ip}:{port} within {timeout}s")


# ------------------------------------------------------------------------- bencode
def bencode(v: object) -> bytes:
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, str):
        return bencode(v.encode())
    if isinstance(v, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, (list, tuple)):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(bencode(k) + bencode(x) for k, x in items) + b"e"
    raise TypeError(f"cannot bencode {type(v).__name__}")


def bdecode(data: bytes) -> object:
    value, end = _bdecode(data, 0)
    if end != len(data):
        raise ValueError("trailing bytes after bencoded value")
    return value


def _bdecode(b: bytes, i: int) -> tuple[object, int]:
    c = b[i:i + 1]
    if c == b"i":
        j = b.index(b"e", i)
        return int(b[i + 1:j]), j + 1
    if c == b"l":
        out, i = [], i + 1
        while b[i:i + 1] != b"e":
            v, i = _bdecode(b, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        d, i = {}, i + 1
        while b[i:i + 1] != b"e":
            k, i = _bdecode(b, i)
            v, i = _bdecode(b, i)
            d[k.decode() if isinstance(k, bytes) else k] = v
        return d, i + 1
    if c.isdigit():
        j = b.index(b":", i)
        n = int(b[i:j])
        return b[j + 1:j + 1 + n].decode("utf-8", "replace"), j + 1 + n
    raise ValueError(f"bad bencode at offset {i}")


class NgClient:
    """rtpengine's ng control protocol (cookie + bencoded dict over UDP)."""

    def __init__(self, topo: Topology, host: Host, port: int = NG_PORT) -> None:
        self.addr = ("127.0.0.1", port)
        self.sock = topo.socket(host, bind=("127.0.0.1", 0))

    def command(self, command: str, timeout: float = 1.0, **args: object) -> dict:
        cookie = secrets.token_hex(6).encode()
        got = udp_exchange(self.sock, cookie + b" " + bencode({"command": command, **args}),
                           self.addr, timeout)
        if got is None:
            raise TimeoutError(f"rtpengine did not answer {command!r}")
        rcookie, _, body = got[0].partition(b" ")
        if rcookie != cookie:
            raise RuntimeError("rtpengine answered another request")
        reply = bdecode(body)
        assert isinstance(reply, dict)
        return reply

    def close(self) -> None:
        self.sock.close()


class JsonRpcDgram:
    """Kamailio's jsonrpcs over a Unix datagram socket (reachable from any netns)."""

    def __init__(self, path: Path, client_path: Path) -> None:
        self.path = str(path)
        self.client_path = str(client_path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.client_path)
        self.ids = 0

    def call(self, method: str, *params: object, timeout: float = 2.0) -> object:
        self.ids += 1
        req = {"jsonrpc": "2.0", "method": method, "id": self.ids}
        if params:
            req["params"] = list(params)
        self.sock.settimeout(timeout)
        self.sock.sendto(json.dumps(req).encode(), self.path)
        data = self.sock.recv(1 << 20)
        reply = json.loads(data)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result")

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.client_path)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------- the reference
def reference_problem() -> str | None:
    """Why the reference server cannot run here, or None."""
    for tool in ("kamailio", "rtpengine"):
        if not any(os.access(os.path.join(d, tool), os.X_OK)
                   for d in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")):
            return f"reference server needs `{tool}` (Debian kamailio / rtpengine-daemon)"
    return None


@dataclass(slots=True)
class RefServer:
    """kamailio 5.6 + rtpengine, both inside the server namespace."""

    workdir: Path
    relay: bool = True
    name: str = "reference"
    topo: Topology | None = None
    host: Host | None = None
    kamailio: subprocess.Popen | None = None
    rtpengine: subprocess.Popen | None = None
    rpc: JsonRpcDgram | None = None
    ng: NgClient | None = None
    logs: list[IO[bytes]] = field(default_factory=list)
    rundir: Path | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.db_path)
        # WAL: provisioning while kamailio runs must not lock its readers out (in the
        # default rollback mode a read racing a write fails with "database is locked",
        # and kamailio's db_sqlite then keeps failing; persistent in the file)
        db.execute("PRAGMA journal_mode=WAL")
        with db:
            db.executescript(_SUBSCRIBER_SCHEMA)
        db.close()

    @property
    def db_path(self) -> Path:
        return self.workdir / "kam.db"

    def provision(self, user: str, password: str) -> None:
        db = sqlite3.connect(self.db_path, timeout=10.0)
        with db:
            db.execute("INSERT OR REPLACE INTO subscriber (username, domain, password) "
                       "VALUES (?, ?, ?)", (user, "", password))
        db.close()

    def start(self, topo: Topology, host: Host, *, natping_interval: int = 0) -> None:
        self.topo, self.host = topo, host
        # Unix socket paths are limited to 108 bytes; pytest's tmp_path can be longer
        rundir = self.rundir = Path(tempfile.mkdtemp(prefix="ntkam-"))
        if self.relay:
            self.rtpengine = topo.spawn(host, [
                "rtpengine", "--config-file=none", "--foreground", "--log-stderr",
                "--table=-1", f"--interface={host.ip}", f"--listen-ng=127.0.0.1:{NG_PORT}",
                f"--port-min={RELAY_PORTS[0]}", f"--port-max={RELAY_PORTS[1]}",
                "--delete-delay=0", "--endpoint-learning=immediate", "--log-level=5",
                "--num-threads=2"], stdout=self._log("rtpengine.log"))
            self.ng = NgClient(topo, host)
            wait_until(self._ng_ping, 5.0, 0.05, "rtpengine to answer ping")
        argv = ["kamailio", "-f", str(KAMAILIO_CFG), "-l", f"udp:{host.ip}:5060",
                "-Y", str(rundir), "-w", str(rundir), "-DD", "-E", "-m", "32", "-M", "4",
                "-A", f'DBURL="sqlite:///{self.db_path}"',
                "-A", f'RPCSOCK="{rundir / "rpc.sock"}"',
                "-A", f"NATPING_INTERVAL={int(natping_interval)}"]
        if self.relay:
            argv += ["-A", "WITH_RTPENGINE",
                     "-A", f'RTPENGINE_SOCK="udp:127.0.0.1:{NG_PORT}"']
        self.kamailio = topo.spawn(host, argv, stdout=self._log("kamailio.log"))
        wait_sip_ready(topo, host, host.ip, proc=self.kamailio)
        self.rpc = JsonRpcDgram(rundir / "rpc.sock", rundir / "client.sock")

    def _log(self, name: str) -> IO[bytes]:
        f = open(self.workdir / name, "wb")
        self.logs.append(f)
        return f

    def _ng_ping(self) -> bool:
        if self.rtpengine is not None and self.rtpengine.poll() is not None:
            raise RuntimeError(f"rtpengine exited: {self.log_text()[-2000:]}")
        assert self.ng is not None
        try:
            return self.ng.command("ping", timeout=0.1).get("result") == "pong"
        except TimeoutError:
            return False

    def registrations(self) -> list[Registration]:
        assert self.rpc is not None
        result = self.rpc.call("ul.dump")
        out = []
        for dom in (result or {}).get("Domains", []):
            for aor in dom.get("Domain", {}).get("AoRs") or []:
                info = aor.get("Info", {})
                for c in info.get("Contacts") or []:
                    c = c.get("Contact", c)
                    rcv = c.get("Received")
                    out.append(Registration(
                        aor=str(info.get("AoR", "")).partition("@")[0],
                        contact=c.get("Address", ""),
                        received=rcv if rcv and rcv != "[not set]" else None,
                        expires=_int(c.get("Expires"))))
        return out

    def relay_sessions(self) -> list[RelaySession]:
        if self.ng is None:
            return []
        calls = self.ng.command("list", limit=1000).get("calls", [])
        out = []
        for call_id in calls:
            q = self.ng.command("query", **{"call-id": call_id})
            if q.get("result") != "ok":
                continue  # deleted between list and query
            ports, peers, packets = [], [], 0
            for tag in (q.get("tags") or {}).values():
                for media in tag.get("medias", []):
                    for stream in media.get("streams", [])[:1]:  # RTP, not RTCP
                        ports.append(int(stream.get("local port", 0)))
                        ep = stream.get("endpoint") or {}
                        peers.append(f"{ep.get('address', '')}:{ep.get('port', 0)}")
                        packets += int((stream.get("stats") or {}).get("packets", 0))
            out.append(RelaySession(call_id=call_id, ports=tuple(ports),
                                    packets=packets, peers=tuple(peers)))
        return out

    def log_text(self) -> str:
        parts = []
        for name in ("kamailio.log", "rtpengine.log"):
            p = self.workdir / name
            if p.exists():
                parts.append(f"--- {name}\n" + p.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        for closer in (self.rpc, self.ng):
            if closer is not None:
                closer.close()
        self.rpc = self.ng = None
        for p in (self.kamailio, self.rtpengine):
            if p is not None and p.poll() is None:
                p.terminate()
        for p in (self.kamailio, self.rtpengine):
            if p is None:
                continue
            try:
                p.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=3.0)
        for f in self.logs:
            f.close()
        self.logs.clear()
        if self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None


def _int(v: object) -> int:
    """kamailio prints "permanent" or "deleted" where a number of seconds would be."""
    try:
        return int(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


_SUBSCRIBER_SCHEMA = """
CREATE TABLE IF NOT EXISTS version (
    id INTEGER PRIMARY KEY NOT NULL,
    table_name VARCHAR(32) NOT NULL UNIQUE,
    table_version INTEGER DEFAULT 0 NOT NULL);
INSERT OR IGNORE INTO version (table_name, table_version) VALUES ('version', 1);
INSERT OR IGNORE INTO version (table_name, table_version) VALUES ('subscriber', 7);
CREATE TABLE IF NOT EXISTS subscriber (
    id INTEGER PRIMARY KEY NOT NULL,
    username VARCHAR(64) DEFAULT '' NOT NULL,
    domain VARCHAR(64) DEFAULT '' NOT NULL,
    password VARCHAR(64) DEFAULT '' NOT NULL,
    ha1 VARCHAR(128) DEFAULT '' NOT NULL,
    ha1b VARCHAR(128) DEFAULT '' NOT NULL,
    UNIQUE (username, domain));
"""
