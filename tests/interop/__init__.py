"""Interop: natserver with Debian's rtpengine and kamailio (issue 7)."""
