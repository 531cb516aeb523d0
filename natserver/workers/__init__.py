"""The process kinds: the only code in natserver that owns sockets, loops and signals."""
