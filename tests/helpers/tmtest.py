"""Test-only module ``tmtest`` for proxy tests, and a natserver that has it.

``append_branch("sip:...")`` adds a parallel-forking branch (what ``lookup`` does with
several contacts), so fork tests need no registrar. ``python -m tests.helpers.tmtest
<natserver args>`` runs the normal CLI with the module available (as probe does);
in-process tests call :func:`install` first.
"""

from __future__ import annotations

import sys

from natserver.modules import Function, Module, as_bytes
from natserver.script.runtime import Branch


class TmTest(Module):
    NAME = "tmtest"

    def append_branch(self, m, uri: bytes) -> int:
        m.branches.append(Branch(uri))
        return 1


FUNCTIONS = (Function("append_branch", TmTest.append_branch, args=(as_bytes,)),)
PARAMS = ()
MODULE = TmTest


def install() -> None:
    sys.modules.setdefault("natserver.modules.tmtest", sys.modules[__name__])


def main() -> int:
    install()
    from natserver.cli import main as cli_main
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
