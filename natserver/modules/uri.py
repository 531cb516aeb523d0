"""uri: checks on the R-URI and the To header (SER modules/uri; Kamailio siputils)."""

from __future__ import annotations

from natserver.errors import SipError
from natserver.modules import Function, Module, RouteType, as_str
from natserver.script.runtime import MsgCtx
from natserver.sip.uri import parse_uri


class Uri(Module):
    NAME = "uri"

    def has_totag(self, m: MsgCtx) -> int:
        """1 when To carries a non-empty tag (an in-dialog request), else -1."""
        try:
            return 1 if m.msg.to.tag else -1
        except SipError:
            return -1

    def is_user(self, m: MsgCtx, user: str) -> int:
        """1 when the authorized credentials' username equals ``user``."""
        cred = m.auth
        if cred is None:
            return -1
        return 1 if cred.username == user else -1

    def uri_param(self, m: MsgCtx, name: str) -> int:
        try:
            params = parse_uri(m.ruri).params
        except SipError:
            return -1
        return 1 if name.lower() in params else -1

    def uri_param_value(self, m: MsgCtx, name: str, value: str) -> int:
        try:
            params = parse_uri(m.ruri).params
        except SipError:
            return -1
        return 1 if params.get(name.lower()) == value else -1


FUNCTIONS = (
    Function("has_totag", Uri.has_totag, routes=RouteType.ANY),
    Function("is_user", Uri.is_user, args=(as_str,)),
    Function("uri_param", Uri.uri_param, args=(as_str,)),
    Function("uri_param", Uri.uri_param_value, args=(as_str, as_str)),
)
PARAMS = ()
MODULE = Uri
