"""natserver's nathelper drives Debian's rtpengine over its rtpproxy-compatible UDP
control port (issue 7 acceptance, interop).

natserver runs conf/natserver.cfg (the seed's routing) with ``rtp_relays=0`` and
``rtpproxy_sock="udp:127.0.0.1:PORT"``: rtpengine's ``--listen-udp``. Everything runs
in a loopback-only namespace the test made: natserver, rtpengine (userspace,
``--table=-1``), both phones and their RTP sockets.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import time

import pytest

from tests.helpers.relayproc import Proc
from tests.helpers.server import Netns, need_root, run_in_netns
from tests.interop.seedcall import Phone, SeedServer, exchange, hang_up, reinvite, seed_call

RTPENGINE = shutil.which("rtpengine")
pytestmark = pytest.mark.skipif(RTPENGINE is None, reason="rtpengine (rtpengine-daemon) "
                                "is not installed")
RTP_MIN, RTP_MAX = 40000, 40199


@pytest.fixture
def lab(tmp_path):
    need_root()
    ns = Netns("nsre")
    control = random.randrange(20000, 29999)     # inside our namespace: free
    engine = Proc(ns, [RTPENGINE, "--config-file=none", "--foreground", "--log-stderr",
                       "--table=-1", "--interface=127.0.0.1",
                       f"--listen-udp=127.0.0.1:{control}", f"--port-min={RTP_MIN}",
                       f"--port-max={RTP_MAX}", "--delete-delay=0", "--log-level=6",
                       "--num-threads=2"], tmp_path, r"Startup complete")
    server = None
    try:
        engine.wait_ready()
        server = SeedServer(ns, tmp_path, rtpproxy_sock=f"udp:127.0.0.1:{control}",
                            relays=0)
        yield ns, server, engine
    finally:
        if server is not None:
            server.stop()
        engine.stop()
        ns.destroy()
    assert "Traceback" not in server.log_text(), server.log_text()[-5000:]


def wait_log(engine: Proc, needles: list[str], timeout: float = 3.0) -> None:
    """rtpengine's stderr reaches us through a reader thread: wait for the lines."""
    deadline = time.monotonic() + timeout
    while True:
        log = engine.log_text()
        missing = [n for n in needles if n not in log]
        if not missing:
            return
        assert time.monotonic() < deadline, f"{missing} not in rtpengine's log:\n" + log[-3000:]
        time.sleep(0.05)


def test_seed_call_relayed_by_rtpengine(lab):
    ns, server, engine = lab
    alice = Phone(ns, "alice", "192.168.1.10")
    bob = Phone(ns, "bob", "192.168.1.20")
    try:
        call_flow(alice, bob, engine)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- natserver\n{server.log_text()[-4000:]}\n"
                             f"--- rtpengine\n{engine.log_text()[-3000:]}") from None
    finally:
        alice.close()
        bob.close()


def call_flow(alice: Phone, bob: Phone, engine: Proc) -> None:
    alice.register()
    bob.register()
    call = seed_call(alice, bob)
    # each side's SDP points at rtpengine: its interface address and its port range
    for seen in (call.offer_seen, call.answer_seen):
        assert seen.ip == "127.0.0.1" and RTP_MIN <= seen.port <= RTP_MAX, seen
        assert seen.marker
    # nathelper's U and L reached rtpengine as rtpproxy commands, with tag;N
    wait_log(engine, [f"{alice.tag};1 {bob.tag};1"])
    log = engine.log_text()
    assert re.search(r"Got valid command from udp:127\.0\.0\.1:\d+: \S+ U \S+ "
                     rf"127\.0\.0\.1 {alice.rtp_port} {alice.tag};1", log), log[-3000:]
    assert re.search(rf"Got valid command from udp:127\.0\.0\.1:\d+: \S+ L \S+ "
                     rf"127\.0\.0\.1 {bob.rtp_port} {alice.tag};1 {bob.tag};1", log)
    assert "fallback RE" not in log
    got_bob, got_alice = exchange(alice, call.answer_seen, bob, call.offer_seen)
    assert len(got_bob) >= 18 and len(got_alice) >= 18, (len(got_bob), len(got_alice))
    assert all(len(p) == 172 and p[12:22] == b"from-alice" for p in got_bob)
    assert all(len(p) == 172 and p[12:20] == b"from-bob" for p in got_alice)

    # re-INVITE: force_rtp_proxy("l") updates the session, the ports stay
    again = reinvite(call)
    assert again.offer_seen.port == call.offer_seen.port
    assert again.answer_seen.port == call.answer_seen.port
    got_bob, got_alice = exchange(alice, again.answer_seen, bob, again.offer_seen, 10)
    assert len(got_bob) >= 8 and len(got_alice) >= 8

    hang_up(call)                  # the seed's BYE: unforce_rtp_proxy() -> D
    deadline = time.monotonic() + 3
    while "Deleting full call" not in engine.log_text() \
            and "Final packet stats" not in engine.log_text():
        assert time.monotonic() < deadline, engine.log_text()[-3000:]
        time.sleep(0.05)
    time.sleep(0.2)
    got_bob, got_alice = exchange(alice, call.answer_seen, bob, call.offer_seen, 5)
    assert got_bob == [] and got_alice == [], "media still relayed after BYE"


def test_two_streams_against_rtpengine(lab, tmp_path):
    """An audio+video offer and its answer through nathelper (in this process, its
    sockets in the test's namespace) against rtpengine: one U and one L per stream
    with tag;N, every port rewritten into rtpengine's range, and the c= address is
    rtpengine's interface - never the 0.0.0.0 rtpengine answers for later streams."""
    ns, server, engine = lab
    from tests.modules.test_nathelper_rtp import Rig, body_of, message

    control = server.rtpproxy_sock
    offer = (b"v=0\r\no=- 1 1 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\n"
             b"t=0 0\r\nm=audio 8000 RTP/AVP 0\r\na=rtcp:8001\r\n"
             b"m=video 9000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n")
    answer = offer.replace(b"192.168.1.10", b"10.0.0.5").replace(b"8000", b"7000") \
        .replace(b"8001", b"7001").replace(b"9000", b"7002")
    rig = Rig(tmp_path, control)
    try:
        m, out = run_in_netns(ns.name, lambda: rig.request(message(body=offer,
                                                                   callid="two-streams")))
        assert m.flags & 2
        _, s = body_of(out)
        assert s.session_conn.addr == b"127.0.0.1"
        assert all(RTP_MIN <= x.port <= RTP_MAX for x in s.media), s.media
        assert s.media[0].rtcp.port == s.media[0].port + 1
        m, out = run_in_netns(ns.name, lambda: rig.reply(message(
            reply=200, body=answer, callid="two-streams", ttag="tagB")))
        assert m.flags & 2
        _, s = body_of(out)
        assert s.session_conn.addr == b"127.0.0.1"
        assert all(RTP_MIN <= x.port <= RTP_MAX for x in s.media), s.media
        wait_log(engine, ["U two-streams 127.0.0.1 8000 tagA;1",
                          "U two-streams 127.0.0.1 9000 tagA;2",
                          "L two-streams 127.0.0.1 7000 tagA;1 tagB;1",
                          "L two-streams 127.0.0.1 7002 tagA;2 tagB;2"])
    finally:
        rig.close()
