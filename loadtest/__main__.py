"""``python -m loadtest SCENARIO [options]`` (also installed as ``natserver-loadtest``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from loadtest.cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
