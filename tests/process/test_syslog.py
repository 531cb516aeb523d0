"""log_stderror=no: the server logs to syslog (a test socket stands in for /dev/log),
with the cfg's facility and real priorities; SIGHUP reopens the target."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.helpers.procs import NatServer, Netns, SyslogSink, cfg_text, need_root

LOCAL3 = 19
NOTICE, INFO, ERR = 5, 6, 3


@pytest.fixture
def ns():
    need_root()
    netns = Netns("nsl")
    yield netns
    netns.destroy()


def syslog_cfg(sock: Path) -> str:
    return cfg_text(children=2, log_stderror="no",
                    extra=f'log_facility=LOG_LOCAL3\nsyslog_socket="{sock}"')


def test_startup_line_arrives_on_the_syslog_socket(ns, tmp_path):
    sink = SyslogSink(tmp_path / "log.sock")
    srv = NatServer(ns, syslog_cfg(sink.path), tmp_path, args=("-D",))
    try:
        prio, text = sink.wait(r"natserver listening on udp:127\.0\.0\.1:\d+")
        assert prio == LOCAL3 * 8 + NOTICE
        assert re.match(rf"natserver\[{srv.pid}\]: supervisor NOTICE ", text), text
        # nothing went to stderr: the log target is syslog
        assert not any("listening on" in line for line in srv.lines)
        # a child's lines carry its own name (the worker's shutdown on stop, below)
        os.kill(srv.children()["natserver: sip worker 1/2"], signal.SIGKILL)
        prio, text = sink.wait(r"sip worker 1/2 \(pid \d+\) killed by SIGKILL")
        assert prio == LOCAL3 * 8 + ERR
    finally:
        assert srv.stop() == 0
        sink.wait("natserver stopped")
        sink.close()


def test_sighup_reopens_a_replaced_syslog_socket(ns, tmp_path):
    path = tmp_path / "log.sock"
    sink = SyslogSink(path)
    srv = NatServer(ns, syslog_cfg(path), tmp_path, args=("-D",))
    try:
        sink.wait("listening on")
        # syslogd restarted: a new socket at the same path
        sink.close()
        os.unlink(path)
        sink = SyslogSink(path)
        srv.signal(signal.SIGHUP)
        prio, text = sink.wait("log targets reopened")
        assert prio == LOCAL3 * 8 + NOTICE
    finally:
        srv.stop()
        sink.close()


def test_missing_syslog_socket_falls_back_to_stderr(ns, tmp_path):
    srv = NatServer(ns, syslog_cfg(tmp_path / "absent.sock"), tmp_path, args=("-D",))
    try:
        srv.wait_ready()
        assert "syslog socket" in srv.log_text() and "logging to stderr" in srv.log_text()
    finally:
        srv.stop()
