"""SDP parsing and nathelper-style rewriting (natserver/sip/sdp.py)."""

import pytest

from natserver.sip import sdp
from natserver.sip.sdp import SdpError


def body(*lines: str, eol: str = "\r\n") -> bytes:
    return (eol.join(lines) + eol).encode()


OFFER = body(
    "v=0",
    "o=alice 2890844526 2890844526 IN IP4 192.168.1.10",
    "s=-",
    "c=IN IP4 192.168.1.10",
    "t=0 0",
    "m=audio 8000 RTP/AVP 0 8 101",
    "a=rtpmap:101 telephone-event/8000",
    "a=sendrecv",
)


def test_parse_session_connection_and_one_stream():
    s = sdp.parse(OFFER)
    assert s.session_conn.addr == b"192.168.1.10"
    assert s.session_conn.addrtype == b"IP4"
    assert OFFER[s.session_conn.start:s.session_conn.end] == b"192.168.1.10"
    assert s.origin.addr == b"192.168.1.10"
    (m,) = s.media
    assert (m.index, m.media, m.port, m.proto, m.fmts) == (1, b"audio", 8000, b"RTP/AVP",
                                                           (b"0", b"8", b"101"))
    assert OFFER[m.port_start:m.port_end] == b"8000"
    assert m.conn is None and s.connection(m) is s.session_conn
    assert m.direction == b"sendrecv" and not s.nortpproxy


def test_rewrite_single_stream_like_ser():
    out = sdp.rewrite(OFFER, "192.0.2.13", [35000])
    assert out == body(
        "v=0",
        "o=alice 2890844526 2890844526 IN IP4 192.168.1.10",
        "s=-",
        "c=IN IP4 192.0.2.13",
        "t=0 0",
        "m=audio 35000 RTP/AVP 0 8 101",
        "a=rtpmap:101 telephone-event/8000",
        "a=sendrecv",
        "a=nortpproxy:yes",
    )


def test_rewrite_origin_on_request():
    out = sdp.rewrite(OFFER, "192.0.2.13", [35000], origin=True)
    assert b"o=alice 2890844526 2890844526 IN IP4 192.0.2.13\r\n" in out


def test_several_streams_media_level_connections_and_rtcp():
    b = body(
        "v=0",
        "o=- 1 1 IN IP4 10.0.0.5",
        "s=call",
        "c=IN IP4 10.0.0.5",
        "t=0 0",
        "m=audio 9000 RTP/AVP 0",
        "a=rtcp:9001",
        "m=video 9002/2 RTP/AVP 96",
        "c=IN IP4 10.0.0.6",
        "a=rtcp:9005 IN IP4 10.0.0.6",
        "a=recvonly",
        "m=application 0 udp/bfcp *",
    )
    s = sdp.parse(b)
    assert [m.index for m in s.media] == [1, 2, 3]
    assert s.media[1].nports == 2 and s.media[1].conn.addr == b"10.0.0.6"
    assert s.media[0].rtcp.port == 9001 and s.media[0].rtcp.address is None
    assert s.media[1].rtcp.address.addr == b"10.0.0.6"
    assert s.stream_direction(s.media[1]) == b"recvonly"
    assert s.stream_direction(s.media[0]) == b"sendrecv"
    out = sdp.rewrite(b, "192.0.2.13", [35000, 35002, 35004])
    assert out == body(
        "v=0",
        "o=- 1 1 IN IP4 10.0.0.5",
        "s=call",
        "c=IN IP4 192.0.2.13",
        "t=0 0",
        "m=audio 35000 RTP/AVP 0",
        "a=rtcp:35001",
        "m=video 35002/2 RTP/AVP 96",
        "c=IN IP4 192.0.2.13",
        "a=rtcp:35003 IN IP4 192.0.2.13",
        "a=recvonly",
        "m=application 0 udp/bfcp *",     # port 0: rejected stream, untouched
        "a=nortpproxy:yes",
    )


def test_stream_without_port_is_left_alone():
    b = body("v=0", "o=- 1 1 IN IP4 10.0.0.5", "s=-", "t=0 0",
             "m=audio 9000 RTP/AVP 0", "c=IN IP4 10.0.0.5",
             "m=video 9002 RTP/AVP 96", "c=IN IP4 10.0.0.5")
    out = sdp.rewrite(b, "192.0.2.13", [35000, None])
    assert b"m=audio 35000" in out and b"m=video 9002" in out
    assert out.count(b"c=IN IP4 192.0.2.13") == 1 and out.count(b"c=IN IP4 10.0.0.5") == 1


def test_hold_null_address_is_kept_and_direction_passes():
    b = body("v=0", "o=- 1 2 IN IP4 10.0.0.5", "s=-", "c=IN IP4 0.0.0.0", "t=0 0",
             "m=audio 9000 RTP/AVP 0", "a=sendonly")
    s = sdp.parse(b)
    assert s.session_conn.is_null
    assert s.stream_direction(s.media[0]) == b"sendonly"
    out = sdp.rewrite(b, "192.0.2.13", [35000])
    assert b"c=IN IP4 0.0.0.0\r\n" in out
    assert b"m=audio 35000 RTP/AVP 0\r\na=sendonly\r\na=nortpproxy:yes\r\n" in out


def test_inactive_session_level_direction():
    b = body("v=0", "o=- 1 2 IN IP6 ::", "s=-", "c=IN IP6 ::", "a=inactive", "t=0 0",
             "m=audio 9000 RTP/AVP 0")
    s = sdp.parse(b)
    assert s.direction == b"inactive" and s.session_conn.is_null
    assert s.stream_direction(s.media[0]) == b"inactive"
    assert b"c=IN IP6 ::\r\n" in sdp.rewrite(b, "2001:db8::1", [35000])


def test_ipv6_relay_switches_the_address_type():
    out = sdp.rewrite(OFFER, "2001:db8::13", [35000])
    assert b"c=IN IP6 2001:db8::13\r\n" in out


def test_ipv6_offer_to_ipv4_relay():
    b = body("v=0", "o=- 1 1 IN IP6 2001:db8::5", "s=-", "c=IN IP6 2001:db8::5", "t=0 0",
             "m=audio 9000 RTP/AVP 0", "a=rtcp:9001 IN IP6 2001:db8::5")
    s = sdp.parse(b)
    assert s.session_conn.addrtype == b"IP6" and s.session_conn.addr == b"2001:db8::5"
    out = sdp.rewrite(b, "192.0.2.13", [35000])
    assert b"c=IN IP4 192.0.2.13\r\n" in out
    assert b"a=rtcp:35001 IN IP4 192.0.2.13\r\n" in out


def test_marker_present_is_reported_and_not_added_twice():
    b = OFFER + b"a=nortpproxy:yes\r\n"
    s = sdp.parse(b)
    assert s.nortpproxy
    # nathelper refuses without the f flag; with it, the rewrite adds no second marker
    out = sdp.rewrite(b, "192.0.2.13", [35000])
    assert out.count(b"a=nortpproxy:yes") == 1
    assert b"m=audio 35000" in out


def test_lf_only_body_keeps_its_line_breaks():
    b = body("v=0", "o=- 1 1 IN IP4 10.0.0.5", "s=-", "c=IN IP4 10.0.0.5", "t=0 0",
             "m=audio 9000 RTP/AVP 0", eol="\n")
    out = sdp.rewrite(b, "192.0.2.13", [35000])
    assert b"\r" not in out and out.endswith(b"\na=nortpproxy:yes\n")


def test_body_without_final_newline_gets_one_before_the_marker():
    b = OFFER.rstrip(b"\r\n")
    out = sdp.rewrite(b, "192.0.2.13", [35000])
    assert out.endswith(b"a=sendrecv\r\na=nortpproxy:yes\r\n")


def test_edits_are_offsets_into_the_body():
    s = sdp.parse(OFFER)
    edits = sdp.rewrite_edits(s, "192.0.2.13", [35000], marker=False)
    assert [(OFFER[a:b], d) for a, b, d in edits] == [
        (b"192.168.1.10", b"192.0.2.13"), (b"8000", b"35000")]


def test_first_connection_address():
    assert sdp.first_connection_address(OFFER) == b"192.168.1.10"
    assert sdp.first_connection_address(b"") is None
    assert sdp.first_connection_address(b"v=0\r\nc=IN IP4 224.2.1.1/127\r\n") == b"224.2.1.1"
    assert sdp.first_connection_address(b"v=0\r\nc=garbage\r\n") is None


@pytest.mark.parametrize("bad", [
    b"",
    b"\r\n\r\n",
    b"hello world\r\n",
    b"o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n",                    # v= not first
    b"v=0\r\nc=IN IP4\r\n",                                   # c= short
    b"v=0\r\nc=IN IPX 1.2.3.4\r\n",                           # address type
    b"v=0\r\nc=ATM NSAP 1.2.3.4\r\n",                         # network type
    b"v=0\r\nm=audio port RTP/AVP 0\r\n",                     # port not numeric
    b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n",                    # port range
    b"v=0\r\nm=audio 9000/x RTP/AVP 0\r\n",                   # port count
    b"v=0\r\nm=audio\r\n",                                    # m= short
    b"v=0\r\nm=audio 9000 RTP/AVP 0\r\na=rtcp:abc\r\n",       # a=rtcp port
    b"v=0\r\no=- 1 IN IP4 1.2.3.4\r\n",                        # o= short
    b"v=0\r\nthis is not sdp\r\n",
])
def test_malformed_sdp_raises_sdperror(bad):
    with pytest.raises(SdpError):
        sdp.parse(bad)
    with pytest.raises(ValueError):  # SdpError is a ValueError, for callers that group them
        sdp.rewrite(bad, "192.0.2.13", [35000])


from hypothesis import given, settings, strategies as st  # noqa: E402

_LINE = st.one_of(
    st.sampled_from([b"v=0", b"o=- 1 1 IN IP4 10.0.0.5", b"c=IN IP4 10.0.0.5", b"c=IN IP6 ::",
                     b"m=audio 9000 RTP/AVP 0", b"m=video 0 RTP/AVP 96", b"a=rtcp:9001",
                     b"a=sendonly", b"a=nortpproxy:yes", b"t=0 0", b"c=IN", b"m=audio x"]),
    st.binary(max_size=30))


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=12), st.sampled_from([b"\r\n", b"\n"]))
def test_any_body_parses_or_raises_sdperror(lines, eol):
    data = eol.join(lines)
    try:
        s = sdp.parse(data)
    except SdpError:
        return
    out = sdp.rewrite(data, "192.0.2.13", [35000] * len(s.media))
    assert out.count(b"a=nortpproxy:yes") >= 1


def test_record_edits_into_a_message_edits():
    from natserver.sip.edits import Edits

    head = b"INVITE sip:b@x SIP/2.0\r\nContent-Length: %d\r\n\r\n" % len(OFFER)
    msg = head + OFFER
    edits = Edits()
    sdp.record_edits(edits, len(head), sdp.parse(OFFER), "192.0.2.13", [35000])
    assert edits.apply(msg) == head + sdp.rewrite(OFFER, "192.0.2.13", [35000])
