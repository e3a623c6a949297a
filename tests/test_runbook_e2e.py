"""The real runbooks end to end: each scenario's notebook through papermill against a fresh sandbox.

Every test here runs real steps (`dwlib.steps`) headless, as `dw run` does (`dwlib.execute`), and
checks the outcome in the record and in the sandbox: all steps passed, verification reconciled;
a second run writes nothing; a run killed during the bootstrap converges when run again; and
`existing-existing` finishes under injected 429s, 5xx and dropped connections.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dw_helpers import Consultant

from dwlib import execute
from dwlib.record import RecordError, load_record
from dwlib.sandbox import control
from dwlib.scenarios import SCENARIOS
from dwlib.steps import STEPS

ROOT = Path(__file__).resolve().parents[1]
ROWS = 200
# A call that changes something: any write method, and POSTs other than sign-in and DMF reads.
READ_POSTS = ("/oauth2/", "/Microsoft.Dynamics.DataEntities.Get")
NO_COMPANY = "_msdyn_company_value eq null"


@pytest.fixture(autouse=True)
def private_token_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def run(scenario: str, connection: dict[str, Any], out: Path, **overrides: Any) -> execute.Execution:
    """The scenario's notebook against the sandbox of `connection`, as `dw run` executes it."""
    params = ROOT / "params" / f"sandbox-{scenario}.yaml"
    root = str(Path(connection["ca_bundle"]).parent)
    return execute.execute(scenario, params, {"sandbox.dir": root, **overrides}, out)


def assert_passed(execution: execute.Execution) -> dict[str, Any]:
    """Every step passed or was already done, and the reconciliation holds; the record."""
    data = execution.data
    assert data is not None, execution.error
    assert execution.ok, execution.summary()
    verify = next(s for s in data["steps"] if s["id"] == "verify")
    rows = verify["tables"]["reconciliation"]
    assert rows and all(r["status"] == "PASS" for r in rows), rows
    return data


def writes(data: dict[str, Any]) -> list[str]:
    """The calls of a run that change something (see READ_POSTS)."""
    return [f"{c['method']} {c['url']}" for s in data["steps"] for c in s["calls"]
            if c["method"] in ("PATCH", "PUT", "DELETE")
            or (c["method"] == "POST" and not any(r in c["url"] for r in READ_POSTS))]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_each_notebook_sets_up_a_fresh_sandbox_and_reconciles(
        scenario: str, start_sandbox: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    connection = start_sandbox(scenario, rows=ROWS, fresh=True)
    data = assert_passed(run(scenario, connection, tmp_path / "runs"))
    assert [s["id"] for s in data["steps"]] == SCENARIOS[scenario].step_ids()


def test_a_finished_runbook_run_again_is_already_done_and_writes_nothing(
        start_sandbox: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    connection = start_sandbox("existing-existing", rows=ROWS, fresh=True)
    assert_passed(run("existing-existing", connection, tmp_path / "runs"))
    root = Path(connection["ca_bundle"]).parent
    before = control.table_rows(root)
    again = run("existing-existing", connection, tmp_path / "runs")
    data = assert_passed(again)
    statuses = {s["id"]: s["status"] for s in data["steps"]}
    # Steps that only read (preflight, plan, bootstrap-simulate) report what they found instead;
    # plan and verify warn again about the Dataverse rows dual-write will not pick up.
    expected = {ref.id: "passed" if STEPS[ref.step].read_only else "already_done"
                for ref in SCENARIOS["existing-existing"].steps} | {"plan": "warning", "verify": "warning"}
    assert statuses == expected
    assert writes(data) == []
    assert control.table_rows(root) == before


def test_a_company_finance_and_operations_lacks_stops_the_run_at_preflight_before_any_write(
        start_sandbox: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    # ZZZ is a valid company code, so the parameters pass; only finance and operations can say it
    # has no such legal entity, and preflight, the first step, says so before anything is written.
    connection = start_sandbox("existing-existing", rows=ROWS, fresh=True)
    before = control.table_rows(Path(connection["ca_bundle"]).parent)
    execution = run("existing-existing", connection, tmp_path / "runs",
                    legal_entities=["USMF", "GBSI", "DEMF", "FRRT", "ZZZ"])
    data = execution.data
    assert data is not None and data["failed_step"] == "preflight" and not execution.ok
    (preflight,) = data["steps"]
    check = next(c for c in preflight["checks"] if c["name"] == "legal entities in F&O")
    assert check["status"] == "failed" and "not in F&O: ZZZ" in check["evidence"]
    assert writes(data) == [] and control.table_rows(Path(connection["ca_bundle"]).parent) == before


def row_ids(evidence: Path) -> set[str]:
    """The rows an evidence CSV of the bootstrap lists."""
    with evidence.open(newline="", encoding="utf-8") as fh:
        return {row["row_id"] for row in csv.DictReader(fh)}


def rows_of(consultant: Consultant, table: str, columns: str, where: str = "") -> list[dict[str, Any]]:
    """Rows of a Dataverse table (one page: up to 5,000), optionally filtered."""
    return consultant.dv_rows(f"{table}?$select={columns}" + (f"&$filter={where}" if where else ""))


# The integration key of each table besides its company (dual-write matches rows by it).
KEYS = {"accounts": ("accountid", "accountnumber"), "contacts": ("contactid", "msdyn_contactpersonid")}
BATCH, CONCURRENCY = 50, 2


def test_a_run_killed_during_bootstrap_apply_converges_when_run_again(
        start_sandbox: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    connection = start_sandbox("existing-existing", rows=1500, fresh=True)
    consultant = Consultant(connection)
    out = tmp_path / "runs"
    params = ROOT / "params" / "sandbox-existing-existing.yaml"
    root = str(Path(connection["ca_bundle"]).parent)
    try:
        before = {t: {r[pk] for r in rows_of(consultant, t, pk)} for t, (pk, _) in KEYS.items()}
        dw = str(Path(sys.executable).with_name("dw"))
        command = [dw, "run", "existing-existing", "-f", str(params), "-p", f"sandbox.dir={root}",
                   "-p", f"options.batch_size={BATCH}", "-p", f"options.concurrency={CONCURRENCY}",
                   "--out", str(out)]
        proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            applied = _await_partial_bootstrap(out, connection, proc)
        finally:
            # Like a crash: the kernel (Jupyter starts it in a session of its own) and dw run at once.
            for pid in [*descendants(proc.pid), proc.pid]:
                os.kill(pid, signal.SIGKILL)
            proc.wait()
        control.admin(connection, "faults", "")
        stamped_first = row_ids(applied)
        (first,) = out.glob("*.json")
        killed = load_record(first)
        assert killed["current_step"] == "bootstrap-apply" and killed["ended"] is None
        left = sum(len(rows_of(consultant, t, pk, NO_COMPANY)) for t, (pk, _) in KEYS.items())
        assert 0 < left < sum(map(len, before.values()))  # killed partway

        data = assert_passed(run("existing-existing", connection, out))
        for table, (pk, key) in KEYS.items():
            rows = rows_of(consultant, table, f"{pk},{key},_msdyn_company_value")
            assert before[table] <= {r[pk] for r in rows}  # nothing lost
            assert all(r["_msdyn_company_value"] for r in rows)  # every row has its company
            keys = [(r[key], r["_msdyn_company_value"]) for r in rows if r[key]]
            assert len(keys) == len(set(keys))  # nothing doubled (migration adds F&O's customers)
        second = next(s for s in data["steps"] if s["id"] == "bootstrap-apply")
        stamped_again = {i for f in second["evidence_files"] if f.endswith("applied.csv")
                         for i in row_ids(out / f)}  # evidence paths are relative to the record
        assert stamped_first and stamped_again and not stamped_first & stamped_again  # each row once
        # Rows whose request was in flight at the kill were stamped without a line in the first CSV.
        unlisted = (before["accounts"] | before["contacts"]) - stamped_first - stamped_again
        assert len(unlisted) <= BATCH * CONCURRENCY
    finally:
        consultant.close()


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (Linux /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _await_partial_bootstrap(out: Path, connection: dict[str, Any], proc: subprocess.Popen[bytes]) -> Path:
    """Wait until bootstrap-apply is under way (slowed by latency) and has stamped some rows."""
    deadline = time.monotonic() + 600
    slowed = False
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before the bootstrap could be interrupted"
        for path in out.glob("*.json"):
            try:
                current = load_record(path)["current_step"]
            except RecordError:
                continue
            if current == "bootstrap-apply" and not slowed:
                control.admin(connection, "faults", "latency=300ms")
                slowed = True
            applied = next(out.glob("*-evidence/bootstrap-applied.csv"), None)
            if slowed and applied and len(applied.read_text().splitlines()) > 100:
                return applied
        time.sleep(0.1)
    raise AssertionError("bootstrap-apply did not start within 10 minutes")


def test_existing_existing_finishes_and_reconciles_under_injected_faults(
        start_sandbox: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    # The 5xx a service sends for a passing condition (503, 504): a 500 is not retried by design.
    connection = start_sandbox("existing-existing", rows=500, fresh=True,
                               faults="429=0.05,503=0.02,504=0.02,drop=0.02,seed=11")
    data = assert_passed(run("existing-existing", connection, tmp_path / "runs"))
    reasons = data["http"]["retry_reasons"]
    assert reasons.get("429") and (reasons.get("503") or reasons.get("504"))  # the faults did happen
    http = data["http"]
    assert 0 < http["throttled_wait_s"] < http["wait_s"]  # the record tells throttling from other waits
