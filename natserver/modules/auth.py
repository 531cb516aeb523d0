"""auth: digest challenges and checks (SER modules/auth), the part that needs no
credential store. ``www_challenge``/``proxy_challenge`` answer 401/407;
``consume_credentials`` removes the used credentials from the forwarded request;
:meth:`Auth.authorize` is the check that ``auth_db`` (and any other store) runs with a
function giving the user's HA1.

Challenges follow SER byte for byte (functions.md): ``Digest realm="R", nonce="N"``
then ``, qop="auth"`` (qop argument "1") and ``, stale=true`` (after correct
credentials with an expired nonce); no algorithm, no opaque - unless the ``algorithm``
modparam asks for more than MD5 (``"SHA-256,MD5"``: one challenge per algorithm, most
preferred first, each naming its algorithm, RFC 8760).

Nonces are stateless (:mod:`natserver.sip.digest`): the expiry (now + ``nonce_expire``)
signed with the ``secret`` modparam, or with random bytes the supervisor makes before
fork, so every worker accepts every worker's nonce; hosts that share a database share
nonces by setting the same ``secret``. A nonce issued with qop carries an index: a
shm table (``auth_nc``, ``nc_array_size`` slots, slot = index mod size) remembers its
expiry and the highest nonce-count seen, so a replayed (or lower) ``nc`` is refused and
a slot reused by a newer nonce makes the old one stale.

An unknown user and a wrong password end the same way (-1, the same challenge) and
cost the same hashing, so neither the reply nor its timing tells them apart.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from natserver.errors import SipError
from natserver.modules import Function, Module, Param, as_str, int_range
from natserver.modules.sl import send_reply
from natserver.script.runtime import MsgCtx
from natserver.sip import digest
from natserver.sip.headers import Hdr

if TYPE_CHECKING:
    from natserver.context import Context

log = logging.getLogger("natserver.auth")

NC_TABLE = "auth_nc"
_COUNTER = b"count"              # key of the index counter (slot keys are 4 bytes)
_SLOT = struct.Struct("<I")
_NC = struct.Struct("<III")      # nonce index, nonce expiry, highest nc seen
_HEXLEN = {"MD5": 32, "SHA-256": 64, "SHA-512-256": 64}
ALGORITHMS = tuple(_HEXLEN)

# What a store returns for a user: the HA1 hex for the credentials' algorithm, or None
# for an unknown user. May raise DbError.
Ha1Lookup = Callable[[digest.Credentials, str, str], "str | None"]


class NcCheck:
    OK = 1
    STALE = 0     # the slot was reused by a newer nonce (or lost): ask again, stale=true
    REPLAY = -1   # this nc (or a higher one) was used already


def hex_len(algo: str) -> int:
    """Digest length in hex of an algorithm (``-sess`` ignored); 0 when unknown."""
    return _HEXLEN.get(algo.upper().removesuffix("-SESS"), 0)


def _algorithms(value: Any) -> tuple[str, ...]:
    names = tuple(a.strip().upper() for a in as_str(value).split(",") if a.strip())
    bad = [a for a in names if a not in _HEXLEN]
    if not names or bad:
        raise ValueError(f"algorithm must list {', '.join(ALGORITHMS)}, got {value!r}")
    return names


def _algorithm_param(value: Any) -> str:
    _algorithms(value)
    return as_str(value)


def _qop(value: Any) -> int:
    return int_range(0, 3)(value)


class Auth(Module):
    NAME = "auth"

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        self.nonce_expire = params["nonce_expire"]
        self.realm_prefix = params["realm_prefix"]
        self.nonce_count = bool(params["nonce_count"])
        self.nc_size = params["nc_array_size"]
        self.algorithms = _algorithms(params["algorithm"])
        self.secret = b""
        self.nc: Any = None

    def shm_tables(self, ctx: Context) -> dict[str, tuple[int, int, int]]:
        if not self.nonce_count:
            return {}
        return {NC_TABLE: (self.nc_size + 1, len(_COUNTER), _NC.size)}

    def init(self, ctx: Context) -> None:
        if self.params["secret"]:
            self.secret = self.params["secret"].encode()
        else:
            if not ctx.secret:  # the supervisor makes one; a bare Context may not have it
                ctx.secret = os.urandom(16)
            self.secret = ctx.secret
        if self.nonce_count and ctx.tables is not None:
            self.nc = ctx.tables.get(NC_TABLE)

    # ---- realm and credentials ------------------------------------------------------

    def realm(self, m: MsgCtx, arg: str, www: bool) -> str | None:
        """``arg``, or when empty the To host (www on REGISTER) / From host (SER
        get_realm); ``realm_prefix`` stripped. None when the header is unusable."""
        realm = arg
        if not realm:
            msg = m.msg
            try:
                na = msg.to if www and msg.method == b"REGISTER" else msg.from_
                realm = na.uri.host
            except SipError:
                return None
        prefix = self.realm_prefix
        if prefix and realm.startswith(prefix) and len(realm) > len(prefix):
            realm = realm[len(prefix):]
        return realm

    @staticmethod
    def credentials(m: MsgCtx, realm: str, www: bool) -> digest.Credentials | None:
        """The first Digest credentials for ``realm`` (case-insensitive); SipError(400)
        when a credentials header cannot be parsed."""
        hdr = Hdr.AUTHORIZATION if www else Hdr.PROXY_AUTHORIZATION
        low = realm.lower()
        for creds in m.msg.authorizations(hdr):
            if creds.scheme == "digest" and creds.realm is not None and \
                    creds.realm.lower() == low:
                return creds
        return None

    # ---- the check --------------------------------------------------------------------

    def authorize(self, m: MsgCtx, realm_arg: str, www: bool, ha1_for: Ha1Lookup) -> int:
        """SER auth_db authorize(): 1 authorized (``m.auth`` set), -1 not (challenge
        next; ``m.vars["auth_stale"]`` when the nonce was stale), 0 after a 400/500 reply."""
        from natserver.errors import DbError
        msg = m.msg
        if msg.method in (b"ACK", b"CANCEL"):
            return 1
        realm = self.realm(m, realm_arg, www)
        if realm is None:
            send_reply(m, 400, "Bad Request")
            return 0
        try:
            creds = self.credentials(m, realm, www)
        except SipError as exc:
            log.info("bad credentials from %s:%s: %s", m.src_ip, m.src_port, exc.reason)
            send_reply(m, 400, "Bad Request")
            return 0
        if creds is None:
            return -1
        if creds.missing():
            send_reply(m, 400, "Bad Request")
            return 0
        algo = creds.algorithm.removesuffix("-SESS")
        if algo not in _HEXLEN:
            return -1  # an algorithm we cannot check: challenge again
        status = digest.check_nonce(creds.nonce or "", self.secret, m.now)
        if status == digest.NonceStatus.INVALID:
            return -1
        try:
            key = ha1_for(creds, creds.realm or realm, algo)
        except DbError as exc:
            log.error("auth: credentials lookup failed: %s", exc)
            send_reply(m, 500, "Server Internal Error")
            return 0
        if key is None or len(key) != _HEXLEN[algo]:
            # Same work as a real check, same answer: no user enumeration, by reply or time.
            digest.check_response(creds, msg.method, "0" * _HEXLEN[algo], msg.body)
            return -1
        if not digest.check_response(creds, msg.method, key, msg.body):
            return -1
        if status == digest.NonceStatus.STALE:
            m.vars["auth_stale"] = True
            return -1
        nc = self.check_nc(creds)
        if nc != NcCheck.OK:
            if nc == NcCheck.STALE:
                m.vars["auth_stale"] = True
            else:
                log.info("auth: replayed nonce count %s from %s:%s (user %s)", creds.nc,
                         m.src_ip, m.src_port, creds.username)
            return -1
        m.auth = creds
        return 1

    def check_nc(self, creds: digest.Credentials) -> int:
        """Nonce-count replay protection for indexed nonces answered with qop."""
        table = self.nc
        if table is None or creds.qop is None:
            return NcCheck.OK
        index = digest.nonce_index(creds.nonce or "")
        if index is None:
            return NcCheck.OK  # a plain nonce (issued without qop): nothing tracked
        try:
            nc = int(creds.nc or "", 16)
        except ValueError:
            return NcCheck.REPLAY
        expiry = digest.nonce_expiry(creds.nonce or "") or 0
        verdict = [NcCheck.OK]

        def fn(old: bytes | None) -> bytes | None:
            if old is None:
                verdict[0] = NcCheck.STALE
                return None
            idx, exp, last = _NC.unpack(old)
            if idx != index or exp != expiry:
                verdict[0] = NcCheck.STALE
                return old
            if nc <= last:
                verdict[0] = NcCheck.REPLAY
                return old
            return _NC.pack(idx, exp, nc & 0xFFFFFFFF)

        table.update(_SLOT.pack(index % self.nc_size), fn)
        return verdict[0]

    # ---- challenges -----------------------------------------------------------------

    def new_nonce(self, now: float, tracked: bool) -> str:
        """A nonce; ``tracked`` ones get an index and an nc slot."""
        table = self.nc
        if not tracked or table is None:
            return digest.make_nonce(self.secret, now, self.nonce_expire)
        got = [0]

        def bump(old: bytes | None) -> bytes:
            n = 0 if old is None else _NC.unpack(old)[0]
            got[0] = n
            return _NC.pack((n + 1) & 0xFFFFFFFF, 0, 0)

        table.update(_COUNTER, bump)
        index = got[0]
        nonce = digest.make_nonce(self.secret, now, self.nonce_expire, index)
        expiry = digest.nonce_expiry(nonce) or 0
        table.put(_SLOT.pack(index % self.nc_size), _NC.pack(index, expiry, 0))
        return nonce

    def challenge(self, m: MsgCtx, realm_arg: str, qop: int, www: bool) -> int:
        """Send 401/407 with a fresh nonce; returns 0 (the route block ends)."""
        realm = self.realm(m, realm_arg, www)
        if realm is None:
            send_reply(m, 400, "Bad Request")
            return 0
        qop_text = ",".join(q for bit, q in ((1, "auth"), (2, "auth-int")) if qop & bit) or None
        nonce = self.new_nonce(m.now, qop_text is not None)
        stale = bool(m.vars.get("auth_stale"))
        name = b"WWW-Authenticate: " if www else b"Proxy-Authenticate: "
        named = self.algorithms != ("MD5",)
        headers = [name + digest.make_challenge(realm, nonce, qop_text, stale,
                                                algo if named else None)
                   for algo in self.algorithms]
        if www:
            send_reply(m, 401, "Unauthorized", headers=headers)
        else:
            send_reply(m, 407, "Proxy Authentication Required", headers=headers)
        return 0

    def www_challenge(self, m: MsgCtx, realm: str, qop: int) -> int:
        return self.challenge(m, realm, qop, True)

    def proxy_challenge(self, m: MsgCtx, realm: str, qop: int) -> int:
        return self.challenge(m, realm, qop, False)

    def consume_credentials(self, m: MsgCtx) -> int:
        """Remove the authorized credentials' header line from the forwarded request."""
        creds = m.auth
        if creds is None or getattr(creds, "hdr_start", -1) < 0:
            if m.msg.method not in (b"ACK", b"CANCEL"):
                log.info("consume_credentials: nothing was authorized")
            return -1
        m.get_edits().delete(creds.hdr_start, creds.hdr_end)
        return 1


def get_auth(ctx: Context) -> Auth:
    auth = ctx.module("auth")
    if not isinstance(auth, Auth):
        raise RuntimeError("auth is not loaded (loadmodule \"auth.so\" before auth_db.so)")
    return auth


FUNCTIONS = (
    Function("www_challenge", Auth.www_challenge, args=(as_str, _qop)),
    Function("proxy_challenge", Auth.proxy_challenge, args=(as_str, _qop)),
    Function("consume_credentials", Auth.consume_credentials),
)
PARAMS = (
    Param("secret", str, "", check=as_str,
          doc="nonce signing secret (empty: random per start; set it on hosts sharing a DB)"),
    Param("nonce_expire", int, 300, check=int_range(1, 86400), doc="nonce lifetime, seconds"),
    Param("realm_prefix", str, "", check=as_str, doc="stripped from the front of realms"),
    Param("nonce_count", int, 1, check=int_range(0, 1),
          doc="refuse replayed nonce counts (qop nonces)"),
    Param("nc_array_size", int, 65536, check=int_range(16, 1 << 22),
          doc="qop nonces tracked at once (slots in shared memory)"),
    Param("algorithm", str, "MD5", check=_algorithm_param,
          doc="challenge algorithms, most preferred first: MD5, SHA-256, SHA-512-256"),
)
MODULE = Auth
