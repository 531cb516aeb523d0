"""natserver-loadtest: a SIP load generator that shares no code with natserver, so it
can measure any SIP server (Kamailio included) the same way. See ``loadtest.cli``."""
