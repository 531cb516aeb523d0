"""HTTP Digest for SIP (RFC 2617, RFC 7616, RFC 8760, RFC 3261 22), sans-IO.

Parses ``Authorization``/``Proxy-Authorization`` credentials and ``WWW-``/
``Proxy-Authenticate`` challenges, computes HA1/HA2/response for MD5, SHA-256 and
SHA-512-256 (each also ``-sess``) with qop none/``auth``/``auth-int``, builds challenge
and credentials header values, and issues/checks stateless nonces.

Stateless nonces
----------------
SER's layout, with an HMAC instead of a bare MD5 of text + secret::

    8 lowercase hex of the expiry time (unix seconds)
    [8 lowercase hex of an index]                    (optional)
    32 lowercase hex: HMAC-SHA256(secret, the hex before it), truncated to 128 bits

so a plain nonce is 40 characters like SER's, one with an index 48. Any worker holding
the secret (made before forking) accepts any worker's nonce; ``now`` is a parameter.

Replay protection, for the auth module to build: issue every nonce with ``index`` =
a counter kept in shared memory, and keep a shm array ``last_nc[index % size]`` holding
``(expiry, highest nc seen)``. After :func:`check_nonce` says VALID, accept the request
only if the slot's expiry equals the nonce's (else the slot was reused: treat the nonce as
stale) and ``nc`` is above the stored count; then store ``nc``. For qop-less requests
(no ``nc``) the same slot works as a one-time-use bit. :func:`nonce_index` and
:func:`nonce_expiry` read the two fields back.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from natserver.errors import SipError

_W = rb"[ \t\r\n]*"
_TOKEN = rb"[A-Za-z0-9\-.!%*_+`'~]+"
_SCHEME = re.compile(_W + rb"(" + _TOKEN + rb")(?:[ \t\r\n]+|$)")
_ITEM = re.compile(_W + rb"(" + _TOKEN + rb")" + _W + rb"=" + _W
                   + rb'("(?:[^"\\]|\\.)*+"|[^\x00-\x20\x7f,"]+)' + _W, re.S)
# The whole k=v list in one possessive regex (no backtracking; empty items after a comma
# tolerated); once it matched, findall(_ITEM) returns exactly its items.
_P = rb"[ \t\r\n]*+"
_ITEM_NC = (_P + _TOKEN + rb"+" + _P + rb"=" + _P
            + rb'(?:"(?:[^"\\]|\\.)*+"|[^\x00-\x20\x7f,"]++)' + _P)
_LIST = re.compile(rb"(?:" + _ITEM_NC + rb"(?:(?:," + _P + rb")++" + _ITEM_NC + rb")*+(?:,"
                   + _P + rb")*+)?+", re.S)
_UNESCAPE = re.compile(rb"\\(.)", re.S)
_HEX = re.compile(r"[0-9a-f]+")

# Parameters without which credentials cannot be checked (RFC 2617 3.2.2).
REQUIRED = ("username", "realm", "nonce", "uri", "response")


@dataclass(slots=True)
class Credentials:
    """Parsed credentials. Values are unquoted text; ``algorithm`` upper-case (MD5 when
    absent), ``qop`` lower-case. ``hdr_start``/``hdr_end`` span the header line(s) in the
    message (set by ``Message.authorizations``) so consume_credentials can delete it."""

    scheme: str
    username: str | None = None
    realm: str | None = None
    nonce: str | None = None
    uri: str | None = None
    response: str | None = None
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    hdr_start: int = -1
    hdr_end: int = -1

    def missing(self) -> list[str]:
        """Names of the parameters a checkable Digest answer lacks (empty when complete)."""
        if self.scheme != "digest":
            return ["digest"]
        out = [name for name in REQUIRED if getattr(self, name) is None]
        if self.qop is not None and self.nc is None:
            out.append("nc")
        if self.cnonce is None and (self.qop is not None or self.algorithm.endswith("-SESS")):
            out.append("cnonce")  # -sess hashes it into HA1 even without qop
        return out


@dataclass(slots=True)
class Challenge:
    """A parsed ``WWW-Authenticate``/``Proxy-Authenticate`` value."""

    scheme: str
    realm: str | None = None
    nonce: str | None = None
    opaque: str | None = None
    stale: bool = False
    algorithm: str = "MD5"
    qop: list[str] = field(default_factory=list)
    domain: str | None = None
    params: dict[str, str] = field(default_factory=dict)


def _auth_params(data: bytes, start: int, end: int, header: str) -> tuple[str, dict[str, str]]:
    """The scheme (lower-case) and its ``name=value`` list (names lower-case, values
    unquoted, UTF-8). Schemes other than Digest get no params."""
    m = _SCHEME.match(data, start, end)
    if m is None:
        raise SipError(400, f"Bad {header} header")
    scheme = m.group(1).decode("ascii").lower()
    params: dict[str, str] = {}
    if scheme != "digest":
        return scheme, params
    if _LIST.fullmatch(data, m.end(), end) is None:
        raise SipError(400, f"Bad {header} header")
    try:
        for name, value in _ITEM.findall(data, m.end(), end):
            if value[:1] == b'"':
                value = value[1:-1]
                if b"\\" in value:
                    value = _UNESCAPE.sub(rb"\1", value)
            params.setdefault(name.decode("ascii").lower(), value.decode("utf-8"))
    except UnicodeDecodeError:
        raise SipError(400, f"Bad {header} header") from None
    return scheme, params


def parse_credentials(data: bytes, start: int = 0, end: int | None = None,
                      header: str = "Authorization") -> Credentials:
    """Parse ``Digest username="..", realm=.., ...`` (quoted or token values, any case
    of names, LWS anywhere). Raises ``SipError(400, "Bad <header> header")``; a missing
    parameter is not an error here (see :meth:`Credentials.missing`)."""
    scheme, p = _auth_params(data, start, len(data) if end is None else end, header)
    get = p.get
    return Credentials(scheme, get("username"), get("realm"), get("nonce"), get("uri"),
                       get("response"), (get("algorithm") or "MD5").upper(),
                       (get("qop") or "").lower() or None, get("nc"), get("cnonce"),
                       get("opaque"), p)


def parse_challenge(data: bytes, start: int = 0, end: int | None = None,
                    header: str = "WWW-Authenticate") -> Challenge:
    """Parse ``Digest realm="..", nonce="..", qop="auth,auth-int", stale=true, ...``."""
    scheme, p = _auth_params(data, start, len(data) if end is None else end, header)
    get = p.get
    qop = [q.strip().lower() for q in (get("qop") or "").split(",") if q.strip()]
    return Challenge(scheme, get("realm"), get("nonce"), get("opaque"),
                     (get("stale") or "").lower() == "true", (get("algorithm") or "MD5").upper(),
                     qop, get("domain"), p)


# ---- hashes ---------------------------------------------------------------------------
def _sha512_256(data: bytes) -> hashlib._Hash:
    return hashlib.new("sha512_256", data)


_HASHES: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
    "SHA-512-256": _sha512_256,
}


def hash_for(name: str) -> tuple[Callable[[bytes], hashlib._Hash], bool]:
    """The hash function of an algorithm name and whether it is a ``-sess`` variant."""
    upper = name.upper()
    sess = upper.endswith("-SESS")
    fn = _HASHES.get(upper[:-5] if sess else upper)
    if fn is None:
        raise SipError(400, f"Unsupported digest algorithm {name}")
    return fn, sess


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _h(fn: Callable[[bytes], hashlib._Hash], *parts: str | bytes) -> str:
    return fn(b":".join(_b(p) for p in parts)).hexdigest()


def ha1(username: str | bytes, realm: str | bytes, password: str | bytes,
        algo: str = "MD5", nonce: str | None = None, cnonce: str | None = None) -> str:
    """HA1 = H(user:realm:password); for ``-sess`` also H(HA1:nonce:cnonce)."""
    fn, sess = hash_for(algo)
    value = _h(fn, username, realm, password)
    if sess:
        value = sess_ha1(value, nonce or "", cnonce or "", algo)
    return value


def sess_ha1(ha1_hex: str, nonce: str, cnonce: str, algo: str = "MD5-sess") -> str:
    """The session HA1 of a ``-sess`` algorithm from the stored (plain) HA1."""
    return _h(hash_for(algo)[0], ha1_hex, nonce, cnonce)


def ha2(method: str | bytes, uri: str | bytes, qop: str | None = None, body: bytes = b"",
        algo: str = "MD5") -> str:
    """HA2 = H(method:uri), or H(method:uri:H(body)) for ``auth-int``."""
    fn = hash_for(algo)[0]
    if qop == "auth-int":
        return _h(fn, method, uri, fn(body).hexdigest())
    return _h(fn, method, uri)


def response(ha1_hex: str, nonce: str, ha2_hex: str, qop: str | None = None,
             nc: str | None = None, cnonce: str | None = None, algo: str = "MD5") -> str:
    """The request-digest: H(HA1:nonce:HA2), or H(HA1:nonce:nc:cnonce:qop:HA2) with qop."""
    fn = hash_for(algo)[0]
    if qop:
        return _h(fn, ha1_hex, nonce, nc or "", cnonce or "", qop, ha2_hex)
    return _h(fn, ha1_hex, nonce, ha2_hex)


def expected_response(creds: Credentials, method: str | bytes, ha1_hex: str,
                      body: bytes = b"") -> str:
    """The response the credentials should carry, given the user's plain HA1 (the
    ``-sess`` step is applied here)."""
    algo = creds.algorithm
    if hash_for(algo)[1]:
        ha1_hex = sess_ha1(ha1_hex, creds.nonce or "", creds.cnonce or "", algo)
    return response(ha1_hex, creds.nonce or "", ha2(method, creds.uri or "", creds.qop, body,
                                                     algo),
                    creds.qop, creds.nc, creds.cnonce, algo)


def check_response(creds: Credentials, method: str | bytes, ha1_hex: str,
                   body: bytes = b"") -> bool:
    """Does ``creds.response`` match (hex compared ignoring case, in constant time)?"""
    if creds.response is None:
        return False
    want = expected_response(creds, method, ha1_hex, body)
    return hmac.compare_digest(want, creds.response.lower())


# ---- header values --------------------------------------------------------------------
def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_challenge(realm: str, nonce: str, qop: str | None = None, stale: bool = False,
                   algorithm: str | None = None, opaque: str | None = None) -> bytes:
    """A challenge value, in SER's order: ``Digest realm="R", nonce="N"[, opaque="O"]
    [, algorithm=A][, qop="auth"][, stale=true]``."""
    out = [f"Digest realm={_quote(realm)}, nonce={_quote(nonce)}"]
    if opaque is not None:
        out.append(f", opaque={_quote(opaque)}")
    if algorithm:
        out.append(f", algorithm={algorithm}")
    if qop:
        out.append(f", qop={_quote(qop)}")
    if stale:
        out.append(", stale=true")
    return "".join(out).encode("utf-8")


def make_credentials(challenge: Challenge, username: str, password: str,
                     method: str | bytes, uri: str, *, cnonce: str | None = None,
                     nc: int = 1, body: bytes = b"", qop: str | None = None) -> bytes:
    """The ``Authorization`` value answering ``challenge`` (a UA's side: load generator,
    tests). ``qop`` defaults to ``auth`` when offered, else ``auth-int`` when that alone is
    offered, else none."""
    algo = challenge.algorithm
    realm = challenge.realm or ""
    nonce = challenge.nonce or ""
    if qop is None and challenge.qop:
        qop = "auth" if "auth" in challenge.qop else challenge.qop[0]
    nc_text = f"{nc:08x}" if qop else None
    sess = hash_for(algo)[1]
    if not (qop or sess):
        cnonce = None
    elif cnonce is None:
        cnonce = secrets.token_hex(8)
    key = ha1(username, realm, password, algo, nonce, cnonce)
    resp = response(key, nonce, ha2(method, uri, qop, body, algo), qop, nc_text, cnonce, algo)
    out = [f"Digest username={_quote(username)}, realm={_quote(realm)}, "
           f"nonce={_quote(nonce)}, uri={_quote(uri)}, response={_quote(resp)}"]
    if "algorithm" in challenge.params:
        out.append(f", algorithm={algo}")
    if qop:
        out.append(f", qop={qop}, nc={nc_text}")
    if cnonce is not None:
        out.append(f", cnonce={_quote(cnonce)}")
    if challenge.opaque is not None:
        out.append(f", opaque={_quote(challenge.opaque)}")
    return "".join(out).encode("utf-8")


# ---- stateless nonces -----------------------------------------------------------------
class NonceStatus(enum.IntEnum):
    VALID = 0
    STALE = 1     # ours, but past its expiry: challenge again with stale=true
    INVALID = 2   # not made with our secret (or not a nonce at all)


def _mac(secret: bytes, head: str) -> str:
    return hmac.new(secret, head.encode("ascii"), hashlib.sha256).hexdigest()[:32]


def make_nonce(secret: bytes, now: float, expires: int = 300, index: int | None = None) -> str:
    """A nonce valid until ``now + expires``; ``index`` (0..2**32-1) is carried along for
    nonce-count tracking."""
    head = f"{(int(now) + expires) & 0xFFFFFFFF:08x}"
    if index is not None:
        head += f"{index & 0xFFFFFFFF:08x}"
    return head + _mac(secret, head)


def check_nonce(nonce: str, secret: bytes, now: float) -> NonceStatus:
    """VALID, STALE (ours but expired) or INVALID."""
    if len(nonce) not in (40, 48) or not _HEX.fullmatch(nonce):
        return NonceStatus.INVALID
    head = nonce[:-32]
    if not hmac.compare_digest(_mac(secret, head), nonce[-32:]):
        return NonceStatus.INVALID
    return NonceStatus.STALE if int(head[:8], 16) < now else NonceStatus.VALID


def nonce_expiry(nonce: str) -> int | None:
    """The expiry time written in a nonce of ours (unchecked), None if not one."""
    if len(nonce) not in (40, 48) or not _HEX.fullmatch(nonce):
        return None
    return int(nonce[:8], 16)


def nonce_index(nonce: str) -> int | None:
    """The index a 48-character nonce carries (unchecked), None for a plain one."""
    if len(nonce) != 48 or not _HEX.fullmatch(nonce):
        return None
    return int(nonce[8:16], 16)
