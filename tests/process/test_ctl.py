"""The ctl process and natserverctl against the real server: SER's FIFO format
written by hand (as serctl did), the JSON socket, human and --json output, exit codes."""

from __future__ import annotations

import os
import re
import select
import time

import pytest

from tests.helpers.procs import NatServer, Netns, cfg_text, ctl, need_root
from tests.helpers.sipclient import Endpoint, request


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_root()
    ns = Netns("nsc")
    tmp = tmp_path_factory.mktemp("ctl")
    cfg = cfg_text(children=2, fifo=str(tmp / "natserver_fifo"), modules='loadmodule "probe.so"')
    srv = NatServer(ns, cfg, tmp)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        ns.destroy()


def fifo_request(fifo: str, text: str, reply_path: str, timeout: float = 5.0) -> str:
    """Write a raw request into the server's FIFO; read what arrives on ``reply_path``."""
    os.mkfifo(reply_path, 0o600)
    try:
        rfd = os.open(reply_path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            with open(fifo, "w") as fh:
                fh.write(text)
            chunks: list[bytes] = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                select.select([rfd], [], [], 0.1)
                data = os.read(rfd, 65536)
                if data:
                    chunks.append(data)
                elif chunks:
                    break
                else:
                    time.sleep(0.01)
            return b"".join(chunks).decode()
        finally:
            os.close(rfd)
    finally:
        os.unlink(reply_path)


def fifo_of(server: NatServer) -> str:
    return str(server.tmp / "natserver_fifo")


# ---- SER's FIFO format, written by hand ----------------------------------------------

def test_raw_fifo_ps_with_a_reply_fifo_next_to_the_fifo(server):
    name = f"ser_receiver_{os.getpid()}"
    reply = fifo_request(fifo_of(server), f":ps:{name}\n\n", str(server.tmp / name))
    lines = reply.splitlines()
    assert lines[0] == "200 ok"
    assert lines[1].split()[:3] == ["INDEX", "PID", "TITLE"]
    assert any("natserver: sip worker 2/2" in line for line in lines)
    assert any(line.split()[1] == str(server.pid) for line in lines[2:])


def test_raw_fifo_reply_in_tmp_like_serctl(server):
    name = f"ser_receiver_{os.getpid()}_{time.monotonic_ns()}"
    reply = fifo_request(fifo_of(server), f":uptime:{name}\n\n", f"/tmp/{name}")
    assert reply.startswith("200 ok\n")
    assert re.search(r"^uptime\s+\d+$", reply, re.M)


def test_raw_fifo_arguments_absolute_reply_path_and_errors(server):
    path = str(server.tmp / "abs_reply")
    reply = fifo_request(fifo_of(server), f":probe_echo:{path}\nfirst arg\nsecond\n\n", path)
    assert reply.startswith("200 ok\n")
    assert "first arg,second" in reply
    reply = fifo_request(fifo_of(server), f":nope:{path}\n\n", path)
    assert reply == "500 command 'nope' not available\n"
    reply = fifo_request(fifo_of(server), f":probe_echo:{path}\nfail\n\n", path)
    assert reply == "400 asked to fail\n"


def test_raw_fifo_two_requests_in_one_write(server):
    a, b = str(server.tmp / "ra"), str(server.tmp / "rb")
    os.mkfifo(b, 0o600)
    try:
        rb = os.open(b, os.O_RDONLY | os.O_NONBLOCK)
        try:
            first = fifo_request(fifo_of(server), f":version:{a}\n\n:which:{b}\n\n", a)
            assert first.startswith("200 ok\n") and "natserver" in first
            deadline = time.monotonic() + 5
            second = b""
            while time.monotonic() < deadline and not second.endswith(b"\n"):
                select.select([rb], [], [], 0.1)
                second += os.read(rb, 65536)
            assert second.startswith(b"200 ok\n") and b"probe_echo" in second
        finally:
            os.close(rb)
    finally:
        os.unlink(b)


# ---- natserverctl ----------------------------------------------------------------------

def test_ctl_ps_human_and_json(server):
    human = server.ctl("ps").stdout.splitlines()
    assert human[0].split() == ["INDEX", "PID", "TITLE", "UPTIME", "CPU_S", "CPU_PCT", "RSS_MB",
                                "HEARTBEAT_AGE"]
    assert len(human) == 1 + 1 + 2 + 3
    rows = server.ctl_json("ps")
    assert [r["title"] for r in rows][-3:] == ["natserver: timer", "natserver: natping",
                                               "natserver: ctl"]
    for row in rows:
        assert row["pid"] > 0 and row["uptime"] >= 0 and row["rss_mb"] > 1
        assert row["cpu_s"] >= 0
    assert all(r["heartbeat_age"] < 2 for r in rows[1:])


def test_ctl_uptime_version_which(server):
    up = server.ctl_json("uptime")
    assert set(up) == {"now", "up_since", "uptime"} and up["uptime"] >= 0
    version = server.ctl_json("version")
    from natserver import __version__
    assert version["version"] == __version__
    assert version["cfg"] == str(server.cfg_path)
    which = {r["command"] for r in server.ctl_json("which")}
    assert {"ps", "stats", "uptime", "version", "which", "probe_echo"} <= which
    assert "probe_echo" in server.ctl("which").stdout


def test_ctl_stats_counts_per_worker(server):
    eps = [Endpoint(server.ns.socket()) for _ in range(6)]
    try:
        for ep in eps:
            ep.send(request("OPTIONS", f"sip:{server.host}:{server.port}", src=ep.addr),
                    server.addr)
            ep.expect_status(200)
    finally:
        for ep in eps:
            ep.close()
    deadline = time.monotonic() + 3
    while True:  # counters reach shared memory within a flush interval
        rows = server.ctl_json("stats")
        workers = [r for r in rows if r["proc"].startswith("sip worker")]
        if sum(r["requests"] for r in workers) >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(workers) == 2
    assert sum(r["requests"] for r in workers) >= 6
    assert sum(r["sl_replies"] for r in workers) >= 6
    text = server.ctl("stats").stdout
    assert text.splitlines()[0].split()[:3] == ["PROC", "PID", "REQUESTS"]
    only = server.ctl_json("stats", "requests")
    assert set(only[0]) == {"proc", "pid", "requests"}


def test_ctl_errors_and_exit_codes(server, tmp_path):
    bad = server.ctl("stats", "no_such_counter", check=False)
    assert bad.returncode == 1 and "unknown counter" in bad.stderr
    missing = server.ctl("nope", check=False)
    assert missing.returncode == 1 and "500 command 'nope' not available" in missing.stderr
    as_json = server.ctl("nope", json=True, check=False)
    assert as_json.returncode == 1 and '"status":500' in as_json.stdout
    assert ctl("-f", str(server.cfg_path), check=False).returncode == 2
    gone = ctl("--fifo", str(tmp_path / "no_fifo"), "ps", check=False)
    assert gone.returncode == 3 and "not reachable" in gone.stderr
    nocfg = ctl("-f", str(tmp_path / "missing.cfg"), "ps", check=False)
    assert nocfg.returncode == 3


def test_ctl_module_rpc_rows(server):
    assert server.ctl_json("probe_echo", "a", "b c")["args"] == ["a", "b c"]


def test_ctl_falls_back_to_the_fifo(server, tmp_path):
    """--fifo alone: the socket next to it is used; a FIFO without one is spoken SER-style."""
    fifo = fifo_of(server)
    assert ctl("--fifo", fifo, "--json", "version").returncode == 0
    # a socket path that does not exist: natserverctl uses the FIFO and prints its text
    done = ctl("--fifo", fifo, "--socket", str(tmp_path / "none.sock"), "ps")
    assert "natserver: ctl" in done.stdout
    as_json = ctl("--fifo", fifo, "--socket", str(tmp_path / "none.sock"), "--json", "uptime")
    assert '"text"' in as_json.stdout and "uptime" in as_json.stdout
