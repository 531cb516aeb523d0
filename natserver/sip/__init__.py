"""natserver's SIP message core, sans-IO: lazy parsing over one buffer, splice edits,
builders for replies and forwarded messages, URIs and digest authentication."""

from natserver.errors import SipError
from natserver.sip.edits import Edits
from natserver.sip.headers import Contacts, CSeq, Hdr, NameAddr, Via
from natserver.sip.message import HeaderField, Message
from natserver.sip.uri import Uri, parse_uri, uri_equal

__all__ = [
    "Contacts", "CSeq", "Edits", "Hdr", "HeaderField", "Message", "NameAddr", "SipError",
    "Uri", "Via", "parse_uri", "uri_equal",
]
