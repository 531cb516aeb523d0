"""Start-up and the process model.

For now one process: it binds listen:port and serves (the multiprocess supervisor with
SO_REUSEPORT workers replaces this body).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal

from natserver import log as logsetup
from natserver.context import Context
from natserver.script import Script
from natserver.stats import Stats
from natserver.workers.sip import SocketTransport, bind_udp, serve

log = logging.getLogger("natserver.supervisor")


def build_context(script: Script, cfg_path: str) -> Context:
    """The Context every process starts from: cfg, script, modules (init done)."""
    ctx = Context(script.config, cfg_path)
    ctx.script = script
    ctx.secret = os.urandom(16)
    ctx.set_modules(script.modules)
    for module in script.modules.values():
        module.init(ctx)
    return ctx


def run(script: Script, args: argparse.Namespace) -> int:
    cfg = script.config
    logsetup.setup(cfg.debug, to_stderr=args.stderr or cfg.log_stderror,
                   facility=cfg.log_facility, syslog_socket=cfg.syslog_socket)
    ctx = build_context(script, args.cfg)
    host, port = ctx.listen
    try:
        sock = bind_udp(host, port)
    except OSError as exc:
        log.critical("cannot bind %s:%s: %s", host, port, exc.strerror)
        return 1
    ctx.transport = SocketTransport(sock, ctx)
    ctx.stats = Stats()
    for module in script.modules.values():
        module.child_init(ctx)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.log(logsetup.NOTICE, "natserver listening on udp:%s:%s", *sock.getsockname()[:2])
    serve(ctx, sock, lambda: stop)
    for module in script.modules.values():
        module.shutdown(ctx)
    log.log(logsetup.NOTICE, "natserver stopped")
    return 0
