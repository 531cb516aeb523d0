"""natserver.resolve: the next-hop name cache t_relay uses, and SER's dns/rev_dns Via
comparison. Lookups are injected: no DNS query leaves the test."""

from __future__ import annotations

from natserver.resolve import Resolver, ip_literal


class Lookups:
    def __init__(self, table: dict[str, str | None]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, host: str) -> str | None:
        self.asked.append(host)
        return self.table.get(host)


def test_ip_literals_need_no_lookup():
    look = Lookups({})
    r = Resolver(lookup=look)
    assert r.resolve("192.0.2.1", 0.0) == "192.0.2.1"
    assert r.resolve("2001:db8::1", 0.0) == "2001:db8::1"
    assert r.resolve("[2001:DB8::1]", 0.0) == "2001:db8::1"
    assert look.asked == []
    assert ip_literal("proxy.example") is None


def test_names_are_cached_until_the_ttl():
    look = Lookups({"proxy.example": "192.0.2.7"})
    r = Resolver(lookup=look, ttl=60.0)
    assert r.resolve("proxy.example", 0.0) == "192.0.2.7"
    assert r.resolve("proxy.example", 59.0) == "192.0.2.7"
    assert look.asked == ["proxy.example"]
    look.table["proxy.example"] = "192.0.2.8"
    assert r.resolve("proxy.example", 61.0) == "192.0.2.8"
    assert look.asked == ["proxy.example"] * 2


def test_failures_are_cached_briefly():
    look = Lookups({})
    r = Resolver(lookup=look, negative_ttl=10.0)
    assert r.resolve("gone.invalid", 0.0) is None
    assert r.resolve("gone.invalid", 5.0) is None
    assert len(look.asked) == 1
    look.table["gone.invalid"] = "192.0.2.9"
    assert r.resolve("gone.invalid", 11.0) == "192.0.2.9"


def test_cache_is_bounded():
    look = Lookups({f"h{i}.example": f"192.0.2.{i % 250}" for i in range(50)})
    r = Resolver(lookup=look, max_entries=10)
    for i in range(50):
        r.resolve(f"h{i}.example", 0.0)
    assert len(r._cache) <= 10


def test_via_is_source_without_dns_compares_text():
    look = Lookups({"ua.example": "192.0.2.5"})
    r = Resolver(lookup=look, reverse=lambda ip: ["ua.example"])
    assert r.via_is_source("192.0.2.5", "192.0.2.5", 0.0)
    assert r.via_is_source("2001:db8::5", "2001:DB8:0::5", 0.0)
    assert not r.via_is_source("ua.example", "192.0.2.5", 0.0)   # dns=no, rev_dns=no
    assert look.asked == []


def test_via_is_source_with_dns_and_rev_dns():
    look = Lookups({"ua.example": "192.0.2.5"})
    r = Resolver(lookup=look, reverse=lambda ip: ["UA.example"] if ip == "192.0.2.6" else [])
    assert r.via_is_source("ua.example", "192.0.2.5", 0.0, dns=True)
    assert not r.via_is_source("ua.example", "192.0.2.6", 0.0, dns=True)
    assert r.via_is_source("ua.example", "192.0.2.6", 0.0, rev_dns=True)
    assert not r.via_is_source("other.example", "192.0.2.6", 0.0, dns=True, rev_dns=True)
