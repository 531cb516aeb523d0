"""advertised_address / advertised_port: a server behind 1:1 NAT writes the public
address it is reached at into Via and Record-Route, and takes it as itself in Route
headers and R-URIs (in-process, tests/helpers/inproc.py)."""

from __future__ import annotations

from tests.helpers.inproc import LISTEN, Proxy
from tests.helpers.sipclient import parse, request

UAC = ("10.0.0.1", 5070)
PUBLIC = "203.0.113.50"

HEAD = """
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "textops.so"
"""
ROUTE = """
route {
  if (loose_route()) { append_hf("X-LR: 1\\r\\n"); t_relay(); break; };
  if (uri==myself) { sl_send_reply("200", "Mine"); break; };
  record_route();
  t_relay();
}
"""


def relayed(cfg: str, data: bytes):
    p = Proxy(cfg)
    try:
        sent = p.feed(data, UAC)
    finally:
        p.close()
    return [(parse(s.data), s.addr) for s in sent if not s.data.startswith(b"SIP/2.0 1")]


def test_via_and_record_route_name_the_advertised_address():
    cfg = f'advertised_address="{PUBLIC}"\nadvertised_port=5080\n' + HEAD + ROUTE
    [(out, addr)] = relayed(cfg, request("INVITE", "sip:bob@10.0.0.2:5090", src=UAC))
    assert addr == ("10.0.0.2", 5090)
    assert out.all("Via")[0].startswith(f"SIP/2.0/UDP {PUBLIC}:5080;branch=z9hG4bK")
    assert out.get("Record-Route").startswith(f"<sip:{PUBLIC}:5080;")


def test_without_it_the_listen_address_is_written():
    [(out, _)] = relayed(HEAD + ROUTE, request("INVITE", "sip:bob@10.0.0.2:5090", src=UAC))
    assert out.all("Via")[0].startswith(f"SIP/2.0/UDP {LISTEN[0]}:{LISTEN[1]};branch=")
    assert out.get("Record-Route").startswith(f"<sip:{LISTEN[0]};")


def test_the_advertised_address_is_myself():
    cfg = f'advertised_address="{PUBLIC}"\n' + HEAD + ROUTE
    # an in-dialog request whose route set names the public address: our entry is
    # removed and the request goes on to the next hop
    bye = request("BYE", "sip:bob@10.0.0.2:5090", src=UAC, to_tag="t1",
                  headers=[f"Route: <sip:{PUBLIC};lr=on>"])
    [(out, addr)] = relayed(cfg, bye)
    assert addr == ("10.0.0.2", 5090) and out.get("X-LR") == "1" and out.get("Route") is None
    # and a request for the public address itself is answered, not forwarded
    [(reply, _)] = relayed(cfg, request("OPTIONS", f"sip:{PUBLIC}", src=UAC))
    assert reply.status == 200 and reply.reason == "Mine"
