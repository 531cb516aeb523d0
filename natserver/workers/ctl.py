"""The ctl process: management commands on SER's FIFO and on a unix socket.

The supervisor creates both endpoints before fork (:func:`open_endpoints`), so they
outlive a ctl process that crashes: a request written while ctl is being respawned
waits in the FIFO or in the socket's backlog. The ctl process serves them one at a
time (management traffic; every client gets a 2 s budget).

Commands are rows: the core ones below plus every loaded module's ``RPC`` rows
(``Rpc(name, method(self, ctx, args) -> rows | dict)``). A command returns data
(rows, a dict, lines); the FIFO gets it as text after a status line, the socket as
JSON (see :mod:`natserver.ctl_protocol`).
"""

from __future__ import annotations

import datetime
import errno
import logging
import os
import platform
import selectors
import socket
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from natserver import __version__
from natserver import ctl_protocol as proto
from natserver.config import Config
from natserver.context import Context
from natserver.stats import COUNTER_NAMES
from natserver.workers import plan
from natserver.workers.base import IDLE_WAIT, Child
from natserver.workers.unixsock import UnixSocketInUse, listen_unix

log = logging.getLogger("natserver.ctl")

CLIENT_TIMEOUT = 2.0
FIFO_MODE = 0o660
SOCKET_MODE = 0o660
# SER looked for relative reply FIFOs in its fifo_dir, /tmp by default.
SER_FIFO_DIR = "/tmp"


class CtlError(Exception):
    """A ctl endpoint cannot be created (start-up error)."""


# ---- endpoints (created by the supervisor before fork) ----------------------------

@dataclass(slots=True)
class Endpoints:
    fifo_path: str = ""
    fifo_fd: int = -1        # read end, non-blocking
    fifo_keep: int = -1      # a write end kept open so reads never see EOF
    sock_path: str = ""
    sock: socket.socket | None = None

    def fds(self) -> tuple[int, ...]:
        out = [fd for fd in (self.fifo_fd, self.fifo_keep) if fd >= 0]
        if self.sock is not None:
            out.append(self.sock.fileno())
        return tuple(out)

    def close(self, *, unlink: bool) -> None:
        for fd in (self.fifo_fd, self.fifo_keep):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fifo_fd = self.fifo_keep = -1
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if unlink:
            for path in (self.fifo_path, self.sock_path):
                if path:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass


def socket_path(cfg: Config) -> str:
    """Where the ctl socket lives: ``ctl_socket``, else ``<fifo>.sock``, else none."""
    if cfg.ctl_socket:
        return cfg.ctl_socket
    return f"{cfg.fifo}.sock" if cfg.fifo else ""


def open_endpoints(cfg: Config) -> Endpoints:
    """Create the FIFO and the ctl socket the cfg names (CtlError when impossible)."""
    ends = Endpoints()
    try:
        if cfg.fifo:
            ends.fifo_path = cfg.fifo
            ends.fifo_fd, ends.fifo_keep = _open_fifo(cfg.fifo)
        path = socket_path(cfg)
        if path:
            ends.sock_path = path
            ends.sock = _listen_unix(path)
    except CtlError:
        ends.close(unlink=False)
        raise
    return ends


def _open_fifo(path: str) -> tuple[int, int]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISFIFO(st.st_mode):
        raise CtlError(f"fifo {path} exists and is not a FIFO")
    try:
        if st is None:
            os.mkfifo(path, FIFO_MODE)
        os.chmod(path, FIFO_MODE)
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise CtlError(f"cannot create fifo {path}: {exc.strerror}") from None
    return rfd, keep


def _listen_unix(path: str) -> socket.socket:
    try:
        return listen_unix(path, backlog=16, mode=SOCKET_MODE)
    except UnixSocketInUse:
        raise CtlError(f"ctl socket {path} is in use by a running server") from None
    except OSError as exc:
        raise CtlError(f"cannot create ctl socket {path}: {exc.strerror}") from None


# ---- commands ------------------------------------------------------------------------

Handler = Callable[[Context, list[str]], Any]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    fn: Handler
    doc: str


def _which(ctx: Context, args: list[str]) -> Any:
    return [{"command": c.name, "doc": c.doc} for c in commands(ctx).values()]


def _version(ctx: Context, args: list[str]) -> Any:
    return {"server": "natserver", "version": __version__,
            "python": platform.python_version(), "cfg": ctx.cfg_path}


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def _uptime(ctx: Context, args: list[str]) -> Any:
    now = time.time()
    since = psutil.Process(os.getppid()).create_time()
    return {"now": _iso(now), "up_since": _iso(since), "uptime": int(now - since)}


def _pids(ctx: Context) -> list[tuple[int, str, int]]:
    """(index, title, pid) of every slot; pid 0 while a slot has no process."""
    board = _board(ctx)
    out = []
    for proc in plan(ctx.cfg):
        pid = os.getppid() if proc.index == 0 else board.pid(proc.index)
        out.append((proc.index, proc.title, pid))
    return out


def _ps(ctx: Context, args: list[str]) -> Any:
    rows = []
    now = time.time()
    mono = time.monotonic()
    board = _board(ctx)
    for index, title, pid in _pids(ctx):
        row: dict[str, Any] = {"index": index, "pid": pid, "title": title}
        try:
            p = psutil.Process(pid) if pid else None
            if p is not None:
                with p.oneshot():
                    started = p.create_time()
                    cpu = p.cpu_times()
                    rss = p.memory_info().rss
                up = max(0.0, now - started)
                used = cpu.user + cpu.system
                row.update(uptime=int(up), cpu_s=round(used, 2),
                           cpu_pct=round(100.0 * used / up, 1) if up > 0 else 0.0,
                           rss_mb=round(rss / 1048576, 1))
        except psutil.Error:
            p = None
        if p is None:
            row.update(uptime=None, cpu_s=None, cpu_pct=None, rss_mb=None)
        beat = board.heartbeat(index) if index else 0.0
        row["heartbeat_age"] = round(mono - beat, 1) if beat else None
        rows.append(row)
    return rows


def _stats(ctx: Context, args: list[str]) -> Any:
    names = args or list(COUNTER_NAMES)
    unknown = [n for n in names if n not in COUNTER_NAMES]
    if unknown:
        raise ValueError(f"unknown counter(s): {', '.join(unknown)}")
    board = _board(ctx)
    rows = []
    for index, title, pid in _pids(ctx):
        if index == 0:
            continue
        values = dict(zip(COUNTER_NAMES, board.values(index)))
        row: dict[str, Any] = {"proc": title.removeprefix("natserver: "), "pid": pid}
        row.update((n, values[n]) for n in names)
        rows.append(row)
    # what exited processes had counted (folded in by the supervisor when it reaps)
    retired = dict(zip(COUNTER_NAMES, board.retired()))
    rows.append({"proc": "retired", "pid": None, **{n: retired[n] for n in names}})
    return rows


def _rtp(ctx: Context, args: list[str]) -> Any:
    """Relay sessions (from the shm table) and per-relay load."""
    from natserver.rtp.ports import relay_slices
    from natserver.rtp.session import SideState
    from natserver.rtp.store import TABLE_NAME, ShmStore
    relays = int(ctx.cfg.rtp_relays)
    table = ctx.tables.get(TABLE_NAME) if ctx.tables is not None else None
    if relays <= 0 or table is None:
        raise ValueError("no built-in RTP relay (rtp_relays=0)")
    now = time.time()
    sessions = []
    load = {k: {"sessions": 0, "ports_used": 0} for k in range(1, relays + 1)}
    for s in sorted(ShmStore(table).iterate(), key=lambda s: (s.created, s.callid, s.media)):
        sides = s.sides
        sessions.append({
            "callid": s.callid.decode(errors="replace"),
            "media": s.media,
            "tags": [t.decode(errors="replace") for t in s.tags],
            "relay": s.relay,
            "state": s.state.name.lower(),
            "ports": [d.port for d in sides],
            "signalled": [f"{d.sig_ip}:{d.sig_port}" if d.sig_ip else "" for d in sides],
            "latched": [f"{d.peer_ip}:{d.peer_port}"
                        if d.state in (SideState.LATCHED, SideState.LOCKED) else ""
                        for d in sides],
            "side_state": [d.state.name.lower() for d in sides],
            "packets": [d.packets for d in sides],
            "bytes": [d.bytes for d in sides],
            "dropped": sum(d.dropped for d in sides),
            "age": round(now - s.created, 1),
            "idle": round(now - s.idle_since(), 1),
        })
        row = load.get(s.relay)
        if row is not None:
            row["sessions"] += 1
            row["ports_used"] += 4      # RTP and RTCP on each side
    board = _board(ctx)
    titles = {title: index for index, title, _ in _pids(ctx)}
    slices = relay_slices(int(ctx.cfg.rtp_port_min), int(ctx.cfg.rtp_port_max), relays)
    out = []
    for k, (lo, hi) in enumerate(slices, start=1):
        index = titles.get(f"natserver: rtp relay {k}/{relays}", 0)
        values = dict(zip(COUNTER_NAMES, board.values(index))) if index else {}
        row = load[k]
        out.append({"relay": k, "pid": board.pid(index) if index else 0, "ports": f"{lo}-{hi}",
                    "sessions": row["sessions"], "ports_used": row["ports_used"],
                    "ports_free": hi - lo + 1 - row["ports_used"],
                    "packets": values.get("rtp_packets", 0),
                    "dropped": values.get("rtp_dropped", 0)})
    return {"sessions": sessions, "relays": out}


def _board(ctx: Context) -> Any:
    tables = ctx.tables
    board = getattr(tables, "procs", None) if tables is not None else None
    if board is None:
        raise RuntimeError("no per-process table in shared memory")
    return board


CORE: tuple[Command, ...] = (
    Command("ps", _ps, "processes: pid, title, uptime, CPU, memory, heartbeat age"),
    Command("rtp", _rtp, "RTP relay sessions (call-id, sides, latched addresses, packets "
                         "each way, age) and per-relay load"),
    Command("stats", _stats, "per-process counters (+ those of exited processes) "
                             "[counter names...]"),
    Command("uptime", _uptime, "when the server started and for how long it runs"),
    Command("version", _version, "server and Python version"),
    Command("which", _which, "the commands this server answers"),
)


def commands(ctx: Context) -> dict[str, Command]:
    """Core commands, then each loaded module's RPC rows (first definition wins)."""
    table = {c.name: c for c in CORE}
    for module in ctx.modules.values():
        rows = getattr(sys.modules.get(type(module).__module__), "RPC", ())
        for rpc in rows:
            if rpc.name in table:
                continue
            table[rpc.name] = Command(
                rpc.name, lambda c, a, m=module, fn=rpc.method: fn(m, c, a), rpc.doc)
    return table


def execute(ctx: Context, table: dict[str, Command], req: proto.Request) -> proto.Reply:
    """Run one request; every failure becomes a status, never an exception."""
    command = table.get(req.cmd)
    if command is None:
        return proto.Reply(500, f"command '{req.cmd}' not available")
    try:
        data = command.fn(ctx, req.args)
    except ValueError as exc:
        return proto.Reply(400, str(exc) or "bad arguments")
    except Exception as exc:  # a command's bug is answered, the ctl process lives on
        log.exception("ctl command %s failed", req.cmd)
        return proto.Reply(500, f"internal error: {exc}")
    return proto.Reply(200, "ok", data)


# ---- the loop ------------------------------------------------------------------------

def main(ctx: Context, child: Child) -> int:
    ends: Endpoints = child.spec.extra.get("ctl") or Endpoints()
    table = commands(ctx)
    sel = selectors.DefaultSelector()
    reader = proto.FifoReader()
    if ends.fifo_fd >= 0:
        sel.register(ends.fifo_fd, selectors.EVENT_READ, "fifo")
    if ends.sock is not None:
        sel.register(ends.sock, selectors.EVENT_READ, "sock")
    if not ends.fds():
        log.info("no fifo or ctl_socket configured: management commands are off")
    wake = child.wake_fd
    if wake >= 0:
        sel.register(wake, selectors.EVENT_READ, "wake")
    child.flush(time.monotonic())
    while not child.stopping:
        for key, _ in sel.select(IDLE_WAIT):
            if key.data == "fifo":
                _read_fifo(ctx, table, ends, reader)
            elif key.data == "sock":
                _accept(ctx, table, ends)
            else:
                child.drain_wake()
        child.flush(time.monotonic())
    sel.close()
    return 0


def _read_fifo(ctx: Context, table: dict[str, Command], ends: Endpoints,
               reader: proto.FifoReader) -> None:
    while True:
        try:
            data = os.read(ends.fifo_fd, 65536)
        except BlockingIOError:
            return
        except InterruptedError:
            continue
        if not data:
            return
        for req in reader.feed(data):
            reply = execute(ctx, table, req)
            if req.reply_to:
                _write_reply_fifo(ends.fifo_path, req.reply_to, proto.format_fifo_reply(reply))


def reply_fifo_path(fifo_path: str, name: str) -> str | None:
    """Where a FIFO reply goes: an absolute path as given; a plain name in the FIFO's
    directory, else in /tmp (SER's fifo_dir); None when the name is refused."""
    if not proto.reply_fifo_name_ok(name):
        return None
    if name.startswith("/"):
        return name
    here = os.path.join(os.path.dirname(os.path.abspath(fifo_path)), name)
    if os.path.exists(here):
        return here
    return os.path.join(SER_FIFO_DIR, name)


def _write_reply_fifo(fifo_path: str, name: str, data: bytes) -> None:
    path = reply_fifo_path(fifo_path, name)
    if path is None:
        log.warning("refused reply fifo name %r", name)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        log.info("cannot open reply fifo %s: %s", path, exc.strerror)
        return
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            log.warning("reply fifo %s is not a FIFO: not written", path)
            return
        _write_all(fd, data, time.monotonic() + CLIENT_TIMEOUT)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                log.info("reply fifo reader too slow: reply truncated")
                return
            sel = selectors.DefaultSelector()
            sel.register(fd, selectors.EVENT_WRITE)
            sel.select(min(left, 0.1))
            sel.close()
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                log.info("reply fifo write failed: %s", exc.strerror)
            return


def _accept(ctx: Context, table: dict[str, Command], ends: Endpoints) -> None:
    assert ends.sock is not None
    while True:
        try:
            conn, _ = ends.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            _serve_conn(ctx, table, conn)


def _serve_conn(ctx: Context, table: dict[str, Command], conn: socket.socket) -> None:
    conn.settimeout(CLIENT_TIMEOUT)
    buf = b""
    try:
        while b"\n" not in buf and len(buf) <= proto.MAX_REQUEST:
            chunk = conn.recv(65536)
            if not chunk:
                break
            buf += chunk
        if len(buf) > proto.MAX_REQUEST:
            reply = proto.Reply(400, "request too large")
        else:
            try:
                reply = execute(ctx, table, proto.decode_request(buf.split(b"\n", 1)[0]))
            except proto.ProtocolError as exc:
                reply = proto.Reply(400, str(exc))
        conn.sendall(proto.encode_reply(reply))
    except OSError as exc:
        log.info("ctl client failed: %s", exc)
