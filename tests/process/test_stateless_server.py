"""The real server process on a random port answering statelessly (issue 2 acceptance)."""

from __future__ import annotations

import pytest

from tests.helpers.server import Netns, Server, need_root
from tests.helpers.sipclient import Endpoint, rand_token, request

CFG = """
debug=3
fork=no
log_stderror=yes
listen=127.0.0.1
port=0
children=1
max_len=2048
loadmodule "sl.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "uri.so"

route {
  if (!mf_process_maxfwd_header("10")) {
    sl_send_reply("483", "Too Many Hops");
    break;
  };
  if (msg:len > max_len) {
    sl_send_reply("513", "Message Overflow");
    break;
  };
  if (method=="ACK") {
    log(1, "ACK reached the script");
    break;
  };
  if (method=="OPTIONS" && uri==myself) {
    sl_send_reply("200", "OK");
    break;
  };
  sl_send_reply("404", "Not Here");
}
"""


@pytest.fixture
def server(tmp_path):
    need_root()
    ns = Netns()
    srv = Server(ns, CFG, tmp_path)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        ns.destroy()


@pytest.fixture
def ua(server):
    ep = Endpoint(server.ns.socket())
    yield ep
    ep.close()


def options(ua, server, **kw) -> bytes:
    return request("OPTIONS", f"sip:{server.host}:{server.port}", src=ua.addr, **kw)


def still_answers(ua, server) -> None:
    ua.send(options(ua, server), server.addr)
    assert ua.expect_status(200).status == 200


def test_options_answered(ua, server):
    ua.send(options(ua, server), server.addr)
    reply = ua.expect_status(200)
    assert reply.get("Content-Length") == "0"
    # rport was asked for: the server fills it and adds received (RFC 3581).
    via = reply.get("Via")
    assert f"rport={ua.addr[1]}" in via and "received=127.0.0.1" in via


def test_max_forwards_zero_gets_483(ua, server):
    ua.send(options(ua, server, max_forwards=0), server.addr)
    reply = ua.expect_status(483)
    assert reply.reason == "Too Many Hops"
    assert reply.param("To", "tag")
    still_answers(ua, server)


def test_oversize_gets_513(ua, server):
    data = options(ua, server, headers=["X-Filler: " + "a" * 2500])
    assert len(data) > 2048
    ua.send(data, server.addr)
    reply = ua.expect_status(513)
    assert reply.status == 513
    still_answers(ua, server)


@pytest.mark.parametrize("garbage", [
    b"\x00" * 64,
    b"this is not a SIP message at all, just some text long enough",
    b"INVITE sip:x@y SIP/2.0\r\n" + b"\xff" * 100,
    b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n" + b"x" * 40,
])
def test_garbage_dropped_and_server_survives(ua, server, garbage):
    ua.send(garbage, server.addr)
    assert ua.nothing(0.3)
    still_answers(ua, server)


def test_bad_header_gets_400(ua, server):
    data = options(ua, server).replace(b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS")
    ua.send(data, server.addr)
    reply = ua.expect_status(400)
    assert "CSeq" in reply.reason
    still_answers(ua, server)


def test_wrong_content_length_gets_400(ua, server):
    data = options(ua, server).replace(b"Content-Length: 0", b"Content-Length: 500")
    ua.send(data, server.addr)
    got = ua.recv(1.0)
    # RFC 3261 18.3: a request that promises more than arrived is answered 400 if at all.
    assert got is None or got[0].status == 400
    still_answers(ua, server)


def test_keepalives_ignored(ua, server):
    for ping in (b"\r\n\r\n", b"\x00\x00\x00\x00", b"\r\n"):
        ua.send(ping, server.addr)
    assert ua.nothing(0.3)
    still_answers(ua, server)


def test_ack_for_stateless_reply_absorbed_by_to_tag(ua, server):
    """The ACK for a stateless 4xx carries a fresh branch; it is still recognised."""
    call_id = rand_token(16)
    invite = request("INVITE", f"sip:nobody@{server.host}:{server.port}", src=ua.addr,
                     call_id=call_id, cseq=5)
    ua.send(invite, server.addr)
    reply = ua.expect_status(404)
    tag = reply.param("To", "tag")
    assert tag
    ack = request("ACK", f"sip:nobody@{server.host}:{server.port}", src=ua.addr,
                  call_id=call_id, cseq=5, to_tag=tag, from_=reply.get("From"))
    ua.send(ack, server.addr)
    # An ACK with a tag that is not ours reaches the script: proves the log line works.
    other = request("ACK", f"sip:nobody@{server.host}:{server.port}", src=ua.addr,
                    call_id=rand_token(16), to_tag="foreign-tag")
    ua.send(other, server.addr)
    server.wait_log("ACK reached the script")
    assert server.log_text().count("ACK reached the script") == 1
    still_answers(ua, server)
