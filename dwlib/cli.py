"""The `dw` command: a thin shell over the Python API (`dwlib.sandbox.control`, …).

Every command prints one clear message on stderr and exits non-zero when something is wrong;
tracebacks are for bugs only.

Example:
    $ dw sandbox start --profile existing-existing --rows 2000
    $ dw sandbox status --dir .dw/sandbox/existing-existing
    $ dw run existing-existing -f params/sandbox-existing-existing.yaml
    $ dw sandbox stop --dir .dw/sandbox/existing-existing
    $ dw run new-new -f params/sandbox-new-new.yaml --sandbox --rows 200
    $ dw demo
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from .errors import DwError, SandboxError
from .params import ParamsError
from .sandbox import consultant, control
from .scenarios import SCENARIOS

NOT_RUNNING = 3  # exit status of `dw sandbox status` for a stopped sandbox (as LSB `status` does)
BAD_PARAMETERS = 2  # exit status of `dw run` for parameters that cannot be used (nothing was called)
DEMO_DIR = Path(".dw") / "sandbox" / "demo"
DEMO_ROWS = 20_000
RUNS_DIR = Path("runs")
PARAMS = Path(__file__).resolve().parents[1] / "params"


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


def sandbox_consultant(args: argparse.Namespace) -> int:
    """`dw sandbox consultant`: perform the portal gate read as JSON on stdin (an `options.gate_command`)."""
    try:
        payload = json.load(sys.stdin)
    except ValueError as exc:
        raise SandboxError(f"expected the runbook's gate instruction as JSON on stdin ({exc})") from None
    for line in consultant.play(payload, args.dir):
        print(f"consultant: {line}")
    return 0


def _execution() -> ModuleType:
    # Imported on use: `dw sandbox …` (run once per portal gate by sandbox runbooks) starts quicker
    # without papermill and the steps.
    from . import execute

    return execute


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`-p KEY=VALUE` pairs as dotted-key overrides, each value parsed as YAML."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ParamsError([(pair, "-p takes KEY=VALUE with a dotted key, e.g. -p options.dry_run=true")])
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ParamsError([(key, f"the value is not valid YAML ({exc})")]) from None
    return out


def _precheck_for_sandbox(scenario: str, params_file: Path, overrides: dict[str, Any]) -> None:
    """Check the parameters before starting a sandbox: all but what its connection.yaml will supply."""
    missing_sandbox = Path(tempfile.gettempdir()) / f"dw-no-sandbox-{os.getpid()}"
    try:
        _execution().check_params(scenario, params_file, {**overrides, "sandbox.dir": str(missing_sandbox)})
    except ParamsError as exc:
        problems = [p for p in exc.problems if not p[0].startswith("sandbox.dir")]
        if problems:
            raise ParamsError(problems, str(params_file)) from None


def _execute(scenario: str, params_file: Path, overrides: dict[str, Any], out: Path) -> int:
    print(f"running {scenario} headless (papermill); results as each step ends:")
    run = _execution().execute(scenario, params_file, overrides, out)
    print(run.summary())
    return 0 if run.ok else 1


def _in_sandbox(scenario: str, root: Path, rows: int | None, faults: str | None, params_file: Path,
                overrides: dict[str, Any], out: Path) -> int:
    """Start a sandbox of `scenario` in `root`, run the runbook against it, stop it."""
    started = control.start(scenario, root=root, rows=rows, port=0, faults=faults)
    print(f"sandbox {scenario} started in {root} ({started.connection['dataverse_url'].rsplit('/', 1)[0]})")
    try:
        overrides = {**overrides, "sandbox.dir": str(root)}
        params = _execution().check_params(scenario, params_file, overrides)
        if params.environments.dataverse_url != started.connection["dataverse_url"]:
            raise ParamsError([("environments", "--sandbox runs against the sandbox, but these parameters "
                                                "name environments of their own: remove environments: "
                                                "(the sandbox's connection.yaml supplies them)")],
                              str(params_file))
        return _execute(scenario, params_file, overrides, out)
    finally:
        control.stop(root)


def run(args: argparse.Namespace) -> int:
    """`dw run`: check the parameters (exit 2 if bad, before any call), run the notebook headless,
    print the step summary; exit 0 only when every step passed or was already done."""
    params_file: Path = args.params_file
    try:
        overrides = _overrides(args.param)
        if not args.sandbox:
            _execution().check_params(args.scenario, params_file, overrides)
            return _execute(args.scenario, params_file, overrides, args.out)
        _precheck_for_sandbox(args.scenario, params_file, overrides)
        root = Path(tempfile.mkdtemp(prefix=f"dw-sandbox-{args.scenario}-"))
        try:
            return _in_sandbox(args.scenario, root, args.rows, args.faults, params_file, overrides, args.out)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    except ParamsError as exc:
        print(f"dw: error: {exc}", file=sys.stderr)
        return BAD_PARAMETERS


def demo(args: argparse.Namespace) -> int:
    """`dw demo`: the existing-existing runbook, headless, against a fresh sandbox of 20,000 rows."""
    scenario = "existing-existing"
    root: Path = args.dir
    if control.read_connection(root) is not None or (root / "sandbox.json").exists():
        control.stop(root)
        shutil.rmtree(root)  # the demo's own directory: start from the profile's seed every time
    print(f"dw demo: scenario {scenario}, {args.rows:,} accounts and {args.rows:,} contacts, all steps "
          f"headless; sandbox state kept in {root}")
    return _in_sandbox(scenario, root, args.rows, None, PARAMS / f"sandbox-{scenario}.yaml", {}, args.out)


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

    verb = verbs.add_parser("consultant", help="play the consultant for one portal gate (JSON on stdin)",
                            description="Perform the portal gate instruction a runbook passes on stdin "
                                        "(options.gate_command) through the sandbox's portal endpoints.",
                            epilog="example (params): options: {gate_command: [dw, sandbox, consultant]}")
    verb.add_argument("--dir", type=Path, help="the sandbox (default: the run's sandbox.dir)")
    verb.set_defaults(func=sandbox_consultant)

    run_cmd = commands.add_parser(
        "run", help="run a scenario's runbook headless (papermill) and keep notebook and record",
        description="Check the parameters (exit 2 when bad, before any call), execute "
                    "notebooks/SCENARIO.ipynb with papermill, write OUT/<time>-<scenario>-<id>.ipynb and "
                    ".json, print the step summary; exit 0 only when every step passed or was already done.",
        epilog="example: dw run existing-existing -f params/sandbox-existing-existing.yaml --sandbox "
               "--rows 500")
    run_cmd.add_argument("scenario", choices=SCENARIOS, metavar="SCENARIO", help=", ".join(SCENARIOS))
    run_cmd.add_argument("-f", "--params-file", type=Path, required=True, help="parameters file (YAML)")
    run_cmd.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                         help="override a parameter by dotted key; the value is YAML (repeatable)")
    run_cmd.add_argument("--sandbox", action="store_true",
                         help="start a fresh sandbox of the scenario's profile, run against it, stop it")
    run_cmd.add_argument("--rows", type=int, help="with --sandbox: rows to seed per main table")
    run_cmd.add_argument("--faults", help="with --sandbox: faults to inject, e.g. 429=0.05,5xx=0.02,seed=7")
    run_cmd.add_argument("--out", type=Path, default=RUNS_DIR,
                         help=f"where runs are written (default {RUNS_DIR})")
    run_cmd.set_defaults(func=run)

    demo_cmd = commands.add_parser("demo", help="run the existing-existing runbook against a fresh sandbox",
                                   epilog="example: dw demo")
    demo_cmd.add_argument("--dir", type=Path, default=DEMO_DIR,
                          help=f"the demo's sandbox directory, recreated each time (default {DEMO_DIR})")
    demo_cmd.add_argument("--rows", type=int, default=DEMO_ROWS,
                          help=f"accounts and contacts (default {DEMO_ROWS:,})")
    demo_cmd.add_argument("--out", type=Path, default=RUNS_DIR,
                          help=f"where the run is written (default {RUNS_DIR})")
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
