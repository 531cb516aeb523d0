"""``natserver-loadtest SCENARIO [options]`` - a SIP load generator for any server.

Scenarios: options (stateless OPTIONS, the baseline), register (digest REGISTER),
call (INVITE with proxy auth through the server to registered callees, BYE after a
hold time, optional RTP), mixed (re-registrations and calls together).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from pathlib import Path

from loadtest.procs import Trial, run_parallel, search_max_rate
from loadtest.report import LiveLine, summary, table, to_html, to_json, trials_html
from loadtest.scenarios import SCENARIOS
from loadtest.scenarios.common import Settings, csv_users, rule_users
from loadtest.stats import Stats

EXAMPLES = """examples:
  natserver-loadtest options -t 127.0.0.1:5060 --rate 2000 --duration 10
  natserver-loadtest register --users 1000 --password-format 'pass{n:04d}' --rate 500
  natserver-loadtest call --users 200 --rate 100 --hold 2 --rtp --report calls.html
  natserver-loadtest register --users 1000 --max-rate --procs 2 --json max.json
"""


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        return text, 5060
    try:
        return host, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad HOST:PORT {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="natserver-loadtest", description=__doc__.split("\n\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    g = p.add_argument_group("target")
    g.add_argument("-t", "--target", type=_hostport, default=("127.0.0.1", 5060),
                   help="server HOST:PORT (default 127.0.0.1:5060)")
    g.add_argument("--domain", default="", help="SIP domain of the users (default: the target)")
    g.add_argument("--local-ip", default="127.0.0.1", help="address the generator binds")
    g.add_argument("--local-port", type=int, default=0,
                   help="first local SIP port (UAC; UAS +1; process i +2i): the same contacts "
                        "run after run (default: any port; --max-rate picks one for all trials)")
    g.add_argument("--no-connect", action="store_true",
                   help="do not connect the SIP sockets to the target (for servers that "
                        "answer or forward from another address)")
    g = p.add_argument_group("rate")
    g.add_argument("-r", "--rate", type=float, default=100.0,
                   help="calls, registrations or requests started per second (default 100)")
    g.add_argument("--ramp", type=float, default=0.0, help="seconds to ramp up to --rate")
    g.add_argument("-d", "--duration", type=float, default=10.0,
                   help="seconds of load (0 = until --max; default 10)")
    g.add_argument("-m", "--max", dest="max_count", type=int, default=0,
                   help="stop after this many units")
    g.add_argument("-l", "--limit", type=int, default=0, help="most units in flight at once")
    g.add_argument("-p", "--procs", type=int, default=1, help="generator processes (default 1)")
    g.add_argument("--max-rate", action="store_true",
                   help="search the highest rate with fewer than --max-failures failed units")
    g.add_argument("--max-failures", type=float, default=0.01,
                   help="failure ratio of --max-rate and of the exit status (default 0.01)")
    g = p.add_argument_group("users")
    g.add_argument("-u", "--users", type=int, default=100, help="how many users (default 100)")
    g.add_argument("--first-user", type=int, default=1, help="n of the first user (default 1)")
    g.add_argument("--user-format", default="user{n:04d}",
                   help="user name rule, n counts from 1 (default user{n:04d})")
    g.add_argument("--password-format", default="pass{n:04d}",
                   help="password rule, with n and user (default pass{n:04d})")
    g.add_argument("--users-csv", type=Path, help="users from a SIPp injection CSV file instead")
    g.add_argument("--callees", type=int, default=0,
                   help="call/mixed: how many of the users answer (default half)")
    g.add_argument("--expires", type=int, default=3600, help="REGISTER Expires (default 3600)")
    g.add_argument("--reregister", type=float, default=0.0,
                   help="register/mixed: re-register every this many seconds")
    g = p.add_argument_group("calls")
    g.add_argument("--hold", type=float, default=1.0, help="seconds from ACK to BYE (default 1)")
    g.add_argument("--rtp", action="store_true",
                   help="send 20 ms RTP each way during the hold; loss, jitter, latency")
    g = p.add_argument_group("timers")
    g.add_argument("--t1", type=float, default=0.5, help="RFC 3261 T1 (default 0.5 s)")
    g.add_argument("--t2", type=float, default=4.0, help="RFC 3261 T2 (default 4 s)")
    g.add_argument("--timeout", type=float, default=0.0,
                   help="transaction timeout (default 64*T1; 8 s with --max-rate)")
    g.add_argument("--drain", type=float, default=0.0,
                   help="most seconds to wait for open units at the end (default timeout+1)")
    g = p.add_argument_group("output")
    g.add_argument("--json", type=Path, help="write every figure to this JSON file")
    g.add_argument("--report", type=Path, help="write a self-contained HTML report")
    g.add_argument("-q", "--quiet", action="store_true", help="no live progress line")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    if args.users_csv:
        users = csv_users(args.users_csv)
    else:
        users = rule_users(args.users, args.user_format, args.password_format, args.first_user)
    timeout = args.timeout or (8.0 if args.max_rate else 64 * args.t1)
    return Settings(scenario=args.scenario, target=args.target, domain=args.domain,
                    local_ip=args.local_ip, rate=args.rate, ramp=args.ramp,
                    duration=args.duration, max_count=args.max_count, limit=args.limit,
                    users=users, callees=args.callees, expires=args.expires,
                    reregister=args.reregister, hold=args.hold, rtp=args.rtp, timeout=timeout,
                    t1=args.t1, t2=args.t2, drain=args.drain, connect=not args.no_connect,
                    local_port=args.local_port)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.duration <= 0 and args.max_count <= 0:
        sys.stderr.write("natserver-loadtest: give --duration or --max\n")
        return 2
    cfg = settings_from(args)
    if args.scenario != "options" and not cfg.users:
        sys.stderr.write("natserver-loadtest: this scenario needs users\n")
        return 2
    command = "natserver-loadtest " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    extra: dict[str, object] = {"command": command}
    try:
        if args.max_rate:
            best, trials = search_max_rate(cfg, args.procs, max_failures=args.max_failures,
                                           on_trial=None if args.quiet else _print_trial)
            extra["max_rate"] = {"rate": best, "max_failures": args.max_failures,
                                 "trials": [dataclasses.asdict(t) for t in trials]}
            if args.report:
                args.report.write_text(trials_html(trials, best, args.scenario, command))
            sys.stdout.write(f"max rate with < {100 * args.max_failures:g}% failed: {best:.0f}/s\n")
            stats = None
        else:
            live = None if args.quiet else LiveLine(SCENARIOS[args.scenario].unit)
            try:
                stats = run_parallel(cfg, args.procs, live)
            finally:
                if live is not None:
                    live.close()
            sys.stdout.write(table(stats))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except OSError as exc:
        sys.stderr.write(f"natserver-loadtest: {exc}\n")
        return 1
    return _write_outputs(args, stats, extra, command)


def _print_trial(t: Trial) -> None:
    sys.stderr.write(f"trial {t.rate:>9.0f}/s: achieved {t.achieved:.0f}/s, goodput "
                     f"{t.goodput:.0f}/s, failed {100 * t.failure_ratio:.2f}%, p99 {t.p99_ms:.2f} ms, "
                     f"generator {t.cpu_us_per_unit:.0f} us/unit\n")


def _write_outputs(args: argparse.Namespace, stats: Stats | None, extra: dict[str, object],
                   command: str) -> int:
    if args.json:
        if stats is None:
            import orjson
            args.json.write_bytes(orjson.dumps(extra, option=orjson.OPT_INDENT_2))
        else:
            args.json.write_bytes(to_json(stats, extra))
    if args.report and stats is not None:
        args.report.write_text(to_html(stats, command))
    if stats is None:
        return 0
    return 0 if summary(stats)["failure_ratio"] < args.max_failures else 1
