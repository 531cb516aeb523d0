"""The ``natserver`` command: read the cfg, compile it, and start the server.

Flags override the cfg as SER's did: ``-f`` cfg file, ``-c`` check the cfg and exit,
``-E`` log to stderr, ``-D`` stay in the foreground, ``-P`` pidfile.
"""

from __future__ import annotations

import argparse
import logging
import sys

from natserver import __version__
from natserver.config import help_text
from natserver.errors import CfgError

DEFAULT_CFG = "/etc/natserver/natserver.cfg"

log = logging.getLogger("natserver")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="natserver", description=__doc__.splitlines()[0])
    parser.add_argument("-f", dest="cfg", default=DEFAULT_CFG, help="configuration file")
    parser.add_argument("-c", dest="check", action="store_true",
                        help="check the configuration and exit")
    parser.add_argument("-E", dest="stderr", action="store_true", help="log to stderr")
    parser.add_argument("-D", dest="foreground", action="store_true",
                        help="stay in the foreground (do not daemonize)")
    parser.add_argument("-P", dest="pidfile", default=None, help="pidfile path")
    parser.add_argument("-V", "--version", action="version", version=f"natserver {__version__}")
    parser.add_argument("--help-params", action="store_true",
                        help="list the global cfg parameters and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.help_params:
        sys.stdout.write(help_text() + "\n")
        return 0
    from natserver import script
    try:
        compiled = script.load(args.cfg)
    except CfgError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"{args.cfg}: {exc.strerror}\n")
        return 1
    for warning in compiled.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    if args.check:
        sys.stdout.write(f"{args.cfg}: configuration OK\n")
        return 0
    from natserver.workers.supervisor import run
    return run(compiled, args)


if __name__ == "__main__":
    sys.exit(main())
