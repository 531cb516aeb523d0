"""Debian's kamailio (rtpproxy module) relays a call through natserver's relay
(issue 7 acceptance, interop).

The relay is natserver's own (``rtp_relays=1``, a signalling-only cfg from
tests/helpers/relayproc.py) or the standalone ``natserver-rtpproxy`` command, with its
control socket on ``udp:127.0.0.1:PORT`` or ``unix:PATH`` (kamailio then connects once
per command, as SER did); kamailio's ``rtpproxy_sock`` points at it. kamailio
record-routes a call from alice to bob (routed by R-URI, no registrar), calls
``rtpproxy_offer()`` on the INVITE, ``rtpproxy_answer()`` on the 200 and
``rtpproxy_destroy()`` on the BYE. RTP-sized packets then flow both ways through
natserver's relay. All of it runs in a loopback-only namespace the test made.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers.relayproc import Control, Proc, ctl_json, relay_cfg, start_natserver
from tests.helpers.server import Netns, need_root
from tests.helpers.sipclient import rand_token
from tests.interop.seedcall import Media, Phone, exchange, offer_sdp

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
pytestmark = pytest.mark.skipif(not os.access(KAMAILIO, os.X_OK),
                                reason="kamailio is not installed")
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
KAM = ("127.0.0.1", 5060)      # inside our own namespace

CFG = """#!KAMAILIO
debug=2
log_stderror=yes
children=2
auto_aliases=no
dns=no
rev_dns=no
disable_tcp=yes
mpath="%(modules)s"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "rtpproxy.so"
modparam("rtpproxy", "rtpproxy_sock", "%(sock)s")
modparam("rtpproxy", "rtpproxy_tout", 1)

request_route {
  if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
  if (is_method("BYE|CANCEL")) { rtpproxy_destroy(); }
  if (has_totag()) {
    if (loose_route()) {
      if (is_method("INVITE") && has_body("application/sdp")) { rtpproxy_offer(); }
      t_on_reply("REPLY");
      t_relay();
      exit;
    }
    if (is_method("ACK")) { if (t_check_trans()) { t_relay(); } exit; }
    sl_send_reply("404", "Not here");
    exit;
  }
  if (is_method("INVITE")) {
    record_route();
    if (has_body("application/sdp")) {
      if (!rtpproxy_offer()) { sl_send_reply("503", "No relay"); exit; }
    }
    t_on_reply("REPLY");
  }
  t_relay();
}

onreply_route[REPLY] {
  if (has_body("application/sdp")) { rtpproxy_answer(); }
}
"""


def wait_sip(ns: Netns, addr: tuple[str, int], proc: Proc, timeout: float = 10.0) -> None:
    s = ns.socket()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.proc.poll() is None, "kamailio exited:\n" + proc.log_text()[-3000:]
            s.sendto((f"OPTIONS sip:{addr[0]}:{addr[1]} SIP/2.0\r\nVia: SIP/2.0/UDP "
                      f"127.0.0.1:{s.getsockname()[1]};branch=z9hG4bK{rand_token()}\r\n"
                      "From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\n"
                      f"Call-ID: {rand_token()}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 5\r\n"
                      "Content-Length: 0\r\n\r\n").encode(), addr)
            if select.select([s], [], [], 0.2)[0]:
                return
        raise AssertionError("kamailio does not answer SIP:\n" + proc.log_text()[-3000:])
    finally:
        s.close()


class Relay:
    """natserver's relay under test: inside natserver (``rtp_relays=1``, read with
    natserverctl rtp) or the standalone ``natserver-rtpproxy`` (read with Q)."""

    def __init__(self, ns: Netns, tmp: Path, kind: str, control: str) -> None:
        self.kind = kind
        self.control = control
        if kind == "natserver":
            text, _ = relay_cfg(tmp, control=control)
            self.proc = start_natserver(ns, text, tmp)
            self.query = None
        else:
            self.proc = Proc(ns, [sys.executable, "-m", "natserver.rtpproxy_cli", "-l",
                                  "127.0.0.1", "-s", control, "-m", "31000", "-M", "31199",
                                  "-F"], tmp, r"ready: control")
            self.proc.wait_ready()
            self.query = Control(ns, control)

    def session(self, callid: str, ftag: str, ttag: str) -> dict | None:
        """{"ports": [...] (natserver only), "packets": [a, b]} or None."""
        if self.query is None:
            rows = [r for r in ctl_json(self.proc.cfg_path, "rtp")["sessions"]
                    if r["callid"] == callid]
            assert len(rows) <= 1, rows
            return rows[0] if rows else None
        reply = self.query(f"Q {callid} {ftag} {ttag}")
        if reply.startswith("E"):
            return None
        _, from_this, from_other = reply.split()[:3]
        return {"ports": None, "packets": [int(from_this), int(from_other)]}

    def stop(self) -> None:
        if self.query is not None:
            self.query.close()
        self.proc.stop()


@pytest.fixture(params=[("natserver", "udp"), ("natserver", "unix"), ("standalone", "udp")],
                ids=["natserver-udp", "natserver-unix", "natserver-rtpproxy-udp"])
def lab(request, tmp_path):
    need_root()
    kind, transport = request.param
    ns = Netns("nskr")
    # unix socket paths must stay under 108 bytes: a short directory of our own
    short = Path(tempfile.mkdtemp(prefix="kr-"))
    control = (f"udp:127.0.0.1:{random.randrange(20000, 29999)}" if transport == "udp"
               else f"unix:{short / 'rtpproxy.sock'}")
    relay = kam = None
    try:
        relay = Relay(ns, tmp_path, kind, control)
        cfg = tmp_path / "kamailio.cfg"
        cfg.write_text(CFG % {"modules": MODULES, "sock": control})
        rundir = tmp_path / "kam"
        rundir.mkdir()
        kam = Proc(ns, [KAMAILIO, "-f", str(cfg), "-l", f"udp:{KAM[0]}:{KAM[1]}",
                        "-Y", str(rundir), "-w", str(rundir), "-DD", "-E", "-m", "32",
                        "-M", "4"], tmp_path, r"x^")   # ready: when SIP answers
        wait_sip(ns, KAM, kam)
        yield ns, relay, kam
    finally:
        if kam is not None:
            kam.stop()
        if relay is not None:
            relay.stop()
        ns.destroy()
        shutil.rmtree(short, ignore_errors=True)
    assert "Traceback" not in relay.proc.log_text(), relay.proc.log_text()[-5000:]


def test_kamailio_relays_a_call_through_natservers_relay(lab):
    ns, relay, kam = lab
    alice = Phone(ns, "alice", "127.0.0.1", server=KAM)
    bob = Phone(ns, "bob", "127.0.0.1", server=KAM)
    try:
        bob_uri = f"sip:bob@127.0.0.1:{bob.addr[1]}"
        alice.invite("bob", offer_sdp("127.0.0.1", alice.rtp_port), auth=False, ruri=bob_uri)
        inv = bob.expect_request("INVITE")
        offer_seen = Media.of(inv.body)
        bob.answer(inv, 180, "Ringing")
        bob.answer(inv, 200, "OK", offer_sdp("127.0.0.1", bob.rtp_port))
        ok = alice.expect_final(200)
        answer_seen = Media.of(ok.body)
        alice.answered(ok, "bob")
        bob.expect_request("ACK")

        # kamailio rewrote both SDPs to natserver's relay ports
        session = relay.session(alice.call_id, alice.tag, bob.tag)
        assert session is not None, kam.log_text()[-3000:]
        if session["ports"] is not None:
            assert sorted(session["ports"]) == sorted([offer_seen.port, answer_seen.port])
        assert offer_seen.port not in (alice.rtp_port, bob.rtp_port)
        assert answer_seen.port not in (alice.rtp_port, bob.rtp_port, offer_seen.port)
        assert offer_seen.ip == answer_seen.ip == "127.0.0.1"

        got_bob, got_alice = exchange(alice, answer_seen, bob, offer_seen)
        assert len(got_bob) >= 18 and len(got_alice) >= 18, (len(got_bob), len(got_alice))
        assert all(len(p) == 172 and p[12:22] == b"from-alice" for p in got_bob)
        assert all(len(p) == 172 and p[12:20] == b"from-bob" for p in got_alice)
        deadline = time.monotonic() + 3
        while True:
            session = relay.session(alice.call_id, alice.tag, bob.tag)
            if min(session["packets"]) >= 18 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert min(session["packets"]) >= 18, session

        alice.bye("bob")
        bye = bob.expect_request("BYE")
        bob.answer(bye, 200, "OK")
        alice.expect(200)
        deadline = time.monotonic() + 3
        while relay.session(alice.call_id, alice.tag, bob.tag) is not None:
            assert time.monotonic() < deadline, "rtpproxy_destroy() left the session"
            time.sleep(0.05)
        got_bob, got_alice = exchange(alice, answer_seen, bob, offer_seen, 5)
        assert got_bob == [] and got_alice == []
    finally:
        alice.close()
        bob.close()
