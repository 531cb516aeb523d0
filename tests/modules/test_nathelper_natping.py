"""nathelper's keepalives, driven in this process: REGISTERs through the seed's NAT block
and save(), then the natping hook run on a simulated clock, packets read from a
ListTransport. Covers the schedule (drift-free, sliced, each contact once per
interval), targets (received, Contact, skipped ones), ping_nated_only, expiry, the ctl
switch and the OPTIONS variant with its reply filter and keepalive_timeout."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from natserver.modules.nathelper import (
    Schedule,
    build_sipping,
    ka_ruid,
    ping_target,
    sipping_prefix,
    slice_count,
)
from natserver.modules.usrloc import Contact
from natserver.sip.message import Message
from tests.helpers.sipclient import parse
from tests.modules.test_nathelper import LOCAL, NatHarness

NATED = ("203.0.113.7", 40312)
PUBLIC_UA = ("198.51.100.20", 5060)


def cfg(params: str = "", *, interval: int = 30, nated_only: int = 1, db: str = "",
        db_mode: int = 0, table: int = 1024) -> str:
    db_load = 'loadmodule "sqlite.so"' if db else ""
    db_param = f'modparam("usrloc", "db_url", "{db}")' if db else ""
    return f"""
listen=127.0.0.1
port=5060
children=1
ul_table_size={table}
loadmodule "sl.so"
loadmodule "textops.so"
{db_load}
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "nathelper.so"
modparam("usrloc", "db_mode", {db_mode})
{db_param}
modparam("registrar", "nat_flag", 6)
modparam("registrar", "min_expires", 10)
modparam("nathelper", "natping_interval", {interval})
modparam("nathelper", "ping_nated_only", {nated_only})
{params}
route {{
  if (method=="REGISTER") {{
    if (!search("^Contact:[ ]*\\*") && nat_uac_test("19")) {{
      setflag(6);
      fix_nated_register();
      force_rport();
    }};
    if (!save("location")) {{ sl_reply_error(); }};
    break;
  }};
  sl_send_reply("404", "Not Here");
}}
onreply_route[1] {{ setflag(9); }}
"""


@pytest.fixture
def make(tmp_path):
    made: list[NatHarness] = []

    def factory(text: str, **kw: Any) -> NatHarness:
        h = NatHarness(text, tmp_path, **kw)
        made.append(h)
        return h
    yield factory
    for h in made:
        h.close()


def register(h: NatHarness, user: str, contact: str, via: str, src: tuple[str, int],
             expires: int = 3600) -> None:
    data = (f"REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {via};branch=z9hG4bK-{user}-{h.now}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@example.com>;tag=a{user}\r\n"
            f"To: <sip:{user}@example.com>\r\nCall-ID: reg-{user}@x\r\n"
            f"CSeq: {int(h.now) % 100000 + 1} REGISTER\r\nContact: <{contact}>\r\n"
            f"Expires: {expires}\r\nContent-Length: 0\r\n\r\n").encode()
    sent = h.receive(data, src)
    finals = [parse(d) for d, _ in sent if parse(d).status >= 200]
    assert finals and finals[-1].status == 200, [parse(d).first for d, _ in sent]


def register_nated(h: NatHarness, user: str = "alice", src: tuple[str, int] = NATED,
                   expires: int = 3600) -> None:
    register(h, user, f"sip:{user}@192.168.1.10:5060", "192.168.1.10:5060", src, expires)


def register_public(h: NatHarness, user: str = "bob", src: tuple[str, int] = PUBLIC_UA,
                    expires: int = 3600) -> None:
    register(h, user, f"sip:{user}@{src[0]}:{src[1]}", f"{src[0]}:{src[1]}", src, expires)


def drive(h: NatHarness, seconds: float) -> list[tuple[float, bytes, tuple[str, int]]]:
    """Run the natping hook for ``seconds`` of simulated time: (time, data, address)."""
    nh = h.module("nathelper")
    end = h.mono + seconds
    out = []
    for _ in range(100000):
        delay = nh.natping(h.ctx, h.now)
        out += [(h.mono, data, addr) for data, addr in h.transport.take()]
        step = 1.0 if delay is None else delay
        if h.mono + step >= end:
            h.now += end - h.mono
            h.mono = end
            return out
        h.mono += step
        h.now += step
    raise AssertionError("natping never let the time pass")


def to(sent, addr):
    return [t for t, _, a in sent if a == addr]


# ---- the schedule (sans-IO) ---------------------------------------------------------------

def test_schedule_is_drift_free_and_covers_every_slice():
    s = Schedule(30.0, 8, 100.0)
    seen: list[tuple[float, int]] = []
    t = 100.0
    while t < 100.0 + 90.0:
        for k in s.due(t):
            seen.append((t, k))
        t += s.delay(t) or 1e-9
    assert [k for _, k in seen] == list(range(8)) * 3
    # tick n runs exactly at start + n * 30 / 8, whatever the rounding of earlier waits
    assert [round(t - 100.0, 6) for t, _ in seen] == [round(n * 3.75, 6) for n in range(24)]


def test_schedule_late_calls_catch_up_within_one_round():
    s = Schedule(10.0, 5, 0.0)
    assert s.due(0.0) == [0]
    assert s.due(1.0) == []
    assert s.due(4.5) == [1, 2]          # ticks at 2 and 4 were due
    assert s.delay(4.5) == pytest.approx(1.5)
    assert sorted(s.due(100.0)) == [0, 1, 2, 3, 4]   # stalled 9 rounds: one round
    assert s.lagged == 43
    assert s.delay(100.0) == pytest.approx(2.0)


def test_slice_count():
    assert slice_count(30, 64) == 64
    assert slice_count(2, 64) == 20        # at most 10 ticks a second
    assert slice_count(30, 4) == 4
    assert slice_count(1, 1) == 1


# ---- targets ------------------------------------------------------------------------------

@pytest.mark.parametrize("uri, expected", [
    (b"sip:203.0.113.7:40312", ("203.0.113.7", 40312)),
    (b"sip:alice@198.51.100.1", ("198.51.100.1", 5060)),
    (b"sip:alice@198.51.100.1:5070;transport=UDP", ("198.51.100.1", 5070)),
    (b"sip:alice@pc.example.com:5060", None),
    (b"sip:alice@198.51.100.1;transport=tcp", None),
    (b"sips:alice@198.51.100.1", None),
    (b"tel:+4930123", None),
    (b"sip:alice@[2001:db8::1]:5060", None),         # IPv4 listen socket
    (b"not a uri", None),
])
def test_ping_target(uri, expected):
    import socket
    addr, why = ping_target(uri, socket.AF_INET)
    assert addr == expected
    assert (why == "") == (expected is not None)


def test_ping_target_ipv6_socket():
    import socket
    assert ping_target(b"sip:a@[2001:db8::1]:5062", socket.AF_INET6)[0] == ("2001:db8::1", 5062)


# ---- UDP keepalives -----------------------------------------------------------------------

def test_nated_contact_gets_4_bytes_once_per_interval_at_received(make):
    h = make(cfg())
    register_nated(h)
    register_public(h)
    sent = drive(h, 90.0)
    alice = to(sent, NATED)
    assert len(alice) == 3
    assert all(data == b"\x00\x00\x00\x00" for _, data, addr in sent if addr == NATED)
    assert [b - a for a, b in zip(alice, alice[1:])] == [30.0, 30.0]
    assert to(sent, PUBLIC_UA) == []                 # ping_nated_only=1: no NAT mark, no ping
    assert to(sent, ("192.168.1.10", 5060)) == []    # never the private Contact address
    assert h.ctx.stats.natpings == 3


def test_ping_nated_only_0_pings_everyone_at_contact_or_received(make):
    h = make(cfg(nated_only=0))
    register_nated(h)
    register_public(h)
    sent = drive(h, 60.0)
    assert len(to(sent, NATED)) == 2
    assert len(to(sent, PUBLIC_UA)) == 2


def test_re_register_without_nat_clears_the_mark(make):
    h = make(cfg())
    home = ("198.51.100.40", 5060)
    contact = "sip:alice@198.51.100.40:5060"

    def reg(src):
        register(h, "alice", contact, "198.51.100.40:5060", src)
    reg(home)                                        # consistent: no NAT mark
    assert drive(h, 30.0) == []
    reg(("198.51.100.40", 41000))                    # the same contact from behind a NAT
    assert [a for _, _, a in drive(h, 30.0)] == [("198.51.100.40", 41000)]
    reg(home)                                        # mark (and received) cleared again
    assert drive(h, 60.0) == []


def test_expired_binding_stops_being_pinged(make):
    h = make(cfg(interval=10))
    start = h.mono
    register_nated(h, expires=25)
    times = to(drive(h, 60.0), NATED)
    # one ping every 10 s while the binding lasts, none after it expired at +25 s
    assert len(times) in (2, 3)
    assert [b - a for a, b in zip(times, times[1:])] == [10.0] * (len(times) - 1)
    assert max(times) < start + 25.0


def test_unregistered_binding_stops_being_pinged(make):
    h = make(cfg(interval=10))
    register_nated(h)
    assert len(to(drive(h, 10.0), NATED)) == 1
    register_nated(h, expires=0)
    assert to(drive(h, 30.0), NATED) == []


def test_load_is_spread_over_the_interval(make):
    h = make(cfg(table=4096))
    ul = h.module("usrloc")
    n = 3000
    for i in range(n):
        aor = b"user%d" % i
        c = Contact(aor, b"sip:%s@10.0.%d.%d:5060" % (aor, i // 250, i % 250),
                    int(h.now) + 3600, cflags=1 << 6,
                    received=b"sip:127.0.%d.%d:%d" % (i // 250, i % 250 + 1, 10000 + i),
                    created=h.now, last_modified=int(h.now))
        with ul.locked(aor):
            ul.apply("location", aor, [c], [], h.now)
    stripes = ul.tables["location"].stripes
    sent = drive(h, 30.0)
    assert len(sent) == n
    assert len({addr for _, _, addr in sent}) == n   # each contact exactly once
    ticks: dict[float, int] = {}
    for t, _, _ in sent:
        ticks[t] = ticks.get(t, 0) + 1
    assert len(ticks) == slice_count(30, stripes) > 1
    assert max(ticks.values()) <= 2 * n / len(ticks)
    # the next round pings everybody again, once
    assert len(drive(h, 30.0)) == n


def test_non_ip_targets_are_skipped_and_logged_once(make, caplog):
    h = make(cfg(nated_only=0))
    register(h, "carol", "sip:carol@pc.example.com:5060", "198.51.100.21:5060",
             ("198.51.100.21", 5060))
    register(h, "dave", "sip:dave@198.51.100.30:5060;transport=tcp", "198.51.100.30:5060",
             ("198.51.100.30", 5060))
    register(h, "erin", "sip:erin@[2001:db8::5]:5060", "[2001:db8::5]:5060",
             ("2001:db8::5", 5060))
    register_public(h)
    with caplog.at_level(logging.WARNING, logger="natserver.nathelper"):
        sent = drive(h, 90.0)
    assert {addr for _, _, addr in sent} == {PUBLIC_UA}
    skipped = [r.getMessage() for r in caplog.records if "not pinging" in r.getMessage()]
    assert len(skipped) == 3, skipped
    assert any("pc.example.com" in s and "no DNS" in s for s in skipped)
    assert any("transport=tcp" in s for s in skipped)
    assert any("2001:db8::5" in s for s in skipped)


def test_ctl_switch(make):
    h = make(cfg())
    nh = h.module("nathelper")
    register_nated(h)
    assert nh.rpc_enable_ping(h.ctx, [])["enabled"] is True
    assert nh.rpc_enable_ping(h.ctx, ["0"])["enabled"] is False
    assert to(drive(h, 60.0), NATED) == []
    nh.rpc_enable_ping(h.ctx, ["1"])
    assert len(to(drive(h, 60.0), NATED)) == 2
    with pytest.raises(ValueError):
        nh.rpc_enable_ping(h.ctx, ["2"])


def test_ctl_switch_without_pinging(make):
    h = make(cfg(interval=0))
    with pytest.raises(ValueError, match="natping_interval=0"):
        h.module("nathelper").rpc_enable_ping(h.ctx, ["1"])
    register_nated(h)
    assert drive(h, 60.0) == []


def test_interval_needs_usrloc(tmp_path):
    text = """
listen=127.0.0.1
loadmodule "nathelper.so"
modparam("nathelper", "natping_interval", 30)
route { break; }
"""
    with pytest.raises(RuntimeError, match="usrloc"):
        NatHarness(text, tmp_path)


def test_db_only_mode_reads_once_per_round(make, tmp_path):
    h = make(cfg(db=f"sqlite:///{tmp_path / 'loc.db'}", db_mode=3, interval=10))
    register_nated(h)
    register_public(h)
    ul = h.module("usrloc")
    calls = []
    real = ul.iter_contacts

    def counting(**kw):
        calls.append(kw)
        return real(**kw)
    ul.iter_contacts = counting
    sent = drive(h, 30.0)
    assert len(to(sent, NATED)) == 3
    assert to(sent, PUBLIC_UA) == []
    assert len(calls) == 3                           # one DB read per round


# ---- SIP pings (OPTIONS) ------------------------------------------------------------------

SIPPING = """
modparam("nathelper", "sipping_flag", 6)
modparam("nathelper", "sipping_from", "sip:pinger@example.com")
"""


def answer(request: bytes, status: int = 200) -> bytes:
    """The UA's reply to an OPTIONS ping, built by hand from the request."""
    req = parse(request)
    lines = [f"SIP/2.0 {status} OK"]
    lines += [f"{name}: {value}" for name, value in req.headers
              if name.lower() in ("via", "from", "call-id", "cseq")]
    lines.append(f"To: {req.get('To')};tag=ua1")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_sipping_sends_options_from_the_listen_address(make):
    h = make(cfg(SIPPING))
    register_nated(h)
    register_public(h)
    sent = drive(h, 30.0)
    assert to(sent, PUBLIC_UA) == []
    [(_, data, addr)] = [s for s in sent if s[2] == NATED]
    req = parse(data)
    assert req.method == "OPTIONS"
    assert req.ruri == "sip:alice@192.168.1.10:5060"
    assert req.get("Via").startswith(f"SIP/2.0/UDP {LOCAL[0]}:{LOCAL[1]};branch=z9hG4bK")
    assert req.get("From").startswith("<sip:pinger@example.com>;tag=")
    assert req.get("To") == "<sip:alice@192.168.1.10:5060>"
    assert req.get("CSeq") == "1 OPTIONS"
    assert req.get("Call-ID").startswith(sipping_prefix(h.ctx.secret).decode() + "-")
    assert req.get("Call-ID").endswith("@127.0.0.1")
    assert req.get("Max-Forwards") == "70" and req.get("Content-Length") == "0"
    Message.parse(data).validate_request()           # natserver's own parser accepts it


def test_sipping_for_everyone_with_ping_nated_only_0(make):
    h = make(cfg(SIPPING, nated_only=0))
    register_nated(h)
    register_public(h)
    sent = drive(h, 30.0)
    assert [parse(d).method for _, d, _ in sent] == ["OPTIONS", "OPTIONS"]


def test_sipping_needs_sipping_from(tmp_path):
    from natserver.errors import CfgError
    with pytest.raises(CfgError, match="sipping_from"):
        NatHarness(cfg('modparam("nathelper", "sipping_flag", 6)'), tmp_path)


def test_ping_answers_are_swallowed_before_the_script(make):
    h = make(cfg(SIPPING))
    nh = h.module("nathelper")
    register_nated(h)
    [(_, data, _)] = drive(h, 30.0)
    reply = answer(data)
    assert nh.on_reply(h.msgctx(reply, NATED)) is True
    assert h.receive(reply, NATED) == []
    # not ours: two Vias, another method, another Call-ID
    two_vias = reply.replace(b"Via: ", b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\nVia: ", 1)
    assert nh.on_reply(h.msgctx(two_vias, NATED)) is False
    other = reply.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INFO")
    assert nh.on_reply(h.msgctx(other, NATED)) is False
    foreign = reply.replace(b"Call-ID: ", b"Call-ID: x")
    assert nh.on_reply(h.msgctx(foreign, NATED)) is False


def test_keepalive_timeout_removes_silent_contacts_only(make):
    h = make(cfg(SIPPING + 'modparam("nathelper", "keepalive_timeout", 45)\n', interval=10))
    register_nated(h, "alice", ("203.0.113.7", 40312))
    register_nated(h, "carl", ("203.0.113.8", 40000))
    ul = h.module("usrloc")
    for _ in range(10):                              # 100 s: alice answers, carl never does
        for _, data, addr in drive(h, 10.0):
            if addr == ("203.0.113.7", 40312):
                assert h.receive(answer(data), addr) == []
    assert [c.contact for c in ul.get("location", b"alice", h.now)] == [
        b"sip:alice@192.168.1.10:5060"]
    assert ul.get("location", b"carl", h.now) == []
    sent = drive(h, 20.0)
    assert {addr for _, _, addr in sent} == {("203.0.113.7", 40312)}


def test_build_sipping_and_ka_ruid():
    data = build_sipping(method=b"OPTIONS", contact=b"sip:a@10.0.0.1:5060",
                         from_uri=b"<sip:p@x>", via_host="2001:db8::1", via_port=5060,
                         ruid=b"ns-1-2", aor_hash=0xABC, counter=17, prefix=b"deadbeef",
                         ticks=99, path=b"<sip:edge.example.com;lr>")
    msg = Message.parse(data)
    assert msg.via1.host == "2001:db8::1"
    assert msg.find(b"Route").value == b"<sip:edge.example.com;lr>"
    assert msg.from_.tag == "ns-1-2-abc-11"
    assert ka_ruid(msg) == b"ns-1-2"
    assert msg.call_id == b"deadbeef-11-63@[2001:db8::1]"


def test_keepalive_timeout_spares_a_contact_that_registered_again(make):
    h = make(cfg(SIPPING + 'modparam("nathelper", "keepalive_timeout", 45)\n', interval=10))
    register_nated(h)
    drive(h, 10.0)                                   # the pinger exists now
    ul = h.module("usrloc")
    [stale] = ul.get("location", b"alice", h.now)
    h.now += 100.0                                   # silent far past the timeout...
    register_nated(h)                                # ...but it just registered again
    pinger = h.module("nathelper").pinger
    assert pinger.keepalive_lost(stale, h.now) is False
    assert len(ul.get("location", b"alice", h.now)) == 1
    [fresh] = ul.get("location", b"alice", h.now)
    assert pinger.keepalive_lost(fresh, h.now) is False    # registration counts as an answer


def test_unpingable_targets_are_logged_within_a_budget(make, caplog):
    from natserver.modules.nathelper import SKIP_LOG_MAX
    h = make(cfg(nated_only=0))
    ul = h.module("usrloc")
    n = SKIP_LOG_MAX + 5
    for i in range(n):
        aor = b"host%d" % i
        c = Contact(aor, b"sip:%s@pc%d.example.com" % (aor, i), int(h.now) + 3600,
                    created=h.now, last_modified=int(h.now))
        with ul.locked(aor):
            ul.apply("location", aor, [c], [], h.now)
    with caplog.at_level(logging.WARNING, logger="natserver.nathelper"):
        assert drive(h, 60.0) == []
    messages = [r.getMessage() for r in caplog.records]
    assert sum("not pinging" in m for m in messages) == SKIP_LOG_MAX
    assert sum("5 more targets" in m for m in messages) == 1    # and not again next round
