"""`dw init DIR`: an engagement folder a consultant works in.

What it holds: `params/` (the template, one parameters file per chosen scenario to fill in, and the
sandbox's parameters and batch plan, which run as-is), a copy of the runbook notebooks pinned to the installed
dwlib (`notebooks/.dwlib-version` says which; `dw run` in the folder runs this copy, see
`dwlib.packaged.notebook`), a `.gitignore` that keeps runs, sandbox state and secrets out of git,
nbstripout as the git filter for notebooks (the folder becomes a git repository if it is none), and
a README of the next commands.

Example:
    >>> print(scenario_params("scenario: existing-existing\\nlegal_entities: [USMF]\\n", "new-new"))
    scenario: new-new
    legal_entities: [USMF]
    <BLANKLINE>
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from dwlib.errors import DwError
from dwlib.packaged import VERSION_FILE, notebooks_dir, params_dir, version

GITIGNORE = """\
# Runs (executed notebooks, records, evidence CSVs with customer data), sandbox state, secrets.
runs/
.dw/
.ipynb_checkpoints/
.env
*.pem
*.key
*.pfx
*.p12
secrets/
"""

README = """\
# Dual-write engagement

Made by `dw init` with dwlib {version}. `notebooks/` holds the runbooks of that version (`dw run`
in this folder runs them); `params/` the parameters: fill in `params/<scenario>.yaml` (every key
is documented in `params/template.yaml`; secrets only as references such as `env:NAME`).

Next:

    dw demo                                          # the existing-existing runbook on a local sandbox
    dw run {first} -f params/sandbox-{first}.yaml --sandbox   # any scenario on a fresh sandbox
    dw run {first} -f params/{first}.yaml            # against your environments (a dry run until
                                                     # options.dry_run: false)
    dw review runs                                   # the runs so far; dw review show RUN_ID
    jupyter lab notebooks/{first}.ipynb              # interactively (pip install 'dwlib[lab]')

Executed notebooks, records and evidence go to `runs/`, sandbox state to `.dw/`: both are in
`.gitignore`. Notebooks are committed without outputs (nbstripout is the git filter). After
upgrading dwlib, `dw init --force .` refreshes `notebooks/` and `params/template.yaml`.
"""


def scenario_params(template: str, scenario: str) -> str:
    """The template's text with its `scenario:` set to `scenario`."""
    return re.sub(r"(?m)^scenario: .*$", f"scenario: {scenario}", template, count=1)


def _refuse_non_empty(target: Path, force: bool) -> None:
    if target.exists() and not target.is_dir():
        raise DwError(f"{target} is a file: give a new or empty directory for the engagement")
    if not force and target.is_dir() and any(target.iterdir()):
        raise DwError(f"{target} is not empty: give a new or empty directory, or --force to write the "
                      "engagement's files into it (files of the same name are replaced)")


def _copy_notebooks(target: Path) -> list[Path]:
    source = notebooks_dir()
    written = []
    for path in sorted(source.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        copy = target / "notebooks" / path.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        written.append(copy)
    (target / "notebooks" / VERSION_FILE).write_text(version() + "\n", encoding="utf-8")
    return written


def _write_params(target: Path, scenarios: Sequence[str]) -> list[Path]:
    source, folder = params_dir(), target / "params"
    folder.mkdir(parents=True, exist_ok=True)
    template = (source / "template.yaml").read_text(encoding="utf-8")
    written = [folder / "template.yaml"]
    written[0].write_text(template, encoding="utf-8")
    for sc in scenarios:
        own = folder / f"{sc}.yaml"
        own.write_text(scenario_params(template, sc), encoding="utf-8")
        written.append(own)
        sandbox = source / f"sandbox-{sc}.yaml"
        if sandbox.is_file():
            written.append(Path(shutil.copyfile(sandbox, folder / sandbox.name)))
    batch = source / "batch-sandbox.yaml"  # the example plan, when the folder has every file it runs
    plan = yaml.safe_load(batch.read_text(encoding="utf-8"))
    if {run["scenario"] for run in plan["runs"]} <= set(scenarios):
        written.append(Path(shutil.copyfile(batch, folder / batch.name)))
    return written


def _git(target: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(target), *args], capture_output=True, text=True, timeout=60)


def _nbstripout(target: Path, say: Callable[[str], None]) -> None:
    """nbstripout as the repository's notebook filter; the folder becomes a repository if needed."""
    if shutil.which("git") is None:
        say("git is not installed: .gitattributes names nbstripout; once git is there, run "
            "`nbstripout --install --attributes .gitattributes` in the folder")
        (target / ".gitattributes").write_text("*.ipynb filter=nbstripout\n*.ipynb diff=ipynb\n",
                                               encoding="utf-8")
        return
    top = _git(target, "rev-parse", "--show-toplevel")
    # The folder's own repository: one that merely encloses it is another project's.
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != target.resolve():
        done = _git(target, "init", "--quiet")
        if done.returncode != 0:
            raise DwError(f"git init in {target} failed: {done.stderr.strip()}")
        say(f"made {target} a git repository")
    done = subprocess.run([sys.executable, "-m", "nbstripout", "--install", "--attributes", ".gitattributes"],
                          cwd=target, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise DwError(f"configuring nbstripout in {target} failed: {(done.stderr or done.stdout).strip()}; "
                      "check that nbstripout is installed (pip install nbstripout)")


def init(target: Path, scenarios: Sequence[str], *, force: bool = False,
         say: Callable[[str], None] = print) -> list[Path]:
    """Make the engagement folder `target` for `scenarios`; returns the files written. `DwError`
    when `target` is not empty (unless `force`) or git refuses."""
    _refuse_non_empty(target, force)
    target.mkdir(parents=True, exist_ok=True)
    written = _write_params(target, scenarios) + _copy_notebooks(target)
    for name, text in ((".gitignore", GITIGNORE),
                       ("README.md", README.format(version=version(), first=scenarios[0]))):
        (target / name).write_text(text, encoding="utf-8")
        written.append(target / name)
    _nbstripout(target, say)
    return written
