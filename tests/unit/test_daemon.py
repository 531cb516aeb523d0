"""Pidfile handling and daemonize(), with real processes (no mocks)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from natserver import daemon


def sleeper(title: str) -> subprocess.Popen:
    """A live process whose command line does (or does not) mention natserver."""
    code = f"import setproctitle, time; setproctitle.setproctitle({title!r}); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
                if fh.read().startswith(title.encode()):
                    return proc
        except OSError:
            pass
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("sleeper did not set its title")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_write_read_remove(tmp_path):
    path = str(tmp_path / "n.pid")
    daemon.write_pidfile(path, os.getpid())
    assert daemon.read_pidfile(path) == os.getpid()
    assert open(path).read() == f"{os.getpid()}\n"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    daemon.remove_pidfile(path, os.getpid() + 1)  # not ours: stays
    assert os.path.exists(path)
    daemon.remove_pidfile(path, os.getpid())
    assert not os.path.exists(path)


@pytest.mark.parametrize("content", ["", "abc", "-5", "0"])
def test_unreadable_content_is_no_pid(tmp_path, content):
    path = tmp_path / "n.pid"
    path.write_text(content)
    assert daemon.read_pidfile(str(path)) is None
    daemon.check_pidfile(str(path))  # nothing running: no error


def test_missing_pidfile(tmp_path):
    assert daemon.read_pidfile(str(tmp_path / "none")) is None
    assert daemon.running_pid(str(tmp_path / "none")) is None


def test_live_natserver_refuses_a_second_start(tmp_path):
    proc = sleeper("natserver: supervisor")
    try:
        path = str(tmp_path / "n.pid")
        with open(path, "w") as fh:
            fh.write(f"{proc.pid}\n")
        assert daemon.running_pid(path) == proc.pid
        with pytest.raises(daemon.PidfileError, match="already running"):
            daemon.check_pidfile(path)
        with pytest.raises(daemon.PidfileError):
            daemon.write_pidfile(path, os.getpid())
        assert daemon.read_pidfile(path) == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_stale_pidfile_of_a_dead_process_is_replaced(tmp_path):
    path = str(tmp_path / "n.pid")
    with open(path, "w") as fh:
        fh.write(f"{dead_pid()}\n")
    assert daemon.running_pid(path) is None
    daemon.write_pidfile(path, os.getpid())
    assert daemon.read_pidfile(path) == os.getpid()


def test_pid_reused_by_another_program_is_stale(tmp_path):
    proc = sleeper("some-other-daemon")
    try:
        path = str(tmp_path / "n.pid")
        with open(path, "w") as fh:
            fh.write(f"{proc.pid}\n")
        assert daemon.pid_alive(proc.pid)
        assert daemon.running_pid(path) is None
        daemon.check_pidfile(path)
    finally:
        proc.kill()
        proc.wait()


def test_unwritable_pidfile(tmp_path):
    with pytest.raises(daemon.PidfileError, match="cannot write"):
        daemon.write_pidfile(str(tmp_path / "no" / "such" / "dir.pid"), os.getpid())


DAEMON_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from natserver import daemon
    result = sys.argv[1]
    out = sys.argv[2]
    notifier = daemon.daemonize()
    with open(out, "w") as fh:
        fh.write(f"{os.getpid()} {os.getsid(0)} {os.getcwd()} {os.readlink('/proc/self/fd/0')}"
                 f" {os.readlink('/proc/self/fd/2')}\\n")
    if result == "ok":
        notifier.ready()
        time.sleep(0.5)
    elif result == "fail":
        notifier.failed("could not frobnicate the port")
    # "die": leave without a word
""")


def run_daemon(tmp_path, result: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    out = tmp_path / "out.txt"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    done = subprocess.run([sys.executable, "-c", DAEMON_SCRIPT, result, str(out)],
                          capture_output=True, text=True, timeout=10, env=env)
    return done, out.read_text().split()


def test_daemonize_detaches_and_reports_ready(tmp_path):
    done, (pid, sid, cwd, stdin, stderr) = run_daemon(tmp_path, "ok")
    assert done.returncode == 0
    assert done.stderr == ""
    assert int(pid) != os.getpid()
    # a new session, led by the middle process: the daemon can never get a terminal
    assert int(sid) != os.getsid(0)
    assert sid != pid
    assert cwd == "/"
    assert stdin == stderr == "/dev/null"


def test_daemonize_reports_failure_to_the_waiting_parent(tmp_path):
    done, _ = run_daemon(tmp_path, "fail")
    assert done.returncode == 1
    assert "could not frobnicate the port" in done.stderr


def test_daemon_dying_silently_is_a_failure(tmp_path):
    done, _ = run_daemon(tmp_path, "die")
    assert done.returncode == 1
    assert "exited during start-up" in done.stderr
