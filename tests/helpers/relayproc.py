"""Relay process tests: natserver (or natserver-rtpproxy) in a loopback-only netns, the
rtpproxy control protocol over its socket, RTP-sized packets between test endpoints.

The relays forward to addresses read from control commands, so the server runs in a
namespace the test made (tests.helpers.server.Netns); the endpoints' sockets are made
inside it too. Port ranges are per namespace, so fixed ranges cannot collide between
parallel tests.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.helpers.server import ENV, Netns, Proc

PAYLOAD = 160
PORT_MIN, PORT_MAX = 30000, 30399


def rtp(seq: int) -> bytes:
    """An RTP-sized packet: 12-byte header + 160 bytes of payload."""
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x1234) + bytes(PAYLOAD)


def seq_of(data: bytes) -> int:
    return struct.unpack_from("!H", data, 2)[0]


def relay_cfg(tmp: Path, *, relays: int = 1, timeout: int = 60, control: str = "",
              extra: str = "") -> tuple[str, str]:
    """(cfg text, control socket spec) of a signalling-only server with relays."""
    control = control or f"unix:{tmp / 'rtpproxy.sock'}"
    text = f"""
debug=3
fork=no
log_stderror=yes
listen=127.0.0.1
port=0
children=1
fifo="{tmp / 'fifo'}"
rtp_relays={relays}
rtp_port_min={PORT_MIN}
rtp_port_max={PORT_MAX}
rtp_timeout={timeout}
rtp_control_sock="{control}"
{extra}
loadmodule "sl.so"
route {{
  sl_send_reply("404", "Not Here");
}}
"""
    return text, control


def start_natserver(ns: Netns, cfg: str, tmp: Path) -> Proc:
    path = tmp / "natserver.cfg"
    path.write_text(cfg)
    p = Proc(ns, [sys.executable, "-m", "natserver", "-f", str(path), "-D", "-E"], tmp,
             r"listening on udp:")
    p.cfg_path = path  # type: ignore[attr-defined]
    p.wait_ready()
    return p


def ctl_json(cfg_path: Path, *args: str) -> object:
    done = subprocess.run([sys.executable, "-m", "natserver.ctlcli", "-f", str(cfg_path),
                           "--json", *args], capture_output=True, text=True, env=ENV, timeout=20)
    assert done.returncode == 0, done.stderr + done.stdout
    return orjson.loads(done.stdout)


def ctl_text(cfg_path: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "natserver.ctlcli", "-f", str(cfg_path), *args],
                          capture_output=True, text=True, env=ENV, timeout=20)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


class Control:
    """The rtpproxy protocol over ``unix:PATH`` (one connection per command, like
    nathelper) or ``udp:HOST:PORT`` (cookies) from inside the namespace."""

    def __init__(self, ns: Netns, spec: str) -> None:
        self.spec = spec
        self.ns = ns
        self.n = 0
        self.udp: socket.socket | None = None
        if spec.startswith("udp:"):
            host, port = spec[4:].rsplit(":", 1)
            self.addr = (host if host != "0.0.0.0" else "127.0.0.1", int(port))
            self.udp = ns.socket()
            self.udp.settimeout(2.0)

    def __call__(self, text: str) -> str:
        if self.udp is not None:
            self.n += 1
            cookie = f"c{self.n}_{os.getpid()}"
            self.udp.sendto(f"{cookie} {text}".encode(), self.addr)
            while True:
                data = self.udp.recv(65535).decode()
                got, _, body = data.partition(" ")
                if got == cookie:
                    return body.strip()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(self.spec[5:])
            s.sendall(text.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            return buf.decode().strip()

    def close(self) -> None:
        if self.udp is not None:
            self.udp.close()


def port_of(reply: str) -> int:
    assert reply and not reply.startswith("E"), reply
    return int(reply.split()[0])


def exchange(a: socket.socket, a_port: int, b: socket.socket, b_port: int, count: int = 20,
             relay_ip: str = "127.0.0.1") -> tuple[int, int]:
    """a sends ``count`` packets to its relay port, b likewise; returns how many each
    side received (b from a, a from b)."""
    got_b = got_a = 0
    for i in range(count):
        a.sendto(rtp(i), (relay_ip, a_port))
        b.sendto(rtp(1000 + i), (relay_ip, b_port))
        got_b += drain(b, 0.05)
        got_a += drain(a, 0.0)
    got_b += drain(b, 0.2)
    got_a += drain(a, 0.2)
    return got_b, got_a


def drain(sock: socket.socket, wait: float) -> int:
    n = 0
    deadline = time.monotonic() + wait
    while True:
        left = max(0.0, deadline - time.monotonic())
        if not select.select([sock], [], [], left)[0]:
            return n
        sock.recv(4096)
        n += 1
