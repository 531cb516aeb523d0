"""Fixtures for the generator's tests against real servers: Kamailio (Debian's 5.6 with
the seed-equivalent cfg) in a network namespace of the test's own - it forwards to
addresses read from messages - and a way to run the generator's command line there."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from loadtest.kamailio import Kamailio, available
from loadtest.scenarios.common import rule_users

ROOT = Path(__file__).resolve().parents[2]
# Kamailio's database knows other passwords for these two: user0001 calls, user0040
# answers, so register, call and mixed all meet a wrong password.
WRONG = {b"user0001", b"user0040"}
USERS = 40


def need_root_and_kamailio() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the server under test runs in its own network namespace")
    reason = available()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def kamailio():
    need_root_and_kamailio()
    from tests.helpers.server import Netns
    ns = Netns("ltk")
    users = [(u, b"wrong-" + p if u in WRONG else p) for u, p in rule_users(USERS)]
    kam = Kamailio(users, netns=ns.name, children=2)
    try:
        kam.start()
        yield kam
    finally:
        kam.stop()
        ns.destroy()


def run_generator(server: Any, tmp_path: Path, *args: str, expect_exit: int | None = None) -> dict[str, Any]:
    """``python -m loadtest ARGS`` inside the server's namespace; its --json document."""
    out = tmp_path / f"run-{os.urandom(4).hex()}.json"
    cmd = ["ip", "netns", "exec", server.netns, sys.executable, "-m", "loadtest", *args,
           "-t", f"{server.host}:{server.port}", "--json", str(out), "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if expect_exit is not None:
        assert done.returncode == expect_exit, done.stdout + done.stderr
    assert out.exists(), done.stdout + done.stderr
    return orjson.loads(out.read_bytes())


def settled(server: Any, quiet: float = 0.6, limit: float = 5.0) -> dict[str, int]:
    """The server's counters once they stop moving: natserver's workers publish theirs
    on their next loop iteration, a moment after the last packet."""
    deadline = time.monotonic() + limit
    last = server.counters()
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = server.counters()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


@pytest.fixture(scope="module")
def natserver():
    """natserver from conf/natserver.cfg (children=2) in its own namespace; ``.users_ready``
    tells whether ``natserverctl add`` could provision the users."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the server under test runs in its own network namespace")
    from loadtest.compare import NatserverProc, NotReady
    from tests.helpers.server import Netns
    ns = Netns("ltn")
    users = [(u, b"wrong-" + p if u in WRONG else p) for u, p in rule_users(USERS)]
    srv = NatserverProc(users, children=2, netns=ns.name)
    # These tests match the generator's counters with the server's exactly; on a busy
    # test machine a backlog could make the server shed a REGISTER (503), which
    # tests/process/test_load_shedding.py covers on its own.
    srv.cfg_text = "load_shed=0\n" + srv.cfg_text
    srv.users_ready = False
    srv.not_ready = ""
    try:
        try:
            srv.start()
        except NotReady as exc:
            pytest.skip(f"natserver cannot run: {exc}")
        try:
            srv.provision()
            srv.users_ready = True
        except NotReady as exc:
            srv.not_ready = str(exc)
        yield srv
    finally:
        srv.stop()
        ns.destroy()
