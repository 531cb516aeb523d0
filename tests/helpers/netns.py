"""Network-namespace topology for NAT tests: a WAN bridge, a public server host, NAT
routers with nftables masquerade and a LAN behind each, and hosts on the public side.

```
  <p>ua1 192.168.1.10 -- lan0 192.168.1.1 [<p>nat1] wan0 198.51.100.21 --+
  <p>ua2 192.168.2.10 -- lan0 192.168.2.1 [<p>nat2] wan0 198.51.100.22 --+-- br0 [<p>wan]
  <p>pua1 198.51.100.51 ------------------------------------------------+
  <p>pub  198.51.100.10 (the server under test) -------------------------+
```

With `server_nat=ServerNat()` the server is a cloud VM behind a 1:1 NAT instead:

```
  <p>pub 10.0.0.10 -- lan0 10.0.0.1 [<p>srvnat] wan0 198.51.100.10 -- br0 [<p>wan]
```

The router owns the public address 198.51.100.10: UDP to it (SIP and the relay's port
range) is DNATed to 10.0.0.10, and the server's own traffic is SNATed to it. The
phones' routers have no route to 10.0.0.0/24, so the private address is unreachable for
them, as it is on the Internet.

198.51.100.0/24 (TEST-NET-2) and the LANs exist only inside the namespaces: the root
namespace has no route to them, so no test packet can leave the machine.

Every namespace name starts with a prefix that is unique per process and per topology
(`nt<pid>t<n>-`), so parallel pytest workers never meet. `Topology.down()` kills every
process inside each namespace (found through /proc, not only the ones spawned here) and
deletes the namespaces; `sweep()` does the same for whatever a crashed test left behind.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import itertools
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

log = logging.getLogger(__name__)

NETNS_DIR = "/run/netns"
CONNTRACK_UDP_TIMEOUT = "/proc/sys/net/netfilter/nf_conntrack_udp_timeout"
WAN_PREFIXLEN = 24
SERVER_IP = "198.51.100.10"
PORT_RANGE = (20000, 29999)  # NatMode.RANGE maps every UDP source port into this range
SERVER_PRIVATE_IP = "10.0.0.10"  # the server's own address behind a 1:1 NAT (server_nat)
SERVER_NAT_LAN_IP = "10.0.0.1"
SERVER_NAT_LAN = "10.0.0.0/24"

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count(1)
_T = TypeVar("_T")


class NatMode(enum.StrEnum):
    """How a router translates (the names are the `topology` parameter values)."""

    MASQ = "masq"            # masquerade: endpoint-independent, keeps the port when free
    RANGE = "range"          # port-translating: masquerade to :20000-29999, still EIM
    SYMMETRIC = "fullrandom"  # masquerade fully-random: a new port per destination
    ALG = "alg"              # masq plus the kernel SIP helper rewriting Via/Contact/SDP


_MASQ_RULE = {
    NatMode.MASQ: "masquerade",
    NatMode.RANGE: f"meta l4proto udp masquerade to :{PORT_RANGE[0]}-{PORT_RANGE[1]}",
    NatMode.SYMMETRIC: "masquerade fully-random",
    NatMode.ALG: "masquerade",
}


def environment_problem() -> str | None:
    """Why NAT tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "NAT tests need root (network namespaces, nftables)"
    if not os.path.exists(CONNTRACK_UDP_TIMEOUT):
        return f"NAT tests need connection tracking: {CONNTRACK_UDP_TIMEOUT} is missing"
    for tool in ("ip", "nft", "conntrack", "sysctl"):
        if not _which(tool):
            return f"NAT tests need `{tool}` on PATH"
    return None


def _which(tool: str) -> bool:
    return any(os.access(os.path.join(d, tool), os.X_OK)
               for d in os.environ.get("PATH", "/usr/sbin:/usr/bin").split(os.pathsep))


def run_prefix() -> str:
    """The part of every namespace name this process makes: unique per process."""
    return f"nt{os.getpid()}t"


def new_prefix() -> str:
    """A fresh namespace prefix for one topology, unique per process and per call."""
    return f"{run_prefix()}{next(_counter)}-"


# ----------------------------------------------------------------------------- roles
@dataclass(slots=True, frozen=True)
class RouterSpec:
    """One NAT router. `udp_timeout` sets both conntrack UDP timeouts in its namespace
    (the kernel moves a flow that saw replies to the `stream` timeout after ~2 s, so a
    short unreplied timeout alone would not expire a registration's mapping)."""

    mode: NatMode = NatMode.MASQ
    udp_timeout: int | None = None
    hosts: int = 1


@dataclass(slots=True, frozen=True)
class ServerNat:
    """Put the server behind a 1:1 NAT (a cloud VM): UDP to the public address on
    `udp_ports` (inclusive ranges: SIP and the relay's ports) is forwarded to the
    server's private address; everything the server sends leaves with the public one."""

    udp_ports: tuple[tuple[int, int], ...] = ((5060, 5060), (30000, 30399))


@dataclass(slots=True, frozen=True)
class OneToOneRouter:
    """The router in front of the server when it is behind a 1:1 NAT."""

    role: str
    ns: str
    public_ip: str
    lan_ip: str
    lan_net: str
    private_ip: str
    udp_ports: tuple[tuple[int, int], ...]


@dataclass(slots=True, frozen=True)
class Host:
    """A machine: `ns` is its namespace, `ip` its only address."""

    role: str
    ns: str
    ip: str
    router: str | None = None  # role of the NAT router in front of it; None on the WAN


@dataclass(slots=True, frozen=True)
class Router:
    role: str
    ns: str
    wan_ip: str
    lan_ip: str
    lan_net: str
    mode: NatMode
    udp_timeout: int | None
    hosts: tuple[Host, ...]


Node = Host | Router | OneToOneRouter | str


def ns_of(node: Node) -> str:
    return node if isinstance(node, str) else node.ns


# ------------------------------------------------------------------ namespace threads
def in_netns(ns: str, fn: Callable[[], _T]) -> _T:
    """Run `fn` in a throwaway thread that has joined namespace `ns`. Sockets created
    there stay in `ns` for life, so the caller (in the root namespace) can use them."""
    box: list = []

    def work() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns({ns}): {os.strerror(e)}")
            finally:
                os.close(fd)
            box.append((True, fn()))
        except BaseException as exc:  # handed back to the caller's thread
            box.append((False, exc))

    t = threading.Thread(target=work, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


def netns_socket(ns: str, type: int = socket.SOCK_DGRAM,
                 bind: tuple[str, int] | None = None) -> socket.socket:
    """A socket living in namespace `ns`, optionally bound (port 0 = any free port)."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, type)
        try:
            if bind is not None:
                s.bind(bind)
        except OSError:
            s.close()
            raise
        return s

    return in_netns(ns, make)


def ns_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """`ip netns exec` execs the command, so a Popen's pid is the program's own pid."""
    return ["ip", "netns", "exec", ns, *argv]


# ------------------------------------------------------------------ sweeping and pids
def list_namespaces(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def pids_in(namespaces: Iterable[str]) -> dict[int, str]:
    """pid -> namespace name, for every live process in any of `namespaces`
    (what `ip netns pids` does, for several namespaces in one /proc scan). Zombies
    have left their namespace and are not listed; their parent reaps them."""
    inodes: dict[tuple[int, int], str] = {}
    for ns in namespaces:
        try:
            st = os.stat(os.path.join(NETNS_DIR, ns))
        except FileNotFoundError:
            continue
        inodes[(st.st_dev, st.st_ino)] = ns
    found: dict[int, str] = {}
    if not inodes:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone, or a zombie
            continue
        ns = inodes.get((st.st_dev, st.st_ino))
        if ns is not None:
            found[int(entry)] = ns
    return found


def kill_namespace_processes(namespaces: Sequence[str], grace: float = 1.0) -> None:
    """SIGTERM every process in `namespaces`, SIGKILL what is left after `grace` s,
    and wait (bounded) until none is left."""
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    for _ in range(400):
        pids = pids_in(namespaces)
        if not pids:
            return
        if time.monotonic() >= deadline:
            sig = signal.SIGKILL
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
        if sig == signal.SIGKILL and time.monotonic() > deadline + 3.0:
            break
    left = pids_in(namespaces)
    if left:
        log.error("processes survived SIGKILL in test namespaces: %s", left)


def delete_namespaces(namespaces: Sequence[str]) -> None:
    """Kill what runs inside, then delete. Deleting alone would leave a busy namespace
    alive anonymously, with its veths."""
    namespaces = [n for n in namespaces if os.path.exists(os.path.join(NETNS_DIR, n))]
    if not namespaces:
        return
    kill_namespace_processes(namespaces)
    batch = "".join(f"netns del {n}\n" for n in namespaces)
    r = subprocess.run(["ip", "-force", "-batch", "-"], input=batch, text=True,
                       capture_output=True, timeout=20)
    if r.returncode != 0:
        log.warning("ip netns del: %s", r.stderr.strip())
    left = [n for n in namespaces if os.path.exists(os.path.join(NETNS_DIR, n))]
    if left:
        log.error("test namespaces could not be deleted: %s", left)


def sweep(prefix: str) -> list[str]:
    """Remove every namespace whose name starts with `prefix`; returns their names."""
    names = list_namespaces(prefix)
    delete_namespaces(names)
    return names


_STALE = re.compile(r"nt(\d+)t\d+-")


def sweep_stale() -> list[str]:
    """Remove namespaces of this harness whose creating process is dead (a test run
    that was SIGKILLed cannot clean up after itself)."""
    stale = []
    for name in list_namespaces("nt"):
        m = _STALE.match(name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            stale.append(name)
    delete_namespaces(stale)
    return stale


# ---------------------------------------------------------------------------- topology
@dataclass(slots=True)
class Topology:
    """The whole network of one test. Build with `Topology.build(...)`, then `up()`;
    `down()` is idempotent and safe after a failed `up()`."""

    prefix: str
    server: Host
    routers: list[Router]
    public_hosts: list[Host]
    wan_ns: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    is_up: bool = False
    server_router: OneToOneRouter | None = None  # set when the server is behind 1:1 NAT

    @classmethod
    def build(cls, routers: Sequence[RouterSpec | NatMode | str] = (NatMode.MASQ,) * 2,
              public_hosts: int = 1, prefix: str | None = None,
              server_nat: ServerNat | None = None) -> Topology:
        prefix = prefix or new_prefix()
        rs: list[Router] = []
        for i, spec in enumerate(routers, 1):
            if not isinstance(spec, RouterSpec):
                spec = RouterSpec(NatMode(spec))
            if not 1 <= spec.hosts <= 200:
                raise ValueError(f"router {i}: hosts must be 1..200")
            role = f"nat{i}"
            hosts = tuple(
                Host(role=f"ua{i}" if k == 0 else f"ua{i}-{k}",
                     ns=f"{prefix}ua{i}" if k == 0 else f"{prefix}ua{i}-{k}",
                     ip=f"192.168.{i}.{10 + k}", router=role)
                for k in range(spec.hosts))
            rs.append(Router(role=role, ns=prefix + role, wan_ip=f"198.51.100.{20 + i}",
                             lan_ip=f"192.168.{i}.1", lan_net=f"192.168.{i}.0/24",
                             mode=NatMode(spec.mode), udp_timeout=spec.udp_timeout,
                             hosts=hosts))
        if len(rs) > 28:
            raise ValueError("at most 28 routers")
        pubs = [Host(role=f"pua{j}", ns=f"{prefix}pua{j}", ip=f"198.51.100.{50 + j}")
                for j in range(1, public_hosts + 1)]
        if server_nat is None:
            server = Host(role="pub", ns=prefix + "pub", ip=SERVER_IP)
            srv_router = None
        else:
            srv_router = OneToOneRouter(role="srvnat", ns=prefix + "srvnat",
                                        public_ip=SERVER_IP, lan_ip=SERVER_NAT_LAN_IP,
                                        lan_net=SERVER_NAT_LAN, private_ip=SERVER_PRIVATE_IP,
                                        udp_ports=tuple(server_nat.udp_ports))
            server = Host(role="pub", ns=prefix + "pub", ip=SERVER_PRIVATE_IP,
                          router=srv_router.role)
        return cls(prefix=prefix, server=server, routers=rs, public_hosts=pubs,
                   wan_ns=prefix + "wan", server_router=srv_router)

    # ---- lookups
    @property
    def lan_hosts(self) -> list[Host]:
        return [h for r in self.routers for h in r.hosts]

    @property
    def namespaces(self) -> list[str]:
        srv = [self.server_router.ns] if self.server_router is not None else []
        return [self.wan_ns, self.server.ns, *srv, *(r.ns for r in self.routers),
                *(h.ns for h in self.lan_hosts), *(h.ns for h in self.public_hosts)]

    def node(self, role: str) -> Host | Router | OneToOneRouter:
        srv = (self.server_router,) if self.server_router is not None else ()
        for n in (self.server, *srv, *self.routers, *self.lan_hosts, *self.public_hosts):
            if n.role == role:
                return n
        raise KeyError(role)

    def host(self, role: str) -> Host:
        n = self.node(role)
        if not isinstance(n, Host):
            raise KeyError(f"{role} is a router")
        return n

    def router(self, role: str) -> Router:
        n = self.node(role)
        if not isinstance(n, Router):
            raise KeyError(f"{role} is not a router")
        return n

    def router_of(self, host: Host) -> Router:
        if host.router is None:
            raise KeyError(f"{host.role} is on the WAN")
        return self.router(host.router)

    def public_address(self, host: Host) -> str:
        """The address the WAN sees for `host` (its router's, behind a NAT)."""
        if self.server_router is not None and host.role == self.server.role:
            return self.server_router.public_ip
        return host.ip if host.router is None else self.router(host.router).wan_ip

    @property
    def server_public_ip(self) -> str:
        """Where the phones reach the server: its own address, or behind a 1:1 NAT the
        public one its router owns."""
        return self.public_address(self.server)

    # ---- up / down
    def up(self, timeout: float = 20.0) -> None:
        names = self.namespaces
        clash = [n for n in names if os.path.exists(os.path.join(NETNS_DIR, n))]
        if clash:
            raise RuntimeError(f"namespaces already exist: {clash}")
        self.is_up = True  # from here on down() has something to undo
        _ip_batch([f"netns add {n}" for n in names], timeout)
        _ip_batch(self._veth_commands(), timeout)
        sr = self.server_router
        scripts = {self.wan_ns: self._wan_script(),
                   self.server.ns: _host_script(self.server, None if sr is None else sr.lan_ip)}
        if sr is not None:
            scripts[sr.ns] = _one_to_one_script(sr)
        for r in self.routers:
            scripts[r.ns] = self._router_script(r)
            for h in r.hosts:
                scripts[h.ns] = _host_script(h, r.lan_ip)
        for h in self.public_hosts:
            scripts[h.ns] = _host_script(h, None)
        # one shell per namespace, all at once: setup time is the slowest, not the sum
        running = {ns: subprocess.Popen(ns_argv(ns, ["sh", "-ec", script]),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
                   for ns, script in scripts.items()}
        errors = []
        for ns, p in running.items():
            try:
                out, _ = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            if p.returncode != 0:
                errors.append(f"{ns}: rc={p.returncode}: {out.strip()}")
        if errors:
            raise RuntimeError("topology setup failed:\n" + "\n".join(errors))
        wait_until(self._bridges_ready, 3.0, 0.05, "bridge ports to forward")

    def down(self) -> None:
        """Stop what was spawned, kill anything else inside, delete every namespace."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=2.0)
        self.procs.clear()
        if self.is_up:
            delete_namespaces(self.namespaces)
            self.is_up = False

    def __enter__(self) -> Topology:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _veth_commands(self) -> list[str]:
        # Both ends are created directly in their namespaces: nothing touches the root
        # ns. Every interface gets its own ifindex: when a veth's index equals its
        # peer's (both are "2" in fresh namespaces), the kernel's linkwatch treats its
        # carrier change as non-urgent and delays it up to 1 s, and until then the WAN
        # bridge port stays disabled and drops frames.
        index = itertools.count(10)

        def veth(a: str, a_ns: str, b: str, b_ns: str) -> str:
            return (f"link add {a} netns {a_ns} index {next(index)} type veth "
                    f"peer name {b} netns {b_ns} index {next(index)}")

        w = self.wan_ns
        if self.server_router is None:
            cmds = [veth("eth0", self.server.ns, "p-pub", w)]
        else:
            sr = self.server_router
            cmds = [veth("wan0", sr.ns, f"p-{sr.role}", w),
                    veth("lan0", sr.ns, "eth0", self.server.ns)]
        for r in self.routers:
            cmds.append(veth("wan0", r.ns, f"p-{r.role}", w))
            if len(r.hosts) == 1:
                cmds.append(veth("lan0", r.ns, "eth0", r.hosts[0].ns))
            else:
                cmds += [veth(f"l{k}", r.ns, "eth0", h.ns) for k, h in enumerate(r.hosts)]
        cmds += [veth("eth0", h.ns, f"p-{h.role}", w) for h in self.public_hosts]
        return cmds

    def _bridges_ready(self) -> bool:
        """Every bridge port forwards (STP is off, so this follows the carrier)."""
        for ns in [self.wan_ns, *(r.ns for r in self.routers if len(r.hosts) > 1)]:
            r = subprocess.run(["bridge", "-n", ns, "link", "show"], capture_output=True,
                               text=True, timeout=5)
            states = re.findall(r"state (\w+) priority", r.stdout)
            if not states or any(st != "forwarding" for st in states):
                return False
        return True

    def _wan_script(self) -> str:
        first = "p-pub" if self.server_router is None else f"p-{self.server_router.role}"
        ports = [first, *(f"p-{r.role}" for r in self.routers),
                 *(f"p-{h.role}" for h in self.public_hosts)]
        lines = [_BASE_SYSCTL, "ip link add br0 type bridge", "ip link set br0 up"]
        lines += [f"ip link set {p} master br0 up" for p in ports]
        return "\n".join(lines)

    def _router_script(self, r: Router) -> str:
        lines = [_BASE_SYSCTL, "sysctl -qw net.ipv4.ip_forward=1"]
        if r.udp_timeout is not None:
            t = int(r.udp_timeout)
            lines.append(f"sysctl -qw net.netfilter.nf_conntrack_udp_timeout={t} "
                         f"net.netfilter.nf_conntrack_udp_timeout_stream={t}")
        lines.append(f"ip addr add {r.wan_ip}/{WAN_PREFIXLEN} dev wan0")
        lines.append("ip link set wan0 up")
        if len(r.hosts) == 1:
            lines.append("ip link set lan0 up")
        else:
            # bridged LAN-to-LAN frames must not meet the router's forward chain
            lines.append("if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then "
                         "sysctl -qw net.bridge.bridge-nf-call-iptables=0; fi")
            lines.append("ip link add lan0 type bridge")
            lines.append("ip link set lan0 up")
            lines += [f"ip link set l{k} master lan0 up" for k in range(len(r.hosts))]
        lines.append(f"ip addr add {r.lan_ip}/24 dev lan0")
        lines.append("nft -f - <<'NFT'\n" + router_ruleset(r) + "NFT")
        return "\n".join(lines)

    # ---- running things inside
    def spawn(self, node: Node, argv: Sequence[str], *, stdout=subprocess.DEVNULL,
              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env: dict | None = None,
              cwd: str | None = None) -> subprocess.Popen:
        """Start a long-running program inside a namespace; `down()` stops it."""
        p = subprocess.Popen(ns_argv(ns_of(node), argv), stdout=stdout, stderr=stderr,
                             stdin=stdin, env=env, cwd=cwd, start_new_session=True)
        self.procs.append(p)
        return p

    def run(self, node: Node, argv: Sequence[str], *, input: str | None = None,
            timeout: float = 10.0, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(ns_argv(ns_of(node), argv), input=input, text=True,
                           capture_output=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {ns_of(node)}: rc={r.returncode} "
                               f"{r.stderr.strip()}")
        return r

    def socket(self, node: Node, type: int = socket.SOCK_DGRAM,
               bind: tuple[str, int] | None = None) -> socket.socket:
        return netns_socket(ns_of(node), type, bind)

    # ---- connection tracking (= the NAT mappings)
    def conntrack_entries(self, router: Router | str) -> list[str]:
        r = self.run(router, ["conntrack", "-L", "-p", "udp"], check=False)
        return [ln for ln in r.stdout.splitlines() if ln.startswith("udp")]

    def flush_conntrack(self, router: Router | str, src_ip: str | None = None) -> None:
        """Forget mappings: all of them (a router reboot) or those of one LAN host
        (a rebinding: its next packet gets a new mapping)."""
        if src_ip is None:
            self.run(router, ["conntrack", "-F"], check=False)
        else:
            self.run(router, ["conntrack", "-D", "-p", "udp", "--orig-src", src_ip],
                     check=False)

    def set_udp_timeouts(self, router: Router | str, seconds: int,
                         stream: int | None = None) -> None:
        stream = seconds if stream is None else stream
        self.run(router, ["sysctl", "-qw", f"net.netfilter.nf_conntrack_udp_timeout={seconds}",
                          f"net.netfilter.nf_conntrack_udp_timeout_stream={stream}"])

    def udp_timeouts(self, router: Router | str) -> tuple[int, int]:
        def read() -> tuple[int, int]:
            with open(CONNTRACK_UDP_TIMEOUT) as a, open(CONNTRACK_UDP_TIMEOUT + "_stream") as b:
                return int(a.read()), int(b.read())
        return in_netns(ns_of(router), read)


    # ---- measuring at the hosts
    def add_udp_counters(self, node: Node, ports: tuple[int, int]) -> None:
        """Count UDP packets to and from local ports lo-hi (RTP and RTCP) in a host's
        namespace: readable at any moment, no process, no start-up race."""
        lo, hi = ports
        # nft 1.0.6 rejects several statements on one line inside braces: one per line
        ruleset = (f"table inet rtpacct {{\n"
                   f"  chain in {{\n"
                   f"    type filter hook input priority 0; policy accept;\n"
                   f"    udp dport {lo}-{hi} counter\n"
                   f"  }}\n"
                   f"  chain out {{\n"
                   f"    type filter hook output priority 0; policy accept;\n"
                   f"    udp sport {lo}-{hi} counter\n"
                   f"  }}\n"
                   f"}}\n")
        self.run(node, ["nft", "-f", "-"], input=ruleset)

    def udp_counters(self, nodes: Sequence[Node]) -> dict[str, tuple[int, int]]:
        """(packets in, packets out) per namespace, read from all hosts at once."""
        procs = {ns_of(n): subprocess.Popen(ns_argv(ns_of(n), ["nft", "list", "table", "inet",
                                                                "rtpacct"]),
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)
                 for n in nodes}
        out = {}
        for ns, p in procs.items():
            text, err = p.communicate(timeout=10)
            if p.returncode != 0:
                raise RuntimeError(f"nft in {ns}: {err.strip()}")
            counts = [int(x) for x in re.findall(r"counter packets (\d+)", text)]
            if len(counts) != 2:
                raise RuntimeError(f"no rtpacct counters in {ns}")
            out[ns] = (counts[0], counts[1])
        return out

    def listening_udp_ports(self, node: Node) -> set[int]:
        r = self.run(node, ["ss", "-Hlun"])
        return {int(m) for m in re.findall(r"\S+:(\d+)\s", r.stdout)}


_BASE_SYSCTL = (
    "ip link set lo up\n"
    "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 "
    "net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 "
    "net.ipv4.conf.all.forwarding=0"
)


def _host_script(h: Host, gateway: str | None) -> str:
    lines = [_BASE_SYSCTL, f"ip addr add {h.ip}/24 dev eth0", "ip link set eth0 up"]
    if gateway is not None:
        lines.append(f"ip route add default via {gateway}")
    return "\n".join(lines)


def router_ruleset(r: Router) -> str:
    """nftables for a home router: masquerade out of wan0, forward only LAN-originated
    flows, drop unsolicited packets silently (real routers send no port-unreachable)."""
    rule = _MASQ_RULE[r.mode]
    text = f"""table ip nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan0" ip saddr {r.lan_net} {rule}
    oifname "wan0" ip saddr {r.lan_net} masquerade
  }}
}}
table ip filter {{
  chain input {{
    type filter hook input priority filter; policy drop;
    iif "lo" accept
    iifname "lan0" accept
    ct state established,related accept
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    iifname "lan0" oifname "wan0" accept
    iifname "wan0" oifname "lan0" ct state established,related accept
  }}
}}
"""
    if r.mode is NatMode.ALG:
        # since Linux 6.0 helpers are never attached automatically: assign it explicitly
        text += """table ip alg {
  ct helper sip-5060 {
    type "sip" protocol udp;
  }
  chain pre {
    type filter hook prerouting priority filter; policy accept;
    iifname "lan0" udp dport 5060 ct helper set "sip-5060"
  }
}
"""
    return text


def _one_to_one_script(r: OneToOneRouter) -> str:
    lines = [_BASE_SYSCTL, "sysctl -qw net.ipv4.ip_forward=1",
             f"ip addr add {r.public_ip}/{WAN_PREFIXLEN} dev wan0", "ip link set wan0 up",
             f"ip addr add {r.lan_ip}/24 dev lan0", "ip link set lan0 up",
             "nft -f - <<'NFT'\n" + one_to_one_ruleset(r) + "NFT"]
    return "\n".join(lines)


def one_to_one_ruleset(r: OneToOneRouter) -> str:
    """nftables for a cloud provider's 1:1 NAT: DNAT of the public address's forwarded
    UDP ports to the server, SNAT of everything the server sends (the source port is
    kept when free, so the relay's ports look the same from outside); nothing else
    gets in."""
    ports = ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in r.udp_ports)
    return f"""table ip nat {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "wan0" ip daddr {r.public_ip} udp dport {{ {ports} }} dnat to {r.private_ip}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan0" ip saddr {r.private_ip} snat to {r.public_ip}
  }}
}}
table ip filter {{
  chain input {{
    type filter hook input priority filter; policy drop;
    iif "lo" accept
    iifname "lan0" accept
    ct state established,related accept
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    iifname "lan0" oifname "wan0" accept
    iifname "wan0" oifname "lan0" ct status dnat accept
    iifname "wan0" oifname "lan0" ct state established,related accept
  }}
}}
"""


def _ip_batch(commands: list[str], timeout: float) -> None:
    r = subprocess.run(["ip", "-batch", "-"], input="\n".join(commands) + "\n", text=True,
                       capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"ip -batch failed: {r.stderr.strip()}")


# -------------------------------------------------------------------------- waiting
def wait_until(pred: Callable[[], _T], timeout: float, interval: float = 0.02,
               what: str = "condition") -> _T:
    """Poll `pred` until it returns a true value; TimeoutError names `what`."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def udp_exchange(sock: socket.socket, data: bytes, addr: tuple[str, int],
                 timeout: float) -> tuple[bytes, tuple[str, int]] | None:
    """Send one datagram and wait for one answer; None on timeout."""
    sock.settimeout(timeout)
    sock.sendto(data, addr)
    try:
        return sock.recvfrom(65535)
    except (TimeoutError, socket.timeout):
        return None
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
            return None
        raise
