"""natserver.overload: when new requests are shed, and which ones (no sockets)."""

from natserver.overload import Shedder
from natserver.sip.message import Message


def msg(method: str, to_tag: str = "", extra: str = "") -> Message:
    tag = f";tag={to_tag}" if to_tag else ""
    return Message.parse((
        f"{method} sip:a@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc\r\n"
        "From: <sip:b@example.com>;tag=1\r\n"
        f"To: <sip:a@example.com>{tag}\r\n"
        "Call-ID: c1\r\n"
        f"CSeq: 1 {method}\r\n{extra}"
        "Content-Length: 0\r\n\r\n").encode())


def test_starts_after_two_late_readings_and_stops_below_half():
    s = Shedder(200, 5)
    assert not s.observe(0.199)
    assert not s.observe(0.201)  # one late datagram: maybe the worker was not scheduled
    assert s.observe(0.250)  # still late a while later: a backlog
    assert s.observe(0.150)  # between low and high: still shedding (hysteresis)
    assert not s.observe(0.099)
    assert not s.observe(0.150)  # below high again: not restarted


def test_an_empty_queue_between_late_readings_is_no_backlog():
    s = Shedder(200, 5)
    s.observe(0.3)
    s.drained()
    assert not s.observe(0.3)
    assert s.observe(0.3)
    s.drained()
    assert not s.shedding


def test_only_new_requests_are_shed():
    s = Shedder(200, 5)
    s.observe(0.5)
    s.observe(0.5)
    assert s.sheds(msg("INVITE")) and s.sheds(msg("REGISTER")) and s.sheds(msg("OPTIONS"))
    assert not s.sheds(msg("ACK")) and not s.sheds(msg("CANCEL"))
    assert not s.sheds(msg("BYE", to_tag="x")) and not s.sheds(msg("INVITE", to_tag="x"))
    assert s.headers() == (b"Retry-After: 5",)


def test_the_authorized_half_of_a_digest_exchange_is_served():
    s = Shedder(200, 5)
    s.observe(0.5)
    s.observe(0.5)
    creds = 'Digest username="a", realm="r", nonce="n", uri="sip:r", response="0"\r\n'
    assert not s.sheds(msg("REGISTER", extra="Authorization: " + creds))
    assert not s.sheds(msg("INVITE", extra="Proxy-Authorization: " + creds))


def test_nothing_is_shed_while_the_queue_is_short():
    s = Shedder(200, 5)
    s.observe(0.01)
    assert not s.sheds(msg("INVITE"))


def test_a_broken_to_header_is_left_to_the_script():
    s = Shedder(200, 5)
    s.observe(0.5)
    s.observe(0.5)
    broken = Message.parse(
        b"INVITE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\n"
        b"From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@exa\r\nCall-ID: c\r\n"
        b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert not s.sheds(broken)
