"""The `dw` command: a thin shell over the Python API (`dwlib.sandbox.control`, …).

Every command prints one clear message on stderr and exits non-zero when something is wrong;
tracebacks are for bugs only.

Example:
    $ dw init contoso-uat && cd contoso-uat   # an engagement folder: parameters, pinned notebooks
    $ dw sandbox start --profile existing-existing --rows 2000
    $ dw sandbox status --dir .dw/sandbox/existing-existing
    $ dw run existing-existing -f params/sandbox-existing-existing.yaml
    $ dw sandbox stop --dir .dw/sandbox/existing-existing
    $ dw run new-new -f params/sandbox-new-new.yaml --sandbox --rows 200
    $ dw demo
    $ dw review runs                       # the catalogue of runs
    $ dw review show 0123abcd              # one run, step by step
    $ dw review verify runs                # exit 1 if a record, notebook or evidence changed
    $ dw doctor -f params/my-engagement.yaml --record doctor/   # read-only; redacted fixture candidates
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import yaml

from .errors import DwError, SandboxError
from .extras import MissingExtra, require
from .gates import GATE_ENV
from .packaged import param_file
from .params import ParamsError
from .scenarios import SCENARIOS
from .text import LANGUAGES

if TYPE_CHECKING:
    from .sandbox import control as control_

NOT_RUNNING = 3  # exit status of `dw sandbox status` for a stopped sandbox (as LSB `status` does)
BAD_PARAMETERS = 2  # exit status of `dw run` for parameters that cannot be used (nothing was called)
INTERRUPTED = 130  # exit status of `dw run`/`dw batch` stopped by SIGINT (Ctrl+C) or SIGTERM (128 + SIGINT)
DEMO_DIR = Path(".dw") / "sandbox" / "demo"
DEMO_ROWS = 20_000
RUNS_DIR = Path("runs")


def _control(module: str = "control") -> ModuleType:
    """`dwlib.sandbox.<module>` (imported on use: the sandbox is the `sandbox` extra)."""
    return require(f"dwlib.sandbox.{module}", "sandbox", "the local sandbox",
                   "starlette, uvicorn and trustme")


def _connection_text(started: control_.Started) -> str:
    path = started.root / "connection.yaml"
    return f"connection: {path}\n{yaml.safe_dump(started.connection, sort_keys=False)}"


def sandbox_start(args: argparse.Namespace) -> int:
    """`dw sandbox start`: start in the background, wait until it answers, print the connection."""
    control = _control()
    started = control.start(args.profile, root=args.dir, rows=args.rows, port=args.port, faults=args.faults,
                            limits=args.limits, move_port=args.move_port, dmf_locale=args.dmf_locale)
    c = started.connection
    if started.already_running:
        print(f"the sandbox in {started.root} is already running (pid {c['pid']}); to change its options, "
              f"stop it first: dw sandbox stop --dir {started.root}")
    else:
        print(f"sandbox {c['profile']} running (pid {c['pid']}) at https://127.0.0.1:{c['port']}, "
              f"log {started.root / 'sandbox.log'}")
    if started.moved_from is not None:
        print(f"moved from port {started.moved_from} to {c['port']}: {control.MOVED}")
    print(_connection_text(started), end="")
    return 0


def sandbox_serve(args: argparse.Namespace) -> int:
    """`dw sandbox serve`: run in the foreground until Ctrl+C."""
    _control().serve(args.profile, root=args.dir, rows=args.rows, port=args.port, faults=args.faults,
                     limits=args.limits, move_port=args.move_port, dmf_locale=args.dmf_locale)
    return 0


def sandbox_status(args: argparse.Namespace) -> int:
    """`dw sandbox status`: running or not, URLs, rows per table; exit 3 when not running."""
    control = _control()
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
    control = _control()
    root = control.resolve_dir(args.profile, args.dir)
    if control.stop(root):
        print(f"stopped the sandbox in {root}")
    else:
        print(f"no sandbox running in {root}")
    return 0


def sandbox_refresh(args: argparse.Namespace) -> int:
    """`dw sandbox refresh`: simulate a database refresh of a stopped sandbox (`sandbox.prepare.refresh`)."""
    root = _control().resolve_dir(args.profile, args.dir)
    settings = _control("prepare").refresh(root, args.source)
    what = f"copied from {args.source}" if args.source else "kept, with new environment ids and URLs"
    print(f"refreshed the sandbox in {root} (profile {settings.profile}): data {what}; its dual-write "
          f"configuration is stale. Start it (dw sandbox start --dir {root}), then run the refresh-relink "
          "runbook")
    return 0


def sandbox_consultant(args: argparse.Namespace) -> int:
    """`dw sandbox consultant`: perform the portal gate read as JSON on stdin (what a run whose
    parameters say `options.gates: sandbox-consultant` runs at each gate)."""
    consultant = _control("consultant")
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


def _papermill_pairs(argv: list[str]) -> list[str]:
    """papermill's `-p KEY VALUE` written as `-p KEY=VALUE` (a KEY holds no `=`), so both forms work.

    >>> _papermill_pairs(["run", "new-new", "-p", "options.dry_run", "true", "-p", "rows=5"])
    ['run', 'new-new', '-p', 'options.dry_run=true', '-p', 'rows=5']
    >>> _papermill_pairs(["run", "new-new", "-p", "options.dry_run", "-f", "x.yaml"])  # KEY alone: an error
    ['run', 'new-new', '-p', 'options.dry_run', '-f', 'x.yaml']
    >>> _papermill_pairs(["run", "-p"])
    ['run', '-p']
    """
    out, i = [], 0
    while i < len(argv):
        word = argv[i]
        value = argv[i + 2] if i + 2 < len(argv) else "-"
        # An option after KEY is not its value (a negative number is).
        if word in ("-p", "--param") and not re.match(r"-(?!\d)", value) and "=" not in argv[i + 1]:
            out += [word, f"{argv[i + 1]}={argv[i + 2]}"]
            i += 3
            continue
        out.append(word)
        i += 1
    return out


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`-p KEY=VALUE` pairs as dotted-key overrides, each value parsed as YAML."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ParamsError([(pair, "-p takes KEY=VALUE or KEY VALUE with a dotted key, e.g. "
                                      "-p options.dry_run=true")])
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ParamsError([(key, f"the value is not valid YAML ({exc})")]) from None
    return out


def _execute(scenario: str, params_file: Path, overrides: dict[str, Any], out: Path) -> int:
    print(f"running {scenario} headless (papermill); results as each step ends:")
    run = _execution().execute(scenario, params_file, overrides, out)
    print(run.summary())
    if run.interrupted:
        return INTERRUPTED
    return 0 if run.ok else 1


def _in_sandbox(scenario: str, root: Path, rows: int | None, faults: str | None, params_file: Path,
                overrides: dict[str, Any], out: Path) -> int:
    """Check the parameters (all but what the sandbox supplies), start a sandbox of `scenario` in
    `root`, run the runbook against it, stop it."""
    overrides = {**overrides, "sandbox.dir": str(root)}
    _execution().check_params(scenario, params_file, overrides, sandbox_pending=True)
    control, prepare = _control(), _control("prepare")  # prepare: the operations runbooks' sandboxes
    started = control.start(prepare.profile(scenario), root=root, rows=rows, port=0, faults=faults)
    print(f"sandbox {scenario} started in {root} ({started.connection['dataverse_url'].rsplit('/', 1)[0]})")
    try:
        prepare.prepare(scenario, root)
        _execution().check_params(scenario, params_file, overrides)
        return _execute(scenario, params_file, overrides, out)
    finally:
        control.stop(root)


def run(args: argparse.Namespace) -> int:
    """`dw run`: check the parameters (exit 2 if bad, before any call), run the notebook headless,
    print the step summary; exit 0 only when every step passed or was already done."""
    params_file: Path = args.params_file
    if args.gate_command:
        os.environ[GATE_ENV] = args.gate_command  # the kernel inherits it (dwlib.gates)
    if args.sandbox:
        _control()  # a missing sandbox extra is said before anything else
    try:
        overrides = _overrides(args.param)
        if args.lang:
            overrides["language"] = args.lang
        with _execution().sigterm_interrupts():  # outside the notebook: SIGTERM stops as Ctrl+C does
            if not args.sandbox:
                _execution().check_params(args.scenario, params_file, overrides)
                return _execute(args.scenario, params_file, overrides, args.out)
            root = Path(tempfile.mkdtemp(prefix=f"dw-sandbox-{args.scenario}-"))
            try:
                return _in_sandbox(args.scenario, root, args.rows, args.faults, params_file, overrides,
                                   args.out)
            finally:
                shutil.rmtree(root, ignore_errors=True)
    except ParamsError as exc:
        print(f"dw: error: {exc}", file=sys.stderr)
        return BAD_PARAMETERS


def demo(args: argparse.Namespace) -> int:
    """`dw demo`: the existing-existing runbook, headless, against a fresh sandbox of 20,000 rows."""
    scenario = "existing-existing"
    root: Path = args.dir
    control = _control()
    if control.read_connection(root) is not None or (root / "sandbox.json").exists():
        control.stop(root)
        shutil.rmtree(root)  # the demo's own directory: start from the profile's seed every time
    print(f"dw demo: scenario {scenario}, {args.rows:,} accounts and {args.rows:,} contacts, all steps "
          f"headless; sandbox state kept in {root}")
    return _in_sandbox(scenario, root, args.rows, None, param_file(f"sandbox-{scenario}.yaml"), {}, args.out)


def init(args: argparse.Namespace) -> int:
    """`dw init DIR`: an engagement folder (parameters, pinned notebooks, git hygiene, README)."""
    from .engagement import init as make

    scenarios = args.scenario or list(SCENARIOS)
    written = make(args.directory, scenarios, force=args.force)
    print(f"made the engagement folder {args.directory} ({len(written)} files) for {', '.join(scenarios)}; "
          f"next: cd {args.directory} and read README.md (dw demo, dw run {scenarios[0]} -f "
          f"params/sandbox-{scenarios[0]}.yaml --sandbox)")
    return 0


def doctor(args: argparse.Namespace) -> int:
    """`dw doctor`: the read-only calls that verify unverified behaviours on real environments; with
    `--record DIR`, each request and response saved there, redacted, with an index."""
    from . import doctor as doctor_
    from .clients import connect
    from .params import load_params

    try:
        params = load_params(args.params_file, _overrides(args.param))
    except ParamsError as exc:
        print(f"dw: error: {exc}", file=sys.stderr)
        return BAD_PARAMETERS
    with connect(params) as session:
        outcomes = doctor_.examine(session, args.record, execution_id=args.execution_id)
    print(doctor_.summary(outcomes))
    if args.record is not None:
        print(f"recorded {len(outcomes)} reads (redacted) in {args.record}; the list: "
              f"{args.record / 'index.json'}")
    return 0


REVIEW_VERBS = ("list", "show", "compare", "verify", "seal")


def _review() -> ModuleType:
    from . import review

    return review


def _report() -> ModuleType:
    from . import report

    return report


def _emit(args: argparse.Namespace, formats: dict[str, Callable[[], str]]) -> int:
    """Print (or write to the file `--to`) the text of the chosen `--format`."""
    _review().write_text(formats[args.format](), args.to)
    return 0


def review_list(args: argparse.Namespace) -> int:
    """`dw review DIR`: the catalogue of the runs under DIR as a table, JSON or an HTML page."""
    review = _review()
    rows = review.catalogue(args.dir)
    base = args.to.parent.resolve() if args.to else None
    return _emit(args, {"json": lambda: review.catalogue_json(rows),
                        "html": lambda: review.catalogue_html(rows, base),
                        "table": lambda: review.catalogue_text(rows)})


def review_show(args: argparse.Namespace) -> int:
    """`dw review show RUN`: one run step by step (text), its record (json) or its report (html)."""
    review, report = _review(), _report()
    run = review.find_run(args.run, args.runs)
    return _emit(args, {"json": lambda: json.dumps(run.record, indent=1, default=str),
                        "html": lambda: report.report_html(run), "text": lambda: review.show_text(run)})


def review_compare(args: argparse.Namespace) -> int:
    """`dw review compare RUN_A RUN_B`: parameter, environment, step status and count differences."""
    review = _review()
    runs = args.runs
    comparison = review.compare(review.find_run(args.run_a, runs), review.find_run(args.run_b, runs))
    return _emit(args, {"json": lambda: json.dumps(comparison, indent=1, default=str),
                        "text": lambda: review.comparison_text(comparison)})


def review_verify(args: argparse.Namespace) -> int:
    """`dw review verify RUN|DIR`: recompute every hash; exit 1 when anything changed since the run."""
    review = _review()
    target = args.target if args.target.exists() else review.find_run(str(args.target), args.runs).record_path
    if target is None:
        raise DwError(f"{args.target} has no run record to verify (only a notebook)")
    results = review.verify(target)
    for v in results:
        print(v.text())
    changed = sum(1 for v in results if not v.ok)
    print(f"{len(results)} run(s) verified: {changed} changed" if results
          else f"no run records under {target}")
    return 1 if changed else 0


def review_seal(args: argparse.Namespace) -> int:
    """`dw review seal RECORD --notebook NB`: for a run finished outside dw run (e.g. in JupyterLab),
    write its report and record the final notebook's sha256."""
    notebook = args.notebook or args.record.with_suffix(".ipynb")
    if not notebook.is_file():
        raise DwError(f"{notebook} not found: save the executed notebook, then pass it with --notebook")
    written = _report().finalize(args.record, notebook)
    print(f"sealed {args.record} with {notebook}; report {written}")
    return 0


def _review_parser(commands: Any) -> None:
    review = commands.add_parser(
        "review", help="catalogue, show, compare and verify recorded runs",
        description="Review runs from their records. `dw review DIR` (= `dw review list DIR`) lists the runs "
                    "under DIR; show, compare, verify and seal work on one run: a record (.json), its "
                    "notebook (.ipynb) or a run id (a prefix will do) found under --runs.",
        epilog="examples: dw review runs --format html --to runs/index.html; dw review show 0123abcd; "
               "dw review compare test-run.json prod-run.json; dw review verify runs")
    verbs = review.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, func: Callable[[argparse.Namespace], int], text: str,
             formats: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = verbs.add_parser(name, help=text, description=text)
        if formats:
            parser.add_argument("--format", choices=formats, default=formats[0], help="output format")
            parser.add_argument("--to", type=Path, metavar="FILE",
                                help="write to FILE instead of the terminal")
        if name != "list":
            parser.add_argument("--runs", type=Path, default=RUNS_DIR, metavar="DIR",
                                help=f"the runs directory where a run id is looked up (default {RUNS_DIR})")
        parser.set_defaults(func=func)
        return parser

    verb("list", review_list, "the catalogue of the runs under DIR (the default verb)",
         ("table", "json", "html")).add_argument("dir", type=Path, nargs="?", default=RUNS_DIR, metavar="DIR",
                                                 help=f"the runs directory (default {RUNS_DIR})")
    verb("show", review_show, "one run step by step", ("text", "json", "html")).add_argument(
        "run", metavar="RUN", help="record, notebook or run id")
    cmp = verb("compare", review_compare, "what differs between two runs", ("text", "json"))
    cmp.add_argument("run_a", metavar="RUN_A")
    cmp.add_argument("run_b", metavar="RUN_B")
    verb("verify", review_verify, "recompute hashes; exit 1 if anything changed since the run").add_argument(
        "target", type=Path, metavar="RUN|DIR", help="a record, notebook, run id or runs directory")
    seal = verb("seal", review_seal, "record a finished interactive run's notebook hash and write its report")
    seal.add_argument("record", type=Path, metavar="RECORD", help="the run record (.json)")
    seal.add_argument("--notebook", type=Path, help="the executed notebook (default RECORD's stem .ipynb)")


def _default_verb(argv: list[str]) -> list[str]:
    """`dw review DIR` means `dw review list DIR`."""
    if argv[:1] == ["review"] and (len(argv) == 1 or argv[1] not in (*REVIEW_VERBS, "-h", "--help")):
        return ["review", "list", *argv[1:]]
    return argv


def batch(args: argparse.Namespace) -> int:
    """`dw batch`: validate the plan (exit 2 if bad, before any run), run it, print the summary;
    exit 0 only when every run passed."""
    from .batch import run_batch

    if args.dask_address and args.executor != "dask":
        print("dw: error: --dask-address needs --executor dask", file=sys.stderr)
        return BAD_PARAMETERS
    out = args.out or str(RUNS_DIR / args.plan.stem)
    try:
        return run_batch(args.plan, out, max_parallel=args.max_parallel, resume=args.resume,
                         executor=args.executor, dask_address=args.dask_address).exit_code
    except ParamsError as exc:
        print(f"dw: error: {exc}", file=sys.stderr)
        return BAD_PARAMETERS


def _batch_parser(commands: Any) -> None:
    cmd = commands.add_parser(
        "batch", help="run the runbooks of a plan: local processes or a Dask cluster, with a manifest",
        description="Check every run of the plan (exit 2 when any is bad, before any run), then run each "
                    "as its own dw run process, never two of one environment pair at once; write "
                    "OUT/batch.json and OUT/<run>/; print the summary; exit 0 only when every run passed. "
                    "SIGINT (Ctrl+C) or SIGTERM stops every running run cleanly (exit 130); --resume then "
                    "reruns what did not pass, and waits first for runs a killed batch left running.",
        epilog="example: dw batch params/batch-sandbox.yaml --max-parallel 2 --out runs/nightly")
    cmd.add_argument("plan", type=Path, metavar="PLAN.yaml", help="the plan file (YAML)")
    cmd.add_argument("--max-parallel", type=int, metavar="N",
                     help="runs at once (default: the plan's max_parallel, else one per CPU or Dask thread)")
    cmd.add_argument("--resume", action="store_true", help="rerun only the failed or unfinished runs of OUT")
    cmd.add_argument("--out", metavar="DIR|URL",
                     help=f"a directory the workers share, or a papermill URL (default {RUNS_DIR}/<plan>)")
    cmd.add_argument("--executor", choices=("local", "dask"), default="local",
                     help="local processes (default) or a Dask cluster (pip install 'dwlib[dask]')")
    cmd.add_argument("--dask-address", metavar="ADDR",
                     help="the Dask scheduler, e.g. tcp://scheduler:8786 (default: a LocalCluster)")
    cmd.set_defaults(func=batch)


def build_parser() -> argparse.ArgumentParser:
    """The `dw` argument parser (each command sets `func`).

    >>> build_parser().parse_args(["sandbox", "stop", "--dir", "x"]).func.__name__
    'sandbox_stop'
    """
    parser = argparse.ArgumentParser(prog="dw", description="Dual-write setup runbooks and their sandbox.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sandbox = commands.add_parser("sandbox", help="start, inspect and stop local sandboxes")
    verbs = sandbox.add_subparsers(dest="verb", required=True, metavar="VERB")
    try:
        control: ModuleType | None = _control()
    except MissingExtra:
        control = None  # `main` says how to install it before parsing the options
    for name, func, text, example in (
        ("start", sandbox_start, "start a sandbox in the background and print its connection",
         "dw sandbox start --profile existing-existing --rows 20000 --faults 429=0.02,seed=1"),
        ("serve", sandbox_serve, "run a sandbox in the foreground (Ctrl+C stops it)",
         "dw sandbox serve --profile new-new --port 8443"),
    ):
        verb = verbs.add_parser(name, help=text, description=text, epilog=f"example: {example}")
        if control is not None:
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

    text = "simulate a database refresh of a stopped sandbox: its dual-write configuration goes stale"
    verb = verbs.add_parser("refresh", help=text, description=text + " (data copied with --from, or kept; "
                            "environment ids and URLs change; the Power Platform integration names the "
                            "sandbox's own F&O)",
                            epilog="example: dw sandbox refresh --dir .dw/sandbox/test "
                                   "--from .dw/sandbox/prod")
    verb.add_argument("--dir", type=Path, help="state directory (default .dw/sandbox/<profile>)")
    verb.add_argument("--profile", help="find the sandbox in .dw/sandbox/<profile>")
    verb.add_argument("--from", dest="source", type=Path, help="copy the data of this stopped sandbox")
    verb.set_defaults(func=sandbox_refresh)

    verb = verbs.add_parser("consultant", help="play the consultant for one portal gate (JSON on stdin)",
                            description="Perform the portal gate instruction a runbook passes on stdin "
                                        "through the sandbox's portal endpoints: what a run whose parameters "
                                        "say options.gates: sandbox-consultant runs at each gate.",
                            epilog="example (params): options: {gates: sandbox-consultant}")
    verb.add_argument("--dir", type=Path, help="the sandbox (default: the run's sandbox.dir)")
    verb.set_defaults(func=sandbox_consultant)

    run_cmd = commands.add_parser(
        "run", help="run a scenario's runbook headless (papermill) and keep notebook and record",
        description="Check the parameters (exit 2 when bad, before any call), execute "
                    "notebooks/SCENARIO.ipynb with papermill, write OUT/<time>-<scenario>-<id>.ipynb and "
                    ".json, print the step summary; exit 0 only when every step passed or was already done. "
                    "SIGINT (Ctrl+C) or SIGTERM stops the run cleanly: the kernel is interrupted (killed if "
                    "it does not stop within seconds), the partial notebook and the record are written, and "
                    "the record says the run was interrupted and which step was running.",
        epilog="exit status: 0 every step passed or was already done; 1 a step failed or waits for a person, "
               "or the kernel died; 2 the parameters are wrong (nothing was called); 130 interrupted by "
               "SIGINT or SIGTERM. "
               "example: dw run existing-existing -f params/sandbox-existing-existing.yaml --sandbox "
               "--rows 500")
    run_cmd.add_argument("scenario", choices=SCENARIOS, metavar="SCENARIO", help=", ".join(SCENARIOS))
    run_cmd.add_argument("-f", "--params-file", type=Path, required=True, help="parameters file (YAML)")
    run_cmd.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                         help="override a parameter by dotted key; the value is YAML (repeatable); "
                              "papermill's -p KEY VALUE works too")
    run_cmd.add_argument("--lang", choices=LANGUAGES,
                         help="the runbook's language (sets the parameter language): "
                              "notebooks/SCENARIO.ipynb is English, notebooks/nl/SCENARIO.ipynb Dutch")
    run_cmd.add_argument("--sandbox", action="store_true",
                         help="start a fresh sandbox of the scenario's profile, run against it, stop it")
    run_cmd.add_argument("--rows", type=int, help="with --sandbox: rows to seed per main table")
    run_cmd.add_argument("--faults", help="with --sandbox: faults to inject, e.g. 429=0.05,5xx=0.02,seed=7")
    run_cmd.add_argument("--out", type=Path, default=RUNS_DIR, metavar="DIR",
                         help=f"the runs directory, where runs are written (default {RUNS_DIR})")
    run_cmd.add_argument("--gate-command", metavar="'CMD ARGS'",
                         help="run this command at each portal gate, the instruction as JSON on stdin (no "
                              f"shell; also ${GATE_ENV}); parameters files cannot name one")
    run_cmd.set_defaults(func=run)

    demo_cmd = commands.add_parser("demo", help="run the existing-existing runbook against a fresh sandbox",
                                   epilog="example: dw demo")
    demo_cmd.add_argument("--dir", type=Path, default=DEMO_DIR,
                          help=f"the demo's sandbox directory, recreated each time (default {DEMO_DIR})")
    demo_cmd.add_argument("--rows", type=int, default=DEMO_ROWS,
                          help=f"accounts and contacts (default {DEMO_ROWS:,})")
    demo_cmd.add_argument("--out", type=Path, default=RUNS_DIR, metavar="DIR",
                          help=f"the runs directory, where the run is written (default {RUNS_DIR})")
    demo_cmd.set_defaults(func=demo)
    doctor_cmd = commands.add_parser(
        "doctor", help="read-only calls that verify, on real environments, what the sandbox only assumes",
        description="Make the read-only calls listed in docs/fidelity.md (To verify on a real environment) "
                    "against the environments of a parameters file and print what each answered; with "
                    "--record DIR, save each request and response there, redacted (no tokens, secrets or "
                    "personal data), with an index.json, as fixture candidates.",
        epilog="example: dw doctor -f params/my-engagement.yaml --record doctor/contoso-uat")
    doctor_cmd.add_argument("-f", "--params-file", type=Path, required=True, help="parameters file (YAML)")
    doctor_cmd.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                            help="override a parameter by dotted key; the value is YAML (repeatable); "
                                 "papermill's -p KEY VALUE works too")
    doctor_cmd.add_argument("--record", type=Path, metavar="DIR", help="save the redacted responses in DIR")
    doctor_cmd.add_argument("--execution-id", metavar="ID",
                            help="a DMF job (Job ID in Data management; best one that failed) to read its "
                                 "status, errors and package URL too")
    doctor_cmd.set_defaults(func=doctor)
    init_cmd = commands.add_parser(
        "init", help="make an engagement folder: parameters, the notebooks of this version, git hygiene",
        description="Make DIR an engagement folder: params/ (the template, one file per scenario to fill "
                    "in, the sandbox's parameters), notebooks/ copied from this dwlib (dw run in DIR runs "
                    "them; notebooks/.dwlib-version says which version), a .gitignore for runs, .dw/ and "
                    "secrets, nbstripout as git's notebook filter (DIR becomes a git repository if it is "
                    "none) and a README of the next commands. DIR must be new or empty unless --force.",
        epilog="example: dw init contoso-uat --scenario existing-existing --scenario existing-new")
    init_cmd.add_argument("directory", type=Path, metavar="DIR", help="the engagement folder")
    init_cmd.add_argument("--scenario", action="append", choices=SCENARIOS, metavar="SCENARIO",
                          help=f"a scenario to prepare parameters for (repeatable; default all: "
                               f"{', '.join(SCENARIOS)})")
    init_cmd.add_argument("--force", action="store_true",
                          help="write into a non-empty DIR (files of the same name are replaced)")
    init_cmd.set_defaults(func=init)
    _review_parser(commands)
    _batch_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `dw` with `argv` (default: the command line); returns the exit status.

    main(["sandbox", "status", "--dir", ".dw/sandbox/new-new"])
    """
    words = _default_verb(_papermill_pairs(list(sys.argv[1:] if argv is None else argv)))
    try:
        if words[:1] == ["sandbox"] and words[1:2] in (["start"], ["serve"]):
            _control()  # without the sandbox extra their options cannot even be parsed
        args = build_parser().parse_args(words)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except DwError as exc:
        print(f"dw: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
