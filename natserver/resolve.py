"""Host name resolution for forwarding, with a per-process cache.

t_relay sends to the host of the next-hop URI; most of the time that is an IP address
(a registered contact's received address, a Route written by a proxy), which costs one
dict lookup here. A name is resolved once with the system resolver (A/AAAA records via
``getaddrinfo``; natserver does no SRV/NAPTR lookups, so a URI without a port goes to
5060) and kept ``ttl`` seconds; a failure is kept ``negative_ttl`` seconds so a dead
name does not stall a worker on every retransmission.

SER's ``dns``/``rev_dns`` globals do not switch forwarding lookups off (SER always
resolved next hops); they decide whether the Via host is compared with the source
address after a forward (``dns``) or reverse (``rev_dns``) lookup when the core decides
to add ``received=``. :meth:`Resolver.via_is_source` is that comparison; with the
seed's ``dns=no``/``rev_dns=no`` it is a plain text comparison and no lookup happens.

The lookup functions are injected, so tests run without DNS; ``now`` is a parameter.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("natserver.resolve")

Lookup = Callable[[str], "str | None"]
Reverse = Callable[[str], "list[str]"]


def system_lookup(host: str) -> str | None:
    """The first address the system resolver gives for ``host`` (IPv4 preferred)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            if info[0] == family:
                return str(info[4][0])
    return None


def system_reverse(ip: str) -> list[str]:
    """The names reverse DNS gives for ``ip`` (empty on failure)."""
    try:
        name, aliases, _ = socket.gethostbyaddr(ip)
    except (OSError, UnicodeError):
        return []
    return [name, *aliases]


def ip_literal(host: str) -> str | None:
    """``host`` as a normalised IP address text when it is one, else None."""
    if host.startswith("["):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class Resolver:
    """A cache of host -> address (None = does not resolve) with expiry times."""

    __slots__ = ("ttl", "negative_ttl", "max_entries", "lookup", "reverse", "_cache")

    def __init__(self, *, ttl: float = 300.0, negative_ttl: float = 30.0,
                 max_entries: int = 4096, lookup: Lookup = system_lookup,
                 reverse: Reverse = system_reverse) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.lookup = lookup
        self.reverse = reverse
        self._cache: dict[str, tuple[float, str | None]] = {}

    def resolve(self, host: str, now: float) -> str | None:
        """The address to send to for ``host`` (an IP literal or a name)."""
        hit = self._cache.get(host)
        if hit is not None and (hit[0] < 0 or hit[0] > now):
            return hit[1]
        literal = ip_literal(host)
        if literal is not None:
            self._store(host, -1.0, literal)  # literals never expire
            return literal
        addr = self.lookup(host)
        if addr is None:
            log.info("cannot resolve %s", host)
            self._store(host, now + self.negative_ttl, None)
        else:
            self._store(host, now + self.ttl, addr)
        return addr

    def _store(self, host: str, expires: float, addr: str | None) -> None:
        cache = self._cache
        if len(cache) >= self.max_entries and host not in cache:
            cache.clear()  # rare: a flood of distinct names; start over rather than grow
        cache[host] = (expires, addr)

    def via_is_source(self, via_host: str, src_ip: str, now: float, *, dns: bool = False,
                      rev_dns: bool = False) -> bool:
        """Does the Via host name the source address (SER's received_test, inverted)?
        Text first; with ``dns`` the host's address; with ``rev_dns`` the source's
        names."""
        if via_host == src_ip:
            return True
        literal = ip_literal(via_host)
        if literal is not None and literal == ip_literal(src_ip):
            return True
        if dns and literal is None and self.resolve(via_host, now) == src_ip:
            return True
        if rev_dns:
            low = via_host.lower()
            return any(name.lower() == low for name in self.reverse(src_ip))
        return False
