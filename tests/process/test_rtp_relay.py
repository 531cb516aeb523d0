"""The relay processes of a running natserver (natserver/workers/rtp_relay.py): the
rtpproxy control socket, RTP through the relay, bleed, D, idle expiry, natserverctl rtp.

Everything runs in a loopback-only netns (the relays forward to addresses read from
commands). Commands are sent the way nathelper sends them: U with the caller's address
and from-tag, L with the callee's address and both tags.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.helpers.relayproc import (
    PORT_MAX,
    PORT_MIN,
    Control,
    ctl_json,
    ctl_text,
    drain,
    exchange,
    port_of,
    relay_cfg,
    rtp,
    start_natserver,
)
from tests.helpers.server import Netns, need_root


@pytest.fixture
def ns():
    need_root()
    n = Netns("nsr")
    yield n
    n.destroy()


def server(ns, tmp_path, **kw):
    cfg, control = relay_cfg(tmp_path, **kw)
    return start_natserver(ns, cfg, tmp_path), Control(ns, control)


def call(ctl: Control, a: socket.socket, b: socket.socket, callid: str = "call-1") -> tuple[int, int]:
    """U then L like nathelper: returns (relay port a sends to, relay port b sends to)."""
    pa, pb = a.getsockname()[1], b.getsockname()[1]
    port_for_b = port_of(ctl(f"U {callid} 127.0.0.1 {pa} fromtag"))
    port_for_a = port_of(ctl(f"L {callid} 127.0.0.1 {pb} fromtag totag"))
    return port_for_a, port_for_b


@pytest.mark.parametrize("kind", ["unix", "udp"])
def test_relay_forwards_both_ways_and_d_frees_the_ports(ns, tmp_path, kind):
    control = f"unix:{tmp_path / 'rtp.sock'}" if kind == "unix" else "udp:127.0.0.1:7722"
    srv, ctl = server(ns, tmp_path, control=control)
    a, b = ns.socket(), ns.socket()
    try:
        assert ctl("V") == "20040107"
        assert ctl("VF 20050322") == "1"
        to_a, to_b = call(ctl, a, b)
        assert PORT_MIN <= to_a <= PORT_MAX and PORT_MIN <= to_b <= PORT_MAX
        got_b, got_a = exchange(a, to_a, b, to_b, count=20)
        assert got_b == 20 and got_a == 20
        # each side hears the relay from the port it sends to (symmetric RTP)
        a.sendto(rtp(1), ("127.0.0.1", to_a))
        b.settimeout(1.0)
        _, src = b.recvfrom(2048)
        assert src == ("127.0.0.1", to_b)
        assert ctl("D call-1 fromtag totag") == "0"
        assert ctl("D call-1 fromtag totag") == "E50"         # unknown now
        assert ctl_json(srv.cfg_path, "rtp")["sessions"] == []
        # the ports are free again: anyone may bind them
        for port in (to_a, to_b, to_a + 1, to_b + 1):
            probe = ns.socket(bind=None)
            deadline = time.monotonic() + 2
            while True:
                try:
                    probe.bind(("127.0.0.1", port))
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"port {port} still bound"
                    time.sleep(0.02)
            probe.close()
    finally:
        a.close()
        b.close()
        ctl.close()
        srv.stop()


def test_a_stranger_after_latching_is_not_forwarded(ns, tmp_path):
    """RTP bleed: once both sides latched, packets from another address aimed at a
    relay port reach nobody (the stranger's IP is not the signalled one)."""
    srv, ctl = server(ns, tmp_path)
    a, b = ns.socket(), ns.socket()
    stranger = ns.socket(bind=("127.0.0.2", 0))
    try:
        to_a, to_b = call(ctl, a, b)
        assert exchange(a, to_a, b, to_b, count=5) == (5, 5)
        for i in range(20):
            stranger.sendto(rtp(7000 + i), ("127.0.0.1", to_a))
            stranger.sendto(rtp(7000 + i), ("127.0.0.1", to_b))
        assert drain(b, 0.3) == 0 and drain(a, 0.0) == 0
        assert drain(stranger, 0.0) == 0
        # the real parties still talk
        assert exchange(a, to_a, b, to_b, count=5) == (5, 5)
        rows = ctl_json(srv.cfg_path, "rtp")["sessions"]
        assert len(rows) == 1 and rows[0]["dropped"] >= 40
    finally:
        for s in (a, b, stranger):
            s.close()
        ctl.close()
        srv.stop()


def test_idle_session_expires_and_frees_its_ports(ns, tmp_path):
    srv, ctl = server(ns, tmp_path, timeout=2)
    a, b = ns.socket(), ns.socket()
    try:
        to_a, to_b = call(ctl, a, b)
        assert exchange(a, to_a, b, to_b, count=3) == (3, 3)
        assert ctl("Q call-1 fromtag totag").split()[1:3] == ["3", "3"]
        started = time.monotonic()
        while ctl("Q call-1 fromtag totag") != "E50":
            assert time.monotonic() - started < 6, "the idle session did not expire"
            time.sleep(0.1)
        assert time.monotonic() - started >= 1.0
        assert ctl_json(srv.cfg_path, "rtp")["sessions"] == []
        probe = ns.socket(bind=("127.0.0.1", to_a))
        probe.close()
        assert "timed out" in srv.log_text()
    finally:
        a.close()
        b.close()
        ctl.close()
        srv.stop()


def test_ctl_rtp_lists_sessions_counters_and_relay_load(ns, tmp_path):
    srv, ctl = server(ns, tmp_path, relays=2)
    a, b = ns.socket(), ns.socket()
    try:
        to_a, to_b = call(ctl, a, b, "ctl-call")
        assert exchange(a, to_a, b, to_b, count=10) == (10, 10)
        deadline = time.monotonic() + 3
        while True:        # counters reach the table within a write-back period
            data = ctl_json(srv.cfg_path, "rtp")
            row = data["sessions"][0]
            if row["packets"] == [10, 10] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(data["sessions"]) == 1
        assert row["callid"] == "ctl-call" and row["media"] == 1
        assert sorted(row["ports"]) == sorted([to_a, to_b])
        assert row["packets"] == [10, 10]
        assert row["latched"] == [f"127.0.0.1:{a.getsockname()[1]}",
                                  f"127.0.0.1:{b.getsockname()[1]}"]
        assert row["age"] >= 0
        relays = {r["relay"]: r for r in data["relays"]}
        assert set(relays) == {1, 2}
        owner = relays[row["relay"]]
        assert owner["sessions"] == 1 and owner["ports_used"] == 4
        assert sum(r["sessions"] for r in relays.values()) == 1
        assert all(r["ports_free"] > 0 for r in relays.values())
        text = ctl_text(srv.cfg_path, "rtp")
        print(text)
        assert "ctl-call" in text and "127.0.0.1:%d" % a.getsockname()[1] in text
        ps = {row["title"]: row for row in ctl_json(srv.cfg_path, "ps")}
        for k in (1, 2):
            assert ps[f"natserver: rtp relay {k}/2"]["pid"] == relays[k]["pid"] > 0
    finally:
        a.close()
        b.close()
        ctl.close()
        srv.stop()


def test_control_socket_defaults_to_nathelpers_first_rtpproxy_sock(ns, tmp_path):
    """The seed's modparam("nathelper", "rtpproxy_sock", "unix:...") works unchanged:
    without rtp_control_sock the relays serve its first entry."""
    path = tmp_path / "seed-rtpproxy.sock"
    cfg, _ = relay_cfg(tmp_path)
    cfg = cfg.replace(f'rtp_control_sock="unix:{tmp_path / "rtpproxy.sock"}"', "")
    cfg = cfg.replace('loadmodule "sl.so"',
                      'loadmodule "sl.so"\nloadmodule "nathelper.so"\n'
                      f'modparam("nathelper", "rtpproxy_sock", "unix:{path} udp:127.0.0.1:9=2")')
    srv = start_natserver(ns, cfg, tmp_path)
    ctl = Control(ns, f"unix:{path}")
    try:
        assert not (tmp_path / "rtpproxy.sock").exists()
        assert ctl("V") == "20040107"
        titles = [t for t in srv.children() if "rtp relay" in t]
        assert titles == [f"natserver: rtp relay 1/1 {PORT_MIN}-{PORT_MAX}"]
    finally:
        ctl.close()
        assert srv.stop() == 0
    assert not path.exists(), "the supervisor left the control socket behind"


def test_a_control_socket_served_by_someone_else_leaves_the_relays_off(ns, tmp_path):
    """Another rtpproxy already serves the socket: the SIP server still starts (its
    nathelper talks to that relay), without relay processes, and says why."""
    first, ctl = server(ns, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    cfg, _ = relay_cfg(other, control=ctl.spec)
    second = start_natserver(ns, cfg, other)
    try:
        assert not [t for t in second.children() if "rtp relay" in t]
        assert "built-in RTP relays not started" in second.log_text()
        assert ctl("V") == "20040107"                  # still the first server's relays
        assert ctl_json(second.cfg_path, "ps")
        assert second.stop() == 0
        assert ctl("V") == "20040107"                  # the second did not unlink it
    finally:
        second.stop()
        ctl.close()
        first.stop()
