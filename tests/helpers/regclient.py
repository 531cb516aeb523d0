"""An independent REGISTER client for tests: HTTP Digest (RFC 2617, RFC 7616/8760
SHA-256) computed here with hashlib, requests built as text. Nothing from natserver is
imported, so a digest or parser bug in the server cannot hide itself in the tests.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from tests.helpers.sipclient import rand_token

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)\s*,?')
_HASH = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def h(algorithm: str, text: str) -> str:
    return _HASH[algorithm.upper()](text.encode()).hexdigest()


def ha1(user: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    return h(algorithm, f"{user}:{realm}:{password}")


def response(ha1_hex: str, nonce: str, method: str, uri: str, *, qop: str | None = None,
             nc: str | None = None, cnonce: str | None = None, algorithm: str = "MD5") -> str:
    """RFC 2617 3.2.2.1 request-digest (qop absent or "auth")."""
    ha2 = h(algorithm, f"{method}:{uri}")
    if qop:
        return h(algorithm, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return h(algorithm, f"{ha1_hex}:{nonce}:{ha2}")


def parse_challenge(value: str) -> dict[str, str]:
    """``Digest realm="x", nonce="y", qop="auth", stale=true`` -> dict (unquoted)."""
    scheme, _, rest = value.strip().partition(" ")
    assert scheme.lower() == "digest", value
    out = {}
    for m in _PARAM.finditer(rest):
        v = m.group(2)
        if v.startswith('"'):
            v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[m.group(1).lower()] = v
    return out


def authorization(challenge: dict[str, str], user: str, password: str, method: str,
                  uri: str, *, nc: int = 1, cnonce: str | None = None,
                  username: str | None = None, realm: str | None = None,
                  algorithm: str | None = None) -> str:
    """The Authorization value answering ``challenge``."""
    realm = challenge["realm"] if realm is None else realm
    nonce = challenge["nonce"]
    algo = algorithm or challenge.get("algorithm", "MD5")
    qop = "auth" if "auth" in challenge.get("qop", "").split(",") else None
    nc_text = f"{nc:08x}" if qop else None
    cnonce = (cnonce or secrets.token_hex(8)) if qop else None
    resp = response(ha1(username or user, realm, password, algo), nonce, method, uri, qop=qop,
                    nc=nc_text, cnonce=cnonce, algorithm=algo)
    out = (f'Digest username="{username or user}", realm="{realm}", nonce="{nonce}", '
           f'uri="{uri}", response="{resp}"')
    if algorithm or "algorithm" in challenge:
        out += f", algorithm={algo}"
    if qop:
        out += f', qop={qop}, nc={nc_text}, cnonce="{cnonce}"'
    return out


def register(user: str, domain: str, src: tuple[str, int], *, contact: str | None = None,
             expires: int | None = None, call_id: str | None = None, cseq: int = 1,
             auth: str | None = None, headers: list[str] | None = None,
             to_user: str | None = None, via_host: str | None = None,
             branch: str | None = None, from_tag: str | None = None) -> bytes:
    """A REGISTER for ``user@domain`` from ``src``; ``contact`` None = a query."""
    host, port = src
    sent_by = via_host or f"{host}:{port}"
    lines = [
        f"REGISTER sip:{domain} SIP/2.0",
        f"Via: SIP/2.0/UDP {sent_by};rport;branch={branch or 'z9hG4bK' + rand_token()}",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{domain}>;tag={from_tag or rand_token(8)}",
        f"To: <sip:{to_user or user}@{domain}>",
        f"Call-ID: {call_id or rand_token(16)}",
        f"CSeq: {cseq} REGISTER",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    lines += headers or []
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def contact_values(header: str | None) -> list[dict[str, str]]:
    """Split a 200 OK Contact header into ``{"uri": ..., param: value}`` dicts."""
    if not header:
        return []
    out = []
    for m in re.finditer(r'<([^>]*)>((?:;[^,;]+(?:="[^"]*")?)*)', header):
        item = {"uri": m.group(1)}
        for p in re.finditer(r';([^=;,]+)(?:=("[^"]*"|[^;,]*))?', m.group(2)):
            item[p.group(1).strip().lower()] = (p.group(2) or "").strip('"')
        out.append(item)
    return out
