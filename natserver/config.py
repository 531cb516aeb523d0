"""Global cfg parameters: one row per parameter (type, default, check, doc).

The same rows validate ``name=value`` lines in the cfg, fill :class:`Config` with
defaults, and print ``natserver --help-params``. SER's own parameters come first,
natserver's additions after them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from natserver.modules import as_int, as_str


@dataclass(frozen=True, slots=True)
class Listen:
    """One ``listen=[proto:]host[:port]`` value."""

    proto: str
    host: str
    port: int  # 0 = take the global ``port``


def parse_listen(value: Any) -> Listen:
    text = as_str(value).strip()
    proto = "udp"
    low = text.lower()
    for p in ("udp:", "tcp:", "tls:", "sctp:"):
        if low.startswith(p):
            proto, text = p[:-1], text[len(p):]
            break
    port = 0
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad IPv6 reference in listen {value!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad listen {value!r}")
            port = as_int(rest[1:])
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = 0 if p == "*" else as_int(p)
    else:
        host = text
    if proto != "udp":
        raise ValueError(f"only UDP is supported (listen={value})")
    if not host:
        raise ValueError(f"empty host in listen {value!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return Listen(proto, host, port)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    low = as_str(value).lower()
    if low in ("yes", "true", "on", "enable", "1"):
        return True
    if low in ("no", "false", "off", "disable", "0"):
        return False
    raise ValueError(f"expected yes/no, got {value!r}")


def _range(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        n = as_int(value)
        if not lo <= n <= hi:
            raise ValueError(f"{n} is out of range {lo}..{hi}")
        return n
    return check


_FACILITIES = (
    "LOG_KERN LOG_USER LOG_MAIL LOG_DAEMON LOG_AUTH LOG_SYSLOG LOG_LPR LOG_NEWS LOG_UUCP "
    "LOG_CRON LOG_AUTHPRIV LOG_FTP LOG_LOCAL0 LOG_LOCAL1 LOG_LOCAL2 LOG_LOCAL3 LOG_LOCAL4 "
    "LOG_LOCAL5 LOG_LOCAL6 LOG_LOCAL7"
).split()


def _facility(value: Any) -> str:
    name = as_str(value).upper()
    if not name.startswith("LOG_"):
        name = "LOG_" + name
    if name not in _FACILITIES:
        raise ValueError(f"unknown syslog facility {value!r}")
    return name


def _reuseport(value: Any) -> str:
    text = as_str(value).lower()
    if text not in ("shared", "per_worker"):
        raise ValueError("expected 'shared' or 'per_worker'")
    return text


def _latch_mode(value: Any) -> str:
    text = as_str(value).lower()
    if text not in ("strict", "rtpproxy"):
        raise ValueError("expected 'strict' or 'rtpproxy'")
    return text


@dataclass(frozen=True, slots=True)
class GlobalParam:
    name: str
    check: Callable[[Any], Any]
    default: Any
    doc: str
    repeat: bool = False  # every assignment appends (listen, alias)


GLOBAL_PARAMS: tuple[GlobalParam, ...] = (
    # SER 0.9
    GlobalParam("debug", _range(-3, 9), 2,
                "log threshold: -3 ALERT, -2 CRIT, -1 ERR, 1 WARN, 2 NOTICE, 3 INFO, 4 DBG"),
    GlobalParam("fork", _bool, True, "yes: run as a daemon; no: stay in the foreground"),
    GlobalParam("log_stderror", _bool, False, "yes: log to stderr; no: to syslog"),
    GlobalParam("log_facility", _facility, "LOG_DAEMON", "syslog facility"),
    GlobalParam("listen", parse_listen, (), "[udp:]host[:port] to listen on; repeatable",
                repeat=True),
    GlobalParam("port", _range(0, 65535), 5060,
                "port for listen values that give none (0: any free port, logged at start)"),
    GlobalParam("children", _range(1, 256), 8, "SIP worker processes"),
    GlobalParam("dns", _bool, False, "compare the Via host after forward DNS (received=)"),
    GlobalParam("rev_dns", _bool, False, "compare the Via host after reverse DNS (received=)"),
    GlobalParam("alias", parse_listen, (), "extra host[:port] that counts as myself; repeatable",
                repeat=True),
    GlobalParam("fifo", as_str, "", "path of the management FIFO (natserverctl)"),
    GlobalParam("fifo_db_url", as_str, "", "database URL for management commands"),
    GlobalParam("max_len", _range(512, 65535), 65535,
                "largest message accepted, bytes (larger: 513 Message Overflow)"),
    GlobalParam("server_signature", _bool, True, "add a Server: header to local replies"),
    GlobalParam("advertised_address", as_str, "",
                "address written into Via and Record-Route instead of the listen one (a "
                "server behind 1:1 NAT, e.g. a cloud VM's public IP); also counts as myself"),
    GlobalParam("advertised_port", _range(0, 65535), 0,
                "port written with advertised_address (0: the listen port)"),
    # natserver's own
    GlobalParam("rtp_relays", _range(0, 64), 1, "RTP relay processes (0: no built-in relay)"),
    GlobalParam("rtp_port_min", _range(1024, 65534), 35000, "lowest RTP relay port (even)"),
    GlobalParam("rtp_port_max", _range(1025, 65535), 65000, "highest RTP relay port"),
    GlobalParam("rtp_timeout", _range(1, 86400), 60,
                "seconds without media before a relay session is removed"),
    GlobalParam("rtp_advertise", as_str, "", "IP written into SDP for the relay (default: advertised_address, else listen)"),
    GlobalParam("rtp_latch_mode", _latch_mode, "strict",
                "relay latching: strict (source IP must match the signalled one, peers lock "
                "after a learning window: RTP-bleed safe) or rtpproxy (1.x behaviour)"),
    GlobalParam("rtp_control_sock", as_str, "",
                "control socket the built-in relays serve (unix:PATH or udp:HOST:PORT); "
                "default: the first entry of nathelper's rtpproxy_sock"),
    GlobalParam("tm_table_size", _range(64, 1 << 22), 16384, "transactions in shared memory"),
    GlobalParam("ul_table_size", _range(64, 1 << 22), 16384, "location contacts in shared memory"),
    GlobalParam("rtp_table_size", _range(64, 1 << 22), 4096, "RTP relay sessions in shared memory"),
    GlobalParam("reuseport", _reuseport, "shared",
                "how workers share listen:port: one shared socket (default, measured better: "
                "BENCHMARKS.md) or per_worker SO_REUSEPORT sockets"),
    GlobalParam("pid_file", as_str, "", "pidfile written by the daemon (-P overrides)"),
    GlobalParam("syslog_socket", as_str, "/dev/log", "the syslog socket (tests point it elsewhere)"),
    GlobalParam("ctl_socket", as_str, "", "unix socket path for natserverctl besides the FIFO"),
    GlobalParam("load_shed", _range(0, 60000), 200,
                "ms a request may wait in the SIP socket queue before new requests are "
                "answered 503 with Retry-After (0: never shed)"),
    GlobalParam("load_shed_retry_after", _range(1, 3600), 5,
                "Retry-After seconds in the 503 of a shed request"),
    GlobalParam("heartbeat_timeout", _range(1, 3600), 30,
                "seconds a child may go without a heartbeat before it is killed and respawned"),
)

GLOBALS_BY_NAME: dict[str, GlobalParam] = {p.name: p for p in GLOBAL_PARAMS}


class Config:
    """The global parameter values of one cfg, defaults filled in (attribute per row)."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        for p in GLOBAL_PARAMS:
            setattr(self, p.name, p.default)
        for name, value in (values or {}).items():
            setattr(self, name, value)

    def set(self, name: str, raw: Any) -> None:
        """Validate and store one ``name=raw`` assignment; ValueError/KeyError on bad input."""
        param = GLOBALS_BY_NAME[name]
        value = param.check(raw)
        if param.repeat:
            setattr(self, name, (*getattr(self, name), value))
        else:
            setattr(self, name, value)

    def listens(self) -> list[tuple[str, int]]:
        """(host, port) of every UDP listen socket; 127.0.0.1 when the cfg gives none."""
        items = self.listen or (Listen("udp", "127.0.0.1", 0),)
        return [(item.host, item.port or self.port) for item in items]


def help_text() -> str:
    rows = [f"{p.name:<18} default {p.default!r:<14} {p.doc}" for p in GLOBAL_PARAMS]
    return "\n".join(rows)
