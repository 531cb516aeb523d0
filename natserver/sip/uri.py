"""SIP, SIPS and tel URIs: parse, format, rewrite host:port, compare (RFC 3261 19.1).

``parse_uri`` keeps the user part as written (``%``-escapes and all) and remembers where
the host:port sits in the text, so :func:`replace_host_port` can swap it while every
other byte stays as the sender wrote it (what ``fix_nated_contact`` needs).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_to_bytes

from natserver.errors import SipError

SCHEMES = (b"sip", b"sips", b"tel")
DEFAULT_PORTS = {"sip": 5060, "sips": 5061, "tel": 5060}

# Possessive quantifiers keep the userinfo look-ahead linear on long URIs.
_NOT = rb"\x00-\x20\x7f<>\""
_SIP = re.compile(
    rb"(?:([^" + _NOT + rb"@:]*+)(?::([^" + _NOT + rb"@:]*+))?@)?"
    rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)"
    rb"(?::([0-9]{1,5}))?"
    rb"((?:;[^" + _NOT + rb";?=]+(?:=[^" + _NOT + rb";?]*)?)*+)"
    rb"(?:\?([^" + _NOT + rb"]*))?")
_TEL = re.compile(
    rb"([^" + _NOT + rb";?]+)"
    rb"((?:;[^" + _NOT + rb";?=]+(?:=[^" + _NOT + rb";?]*)?)*+)")
# Characters a telephone number may carry for readability only (RFC 3966 5.1.1).
_VISUAL = re.compile(r"[-.()]")


@dataclass(frozen=True, slots=True)
class Uri:
    """A parsed URI. Strings are the bytes as written (decoded latin-1, so
    ``.encode("latin-1")`` gives them back); ``host`` is lower-case, IPv6 without
    brackets, empty for tel. ``params`` maps lower-case names to values (None for a
    bare ``;lr``). ``host_start``/``hostport_end`` locate host[:port] in ``raw``.

    Shared: :func:`parse_uri` hands out the same object for the same text, so it is
    frozen and its ``params``/``headers`` dicts must be read, never changed."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: dict[str, str | None]
    headers: dict[str, str]
    raw: bytes
    host_start: int = 0
    hostport_end: int = 0

    @property
    def user_unescaped(self) -> str | None:
        """The user part with %-escapes resolved (UTF-8, invalid bytes replaced)."""
        if self.user is None:
            return None
        if "%" not in self.user:
            return self.user
        return unquote_to_bytes(self.user).decode("utf-8", "replace")

    @property
    def transport(self) -> str:
        """The ``transport`` param in lower case, ``udp`` when absent (``tls`` for sips)."""
        value = self.params.get("transport")
        if value:
            return value.lower()
        return "tls" if self.scheme == "sips" else "udp"

    def host_port(self) -> tuple[str, int]:
        """Where the URI points: host and port, the scheme's default port filled in."""
        return self.host, self.port if self.port is not None else DEFAULT_PORTS[self.scheme]

    def format(self) -> bytes:
        """The URI rebuilt from its fields (parameter names come out lower-case)."""
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += (":", self.password)
            if self.scheme != "tel":
                out.append("@")
        if self.host:
            out.append(f"[{self.host}]" if ":" in self.host else self.host)
        if self.port is not None:
            out += (":", str(self.port))
        for name, value in self.params.items():
            out += (";", name) if value is None else (";", name, "=", value)
        if self.headers:
            out += ("?", "&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(out).encode("latin-1")


def _params(text: bytes) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in text.split(b";")[1:]:
        name, eq, value = item.partition(b"=")
        key = name.decode("latin-1").lower()
        if key not in params:
            params[key] = value.decode("latin-1") if eq else None
    return params


def parse_uri(data: bytes) -> Uri:
    """Parse a sip:, sips: or tel: URI. ``SipError(416)`` for another scheme,
    ``SipError(400, "Bad URI")`` for bad syntax.

    Remembered per text (the last 4096 URIs of this process; a call's URIs come back in
    every message of its dialog and several cfg tests parse the R-URI again): a repeat
    costs a dict lookup instead of about 3 us (loadtest/hotpath_bench.py)."""
    if type(data) is not bytes:  # a bytearray or memoryview cannot be a cache key
        data = bytes(data)
    return _parse_uri(data)


@lru_cache(maxsize=4096)
def _parse_uri(data: bytes) -> Uri:
    colon = data.find(b":")
    scheme = data[:colon].lower()
    if scheme not in SCHEMES:
        if colon > 0 and re.fullmatch(rb"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
            raise SipError(416, "Unsupported URI Scheme")
        raise SipError(400, "Bad URI")
    pos = colon + 1
    if scheme == b"tel":
        t = _TEL.fullmatch(data, pos)
        if t is None:
            raise SipError(400, "Bad URI")
        return Uri("tel", t.group(1).decode("latin-1"), None, "", None, _params(t.group(2)),
                   {}, data, t.start(1), t.end(1))
    m = _SIP.fullmatch(data, pos)
    if m is None:
        raise SipError(400, "Bad URI")
    user, password, host, port, params, headers = m.groups()
    if host[0] == 91:  # '[' IPv6 reference
        host = host[1:-1]
    port_num = None
    if port is not None:
        port_num = int(port)
        if port_num > 65535:
            raise SipError(400, "Bad URI")
    hdrs: dict[str, str] = {}
    if headers:
        for item in headers.split(b"&"):
            name, _, value = item.partition(b"=")
            hdrs[name.decode("latin-1")] = value.decode("latin-1")
    return Uri(
        scheme.decode("ascii"),
        None if user is None else user.decode("latin-1"),
        None if password is None else password.decode("latin-1"),
        host.decode("ascii").lower(),
        port_num,
        _params(params) if params else {},
        hdrs,
        data,
        m.start(3),
        m.end(4) if port is not None else m.end(3),
    )


def format_host(host: str) -> str:
    """A host for a URI or Via: IPv6 addresses get their brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def replace_host_port(uri_text: bytes, host: str, port: int) -> bytes:
    """``uri_text`` with its host[:port] replaced by ``host:port`` (the port always
    written, IPv6 bracketed); the user part, params and headers are kept byte for byte."""
    u = parse_uri(uri_text)
    if u.scheme == "tel":
        raise SipError(400, "Bad URI")
    return b"%s%s:%d%s" % (uri_text[:u.host_start], format_host(host).encode("ascii"), port,
                           uri_text[u.hostport_end:])


def _unescape(value: str) -> bytes:
    return unquote_to_bytes(value) if "%" in value else value.encode("latin-1")


def _same_host(a: str, b: str) -> bool:
    if a == b:
        return True
    if ":" in a and ":" in b:  # IPv6 written two ways
        try:
            return ipaddress.ip_address(a) == ipaddress.ip_address(b)
        except ValueError:
            return False
    return False


# Params that must be in both URIs (and equal) when either has them (19.1.4).
_MUST_MATCH = ("user", "ttl", "method", "maddr", "transport")


def uri_equal(a: Uri | bytes, b: Uri | bytes) -> bool:
    """RFC 3261 19.1.4 comparison. Bytes are parsed first; an unparsable URI equals
    nothing."""
    try:
        ua = a if isinstance(a, Uri) else parse_uri(a)
        ub = b if isinstance(b, Uri) else parse_uri(b)
    except SipError:
        return False
    if ua.scheme != ub.scheme:
        return False
    if ua.scheme == "tel":
        if _VISUAL.sub("", ua.user or "").lower() != _VISUAL.sub("", ub.user or "").lower():
            return False
        if ua.params.keys() != ub.params.keys():
            return False
        return all(_param_eq(ua.params[k], ub.params[k]) for k in ua.params)
    # userinfo is case-sensitive but escapes are equivalent to the characters
    if (ua.user is None) != (ub.user is None) or (ua.password is None) != (ub.password is None):
        return False
    if ua.user is not None and _unescape(ua.user) != _unescape(ub.user or ""):
        return False
    if ua.password is not None and _unescape(ua.password) != _unescape(ub.password or ""):
        return False
    if not _same_host(ua.host, ub.host) or ua.port != ub.port:
        return False
    for name in _MUST_MATCH:
        if (name in ua.params) != (name in ub.params):
            return False
    for name, value in ua.params.items():
        if name in ub.params and not _param_eq(value, ub.params[name]):
            return False
    ha = {k.lower(): _unescape(v) for k, v in ua.headers.items()}
    hb = {k.lower(): _unescape(v) for k, v in ub.headers.items()}
    return ha == hb


def _param_eq(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return _unescape(a).lower() == _unescape(b).lower()
