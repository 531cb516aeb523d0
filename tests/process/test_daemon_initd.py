"""Daemon mode (fork=yes), the pidfile, and the LSB init script, run as root with a
temporary cfg, pidfile and defaults file; every server runs in its own netns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.procs import (
    ENV, NatServer, Netns, SyslogSink, cfg_text, need_root, title_of, wait_gone)
from tests.helpers.server import ROOT

INITD = ROOT / "init.d" / "natserver"


@pytest.fixture
def ns():
    need_root()
    netns = Netns("nsd")
    yield netns
    netns.destroy()


def daemon_cfg(tmp: Path, **kw: str) -> Path:
    cfg = tmp / "natserver.cfg"
    cfg.write_text(cfg_text(children=2, fork="yes", log_stderror="no",
                            extra=f'syslog_socket="{tmp / "log.sock"}"\n' + kw.get("extra", "")))
    return cfg


def natserver(ns: Netns, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(ns.cmd(sys.executable, "-m", "natserver", *args), capture_output=True,
                          text=True, env=ENV, timeout=30)


def pid_in(path: Path) -> int:
    return int(path.read_text().strip())


def children_titles(pid: int) -> set[str]:
    return {title_of(p.pid) for p in psutil.Process(pid).children()}


def stop_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    assert not wait_gone([pid], 15)


# ---- natserver itself ----------------------------------------------------------------

def test_daemon_writes_pidfile_and_refuses_a_second_start(ns, tmp_path):
    sink = SyslogSink(tmp_path / "log.sock")
    cfg = daemon_cfg(tmp_path)
    pidfile = tmp_path / "natserver.pid"
    started = time.monotonic()
    first = natserver(ns, "-f", str(cfg), "-P", str(pidfile))
    assert first.returncode == 0, first.stderr
    assert time.monotonic() - started < 20
    pid = pid_in(pidfile)
    try:
        sink.wait("natserver listening on udp:")  # the daemon returned after it served
        proc = psutil.Process(pid)
        assert title_of(pid) == "natserver: supervisor"
        assert proc.cwd() == "/"
        assert os.getsid(pid) != os.getsid(0)
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/fd/2") == "/dev/null"
        assert {"natserver: sip worker 1/2", "natserver: sip worker 2/2", "natserver: timer",
                "natserver: natping"} <= children_titles(pid)
        second = natserver(ns, "-f", str(cfg), "-P", str(pidfile))
        assert second.returncode == 1
        assert f"already running (pid {pid}" in second.stderr
        assert pid_in(pidfile) == pid
    finally:
        stop_pid(pid)
        sink.close()
    assert not pidfile.exists()


def test_stale_pidfile_is_replaced(ns, tmp_path):
    sink = SyslogSink(tmp_path / "log.sock")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    pidfile = tmp_path / "natserver.pid"
    pidfile.write_text(f"{gone.pid}\n")
    cfg = daemon_cfg(tmp_path, extra=f'pid_file="{pidfile}"\n')  # from the cfg this time
    done = natserver(ns, "-f", str(cfg))
    assert done.returncode == 0, done.stderr
    pid = pid_in(pidfile)
    try:
        assert pid != gone.pid and title_of(pid) == "natserver: supervisor"
        sink.wait("stale pidfile")
    finally:
        stop_pid(pid)
        sink.close()


def test_daemon_start_failure_is_reported_by_the_command(ns, tmp_path):
    busy = ns.socket(bind=("127.0.0.1", 0))
    port = busy.getsockname()[1]
    cfg = tmp_path / "natserver.cfg"
    cfg.write_text(cfg_text(children=2, fork="yes", log_stderror="no",
                            extra=f'syslog_socket="{tmp_path / "none.sock"}"').replace(
        "port=0", f"port={port}"))
    pidfile = tmp_path / "natserver.pid"
    done = natserver(ns, "-f", str(cfg), "-P", str(pidfile))
    busy.close()
    assert done.returncode == 1
    assert f"cannot bind udp:127.0.0.1:{port}" in done.stderr
    assert not pidfile.exists()


def test_fork_no_stays_in_the_foreground_with_children(ns, tmp_path):
    srv = NatServer(ns, cfg_text(children=2, fork="no", log_stderror="yes"), tmp_path, args=())
    try:
        srv.wait_ready()
        assert srv.alive()  # not detached: the process we started is the supervisor
        assert title_of(srv.pid) == "natserver: supervisor"
        assert len(srv.children()) == 2 + 3
    finally:
        assert srv.stop() == 0


# ---- init.d ----------------------------------------------------------------------------

def initd(defaults: Path, action: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NATSERVER_DEFAULTS=str(defaults))
    return subprocess.run(["sh", str(INITD), action], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.fixture
def initd_setup(ns, tmp_path):
    sink = SyslogSink(tmp_path / "log.sock")
    cfg = daemon_cfg(tmp_path)
    wrapper = tmp_path / "natserver-in-netns"
    wrapper.write_text(f"#!/bin/sh\nexport PYTHONPATH={ENV['PYTHONPATH']}\n"
                       f"exec ip netns exec {ns.name} {sys.executable} -m natserver \"$@\"\n")
    wrapper.chmod(0o755)
    pidfile = tmp_path / "natserver.pid"
    defaults = tmp_path / "defaults"
    defaults.write_text(f'DAEMON="{wrapper}"\nCFGFILE="{cfg}"\nPIDFILE="{pidfile}"\n'
                        f"STOP_TIMEOUT=10\n")
    yield defaults, pidfile, sink
    sink.close()
    if pidfile.exists():
        try:
            os.kill(pid_in(pidfile), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def test_initd_start_status_stop_restart(initd_setup):
    defaults, pidfile, sink = initd_setup
    assert initd(defaults, "status").returncode == 3
    start = initd(defaults, "start")
    assert start.returncode == 0, start.stdout + start.stderr
    pid = pid_in(pidfile)
    assert title_of(pid) == "natserver: supervisor"
    status = initd(defaults, "status")
    assert status.returncode == 0 and f"running (pid {pid})" in status.stdout
    again = initd(defaults, "start")
    assert again.returncode == 0 and "already running" in again.stdout
    assert pid_in(pidfile) == pid
    assert len([p for p in psutil.process_iter() if title_of(p.pid) == "natserver: supervisor"
                and p.pid == pid]) == 1
    reload = initd(defaults, "reload")
    assert reload.returncode == 0
    sink.wait("log targets reopened")
    kids = [p.pid for p in psutil.Process(pid).children()]
    stop = initd(defaults, "stop")
    assert stop.returncode == 0
    assert not wait_gone([pid, *kids], 3)
    assert not pidfile.exists()
    assert initd(defaults, "status").returncode == 3
    assert initd(defaults, "stop").returncode == 0  # stopping a stopped service is fine
    assert initd(defaults, "start").returncode == 0
    first = pid_in(pidfile)
    restart = initd(defaults, "restart")
    assert restart.returncode == 0, restart.stdout + restart.stderr
    second = pid_in(pidfile)
    assert second != first and not wait_gone([first], 0)
    assert initd(defaults, "status").returncode == 0
    assert initd(defaults, "stop").returncode == 0


def test_initd_dead_server_with_pidfile_is_status_1(initd_setup):
    defaults, pidfile, _ = initd_setup
    assert initd(defaults, "start").returncode == 0
    pid = pid_in(pidfile)
    kids = [p.pid for p in psutil.Process(pid).children()]
    os.kill(pid, signal.SIGKILL)
    assert not wait_gone([pid, *kids], 5)  # the children follow their supervisor
    status = initd(defaults, "status")
    assert status.returncode == 1 and "dead but pidfile" in status.stdout
    assert initd(defaults, "stop").returncode == 0
    assert not pidfile.exists()
    assert initd(defaults, "status").returncode == 3


def test_initd_usage_and_missing_daemon(initd_setup, tmp_path):
    defaults, _, _ = initd_setup
    assert initd(defaults, "bogus").returncode == 2
    other = tmp_path / "defaults2"
    other.write_text(defaults.read_text() + f'DAEMON="{tmp_path / "nothing"}"\n')
    assert initd(other, "start").returncode == 5
