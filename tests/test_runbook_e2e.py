"""The real runbooks end to end: each scenario's notebook through papermill against a fresh sandbox.

Every test here runs real steps (`dwlib.steps`) headless, as `dw run` does (`dwlib.execute`), and
checks the outcome in the record and in the sandbox: all steps passed, verification reconciled;
a second run writes nothing; and `existing-existing` finishes under injected 429s, 5xx and dropped
connections. Runs killed in the middle of a step are `test_kill.py`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from run_helpers import assert_in_language, assert_passed, run, writes

from dwlib import text
from dwlib.sandbox import control
from dwlib.scenarios import SCENARIOS
from dwlib.steps import STEPS

ROWS = 200
LANGUAGES = ["en", "nl"]
GUIDE_EN = "https://learn.microsoft.com/en-us/dynamics365/fin-ops-core/dev-itpro/data-entities/dual-write/connection-setup"


@pytest.fixture(autouse=True)
def private_token_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("scenario", [s for s, sc in SCENARIOS.items() if sc.kind == "setup"])
def test_each_notebook_sets_up_a_fresh_sandbox_and_reconciles(
        scenario: str, language: str, start_sandbox: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    connection = start_sandbox(scenario, rows=ROWS, fresh=True)
    execution = run(scenario, connection, tmp_path / "runs", language=language)
    data = assert_passed(execution)
    assert [s["id"] for s in data["steps"]] == SCENARIOS[scenario].step_ids()
    # The notebook of the run's language ran: its narrative, its step titles and its portal
    # instructions, each of them translated (none left in English), while the consultant acted.
    cells = nbformat.read(execution.notebook, as_version=4).cells
    assert f"Microsoft's [{text.title(GUIDE_EN)}]" in cells[0].source if language == "en" else \
        "Dit runbook volgt het scenario" in cells[0].source
    assert_in_language(data, language, execution.notebook)


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
