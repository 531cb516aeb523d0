"""SDP rewriting as force_rtp_proxy does it (natserver/sip/sdp.py) - the cases
tests/unit/test_sdp.py does not cover - and nathelper's sans-IO RTP pieces: the flag
parser (flags -> rtpproxy modifiers) and the once-per-burst failure log."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings, strategies as st

from natserver.errors import CfgError
from natserver.modules.nathelper import Burst, RtpFlags, _rtp_flags
from natserver.sip import sdp
from natserver.sip.sdp import SdpError


def body(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


RELAY = "192.0.2.13"


def test_media_level_connections_without_session_connection():
    b = body("v=0", "o=- 1 1 IN IP4 10.0.0.5", "s=-", "t=0 0",
             "m=audio 9000 RTP/AVP 0", "c=IN IP4 10.0.0.5",
             "m=video 9002 RTP/AVP 96", "c=IN IP4 10.0.0.6")
    out = sdp.rewrite(b, RELAY, [35000, 35002])
    s = sdp.parse(out)
    assert s.session_conn is None
    assert [m.conn.addr for m in s.media] == [RELAY.encode()] * 2
    assert [m.port for m in s.media] == [35000, 35002]


def test_session_connection_rewritten_once_for_several_streams():
    b = body("v=0", "o=- 1 1 IN IP4 10.0.0.5", "s=-", "c=IN IP4 10.0.0.5", "t=0 0",
             "m=audio 9000 RTP/AVP 0", "m=video 9002 RTP/AVP 96")
    out = sdp.rewrite(b, RELAY, [35000, 35002])
    assert out.count(b"c=IN IP4 192.0.2.13\r\n") == 1 and b"10.0.0.5\r\ns=" in out


def test_multicast_ttl_and_port_count_are_kept():
    b = body("v=0", "o=- 1 1 IN IP4 10.0.0.5", "s=-", "c=IN IP4 224.2.1.1/127", "t=0 0",
             "m=audio 9000/2 RTP/AVP 0")
    out = sdp.rewrite(b, RELAY, [35000])
    assert b"c=IN IP4 192.0.2.13/127\r\n" in out and b"m=audio 35000/2 RTP/AVP 0" in out


def test_rtcp_port_only_and_rtcp_mux():
    b = body("v=0", "o=- 1 1 IN IP4 10.0.0.5", "s=-", "c=IN IP4 10.0.0.5", "t=0 0",
             "m=audio 9000 RTP/AVP 0", "a=rtcp:9001", "a=rtcp-mux")
    s = sdp.parse(b)
    assert s.media[0].rtcp.port == 9001 and s.media[0].rtcp.address is None
    assert s.media[0].rtcp_mux
    out = sdp.rewrite(b, RELAY, [35000])
    assert b"a=rtcp:35001\r\na=rtcp-mux\r\n" in out


def test_ipv6_relay_rewrites_rtcp_and_origin():
    b = body("v=0", "o=- 1 1 IN IP4 10.0.0.5", "s=-", "c=IN IP4 10.0.0.5", "t=0 0",
             "m=audio 9000 RTP/AVP 0", "a=rtcp:9001 IN IP4 10.0.0.5")
    out = sdp.rewrite(b, "2001:db8::13", [35000], origin=True)
    assert b"o=- 1 1 IN IP6 2001:db8::13\r\n" in out
    assert b"c=IN IP6 2001:db8::13\r\n" in out
    assert b"a=rtcp:35001 IN IP6 2001:db8::13\r\n" in out


def test_hold_media_level_null_address_and_inactive():
    b = body("v=0", "o=- 1 3 IN IP4 10.0.0.5", "s=-", "c=IN IP4 10.0.0.5", "t=0 0",
             "m=audio 9000 RTP/AVP 0", "c=IN IP4 0.0.0.0", "a=inactive")
    out = sdp.rewrite(b, RELAY, [35000])
    s = sdp.parse(out)
    assert s.media[0].conn.addr == b"0.0.0.0" and s.media[0].direction == b"inactive"
    assert s.session_conn.addr == RELAY.encode() and s.media[0].port == 35000


def test_nothing_relayed_leaves_addresses_but_marks():
    b = body("v=0", "o=- 1 1 IN IP4 10.0.0.5", "s=-", "c=IN IP4 10.0.0.5", "t=0 0",
             "m=audio 0 RTP/AVP 0")
    out = sdp.rewrite(b, RELAY, [35000])
    assert out == b + b"a=nortpproxy:yes\r\n"


@pytest.mark.parametrize("bad", [
    b"v=0\r\nm=audio 9000 RTP/AVP 0\r\na=rtcp:9001 IN IP4\r\n",
    b"v=0\r\nm=audio 9000 RTP/AVP 0\r\na=rtcp:99999\r\n",
    b"v=0\r\nc=IN IP4 /127\r\n",
    b"v=0\r\n=foo\r\n",
])
def test_more_malformed_sdp(bad):
    with pytest.raises(SdpError):
        sdp.parse(bad)


_STREAM = st.tuples(st.sampled_from(["audio", "video", "text"]),
                    st.integers(0, 65534),
                    st.sampled_from(["", "c=IN IP4 10.1.1.1", "c=IN IP4 0.0.0.0",
                                     "c=IN IP6 2001:db8::9"]),
                    st.booleans(),
                    st.sampled_from(["", "a=sendonly", "a=inactive", "a=recvonly"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(_STREAM, min_size=1, max_size=4),
       st.sampled_from(["c=IN IP4 10.0.0.5", "c=IN IP4 0.0.0.0", ""]),
       st.sampled_from(["192.0.2.13", "2001:db8::13"]))
def test_rewrite_points_every_relayed_stream_at_the_relay(streams, session_c, relay):
    lines = ["v=0", "o=- 1 1 IN IP4 10.0.0.5", "s=-"] + ([session_c] if session_c else [])
    lines.append("t=0 0")
    for media, port, conn, rtcp, direction in streams:
        lines.append(f"m={media} {port} RTP/AVP 0")
        lines += [x for x in (conn, f"a=rtcp:{port + 1}" if rtcp else "", direction) if x]
    b = body(*lines)
    parsed = sdp.parse(b)
    ports = [40000 + 2 * i if m.port else None for i, m in enumerate(parsed.media)]
    out = sdp.parse(sdp.rewrite(b, relay, ports))
    assert out.nortpproxy
    for before, after, port in zip(parsed.media, out.media, ports):
        assert after.direction == before.direction
        if port is None:
            assert after.port == 0
            continue
        assert after.port == port
        if after.rtcp is not None:
            assert after.rtcp.port == port + 1
        conn = out.connection(after)
        was = parsed.connection(before)
        if was is None:
            assert conn is None
        elif was.is_null:
            assert conn.is_null                       # hold stays hold
        else:
            assert conn.addr == relay.encode()
            assert conn.addrtype == (b"IP6" if ":" in relay else b"IP4")


# -- nathelper's flags and burst log ----------------------------------------------------

def test_flags_to_modifiers():
    assert RtpFlags.parse("").mods(False) == ""
    assert RtpFlags.parse("").mods(True) == "6"
    f = RtpFlags.parse("a")
    assert f.asymmetric and f.trust_sdp and f.mods(False) == "A"
    assert RtpFlags.parse("r").trust_sdp and RtpFlags.parse("r").mods(False) == ""
    assert RtpFlags.parse("ie").mods(False) == "IE"
    assert RtpFlags.parse("EI").mods(True) == "EI6"
    assert RtpFlags.parse("w").mods(False) == "S"
    f = RtpFlags.parse("LFO")
    assert f.lookup and f.force and f.origin


def test_unknown_flag_is_refused_at_start():
    assert _rtp_flags("LR") == RtpFlags(lookup=True, trust_sdp=True)
    assert _rtp_flags("lraifeocw").bridge == "IE"
    with pytest.raises((ValueError, CfgError)):
        _rtp_flags("lz")


def test_burst_logs_once_per_window_and_counts_the_rest(caplog):
    b = Burst(window=10.0)
    with caplog.at_level(logging.ERROR, logger="natserver.nathelper"):
        for t in range(5):
            b.note(100.0 + t, "relay %s down", "r1")
        b.note(111.0, "relay %s down", "r1")
        b.note(112.0, "relay %s down", "r1")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["nathelper: relay r1 down",
                     "nathelper: relay r1 down (and 4 similar failures in the last 10 s)"]
