"""Test-only: natserver with one extra module, ``probe``, that the process tests steer.

Run as ``python -m tests.helpers.probe <natserver args>``: it registers the module
under ``natserver.modules.probe`` (so ``loadmodule "probe.so"`` finds it) and runs the
normal CLI. Nothing of it ships in the package.

modparams:
- ``fail_kind``: a process kind ("timer", "sip worker"...) whose ``child_init`` raises;
- ``fail_flag``: a path; when set, ``child_init`` fails only while that file exists
  (a crash loop the test can start and end);
- ``trace``: a file the hooks append lines to: ``timer <pid>``, ``natping <pid>``,
  ``shutdown <kind> <pid>``.

It also exports an RPC row, ``probe_echo``, that answers its arguments.
"""

from __future__ import annotations

import os
import sys

from natserver.modules import Module, Param, Rpc


class Probe(Module):
    NAME = "probe"

    def child_init(self, ctx) -> None:
        kind = self.params["fail_kind"]
        flag = self.params["fail_flag"]
        if kind and ctx.proc.kind == kind and (not flag or os.path.exists(flag)):
            raise RuntimeError(f"probe: {kind} fails on purpose")

    def _trace(self, line: str) -> None:
        path = self.params["trace"]
        if path:
            with open(path, "a") as fh:
                fh.write(line + "\n")

    def timer(self, ctx, now: float) -> float | None:
        self._trace(f"timer {os.getpid()}")
        return 0.2

    def natping(self, ctx, now: float) -> float | None:
        self._trace(f"natping {os.getpid()}")
        return 0.2

    def shutdown(self, ctx) -> None:
        self._trace(f"shutdown {ctx.proc.kind} {os.getpid()}")

    def echo(self, ctx, args: list[str]) -> object:
        if args[:1] == ["fail"]:
            raise ValueError("asked to fail")
        return {"args": args, "pid": os.getpid()}


PARAMS = (Param("fail_kind", str, ""), Param("fail_flag", str, ""), Param("trace", str, ""))
RPC = (Rpc("probe_echo", Probe.echo, "answers its arguments"),)
MODULE = Probe


def main() -> int:
    sys.modules["natserver.modules.probe"] = sys.modules[__name__]
    from natserver.cli import main as cli_main
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
