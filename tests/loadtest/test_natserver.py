"""The scenarios against the real natserver (conf/natserver.cfg, children=2): the
generator's counters must equal natserver's own (``natserverctl --json stats``).
Register and call need users provisioned with ``natserverctl add``; until natserver
has that command those tests skip and say so."""

from __future__ import annotations

import pytest

from tests.loadtest.conftest import delta, run_generator, settled

pytestmark = pytest.mark.slow


def need_users(natserver, tmp_path) -> None:
    """Skip (saying why) while natserver cannot take part: no provisioning yet, or a
    conf/natserver.cfg that does not register users yet."""
    if not natserver.users_ready:
        pytest.skip(f"natserver cannot provision users yet: {natserver.not_ready}")
    probe = run_generator(natserver, tmp_path, "register", "-u", "1", "--first-user", "2",
                          "-r", "10", "-m", "1", "-d", "0", "--timeout", "4")
    if probe["summary"]["ok"] != 1:
        pytest.skip(f"natserver does not register users yet: {probe['causes']}")


def test_options_against_natserver(natserver, tmp_path):
    before = settled(natserver)
    doc = run_generator(natserver, tmp_path, "options", "-r", "300", "-d", "2", expect_exit=0)
    d = delta(before, settled(natserver))
    c = doc["counters"]
    assert doc["summary"]["units"] == 600 and doc["summary"]["ok"] == 600
    assert d["requests"] == c["sent_OPTIONS"] == 600 + c["retransmissions"]
    assert d["sl_replies"] == c["responses_200"] == c["sent_OPTIONS"]


def test_register_against_natserver_wrong_passwords_fail_with_cause(natserver, tmp_path):
    need_users(natserver, tmp_path)
    before = settled(natserver)
    doc = run_generator(natserver, tmp_path, "register", "-u", "40", "-r", "200", "-m", "400",
                        "-d", "0", expect_exit=1)
    d = delta(before, settled(natserver))
    c = doc["counters"]
    assert doc["causes"] == {"REGISTER 401 after auth": 20}
    assert c["ok"] == 380
    assert c["sent_REGISTER"] == d["requests"] == 800 + c["retransmissions"]
    # every REGISTER copy gets 100 Trying (route[2]) and a final reply
    answers = c["responses_100"] + c["responses_401"] + c["responses_200"]
    assert answers == d["sl_replies"] == 2 * c["sent_REGISTER"]
    # counters natserver's registrar and auth modules keep (checked once they count)
    for ours, theirs in (("ok", "registrations"), ("responses_401", "auth_challenges")):
        if d.get(theirs):
            assert c[ours] == d[theirs], theirs
    if d.get("auth_failures"):
        assert d["auth_failures"] >= 20


def test_calls_against_natserver(natserver, tmp_path):
    need_users(natserver, tmp_path)
    before = settled(natserver)
    doc = run_generator(natserver, tmp_path, "call", "-u", "40", "--callees", "20", "-r", "40",
                        "-m", "80", "-d", "0", "--hold", "0.3", "--timeout", "8")
    d = delta(before, settled(natserver))
    c = doc["counters"]
    assert doc["causes"] == {"setup: REGISTER 401 after auth": 2, "INVITE 407 after auth": 4,
                             "INVITE 404 User Not Found": 4}
    assert c["ok"] == 72 and c["uas_invites"] == 72 and c["uas_byes"] >= 72
    sent = sum(v for k, v in c.items() if k.startswith("sent_"))
    assert d["requests"] == sent
    # the UAS answered 180 and 200 per INVITE (plus 200 retransmissions) and 200 per BYE
    uas_replies = (2 * c["uas_invites"] + c["uas_retransmissions"]
                   + c.get("uas_invite_retransmissions", 0) + c["uas_byes"])
    assert d["replies"] == uas_replies
    if not c["retransmissions"]:
        # ACKs to the stateless 407s and 404s; transactions: authorized INVITEs and BYEs
        assert d["sl_acks_absorbed"] == c["responses_407"] + c["responses_404"]
        assert d["tm_created"] == c["uas_invites"] + c["sent_BYE"]


def test_mixed_with_rtp_against_natserver(natserver, tmp_path):
    need_users(natserver, tmp_path)
    doc = run_generator(natserver, tmp_path, "mixed", "-u", "10", "--callees", "4", "-r", "5",
                        "-d", "2", "--hold", "1", "--rtp", "--reregister", "1", "--timeout", "8")
    c = doc["counters"]
    assert c["ok"] > 0 and c["reg_ok"] > 0
    assert c["rtp_received"] > 0 and c["rtp_lost"] <= 0.01 * c["rtp_sent"]
