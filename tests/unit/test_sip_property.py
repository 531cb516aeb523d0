"""Property tests: whatever bytes arrive, the SIP core answers with a Message whose views
work or raise SipError - never any other exception - and the builders keep that promise.

Three sources of input: arbitrary bytes; valid corpus messages mutated at random (byte
flips, insertions of delimiter characters, deletions, truncation, duplicated lines); and
messages assembled from known header names with values drawn from the characters the
value parsers care about.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natserver.errors import SipError
from natserver.sip import digest
from natserver.sip.build import (
    build_ack, build_cancel, build_forward_reply, build_forward_request, build_reply,
    next_via_address, reply_address,
)
from natserver.sip.edits import Edits
from natserver.sip.headers import HEADERS, Hdr
from natserver.sip.message import Message
from natserver.sip.uri import parse_uri, replace_host_port, uri_equal
from tests.unit import sip_torture as T

SETTINGS = settings(max_examples=250, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

VIEWS = ("vias", "via1", "from_", "to", "call_id", "cseq", "contacts", "routes",
         "record_routes", "paths", "max_forwards", "content_length", "expires", "min_expires",
         "content_type", "body", "parsed_ruri", "hdrs")
OUR_VIA = b"SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKprop"
SRC = ("203.0.113.7", 40312)


def attempt(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; SipError is an acceptable answer, anything else fails the test."""
    try:
        return fn()
    except SipError as exc:
        assert isinstance(exc.status, int) and 400 <= exc.status <= 599
        assert isinstance(exc.reason, str) and exc.reason
        return None


def exercise(data: bytes) -> None:
    try:
        m = Message.parse(data)
    except SipError:
        return
    assert 0 < m.first_line_end <= m.headers_end < m.body_start <= m.body_end <= len(data)
    for name in VIEWS:
        attempt(lambda: getattr(m, name))
    for f in m.hdrs:
        assert isinstance(f.value, bytes)
        assert f.start <= f.vstart <= f.vend <= f.end
        attempt(lambda: m.parsed(f))
    for h in (Hdr.AUTHORIZATION, Hdr.PROXY_AUTHORIZATION):
        for c in attempt(lambda: m.authorizations(h)) or ():
            attempt(lambda: c.missing())
            attempt(lambda: digest.check_response(c, m.method or b"X", "00"))
    attempt(lambda: m.challenges(Hdr.WWW_AUTHENTICATE))
    attempt(lambda: m.tokens(Hdr.SUPPORTED))
    name_addrs: list[Any] = []
    for view in ("from_", "to"):
        na = attempt(lambda: getattr(m, view))
        if na is not None:
            name_addrs.append(na)
    contacts = attempt(lambda: m.contacts)
    name_addrs += contacts.items if contacts else []
    name_addrs += attempt(lambda: m.routes) or []
    for na in name_addrs:
        assert m.buf[na.uri_start:na.uri_end] == na.uri_text
        na.spans
        uri = attempt(lambda: na.uri)
        if uri is not None:
            attempt(lambda: uri.format())
            attempt(lambda: replace_host_port(na.uri_text, "192.0.2.1", 5060))
            assert isinstance(uri_equal(uri, na.uri_text), bool)
    for via in attempt(lambda: m.vias) or ():
        assert m.first_line_end <= via.start < via.end <= m.headers_end
        via.spans
    if m.is_request:
        attempt(m.validate_request)
        # a local reply is always possible
        out = build_reply(m, 400, "Bad Request", src=SRC, to_tag=b"tag", force_rport=True)
        assert out.startswith(b"SIP/2.0 400 Bad Request\r\n")
        reply_address(m, SRC, False)
        fwd = build_forward_request(m, Edits(), via=OUR_VIA, ruri=b"sip:x@192.0.2.9", src=SRC)
        again = Message.parse(fwd)
        assert again.via1.branch == "z9hG4bKprop"
        assert again.content_length == len(again.body) == m.body_end - m.body_start
        attempt(lambda: build_cancel(m))
        attempt(lambda: build_ack(m, m))
    else:
        attempt(lambda: build_forward_reply(m))
        attempt(lambda: next_via_address(m))


@SETTINGS
@given(st.binary(max_size=1500))
def test_any_bytes(data: bytes) -> None:
    exercise(data)


@SETTINGS
@given(st.binary(max_size=600))
def test_any_bytes_after_a_request_line(data: bytes) -> None:
    exercise(b"INVITE sip:bob@example.org SIP/2.0\r\n" + data)


SEEDS = [c.data for c in T.VALID] + [c.data for c in T.VIEW_ERRORS]
SPECIAL = list(b'\r\n \t:;,"<>\\\x00=@[]%*/?&\xff')


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        # mostly after the start line: hypothesis favours small integers, which would
        # otherwise spend most mutations on the request line
        low = data.find(b"\n") + 1 if draw(st.integers(0, 4)) else 0
        pos = draw(st.integers(min(low, len(data) - 1), len(data) - 1))
        kind = draw(st.sampled_from((0, 1, 5, 0, 1, 2, 4, 0, 1, 3)))  # truncation rarely
        if kind == 0:
            data[pos] = draw(st.sampled_from(SPECIAL))
        elif kind == 1:
            data[pos:pos] = draw(st.sampled_from(
                [b"\r\n", b"\r\n ", b",", b";", b'"', b"<", b">", b"\\", b":", b"\x00",
                 b";rport", b";received=", b", SIP/2.0/UDP x", b"\r\n\r\n", b"%", b"[::1]"]))
        elif kind == 2:
            del data[pos:pos + draw(st.integers(1, 20))]
        elif kind == 3:
            del data[pos:]
        elif kind == 4:
            start = data.rfind(b"\n", 0, pos) + 1
            end = data.find(b"\n", pos) + 1 or len(data)
            data[end:end] = data[start:end]
        else:
            data[pos] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        # Re-fix Content-Length so the mutant gets past framing to the value parsers.
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            size = b"%d" % (len(data) - end - 4)
            data = bytearray(re.sub(rb"(?m)^(Content-Length|l)([ \t]*:[ \t]*)[0-9]+",
                                    lambda m: m.group(1) + m.group(2) + size, bytes(data)))
    return bytes(data)


@SETTINGS
@given(mutated())
def test_mutated_messages(data: bytes) -> None:
    exercise(data)


NAMES = [n for n, *_ in HEADERS] + [c for _, c, *_ in HEADERS if c] + ["X-Other"]
VALUE_ALPHABET = st.sampled_from(
    list("abcSIPsip:/2.0UDP @<>\";,=\\*%[]?&\t 0123456789.-") + ["\r\n ", "tag", "branch",
                                                                    "sip:a@b", "Digest "])


@st.composite
def assembled(draw: st.DrawFn) -> bytes:
    lines = [draw(st.sampled_from([
        "INVITE sip:bob@example.org SIP/2.0", "REGISTER sips:example.com SIP/2.0",
        "SIP/2.0 200 OK", "SIP/2.0 180 Ringing", "ACK tel:+123 SIP/2.0"]))]
    for _ in range(draw(st.integers(0, 12))):
        name = draw(st.sampled_from(NAMES))
        value = "".join(draw(st.lists(VALUE_ALPHABET, max_size=25)))
        lines.append(f"{name}: {value}")
    body = draw(st.sampled_from(["", "v=0\r\n", "x" * 40]))
    if draw(st.booleans()):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


@SETTINGS
@given(assembled())
def test_assembled_messages(data: bytes) -> None:
    exercise(data)


@SETTINGS
@given(st.binary(max_size=120), st.binary(max_size=120))
def test_uri_and_digest_functions_never_raise_other_errors(a: bytes, b: bytes) -> None:
    attempt(lambda: parse_uri(a))
    attempt(lambda: parse_uri(b"sip:" + a))
    attempt(lambda: replace_host_port(b"sip:" + a, "192.0.2.1", 1))
    assert isinstance(uri_equal(b"sip:" + a, b"sip:" + b), bool)
    attempt(lambda: digest.parse_credentials(b"Digest " + a))
    attempt(lambda: digest.parse_challenge(b"Digest " + b))
    text = a.decode("latin-1")
    assert digest.check_nonce(text, b"k", 0) in tuple(digest.NonceStatus)
    digest.nonce_index(text)
    digest.nonce_expiry(text)
