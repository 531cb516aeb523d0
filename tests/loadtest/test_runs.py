"""Whole runs against the test responder: the generator's counters must equal what the
responder saw, in one process, in several, and through the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from loadtest.procs import run_local, run_parallel
from loadtest.scenarios.common import Settings, rule_users
from tests.loadtest.responder import Responder

ROOT = Path(__file__).resolve().parents[2]
# T1 stays 0.5 s where counts must match exactly; a busy machine would otherwise add
# retransmissions. Runs that want them lose datagrams on purpose and shorten T1.
FAST = dict(t1=0.5, t2=4.0, timeout=3.0, linger=0.5)
QUICK_T1 = dict(t1=0.05, t2=0.2, timeout=1.0)


def settings(resp: Responder, scenario: str, **kw) -> Settings:
    return Settings(scenario=scenario, target=resp.addr, **(FAST | kw))


def test_options_counters_match_the_responder():
    with Responder() as resp:
        stats = run_local(settings(resp, "options", rate=300, duration=1.0))
        resp.drain()
    c = stats.counters
    assert c["started"] == 300 and c["ok"] == 300 and not stats.causes
    assert c["sent_OPTIONS"] == resp.received["OPTIONS"] == 300 + c["retransmissions"]
    assert c["responses_200"] == resp.sent[200]
    assert stats.hists["OPTIONS 200"].n == 300
    assert stats.cpu > 0 and len(stats.series) >= 1


def test_lost_requests_are_retransmitted_and_counted():
    with Responder(drop_first=1) as resp:
        stats = run_local(settings(resp, "options", rate=100, max_count=50, duration=0, **QUICK_T1))
        resp.drain()
    c = stats.counters
    assert c["ok"] == 50 and c["retransmissions"] >= 50
    assert resp.received["OPTIONS"] == c["sent_OPTIONS"] == 50 + c["retransmissions"]
    # every answer came after one T1
    assert stats.hists["OPTIONS 200"].percentile(1) >= 45_000


def test_unanswered_requests_fail_with_timeout_as_cause():
    with Responder(silent_every=5) as resp:
        stats = run_local(settings(resp, "options", rate=100, max_count=40, duration=0, **QUICK_T1))
    assert stats.causes == {"OPTIONS timeout": 8}
    assert stats.counters["ok"] == 32
    assert abs(stats.failure_ratio() - 0.2) < 1e-9


def test_register_with_digest_and_a_wrong_password_counted_with_its_cause():
    users = rule_users(10)
    passwords = dict(users)
    passwords[b"user0003"] = b"not-the-rule"          # the server knows another password
    with Responder(passwords=passwords) as resp:
        stats = run_local(settings(resp, "register", rate=200, max_count=100, duration=0,
                                   users=users))
        resp.drain()
    c = stats.counters
    assert c["started"] == 100 and c["ok"] == 90
    assert stats.causes == {"REGISTER 401 after auth": 10}
    assert resp.bad_digest >= 10                     # user0003's (and their retransmissions)
    assert c["sent_REGISTER"] == resp.received["REGISTER"] == 200 + c["retransmissions"]
    if not c["retransmissions"]:
        assert c["responses_401"] == resp.sent[401] == 110
        assert c["responses_200"] == resp.sent[200] == 90
    for name in ("REGISTER 401", "REGISTER 200", "register"):
        assert stats.hists[name].n > 0


def test_register_with_qop_auth():
    users = rule_users(5)
    with Responder(passwords=dict(users), qop=True) as resp:
        stats = run_local(settings(resp, "register", rate=100, max_count=20, duration=0, users=users))
    assert stats.counters["ok"] == 20 and resp.bad_digest == 0


def test_re_registration_period():
    users = rule_users(5)
    with Responder(passwords=dict(users)) as resp:
        stats = run_local(settings(resp, "register", rate=100, duration=1.5, reregister=0.5,
                                   users=users))
    # 5 first registrations, then each user again at 0.5 and 1.0 s (1.5 s is the end)
    assert 10 <= stats.counters["started"] <= 15
    assert stats.counters["ok"] == stats.counters["started"] and not stats.causes


def test_several_processes_merge_to_what_the_responder_saw():
    rows = []
    users = rule_users(20)
    with Responder(passwords=dict(users)) as resp:
        stats = run_parallel(settings(resp, "register", rate=200, duration=1.0, users=users), 2,
                             rows.append)
        resp.drain()
    c = stats.counters
    assert stats.procs == 2
    assert c["started"] == 200 and c["ok"] == 200
    assert c["sent_REGISTER"] == resp.received["REGISTER"] == 400 + c["retransmissions"]
    assert stats.hists["register"].n == 200
    assert rows and rows[0]["t"] == 0 and sum(r.get("started", 0) for r in rows) == 200
    assert sum(r["ok"] for r in stats.series) == 200


def test_command_line_json_html_and_exit_status(tmp_path):
    users_csv = tmp_path / "users.csv"
    users_csv.write_text("SEQUENTIAL\n" + "".join(
        f"u{n};[authentication username=u{n} password=p{n}]\n" for n in range(4)))
    passwords = {f"u{n}".encode(): f"p{n}".encode() for n in range(3)}    # u3: unknown
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with Responder(passwords=passwords) as resp:
        done = subprocess.run(
            [sys.executable, "-m", "loadtest", "register", "-t", resp.target, "--users-csv",
             str(users_csv), "-r", "100", "-m", "40", "-d", "0", "--t1", "0.05", "--timeout", "1",
             "--json", str(tmp_path / "out.json"), "--report", str(tmp_path / "out.html"), "-q"],
            capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60)
    assert done.returncode == 1, done.stderr          # 25% failed > --max-failures 1%
    assert "REGISTER 401 after auth" in done.stdout
    doc = orjson.loads((tmp_path / "out.json").read_bytes())
    assert doc["summary"]["units"] == 40 and doc["summary"]["ok"] == 30
    assert doc["causes"] == {"REGISTER 401 after auth": 10}
    assert doc["latency_ms"]["register"]["n"] == 30
    assert doc["command"].startswith("natserver-loadtest register")
    html = (tmp_path / "out.html").read_text()
    assert html.count("<svg") == 2 and "REGISTER 401 after auth" in html
    assert "<script" not in html and "src=" not in html   # self-contained


def test_command_line_usage_errors():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args in (["nosuch"], ["options", "-d", "0"], ["options", "-t", "127.0.0.1:x"]):
        done = subprocess.run([sys.executable, "-m", "loadtest", *args], capture_output=True,
                              text=True, env=env, timeout=30)
        assert done.returncode == 2, (args, done.stderr)


def test_setup_registrations_shed_with_503_are_sent_again_after_retry_after():
    users = rule_users(6)                             # 3 callers, 3 callees
    with Responder(passwords=dict(users), shed_first=2) as resp:
        stats = run_local(settings(resp, "call", rate=10, max_count=1, duration=0,
                                   users=users, hold=0.0))
        resp.drain()
    c = stats.counters
    assert c["setup_retries_503"] == 2 == resp.sent[503]
    assert c["setup_registered"] == 3
    assert not any(cause.startswith("setup:") for cause in stats.causes), stats.causes
    # the responder does not do calls: the one call fails, with its own cause
    assert stats.causes == {"INVITE 501 Not Implemented": 1}


def test_measured_registrations_shed_with_503_are_failures_not_retried():
    users = rule_users(4)
    with Responder(passwords=dict(users), shed_first=3) as resp:
        stats = run_local(settings(resp, "register", rate=100, max_count=10, duration=0,
                                   users=users))
    assert stats.counters["ok"] == 7
    assert stats.causes == {"REGISTER 503 Service Unavailable": 3}
    assert "setup_retries_503" not in stats.counters
