"""natserver-rtpproxy: the relay processes alone (natserver/rtpproxy_cli.py), driven like
Kamailio's rtpproxy module or a remote natserver would."""

from __future__ import annotations

import os
import signal
import socket
import sys

import pytest

from tests.helpers.relayproc import Control, Proc, exchange, port_of
from tests.helpers.server import Netns, need_root


@pytest.fixture
def ns():
    need_root()
    n = Netns("nss")
    yield n
    n.destroy()


def start(ns, tmp_path, control: str, *extra: str) -> Proc:
    p = Proc(ns, [sys.executable, "-m", "natserver.rtpproxy_cli", "-l", "127.0.0.1", "-s", control,
                  "-m", "31000", "-M", "31199", "-F", *extra], tmp_path, r"ready: control")
    p.wait_ready()
    return p


@pytest.mark.parametrize("kind", ["udp", "unix"])
def test_standalone_relay_answers_v_and_relays_a_call(ns, tmp_path, kind):
    spec = "udp:127.0.0.1:7722" if kind == "udp" else f"unix:{tmp_path / 'rtpp.sock'}"
    p = start(ns, tmp_path, spec, "-n", "2", "-t", "5")
    ctl = Control(ns, spec)
    a, b = ns.socket(), ns.socket()
    try:
        titles = sorted(t for t in p.children() if "rtp relay" in t)
        assert titles == ["natserver: rtp relay 1/2 31000-31099",
                          "natserver: rtp relay 2/2 31100-31199"]
        assert ctl("V") == "20040107"
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        reply = ctl(f"U sa-1 127.0.0.1 {pa} ft")
        assert reply.split()[1:] == ["127.0.0.1"]           # -l is advertised
        to_b = port_of(reply)
        to_a = port_of(ctl(f"L sa-1 127.0.0.1 {pb} ft tt"))
        assert 31000 <= min(to_a, to_b) and max(to_a, to_b) <= 31199
        assert exchange(a, to_a, b, to_b, count=10) == (10, 10)
        assert ctl("D sa-1 ft tt") == "0"
        assert exchange(a, to_a, b, to_b, count=3) == (0, 0)
    finally:
        a.close()
        b.close()
        ctl.close()
        assert p.stop() == 0
    if kind == "unix":
        assert not os.path.exists(spec[5:]), "the control socket was left behind"


def test_unix_control_one_bare_command_per_read_and_several_per_connection(ns, tmp_path):
    """Kamailio writes one command without a newline and waits for the answer; other
    clients keep the stream open and send newline-ended commands until EOF."""
    path = tmp_path / "rtpp.sock"
    p = start(ns, tmp_path, f"unix:{path}")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(path))
            s.sendall(b"U k-1 127.0.0.1 4000 ft")          # no newline
            assert port_of(s.recv(100).decode())
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(path))
            s.sendall(b"V\n")
            assert s.recv(100) == b"20040107\n"
            s.sendall(b"VF 20050322\nQ k-1 ft\n")
            buf = b""
            while buf.count(b"\n") < 2:
                buf += s.recv(100)
            feature, query = buf.split(b"\n")[:2]
            assert feature == b"1"
            ttl, *counters = query.split()                   # ttl, then no packets yet
            assert 0 < int(ttl) <= 60 and counters == [b"0"] * 4
            s.sendall(b"D k-1 ft\n")
            assert s.recv(100) == b"0\n"
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b""                            # closed at EOF
    finally:
        p.stop()


def test_a_second_instance_on_the_same_unix_socket_refuses_to_start(ns, tmp_path):
    path = tmp_path / "rtpp.sock"
    p = start(ns, tmp_path, f"unix:{path}")
    try:
        q = Proc(ns, [sys.executable, "-m", "natserver.rtpproxy_cli", "-l", "127.0.0.1", "-s",
                      f"unix:{path}", "-m", "32000", "-M", "32099", "-F"], tmp_path, r"ready")
        assert q.proc.wait(15) == 1
        q.stop()
        assert "in use" in q.log_text()
    finally:
        p.stop()


def test_kill9_of_a_standalone_relay_is_respawned(ns, tmp_path):
    p = start(ns, tmp_path, "udp:127.0.0.1:7722")
    ctl = Control(ns, "udp:127.0.0.1:7722")
    a, b = ns.socket(), ns.socket()
    try:
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        to_b = port_of(ctl(f"U r-1 127.0.0.1 {pa} ft"))
        to_a = port_of(ctl(f"L r-1 127.0.0.1 {pb} ft tt"))
        assert exchange(a, to_a, b, to_b, count=3) == (3, 3)
        title = "natserver: rtp relay 1/1 31000-31199"
        old = p.wait_child(title)
        os.kill(old, signal.SIGKILL)
        p.wait_child(title, not_pid=old, timeout=3)
        got = (0, 0)
        for _ in range(20):           # until the respawned relay has rebound the ports
            got = exchange(a, to_a, b, to_b, count=2)
            if got == (2, 2):
                break
        assert got == (2, 2)
    finally:
        a.close()
        b.close()
        ctl.close()
        p.stop()


def test_daemon_mode_returns_when_ready_and_stops_on_sigterm(ns, tmp_path):
    """Without -F it detaches; the command returns 0 once the relays run (the start-up
    pipe is not held by the relay children), and SIGTERM stops everything."""
    import subprocess
    import time

    from tests.helpers.relayproc import ENV
    pidfile = tmp_path / "rtpp.pid"
    path = tmp_path / "rtpp.sock"
    done = subprocess.run(ns.cmd(sys.executable, "-m", "natserver.rtpproxy_cli", "-l", "127.0.0.1",
                                 "-s", f"unix:{path}", "-m", "31000", "-M", "31099",
                                 "-p", str(pidfile)),
                          env=ENV, timeout=20, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    pid = int(pidfile.read_text())
    try:
        assert Control(ns, f"unix:{path}")("V") == "20040107"
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while (path.exists() or pidfile.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not path.exists() and not pidfile.exists()
