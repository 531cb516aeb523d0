"""rr: Record-Route and loose routing (SER modules/rr; RFC 3261 16.4, 16.6 step 6, 16.12).

``record_route()`` puts natserver in the dialog's route set; ``loose_route()`` follows
the route set of an in-dialog request: it removes natserver's own Route entries,
undoes a strict router's R-URI swap, and sets the next hop (``m.dst_uri``) or the new
R-URI (``m.new_uri``) that ``t_relay`` then uses. Every change is a splice on the
outgoing copy; the received message is never altered, so ``search()`` still sees it.
"""

from __future__ import annotations

import logging

from natserver.errors import SipError
from natserver.modules import Function, Module, Param, int_range
from natserver.script.runtime import MsgCtx
from natserver.sip.headers import Hdr, NameAddr, parse_name_addrs
from natserver.sip.uri import parse_uri

log = logging.getLogger("natserver.rr")

_ROUTE = Hdr.ROUTE


class Rr(Module):
    NAME = "rr"

    def __init__(self, params: dict) -> None:
        super().__init__(params)
        self.lr = b";lr=on" if params["enable_full_lr"] else b";lr"
        self.ftag = bool(params["append_fromtag"])
        self._uri_start: dict[tuple[str, int], bytes] = {}
        self._mine: dict[bytes, bool] = {}  # URI text -> points at natserver

    # ---- record_route -------------------------------------------------------------

    def record_route(self, m: MsgCtx) -> int:
        """Insert ``Record-Route: <sip:IP[:port];ftag=T;lr=on>`` as the first header
        line: the receiving socket's IP (or ``advertised_address``/``advertised_port``),
        the port only when it is not 5060. -1 when the message already got one."""
        if m.rr_added:
            return -1
        msg = m.msg
        local = (m.local_ip, m.local_port)
        start = self._uri_start.get(local)
        if start is None:
            cfg = m.ctx.cfg
            ip = cfg.advertised_address or m.local_ip
            port_n = cfg.advertised_port or m.local_port
            host = f"[{ip}]" if ":" in ip else ip
            port = "" if port_n == 5060 else f":{port_n}"
            start = self._uri_start[local] = f"Record-Route: <sip:{host}{port}".encode()
        parts = [start]
        if self.ftag:
            try:
                tag = msg.from_.tag
            except SipError:
                tag = None
            if tag:
                parts.append(b";ftag=" + tag.encode("latin-1"))
        parts.append(self.lr)
        parts.append(b">\r\n")
        m.get_edits().insert(msg.first_line_end, b"".join(parts))
        m.rr_added = True
        return 1

    # ---- loose_route --------------------------------------------------------------

    def loose_route(self, m: MsgCtx) -> int:
        """SER 0.9's loose_route (functions.md): 1 when the request carries a route set
        to follow (next hop or R-URI set), -1 when there is none (or only natserver's
        own entry on an initial request)."""
        msg = m.msg
        try:
            rows = _route_rows(msg)
        except SipError as exc:
            log.info("loose_route: %s", exc)
            return -1
        routes = [(r, v) for r, (_, values) in enumerate(rows) for v in values]
        if not routes:
            return -1
        try:
            to_tag = msg.to.tag
        except SipError:
            to_tag = None
        myself = self._myself
        removed: set[int] = set()  # positions in ``routes``
        if to_tag and myself(m, m.ruri):
            # The previous hop was a strict router: it put our Record-Route URI into the
            # R-URI and (RFC 3261 16.4) the original R-URI into the last Route.
            i = 0
            if myself(m, routes[0][1].uri_text):
                removed.add(0)
                i = 1
            if i >= len(routes):
                return -1
            nxt = routes[i][1]
            if not _has_lr(nxt):
                m.new_uri = nxt.uri_text
                removed.add(i)
            else:
                m.dst_uri = nxt.uri_text
                last = len(routes) - 1
                if last != i:
                    m.new_uri = routes[last][1].uri_text
                    removed.add(last)
            _remove(m, rows, routes, removed)
            return 1
        i = 0
        if myself(m, routes[0][1].uri_text):
            removed.add(0)
            i = 1
            if i < len(routes) and "r2" in _uri_params(routes[i][1]) \
                    and myself(m, routes[i][1].uri_text):
                removed.add(i)
                i += 1
        if i >= len(routes):
            _remove(m, rows, routes, removed)
            return 1 if to_tag else -1
        top = routes[i][1]
        if _has_lr(top):
            m.dst_uri = top.uri_text
        else:
            # Strict next hop (RFC 3261 16.6 step 6): the R-URI goes to the end of the
            # route set, the strict router's URI becomes the R-URI.
            ruri = m.ruri
            last_row_end = rows[-1][0]
            m.get_edits().insert(last_row_end, b"Route: <" + ruri + b">\r\n")
            m.new_uri = top.uri_text
            removed.add(i)
        _remove(m, rows, routes, removed)
        return 1

    def _myself(self, m: MsgCtx, uri_text: bytes) -> bool:
        """Does a URI point at natserver (host and port, 5060 when absent; any
        transport)? Remembered per URI text: a dialog sends the same Route each time."""
        mine = self._mine.get(uri_text)
        if mine is not None:
            return mine
        try:
            uri = parse_uri(uri_text)
        except SipError:
            mine = False
        else:
            mine = uri.scheme != "tel" and m.ctx.is_myself(
                uri.host, uri.port if uri.port is not None else 5060)
        if len(self._mine) >= 4096:
            self._mine.clear()
        self._mine[uri_text] = mine
        return mine


def _route_rows(msg) -> list[tuple[int, list[NameAddr]]]:
    """``(row end, values)`` for every Route row, in order."""
    buf = msg.buf
    return [(e, parse_name_addrs(buf, c + 1, e, _ROUTE))
            for h, s, c, e in msg.rows if h == _ROUTE]


def _uri_params(na: NameAddr) -> dict:
    try:
        return na.uri.params
    except SipError:
        return {}


def _has_lr(na: NameAddr) -> bool:
    return "lr" in _uri_params(na)


def _remove(m: MsgCtx, rows: list[tuple[int, list[NameAddr]]],
            routes: list[tuple[int, NameAddr]], removed: set[int]) -> None:
    """Splice the removed Route values out: a row that loses every value goes
    entirely, a row that keeps some is rewritten with the kept ones."""
    if not removed:
        return
    edits = m.get_edits()
    buf = m.msg.buf
    gone_by_row: dict[int, set[int]] = {}
    for pos in removed:
        r, value = routes[pos]
        gone_by_row.setdefault(r, set()).add(id(value))
    row_spans = [(s, e) for h, s, _c, e in m.msg.rows if h == _ROUTE]
    for r, gone in gone_by_row.items():
        values = rows[r][1]
        kept = [v for v in values if id(v) not in gone]
        if not kept:
            s, e = row_spans[r]
            edits.delete(s, e)
        else:
            edits.replace(values[0].start, values[-1].end,
                          b", ".join(buf[v.start:v.end] for v in kept))


FUNCTIONS = (
    Function("record_route", Rr.record_route),
    Function("loose_route", Rr.loose_route),
)
PARAMS = (
    Param("enable_full_lr", int, 0, check=int_range(0, 1),
          doc="1: write ;lr=on (for old parsers that need a value), 0: ;lr"),
    Param("append_fromtag", int, 1, check=int_range(0, 1),
          doc="1: add ;ftag=<From tag> to the Record-Route URI"),
    Param("enable_double_rr", int, 1, check=int_range(0, 1),
          doc="accepted for SER compatibility; natserver has one socket, so one "
              "Record-Route is always enough"),
)
MODULE = Rr
