"""The ``natserver`` command: read the cfg, compile it, and start the server.

Flags override the cfg as SER's did: ``-f`` cfg file, ``-c`` check the cfg and exit,
``-E`` log to stderr, ``-D`` stay in the foreground, ``-P`` pidfile.

The cfg is parsed and compiled before anything else happens: an error prints
``file:line:col: message`` and exits 1 with no process, socket or file left behind.
"""

from __future__ import annotations

import argparse
import logging
import sys

from natserver import __version__
from natserver.config import help_text
from natserver.errors import CfgError

DEFAULT_CFG = "/etc/natserver/natserver.cfg"

EPILOG = """\
fork=yes in the cfg daemonizes (double fork, setsid, chdir /, stdio to /dev/null,
pidfile - /run/natserver.pid unless -P or pid_file= says otherwise); -D or -E keep
the server in the foreground. Unlike SER, where fork=no meant one single process,
natserver always runs its supervisor and children: fork=no only means "do not
daemonize". Signals to the supervisor: TERM/INT graceful stop, QUIT fast stop,
HUP reopen the log targets.
"""

log = logging.getLogger("natserver")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="natserver", description=__doc__.splitlines()[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-f", dest="cfg", default=DEFAULT_CFG, help="configuration file")
    parser.add_argument("-c", dest="check", action="store_true",
                        help="check the configuration and exit")
    parser.add_argument("-E", dest="stderr", action="store_true",
                        help="log to stderr (implies -D)")
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
    if args.check:
        for warning in compiled.warnings:
            sys.stderr.write(f"warning: {warning}\n")
        sys.stdout.write(f"{args.cfg}: configuration OK\n")
        return 0
    from natserver.workers.supervisor import run
    return run(compiled, args)


if __name__ == "__main__":
    sys.exit(main())
