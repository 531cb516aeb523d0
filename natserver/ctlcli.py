"""``natserverctl``: talk to a running natserver (serctl's successor).

    natserverctl [-f CFG] [--fifo PATH] [--socket PATH] [--db URL] [--json] COMMAND [ARGS...]

It finds the server the way serctl did, from the cfg (default
/etc/natserver/natserver.cfg): ``fifo=`` and ``ctl_socket=`` say where the server
listens (the socket defaults to ``<fifo>.sock``); ``fifo_db_url`` or a ``db_url``
modparam is the database for provisioning commands. The cfg is read with a light line
scanner, not compiled: natserverctl must work with a cfg whose modules it cannot load,
and must not import the server. The unix socket is preferred (JSON replies); when it is
missing the FIFO is used with SER's request format (text replies).

Output: aligned tables, or JSON with ``--json``. Exit codes: 0 ok, 1 the command
failed, 2 usage, 3 the server cannot be reached.

Commands are rows of ``COMMANDS`` (name, help, how to run, how to print); a name that
is not a row is passed to the server as is, so module RPC commands need no client row.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from natserver import ctl_protocol as proto

DEFAULT_CFG = "/etc/natserver/natserver.cfg"
DEFAULT_TIMEOUT = 5.0

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Unreachable(Exception):
    """Neither the ctl socket nor the FIFO answers."""


# ---- reading the cfg (light scanner) ----------------------------------------------

_ASSIGN = re.compile(r'^\s*(fifo|ctl_socket|fifo_db_url)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s#;]+)')
_MODPARAM = re.compile(r'^\s*modparam\s*\(\s*"[^"]*"\s*,\s*"db_url"\s*,\s*"((?:[^"\\]|\\.)*)"')


@dataclass(slots=True)
class Target:
    """Where the server listens, as far as the cfg and the flags tell."""

    fifo: str = ""
    socket: str = ""
    db_url: str = ""


def read_cfg(path: str) -> dict[str, str]:
    """``fifo``, ``ctl_socket``, ``fifo_db_url`` and the first ``db_url`` modparam."""
    found: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            m = _ASSIGN.match(line)
            if m:
                value = m.group(2)
                if value.startswith('"'):
                    value = value[1:-1].replace('\\"', '"')
                found.setdefault(m.group(1), value)
                continue
            m = _MODPARAM.match(line)
            if m:
                found.setdefault("db_url", m.group(1))
    return found


def find_target(args: argparse.Namespace) -> Target:
    values: dict[str, str] = {}
    try:
        values = read_cfg(args.cfg)
    except OSError as exc:
        if args.cfg_given or not (args.fifo or args.socket):
            raise Unreachable(f"cannot read {args.cfg}: {exc.strerror}") from None
    target = Target(fifo=args.fifo or values.get("fifo", ""))
    if args.socket:
        target.socket = args.socket
    elif values.get("ctl_socket") and not args.fifo:
        target.socket = values["ctl_socket"]
    elif target.fifo:
        target.socket = f"{target.fifo}.sock"
    target.db_url = args.db or values.get("fifo_db_url") or values.get("db_url", "")
    return target


# ---- transports --------------------------------------------------------------------

def call_socket(path: str, req: proto.Request, timeout: float) -> proto.Reply:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise Unreachable(f"ctl socket {path}: {exc.strerror}") from None
        sock.sendall(proto.encode_request(req))
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except TimeoutError:
        raise Unreachable(f"ctl socket {path}: no answer within {timeout:.0f} s") from None
    finally:
        sock.close()
    return proto.decode_reply(b"".join(chunks))


def call_fifo(path: str, req: proto.Request, timeout: float) -> proto.Reply:
    """SER's way: a reply FIFO in /tmp, named in the request's first line."""
    name = f"natserverctl_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    reply_path = os.path.join("/tmp", name)
    os.mkfifo(reply_path, 0o600)
    try:
        os.chmod(reply_path, 0o622)  # the server may run as another user (serctl: a+w)
        rfd = os.open(reply_path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            try:
                wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                raise Unreachable(f"fifo {path}: {exc.strerror}") from None
            try:
                os.write(wfd, proto.format_fifo_request(
                    proto.Request(req.cmd, req.args, name)))
            finally:
                os.close(wfd)
            return proto.parse_fifo_reply(_read_reply(rfd, timeout, path))
        finally:
            os.close(rfd)
    finally:
        os.unlink(reply_path)


def _read_reply(fd: int, timeout: float, path: str) -> bytes:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unreachable(f"fifo {path}: no answer within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        data = os.read(fd, 65536)
        if data:
            chunks.append(data)
        elif chunks:
            return b"".join(chunks)  # the server wrote and closed its end
        else:
            time.sleep(0.01)  # no writer yet: Linux may report EOF before the first one


def call(target: Target, req: proto.Request, timeout: float) -> tuple[proto.Reply, str]:
    """Ask the server; prefers the socket. Returns the reply and the transport used."""
    if target.socket and os.path.exists(target.socket):
        try:
            return call_socket(target.socket, req, timeout), "socket"
        except Unreachable:
            if not target.fifo:
                raise
    if target.fifo:
        return call_fifo(target.fifo, req, timeout), "fifo"
    raise Unreachable("no fifo= or ctl_socket= in the cfg: give --fifo or --socket")


# ---- commands ------------------------------------------------------------------------

def render_stats(data: Any) -> str:
    """Per-process counters without the columns that are zero everywhere."""
    if not isinstance(data, list) or not data:
        return proto.render(data)
    keep = [k for k in data[0] if k in ("proc", "pid")
            or any(row.get(k) for row in data)]
    return proto.format_table([{k: row.get(k) for k in keep} for row in data])


def render_rtp(data: Any) -> str:
    """Relay sessions, one row per stream (side 0 -> side 1), then the relays' load."""
    if not isinstance(data, dict):
        return proto.render(data)
    rows = []
    for s in data.get("sessions", []):
        rows.append({
            "call-id": s["callid"], "media": s["media"], "relay": s["relay"],
            "state": s["state"],
            "ports": "/".join(str(p) for p in s["ports"]),
            "caller": s["latched"][0] or f"({s['signalled'][0] or '-'})",
            "callee": s["latched"][1] or f"({s['signalled'][1] or '-'})",
            "packets": "%d/%d" % tuple(s["packets"]), "dropped": s["dropped"],
            "age": s["age"], "idle": s["idle"]})
    parts = [proto.format_table(rows) if rows else "no relay sessions"]
    relays = data.get("relays", [])
    if relays:
        parts.append(proto.format_table(relays))
    return "\n\n".join(parts)


@dataclass(frozen=True, slots=True)
class CliCommand:
    name: str
    help: str
    render: Callable[[Any], str] = proto.render
    local: bool = False  # works on the database itself (natserver.ctl_db), not the server


COMMANDS: dict[str, CliCommand] = {c.name: c for c in (
    CliCommand("ps", "processes: pid, title, uptime, CPU, memory"),
    CliCommand("uptime", "server start time and uptime"),
    CliCommand("version", "server version"),
    CliCommand("stats", "per-process counters [names...]", render_stats),
    CliCommand("rtp", "RTP relay sessions and relay load", render_rtp),
    CliCommand("which", "commands the server answers"),
    CliCommand("ul", "location: ul show [AOR] | ul rm AOR | ul flush"),
    CliCommand("add", "add a subscriber: USER@DOMAIN PASSWORD (database)", local=True),
    CliCommand("rm", "remove a subscriber: USER@DOMAIN (database)", local=True),
    CliCommand("passwd", "change a password: USER@DOMAIN PASSWORD (database)", local=True),
    CliCommand("alias", "alias add ALIAS URI | alias rm ALIAS | alias show", local=True),
    CliCommand("db", "db init [--print]: create the tables (or print the SQL)", local=True),
)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    rows = "\n".join(f"  {c.name:<10} {c.help}" for c in COMMANDS.values())
    parser = argparse.ArgumentParser(
        prog="natserverctl", description="Talk to a running natserver.",
        epilog=f"commands:\n{rows}\n  (any other name is sent to the server as is;"
               " 'which' lists them)\n\nexit codes: 0 ok, 1 command failed, 2 usage,"
               " 3 server not reachable",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-f", dest="cfg", default=None,
                        help=f"natserver cfg to read fifo/db_url from (default {DEFAULT_CFG})")
    parser.add_argument("--fifo", help="the server's FIFO (overrides the cfg)")
    parser.add_argument("--socket", help="the server's ctl socket (overrides the cfg)")
    parser.add_argument("--db", help="database URL (overrides the cfg)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds to wait for the answer")
    parser.add_argument("command", help="command name")
    parser.add_argument("args", nargs="*", help="command arguments")
    args, unknown = parser.parse_known_args(argv)
    command = COMMANDS.get(args.command)
    if unknown:  # options after a database command are its own (db init --print)
        if command is None or not command.local:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.args += unknown
    args.cfg_given = args.cfg is not None
    args.cfg = args.cfg or DEFAULT_CFG
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    out = sys.stdout
    command = COMMANDS.get(args.command)
    if command is not None and command.local:
        return run_local(args, out)
    try:
        target = find_target(args)
        reply, via = call(target, proto.Request(args.command, list(args.args)), args.timeout)
    except Unreachable as exc:
        sys.stderr.write(f"natserverctl: server not reachable: {exc}\n")
        return EXIT_UNREACHABLE
    except proto.ProtocolError as exc:
        sys.stderr.write(f"natserverctl: {exc}\n")
        return EXIT_FAILED
    if not reply.ok:
        if args.json:
            out.write(orjson.dumps({"status": reply.status, "error": reply.reason}).decode() + "\n")
        else:
            sys.stderr.write(f"natserverctl: {reply.status} {reply.reason}\n")
        return EXIT_FAILED
    if args.json:
        data = reply.data if via == "socket" else {"text": reply.data}
        out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    text = reply.data if via == "fifo" else (command.render if command else proto.render)(reply.data)
    if text:
        out.write(text.rstrip("\n") + "\n")
    return EXIT_OK


def run_local(args: argparse.Namespace, out: Any) -> int:
    """A database command (natserver.ctl_db): printed like a server reply."""
    from natserver import ctl_db
    code, data, error = ctl_db.run(args)
    if code != EXIT_OK:
        if args.json:
            out.write(orjson.dumps({"status": code, "error": error}).decode() + "\n")
        else:
            sys.stderr.write(f"natserverctl: {error}\n")
        return code
    if args.json:
        out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        text = proto.render(data)
        if text:
            out.write(text.rstrip("\n") + "\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
