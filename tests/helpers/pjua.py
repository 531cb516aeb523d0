"""A headless pjsua2 user agent (PyPI pjsua2-python): a second, independent SIP stack.

Run as a script inside a namespace; it prints one JSON object per line and ends with
os._exit(0) (destroying pjsua2's Python Call/Account objects after a disconnect trips
an assertion that aborts the process):

    ip netns exec NS python tests/helpers/pjua.py --user ua2 --password pw \\
        --domain 198.51.100.10 --bind 192.168.2.10 --answer --tone 840 --max-secs 20

Lines out: {"ev":"ready"}, {"ev":"reg","code":200,...}, {"ev":"incoming",...},
{"ev":"state","state":"CONFIRMED",...}, {"ev":"media","remote_rtp":"ip:port"},
{"ev":"stats","rx_pkt":..,"tx_pkt":..,"rx_loss":..,"src_rtp":"ip:port"},
{"ev":"closed","code":..,"reason":..}, {"ev":"done"}.
Commands in (stdin, one per line): `call URI`, `hangup`, `hold`, `unhold`, `stats`,
`register` (send a REGISTER now), `quit`.

By default the UA is "dumb": pjsua's own NAT fixes (Contact/Via rewriting, SDP
rewriting, SIP outbound, UDP keepalives) are off, so the server has to do the NAT work.
`--smart-nat` turns them on; `--keepalive N` sends CRLF keepalives every N s.

`PjUa` (below) is the test-side driver; importing this module does not import pjsua2.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SCRIPT = Path(__file__).resolve()


def pjsua2_problem() -> str | None:
    try:
        import pjsua2  # noqa: F401
    except ImportError:
        return "pjsua2 is not installed (pip install pjsua2-python)"
    return None


# ============================================================ the UA (subprocess side)
def emit(**kw: object) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def run_ua(a: argparse.Namespace) -> None:
    import pjsua2 as pj

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    # pjsua calls back into Python only from libHandleEvents() in this thread
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.uaConfig.maxCalls = max(4, a.max_calls)
    cfg.uaConfig.userAgent = f"pjua-harness {a.user}"
    cfg.logConfig.level = a.log_level
    cfg.logConfig.consoleLevel = a.log_level
    cfg.medConfig.noVad = True  # silence suppression would send almost no RTP
    cfg.medConfig.clockRate = 8000
    cfg.medConfig.sndClockRate = 8000
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.port = a.port
    tcfg.boundAddress = a.bind
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()
    ep.audDevManager().setNullDev()
    for codec in ep.codecEnum2():
        ep.codecSetPriority(codec.codecId, 255 if codec.codecId.startswith("PCMU/") else 0)

    tone = pj.ToneGenerator()
    tone.createToneGenerator(8000, 1)
    desc = pj.ToneDesc()
    desc.freq1 = desc.freq2 = a.tone
    desc.on_msec, desc.off_msec, desc.volume = 10000, 0, 0
    tones = pj.ToneDescVector()
    tones.append(desc)
    tone.play(tones, True)

    calls: dict[int, object] = {}
    finished: list[object] = []
    state = {"quit": False, "talk_until": None, "recorded": 0}

    def stats(call: pj.Call) -> dict:
        try:
            st = call.getStreamStat(0)
            ti = call.getMedTransportInfo(0)
            return {"rx_pkt": st.rtcp.rxStat.pkt, "tx_pkt": st.rtcp.txStat.pkt,
                    "rx_loss": st.rtcp.rxStat.loss, "src_rtp": ti.srcRtpName}
        except pj.Error:
            return {}

    class Call(pj.Call):
        def __init__(self, acc: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
            super().__init__(acc, call_id)
            self.last_stats: dict = {}
            self.recorder: pj.AudioMediaRecorder | None = None

        def onCallState(self, prm: pj.OnCallStateParam) -> None:
            ci = self.getInfo()
            emit(ev="state", state=ci.stateText, call_id=ci.callIdString,
                 code=ci.lastStatusCode)
            if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and a.talk and a.call:
                state["talk_until"] = time.monotonic() + a.talk
            if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                emit(ev="stats", call_id=ci.callIdString, **self.last_stats)
                emit(ev="closed", call_id=ci.callIdString, code=ci.lastStatusCode,
                     reason=ci.lastReason)
                # stop recording (this build leaves the WAV sizes at 0 even so:
                # tonecheck reads such files); keep the Call object referenced, its
                # destructor after a disconnect trips a pjsua assertion
                self.recorder = None
                finished.append(calls.pop(ci.id, self))
                if a.call and a.exit_after_call:
                    state["quit"] = True

        def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
            ci = self.getInfo()
            for i, mi in enumerate(ci.media):
                if mi.type != pj.PJMEDIA_TYPE_AUDIO:
                    continue
                remote = ""
                try:
                    remote = self.getStreamInfo(i).remoteRtpAddress
                except pj.Error:
                    pass
                emit(ev="media", call_id=ci.callIdString, status=int(mi.status),
                     remote_rtp=remote)
                if mi.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                    continue
                am = self.getAudioMedia(i)
                tone.startTransmit(am)
                if a.record and self.recorder is None:
                    # one file per call: --record x.wav, then x-1.wav, x-2.wav ...
                    path = a.record if state["recorded"] == 0 else \
                        f"{a.record.removesuffix('.wav')}-{state['recorded']}.wav"
                    state["recorded"] += 1
                    self.recorder = pj.AudioMediaRecorder()
                    self.recorder.createRecorder(path)
                    am.startTransmit(self.recorder)
                    emit(ev="recording", call_id=ci.callIdString, path=path)

    class Account(pj.Account):
        def onRegState(self, prm: pj.OnRegStateParam) -> None:
            info = self.getInfo()
            emit(ev="reg", code=prm.code, reason=prm.reason, expires=prm.expiration,
                 active=info.regIsActive)

        def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
            call = Call(self, prm.callId)
            ci = call.getInfo()
            calls[ci.id] = call
            emit(ev="incoming", call_id=ci.callIdString, remote=ci.remoteUri)
            if a.answer:
                op = pj.CallOpParam()
                op.statusCode = 200
                call.answer(op)

    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{a.user}@{a.domain}"
    acfg.regConfig.registrarUri = f"sip:{a.domain}"
    acfg.regConfig.timeoutSec = a.regint
    acfg.regConfig.retryIntervalSec = 2
    acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", a.user, 0, a.password))
    nat = acfg.natConfig
    nat.contactRewriteUse = nat.viaRewriteUse = nat.sdpNatRewriteUse = int(a.smart_nat)
    nat.sipOutboundUse = int(a.smart_nat)
    nat.udpKaIntervalSec = a.keepalive
    acfg.mediaConfig.transportConfig.port = a.rtp_port
    acfg.mediaConfig.transportConfig.portRange = 200
    acc = Account()
    acc.create(acfg)

    def dial(uri: str) -> None:
        call = Call(acc)
        op = pj.CallOpParam(True)
        call.makeCall(uri, op)
        calls[call.getInfo().id] = call
        emit(ev="dialing", uri=uri, call_id=call.getInfo().callIdString)

    def each_call(fn: Callable[[object], None]) -> None:
        for call in list(calls.values()):
            try:
                fn(call)
            except pj.Error as e:
                emit(ev="error", where="command", error=e.info())

    def hangup(call: pj.Call) -> None:
        call.last_stats = stats(call) or call.last_stats
        call.hangup(pj.CallOpParam())

    def unhold(call: pj.Call) -> None:
        op = pj.CallOpParam(True)
        op.opt.flag = pj.PJSUA_CALL_UNHOLD
        call.reinvite(op)

    commands = {
        "hangup": lambda arg: each_call(hangup),
        "hold": lambda arg: each_call(lambda c: c.setHold(pj.CallOpParam(True))),
        "unhold": lambda arg: each_call(unhold),
        "stats": lambda arg: each_call(lambda c: emit(ev="stats", call_id=c.getInfo()
                                                      .callIdString, **stats(c))),
        "call": lambda arg: dial(arg),
        "register": lambda arg: acc.setRegistration(True),
        "quit": lambda arg: state.update(quit=True),
    }

    emit(ev="ready", user=a.user, bind=f"{a.bind}:{a.port}")
    if a.call:
        dial(a.call)
    deadline = time.monotonic() + a.max_secs
    next_stats = 0.0
    stdin_open = True
    while not state["quit"] and time.monotonic() < deadline:
        ep.libHandleEvents(20)
        now = time.monotonic()
        if now >= next_stats:  # stats vanish with the media: keep the last ones
            next_stats = now + 0.25
            for call in list(calls.values()):
                call.last_stats = stats(call) or call.last_stats
        if state["talk_until"] is not None and now >= state["talk_until"]:
            state["talk_until"] = None
            each_call(hangup)
        if stdin_open and select.select([sys.stdin], [], [], 0)[0]:
            line = sys.stdin.readline()
            if not line:
                stdin_open = False
                continue
            word, _, arg = line.strip().partition(" ")
            if word in commands:
                try:
                    commands[word](arg.strip())
                except pj.Error as e:
                    emit(ev="error", where=word, error=e.info())
            elif word:
                emit(ev="error", where="stdin", error=f"unknown command {word!r}")
    if calls:  # --max-secs reached or quit during a call: hang up, let BYE go out
        each_call(hangup)
        end = time.monotonic() + 1.0
        while calls and time.monotonic() < end:
            ep.libHandleEvents(20)
    for call in list(calls.values()):
        call.recorder = None
    emit(ev="done")
    # leave here, while pjsua2's Python objects are still referenced: their destructors
    # would unregister and trip an assertion that aborts the process
    os._exit(0)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--domain", required=True, help="registrar/proxy IP (the SIP domain)")
    p.add_argument("--bind", required=True, help="local IP")
    p.add_argument("--port", type=int, default=5060)
    p.add_argument("--rtp-port", type=int, default=4000)
    p.add_argument("--tone", type=int, default=440, help="Hz of the tone this UA sends")
    p.add_argument("--record", help="WAV file for the received audio")
    p.add_argument("--answer", action="store_true", help="answer incoming calls with 200")
    p.add_argument("--call", help="URI to call once started")
    p.add_argument("--talk", type=float, default=0.0,
                   help="with --call: hang up this many s after the call is confirmed")
    p.add_argument("--exit-after-call", action="store_true")
    p.add_argument("--regint", type=int, default=60)
    p.add_argument("--max-calls", type=int, default=4)
    p.add_argument("--smart-nat", action="store_true",
                   help="keep pjsua's own NAT fixes (rewrite Contact/Via/SDP, outbound)")
    p.add_argument("--keepalive", type=int, default=0, help="CRLF keepalive period, s")
    p.add_argument("--max-secs", type=float, default=30.0)
    p.add_argument("--log-level", type=int, default=1)
    return p.parse_args(argv)


def main() -> None:
    a = parse_args(sys.argv[1:])
    try:
        run_ua(a)
    except Exception as e:  # report anything as a line, then leave without pjsua teardown
        emit(ev="error", where="main", error=f"{type(e).__name__}: {getattr(e, 'info', lambda: e)()}")
    finally:
        sys.stdout.flush()
        os._exit(0)


# ============================================================== driver (test side)
@dataclass(slots=True)
class PjUa:
    """Runs pjua.py in a namespace and collects its JSON lines."""

    topo: object
    host: object
    args: list[str]
    proc: subprocess.Popen | None = None
    lines: list[dict] = field(default_factory=list)
    _q: queue.Queue = field(default_factory=queue.Queue)
    _reader: threading.Thread | None = None
    raw: list[str] = field(default_factory=list)

    def start(self, timeout: float = 10.0) -> None:
        self.proc = self.topo.spawn(self.host, [sys.executable, str(SCRIPT), *self.args],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait("ready", timeout)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            self.raw.append(line)
            if line.startswith("{"):
                try:
                    self._q.put(json.loads(line))
                except ValueError:
                    pass
        self._q.put(None)

    def _drain(self, block_for: float) -> bool:
        """Move queued lines to `lines`; False once the process output has ended."""
        try:
            item = self._q.get(timeout=block_for)
        except queue.Empty:
            return True
        while True:
            if item is None:
                return False
            self.lines.append(item)
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return True

    def mark(self) -> int:
        """A position in the output: `wait(..., since=mark)` looks only after it."""
        self._drain(0)
        return len(self.lines)

    def wait(self, ev: str, timeout: float = 10.0,
             pred: Callable[[dict], bool] = lambda d: True, since: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        seen = since
        alive = True
        while True:
            for d in self.lines[seen:]:
                if d.get("ev") == ev and pred(d):
                    return d
                if d.get("ev") == "error":
                    raise RuntimeError(f"pjua error: {d}")
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0 or not alive:
                why = "exited" if not alive else f"no {ev!r} within {timeout}s"
                raise TimeoutError(f"pjua {why}; output: {self.raw[-20:]}")
            alive = self._drain(min(left, 0.2))

    def events(self, ev: str) -> list[dict]:
        self._drain(0)
        return [d for d in self.lines if d.get("ev") == ev]

    def wait_registered(self, timeout: float = 10.0) -> dict:
        d = self.wait("reg", timeout, lambda d: d.get("code") // 100 in (2, 4, 5, 6)
                      and d.get("code") != 401 and d.get("code") != 407)
        if d["code"] != 200:
            raise AssertionError(f"registration failed: {d}")
        return d

    def send(self, command: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.send("quit")
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3.0)
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        self._drain(0)


if __name__ == "__main__":
    main()
