"""A listening unix stream socket that replaces a stale socket file, never a live one.

The ctl endpoint and the rtpproxy control socket both live at a path that survives a
crash: a file left behind by a dead server is removed, one a running server answers on
is refused (two servers must not steal each other's socket).
"""

from __future__ import annotations

import os
import socket


class UnixSocketInUse(Exception):
    """Another process accepts connections on this path."""


def listen_unix(path: str, *, backlog: int, mode: int) -> socket.socket:
    """A non-blocking listening socket at ``path`` with permissions ``mode``.

    UnixSocketInUse when a live process listens there; OSError (with ``strerror``) when
    a stale file cannot be removed or the socket cannot be made."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except OSError:
            pass  # nobody listens: a stale socket file
        else:
            raise UnixSocketInUse(path)
        finally:
            probe.close()
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
