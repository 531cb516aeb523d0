"""registrar save()/lookup() through compiled cfg, on SQLite and MariaDB (RFC 3261 10.3,
functions.md "registrar")."""

from __future__ import annotations

import pytest

from natserver.db import open_db
from tests.helpers.regclient import contact_values, register
from tests.helpers.sipclient import request
from tests.modules.conftest import SRC, cfg_text

C1 = "<sip:alice@192.0.2.50:5062>"
C2 = "<sip:alice@192.0.2.51:5064>"


def reg(h, user="alice", contact=C1, expires=None, headers=(), **kw):
    data = register(user, "example.org", SRC, contact=contact, expires=expires,
                    headers=["X-No-Auth: yes", *headers], **kw)
    return h.final(data)


def bindings(reply):
    return contact_values(reply.get("Contact"))


def invite(h, user="alice", headers=()):
    data = request("INVITE", f"sip:{user}@example.org", src=SRC, headers=list(headers))
    return h.final(data), h.run(data)


@pytest.fixture
def h(make, schema_url):
    return make(cfg_text(schema_url))


def test_register_lists_binding_with_expires(h):
    r = reg(h)
    assert r.status == 200 and r.reason == "OK"
    assert r.get("Contact") == "<sip:alice@192.0.2.50:5062>;expires=3600"
    assert r.param("To", "tag")  # replied by sl, tagged


def test_expires_param_over_header_over_default(h):
    r = reg(h, contact=f"{C1};expires=120, {C2}", expires=300)
    got = {b["uri"]: int(b["expires"]) for b in bindings(r)}
    assert got == {"sip:alice@192.0.2.50:5062": 120, "sip:alice@192.0.2.51:5064": 300}
    r = reg(h, user="bob", contact="<sip:bob@192.0.2.9>")
    assert bindings(r)[0]["expires"] == "3600"
    # a bad parameter counts as default_expires, a bad header as absent
    r = reg(h, user="carol", contact="<sip:carol@192.0.2.9>;expires=soon")
    assert bindings(r)[0]["expires"] == "3600"
    r = reg(h, user="dave", contact="<sip:dave@192.0.2.9>",
            headers=["Expires: tomorrow"])
    assert bindings(r)[0]["expires"] == "3600"


def test_query_lists_current_bindings(h):
    reg(h, contact=f"{C1}, {C2}", expires=600)
    h.now += 10
    r = reg(h, contact=None)
    assert r.status == 200
    assert sorted((b["uri"], b["expires"]) for b in bindings(r)) == [
        ("sip:alice@192.0.2.50:5062", "590"), ("sip:alice@192.0.2.51:5064", "590")]
    assert reg(h, user="nobody", contact=None).get("Contact") is None


def test_too_short_expiry_is_raised_to_min_expires(h):
    r = reg(h, expires=10)
    assert bindings(r)[0]["expires"] == "60"


def test_min_expires_mode_answers_423(make, schema_url):
    h = make(cfg_text(schema_url, params='modparam("registrar", "min_expires_mode", 1)\n'
                                        'modparam("registrar", "min_expires", 120)'))
    r = reg(h, expires=30)
    assert r.status == 423 and r.reason == "Interval Too Brief"
    assert r.get("Min-Expires") == "120"
    assert reg(h, contact=None).get("Contact") is None  # nothing stored
    assert bindings(reg(h, expires=120))[0]["expires"] == "120"
    assert reg(h, expires=0).get("Contact") is None  # 0 is a removal, never too brief


def test_max_expires_caps(make, schema_url):
    h = make(cfg_text(schema_url, params='modparam("registrar", "max_expires", 900)'))
    assert bindings(reg(h, expires=7200))[0]["expires"] == "900"


def test_zero_expires_removes_one_binding(h):
    reg(h, contact=f"{C1}, {C2}")
    r = reg(h, contact=f"{C1};expires=0")
    assert [b["uri"] for b in bindings(r)] == ["sip:alice@192.0.2.51:5064"]


def test_star_with_expires_zero_removes_all(h):
    reg(h, contact=f"{C1}, {C2}")
    r = reg(h, contact="*", expires=0)
    assert r.status == 200 and r.get("Contact") is None
    assert invite(h)[0].status == 404


@pytest.mark.parametrize(("contact", "expires", "text"), [
    ("*", 10, "* used in contact and expires is not zero"),
    ("*", None, "* used in contact and expires is not zero"),
    (f"*, {C1}", 0, "* used in contact and more than 1 contact"),
])
def test_bad_star_is_400(h, contact, expires, text):
    reg(h)
    r = reg(h, contact=contact, expires=expires)
    assert r.status == 400 and r.get("P-Registrar-Error") == text
    assert len(bindings(reg(h, contact=None))) == 1


def test_q_orders_bindings_and_branches(h):
    r = reg(h, contact="<sip:alice@10.0.0.1>;q=0.1, <sip:alice@10.0.0.2>, "
                       "<sip:alice@10.0.0.3>;q=0.9")
    assert [(b["uri"], b.get("q")) for b in bindings(r)] == [
        ("sip:alice@10.0.0.3", "0.9"), ("sip:alice@10.0.0.1", "0.1"),
        ("sip:alice@10.0.0.2", None)]
    reply, m = invite(h)
    assert reply.status == 302
    assert m.new_uri == b"sip:alice@10.0.0.3"
    assert [(b.uri, b.q) for b in m.branches] == [(b"sip:alice@10.0.0.1", 100),
                                                   (b"sip:alice@10.0.0.2", -1)]
    assert reply.get("Contact") == ("<sip:alice@10.0.0.3>, <sip:alice@10.0.0.1>, "
                                    "<sip:alice@10.0.0.2>")


@pytest.mark.parametrize("q", ["2", "0.1234", "x", "1.5", ".5"])
def test_bad_q_is_400(h, q):
    r = reg(h, contact=f"{C1};q={q}")
    assert r.status == 400 and r.get("P-Registrar-Error") == "Invalid q param in contact"


def test_cseq_ordering_per_call_id(h):
    reg(h, call_id="cid-1", cseq=5)
    r = reg(h, call_id="cid-1", cseq=4, expires=0)
    assert r.status == 400 and r.get("P-Registrar-Error") == "Invalid CSeq number"
    # the same CSeq again is a retransmission: nothing changes
    r = reg(h, call_id="cid-1", cseq=5, expires=0)
    assert r.status == 200 and len(bindings(r)) == 1
    # another Call-ID may use any CSeq
    r = reg(h, call_id="cid-2", cseq=1, expires=120)
    assert bindings(r)[0]["expires"] == "120"
    r = reg(h, call_id="cid-2", cseq=2, expires=0)
    assert r.status == 200 and r.get("Contact") is None


def test_nat_flag_stored_and_restored(h):
    reg(h, headers=["X-Test-Nat: yes"])
    [c] = h.ul.get("location", b"alice", h.now)
    assert c.cflags == 1 << 6
    _, m = invite(h)
    assert m.flags & (1 << 6)
    reg(h)  # no NAT this time: the mark is cleared
    assert h.ul.get("location", b"alice", h.now)[0].cflags == 0
    assert not invite(h)[1].flags & (1 << 6)


def test_nat_flag_set_when_a_branch_is_nated(h):
    reg(h, contact=f"{C1};q=0.9")
    reg(h, contact=f"{C2};q=0.1", headers=["X-Test-Nat: yes"], call_id="other")
    _, m = invite(h)
    assert m.new_uri == b"sip:alice@192.0.2.50:5062" and m.flags & (1 << 6)
    assert m.branches[0].flags == 1 << 6


def test_received_from_contact_param_is_next_hop(h):
    r = reg(h, contact=f'{C1};received="sip:203.0.113.7:40312"')
    assert bindings(r)[0]["received"] == "sip:203.0.113.7:40312"
    assert r.get("Contact") == ('<sip:alice@192.0.2.50:5062>;expires=3600;'
                                'received="sip:203.0.113.7:40312"')
    _, m = invite(h)
    assert m.new_uri == b"sip:alice@192.0.2.50:5062"
    assert m.dst_uri == b"sip:203.0.113.7:40312"


def test_received_from_fix_nated_register(make, schema_url):
    text = cfg_text(schema_url).replace('loadmodule "sl.so"', 'loadmodule "sl.so"\n'
                                        'loadmodule "regtest.so"')
    text = text.replace('if (search("^X-Test-Nat: yes")) { setflag(6); };',
                        'if (search("^X-Test-Nat: yes")) { setflag(6); set_received(); };')
    h = make(text)
    r = reg(h, headers=["X-Test-Nat: yes"])
    assert bindings(r)[0]["received"] == "sip:192.0.2.50:5062"
    _, m = invite(h)
    assert m.dst_uri == b"sip:192.0.2.50:5062" and m.flags & (1 << 6)
    # the Contact's own ;received= wins
    r = reg(h, contact=f'{C1};received="sip:198.51.100.1:1"', headers=["X-Test-Nat: yes"])
    assert bindings(r)[0]["received"] == "sip:198.51.100.1:1"


def test_max_contacts_is_503(make, schema_url):
    h = make(cfg_text(schema_url, params='modparam("registrar", "max_contacts", 2)\n'
                                        'modparam("registrar", "retry_after", 30)'))
    reg(h, contact=f"{C1}, {C2}")
    r = reg(h, contact="<sip:alice@192.0.2.99>")
    assert r.status == 503
    assert r.get("P-Registrar-Error") == "Too many registered contacts"
    assert r.get("Retry-After") == "30"
    assert reg(h, contact=C1, expires=600).status == 200  # refreshing is fine
    assert len(bindings(reg(h, contact=None))) == 2


def test_lookup_without_bindings_is_404(h):
    assert invite(h, "nobody")[0].status == 404
    reg(h, expires=60)
    h.now += 61
    reply, _ = invite(h)
    assert reply.status == 404 and reply.reason == "User Not Found"
    m = h.run(request("OPTIONS", "sip:alice@example.org", src=SRC))
    registrar = h.ctx.modules["registrar"]
    assert registrar.lookup(m, "location") == -5
    assert registrar.lookup(h.run(request("OPTIONS", "sip:zed@example.org", src=SRC)),
                            "location") == -3
    assert registrar.lookup(h.run(request("OPTIONS", "sip:example.org", src=SRC)),
                            "location") == -1


def test_lookup_aliases_rewrites_the_request_uri(h):
    reg(h)
    h.ul.add_permanent("aliases", "support", "sip:alice@example.org", "")
    reply, m = invite(h, "support", headers=["X-Aliases: yes"])
    assert reply.status == 302 and m.new_uri == b"sip:alice@192.0.2.50:5062"
    assert invite(h, "sales", headers=["X-Aliases: yes"])[0].status == 404


def test_case_insensitive_aor_and_escapes(h):
    reg(h, user="Alice")
    assert invite(h, "ALICE")[0].status == 302
    assert invite(h, "%61lice")[0].status == 302


def test_too_long_contact_is_400(h):
    r = reg(h, contact="<sip:" + "a" * 600 + "@example.org>")
    assert r.status == 400 and r.get("P-Registrar-Error") == "Contact/received too long"


def test_expired_contacts_removed_by_timer(make, schema_url):
    h = make(cfg_text(schema_url, db_mode=1))
    reg(h, expires=60)
    reg(h, user="bob", contact="<sip:bob@192.0.2.9>", expires=3600)
    h.timer(61)
    assert [e.key for e in h.ul.tables["location"].scan()] == [b"bob"]
    with open_db(schema_url) as db:
        assert db.select("location", ["username"]) == [("bob",)]


@pytest.mark.parametrize("mode", [1, 2])
def test_bindings_survive_a_restart(make, schema_url, mode):
    h = make(cfg_text(schema_url, db_mode=mode))
    reg(h, contact=f'{C1};q=0.5;received="sip:203.0.113.7:4000"', expires=900,
        headers=["X-Test-Nat: yes"], call_id="cid-r", cseq=7)
    with open_db(schema_url) as db:
        rows = db.select("location", ["username", "contact", "cflags", "callid", "cseq"])
        if mode == 1:  # write-through: in the DB before the 200
            assert rows == [("alice", "sip:alice@192.0.2.50:5062", 64, "cid-r", 7)]
        else:  # write-back: only after the timer's flush
            assert rows == []
            h.timer()
            assert len(db.select("location", ["id"])) == 1
    h2 = make(cfg_text(schema_url, db_mode=mode), now=h.now + 5)
    [c] = h2.ul.get("location", b"alice", h2.now)
    assert (c.contact, c.q, c.received, c.cflags, c.callid, c.cseq) == (
        b"sip:alice@192.0.2.50:5062", 500, b"sip:203.0.113.7:4000", 64, b"cid-r", 7)
    assert c.remaining(h2.now) in (894, 895)
    # a removal reaches the DB too
    reg(h2, expires=0, call_id="cid-r", cseq=8)
    h2.timer()
    with open_db(schema_url) as db:
        assert db.select("location", ["id"]) == []


def test_db_only_mode(make, schema_url):
    h = make(cfg_text(schema_url, db_mode=3))
    assert "location" not in h.ctx.tables.tables
    r = reg(h, contact=f"{C1};q=0.2, {C2};q=0.8", expires=600)
    assert [b["uri"] for b in bindings(r)] == ["sip:alice@192.0.2.51:5064",
                                               "sip:alice@192.0.2.50:5062"]
    with open_db(schema_url) as db:
        assert len(db.select("location", ["id"])) == 2
    assert invite(h)[1].new_uri == b"sip:alice@192.0.2.51:5064"
    reg(h, contact="*", expires=0)
    with open_db(schema_url) as db:
        assert db.select("location", ["id"]) == []
