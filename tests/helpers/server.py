"""Run the real natserver in a network namespace of its own (loopback only).

A server under test forwards to addresses it reads from messages; inside a namespace
that has nothing but ``lo``, a bug can never send a packet off the machine. The test's
own sockets are created inside the same namespace (``Netns.socket``).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the server under test runs in its own network namespace")


def run_in_netns(name: str, fn: Callable[[], object]) -> object:
    """Call ``fn`` in a thread that has entered namespace ``name``; sockets it creates
    stay in that namespace for life."""
    result: list[object] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            with open(f"/run/netns/{name}") as fd:
                if _libc.setns(fd.fileno(), CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


class Netns:
    """A network namespace with only loopback, removed with everything inside it."""

    def __init__(self, prefix: str = "nst") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"],
                       check=True)

    def socket(self, kind: int = socket.SOCK_DGRAM, bind: tuple[str, int] | None = ("127.0.0.1", 0),
               family: int = socket.AF_INET) -> socket.socket:
        def make() -> socket.socket:
            sock = socket.socket(family, kind)
            if bind is not None:
                sock.bind(bind)
            return sock
        return run_in_netns(self.name, make)  # type: ignore[return-value]

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def destroy(self) -> None:
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


LISTEN_RE = re.compile(r"listening on udp:([0-9.]+):(\d+)")
ENV = dict(os.environ, PYTHONUNBUFFERED="1",
           PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))


class Proc:
    """A process started inside ``ns`` (``ip netns exec`` execs in place, so ``pid`` is
    the process itself), its stderr collected; ready once a line matches ``ready``."""

    def __init__(self, ns: Netns, argv: list[str], cwd: Path, ready: str) -> None:
        self.ns = ns
        self.lines: list[str] = []
        self._ready_rx = re.compile(ready)
        self.proc = subprocess.Popen(ns.cmd(*argv), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=ENV, cwd=str(cwd))
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if not self._ready.is_set():
                found = self._ready_rx.search(line)
                if found:
                    self._on_ready(found)
                    self._ready.set()
        self._ready.set()

    def _on_ready(self, found: re.Match[str]) -> None:
        """The ready line: a subclass reads what it needs from it."""

    def wait_ready(self, timeout: float = 15.0) -> Proc:
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("did not start:\n" + "\n".join(self.lines[-40:]))
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def wait_log(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = rx.search(line)
                if found:
                    return found
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r}:\n" + self.log_text()[-4000:])

    def children(self) -> dict[str, int]:
        """Title -> pid of every live (not zombie) child."""
        out = {}
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.Error:
            return {}
        for kid in kids:
            try:
                if kid.status() == psutil.STATUS_ZOMBIE:
                    continue
                title = " ".join(kid.cmdline()).strip()
            except psutil.Error:
                continue  # gone between the listing and the look
            if title:
                out[title] = kid.pid
        return out

    def wait_child(self, title: str, *, not_pid: int = 0, timeout: float = 1.0) -> int:
        """The pid of the child titled ``title`` (other than ``not_pid``) once it runs."""
        deadline = time.monotonic() + timeout
        while True:
            pid = self.children().get(title, 0)
            if pid and pid != not_pid:
                return pid
            if time.monotonic() > deadline:
                raise AssertionError(f"no {title!r} within {timeout} s: {self.children()}\n"
                                     + self.log_text()[-3000:])
            time.sleep(0.01)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        return self.proc.returncode


class Server(Proc):
    """``python -m MODULE -f CFG ARGS`` (natserver, ``-D -E``) inside ``ns`` from a cfg
    text; ``wait_ready`` reads the listen address from its stderr."""

    def __init__(self, ns: Netns, cfg_text: str, tmp: Path, *, extra_args: tuple[str, ...] = (),
                 module: str = "natserver", args: tuple[str, ...] = ("-D", "-E"),
                 name: str = "natserver.cfg") -> None:
        self.tmp = tmp
        self.cfg_path = tmp / name
        self.cfg_path.write_text(cfg_text)
        self.host = ""
        self.port = 0
        super().__init__(ns, [sys.executable, "-m", module, "-f", str(self.cfg_path), *args,
                              *extra_args], tmp, LISTEN_RE.pattern)

    def _on_ready(self, found: re.Match[str]) -> None:
        self.host, self.port = found.group(1), int(found.group(2))

    def wait_ready(self, timeout: float = 15.0) -> Server:
        if not self._ready.wait(timeout) or not self.port:
            self.stop()
            raise AssertionError("natserver did not start:\n" + "\n".join(self.lines[-40:]))
        return self

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)
