"""The scenarios against the real natserver (conf/natserver.cfg, children=2): the
generator's counters must equal natserver's own (``natserverctl --json stats``).
Register and call need users provisioned with ``natserverctl add``; until natserver
has that command those tests skip and say so."""

from __future__ import annotations

import pytest

from tests.loadtest.conftest import delta, run_generator

pytestmark = pytest.mark.slow


def need_users(natserver, tmp_path) -> None:
    """Skip (saying why) while natserver cannot take part: no provisioning yet, or a
    conf/natserver.cfg that does not register users yet."""
    if not natserver.users_ready:
        pytest.skip(f"natserver cannot provision users yet: {natserver.not_ready}")
    probe = run_generator(natserver, tmp_path, "register", "-u", "2", "-r", "10", "-m", "1",
                          "-d", "0", "--timeout", "4")
    if probe["summary"]["ok"] != 1:
        pytest.skip(f"natserver does not register users yet: {probe['causes']}")


def test_options_against_natserver(natserver, tmp_path):
    before = natserver.counters()
    doc = run_generator(natserver, tmp_path, "options", "-r", "300", "-d", "2", expect_exit=0)
    d = delta(before, natserver.counters())
    c = doc["counters"]
    assert doc["summary"]["units"] == 600 and doc["summary"]["ok"] == 600
    assert d["requests"] == c["sent_OPTIONS"] == 600 + c["retransmissions"]
    assert d["sl_replies"] == c["responses_200"] == c["sent_OPTIONS"]


def test_register_against_natserver_wrong_passwords_fail_with_cause(natserver, tmp_path):
    need_users(natserver, tmp_path)
    before = natserver.counters()
    doc = run_generator(natserver, tmp_path, "register", "-u", "40", "-r", "200", "-m", "400",
                        "-d", "0", expect_exit=1)
    d = delta(before, natserver.counters())
    c = doc["counters"]
    assert doc["causes"] == {"REGISTER 401 after auth": 20}
    assert c["ok"] == 380 == d["registrations"]
    assert c["sent_REGISTER"] == d["requests"] == 800 + c["retransmissions"]
    assert c["responses_401"] == d["auth_challenges"]
    assert d["auth_failures"] >= 20


def test_calls_against_natserver(natserver, tmp_path):
    need_users(natserver, tmp_path)
    doc = run_generator(natserver, tmp_path, "call", "-u", "40", "--callees", "20", "-r", "40",
                        "-m", "80", "-d", "0", "--hold", "0.3", "--timeout", "8")
    c = doc["counters"]
    assert doc["causes"] == {"setup: REGISTER 401 after auth": 2, "INVITE 407 after auth": 4,
                             "INVITE 404 User Not Found": 4}
    assert c["ok"] == 72 and c["uas_invites"] == 72 and c["uas_byes"] >= 72


def test_mixed_with_rtp_against_natserver(natserver, tmp_path):
    need_users(natserver, tmp_path)
    doc = run_generator(natserver, tmp_path, "mixed", "-u", "10", "--callees", "4", "-r", "5",
                        "-d", "2", "--hold", "1", "--rtp", "--reregister", "1", "--timeout", "8")
    c = doc["counters"]
    assert c["ok"] > 0 and c["reg_ok"] > 0
    assert c["rtp_received"] > 0 and c["rtp_lost"] <= 0.01 * c["rtp_sent"]
