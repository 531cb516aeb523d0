"""rr: record_route() and loose_route() through a compiled cfg, read on the wire: what
t_relay sends and where (in-process, tests/helpers/inproc.py)."""

from __future__ import annotations

import pytest

from tests.helpers.inproc import LISTEN, Proxy
from tests.helpers.sipclient import Parsed, parse, request

UAC = ("10.0.0.1", 5070)
ME = f"{LISTEN[0]}"

HEAD = """
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "textops.so"
loadmodule "uri.so"
"""
LR = """
route {
  if (loose_route()) { append_hf("X-LR: 1\\r\\n"); } else { append_hf("X-LR: -1\\r\\n"); };
  if (!t_relay()) { sl_reply_error(); };
}
"""


def run(cfg: str, data: bytes, **kw) -> tuple[Parsed, tuple[str, int]]:
    p = Proxy(cfg, **kw)
    try:
        sent = p.feed(data, UAC)
    finally:
        p.close()
    out = [(parse(s.data), s.addr) for s in sent if not s.data.startswith(b"SIP/2.0 1")]
    assert len(out) == 1, [s.first for s in sent]
    return out[0]


def routed(data: bytes) -> tuple[Parsed, tuple[str, int]]:
    return run(HEAD + LR, data)


def req(method: str = "BYE", ruri: str = "sip:bob@10.0.0.2:5080", *, routes=(),
        to_tag: str | None = "t1", **kw) -> bytes:
    headers = [f"Route: {r}" for r in routes] + kw.pop("headers", [])
    return request(method, ruri, src=UAC, to_tag=to_tag, headers=headers, **kw)


# ---- record_route ---------------------------------------------------------------------

RR = """
route {
  record_route();
  if (record_route()) { append_hf("X-Second: yes\\r\\n"); };
  t_relay();
}
"""


def test_record_route_first_line_with_ftag_and_lr_on():
    fwd, _ = run(HEAD + 'modparam("rr", "enable_full_lr", 1)\n' + RR,
                 req("INVITE", to_tag=None, from_="<sip:a@x>;tag=ft1",
                     headers=["Record-Route: <sip:10.9.9.9;lr>"]))
    names = [n.lower() for n, _ in fwd.headers]
    assert names[:2] == ["via", "record-route"]                 # ours, above the old one
    assert fwd.all("Record-Route") == [f"<sip:{ME};ftag=ft1;lr=on>", "<sip:10.9.9.9;lr>"]
    assert fwd.get("X-Second") is None                          # a second call is false


def test_record_route_plain_lr_and_port():
    fwd, _ = run(HEAD + RR, req("INVITE", to_tag=None, from_="<sip:a@x>;tag=ft1"),
                 listen=("192.0.2.13", 5070))
    assert fwd.get("Record-Route") == "<sip:192.0.2.13:5070;ftag=ft1;lr>"


def test_record_route_without_ftag():
    fwd, _ = run(HEAD + 'modparam("rr", "append_fromtag", 0)\n' + RR,
                 req("INVITE", to_tag=None, from_="<sip:a@x>;tag=ft1"))
    assert fwd.get("Record-Route") == f"<sip:{ME};lr>"
    fwd, _ = run(HEAD + RR, req("INVITE", to_tag=None, from_="<sip:a@x>"))
    assert fwd.get("Record-Route") == f"<sip:{ME};lr>"


# ---- loose_route ----------------------------------------------------------------------

def test_no_route_is_false():
    fwd, dst = routed(req())
    assert fwd.get("X-LR") == "-1" and dst == ("10.0.0.2", 5080)


def test_own_route_only_initial_request():
    fwd, dst = routed(req("INVITE", routes=[f"<sip:{ME};lr>"], to_tag=None))
    assert fwd.get("X-LR") == "-1"
    assert fwd.get("Route") is None and dst == ("10.0.0.2", 5080)


def test_own_route_only_in_dialog():
    fwd, dst = routed(req(routes=[f"<sip:{ME};lr=on;ftag=x>"]))
    assert fwd.get("X-LR") == "1"
    assert fwd.get("Route") is None and dst == ("10.0.0.2", 5080)
    assert fwd.ruri == "sip:bob@10.0.0.2:5080"


def test_next_loose_hop():
    fwd, dst = routed(req(routes=[f"<sip:{ME};lr>", "<sip:10.0.0.9:5099;lr>"]))
    assert fwd.get("X-LR") == "1" and dst == ("10.0.0.9", 5099)
    assert fwd.all("Route") == ["<sip:10.0.0.9:5099;lr>"]
    assert fwd.ruri == "sip:bob@10.0.0.2:5080"


def test_next_strict_hop():
    fwd, dst = routed(req(routes=[f"<sip:{ME};lr>", "<sip:10.0.0.9:5099>", "<sip:10.0.0.8;lr>"]))
    assert fwd.get("X-LR") == "1"
    assert fwd.ruri == "sip:10.0.0.9:5099" and dst == ("10.0.0.9", 5099)
    assert fwd.all("Route") == ["<sip:10.0.0.8;lr>", "<sip:bob@10.0.0.2:5080>"]


def test_strict_router_before_us():
    """The previous hop put our Record-Route URI into the R-URI and the original R-URI
    at the end of the Route set (RFC 3261 16.4)."""
    fwd, dst = routed(req(ruri=f"sip:{ME};lr", routes=["<sip:10.0.0.9:5099;lr>",
                                                       "<sip:bob@10.0.0.2:5080>"]))
    assert fwd.get("X-LR") == "1"
    assert fwd.ruri == "sip:bob@10.0.0.2:5080" and dst == ("10.0.0.9", 5099)
    assert fwd.all("Route") == ["<sip:10.0.0.9:5099;lr>"]


def test_strict_router_before_us_with_strict_next():
    fwd, dst = routed(req(ruri=f"sip:{ME}", routes=[f"<sip:{ME};lr>", "<sip:10.0.0.9:5099>"]))
    assert fwd.get("X-LR") == "1"
    assert fwd.ruri == "sip:10.0.0.9:5099" and dst == ("10.0.0.9", 5099)
    assert fwd.get("Route") is None


def test_strict_router_before_us_nothing_left():
    p = Proxy(HEAD + LR)
    try:
        sent = p.feed(req(ruri=f"sip:{ME}", routes=[f"<sip:{ME};lr>"]), UAC)
    finally:
        p.close()
    up = [parse(s.data) for s in sent]
    assert [m.status for m in up] == [482]      # loose_route false, R-URI is ourselves


def test_double_route_with_r2_removed():
    fwd, dst = routed(req(routes=[f"<sip:{ME};r2=on;lr>", f"<sip:{ME};r2=on;lr>",
                                  "<sip:10.0.0.9;lr>"]))
    assert fwd.all("Route") == ["<sip:10.0.0.9;lr>"] and dst == ("10.0.0.9", 5060)


def test_several_values_in_one_row():
    fwd, dst = routed(req(routes=[f"<sip:{ME};lr>, <sip:10.0.0.9;lr>,<sip:10.0.0.8;lr>"]))
    assert fwd.all("Route") == ["<sip:10.0.0.9;lr>, <sip:10.0.0.8;lr>"]
    assert dst == ("10.0.0.9", 5060)


def test_preloaded_route_not_ours():
    fwd, dst = routed(req("INVITE", to_tag=None, routes=["<sip:10.0.0.9:5099;lr>"]))
    assert fwd.get("X-LR") == "1" and dst == ("10.0.0.9", 5099)
    assert fwd.all("Route") == ["<sip:10.0.0.9:5099;lr>"]


@pytest.mark.parametrize("route", [f"<sip:{ME}:5061;lr>", "<sip:192.0.2.14;lr>"])
def test_other_port_or_host_is_not_us(route):
    fwd, _ = routed(req(routes=[route]))
    assert fwd.all("Route") == [route]


def test_broken_route_is_false():
    fwd, dst = routed(req(routes=["<sip:10.0.0.9;lr"]))
    assert fwd.get("X-LR") == "-1" and dst == ("10.0.0.2", 5080)
