"""Address helpers: IP literal tests, private (RFC 1918 / RFC 6598) ranges, host:port.

Hosts are ``str`` as the SIP parsers hand them over (lower-case, IPv6 without
brackets). Nothing here resolves names: a host that is not an IP literal is reported
as such and the caller decides (nat_uac_test treats it as "not private", the pinger
skips it).

The private ranges are those nat_uac_test has always meant by "RFC 1918" plus the
RFC 6598 shared address space that carrier-grade NATs hand out (Kamailio adds it too):
10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10. Only IPv4 has them; an IPv6
address is never private here (SER and Kamailio test IPv4 only).
"""

from __future__ import annotations

import ipaddress
import socket

DEFAULT_SIP_PORT = 5060

_DIGITS = frozenset("0123456789")


def ipv4_octets(host: str) -> tuple[int, int, int, int] | None:
    """The four octets of a dotted-quad IPv4 literal, None for anything else.

    Strict: exactly four decimal parts of 1-3 digits, each <= 255, no leading zeros
    (inet_aton reads ``010`` as octal; its ``10.1`` and ``0x0a.0.0.1`` forms are not
    addresses a SIP header should carry).
    """
    parts = host.split(".")
    if len(parts) != 4:
        return None
    out = []
    for p in parts:
        if not 0 < len(p) <= 3 or not _DIGITS.issuperset(p) or (p[0] == "0" and len(p) > 1):
            return None
        n = int(p)
        if n > 255:
            return None
        out.append(n)
    return out[0], out[1], out[2], out[3]


def is_private(host: str) -> bool:
    """Is ``host`` an IPv4 literal in 10/8, 172.16/12, 192.168/16 or 100.64/10?"""
    o = ipv4_octets(host)
    if o is None:
        return False
    a, b = o[0], o[1]
    return (a == 10 or (a == 172 and 16 <= b <= 31) or (a == 192 and b == 168)
            or (a == 100 and 64 <= b <= 127))


def is_ipv6(host: str) -> bool:
    """Is ``host`` (brackets allowed) an IPv6 literal?"""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" not in host:
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def ip_family(host: str) -> int | None:
    """``socket.AF_INET`` / ``AF_INET6`` for an IP literal, None for a name."""
    if ipv4_octets(host) is not None:
        return socket.AF_INET
    if is_ipv6(host):
        return socket.AF_INET6
    return None


def is_ip_literal(host: str) -> bool:
    return ip_family(host) is not None


def normalise_ip(host: str) -> str:
    """An IP literal in its canonical text (IPv6 compressed, no brackets); any other
    host lower-cased and unchanged otherwise."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return host.lower()
    return host.lower()


def same_ip(a: str, b: str) -> bool:
    """Do two host strings name the same IP address (``::1`` == ``0:0::1``)? Names
    compare as text (no DNS)."""
    if a == b:
        return True
    if ":" in a or ":" in b:
        return normalise_ip(a) == normalise_ip(b)
    return False


def format_host(host: str) -> str:
    """A host for a URI, Via or ``host:port``: IPv6 gets its brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def format_hostport(host: str, port: int) -> str:
    return f"{format_host(host)}:{port}"


def parse_hostport(text: str, default_port: int = DEFAULT_SIP_PORT) -> tuple[str, int]:
    """``"1.2.3.4:5060"``, ``"[2001:db8::1]:5070"``, ``"host"``, bare ``"2001:db8::1"``
    -> (host without brackets, port). ValueError for a malformed text or port."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if not is_ipv6(host):
            raise ValueError(f"{host!r} is not an IPv6 address")
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"garbage after ']' in {text!r}")
        return host, _port(rest[1:], text)
    if text.count(":") > 1:  # a bare IPv6 address: no port can be told apart
        if not is_ipv6(text):
            raise ValueError(f"{text!r} is not an address")
        return text, default_port
    host, colon, port = text.partition(":")
    if not host:
        raise ValueError(f"no host in {text!r}")
    return host.lower(), _port(port, text) if colon else default_port


def _port(text: str, whole: str) -> int:
    if not text or not _DIGITS.issuperset(text) or len(text) > 5:
        raise ValueError(f"bad port in {whole!r}")
    port = int(text)
    if not 0 < port <= 65535:
        raise ValueError(f"port out of range in {whole!r}")
    return port
