"""natserver: SIP registrar and proxy with far-end NAT traversal and an RTP relay."""

__version__ = "0.1.0"
