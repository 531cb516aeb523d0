"""The management protocol: SER's FIFO format, the JSON socket format, text rendering."""

from __future__ import annotations

import orjson
import pytest

from natserver import ctl_protocol as proto
from natserver.ctlcli import read_cfg, render_stats


def test_fifo_request_round_trip():
    data = proto.format_fifo_request(proto.Request("ul_rm", ["location", "alice"], "reply_1"))
    assert data == b":ul_rm:reply_1\nlocation\nalice\n\n"
    reqs = list(proto.FifoReader().feed(data))
    assert reqs == [proto.Request("ul_rm", ["location", "alice"], "reply_1")]


def test_fifo_reader_handles_split_and_batched_requests():
    stream = b":ps:r1\n\n:uptime:r2\n\n:stats:r3\nrequests\n\n"
    reader = proto.FifoReader()
    got = []
    for i in range(len(stream)):  # one byte at a time: partial lines must wait
        got += list(reader.feed(stream[i:i + 1]))
    assert [(r.cmd, r.reply_to, r.args) for r in got] == [
        ("ps", "r1", []), ("uptime", "r2", []), ("stats", "r3", ["requests"])]
    assert list(proto.FifoReader().feed(stream)) == got


def test_fifo_reader_skips_garbage_before_a_request_and_accepts_crlf():
    reader = proto.FifoReader()
    reqs = list(reader.feed(b"garbage line\n\n:version:rep\r\n\r\n"))
    assert [(r.cmd, r.reply_to) for r in reqs] == [("version", "rep")]
    assert reader.skipped == 1


def test_fifo_reader_keeps_an_unfinished_request():
    reader = proto.FifoReader()
    assert list(reader.feed(b":ps:r\narg")) == []
    assert [r.args for r in reader.feed(b"1\n\n")] == [["arg1"]]


def test_fifo_reader_drops_an_oversized_request():
    reader = proto.FifoReader()
    assert list(reader.feed(b":ps:r\n" + b"x" * (proto.MAX_PENDING + 10))) == []
    assert reader.skipped == 1
    assert [r.cmd for r in reader.feed(b"\n:which:r\n\n")] == ["which"]


@pytest.mark.parametrize("line", [":", "::r", "ps:r", ":ps"])
def test_bad_first_lines(line):
    with pytest.raises(proto.ProtocolError):
        proto.parse_fifo_first_line(line)


def test_request_without_reply_fifo_is_valid():
    assert proto.parse_fifo_first_line(":ps:") == proto.Request("ps", [], "")


@pytest.mark.parametrize("args", [["a\nb"], [""]])
def test_fifo_request_refuses_multiline_or_empty_arguments(args):
    with pytest.raises(proto.ProtocolError):
        proto.format_fifo_request(proto.Request("x", args, "r"))


def test_fifo_reply_format_and_parse():
    reply = proto.Reply(200, "ok", [{"pid": 12, "title": "natserver: ctl"}])
    data = proto.format_fifo_reply(reply)
    assert data.startswith(b"200 ok\n")
    assert data.endswith(b"\n")
    back = proto.parse_fifo_reply(data)
    assert (back.status, back.reason) == (200, "ok")
    assert "natserver: ctl" in back.data
    assert proto.parse_fifo_reply(b"500 command 'x' not available\n").reason == \
        "command 'x' not available"
    with pytest.raises(proto.ProtocolError):
        proto.parse_fifo_reply(b"hello\n")


@pytest.mark.parametrize("name,ok", [
    ("ser_receiver_123", True), ("/tmp/abs_reply", True), ("../etc/x", False),
    ("a/b", False), (".hidden", False), ("", False), ("/tmp/../etc/x", False)])
def test_reply_fifo_names(name, ok):
    assert proto.reply_fifo_name_ok(name) is ok


def test_json_request_and_reply_round_trip():
    req = proto.Request("stats", ["requests"])
    assert proto.decode_request(proto.encode_request(req)) == proto.Request("stats", ["requests"])
    reply = proto.Reply(200, "ok", {"uptime": 5})
    assert proto.decode_reply(proto.encode_reply(reply)) == reply


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"cmd": ""}', b'{"cmd": "ps", "args": [1]}',
                                  b'{"args": []}'])
def test_json_request_errors(data):
    with pytest.raises(proto.ProtocolError):
        proto.decode_request(data)


def test_json_reply_errors():
    with pytest.raises(proto.ProtocolError):
        proto.decode_reply(b'{"reason": "x"}')
    with pytest.raises(proto.ProtocolError):
        proto.decode_reply(b"{")


def test_table_rendering_aligns_columns():
    text = proto.format_table([
        {"pid": 7, "title": "natserver: supervisor", "cpu_pct": 1.5},
        {"pid": 12345, "title": "natserver: ctl", "cpu_pct": None},
    ])
    lines = text.splitlines()
    assert lines[0].split() == ["PID", "TITLE", "CPU_PCT"]
    assert lines[1].index("natserver") == lines[2].index("natserver")
    # numbers are right-aligned: the last digits line up
    assert lines[1].index("7 ") == lines[2].index("5 ")
    assert lines[1].endswith("1.50")


def test_render_dict_and_lines():
    assert proto.render({"uptime": 3, "version": "0.1"}) == "uptime   3\nversion  0.1"
    assert proto.render(["a", "b"]) == "a\nb"
    assert proto.render(None) == ""
    assert proto.render("text") == "text"


def test_stats_rendering_drops_all_zero_columns():
    rows = [{"proc": "sip worker 1/2", "pid": 5, "requests": 3, "errors": 0},
            {"proc": "sip worker 2/2", "pid": 6, "requests": 0, "errors": 0}]
    header = render_stats(rows).splitlines()[0].split()
    assert header == ["PROC", "PID", "REQUESTS"]


def test_ctlcli_reads_fifo_socket_and_db_url_from_a_cfg(tmp_path):
    cfg = tmp_path / "x.cfg"
    cfg.write_text(
        '# fifo="/not/this"\n'
        'fifo="/tmp/ser_fifo"   # the FIFO\n'
        "ctl_socket=/run/x.sock\n"
        'modparam("usrloc", "db_url", "mysql://ser:heslo@localhost/ser")\n'
        'modparam("auth_db", "db_url", "mysql://other@localhost/ser")\n')
    assert read_cfg(str(cfg)) == {"fifo": "/tmp/ser_fifo", "ctl_socket": "/run/x.sock",
                                  "db_url": "mysql://ser:heslo@localhost/ser"}


def test_json_reply_serialises_odd_values():
    data = proto.encode_reply(proto.Reply(200, "ok", {"t": (1, 2), 3: "x"}))
    assert orjson.loads(data)["data"] == {"t": [1, 2], "3": "x"}


def test_reply_fifo_lookup_next_to_the_fifo_then_tmp(tmp_path):
    from natserver.workers.ctl import reply_fifo_path
    fifo = str(tmp_path / "ser_fifo")
    (tmp_path / "here").write_text("")
    assert reply_fifo_path(fifo, "here") == str(tmp_path / "here")
    assert reply_fifo_path(fifo, "elsewhere") == "/tmp/elsewhere"
    assert reply_fifo_path(fifo, "/abs/reply") == "/abs/reply"
    assert reply_fifo_path(fifo, "../escape") is None
