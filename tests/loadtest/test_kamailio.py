"""Every scenario for a few seconds against Debian's Kamailio running the seed's logic
(loadtest/kamailio/seed.cfg): the generator's counters must equal what Kamailio
counted (kamcmd stats over its ctl socket), wrong passwords included."""

from __future__ import annotations

import pytest

from tests.loadtest.conftest import delta, run_generator

pytestmark = pytest.mark.slow


def test_options_against_kamailio(kamailio, tmp_path):
    before = kamailio.stats()
    doc = run_generator(kamailio, tmp_path, "options", "-r", "300", "-d", "2", expect_exit=0)
    d = delta(before, kamailio.stats())
    c = doc["counters"]
    assert doc["summary"]["units"] == 600 and doc["summary"]["ok"] == 600
    assert d["core:rcv_requests_options"] == c["sent_OPTIONS"] == 600 + c["retransmissions"]
    assert d["sl:200_replies"] == c["responses_200"] == c["sent_OPTIONS"]
    assert doc["latency_ms"]["OPTIONS 200"]["n"] == 600


def test_register_against_kamailio_wrong_passwords_fail_with_cause(kamailio, tmp_path):
    before = kamailio.stats()
    doc = run_generator(kamailio, tmp_path, "register", "-u", "40", "-r", "200", "-m", "400",
                        "-d", "0", expect_exit=1)
    d = delta(before, kamailio.stats())
    c = doc["counters"]
    # users 1 and 40 of every 40 registrations hold a password Kamailio does not know
    assert doc["causes"] == {"REGISTER 401 after auth": 20}
    assert c["ok"] == 380
    assert c["sent_REGISTER"] == d["core:rcv_requests_register"] == 800 + c["retransmissions"]
    # route[2] answers every copy with 100 Trying (Kamailio's sl files 1xx under "xxx")
    assert c["responses_100"] == d["sl:xxx_replies"] == c["sent_REGISTER"]
    assert c["responses_401"] == d["sl:401_replies"]
    assert c["responses_200"] == d["sl:200_replies"] == d["registrar:accepted_regs"]
    if not c["retransmissions"]:
        assert c["responses_401"] == 420 and c["responses_200"] == 380


def test_calls_against_kamailio(kamailio, tmp_path):
    before = kamailio.stats()
    doc = run_generator(kamailio, tmp_path, "call", "-u", "40", "--callees", "20", "-r", "40",
                        "-m", "80", "-d", "0", "--hold", "0.3", "--timeout", "8")
    d = delta(before, kamailio.stats())
    c = doc["counters"]
    # call n: caller n % 20 (user0001 for n = 20, 40..), callee n % 20 (user0040 for n = 19, 39..)
    # user0040 fails twice in the prepare phase: clearing its old bindings, registering
    assert doc["causes"] == {"setup: REGISTER 401 after auth": 2, "INVITE 407 after auth": 4,
                             "INVITE 404 User Not Found": 4}
    assert c["ok"] == 72 and c["setup_registered"] == 19
    assert d["registrar:accepted_regs"] == c["regs_accepted"] == 2 * 19
    assert c["sent_INVITE"] == d["core:rcv_requests_invite"] == 2 * 80 + c.get("retransmissions_INVITE", 0)
    assert c["sent_ACK"] == d["core:rcv_requests_ack"]
    assert c["sent_BYE"] == d["core:rcv_requests_bye"] == 72 + c.get("retransmissions_BYE", 0)
    assert c["responses_407"] == d["sl:407_replies"]
    assert c["responses_404"] == d["sl:404_replies"]
    if not c["retransmissions"]:
        assert c["responses_407"] == 84 and c["responses_404"] == 4
    # the UAS side saw every call that was routed to it, and Kamailio relayed its answers
    assert c["uas_invites"] == 72 and c["uas_acks"] >= 72
    assert d["core:rcv_replies_2xx_bye"] == c["uas_byes"] >= 72
    assert d["core:rcv_replies_2xx_invite"] == (72 + c["uas_retransmissions"]
                                                + c.get("uas_invite_retransmissions", 0))
    for name in ("INVITE 407", "INVITE 100", "INVITE 200", "INVITE relay", "BYE 200", "setup"):
        assert doc["latency_ms"][name]["n"] > 0


def test_calls_with_rtp_measure_loss_jitter_latency(kamailio, tmp_path):
    doc = run_generator(kamailio, tmp_path, "call", "-u", "10", "--user-format", "user{n:04d}",
                        "--callees", "4", "-r", "5", "-m", "5", "-d", "0", "--hold", "1",
                        "--rtp", "--timeout", "8")
    c = doc["counters"]
    # 5 calls: callers user0002..0006 (call n uses caller n % 6), callees user0007..0010
    assert c["rtp_streams"] == 2 * c["ok"]
    assert c["rtp_sent"] >= c["ok"] * 2 * 40           # 1 s of 20 ms packets each way
    assert c["rtp_received"] == c["rtp_sent"] and c["rtp_lost"] == 0
    assert doc["latency_ms"]["RTP latency"]["n"] == c["rtp_received"]
    assert doc["latency_ms"]["RTP jitter"]["n"] == c["rtp_streams"]


def test_mixed_against_kamailio(kamailio, tmp_path):
    before = kamailio.stats()
    doc = run_generator(kamailio, tmp_path, "mixed", "-u", "38", "--user-format", "user{n:04d}",
                        "--password-format", "pass{n:04d}", "-r", "20", "-d", "2", "--hold", "0.2",
                        "--reregister", "1", "--timeout", "8")
    d = delta(before, kamailio.stats())
    c = doc["counters"]
    # users 1..38: user0001 (a caller) fails its setup registration and its calls
    assert d["registrar:accepted_regs"] == c["regs_accepted"]
    assert c["setup_registered"] == 37 and c["reg_started"] > 0 and c["ok"] > 0
    assert set(doc["causes"]) <= {"setup: REGISTER 401 after auth", "REGISTER 401 after auth",
                                  "INVITE 407 after auth"}
    assert doc["causes"]["setup: REGISTER 401 after auth"] == 2     # clear + register
    assert c["sent_REGISTER"] == d["core:rcv_requests_register"]
    assert c["sent_INVITE"] == d["core:rcv_requests_invite"]
