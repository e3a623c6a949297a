"""`python -m dwlib.sandbox serve [--profile P] [--dir DIR] …`: run a sandbox in the foreground.

This is what `dw sandbox start` runs in the background; it takes the options of `dw sandbox serve`.

Example:
    python -m dwlib.sandbox serve --profile new-new --dir /tmp/sbx --port 0
"""

from __future__ import annotations

import argparse
import sys

from ..errors import DwError
from . import control


def main(argv: list[str] | None = None) -> int:
    """Parse `serve` options and run the sandbox until SIGINT/SIGTERM; 1 on a DwError.

    main(["serve", "--dir", "/tmp/sbx"])
    """
    parser = argparse.ArgumentParser(prog="python -m dwlib.sandbox")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a sandbox in the foreground")
    control.add_options(serve)
    serve.add_argument("--owner-pid", type=int, help=argparse.SUPPRESS)  # control.start(owner_pid=…)
    args = parser.parse_args(argv)
    try:
        control.serve(args.profile, root=args.dir, rows=args.rows, port=args.port, faults=args.faults,
                      limits=args.limits, owner_pid=args.owner_pid, dmf_locale=args.dmf_locale)
    except DwError as exc:
        print(f"dwlib.sandbox: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
