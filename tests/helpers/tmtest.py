"""Test-only module ``tmtest`` for proxy tests, and a natserver that has it.

- ``append_branch("sip:...")`` adds a parallel-forking branch (what ``lookup`` does with
  several contacts), so fork tests need no registrar;
- ``append_branch_from("X-Branch")`` adds one branch per value of that request header
  (the test's UAS ports are only known at run time).

``python -m tests.helpers.tmtest <natserver args>`` runs the normal CLI with the module
available (as tests/helpers/probe.py does); in-process tests call :func:`install`.
:class:`ProxyServer` starts that in a loopback-only network namespace.
"""

from __future__ import annotations

import sys
from pathlib import Path

from natserver.modules import Function, Module, as_bytes, as_str
from natserver.script.runtime import Branch
from tests.helpers.procs import NatServer, Netns


class TmTest(Module):
    NAME = "tmtest"

    def __init__(self, params: dict) -> None:
        super().__init__(params)
        self.calls = 0

    def count_call(self, m) -> int:
        """Counts how often the script ran (in this process)."""
        self.calls += 1
        return 1

    def append_branch(self, m, uri: bytes) -> int:
        m.branches.append(Branch(uri))
        return 1

    def append_branch_from(self, m, header: str) -> int:
        added = 0
        for field in m.msg.find_all(header):
            m.branches.append(Branch(field.value.strip().strip(b"<>")))
            added += 1
        return 1 if added else -1


FUNCTIONS = (
    Function("append_branch", TmTest.append_branch, args=(as_bytes,)),
    Function("append_branch_from", TmTest.append_branch_from, args=(as_str,)),
    Function("count_call", TmTest.count_call),
)
PARAMS = ()
MODULE = TmTest


def install() -> None:
    sys.modules.setdefault("natserver.modules.tmtest", sys.modules[__name__])


def main() -> int:
    install()
    from natserver.cli import main as cli_main
    return cli_main()


class ProxyServer(NatServer):
    """NatServer (tests/helpers/procs.py) running ``python -m tests.helpers.tmtest``."""

    def __init__(self, ns: Netns, cfg: str, tmp: Path) -> None:
        super().__init__(ns, cfg, tmp, module="tests.helpers.tmtest")


if __name__ == "__main__":
    sys.exit(main())
