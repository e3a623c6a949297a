"""Killed at any moment: a runbook whose kernel is killed (SIGKILL) in the middle of a writing step
converges when it is run again, to the end state of a run that was never interrupted.

The moment is exact, not timed: a sandbox trap (`dwlib.sandbox.traps`) kills the kernel's process
group (the kernel and the portal gate's consultant it started) when the nth request of the step
arrives, after the sandbox carried it out and before the kernel hears the answer. The second run
must pass with every map reconciled, hold as many rows in every table as an uninterrupted run of
the same profile (nothing created twice: no row, no company) and leave no round-trip customer.

Also here: `dw run` given SIGTERM or SIGINT stops cleanly and records the interrupted step, and a
run waits out a restart of its sandbox. (`dw batch` killed or interrupted: `test_batch.py`.)
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import psutil
import pytest
from run_helpers import (
    assert_finished_with_eligibility_warnings,
    assert_passed,
    await_step,
    dw_run,
    outage,
    round_trip_leftovers,
    run,
    sandbox_dir,
)

from dwlib.cli import INTERRUPTED
from dwlib.record import SCHEMA_FILE, load_record
from dwlib.sandbox import control
from dwlib.scenarios import SCENARIOS

ROWS = 200
KERNEL = "ipykernel_launcher"  # the command line of a runbook's kernel
# Small chunks, so a bulk step is killed with some chunks written and others not.
OPTIONS = {"options.batch_size": 50, "options.concurrency": 2}


@pytest.fixture(autouse=True)
def private_token_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@dataclass(frozen=True)
class Kill:
    """Where to kill: the step, and the nth request of it (method, path regex) that springs the trap."""

    scenario: str
    step: str
    method: str
    path: str
    nth: int = 1

    def trap(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "nth": self.nth, "at": "after",
                "signal": "SIGKILL", "process": KERNEL, "group": True}


KILLS = {
    "create-company": Kill("new-existing", "create-company", "POST", r"/finops/data/LegalEntities$", 2),
    "bootstrap-apply": Kill("existing-existing", "bootstrap-apply", "POST",
                            r"/accounts/Microsoft\.Dynamics\.CRM\.UpdateMultiple$", 2),
    "migrate-upsert": Kill("existing-existing", "migrate", "POST",
                           r"/accounts/Microsoft\.Dynamics\.CRM\.UpsertMultiple$", 2),
    "migrate-import": Kill("existing-existing", "migrate", "POST", r"ImportFromPackage$", 2),
    "table-maps": Kill("existing-existing", "table-maps", "POST", r"^/_portal/dualwrite/maps/[^/]+/run$", 2),
    "verify-round-trip": Kill("new-new", "verify", "POST", r"^/finops/data/CustomersV3$", 1),
}


@pytest.fixture(scope="module")
def uninterrupted(start_sandbox: Callable[..., dict[str, Any]],
                  tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, int]]:
    """Rows per table after an uninterrupted run of a scenario on a fresh sandbox (once each)."""
    found: dict[str, dict[str, int]] = {}

    def rows(scenario: str) -> dict[str, int]:
        if scenario not in found:
            connection = start_sandbox(scenario, rows=ROWS, fresh=True)
            assert_passed(run(scenario, connection, tmp_path_factory.mktemp("runs"), **OPTIONS))
            found[scenario] = control.table_rows(sandbox_dir(connection))
        return found[scenario]

    return rows


def test_every_kill_point_is_a_step_of_its_scenario() -> None:
    # Keyed on step ids, not positions: scenarios may gain or lose steps around them.
    for kill in KILLS.values():
        assert kill.step in SCENARIOS[kill.scenario].step_ids(), kill


@pytest.mark.parametrize("kill", list(KILLS.values()), ids=list(KILLS))
def test_a_kernel_killed_during_a_writing_step_converges_when_run_again(
        kill: Kill, start_sandbox: Callable[..., dict[str, Any]], tmp_path: Path,
        uninterrupted: Callable[[str], dict[str, int]]) -> None:
    expected = uninterrupted(kill.scenario)
    connection = start_sandbox(kill.scenario, rows=ROWS, fresh=True)
    root, out = sandbox_dir(connection), tmp_path / "runs"
    control.traps(connection, [kill.trap()])
    killed = run(kill.scenario, connection, out, **OPTIONS)
    (trap,) = control.traps(connection)
    assert trap["fired"] is not None and trap["fired"]["error"] is None, trap
    assert killed.data is not None and not killed.ok and "kernel died" in killed.error
    assert killed.data["current_step"] == kill.step  # the record says which step was running

    again = assert_passed(run(kill.scenario, connection, out, **OPTIONS))
    assert control.table_rows(root) == expected  # nothing created twice, nothing missing
    # The round trip's customer is gone from both sides, also when a round trip was killed.
    assert round_trip_leftovers(connection) == []
    if kill.step == "bootstrap-apply":
        _each_row_stamped_once(out, killed.data, again)


def _row_ids(path: Path) -> set[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["row_id"] for row in csv.DictReader(fh)}


def _applied(out: Path, data: dict[str, Any]) -> set[str]:
    """The rows a run's bootstrap-apply evidence says it stamped."""
    found = set()
    for csv_file in out.glob(f"*-{data['run_id'][:8]}-evidence/bootstrap-applied*.csv"):
        found |= _row_ids(csv_file)
    return found


def _each_row_stamped_once(out: Path, killed: dict[str, Any], again: dict[str, Any]) -> None:
    # The killed run's evidence lists the chunks it heard back about (maybe none: they were in
    # flight together); the second run stamped only what was left, and something was.
    first, second = _applied(out, killed), _applied(out, again)
    assert second and not first & second


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_dw_run_given_a_signal_stops_its_kernel_and_records_the_interrupted_step(
        sig: str, start_sandbox: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    connection = start_sandbox("existing-existing", rows=ROWS, fresh=True)
    out = tmp_path / "runs"
    proc = dw_run("existing-existing", connection, out, **OPTIONS)
    # The signal reaches dw run (not its kernel) as the second chunk of the bootstrap arrives.
    control.traps(connection, [{**KILLS["bootstrap-apply"].trap(), "at": "before", "signal": sig,
                                "process": None, "group": False, "pid": proc.pid}])
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == INTERRUPTED, output  # not 1, the code of a failed step
    (record_path,) = out.glob("*.json")
    record = load_record(record_path)
    jsonschema.validate(record, json.loads(SCHEMA_FILE.read_text()))
    assert record["status"] == "interrupted" and record["failed_step"] is None
    assert record["current_step"] == "bootstrap-apply"
    assert record["error"] == f"interrupted by {sig} while step bootstrap-apply was running"
    planned = SCENARIOS["existing-existing"].step_ids()
    assert [s["id"] for s in record["steps"]] == planned[:planned.index("bootstrap-apply")]
    assert record["manifest"]["notebook"]  # the partial notebook is written, and sealed
    notebook = json.loads(record_path.with_suffix(".ipynb").read_text())
    errors = [o for c in notebook["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert [e["ename"] for e in errors] == ["KeyboardInterrupt"]
    assert not psutil.pid_exists(record["process"]["pid"])  # the kernel is gone
    assert f"interrupted by {sig}" in output


def test_a_run_waits_out_a_sandbox_restart_in_the_middle_of_a_step_and_finishes(
        start_sandbox: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    connection = start_sandbox("existing-existing", rows=ROWS, fresh=True)
    out = tmp_path / "runs"
    proc = dw_run("existing-existing", connection, out, **OPTIONS)
    record = await_step(out, "migrate", proc)  # its DMF jobs and upserts under way
    outage(connection, proc)  # down until the run tried to connect a few times, then back
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    data = assert_finished_with_eligibility_warnings(load_record(record))
    assert data["http"]["retry_reasons"].get("ConnectError")  # it waited, within its retry budget
    verify = next(s for s in data["steps"] if s["id"] == "verify")
    assert all(r["status"] == "PASS" for r in verify["tables"]["reconciliation"])
