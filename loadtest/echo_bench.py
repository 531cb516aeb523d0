"""A bare Python UDP forwarder: the reference point for the relay engine's cost.

It binds ``--pairs`` pairs of UDP ports on ``--ip``, learns each port's peer from
its first packet, and forwards every packet that arrives on one port of a pair out of
the other port to that port's peer - epoll, ``recvfrom``, ``sendto``, nothing else.
It prints one JSON line ``{"pid": ..., "pairs": [[a, b], ...]}`` and runs until
SIGTERM or ``--seconds`` (bounded).

Run by ``loadtest/rtp_bench.py --target echo``; by hand::

    python -m loadtest.echo_bench --pairs 100 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--ip", default="127.0.0.1")
    ap.add_argument("--seconds", type=float, default=120.0, help="exit after this long")
    ap.add_argument("--rcvbuf", type=int, default=1 << 20)
    args = ap.parse_args(argv)

    ep = select.epoll()
    socks: list[socket.socket] = []
    for _ in range(2 * args.pairs):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
        s.bind((args.ip, 0))
        s.setblocking(False)
        socks.append(s)
    peers: list[tuple[str, int] | None] = [None] * len(socks)
    # fd -> (socket, its index, the socket packets leave from, the index of its peer)
    table = {}
    for i, s in enumerate(socks):
        j = i ^ 1
        table[s.fileno()] = (s, i, socks[j], j)
        ep.register(s.fileno(), select.EPOLLIN)
    pairs = [[socks[i].getsockname()[1], socks[i + 1].getsockname()[1]]
             for i in range(0, len(socks), 2)]
    sys.stdout.write(json.dumps({"pid": os.getpid(), "pairs": pairs}) + "\n")
    sys.stdout.flush()

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    deadline = time.monotonic() + args.seconds
    while not stop and time.monotonic() < deadline:
        for fd, _ in ep.poll(0.2):
            sock, me, out, other = table[fd]
            try:
                data, addr = sock.recvfrom(2048)
            except OSError:
                continue
            if peers[me] is None:
                peers[me] = addr
            dst = peers[other]
            if dst is not None:
                try:
                    out.sendto(data, dst)
                except OSError:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
