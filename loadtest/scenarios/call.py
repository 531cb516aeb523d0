"""call: a UAC population calls a UAS population through the proxy.

UAC: INVITE -> 407 (ACK) -> INVITE with Proxy-Authorization -> 100/180/200 -> ACK
(route set from Record-Route, Request-URI from Contact) -> hold -> BYE -> 200.
UAS: the callees REGISTER first (the prepare phase), then answer each INVITE with 180
and 200 (SDP), retransmit the 200 until the ACK comes (T1 doubling up to T2), answer
BYE with 200, and check what the proxy delivered: a forwarded request (two Vias),
Max-Forwards decremented, the callee's Request-URI, an SDP offer. Both sides live in
the same process - a call's UAS half finds its UAC half by Call-ID.
"""

from __future__ import annotations

from enum import IntEnum

from loadtest import sipmsg
from loadtest.engine import Addr, Loop, Txn, udp_socket
from loadtest.rtp import RtpEngine, Stream
from loadtest.scenarios.common import UA, Reg, Registrar, Scenario, Settings, User
from loadtest.stats import Stats

PREPARE_RATE = 1000.0


class CallState(IntEnum):
    INVITING = 0      # first INVITE, expecting the proxy's challenge
    AUTHING = 1       # INVITE with credentials
    UP = 2            # 2xx received and ACKed; holding
    BYEING = 3
    DONE = 4


class Call:
    __slots__ = ("caller", "callee", "cid", "ftag", "ruri", "t0", "t_inv", "cseq", "state",
                 "rtag", "target", "route", "seen", "uas_ok", "uas_addr", "uas_t", "uas_iv",
                 "uas_acked", "uas_error", "rtp", "offer_addr", "answer_addr")

    def __init__(self) -> None:
        self.state = CallState.INVITING
        self.seen = 0             # provisional statuses recorded (bit 0: 100, bit 1: 18x)
        self.uas_ok: bytes | None = None
        self.uas_acked = False
        self.uas_error = ""
        self.rtp: tuple[Stream, Stream] | None = None
        self.offer_addr: Addr | None = None
        self.answer_addr: Addr | None = None
        self.route = b""


class CallScenario(Scenario):
    name = "call"
    primary = "setup"
    unit = "calls"

    def __init__(self, cfg: Settings, loop: Loop, stats: Stats) -> None:
        super().__init__(cfg, loop, stats)
        users = self.users
        if not users:
            raise ValueError("call needs users")
        n_callees = cfg.callees or max(1, len(users) // 2)
        n_callees = min(n_callees, len(users))
        self.callees = users[len(users) - n_callees:]
        self.callers = users[:len(users) - n_callees] or list(users)
        # the proxy forwards from the address we send to, so the UAS socket is
        # connected too (--no-connect for servers that answer from elsewhere)
        self.uas = udp_socket(cfg.local_ip, cfg.local_port + 1 if cfg.local_port else 0,
                              cfg.target if cfg.connect else None)
        self.uas_port = self.uas.getsockname()[1]
        loop.add_reader(self.uas, self._on_uas, cfg.connect)
        self.setup_reg = Registrar(self, "setup: ", retry_503=3)
        self.calls: dict[bytes, Call] = {}
        self.open = 0
        self.n = 0
        self.prep_i = 0
        self.prep_t0 = -1.0
        self.rtp = RtpEngine(loop, stats, cfg.local_ip) if cfg.rtp else None
        self.inv_cb = self._on_invite
        self.bye_cb = self._on_bye
        self.hangup_cb = self._hangup
        self.uas_retx_cb = self._uas_retx
        self.prep_cb = self._prepared
        self.cleared_cb = self._cleared
        self.via = b"Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK" % (self.lip, self.uac_port)
        self.static_offer = sipmsg.sdp(self.lip, 9, 1)
        self.uas_contact = {}
        for u in self.callees:
            self.uas_contact[u.name] = b"Contact: <sip:%s@%s:%d>\r\n" % (u.name, self.lip, self.uas_port)
        hist = stats.hist
        self.h100 = hist("INVITE 100").record
        self.h180 = hist("INVITE 180").record
        self.h200 = hist("INVITE 200").record
        self.h_bye = hist("BYE 200").record
        self.h_relay = hist("INVITE relay").record
        self.ha2: dict[bytes, bytes] = {}
        c = stats.counters
        for name in ("setup_registrations", "setup_registered", "uas_invites", "uas_acks",
                     "uas_byes", "uas_retransmissions", "uas_unknown", "uas_no_ack",
                     "uas_bye_before_ack"):
            c.setdefault(name, 0)

    # -- prepare: the callees register --------------------------------------------------
    def prepare(self, now: float) -> bool:
        if self.prep_t0 < 0:
            self.prep_t0 = now
        due = min(len(self.callees), int((now - self.prep_t0) * PREPARE_RATE) + 1)
        while self.prep_i < due:
            u = self.callees[self.prep_i]
            self.prep_i += 1
            self.setup_reg.register(u, 0, now, self.cleared_cb, clear=True)
        return self.prep_i >= len(self.callees) and self.setup_reg.open == 0

    def contact_port(self, user: User) -> int:
        return self.uas_port

    def _cleared(self, reg: Reg, ok: bool, now: float) -> None:
        # bindings left by earlier runs would fork each INVITE to dead contacts
        self.stats.counters["setup_registrations"] += 1
        self.setup_reg.register(reg.user, self.contact_port(reg.user), now, self.prep_cb)

    def _prepared(self, reg: Reg, ok: bool, now: float) -> None:
        if ok:
            self.stats.counters["setup_registered"] += 1

    # -- UAC ----------------------------------------------------------------------------
    def start(self, now: float) -> None:
        cfg = self.cfg
        if cfg.limit and self.open >= cfg.limit:
            self.stats.counters["limited"] = self.stats.counters.get("limited", 0) + 1
            return
        self.n += 1
        call = Call()
        call.caller = self.callers[self.n % len(self.callers)]
        call.callee = self.callees[self.n % len(self.callees)]
        call.cid = self.ids.key() + b"@lt"
        call.ftag = self.ids.key()
        call.ruri = b"sip:%s@%s" % (call.callee.name, self.domain)
        call.t0 = call.t_inv = now
        call.cseq = 1
        if self.rtp is not None:
            call.rtp = self.rtp.pair()
        self.calls[call.cid] = call
        self.open += 1
        self.stats.counters["started"] += 1
        self._send_invite(call, b"", now)

    def _send_invite(self, call: Call, auth: bytes, now: float) -> None:
        key = self.ids.key()
        caller: User = call.caller
        if call.rtp is not None:
            body = sipmsg.sdp(self.lip, self.rtp.ports[0], self.n)
        else:
            body = self.static_offer
        data = (b"INVITE %s SIP/2.0\r\n%s%s;rport\r\nMax-Forwards: 70\r\n"
                b"From: <sip:%s@%s>;tag=%s\r\nTo: <%s>\r\nCall-ID: %s\r\nCSeq: %d INVITE\r\n"
                b"Contact: <sip:%s@%s:%d>\r\n%sUser-Agent: %s\r\nContent-Type: application/sdp\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (
                    call.ruri, self.via, key, caller.name, self.domain, call.ftag, call.ruri,
                    call.cid, call.cseq, caller.name, self.lip, self.uac_port, auth, UA,
                    len(body), body))
        self.tx.send(self.uac, self.peer, key, data, b"INVITE", self.inv_cb, call, now, True)

    def _on_invite(self, t: Txn, status: int, buf: bytes, now: float) -> None:
        call: Call = t.ctx
        if call.state >= CallState.UP:
            return
        if status < 200:
            if status == 0:
                self._end(call, "INVITE timeout", now)
            elif call.state == CallState.AUTHING:
                if status == 100 and not call.seen & 1:
                    call.seen |= 1
                    self.h100(now - call.t_inv)
                elif status >= 180 and not call.seen & 2:
                    call.seen |= 2
                    self.h180(now - call.t_inv)
            return
        if status >= 300:
            tag = sipmsg.to_tag(buf) or b""
            t.ack = (b"ACK %s SIP/2.0\r\n%s%s;rport\r\nMax-Forwards: 70\r\n"
                     b"From: <sip:%s@%s>;tag=%s\r\nTo: <%s>;tag=%s\r\nCall-ID: %s\r\n"
                     b"CSeq: %d ACK\r\nUser-Agent: %s\r\nContent-Length: 0\r\n\r\n" % (
                         call.ruri, self.via, t.key, call.caller.name, self.domain, call.ftag,
                         call.ruri, tag, call.cid, call.cseq, UA))
            self.tx.send_stateless(self.uac, t.ack, self.peer)
            self.tx.count_request(b"ACK")
            if status in (401, 407) and call.state == CallState.INVITING:
                self.record("INVITE %d" % status, now - call.t_inv)
                ch = sipmsg.challenge(buf, status)
                if ch is None:
                    self._end(call, "INVITE %d without a digest challenge" % status, now)
                    return
                caller: User = call.caller
                name = b"Proxy-Authorization" if status == 407 else b"Authorization"
                cnonce = self.ids.key() if ch.qop else b""
                ha2 = self.ha2.get(call.ruri)
                if ha2 is None:
                    ha2 = self.ha2[call.ruri] = sipmsg.ha2(b"INVITE", call.ruri)
                auth = sipmsg.authorization(name, ch, caller.name,
                                            caller.ha1_for(ch.realm, ch.algorithm),
                                            b"INVITE", call.ruri, cnonce, ha2_value=ha2)
                call.state = CallState.AUTHING
                call.cseq += 1
                call.t_inv = now
                self._send_invite(call, auth, now)
                return
            if status in (401, 407):
                self._end(call, "INVITE %d after auth" % status, now)
            else:
                self._end(call, "INVITE " + sipmsg.status_text(buf), now)
            return
        # 2xx: the dialog is up
        self.h200(now - call.t_inv)
        self.record_primary(now - call.t0)
        call.rtag = sipmsg.to_tag(buf) or b""
        call.target = sipmsg.contact_uri(buf) or call.ruri
        rr = sipmsg.route_set(buf)
        if rr:
            call.route = b"".join(b"Route: %s\r\n" % r for r in reversed(rr))
        key = self.ids.key()
        t.ack = (b"ACK %s SIP/2.0\r\n%s%s;rport\r\nMax-Forwards: 70\r\n%s"
                 b"From: <sip:%s@%s>;tag=%s\r\nTo: <%s>;tag=%s\r\nCall-ID: %s\r\n"
                 b"CSeq: %d ACK\r\nUser-Agent: %s\r\nContent-Length: 0\r\n\r\n" % (
                     call.target, self.via, key, call.route, call.caller.name, self.domain,
                     call.ftag, call.ruri, call.rtag, call.cid, call.cseq, UA))
        self.tx.send_stateless(self.uac, t.ack, self.peer)
        self.tx.count_request(b"ACK")
        call.state = CallState.UP
        if call.rtp is not None:
            body = buf[buf.find(b"\r\n\r\n") + 4:]
            call.answer_addr = sipmsg.sdp_audio(body)
            self.rtp.start(call.rtp[0], call.rtp[1], call.answer_addr, call.offer_addr, now)
        self.loop.timers.at(now + self.cfg.hold, self.hangup_cb, call)

    def _hangup(self, call: Call, gen: int, now: float) -> None:
        if call.state != CallState.UP:
            return
        call.state = CallState.BYEING
        if call.rtp is not None:
            self.rtp.stop(call.rtp[0], call.rtp[1], now)
        call.cseq += 1
        call.t_inv = now
        key = self.ids.key()
        data = (b"BYE %s SIP/2.0\r\n%s%s;rport\r\nMax-Forwards: 70\r\n%s"
                b"From: <sip:%s@%s>;tag=%s\r\nTo: <%s>;tag=%s\r\nCall-ID: %s\r\n"
                b"CSeq: %d BYE\r\nUser-Agent: %s\r\nContent-Length: 0\r\n\r\n" % (
                    call.target, self.via, key, call.route, call.caller.name, self.domain,
                    call.ftag, call.ruri, call.rtag, call.cid, call.cseq, UA))
        self.tx.send(self.uac, self.peer, key, data, b"BYE", self.bye_cb, call, now)

    def _on_bye(self, t: Txn, status: int, buf: bytes, now: float) -> None:
        call: Call = t.ctx
        if 200 <= status < 300:
            self.h_bye(now - call.t_inv)
            self._end(call, call.uas_error, now)
        elif status == 0:
            self._end(call, "BYE timeout", now)
        else:
            self._end(call, "BYE " + sipmsg.status_text(buf), now)

    def _end(self, call: Call, cause: str, now: float) -> None:
        if call.state == CallState.DONE:
            return
        if call.rtp is not None and call.state != CallState.BYEING:
            self.rtp.stop(call.rtp[0], call.rtp[1], now)
        call.state = CallState.DONE
        self.open -= 1
        self.calls.pop(call.cid, None)
        if cause:
            self.stats.fail(cause)
        else:
            self.stats.counters["ok"] += 1

    # -- UAS ----------------------------------------------------------------------------
    def _on_uas(self, buf: bytes, addr: Addr, now: float) -> None:
        c = self.stats.counters
        if buf[:4] == b"ACK ":
            # an ACK only stops the 200's retransmissions: no need to split it
            call = self.calls.get(sipmsg.call_id(buf) or b"")
            if call is not None:
                c["uas_acks"] += 1
                call.uas_acked = True
            return
        if buf[:8] == b"SIP/2.0 ":
            c["uas_responses"] = c.get("uas_responses", 0) + 1
            return
        req = sipmsg.parse_request(buf)
        if req is None:
            c["garbage"] = c.get("garbage", 0) + 1
            return
        call = self.calls.get(req.call_id)
        method = req.method
        if call is None:
            if method != b"ACK":
                c["uas_unknown"] += 1
                self.tx.send_stateless(self.uas, sipmsg.reply(
                    req, 481, b"Call/Transaction Does Not Exist", self.ids.key()), addr)
            return
        if method == b"INVITE":
            self._uas_invite(call, req, addr, now)
        elif method == b"BYE":
            c["uas_byes"] += 1
            if not call.uas_acked:
                c["uas_bye_before_ack"] += 1
                call.uas_acked = True
            self.tx.send_stateless(self.uas, sipmsg.reply(req, 200, b"OK", None), addr)
        else:
            self.tx.send_stateless(self.uas, sipmsg.reply(req, 501, b"Not Implemented", None), addr)

    def _uas_invite(self, call: Call, req: sipmsg.Request, addr: Addr, now: float) -> None:
        c = self.stats.counters
        if call.uas_ok is not None:
            c["uas_invite_retransmissions"] = c.get("uas_invite_retransmissions", 0) + 1
            self.tx.send_stateless(self.uas, call.uas_ok, addr)
            return
        c["uas_invites"] += 1
        self.h_relay(now - call.t_inv)
        callee: User = call.callee
        if not call.uas_error:
            if req.vias < 2:
                call.uas_error = "uas: INVITE not forwarded by the proxy (one Via)"
            elif not 0 <= req.max_forwards < 70:
                call.uas_error = "uas: Max-Forwards not decremented"
            elif not req.ruri.startswith(b"sip:%s@" % callee.name):
                call.uas_error = "uas: wrong Request-URI"
            elif not req.body or req.content_type != sipmsg.SDP_TYPE:
                call.uas_error = "uas: INVITE without SDP"
        tag = self.ids.key()
        contact = self.uas_contact[callee.name]
        self.tx.send_stateless(self.uas, sipmsg.reply(req, 180, b"Ringing", tag, contact), addr)
        if call.rtp is not None:
            call.offer_addr = sipmsg.sdp_audio(req.body)
            body = sipmsg.sdp(self.lip, self.rtp.ports[1], self.n)
        else:
            body = self.static_offer
        call.uas_ok = sipmsg.reply(req, 200, b"OK", tag, contact, body)
        call.uas_addr = addr
        call.uas_t = now
        call.uas_iv = self.cfg.t1
        self.tx.send_stateless(self.uas, call.uas_ok, addr)
        self.loop.timers.at(now + call.uas_iv, self.uas_retx_cb, call)

    def _uas_retx(self, call: Call, gen: int, now: float) -> None:
        if call.uas_acked or call.state == CallState.DONE:
            return
        if now - call.uas_t >= 64 * self.cfg.t1:
            self.stats.counters["uas_no_ack"] += 1
            return
        self.stats.counters["uas_retransmissions"] += 1
        self.tx.send_stateless(self.uas, call.uas_ok, call.uas_addr)
        call.uas_iv = min(call.uas_iv * 2, self.cfg.t2)
        self.loop.timers.at(now + call.uas_iv, self.uas_retx_cb, call)

    def in_flight(self) -> int:
        return self.open

    def live(self) -> dict[str, int]:
        return {"up": self.open}
