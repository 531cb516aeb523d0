"""natserver/addr.py: private ranges at their exact edges, IP literals, host:port."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natserver.addr import (
    format_host,
    format_hostport,
    ip_family,
    ipv4_octets,
    is_ip_literal,
    is_ipv6,
    is_private,
    normalise_ip,
    parse_hostport,
    same_ip,
)

PRIVATE_NETS = [ipaddress.ip_network(n) for n in
                ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")]


@pytest.mark.parametrize("host", [
    "10.0.0.0", "10.255.255.255", "172.16.0.1", "172.31.255.255", "192.168.0.0",
    "192.168.1.10", "100.64.0.1", "100.127.255.255",
])
def test_private(host):
    assert is_private(host)


@pytest.mark.parametrize("host", [
    "9.255.255.255", "11.0.0.0", "172.15.255.255", "172.32.0.0", "192.167.255.255",
    "192.169.0.0", "100.63.255.255", "100.128.0.0", "127.0.0.1", "203.0.113.7",
    "192.0.0.1",                      # Kamailio's 192.0.0.0/29: not in natserver's list
    "0.0.0.0", "fd00::1", "::ffff:10.0.0.1", "example.com", "10.0.0", "10.0.0.0.1",
    "10.0.0.256", "010.0.0.1", "10.00.0.1", "", "10..0.1", " 10.0.0.1",
])
def test_not_private(host):
    assert not is_private(host)


@given(st.integers(min_value=0, max_value=(1 << 32) - 1))
def test_private_agrees_with_ipaddress(n):
    addr = ipaddress.IPv4Address(n)
    assert is_private(str(addr)) == any(addr in net for net in PRIVATE_NETS)


def test_ipv4_octets():
    assert ipv4_octets("192.168.1.10") == (192, 168, 1, 10)
    assert ipv4_octets("1.2.3") is None
    assert ipv4_octets("1.2.3.4444") is None
    assert ipv4_octets("a.b.c.d") is None


@pytest.mark.parametrize("host, family", [
    ("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6), ("[2001:db8::1]", socket.AF_INET6),
    ("2001:db8::1", socket.AF_INET6), ("example.com", None), ("1.2.3", None),
    ("2001:db8::zz", None), ("[127.0.0.1]", None),
])
def test_ip_family(host, family):
    assert ip_family(host) == family
    assert is_ip_literal(host) == (family is not None)


def test_is_ipv6():
    assert is_ipv6("fe80::1")
    assert not is_ipv6("10.0.0.1")
    assert not is_ipv6("host:5060")


def test_same_ip():
    assert same_ip("192.0.2.1", "192.0.2.1")
    assert not same_ip("192.0.2.1", "192.0.2.10")
    assert same_ip("2001:db8::1", "2001:DB8:0:0:0:0:0:1")
    assert same_ip("[::1]", "0:0::1")
    assert not same_ip("example.com", "192.0.2.1")
    assert normalise_ip("[2001:DB8::1]") == "2001:db8::1"
    assert normalise_ip("Example.COM") == "example.com"


def test_format():
    assert format_host("2001:db8::1") == "[2001:db8::1]"
    assert format_host("[2001:db8::1]") == "[2001:db8::1]"
    assert format_host("192.0.2.1") == "192.0.2.1"
    assert format_hostport("2001:db8::1", 5060) == "[2001:db8::1]:5060"
    assert format_hostport("192.0.2.1", 5070) == "192.0.2.1:5070"


@pytest.mark.parametrize("text, expected", [
    ("192.0.2.1:5070", ("192.0.2.1", 5070)),
    ("192.0.2.1", ("192.0.2.1", 5060)),
    ("Host.Example.com:5061", ("host.example.com", 5061)),
    ("[2001:db8::1]:5070", ("2001:db8::1", 5070)),
    ("[2001:db8::1]", ("2001:db8::1", 5060)),
    ("2001:db8::1", ("2001:db8::1", 5060)),
    (" 10.0.0.1:1 ", ("10.0.0.1", 1)),
])
def test_parse_hostport(text, expected):
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", [
    "", ":5060", "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:50x", "[2001:db8::1",
    "[2001:db8::1]5060", "[nothex]:5060", "a:b:c", "1.2.3.4:123456",
])
def test_parse_hostport_refuses(text):
    with pytest.raises(ValueError):
        parse_hostport(text)


def test_parse_hostport_default_port():
    assert parse_hostport("192.0.2.1", 5080) == ("192.0.2.1", 5080)
