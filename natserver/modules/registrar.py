"""registrar: ``save("location")`` and ``lookup("location"|"aliases")`` (SER
modules/registrar), over :mod:`natserver.modules.usrloc`.

save() follows RFC 3261 10.3 with SER's choices (functions.md): the AOR is the To user
(%-unescaped, lower-cased unless ``case_sensitive``; ``@host`` with ``use_domain``);
``Contact: *`` with ``Expires: 0`` removes every binding; a contact's expiry is its
``expires`` parameter, else the Expires header, else ``default_expires``; 0 removes the
binding; a shorter one than ``min_expires`` is raised to it (``min_expires_mode=1``:
423 Interval Too Brief + Min-Expires instead); ``max_expires`` caps it. Bindings are
keyed by the exact Contact URI. For the Call-ID a binding was made with, a lower CSeq
is refused (400 Invalid CSeq number) and the same CSeq is a retransmission that
changes nothing (Kamailio). The NAT mark (bit ``nat_flag`` of the contact's cflags) is
stored when the message has flag ``nat_flag`` and cleared otherwise; ``received`` is
the Contact's own ``;received=`` or what fix_nated_register() found. save() replies
itself through sl: 200 listing every current binding with its remaining expiry, or an
error with ``P-Registrar-Error`` - and then returns 0, which ends the route block.

lookup() takes the AOR from the current R-URI: the best contact becomes the R-URI, its
``received`` the next hop (so requests reach the NAT's public address), the other
contacts become branches ordered by q (``append_branches``), and flag ``nat_flag`` is
set when any chosen contact carries the NAT mark. It returns -1 for an R-URI without a
user, -2 when the location cannot be read (db_mode 3, DB down), -3 when nothing is
bound and -5 when everything bound has expired.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from natserver.errors import DbError, SipError, TableFull
from natserver.modules import Function, Module, Param, RouteType, as_str, int_range
from natserver.modules.sl import send_reply
from natserver.modules.usrloc import (
    AOR_MAX,
    DOMAINS,
    UA_UNKNOWN,
    Contact,
    ContactTooLong,
    Usrloc,
    get_usrloc,
    sort_key,
)
from natserver.script.runtime import Branch, MsgCtx
from natserver.sip.uri import Uri, parse_uri

if TYPE_CHECKING:
    from natserver.context import Context

log = logging.getLogger("natserver.registrar")

# Column sizes of Kamailio's location table: longer values are refused, not truncated
# (a truncated contact would route somewhere else).
CONTACT_MAX = 512
RECEIVED_MAX = 128
CALLID_MAX = 255
UA_MAX = 255
USER_MAX = 64

# RFC 3261 25.1 qvalue
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")

# SER's P-Registrar-Error texts (registrar/rerrno.h, reply.c)
R_PARSE = "Message parse error"
R_TO_USER = "No username in To URI"
R_AOR_LEN = "Address Of Record too long"
R_AOR_PARSE = "Error while parsing AOR"
R_STAR_EXP = "* used in contact and expires is not zero"
R_STAR_CONT = "* used in contact and more than 1 contact"
R_INV_Q = "Invalid q param in contact"
R_INV_CSEQ = "Invalid CSeq number"
R_CONTACT_LEN = "Contact/received too long"
R_CONTACT = "Invalid contact"
R_TOO_MANY = "Too many registered contacts"
R_UL = "Error while accessing the location database"
R_FULL = "Location table full"

_REASONS = {400: "Bad Request", 423: "Interval Too Brief", 500: "Server Internal Error",
            503: "Service Unavailable"}


class _Refused(Exception):
    """save() answers an error: status, P-Registrar-Error text, extra header lines."""

    def __init__(self, status: int, text: str, headers: tuple[bytes, ...] = ()) -> None:
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text
        self.headers = headers


def parse_q(text: str | None) -> int:
    """A qvalue as q*1000; ValueError when it is not one."""
    if text is None or not _QVALUE.fullmatch(text):
        raise ValueError(text)
    whole, _, frac = text.partition(".")
    return int(whole) * 1000 + int((frac + "000")[:3])


def format_q(q: int) -> bytes:
    """SER's q2str: ``1``, ``0``, ``0.5``, ``0.125``."""
    if q >= 1000:
        return b"1"
    if q <= 0:
        return b"0"
    return (b"0.%03d" % q).rstrip(b"0")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


class Registrar(Module):
    NAME = "registrar"

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        p = params
        self.default_expires = p["default_expires"]
        self.min_expires = p["min_expires"]
        self.max_expires = p["max_expires"]
        self.min_expires_mode = p["min_expires_mode"]
        self.default_q = p["default_q"]
        self.max_contacts = p["max_contacts"]
        self.retry_after = p["retry_after"]
        self.nat_mask = 1 << p["nat_flag"]
        self.append_branches = bool(p["append_branches"])
        self.case_sensitive = bool(p["case_sensitive"])
        self.received_param = p["received_param"].encode()
        self.use_domain = bool(p["use_domain"])
        self.ul: Usrloc | None = None

    def init(self, ctx: Context) -> None:
        self.ul = get_usrloc(ctx)
        self.use_domain = self.use_domain or self.ul.use_domain
        # SER had desc_time_order in the registrar; the ordering lives in usrloc here.
        self.ul.desc_time = self.ul.desc_time or bool(self.params["desc_time_order"])

    def child_init(self, ctx: Context) -> None:
        if self.ul is None:
            self.init(ctx)

    def _usrloc(self, m: MsgCtx) -> Usrloc:
        if self.ul is None:
            self.init(m.ctx)
        assert self.ul is not None
        return self.ul

    # ---- the AOR ------------------------------------------------------------------

    def aor_of(self, uri: Uri) -> bytes:
        """The AOR of a To URI or R-URI; _Refused(400) when it has none."""
        user = uri.user_unescaped
        if not user:
            raise _Refused(400, R_TO_USER)
        if not self.case_sensitive:
            user = user.lower()
        if len(user.encode()) > USER_MAX:
            raise _Refused(400, R_AOR_LEN)
        if self.use_domain:
            if len(uri.host) > USER_MAX:
                raise _Refused(400, R_AOR_LEN)
            user = f"{user}@{uri.host}"
        aor = user.encode()
        if len(aor) > AOR_MAX:
            raise _Refused(400, R_AOR_LEN)
        return aor

    # ---- save ---------------------------------------------------------------------

    def save(self, m: MsgCtx, domain: str) -> int:
        return self._save(m, domain, reply=True)

    def save_noreply(self, m: MsgCtx, domain: str) -> int:
        return self._save(m, domain, reply=False)

    def _save(self, m: MsgCtx, domain: str, reply: bool) -> int:
        msg = m.msg
        if msg.method != b"REGISTER":
            log.info("save() called for a %s request", msg.method.decode("latin-1"))
            return -1
        ul = self._usrloc(m)
        try:
            bindings = self._update(m, ul, domain)
        except _Refused as exc:
            if reply:
                headers = (b"P-Registrar-Error: " + exc.text.encode(), *exc.headers)
                send_reply(m, exc.status, _REASONS.get(exc.status, "Bad Request"),
                           headers=headers)
                return 0
            return -1
        if not reply:
            return 1
        inow = int(m.now)
        headers = []
        if bindings:
            headers.append(b"Contact: " + b", ".join(self._contact_value(c, inow)
                                                     for c in bindings))
        send_reply(m, 200, "OK", headers=headers)
        return 1

    def _contact_value(self, c: Contact, inow: int) -> bytes:
        out = [b"<", c.contact, b">"]
        if c.q >= 0:
            out += (b";q=", format_q(c.q))
        out.append(b";expires=%d" % (c.expires - inow if c.expires else 0))
        if c.received:
            out += (b";", self.received_param, b'="', c.received, b'"')
        return b"".join(out)

    def _update(self, m: MsgCtx, ul: Usrloc, domain: str) -> list[Contact]:
        """Apply the REGISTER to the location; the bindings to list in the 200."""
        msg = m.msg
        now = m.now
        inow = int(now)
        try:
            to = msg.to
            contacts = msg.contacts
            callid = msg.call_id
            cseq = msg.cseq.num
            to_uri = to.uri
        except SipError as exc:
            raise _Refused(400, R_PARSE if exc.status != 416 else R_AOR_PARSE) from None
        aor = self.aor_of(to_uri)
        try:
            hdr_expires = msg.expires
        except SipError:
            hdr_expires = None  # a broken Expires header counts as absent (SER)
        if contacts.star:
            if contacts.items:
                raise _Refused(400, R_STAR_CONT)
            if hdr_expires != 0:
                raise _Refused(400, R_STAR_EXP)
            with ul.locked(aor):
                self._guard(lambda: ul.delete_aor(domain, aor, now))
            return []
        wanted = self._wanted(m, contacts.items, hdr_expires)
        if len(callid) > CALLID_MAX:
            callid = callid[:CALLID_MAX]
        ua_field = msg.find(b"User-Agent")
        ua = ua_field.value[:UA_MAX] if ua_field is not None else UA_UNKNOWN
        ua = ua.decode("utf-8", "replace").encode()[:UA_MAX]
        callid = callid.decode("utf-8", "replace").encode()[:CALLID_MAX]
        sock = f"udp:{m.local_ip}:{m.local_port}".encode()
        cflags = self.nat_mask if m.flags & self.nat_mask else 0
        with ul.locked(aor):
            current = self._guard(lambda: ul.records(domain, aor))
            valid = {c.contact: c for c in current if c.valid(now)}
            upserts: list[Contact] = []
            deletes: list[Contact] = []
            for uri, expires, q, received in wanted:
                old = valid.get(uri)
                if old is not None and old.callid == callid:
                    if cseq < old.cseq:
                        raise _Refused(400, R_INV_CSEQ)
                    if cseq == old.cseq:
                        continue  # a retransmission: already applied
                if expires == 0:
                    if old is not None:
                        deletes.append(old)
                    continue
                upserts.append(Contact(
                    aor, uri, inow + expires, q, callid, cseq, cflags, received, b"", ua,
                    sock, -1, old.ruid if old is not None else b"", inow,
                    old.created if old is not None else now))
            final = {k: c for k, c in valid.items()}
            for c in deletes:
                final.pop(c.contact, None)
            added = 0
            for c in upserts:
                added += c.contact not in final
                final[c.contact] = c
            if self.max_contacts and added and len(final) > self.max_contacts:
                extra = (b"Retry-After: %d" % self.retry_after,) if self.retry_after else ()
                raise _Refused(503, R_TOO_MANY, extra)
            self._guard(lambda: ul.apply(domain, aor, upserts, deletes, now))
        result = list(final.values())
        if len(result) > 1:
            result.sort(key=sort_key(ul.desc_time))
        return result

    def _wanted(self, m: MsgCtx, items: list[Any],
                hdr_expires: int | None) -> list[tuple[bytes, int, int, bytes]]:
        """(contact URI, expires, q, received) per Contact value, last one per URI."""
        out: dict[bytes, tuple[bytes, int, int, bytes]] = {}
        for na in items:
            uri = na.uri_text
            params = na.params
            if "expires" in params:
                text = params["expires"] or ""
                expires = int(text) if text.isdigit() and len(text) <= 10 else self.default_expires
            elif hdr_expires is not None:
                expires = hdr_expires
            else:
                expires = self.default_expires
            if expires:
                if expires < self.min_expires:
                    if self.min_expires_mode:
                        raise _Refused(423, "Interval Too Brief",
                                       (b"Min-Expires: %d" % self.min_expires,))
                    expires = self.min_expires
                if self.max_expires and expires > self.max_expires:
                    expires = self.max_expires
            if "q" in params:
                try:
                    q = parse_q(params["q"])
                except ValueError:
                    raise _Refused(400, R_INV_Q) from None
            else:
                q = self.default_q
            if "received" in params and params["received"]:
                received = _unquote(params["received"] or "").encode("latin-1")
            else:
                received = m.received or b""
            if len(uri) > CONTACT_MAX or len(received) > RECEIVED_MAX:
                raise _Refused(400, R_CONTACT_LEN)
            try:
                uri.decode("utf-8")
                received.decode("utf-8")
            except UnicodeDecodeError:
                raise _Refused(400, R_CONTACT) from None
            out[uri] = (uri, expires, q, received)
        return list(out.values())

    @staticmethod
    def _guard(fn: Any) -> Any:
        """Run a usrloc call; its failures become the error reply."""
        try:
            return fn()
        except DbError as exc:
            log.error("registrar: location database error: %s", exc)
            raise _Refused(500, R_UL) from None
        except TableFull as exc:
            log.error("registrar: %s", exc)
            raise _Refused(503, R_FULL) from None
        except ContactTooLong:
            raise _Refused(400, R_CONTACT_LEN) from None

    # ---- lookup -------------------------------------------------------------------

    def _ruri_contacts(self, m: MsgCtx, domain: str) -> tuple[int, list[Contact]]:
        ul = self._usrloc(m)
        try:
            aor = self.aor_of(parse_uri(m.ruri))
        except (SipError, _Refused):
            return -1, []
        try:
            records = ul.records(domain, aor)
        except DbError as exc:
            log.error("registrar: lookup failed: %s", exc)
            return -2, []
        live = [c for c in records if c.state == 1]
        if not live:
            return -3, []
        valid = [c for c in live if c.valid(m.now)]
        if not valid:
            return -5, []
        if len(valid) > 1:
            valid.sort(key=sort_key(ul.desc_time))
        return 1, valid

    def lookup(self, m: MsgCtx, domain: str) -> int:
        status, contacts = self._ruri_contacts(m, domain)
        if status < 0:
            return status
        first = contacts[0]
        m.new_uri = first.contact
        if first.received:
            m.dst_uri = first.received
        nat = first.cflags & self.nat_mask
        if self.append_branches:
            for c in contacts[1:]:
                m.branches.append(Branch(c.contact, c.received or None, c.q, c.cflags))
                nat |= c.cflags & self.nat_mask
        if nat:
            m.flags |= self.nat_mask
        return 1

    def registered(self, m: MsgCtx, domain: str) -> int:
        return 1 if self._ruri_contacts(m, domain)[0] > 0 else -1


def _domain(value: object) -> str:
    name = as_str(value)
    if name not in DOMAINS:
        raise ValueError(f"unknown usrloc table {name!r} (natserver has {', '.join(DOMAINS)})")
    return name


FUNCTIONS = (
    Function("save", Registrar.save, args=(_domain,)),
    Function("save_noreply", Registrar.save_noreply, args=(_domain,)),
    Function("lookup", Registrar.lookup, args=(_domain,),
             routes=RouteType.REQUEST | RouteType.FAILURE),
    Function("registered", Registrar.registered, args=(_domain,),
             routes=RouteType.REQUEST | RouteType.FAILURE),
)
PARAMS = (
    Param("default_expires", int, 3600, check=int_range(0, 1 << 30),
          doc="expiry when neither the contact nor the Expires header gives one"),
    Param("min_expires", int, 60, check=int_range(0, 1 << 30), doc="shortest expiry"),
    Param("max_expires", int, 0, check=int_range(0, 1 << 30), doc="longest expiry (0: none)"),
    Param("min_expires_mode", int, 0, check=int_range(0, 1),
          doc="0: raise a too short expiry (SER); 1: 423 Interval Too Brief (RFC 3261)"),
    Param("default_q", int, -1, check=int_range(-1, 1000), doc="q*1000 when none given"),
    Param("max_contacts", int, 0, check=int_range(0, 1 << 20),
          doc="bindings per AOR (0: no limit); more gives 503"),
    Param("retry_after", int, 0, check=int_range(0, 86400),
          doc="Retry-After in the max_contacts 503 (0: none)"),
    Param("nat_flag", int, 4, check=int_range(0, 31),
          doc="message flag stored as the contact's NAT mark and restored by lookup"),
    Param("append_branches", int, 1, check=int_range(0, 1),
          doc="lookup: further contacts become branches"),
    Param("case_sensitive", int, 0, check=int_range(0, 1), doc="keep the AOR user's case"),
    Param("use_domain", int, 0, check=int_range(0, 1), doc="AOR is user@domain"),
    Param("received_param", str, "received", check=as_str,
          doc="name of the 200 OK contact parameter showing the received address"),
    Param("received_avp", int, 42, doc="accepted for SER cfgs; natserver always stores it"),
    Param("desc_time_order", int, 0, check=int_range(0, 1),
          doc="equal q: newest contact first (same as usrloc's)"),
)
MODULE = Registrar
