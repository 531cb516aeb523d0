"""Relay processes that share sessions and survive kill -9 (natserver/workers/rtp_relay.py).

- rtp_relays=2: a session created by one relay and answered (L) on the other still
  flows - the other relay changes shared memory and notifies the owner. In-process with
  two Relay objects over one real shm table (deterministic), and end to end.
- kill -9 of the relay during a flowing stream: the supervisor respawns the slot, the
  new process rebinds the session's ports from shared memory, media resumes in < 1 s.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time

import pytest

from natserver.rtp.store import TABLE_NAME, table_spec
from natserver.shm import Tables
from natserver.workers.rtp_relay import Relay, open_plane
from tests.helpers.relayproc import (
    Control,
    drain,
    exchange,
    port_of,
    relay_cfg,
    rtp,
    seq_of,
    start_natserver,
)
from tests.helpers.server import Netns, need_root, run_in_netns


@pytest.fixture
def ns():
    need_root()
    n = Netns("nsc")
    yield n
    n.destroy()


# ---- two relays in this process, one shm table ---------------------------------------

@pytest.fixture
def pair():
    tables = Tables.build({TABLE_NAME: table_spec(256)})
    base = 20000 + 2 * random.randrange(0, 4000)          # host netns: avoid fixed ports
    plane = open_plane(count=2, port_min=base, port_max=base + 199, ip="127.0.0.1",
                       advertise="127.0.0.1", timeout=60, latch_mode="strict", control="")
    relays = [Relay(plane, k, tables[TABLE_NAME]) for k in (1, 2)]
    for r in relays:
        r.start()
    yield relays
    for r in relays:
        r.close()
    plane.close(unlink=True)
    tables.close()


def command(relay: Relay, text: str) -> str:
    reply, out = relay.server.stream(text.encode(), relay.clock())
    relay.after(out)
    return reply.decode().strip()


def pump(relays, rounds=5):
    for _ in range(rounds):
        for r in relays:
            r.step(0.01)


def test_lookup_on_the_other_relay_reaches_the_owner(pair):
    import socket
    one, two = pair
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    try:
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        to_b = port_of(command(one, f"U x1 127.0.0.1 {pa} ft"))
        lo, hi = one.plane.slices[0]
        assert lo <= to_b <= hi                        # relay 1's slice: it owns the session
        to_a = port_of(command(two, f"L x1 127.0.0.1 {pb} ft tt"))
        assert lo <= to_a <= hi
        assert two.engine.sessions() == []             # relay 2 bound nothing
        pump(pair)                                     # relay 1 reads the notification
        bound = one.engine.sessions()[0]
        assert bound.sides[1].sig_port == pb           # the callee's address arrived
        for i in range(5):
            a.sendto(rtp(i), ("127.0.0.1", to_a))
            b.sendto(rtp(100 + i), ("127.0.0.1", to_b))
            pump(pair, 2)
        assert drain(b, 0.1) == 5 and drain(a, 0.1) == 5
        # D on relay 2 frees relay 1's ports
        assert command(two, "D x1 ft tt") == "0"
        pump(pair)
        assert one.engine.sessions() == [] and one.ports.table.in_use == 0
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", to_a))
        probe.close()
    finally:
        a.close()
        b.close()


def test_new_port_on_the_other_relay_keeps_the_port(pair):
    one, two = pair
    to_b = port_of(command(one, "U x2 127.0.0.1 4000 ft"))
    to_a = port_of(command(one, "L x2 127.0.0.1 4002 ft tt"))
    assert port_of(command(two, "LN x2 127.0.0.1 4002 ft tt")) == to_a
    assert port_of(command(two, "UN x2 127.0.0.1 4000 ft tt")) == to_b
    # on the owner, N does take a new port
    assert port_of(command(one, "UN x2 127.0.0.1 4000 ft tt")) != to_b


def test_a_relay_that_restarts_rebinds_its_sessions(pair):
    import socket
    one, two = pair
    to_b = port_of(command(one, "U x3 127.0.0.1 4000 ft"))
    one.engine.close()                                  # "killed": sockets gone
    fresh = Relay(one.plane, 1, one.store.table)
    fresh.start()
    try:
        assert [s.sides[1].port for s in fresh.engine.sessions()] == [to_b]
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(OSError):
            probe.bind(("127.0.0.1", to_b))
        probe.close()
    finally:
        fresh.close()
        one.engine = fresh.engine.__class__("127.0.0.1")   # closed again by the fixture


# ---- processes ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["udp", "unix"])
def test_two_relay_processes_share_sessions(ns, tmp_path, kind):
    control = "udp:127.0.0.1:7722" if kind == "udp" else f"unix:{tmp_path / 'rtp.sock'}"
    cfg, spec = relay_cfg(tmp_path, relays=2, control=control)
    srv = start_natserver(ns, cfg, tmp_path)
    ctl = Control(ns, spec)
    socks = []
    try:
        crossed: list[str] = []
        for i in range(40):     # until one call had U and L on different relays
            a, b = ns.socket(), ns.socket()
            socks += [a, b]
            pa, pb = a.getsockname()[1], b.getsockname()[1]
            to_b = port_of(ctl(f"U multi-{i} 127.0.0.1 {pa} ft"))
            to_a = port_of(ctl(f"L multi-{i} 127.0.0.1 {pb} ft tt"))
            assert exchange(a, to_a, b, to_b, count=3) == (3, 3), f"call {i}"
            crossed = re.findall(r"rtp (multi-\d+): session of relay \d changed by relay \d",
                                 srv.log_text())
            if crossed and i >= 2:
                break
        print(f"{len(crossed)} of {i + 1} calls had U and L on different relays")
        assert crossed, "every L reached the relay that made the session"
    finally:
        for s in socks:
            s.close()
        ctl.close()
        srv.stop()


@pytest.mark.parametrize("relays", [1, 2])
def test_kill9_of_the_relay_mid_stream_resumes_within_a_second(ns, tmp_path, relays):
    cfg, spec = relay_cfg(tmp_path, relays=relays)
    srv = start_natserver(ns, cfg, tmp_path)
    ctl = Control(ns, spec)
    a, b = ns.socket(), ns.socket()
    try:
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        to_b = port_of(ctl(f"U kill-me 127.0.0.1 {pa} ft"))
        to_a = port_of(ctl(f"L kill-me 127.0.0.1 {pb} ft tt"))
        assert exchange(a, to_a, b, to_b, count=3) == (3, 3)
        # which relay owns it: the one whose slice holds the ports
        titles = {t: pid for t, pid in srv.children().items() if "rtp relay" in t}
        owner = next(t for t in titles
                     if int(t.split()[-1].split("-")[0]) <= to_a <= int(t.split()[-1].split("-")[1]))
        arrivals: dict[str, list[float]] = {"a->b": [], "b->a": []}
        stop = threading.Event()

        def send() -> None:      # 100 pps each way, bounded to 6 s
            end = time.monotonic() + 6
            seq = 0
            while not stop.is_set() and time.monotonic() < end:
                a.sendto(rtp(seq), ("127.0.0.1", to_a))
                b.sendto(rtp(seq), ("127.0.0.1", to_b))
                seq += 1
                time.sleep(0.01)

        def receive(sock, key) -> None:
            sock.settimeout(0.2)
            end = time.monotonic() + 7
            while not stop.is_set() and time.monotonic() < end:
                try:
                    sock.recv(2048)
                except OSError:
                    continue
                arrivals[key].append(time.monotonic())

        threads = [threading.Thread(target=send), threading.Thread(target=receive, args=(b, "a->b")),
                   threading.Thread(target=receive, args=(a, "b->a"))]
        for t in threads:
            t.start()
        time.sleep(1.0)
        old = titles[owner]
        killed = time.monotonic()
        os.kill(old, signal.SIGKILL)
        new = srv.wait_child(owner, not_pid=old, timeout=2.0)
        assert new != old
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join()
        for key, times in arrivals.items():
            after = [t for t in times if t > killed]
            assert after, f"{key}: nothing after the kill\n" + srv.log_text()[-3000:]
            gaps = [y - x for x, y in zip(times, times[1:])]
            worst = max(gaps)
            print(f"{key}: {len(times)} packets, longest gap {worst * 1000:.0f} ms")
            assert worst < 1.0, f"{key}: longest gap {worst:.3f} s"
        assert "rebound 1 session" in srv.log_text()
    finally:
        a.close()
        b.close()
        ctl.close()
        srv.stop()


def test_many_calls_over_two_relays_leave_no_port_bound(ns, tmp_path):
    """U, L, media, D for 30 calls with commands landing on either relay: afterwards no
    session is left and every port of the range can be bound again (no leak in the
    cross-relay delete path)."""
    import socket
    cfg, spec = relay_cfg(tmp_path, relays=2, control="udp:127.0.0.1:7722")
    srv = start_natserver(ns, cfg, tmp_path)
    ctl = Control(ns, spec)
    a, b = ns.socket(), ns.socket()
    a.settimeout(1.0)
    b.settimeout(1.0)
    try:
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        for i in range(30):
            to_b = port_of(ctl(f"U many-{i} 127.0.0.1 {pa} ft"))
            to_a = port_of(ctl(f"L many-{i} 127.0.0.1 {pb} ft tt"))
            a.sendto(rtp(i), ("127.0.0.1", to_a))
            b.sendto(rtp(i), ("127.0.0.1", to_b))
            assert seq_of(b.recv(2048)) == i and seq_of(a.recv(2048)) == i, f"call {i}"
            assert ctl(f"D many-{i} ft tt") == "0"
        from tests.helpers.relayproc import PORT_MAX, PORT_MIN, ctl_json
        assert ctl_json(srv.cfg_path, "rtp")["sessions"] == []
        def bound_ports() -> list[int]:
            busy = []
            for port in range(PORT_MIN, PORT_MAX + 1):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    try:
                        probe.bind(("127.0.0.1", port))
                    except OSError:
                        busy.append(port)
            return busy

        deadline = time.monotonic() + 3
        busy = run_in_netns(ns.name, bound_ports)
        while busy and time.monotonic() < deadline:
            time.sleep(0.05)
            busy = run_in_netns(ns.name, bound_ports)
        assert busy == []
    finally:
        a.close()
        b.close()
        ctl.close()
        srv.stop()
