"""The generator's own minimal SIP: cheap scanning of replies, digest, the UAS side's
request split and replies, SDP.

Independent of natserver on purpose - the generator must load any SIP server, so it
shares no parser with the thing it measures. It only reads what a load test needs:
the status code, our own Via branch (every request we send carries a fixed-width
branch key, so a response finds its transaction with one ``find`` and one slice), the
To tag, the route set and Contact of a 2xx, and a digest challenge. Requests reaching
the UAS side are split into lines once; a table of header names (usual spellings and
compact forms) says which lines a reply copies.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

BRANCH_AT = b"branch=z9hG4bK"
# Every key we mint is exactly this long: a response's branch is sliced, not scanned.
KEY_LEN = 16
SDP_TYPE = b"application/sdp"


class Ids:
    """Fixed-width transaction keys, Call-IDs and tags, unique across processes."""

    __slots__ = ("prefix", "n")

    def __init__(self, prefix: bytes | None = None) -> None:
        # 6 random hex digits (per process) + 10 hex digits of a counter = KEY_LEN
        self.prefix = prefix if prefix is not None else os.urandom(3).hex().encode()
        if len(self.prefix) != 6:
            raise ValueError("Ids prefix must be 6 bytes")
        self.n = 0

    def key(self) -> bytes:
        self.n += 1
        return b"%s%010x" % (self.prefix, self.n)


def status_of(buf: bytes) -> int:
    """The status code of a response, 0 when ``buf`` is not one."""
    if buf[:8] != b"SIP/2.0 " or not buf[8:11].isdigit():
        return 0
    return int(buf[8:11])


def status_text(buf: bytes) -> str:
    """"404 Not Found": the status line without the version, for failure causes."""
    eol = buf.find(b"\r\n", 8, 80)
    return buf[8:eol if eol > 0 else 80].decode("utf-8", "replace").strip()


def branch_key(buf: bytes) -> bytes | None:
    """Our key from the first Via branch in ``buf`` (the top Via of a response)."""
    i = buf.find(BRANCH_AT)
    if i < 0:
        return None
    i += len(BRANCH_AT)
    return buf[i:i + KEY_LEN]


# -- header scanning ------------------------------------------------------------------

_TO_TAG = re.compile(rb"\r\n(?:to|t)[ \t]*:[^\r\n]*?;[ \t]*tag=([^;,\s>]+)", re.I)
_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]+?)[ \t]*\r\n", re.I)
_CSEQ = re.compile(rb"\r\ncseq[ \t]*:[ \t]*(\d+)[ \t]+([A-Za-z]+)", re.I)
_RR = re.compile(rb"\r\nrecord-route[ \t]*:[ \t]*([^\r\n]+)", re.I)
_CONTACT = re.compile(rb"\r\n(?:contact|m)[ \t]*:[ \t]*([^\r\n]+)", re.I)
_ANGLE = re.compile(rb"<([^>]*)>")
_CHALLENGE = {
    401: re.compile(rb"\r\nwww-authenticate[ \t]*:[ \t]*digest[ \t]+([^\r\n]+)", re.I),
    407: re.compile(rb"\r\nproxy-authenticate[ \t]*:[ \t]*digest[ \t]+([^\r\n]+)", re.I),
}
_PARAM = re.compile(rb'([A-Za-z-]+)[ \t]*=[ \t]*(?:"([^"]*)"|([^,\s"]+))')


def to_tag(buf: bytes) -> bytes | None:
    found = _TO_TAG.search(buf, 0, buf.find(b"\r\n\r\n") + 2)
    return found.group(1) if found else None


def call_id(buf: bytes) -> bytes | None:
    # fast path: the form we write ourselves and that servers copy unchanged
    i = buf.find(b"\r\nCall-ID: ")
    if i >= 0:
        j = buf.find(b"\r\n", i + 11)
        return buf[i + 11:j]
    found = _CALL_ID.search(buf)
    return found.group(1) if found else None


def cseq(buf: bytes) -> tuple[int, bytes] | None:
    found = _CSEQ.search(buf)
    return (int(found.group(1)), found.group(2).upper()) if found else None


def route_set(buf: bytes) -> list[bytes]:
    """Record-Route URIs (with their <>) in the order they appear."""
    end = buf.find(b"\r\n\r\n") + 2
    out: list[bytes] = []
    for found in _RR.finditer(buf, 0, end):
        out.extend(b"<%s>" % uri for uri in _ANGLE.findall(found.group(1)))
    return out


def contact_uri(buf: bytes) -> bytes | None:
    end = buf.find(b"\r\n\r\n") + 2
    found = _CONTACT.search(buf, 0, end)
    if not found:
        return None
    value = found.group(1)
    inner = _ANGLE.search(value)
    if inner:
        return inner.group(1)
    return value.split(b";", 1)[0].strip()


@dataclass(slots=True)
class Challenge:
    realm: bytes
    nonce: bytes
    opaque: bytes | None
    algorithm: bytes
    qop: bytes | None       # b"auth" when offered, else None
    stale: bool


_CHALLENGE_AT = {401: b"\r\nWWW-Authenticate: Digest ", 407: b"\r\nProxy-Authenticate: Digest "}


def challenge(buf: bytes, status: int) -> Challenge | None:
    """The digest challenge of a 401 (WWW-) or 407 (Proxy-Authenticate) reply."""
    at = _CHALLENGE_AT.get(status)
    if at is None:
        return None
    i = buf.find(at)
    if i >= 0:          # the usual spelling: no regex over the whole message
        i += len(at)
        value = buf[i:buf.find(b"\r\n", i)]
    else:
        found = _CHALLENGE[status].search(buf)
        if not found:
            return None
        value = found.group(1)
    params = {}
    for m in _PARAM.finditer(value):
        v = m.group(2)
        params[m.group(1).lower()] = v if v is not None else m.group(3)
    nonce = params.get(b"nonce")
    if nonce is None:
        return None
    qop = params.get(b"qop")
    if qop is not None:
        qop = b"auth" if b"auth" in [q.strip().lower() for q in qop.split(b",")] else None
    return Challenge(realm=params.get(b"realm", b""), nonce=nonce, opaque=params.get(b"opaque"),
                     algorithm=params.get(b"algorithm", b"MD5"), qop=qop,
                     stale=params.get(b"stale", b"").lower() == b"true")


# -- digest (RFC 2617 / RFC 8760) -----------------------------------------------------

_HASHES = {b"MD5": hashlib.md5, b"SHA-256": hashlib.sha256}


def hash_for(algorithm: bytes):  # noqa: ANN201 - a hashlib constructor
    base = algorithm.upper().removesuffix(b"-SESS")
    return _HASHES.get(base)


def ha1(user: bytes, realm: bytes, password: bytes, algorithm: bytes = b"MD5") -> bytes:
    h = hash_for(algorithm) or hashlib.md5
    return h(b"%s:%s:%s" % (user, realm, password)).hexdigest().encode()


def ha2(method: bytes, uri: bytes, algorithm: bytes = b"MD5") -> bytes:
    h = hash_for(algorithm) or hashlib.md5
    return h(b"%s:%s" % (method, uri)).hexdigest().encode()


def authorization(name: bytes, ch: Challenge, user: bytes, ha1_value: bytes, method: bytes,
                  uri: bytes, cnonce: bytes, nc: int = 1, ha2_value: bytes = b"") -> bytes:
    """A complete ``Authorization:``/``Proxy-Authorization:`` line (with CRLF).
    ``ha2_value`` may be passed in when the caller caches it (MD5 only)."""
    h = hash_for(ch.algorithm) or hashlib.md5
    key = ha1_value
    if ch.algorithm.upper().endswith(b"-SESS"):
        key = h(b"%s:%s:%s" % (ha1_value, ch.nonce, cnonce)).hexdigest().encode()
    if not ha2_value or ch.algorithm != b"MD5":
        ha2_value = h(b"%s:%s" % (method, uri)).hexdigest().encode()
    ha2 = ha2_value
    if ch.qop:
        ncs = b"%08x" % nc
        resp = h(b"%s:%s:%s:%s:auth:%s" % (key, ch.nonce, ncs, cnonce, ha2)).hexdigest().encode()
        tail = b', qop=auth, nc=%s, cnonce="%s"' % (ncs, cnonce)
    else:
        resp = h(b"%s:%s:%s" % (key, ch.nonce, ha2)).hexdigest().encode()
        tail = b""
    if ch.opaque is not None:
        tail += b', opaque="%s"' % ch.opaque
    if ch.algorithm != b"MD5":
        tail += b", algorithm=%s" % ch.algorithm
    return (b'%s: Digest username="%s", realm="%s", nonce="%s", uri="%s", response="%s"%s\r\n'
            % (name, user, ch.realm, ch.nonce, uri, resp, tail))


# -- requests arriving at the UAS side ---------------------------------------------------

@dataclass(slots=True)
class Request:
    """What the UAS needs of a request: its line, the lines a reply copies, a few values."""

    method: bytes
    ruri: bytes
    call_id: bytes
    cseq_method: bytes
    copy: list[bytes]           # Via, Record-Route, From, Call-ID, CSeq lines (no CRLF)
    to_line: bytes              # the To line without CRLF
    to_has_tag: bool
    vias: int
    record_routes: int
    max_forwards: int
    content_type: bytes
    body: bytes


# header name -> what parse_request does with it; the usual spellings are listed so
# that the lower-casing only happens for unusual ones
_K_VIA, _K_RR, _K_FROM, _K_CALLID, _K_CSEQ, _K_TO, _K_MAXF, _K_CTYPE, _K_CLEN = range(1, 10)
_KIND = {b"via": _K_VIA, b"v": _K_VIA, b"record-route": _K_RR, b"from": _K_FROM, b"f": _K_FROM,
         b"call-id": _K_CALLID, b"i": _K_CALLID, b"cseq": _K_CSEQ, b"to": _K_TO, b"t": _K_TO,
         b"max-forwards": _K_MAXF, b"content-type": _K_CTYPE, b"c": _K_CTYPE,
         b"content-length": _K_CLEN, b"l": _K_CLEN}
_KIND.update({b"Via": _K_VIA, b"Record-Route": _K_RR, b"From": _K_FROM, b"Call-ID": _K_CALLID,
              b"Call-Id": _K_CALLID, b"CSeq": _K_CSEQ, b"To": _K_TO, b"Max-Forwards": _K_MAXF,
              b"Content-Type": _K_CTYPE, b"Content-Length": _K_CLEN})
_FOLD = (b" ", b"\t")


def parse_request(buf: bytes) -> Request | None:
    """Split a request into what a UAS reply needs; None when it is not a request."""
    hdr_end = buf.find(b"\r\n\r\n")
    if hdr_end < 0:
        return None
    lines = buf[:hdr_end].split(b"\r\n")
    first = lines[0]
    sp = first.find(b" ")
    if sp <= 0 or not first.endswith(b" SIP/2.0"):
        return None
    copy: list[bytes] = []
    to_line = b""
    cid = cseq_method = ctype = b""
    vias = rrs = 0
    maxf = clen = -1
    kget = _KIND.get
    last = 0                # the kind a folded continuation line belongs to
    for line in lines[1:]:
        colon = line.find(b":")
        kind = kget(line[:colon]) if colon > 0 else None
        if kind is None:
            if line[:1] in _FOLD:
                if last == _K_TO:
                    to_line += b" " + line.strip()
                elif last:
                    copy[-1] += b" " + line.strip()
                continue
            if colon <= 0:
                continue
            kind = kget(line[:colon].rstrip().lower(), 0)
            if not kind:
                last = 0
                continue
        if kind <= _K_TO:
            last = kind
            if kind == _K_TO:
                to_line = line
                continue
            copy.append(line)
            if kind == _K_VIA:
                vias += line.count(b",", colon) + 1
            elif kind == _K_CALLID:
                cid = line[colon + 1:].strip()
            elif kind == _K_CSEQ:
                parts = line[colon + 1:].split()
                cseq_method = parts[1].upper() if len(parts) > 1 else b""
            elif kind == _K_RR:
                rrs += line.count(b",", colon) + 1
            continue
        last = 0
        if kind == _K_MAXF:
            value = line[colon + 1:].strip()
            maxf = int(value) if value.isdigit() else -1
        elif kind == _K_CTYPE:
            ctype = line[colon + 1:].strip().lower()
        elif kind == _K_CLEN:
            value = line[colon + 1:].strip()
            clen = int(value) if value.isdigit() else -1
    body = buf[hdr_end + 4:]
    if clen >= 0:
        body = body[:clen]
    return Request(method=first[:sp], ruri=first[sp + 1:-8], call_id=cid,
                   cseq_method=cseq_method, copy=copy, to_line=to_line,
                   to_has_tag=b";tag=" in to_line.lower(), vias=vias, record_routes=rrs,
                   max_forwards=maxf, content_type=ctype, body=body)


def reply(req: Request, status: int, reason: bytes, to_tag_value: bytes | None,
          extra: bytes = b"", body: bytes = b"", content_type: bytes = SDP_TYPE) -> bytes:
    """A UAS reply to ``req``: copied Via/RR/From/Call-ID/CSeq, To (+tag), extra lines."""
    to_line = req.to_line
    if to_tag_value is not None and not req.to_has_tag:
        to_line += b";tag=" + to_tag_value
    ctype = b"Content-Type: %s\r\n" % content_type if body else b""
    return b"SIP/2.0 %d %s\r\n%s\r\n%s\r\n%s%sContent-Length: %d\r\n\r\n%s" % (
        status, reason, b"\r\n".join(req.copy), to_line, extra, ctype, len(body), body)


# -- SDP ------------------------------------------------------------------------------

_SDP_C = re.compile(rb"^c=IN IP4 ([0-9.]+)", re.M)
_SDP_M = re.compile(rb"^m=audio (\d+)", re.M)


def sdp(ip: bytes, port: int, sess: int) -> bytes:
    return (b"v=0\r\no=lt %d 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n"
            b"m=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
            % (sess, ip, ip, port))


def sdp_audio(body: bytes) -> tuple[str, int] | None:
    """(address, port) of the audio stream, or None."""
    c = _SDP_C.search(body)
    m = _SDP_M.search(body)
    if not c or not m:
        return None
    return c.group(1).decode(), int(m.group(1))
