"""Fixtures for NAT tests: real namespaces, NAT routers, a server, real user agents.

A test asks for `nat_lab` and builds what it needs:

    topo = nat_lab.network([NatMode.MASQ, NatMode.SYMMETRIC])
    nat_lab.start_server("reference", natping_interval=2)
    a = nat_lab.baresip("ua1")           # provisioned, started, registered
    b = nat_lab.pjua("ua2", "--answer")

Teardown runs in the right order (UAs, server, then every namespace, also when the test
failed) and prints the server's and the UAs' logs when the test failed. At the end of
the session every namespace this process created is swept; before its first network a
process sweeps those of dead test processes (a SIGKILLed run cannot clean up).

Server kinds: `SERVER_KINDS` maps a name to (factory, problem-check). "reference" is
kamailio + rtpengine; "natserver" is tests/helpers/natserver_sut.py (conf/natserver.cfg).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import netns
from tests.helpers.baresip import Baresip, UaConfig, baresip_problem
from tests.helpers.netns import Host, NatMode, RouterSpec, ServerNat, Topology, wait_until
from tests.helpers.pjua import PjUa, pjsua2_problem
from tests.helpers.natserver_sut import NatServer, natserver_problem, strip_rtp_proxy
from tests.helpers.refserver import (RefServer, RelaySession, ServerUnderTest,
                                     reference_problem)
from tests.helpers.tonecheck import dominant_tone

log = logging.getLogger(__name__)

MIN_RX = 50  # packets a UA must receive in a 2 s call at 50 pps (start-up included)
SCENARIO_SERVER_ENV = "NATTEST_SERVER"

# Distinct tones, far apart for the Goertzel check; UA number k sends TONES[k - 1].
TONES = (440, 840, 1240, 1640, 2040, 2440, 2840, 3240)

ServerFactory = Callable[[Path], ServerUnderTest]


SERVER_KINDS: dict[str, tuple[ServerFactory, Callable[[], str | None]]] = {
    "reference": (lambda workdir: RefServer(workdir), reference_problem),
    "natserver": (lambda workdir: NatServer(workdir), natserver_problem),
    # negative controls (`<kind>-norelay`): the same server without its media relay;
    # for natserver the seed cfg with every force_rtp_proxy/unforce_rtp_proxy removed
    "reference-norelay": (lambda workdir: RefServer(workdir, relay=False), reference_problem),
    "natserver-norelay": (lambda workdir: NatServer(workdir, cfg_filter=strip_rtp_proxy),
                          natserver_problem),
}


def tone_of(user: str) -> int:
    """ua1 -> 440, ua2 -> 840, pua1 -> 2440 ...: stable per user name."""
    digits = "".join(ch for ch in user if ch.isdigit()) or "1"
    base = 0 if user.startswith("ua") else 5
    return TONES[(base + int(digits) - 1) % len(TONES)]


def skip_unless_nat() -> None:
    reason = netns.environment_problem()
    if reason:
        pytest.skip(reason)
    _sweep_stale_once()


@functools.cache
def _sweep_stale_once() -> None:
    # here, not in pytest_sessionstart: a conftest below the rootdir is only loaded
    # during collection, after the session started
    left = netns.sweep_stale()
    if left:
        log.warning("removed namespaces of dead test runs: %s", left)


@dataclass
class NatLab:
    """Everything one NAT test runs; `close()` undoes all of it."""

    tmp: Path
    topo: Topology | None = None
    server: ServerUnderTest | None = None
    uas: list[Baresip | PjUa] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)
    per_host: dict[str, int] = field(default_factory=dict)

    # ---- network
    def network(self, routers: Sequence[RouterSpec | NatMode | str] = (NatMode.MASQ,) * 2,
                public_hosts: int = 1, server_nat: ServerNat | None = None) -> Topology:
        skip_unless_nat()
        assert self.topo is None, "one network per test"
        self.topo = Topology.build(routers, public_hosts, server_nat=server_nat)
        self.topo.up()
        return self.topo

    # ---- server
    def start_server(self, kind: str = "reference", *, natping_interval: int = 0) -> ServerUnderTest:
        assert self.topo is not None, "network() first"
        factory, problem = SERVER_KINDS[kind]
        reason = problem()
        if reason:
            pytest.skip(reason)
        self.server = factory(self.tmp / kind)
        self.server.start(self.topo, self.topo.server, natping_interval=natping_interval)
        return self.server

    def relay_ports(self) -> set[int]:
        assert self.server is not None
        return {p for s in self.server.relay_sessions() for p in s.ports}

    def wait_relay_released(self, timeout: float = 3.0) -> None:
        assert self.server is not None
        wait_until(lambda: not self.server.relay_sessions(), timeout, 0.05,
                   "the relay to release the call")

    def use_server(self, server: ServerUnderTest, *, natping_interval: int = 0) -> ServerUnderTest:
        """Start a server built by the test (e.g. NatServer with advertised_address);
        torn down like one from start_server()."""
        assert self.topo is not None, "network() first"
        self.server = server
        server.start(self.topo, self.topo.server, natping_interval=natping_interval)
        return server

    @property
    def domain(self) -> str:
        """The address phones use for the server (the public one behind a 1:1 NAT)."""
        assert self.topo is not None
        return self.topo.server_public_ip

    def provision(self, user: str) -> str:
        """Give `user` a password on the server (before its UA starts)."""
        assert self.server is not None, "start_server() first"
        if user not in self.passwords:
            self.passwords[user] = f"pw-{user}-secret"
            self.server.provision(user, self.passwords[user])
        return self.passwords[user]

    def provision_all(self, users: Sequence[str]) -> None:
        """Provision many users at once (natserverctl add is a process each: run four
        at a time; the database's busy timeout queues the writers)."""
        assert self.server is not None, "start_server() first"
        todo = [u for u in dict.fromkeys(users) if u not in self.passwords]
        for user in todo:
            self.passwords[user] = f"pw-{user}-secret"
        server = self.server
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda u: server.provision(u, self.passwords[u]), todo))

    # ---- user agents
    def _slot(self, host: Host) -> int:
        """0 for the first UA in a namespace (SIP 5060), 1 for the next (5062) ..."""
        n = self.per_host.get(host.role, 0)
        self.per_host[host.role] = n + 1
        return n

    def baresip(self, role: str, *, user: str | None = None, register: bool = True,
                tone: int | None = None, **config: object) -> Baresip:
        reason = baresip_problem()
        if reason:
            pytest.skip(reason)
        assert self.topo is not None
        host = self.topo.host(role)
        user = user or role
        n = self._slot(host)
        cfg = UaConfig(user=user, password=self.provision(user), domain=self.domain,
                       local_ip=host.ip, tone_hz=tone or tone_of(user),
                       ctrl_port=4444 + n, sip_port=5060 + n * 2,
                       rtp_ports=(10000 + 200 * n, 10000 + 200 * n + 100), **config)
        ua = Baresip(self.topo, host, cfg, self.tmp / f"baresip-{user}")
        self.uas.append(ua)
        ua.start()
        if register:
            ua.wait_registered()
        return ua

    def pjua(self, role: str, *args: str, user: str | None = None, register: bool = True,
             tone: int | None = None, max_secs: float = 45.0) -> PjUa:
        reason = pjsua2_problem()
        if reason:
            pytest.skip(reason)
        assert self.topo is not None
        host = self.topo.host(role)
        user = user or role
        n = self._slot(host)
        argv = ["--user", user, "--password", self.provision(user), "--domain", self.domain,
                "--bind", host.ip, "--port", str(5060 + n * 2),
                "--rtp-port", str(4000 + 200 * n), "--tone", str(tone or tone_of(user)),
                "--record", str(self.tmp / f"pjua-{user}.wav"),
                "--max-secs", str(max_secs), *args]
        ua = PjUa(self.topo, host, argv)
        self.uas.append(ua)
        ua.start()
        if register:
            ua.wait_registered()
        return ua

    # ---- calls (baresip)
    def call(self, caller: Baresip, callee: Baresip, *, talk: float = 2.0,
             hangup_by: Baresip | None = None) -> list[RelaySession]:
        """caller calls callee; both talk `talk` s; `hangup_by` (default the caller)
        sends BYE. Returns the relay sessions seen during the call."""
        assert self.server is not None
        caller.dial(f"sip:{callee.config.user}@{self.domain}")
        callee.wait_established(10.0)
        caller.wait_established(10.0)
        time.sleep(talk)
        sessions = self.server.relay_sessions()
        (hangup_by or caller).hangup()
        callee.wait_closed(5.0)
        caller.wait_closed(5.0)
        return sessions

    def assert_heard(self, ua: Baresip, other: Baresip, min_rx: int = MIN_RX) -> None:
        """`ua` received `other`'s tone (so this direction of the call carried audio)."""
        stats = ua.rtp_stats()
        assert stats and stats[-1][0] >= min_rx and stats[-1][1] >= min_rx, \
            f"{ua.config.user}: RTP tx/rx per call {stats}"
        wavs = ua.received_wavs()
        assert wavs, f"{ua.config.user}: no received-audio WAV"
        tone = dominant_tone(wavs[-1], [ua.config.tone_hz, other.config.tone_hz])
        assert tone.freq == other.config.tone_hz and tone.share > 0.5, \
            f"{ua.config.user} heard {tone}, expected {other.config.tone_hz} Hz"

    def assert_sdp_at_relay(self, ua: Baresip, relay_ports: set[int]) -> None:
        """Every SDP `ua` received told it to send RTP to the relay."""
        sdp = ua.received_sdp_addresses()
        assert sdp, f"{ua.config.user} received no SDP"
        bad = [a for a in sdp if a[0] != self.domain or a[1] not in relay_ports]
        assert not bad, f"{ua.config.user} was told to send RTP elsewhere: {bad} " \
                        f"(relay {self.domain} ports {sorted(relay_ports)})"

    def assert_relayed_call(self, caller: Baresip, callee: Baresip,
                            sessions: list[RelaySession]) -> None:
        """One relay session carried the call; both directions heard; SDP at relay."""
        assert len(sessions) == 1, f"expected one relay session: {sessions}"
        s = sessions[0]
        assert s.packets > 2 * MIN_RX, f"the relay forwarded too little: {s}"
        ports = set(s.ports)
        for ua, other in ((caller, callee), (callee, caller)):
            self.assert_heard(ua, other)
            self.assert_sdp_at_relay(ua, ports)

    # ---- teardown
    def dump_logs(self) -> str:
        parts = []
        if self.server is not None:
            parts.append(self.server.log_text()[-6000:])
        for ua in self.uas:
            if isinstance(ua, Baresip):
                parts.append(f"--- baresip {ua.config.user}\n{ua.log_text()[-4000:]}")
            else:
                parts.append(f"--- pjua {ua.args[1]}\n" + "\n".join(ua.raw[-40:]))
        return "\n".join(parts)

    def close(self) -> None:
        errors: list[BaseException] = []
        for ua in reversed(self.uas):
            with _collect(errors):
                ua.stop(timeout=2.0)
        if self.server is not None:
            with _collect(errors):
                self.server.stop()
            problems = getattr(self.server, "log_problems", lambda: [])()
            if problems:
                errors.append(AssertionError(
                    "the server logged errors:\n" + "\n".join(problems[:20])
                    + f"\n{self.server.log_text()[-6000:]}"))
        if self.topo is not None:
            self.topo.down()  # kills whatever a failed stop() left, deletes namespaces
        if errors:
            raise errors[0]


@contextlib.contextmanager
def _collect(errors: list[BaseException]) -> Iterator[None]:
    try:
        yield
    except Exception as e:  # keep tearing down; the first error is raised at the end
        errors.append(e)


@pytest.fixture
def scenario_server() -> str:
    """Which server the NAT scenarios run against: $NATTEST_SERVER, default natserver.
    NATTEST_SERVER=reference runs them against kamailio + rtpengine (proves the tests)."""
    kind = os.environ.get(SCENARIO_SERVER_ENV, "natserver")
    if kind not in SERVER_KINDS:
        reason = natserver_problem() if kind == "natserver" else None
        pytest.skip(f"no ServerUnderTest for {kind!r} in tests/nat/conftest.py SERVER_KINDS"
                    + (f" ({reason})" if reason else "")
                    + f"; {SCENARIO_SERVER_ENV}=reference runs these against kamailio")
    return kind


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def nat_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NatLab]:
    lab = NatLab(tmp_path)
    try:
        yield lab
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(lab.dump_logs())  # shown in the report's captured teardown output
        lab.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if netns.environment_problem() is None:
        left = netns.sweep(netns.run_prefix())
        if left:
            log.warning("swept leftover test namespaces: %s", left)

