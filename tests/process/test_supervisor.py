"""The process model with the real server: slots and titles, load spread over workers,
respawn after kill -9, heartbeat aborts, crash-loop backoff, start-up failures,
graceful stop, parent death (issue 3 acceptance)."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from natserver.workers.supervisor import (
    BACKOFF_MAX, HEALTHY_AFTER, TRANSITIONS, Backoff, Event, Slot, SlotState, describe_status)
from natserver.context import Proc
from tests.helpers.procs import NatServer, Netns, cfg_text, need_root, wait_gone
from tests.helpers.sipclient import Endpoint, request

PROBE = 'loadmodule "probe.so"'


# ---- the pure parts (no processes) ------------------------------------------------

def test_backoff_doubles_and_resets_after_a_healthy_minute():
    b = Backoff()
    delays = [b.next_delay(0.5) for _ in range(8)]
    assert delays == [0, 1, 2, 4, 8, 16, BACKOFF_MAX, BACKOFF_MAX]
    assert b.next_delay(HEALTHY_AFTER) == 0  # lived a minute: first failure again
    assert b.next_delay(1) == 1


def test_slot_transitions_are_a_table():
    slot = Slot(Proc("timer", 1, 1, 3))
    for event, state in ((Event.SPAWN, SlotState.STARTING), (Event.BEAT, SlotState.RUNNING),
                         (Event.STALE, SlotState.ABORTING), (Event.EXIT, SlotState.WAITING)):
        assert slot.step(event) == state
    with pytest.raises(RuntimeError):
        slot.step(Event.BEAT)  # a WAITING slot has no process to beat
    # every live state can exit, and an exit always leads back to WAITING
    for state in (SlotState.STARTING, SlotState.RUNNING, SlotState.ABORTING, SlotState.STOPPING):
        assert TRANSITIONS[(state, Event.EXIT)] == SlotState.WAITING


def test_describe_status():
    assert describe_status(9) == ("killed by SIGKILL", 9)          # raw wait status
    assert describe_status(1 << 8) == ("exited with code 1", 0)


# ---- fixtures ----------------------------------------------------------------------

@pytest.fixture
def ns():
    need_root()
    netns = Netns("nsv")
    yield netns
    netns.destroy()


def start(ns, tmp_path, *, children: int = 4, extra: str = "", modules: str = "",
          args: tuple[str, ...] = ("-D", "-E"), fifo: bool = True) -> NatServer:
    cfg = cfg_text(children=children, fifo=str(tmp_path / "fifo") if fifo else "",
                   extra=extra, modules=modules)
    return NatServer(ns, cfg, tmp_path, args=args)


@pytest.fixture
def server4(ns, tmp_path):
    srv = start(ns, tmp_path, children=4).wait_ready()
    yield srv
    srv.stop()


EXPECTED4 = {f"natserver: sip worker {i}/4" for i in range(1, 5)} | {
    "natserver: timer", "natserver: natping", "natserver: ctl"}


def options(ep: Endpoint, srv: NatServer) -> bytes:
    return request("OPTIONS", f"sip:{srv.host}:{srv.port}", src=ep.addr)


def answered(ep: Endpoint, srv: NatServer, timeout: float = 2.0) -> bool:
    ep.send(options(ep, srv), srv.addr)
    got = ep.recv(timeout)
    return got is not None and got[0].status == 200


class Stream:
    """OPTIONS from a few sockets every few ms, in a thread; counts the 200s."""

    def __init__(self, ns: Netns, srv: NatServer, sockets: int = 8) -> None:
        self.eps = [Endpoint(ns.socket()) for _ in range(sockets)]
        for ep in self.eps:
            ep.sock.setblocking(False)
        self.srv = srv
        self.ok = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        deadline = time.monotonic() + 30  # bounded, whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            for ep in self.eps:
                ep.sock.sendto(options(ep, self.srv), self.srv.addr)
                try:
                    while True:
                        data = ep.sock.recv(65535)
                        if data.startswith(b"SIP/2.0 200"):
                            self.ok += 1
                except BlockingIOError:
                    pass
            time.sleep(0.005)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for ep in self.eps:
            ep.close()


# ---- slots and titles --------------------------------------------------------------

def test_children_have_fixed_slots_and_titles(server4):
    assert set(server4.children()) == EXPECTED4
    assert " ".join(psutil.Process(server4.pid).cmdline()).strip() == "natserver: supervisor"
    # the slot layout the ctl process reports is the same
    rows = server4.ctl_json("ps")
    assert [r["title"] for r in rows] == ["natserver: supervisor"] + [
        f"natserver: sip worker {i}/4" for i in range(1, 5)] + [
        "natserver: timer", "natserver: natping", "natserver: ctl"]
    kids = server4.children()
    for row in rows[1:]:
        assert row["pid"] == kids[row["title"]]


@pytest.mark.parametrize("reuseport", ["shared", "per_worker"])
def test_options_from_50_sockets_are_spread_over_workers(ns, tmp_path, reuseport):
    server4 = start(ns, tmp_path, extra=f'reuseport="{reuseport}"').wait_ready()
    try:
        spread_over_workers(ns, server4)
    finally:
        server4.stop()


def spread_over_workers(ns, server4):
    eps = [Endpoint(ns.socket()) for _ in range(50)]
    try:
        for ep in eps:
            ep.send(options(ep, server4), server4.addr)
        assert all(ep.expect_status(200).status == 200 for ep in eps)
    finally:
        for ep in eps:
            ep.close()
    deadline = time.monotonic() + 3
    while True:
        rows = server4.ctl_json("stats", "requests")
        served = {r["proc"]: r["requests"] for r in rows if r["proc"].startswith("sip worker")}
        if sum(served.values()) >= 50 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sum(served.values()) == 50
    assert len([n for n in served.values() if n]) > 1, served


def wait_requests(srv: NatServer, total: int) -> dict[str, int]:
    deadline = time.monotonic() + 3
    while True:
        rows = srv.ctl_json("stats", "requests")
        counts = {r["proc"]: r["requests"] for r in rows}
        if sum(counts.values()) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def test_counters_of_a_killed_worker_are_kept_as_retired(ns, server4):
    eps = [Endpoint(ns.socket()) for _ in range(20)]
    try:
        for ep in eps:
            assert answered(ep, server4)
    finally:
        for ep in eps:
            ep.close()
    counts = wait_requests(server4, 20)
    busiest = max((p for p in counts if p.startswith("sip worker")), key=counts.get)
    title = f"natserver: {busiest}"
    old = server4.children()[title]
    os.kill(old, signal.SIGKILL)
    server4.wait_child(title, not_pid=old)
    after = wait_requests(server4, 20)
    assert after[busiest] == 0  # a fresh process, fresh counters
    assert after["retired"] == counts[busiest]
    assert sum(after.values()) == 20


# ---- respawn -----------------------------------------------------------------------

@pytest.mark.parametrize("reuseport,slot", [("per_worker", 1), ("per_worker", 3), ("shared", 2)])
def test_kill9_worker_under_load_is_respawned_and_answers_resume(ns, tmp_path, reuseport, slot):
    srv = start(ns, tmp_path, extra=f'reuseport="{reuseport}"').wait_ready()
    stream = Stream(ns, srv)
    try:
        time.sleep(0.3)
        assert stream.ok > 0
        title = f"natserver: sip worker {slot}/4"
        old = srv.children()[title]
        others = {t: p for t, p in srv.children().items() if t != title}
        os.kill(old, signal.SIGKILL)
        killed_at = time.monotonic()
        new = srv.wait_child(title, not_pid=old, timeout=1.0)
        assert time.monotonic() - killed_at < 1.0
        assert new != old
        srv.wait_log(rf"{title} \(pid {old}\) killed by SIGKILL - perhaps out of memory\?")
        before = stream.ok
        time.sleep(0.5)
        assert stream.ok > before  # the stream goes on being answered
        # every stream socket (whichever worker the kernel hashes it to) is answered
        stream.stop.set()
        stream.thread.join(5)
        for ep in stream.eps:
            ep.sock.setblocking(True)
            while ep.recv(0.05) is not None:
                pass
            assert answered(ep, srv), f"{ep.addr} not answered after the respawn"
        assert {t: p for t, p in srv.children().items() if t != title} == others
    finally:
        stream.close()
        srv.stop()


def test_kill9_helpers_are_respawned(server4):
    for title in ("natserver: timer", "natserver: natping", "natserver: ctl"):
        old = server4.children()[title]
        os.kill(old, signal.SIGKILL)
        server4.wait_child(title, not_pid=old, timeout=1.0)
    # the respawned ctl serves the same endpoints
    assert server4.ctl_json("version")["server"] == "natserver"
    assert set(server4.children()) == EXPECTED4


def test_stale_heartbeat_is_aborted_and_respawned(ns, tmp_path):
    srv = start(ns, tmp_path, children=2, extra="heartbeat_timeout=1").wait_ready()
    try:
        title = "natserver: sip worker 2/2"
        old = srv.children()[title]
        os.kill(old, signal.SIGSTOP)  # alive but silent: no heartbeat
        new = srv.wait_child(title, not_pid=old, timeout=4.0)
        assert new != old
        srv.wait_log(rf"{title} \(pid {old}\) sent no heartbeat for [0-9.]+ s: SIGABRT")
        # stopped processes ignore SIGABRT until continued: the second step kills it
        srv.wait_log(rf"{title} \(pid {old}\) did not leave after SIGABRT: SIGKILL")
        assert "perhaps out of memory" not in srv.log_text()
    finally:
        srv.stop()


def test_crash_loop_is_backed_off_and_recovers(ns, tmp_path):
    flag = tmp_path / "fail-timer"
    modparams = (f'{PROBE}\nmodparam("probe", "fail_kind", "timer")\n'
                 f'modparam("probe", "fail_flag", "{flag}")')
    srv = start(ns, tmp_path, children=2, modules=modparams).wait_ready()
    ep = Endpoint(ns.socket())
    try:
        workers = {t: p for t, p in srv.children().items() if "sip worker" in t}
        flag.write_text("on")
        os.kill(srv.children()["natserver: timer"], signal.SIGKILL)
        # immediate respawn fails, then 1 s, then 2 s: logged, not a fork bomb
        srv.wait_log(r"natserver: timer keeps failing \(2 times in a row\): respawning in 1 s",
                     timeout=3)
        srv.wait_log(r"natserver: timer keeps failing \(3 times in a row\): respawning in 2 s",
                     timeout=3)
        assert srv.log_text().count("probe: timer fails on purpose") <= 4
        assert answered(ep, srv)  # the rest keeps serving
        flag.unlink()
        pid = srv.wait_child("natserver: timer", timeout=5.0)
        time.sleep(0.3)
        assert srv.children().get("natserver: timer") == pid  # it stays up now
        assert {t: p for t, p in srv.children().items() if "sip worker" in t} == workers
        assert srv.alive()
    finally:
        ep.close()
        srv.stop()


def test_child_failing_before_its_first_heartbeat_halts_startup(ns, tmp_path):
    srv = start(ns, tmp_path, children=2,
                modules=f'{PROBE}\nmodparam("probe", "fail_kind", "natping")')
    assert srv.wait_exit(15) == 1
    assert "start-up failed: natserver: natping failed during start-up (exited with code 1)" \
        in srv.log_text()
    assert "listening on" not in srv.log_text()
    assert not ns_pids(ns)
    assert not (tmp_path / "fifo").exists()


def test_a_worker_dying_after_start_does_not_stop_the_server(server4):
    title = "natserver: sip worker 4/4"
    old = server4.children()[title]
    os.kill(old, signal.SIGTERM)  # an orderly exit is respawned like a crash
    server4.wait_child(title, not_pid=old, timeout=1.5)
    assert server4.alive()


# ---- stop, signals, parent death ---------------------------------------------------

def ns_pids(ns: Netns) -> list[int]:
    import subprocess
    out = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_stop_runs_shutdown_everywhere_and_exits_0(ns, tmp_path, sig):
    trace = tmp_path / "trace"
    srv = start(ns, tmp_path, children=2,
                modules=f'{PROBE}\nmodparam("probe", "trace", "{trace}")').wait_ready()
    kids = srv.children()
    srv.signal(sig)
    assert srv.wait_exit(15) == 0
    assert not wait_gone(list(kids.values()), 2)
    assert "natserver stopped" in srv.log_text()
    lines = trace.read_text().splitlines()
    stopped = {line.split(" ", 1)[1].rsplit(" ", 1)[0] for line in lines if line.startswith("shutdown")}
    assert stopped == {"sip worker", "timer", "natping", "ctl"}
    assert sum(1 for line in lines if line.startswith("shutdown sip worker")) == 2
    assert not (tmp_path / "fifo").exists()
    assert not (tmp_path / "fifo.sock").exists()


def test_sigquit_stops_fast(ns, tmp_path):
    srv = start(ns, tmp_path, children=2).wait_ready()
    kids = srv.children()
    srv.signal(signal.SIGQUIT)
    assert srv.wait_exit(5) == 0
    assert not wait_gone(list(kids.values()), 1)


def test_sighup_is_forwarded_and_logged(server4):
    server4.signal(signal.SIGHUP)
    server4.wait_log("log targets reopened")
    time.sleep(0.2)
    assert set(server4.children()) == EXPECTED4  # nobody died of SIGHUP
    assert server4.alive()


def test_children_leave_when_the_supervisor_is_killed(server4):
    kids = list(server4.children().values())
    os.kill(server4.pid, signal.SIGKILL)
    server4.wait_exit(5)
    assert not wait_gone(kids, 3)


def test_timer_and_natping_hooks_run_in_their_processes(ns, tmp_path):
    trace = tmp_path / "trace"
    srv = start(ns, tmp_path, children=1,
                modules=f'{PROBE}\nmodparam("probe", "trace", "{trace}")').wait_ready()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            lines = trace.read_text().splitlines() if trace.exists() else []
            if sum(1 for line in lines if line.startswith("timer")) >= 3 and \
                    sum(1 for line in lines if line.startswith("natping")) >= 3:
                break
            time.sleep(0.05)
        kids = srv.children()
        assert {f"timer {kids['natserver: timer']}", f"natping {kids['natserver: natping']}"} \
            <= set(lines)
    finally:
        srv.stop()


# ---- start-up errors -----------------------------------------------------------------

def test_cfg_error_exits_with_position_and_starts_nothing(ns, tmp_path):
    bad = cfg_text(children=2, fifo=str(tmp_path / "fifo")).replace(
        'sl_send_reply("404", "Not Here");', 'sl_send_reply("404", "Not Here")\n  nonsense(;')
    srv = NatServer(ns, bad, tmp_path)
    assert srv.wait_exit(10) == 1
    text = srv.log_text()
    assert f"{srv.cfg_path}:" in text
    assert any(line.startswith(f"{srv.cfg_path}:") and line.split(":")[1].isdigit()
               and line.split(":")[2].isdigit() for line in srv.lines), text
    assert not ns_pids(ns)
    assert not (tmp_path / "fifo").exists()


def test_check_flag_compiles_and_starts_nothing(ns, tmp_path):
    srv = start(ns, tmp_path, args=("-c",))
    assert srv.wait_exit(10) == 0
    assert not (tmp_path / "fifo").exists()
    assert not ns_pids(ns)


@pytest.mark.parametrize("reuseport", ["shared", "per_worker"])
def test_second_server_on_the_same_port_is_refused(ns, tmp_path, reuseport):
    """Even with SO_REUSEPORT, which would let the second one join the first's group."""
    mode = f'reuseport="{reuseport}"'
    first = start(ns, tmp_path, children=2, extra=mode).wait_ready()
    try:
        other = tmp_path / "other"
        other.mkdir()
        cfg = cfg_text(children=2, extra=mode).replace("port=0", f"port={first.port}")
        second = NatServer(ns, cfg, other)
        assert second.wait_exit(10) == 1
        assert f"cannot bind udp:127.0.0.1:{first.port}: Address already in use" \
            in second.log_text()
        assert len(first.children()) == 5
    finally:
        first.stop()
