"""Helpers for the process-model tests: a natserver (with the test-only ``probe``
module available) in a loopback-only netns, its children by title, natserverctl.

``ip netns exec`` execs the server in place, so ``NatServer.proc.pid`` is the
supervisor's pid.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import psutil

from tests.helpers.server import ENV, Netns, Server, need_root

__all__ = ["NatServer", "Netns", "SyslogSink", "cfg_text", "ctl", "need_root", "title_of",
           "wait_gone"]



def cfg_text(*, children: int = 2, fifo: str = "", extra: str = "", modules: str = "",
             fork: str = "no", log_stderror: str = "yes") -> str:
    """A cfg that answers OPTIONS with 200 and anything else with 404."""
    fifo_line = f'fifo="{fifo}"' if fifo else ""
    return f"""
debug=3
fork={fork}
log_stderror={log_stderror}
listen=127.0.0.1
port=0
children={children}
{fifo_line}
{extra}
loadmodule "sl.so"
loadmodule "maxfwd.so"
{modules}
route {{
  if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); break; }};
  if (method=="OPTIONS") {{ sl_send_reply("200", "OK"); break; }};
  sl_send_reply("404", "Not Here");
}}
"""


def title_of(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline()).strip()
    except psutil.Error:
        return ""


class NatServer(Server):
    """``python -m tests.helpers.probe -f CFG ARGS`` inside ``ns``, stderr collected."""

    def __init__(self, ns: Netns, cfg: str, tmp: Path, *, args: tuple[str, ...] = ("-D", "-E"),
                 name: str = "natserver.cfg", module: str = "tests.helpers.probe") -> None:
        super().__init__(ns, cfg, tmp, module=module, args=args, name=name)

    def wait_log(self, pattern: str, timeout: float = 5.0, count: int = 1) -> list[re.Match[str]]:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            found = [m for m in (rx.search(line) for line in list(self.lines)) if m]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} x {pattern!r} not logged:\n" + self.log_text()[-5000:])
            time.sleep(0.02)

    def ctl(self, *args: str, json: bool = False, check: bool = True) -> subprocess.CompletedProcess:
        return ctl("-f", str(self.cfg_path), *(("--json",) if json else ()), *args, check=check)

    def ctl_json(self, *args: str) -> object:
        return orjson.loads(self.ctl(*args, json=True).stdout)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 15.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(2)
        return code



def ctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "natserver.ctlcli", *args], capture_output=True,
                          text=True, env=ENV, timeout=20)
    if check and done.returncode != 0:
        raise AssertionError(f"natserverctl {' '.join(args)} -> {done.returncode}\n"
                             f"{done.stdout}\n{done.stderr}")
    return done


def wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    """Pids still alive (not zombies) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


class SyslogSink:
    """A unix datagram socket standing in for /dev/log; a thread drains it at once
    (Linux queues only ~10 datagrams per unix socket; the server drops lines rather
    than block when the queue is full)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.got: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                self.got.append(self.sock.recv(65535).decode("utf-8", "replace"))
            except TimeoutError:
                continue
            except OSError:
                return

    def wait(self, pattern: str, timeout: float = 10.0) -> tuple[int, str]:
        """(priority, text) of the first datagram matching ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.got):
                if rx.search(line):
                    m = re.match(r"<(\d+)>(.*)", line, re.S)
                    assert m, line
                    return int(m.group(1)), m.group(2)
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not received; got:\n" + "\n".join(self.got[-20:]))
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
