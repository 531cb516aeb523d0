"""options: stateless OPTIONS to the server itself at the target rate - the baseline."""

from __future__ import annotations

from loadtest.engine import Loop, Txn
from loadtest.sipmsg import status_text
from loadtest.scenarios.common import UA, Scenario, Settings
from loadtest.stats import Stats


class Options(Scenario):
    name = "options"
    primary = "OPTIONS 200"
    unit = "requests"

    def __init__(self, cfg: Settings, loop: Loop, stats: Stats) -> None:
        super().__init__(cfg, loop, stats)
        self.open = 0
        self.cb = self._on_reply
        self.head = b"OPTIONS sip:%s SIP/2.0\r\nVia: SIP/2.0/UDP %s:%d;branch=z9hG4bK" % (
            self.domain, self.lip, self.uac_port)
        self.tail = (b"\r\nCSeq: 1 OPTIONS\r\nAccept: application/sdp\r\nUser-Agent: %s\r\n"
                     b"Content-Length: 0\r\n\r\n" % UA)

    def start(self, now: float) -> None:
        if self.cfg.limit and self.open >= self.cfg.limit:
            self.stats.counters["limited"] = self.stats.counters.get("limited", 0) + 1
            return
        key = self.ids.key()
        data = b"%s%s;rport\r\nMax-Forwards: 70\r\nFrom: <sip:loadtest@%s>;tag=%s\r\nTo: <sip:%s>\r\nCall-ID: %s@lt%s" % (
            self.head, key, self.domain, key, self.domain, key, self.tail)
        self.stats.counters["started"] += 1
        self.open += 1
        self.tx.send(self.uac, self.peer, key, data, b"OPTIONS", self.cb, now, now)

    def _on_reply(self, t: Txn, status: int, buf: bytes, now: float) -> None:
        self.open -= 1
        if 200 <= status < 300:
            self.stats.counters["ok"] += 1
            self.record_primary(now - t.ctx)
        elif status == 0:
            self.stats.fail("OPTIONS timeout")
        else:
            self.stats.fail("OPTIONS " + status_text(buf))

    def in_flight(self) -> int:
        return self.open
