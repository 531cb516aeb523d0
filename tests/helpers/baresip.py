"""Debian's baresip 1.0.0 as a test user agent inside a network namespace.

Each UA gets its own config directory: a `config` with the ausine tone as the audio
source (48 kHz, 2 channels: the only format ausine produces), the `sndfile` module
writing the decoded received audio to `snd/dump-<time>-dec.wav` (decoding and this
filter run on receive), and `ctrl_tcp` on the namespace's own loopback for commands and
events (JSON in netstrings). `accounts` registers with digest auth and auto-answers.

The player is one half of an `aubridge` pair whose other half never exists, so nothing
pulls audio out: ALSA's `null` PCM (the reference recipe's choice) never blocks, and its
player thread spun at ~30% CPU per UA; this sink costs ~2%, which is what makes 40
concurrent UAs fit on two cores.

sndfile names its dumps by the second a call started: two calls of one UA within the
same second share a file. Give each concurrent call its own UA.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.helpers.netns import Host, Topology, wait_until

log = logging.getLogger(__name__)

BARESIP = "/usr/bin/baresip"
MODULE_PATH = "/usr/lib/baresip/modules"
CTRL_PORT = 4444
_REG_OK = "\x1b[32mOK"  # reginfo's green "OK" for a registered account
_STATS = re.compile(r"packets:\s+(\d+)\s+(\d+)")
# `baresip -s` prints every SIP message as "#", "UDP src -> dst", message, colour reset
_TRACE_HEAD = re.compile(r"^(UDP|TCP) (\S+) -> (\S+)\r?$", re.M)
_TRACE_END = "\x1b[;m"


def baresip_problem() -> str | None:
    if not os.access(BARESIP, os.X_OK):
        return "baresip is missing (Debian package baresip-core)"
    for mod in ("ctrl_tcp.so", "ausine.so", "sndfile.so", "g711.so", "aubridge.so"):
        if not os.path.exists(os.path.join(MODULE_PATH, mod)):
            return f"baresip module {mod} is missing"
    return None


@dataclass(slots=True, frozen=True)
class UaConfig:
    user: str
    password: str
    domain: str                   # the registrar/proxy: sip:<user>@<domain>
    local_ip: str
    tone_hz: int
    sip_port: int = 5060
    ctrl_port: int = CTRL_PORT
    rtp_ports: tuple[int, int] = (10000, 10100)
    regint: int = 60
    answermode: str = "auto"
    outbound: str | None = None   # e.g. "sip:198.51.100.10;lr" to force the first hop


def write_config(directory: Path, c: UaConfig) -> None:
    """Write config, accounts, contacts; received audio goes to directory/snd."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "snd").mkdir(exist_ok=True)
    config = f"""poll_method		epoll
sip_listen		{c.local_ip}:{c.sip_port}
sip_trans_def		udp
net_interface		eth0
audio_player		aubridge,sink-{c.user}
audio_source		ausine,{c.tone_hz}
audio_alert		aubridge,alert-{c.user}
ausrc_srate		48000
auplay_srate		48000
ausrc_channels		2
auplay_channels		1
rtp_stats		yes
rtp_ports		{c.rtp_ports[0]}-{c.rtp_ports[1]}
module_path		{MODULE_PATH}
module			g711.so
module			ausine.so
module			aubridge.so
module			sndfile.so
snd_path		{directory / "snd"}
module_app		account.so
module_app		menu.so
module_app		ctrl_tcp.so
ctrl_tcp_listen		127.0.0.1:{c.ctrl_port}
"""
    (directory / "config").write_text(config)
    params = [f"auth_pass={c.password}", f"answermode={c.answermode}",
              f"regint={c.regint}", "audio_codecs=PCMU"]
    if c.outbound:
        params.append(f"outbound={c.outbound}")
    (directory / "accounts").write_text(f"<sip:{c.user}@{c.domain}>;{';'.join(params)}\n")
    (directory / "contacts").write_text("")


# ------------------------------------------------------------------------ ctrl_tcp
def netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def parse_netstrings(buf: bytearray) -> list[bytes]:
    """Take every complete netstring off the front of `buf`."""
    out = []
    while True:
        colon = buf.find(b":")
        if colon < 0:
            return out
        if not buf[:colon].isdigit():
            raise ValueError(f"bad netstring length {bytes(buf[:colon])!r}")
        n = int(buf[:colon])
        end = colon + 1 + n
        if len(buf) <= end:
            return out
        if buf[end:end + 1] != b",":
            raise ValueError("netstring not terminated by ','")
        out.append(bytes(buf[colon + 1:end]))
        del buf[:end + 1]


class CtrlClient:
    """ctrl_tcp: commands get responses (matched by token); events are kept in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.events: list[dict] = []
        self.responses: dict[str, dict] = {}
        self.tokens = 0

    def _pump(self, timeout: float) -> None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, socket.timeout):
            return
        if not data:
            raise ConnectionError("baresip closed the control connection")
        self.buf += data
        for raw in parse_netstrings(self.buf):
            msg = json.loads(raw)
            if msg.get("event"):
                self.events.append(msg)
            elif msg.get("response"):
                self.responses[str(msg.get("token"))] = msg

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict:
        self.tokens += 1
        token = str(self.tokens)
        body = {"command": command, "token": token}
        if params:
            body["params"] = params
        self.sock.sendall(netstring(json.dumps(body).encode()))
        deadline = time.monotonic() + timeout
        while token not in self.responses:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"baresip did not answer {command!r}")
            self._pump(left)
        return self.responses.pop(token)

    def wait_event(self, pred: Callable[[dict], bool], timeout: float,
                   what: str = "event") -> dict:
        """The first event (old or new) matching `pred`; it stays in `events`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if pred(ev):
                    return ev
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                types = [e.get("type") for e in self.events]
                raise TimeoutError(f"no {what} within {timeout}s (events: {types})")
            self._pump(min(left, 0.2))

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------- the UA
@dataclass(slots=True)
class Baresip:
    """One baresip process in `host`'s namespace, driven over ctrl_tcp."""

    topo: Topology
    host: Host
    config: UaConfig
    directory: Path
    proc: subprocess.Popen | None = None
    ctrl: CtrlClient | None = None
    _log: IO[bytes] | None = None

    @property
    def aor(self) -> str:
        return f"sip:{self.config.user}@{self.config.domain}"

    @property
    def log_path(self) -> Path:
        return self.directory / "baresip.log"

    def start(self, timeout: float = 5.0) -> None:
        write_config(self.directory, self.config)
        self._log = open(self.log_path, "wb")
        # stdout to a file is block-buffered: line-buffer it so that the SIP trace and
        # the end-of-call RTP stats are in the log when the test reads them
        self.proc = self.topo.spawn(self.host, ["stdbuf", "-oL", "-eL", BARESIP, "-s", "-f",
                                                str(self.directory)], stdout=self._log)
        self.ctrl = CtrlClient(wait_until(self._connect, timeout, 0.02,
                                          f"baresip ctrl_tcp in {self.host.role}"))

    def _connect(self) -> socket.socket | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"baresip exited with {self.proc.returncode}: "
                               f"{self.log_text()[-1500:]}")
        s = self.topo.socket(self.host, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", self.config.ctrl_port))
        except OSError:
            s.close()
            return None
        return s

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict:
        assert self.ctrl is not None, "start() first"
        return self.ctrl.command(command, params, timeout)

    def is_registered(self) -> bool:
        # REGISTER_OK usually fires before the test connects, so ask instead of waiting
        return _REG_OK in str(self.command("reginfo").get("data", ""))

    def wait_registered(self, timeout: float = 5.0) -> None:
        wait_until(self.is_registered, timeout, 0.05, f"{self.config.user} to register")

    def dial(self, uri: str) -> dict:
        return self.command("dial", uri)

    def hangup(self) -> dict:
        return self.command("hangup")

    def wait_event(self, etype: str, timeout: float = 10.0,
                   pred: Callable[[dict], bool] = lambda e: True) -> dict:
        assert self.ctrl is not None
        return self.ctrl.wait_event(lambda e: e.get("type") == etype and pred(e), timeout,
                                    f"{etype} at {self.config.user}")

    def events(self, etype: str | None = None) -> list[dict]:
        assert self.ctrl is not None
        return [e for e in self.ctrl.events if etype is None or e.get("type") == etype]

    def wait_established(self, timeout: float = 10.0) -> dict:
        """CALL_ESTABLISHED; a CALL_CLOSED first raises with its reason (e.g. 408)."""
        assert self.ctrl is not None
        ev = self.ctrl.wait_event(
            lambda e: e.get("type") in ("CALL_ESTABLISHED", "CALL_CLOSED"), timeout,
            f"call at {self.config.user}")
        if ev["type"] == "CALL_CLOSED":
            raise CallFailed(str(ev.get("param", "")))
        return ev

    def wait_closed(self, timeout: float = 10.0) -> dict:
        return self.wait_event("CALL_CLOSED", timeout)

    # ---- what arrived
    def log_text(self) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def rtp_stats(self, calls: int = 1, timeout: float = 3.0) -> list[tuple[int, int]]:
        """(tx, rx) packets per finished call, from the log: baresip prints them as a
        call ends, just after CALL_CLOSED, so wait (bounded) until `calls` are there."""
        def read() -> list[tuple[int, int]]:
            return [(int(a), int(b)) for a, b in _STATS.findall(self.log_text())]
        try:
            return wait_until(lambda: len(read()) >= calls and read(), timeout, 0.05,
                              f"RTP stats of {calls} call(s) at {self.config.user}")
        except TimeoutError:
            return read()

    def sip_received(self) -> list[TracedMessage]:
        """SIP messages that reached this UA (from its trace, `-s`)."""
        me = f"{self.config.local_ip}:{self.config.sip_port}"
        return [m for m in parse_sip_trace(self.log_text()) if m.dst == me]

    def received_sdp_addresses(self) -> list[tuple[str, int]]:
        """(IP, port) of every SDP this UA received: where it was told to send RTP."""
        return [a for m in self.sip_received() if (a := m.sdp_address) is not None]

    def received_wavs(self) -> list[Path]:
        """Decoded received audio, one WAV per call, oldest first."""
        return sorted((self.directory / "snd").glob("dump-*-dec.wav"),
                      key=lambda p: p.stat().st_mtime)

    def sent_wavs(self) -> list[Path]:
        return sorted((self.directory / "snd").glob("dump-*-enc.wav"),
                      key=lambda p: p.stat().st_mtime)

    def stop(self, timeout: float = 3.0) -> None:
        if self.ctrl is not None and self.proc is not None and self.proc.poll() is None:
            try:
                self.ctrl.command("quit", timeout=1.0)
            except (OSError, TimeoutError, ConnectionError):
                pass
        if self.ctrl is not None:
            self.ctrl.close()
            self.ctrl = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3.0)
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass(slots=True, frozen=True)
class TracedMessage:
    src: str          # "ip:port"
    dst: str
    first_line: str   # "INVITE sip:... SIP/2.0" or "SIP/2.0 200 OK"
    text: str         # the whole message

    @property
    def sdp_address(self) -> tuple[str, int] | None:
        """Media address of an audio offer/answer in the body: (c= IP, m=audio port)."""
        c = re.search(r"^c=IN IP4 (\S+)", self.text, re.M)
        m = re.search(r"^m=audio (\d+)", self.text, re.M)
        return (c.group(1), int(m.group(1))) if c and m else None


def parse_sip_trace(log_text: str) -> list[TracedMessage]:
    out = []
    heads = list(_TRACE_HEAD.finditer(log_text))
    for i, h in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(log_text)
        body = log_text[h.end():end]
        cut = body.find(_TRACE_END)
        text = (body if cut < 0 else body[:cut]).replace("\r\n", "\n").strip("\n")
        out.append(TracedMessage(h.group(2), h.group(3), text.split("\n", 1)[0], text))
    return out


class CallFailed(AssertionError):
    """The call closed before it was established; the message is baresip's reason."""
