"""nathelper's rtpproxy client (natserver/rtp/client.py): relay set, retries, transports.

The transport tests talk to a real ControlServer over real sockets on 127.0.0.1 and a
unix socket under tmp_path, served from a thread.
"""

import socket
import threading
import time

import pytest

from natserver.rtp import protocol as P
from natserver.rtp.client import (
    BlockingClient,
    Cookies,
    Exchange,
    RelaySet,
    RelaySpec,
    parse_sock_spec,
)
from natserver.rtp.control import ControlConfig, ControlServer
from natserver.rtp.ports import PortTable
from natserver.rtp.session import DictStore


def test_parse_sock_spec():
    specs = parse_sock_spec("unix:/var/run/rtpproxy.sock udp:10.0.0.2:7722=2 "
                            "udp:relay.example udp6:[2001:db8::1]:7000 /tmp/r.sock")
    assert specs == [
        RelaySpec("unix", "/var/run/rtpproxy.sock", 0, 1),
        RelaySpec("udp", "10.0.0.2", 7722, 2),
        RelaySpec("udp", "relay.example", 22222, 1),
        RelaySpec("udp6", "2001:db8::1", 7000, 1),
        RelaySpec("unix", "/tmp/r.sock", 0, 1),
    ]
    assert specs[3].url == "udp6:[2001:db8::1]:7000"


@pytest.mark.parametrize("bad", ["tcp:1.2.3.4:5", "udp:1.2.3.4:99999", "udp:h:1=x",
                                 "unix:", "udp::5", "udp6:[::1"])
def test_parse_sock_spec_errors(bad):
    with pytest.raises(ValueError):
        parse_sock_spec(bad)


def test_choice_is_stable_per_callid_and_weighted():
    rs = RelaySet.from_spec("udp:10.0.0.1:1 udp:10.0.0.2:1=3")
    picks = [rs.choose(b"call-%d" % i, 0.0) for i in range(4000)]
    assert picks[7] is rs.choose(b"call-7", 0.0)
    heavy = sum(1 for p in picks if p.spec.address == "10.0.0.2")
    assert 2700 < heavy < 3300


def test_failed_relay_is_skipped_until_disable_timeout():
    rs = RelaySet.from_spec("udp:10.0.0.1:1 udp:10.0.0.2:1", disable_tout=60.0)
    first = rs.choose(b"c1", 100.0)
    rs.failed(first, 100.0)
    assert not first.checked and first.failures == 1
    assert rs.choose(b"c1", 120.0) is not first
    rs.failed(rs.choose(b"c1", 120.0), 120.0)
    assert rs.choose(b"c1", 150.0) is None
    assert rs.choose(b"c1", 161.0) is first


def test_cookies():
    c = Cookies(pid=42)
    assert [c.next(), c.next()] == [b"42_1", b"42_2"]


def test_exchange_schedule_and_cookie_match():
    ex = Exchange(b"42_1 V\n", b"42_1", started=10.0, timeout=1.0, retries=2)
    assert ex.deadline == 11.0
    assert ex.on_timeout(11.0) and ex.deadline == 12.0
    assert ex.on_timeout(12.0) and ex.deadline == 13.0
    assert not ex.on_timeout(13.0)                       # 1 send + 2 retries
    assert ex.on_datagram(b"42_0 20040107\n") is None    # stale reply
    assert ex.on_datagram(b"42_1 20040107\n").text == b"20040107"


# -- transports against a real server ---------------------------------------------------
class Served:
    """A ControlServer on a UDP socket or a unix stream socket, in a thread."""

    def __init__(self, kind: str, path: str = "", drop_first: int = 0, answer=True,
                 version: bytes = b"", lose_first_u_reply: bool = False):
        self.server = ControlServer(DictStore(), PortTable(36000, 36999, seed=5),
                                    ControlConfig(advertise="127.0.0.1"))
        self.kind = kind
        self.drop_first = drop_first
        self.answer = answer
        self.version = version   # answer V with this instead (a foreign relay)
        self.lose_u = lose_first_u_reply
        self.received = 0
        if kind == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.url = "udp:127.0.0.1:%d" % self.sock.getsockname()[1]
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(path)
            self.sock.listen(8)
            self.url = "unix:" + path
        self.sock.settimeout(0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        deadline = time.monotonic() + 20
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                if self.kind == "udp":
                    data, peer = self.sock.recvfrom(65535)
                else:
                    conn, peer = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.received += 1
            if self.kind == "udp":
                if self.received > self.drop_first and self.answer:
                    cookie, body = P.split_cookie(data)
                    if self.version and body.strip() == b"V":
                        reply = P.format_reply(self.version, cookie)
                    else:
                        reply = self.server.datagram(data, peer, time.time())[0]
                        if self.lose_u and body[:1] == b"U":
                            self.lose_u = False     # executed, but the answer is lost
                            continue
                    self.sock.sendto(reply, peer)
                continue
            with conn:
                conn.settimeout(1.0)
                data = conn.recv(4096)
                if self.answer:
                    conn.sendall(self.server.stream(data, time.time())[0])

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def served(tmp_path):
    made = []

    def make(kind, **kw):
        s = Served(kind, str(tmp_path / f"r{len(made)}.sock"), **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.mark.parametrize("kind", ["udp", "unix"])
def test_u_and_l_through_a_real_relay(served, kind):
    srv = served(kind)
    client = BlockingClient(RelaySet.from_spec(srv.url), timeout=0.5, retries=2)
    try:
        relay, reply = client.command(P.Command(P.Op.UPDATE, "", b"c1", b"198.51.100.7",
                                                b"8000", b"tagA"))
        assert relay.checked and relay.multistream
        assert reply.port and reply.ip == b"127.0.0.1"
        _, lookup = client.command(P.Command(P.Op.LOOKUP, "", b"c1", b"203.0.113.9", b"9000",
                                             b"tagA", b"tagB"))
        assert lookup.port and lookup.port != reply.port
        assert len(srv.server.store) == 1
    finally:
        client.close()


def test_udp_retries_lost_requests(served):
    srv = served("udp", drop_first=3)     # the first three datagrams never arrive
    client = BlockingClient(RelaySet.from_spec(srv.url), timeout=0.1, retries=5)
    try:
        assert client.check(client.relays.relays[0])       # V resent until answered
        assert srv.received >= 4
    finally:
        client.close()


def test_udp_retry_after_lost_reply_runs_u_once(served):
    srv = served("udp", lose_first_u_reply=True)
    client = BlockingClient(RelaySet.from_spec(srv.url), timeout=0.1, retries=5)
    try:
        relay = client.relays.relays[0]
        reply = client.send(relay, P.Command(P.Op.UPDATE, "", b"c1", b"198.51.100.7",
                                             b"8000", b"tagA"))
        assert reply is not None and reply.port
        assert srv.server.ports.in_use == 2 and srv.server.stats.replies_cached == 1
    finally:
        client.close()


def test_dead_relay_is_disabled_and_the_next_one_used(served):
    dead = served("udp", answer=False)
    live = served("udp")
    rs = RelaySet.from_spec(f"{dead.url} {live.url}")
    client = BlockingClient(rs, timeout=0.05, retries=1)
    try:
        got = [client.command(P.Command(P.Op.UPDATE, "", b"call-%d" % i, b"198.51.100.7",
                                        b"8000", b"tagA")) for i in range(6)]
        assert all(r is not None and r[0].spec.url == live.url for r in got)
        assert rs.relays[0].disabled_until > 0 and rs.relays[0].failures == 1
    finally:
        client.close()


def test_no_relay_answers_gives_none(tmp_path):
    rs = RelaySet.from_spec(f"unix:{tmp_path}/missing.sock")
    client = BlockingClient(rs, timeout=0.05, retries=0)
    assert client.command(P.Command(P.Op.DELETE, "", b"c1", from_tag=b"tagA")) is None
    assert rs.relays[0].failures == 1


def test_wrong_version_disables(served):
    odd = served("udp", version=b"20000101")
    client = BlockingClient(RelaySet.from_spec(odd.url), timeout=0.2, retries=0)
    try:
        relay = client.relays.relays[0]
        assert not client.check(relay)
        assert relay.disabled_until > 0 and not relay.checked
        assert client.command(P.Command(P.Op.VERSION)) is None
    finally:
        client.close()


def test_unix_answer_without_newline_is_taken_not_run_twice(tmp_path):
    """A relay that answers without the final newline and keeps the connection open:
    the client takes the answer when its timeout ends instead of sending the U again."""
    path = str(tmp_path / "nonl.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    srv.settimeout(1)
    commands = []

    def serve():
        held = []
        try:
            for _ in range(2):
                conn, _ = srv.accept()
                held.append(conn)
                commands.append(conn.recv(4096))
                conn.sendall(b"20040107" if commands[-1].strip() == b"V" else b"35000")
        except OSError:
            pass
        for c in held:
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client = BlockingClient(RelaySet.from_spec(f"unix:{path}"), timeout=0.1, retries=3)
    try:
        relay = client.relays.relays[0]
        relay.checked = True           # skip V/VF: one command, one connection
        reply = client.send(relay, P.Command(P.Op.UPDATE, "", b"c1", b"127.0.0.1", b"8000",
                                             b"tagA"))
        assert reply is not None and reply.port == 35000
        assert commands == [b"U c1 127.0.0.1 8000 tagA\n"]
    finally:
        srv.close()
        t.join(2)
