"""Prepare a local sandbox for a runbook after setup (`dw run <operations id> --sandbox`).

An operations runbook needs dual-write set up first, then the state it is for: the health check
needs maps running and some drift. A sandbox is prepared as a consultant would meet it: started
with the profile of a setup scenario, that setup runbook run to its end (the same notebook, the
same sandbox consultant for its gates), then the state seeded. Like the sandbox itself, this is
used only by the CLI and the tests; `dwlib` proper never imports it.

Example:
    >>> PREPARATIONS["health-check"].setup
    'new-data-new'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dwlib import execute
from dwlib.errors import DwError
from dwlib.notebooks import NOTEBOOKS
from dwlib.sandbox import drift, sync_errors


@dataclass(frozen=True)
class Preparation:
    """The setup scenario whose profile and runbook come first, then what is seeded."""

    setup: str
    seed: Callable[[Path], object]
    says: str


PREPARATIONS: dict[str, Preparation] = {
    "health-check": Preparation("new-data-new", lambda root: drift.seed(root, rows=3),
                                "maps running, then 3 USMF customers renamed in F&O outside dual-write"),
    "troubleshoot": Preparation("new-data-new", sync_errors.seed,
                                "Customers V3 (accounts) run again with an initial sync that fails (nl-NL "
                                "source data format)"),
}
SETUP_PARAMS = NOTEBOOKS.parent / "params"


def profile(scenario: str) -> str:
    """The sandbox profile a run of `scenario` starts from."""
    prep = PREPARATIONS.get(scenario)
    return prep.setup if prep else scenario


def prepare(scenario: str, root: Path, *, echo: Callable[[str], None] = print) -> None:
    """Bring the running sandbox of `root` into the state `scenario` is for (nothing for a setup)."""
    prep = PREPARATIONS.get(scenario)
    if prep is None:
        return
    echo(f"preparing the sandbox for {scenario}: {prep.setup} set up first, then {prep.says}")
    params = SETUP_PARAMS / f"sandbox-{prep.setup}.yaml"
    setup = execute.execute(prep.setup, params, {"sandbox.dir": str(root)}, root / "prepare-runs",
                            echo=lambda _line: None)
    if not setup.ok:
        why = setup.error or "a step failed"
        raise DwError(f"preparing the sandbox: the {prep.setup} runbook did not pass ({why}); its record: "
                      f"{setup.record}")
    prep.seed(root)
