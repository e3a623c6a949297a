"""The `dw` command: a thin shell over the Python API (`dwlib.sandbox.control`, …).

Every command prints one clear message on stderr and exits non-zero when something is wrong;
tracebacks are for bugs only.

Example:
    $ dw sandbox start --profile existing-existing --rows 2000
    $ dw sandbox status --dir .dw/sandbox/existing-existing
    $ dw sandbox stop --dir .dw/sandbox/existing-existing
    $ dw demo
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from .errors import DwError, SandboxError
from .sandbox import control

NOT_RUNNING = 3  # exit status of `dw sandbox status` for a stopped sandbox (as LSB `status` does)
DEMO_DIR = Path(".dw") / "sandbox" / "demo"


def _connection_text(started: control.Started) -> str:
    path = started.root / "connection.yaml"
    return f"connection: {path}\n{yaml.safe_dump(started.connection, sort_keys=False)}"


def sandbox_start(args: argparse.Namespace) -> int:
    """`dw sandbox start`: start in the background, wait until it answers, print the connection."""
    started = control.start(args.profile, root=args.dir, rows=args.rows, port=args.port, faults=args.faults,
                            limits=args.limits)
    c = started.connection
    if started.already_running:
        print(f"the sandbox in {started.root} is already running (pid {c['pid']}); to change its options, "
              f"stop it first: dw sandbox stop --dir {started.root}")
    else:
        print(f"sandbox {c['profile']} running (pid {c['pid']}) at https://127.0.0.1:{c['port']}, "
              f"log {started.root / 'sandbox.log'}")
    print(_connection_text(started), end="")
    return 0


def sandbox_serve(args: argparse.Namespace) -> int:
    """`dw sandbox serve`: run in the foreground until Ctrl+C."""
    control.serve(args.profile, root=args.dir, rows=args.rows, port=args.port, faults=args.faults,
                  limits=args.limits)
    return 0


def sandbox_status(args: argparse.Namespace) -> int:
    """`dw sandbox status`: running or not, URLs, rows per table; exit 3 when not running."""
    root = control.resolve_dir(args.profile, args.dir)
    st = control.status(root, with_rows=True)
    if st.profile is None:
        raise SandboxError(f"there is no sandbox in {root}: create one with dw sandbox start "
                           f"--profile PROFILE --dir {root}")
    if st.running:
        print(f"sandbox {st.profile} in {root}: running (pid {st.pid})")
        c = st.connection
        if c:
            for key in ("authority", "dataverse_url", "finops_url", "gateway_url", "admin_url", "ca_bundle"):
                print(f"  {key + ':':15} {c[key]}")
        else:
            print("  starting: no connection.yaml yet (seeding data)")
    else:
        print(f"sandbox {st.profile} in {root}: not running (start it with: dw sandbox start --dir {root})")
    print("rows:")
    width = max(map(len, st.rows), default=0)
    for table, count in st.rows.items():
        print(f"  {table:{width}} {count:>9,}")
    return 0 if st.running else NOT_RUNNING


def sandbox_stop(args: argparse.Namespace) -> int:
    """`dw sandbox stop`: graceful, then forced; succeeds when nothing runs."""
    root = control.resolve_dir(args.profile, args.dir)
    if control.stop(root):
        print(f"stopped the sandbox in {root}")
    else:
        print(f"no sandbox running in {root}")
    return 0


def demo(args: argparse.Namespace) -> int:
    """`dw demo`: start an existing-existing sandbox, sign in with msal, read both sides, stop."""
    started = control.start("existing-existing", root=args.dir)
    c = started.connection
    try:
        dv_token = control.acquire_token(c, "dataverse")
        fo_token = control.acquire_token(c, "finops", credential="certificate")
        with control.http_client(c, timeout=60) as http:
            def get(url: str, token: str) -> dict:
                response = http.get(url, headers={"Authorization": f"Bearer {token}",
                                                  "Accept": "application/json"})
                if response.status_code != 200:
                    raise SandboxError(f"GET {url.split('?')[0]} answered {response.status_code}: "
                                       f"{response.text[:300]}")
                return response.json()

            api = f"{c['dataverse_url']}/api/data/v9.2"
            who = get(f"{api}/WhoAmI", dv_token)
            accounts = get(f"{api}/accounts?$select=accountid&$count=true&$top=1", dv_token)["@odata.count"]
            contacts = get(f"{api}/contacts?$select=contactid&$count=true&$top=1", dv_token)["@odata.count"]
            entities = get(f"{c['finops_url']}/data/LegalEntities?cross-company=true", fo_token)["value"]
        print(f"sandbox {c['profile']} at https://127.0.0.1:{c['port']} (tenant {c['tenant_id']})")
        print(f"  Dataverse WhoAmI: user {who['UserId']}, organization {who['OrganizationId']}")
        print(f"  Dataverse: {accounts:,} accounts, {contacts:,} contacts")
        print(f"  F&O: {len(entities)} legal entities: "
              f"{', '.join(sorted(e['LegalEntityId'] for e in entities))}")
    finally:
        if not started.already_running:
            control.stop(started.root)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `dw` argument parser (each command sets `func`).

    >>> build_parser().parse_args(["sandbox", "stop", "--dir", "x"]).func.__name__
    'sandbox_stop'
    """
    parser = argparse.ArgumentParser(prog="dw", description="Dual-write setup runbooks and their sandbox.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sandbox = commands.add_parser("sandbox", help="start, inspect and stop local sandboxes")
    verbs = sandbox.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, func, text, example in (
        ("start", sandbox_start, "start a sandbox in the background and print its connection",
         "dw sandbox start --profile existing-existing --rows 20000 --faults 429=0.02,seed=1"),
        ("serve", sandbox_serve, "run a sandbox in the foreground (Ctrl+C stops it)",
         "dw sandbox serve --profile new-new --port 8443"),
    ):
        verb = verbs.add_parser(name, help=text, description=text, epilog=f"example: {example}")
        control.add_options(verb)
        verb.set_defaults(func=func)
    for name, func, text, example in (
        ("status", sandbox_status, "show whether a sandbox runs, its URLs and rows per table (exit 3: "
         "not running)", "dw sandbox status --dir .dw/sandbox/existing-existing"),
        ("stop", sandbox_stop, "stop a sandbox (graceful, then forced)",
         "dw sandbox stop --profile existing-existing"),
    ):
        verb = verbs.add_parser(name, help=text, description=text, epilog=f"example: {example}")
        verb.add_argument("--dir", type=Path, help="state directory (default .dw/sandbox/<profile>)")
        verb.add_argument("--profile", help="find the sandbox in .dw/sandbox/<profile>")
        verb.set_defaults(func=func)

    demo_cmd = commands.add_parser("demo", help="run the main job against a fresh local sandbox",
                                   epilog="example: dw demo")
    demo_cmd.add_argument("--dir", type=Path, default=DEMO_DIR, help=f"state directory (default {DEMO_DIR})")
    demo_cmd.set_defaults(func=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `dw` with `argv` (default: the command line); returns the exit status.

    >>> # main(["sandbox", "status", "--dir", ".dw/sandbox/new-new"])
    """
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except DwError as exc:
        print(f"dw: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
