"""The operations runbooks (refresh-relink, maintenance, add-legal-entity) against sandboxes
prepared for them: each passes headless, a re-run converges, and the failure paths say why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from run_helpers import ROOT, assert_in_language, assert_passed, run, sandbox_dir

from dwlib.clients.dualwrite import PortalAdmin
from dwlib.runbook import Runbook
from dwlib.sandbox import consultant, control, prepare
from dwlib.steps.maintenance import PAUSED_AT, age_check, size_check
from dwlib.vocab import StepStatus

ROWS = 30
OK = ("passed", "already_done")


def _statuses(data: dict[str, Any]) -> dict[str, str]:
    return {s["id"]: s["status"] for s in data["steps"]}


def _open(scenario: str, connection: dict[str, Any], tmp_path: Path, **overrides: Any) -> Runbook:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return Runbook.open(ROOT / "params" / f"sandbox-{scenario}.yaml",
                        {"sandbox.dir": str(sandbox_dir(connection)), **overrides},
                        record_path=tmp_path / "run.json")


@pytest.mark.parametrize("scenario", ["refresh-relink", "maintenance", "add-legal-entity"])
def test_an_operations_runbook_passes_on_its_sandbox_and_a_rerun_converges(
        scenario: str, start_sandbox: Any, tmp_path: Path) -> None:
    connection = start_sandbox(scenario, rows=ROWS, fresh=True)
    # In Dutch first (the portal instructions of its gates translated), then again in English.
    dutch = run(scenario, connection, tmp_path / "first", language="nl")
    first = assert_in_language(assert_passed(dutch), "nl", dutch.notebook)
    english = run(scenario, connection, tmp_path / "again")
    again = assert_in_language(assert_passed(english), "en", english.notebook)
    assert set(_statuses(first).values()) <= set(OK)
    assert set(_statuses(again).values()) <= set(OK)
    # The second run finds the work done (a maintenance run pauses and resumes again: its job).
    if scenario == "refresh-relink":
        assert _statuses(first)["reset-link"] == "passed"
        assert _statuses(again)["reset-link"] == "already_done"
        assert _statuses(again)["stop-all-maps"] == "already_done"
    if scenario == "add-legal-entity":
        assert _statuses(again)["add-company"] == "already_done"
        verify = next(s for s in first["steps"] if s["id"] == "verify")
        assert {r["company"] for r in verify["tables"]["reconciliation"]} - {"(global)"} == {"DEMF"}


def _in_finops(rb: Runbook, account_number: str) -> str:
    """The F&O name of the customer `account_number`."""
    assert rb.session is not None
    (customer,) = rb.session.finops.query("CustomersV3", select=["OrganizationName"], cross_company=True,
                                          filter=f"CustomerAccount eq '{account_number}'")
    return str(customer["OrganizationName"])


def test_writes_made_during_the_maintenance_queue_and_arrive_after_the_resume(
        start_sandbox: Any, tmp_path: Path) -> None:
    connection = start_sandbox("maintenance", rows=ROWS, fresh=True)
    # Before the window: one run pauses the maps; users go on working.
    with _open("maintenance", connection, tmp_path / "before") as rb:
        for step in ("map-states", "pause-maps"):
            assert rb.run(step).status == StepStatus.PASSED
        dv = rb.session.dataverse
        account = next(iter(dv.query("accounts", select=["accountid", "accountnumber", "name"], top=1)))
        dv.update("accounts", account["accountid"], {"name": "Renamed during maintenance"})
        assert _in_finops(rb, account["accountnumber"]) == account["name"]  # queued, not written
    # After the window: another run finds the maps paused, knows since when, and resumes them.
    with _open("maintenance", connection, tmp_path / "after") as rb:
        assert rb.run("map-states").status == StepStatus.PASSED
        assert rb.run("pause-maps").status == StepStatus.ALREADY_DONE
        over = rb.run("maintenance-over")
        assert over.status == StepStatus.PASSED
        (duration,) = [c for c in over.checks if c.name == "pause duration"]
        assert duration.evidence.startswith("paused for 0.0")
        assert rb.run("resume-maps").status == StepStatus.PASSED
        assert _in_finops(rb, account["accountnumber"]) == "Renamed during maintenance"
        assert rb.run("verify").status == StepStatus.PASSED


def test_a_pause_past_its_limit_is_reported_and_the_maps_are_still_resumed(
        start_sandbox: Any, tmp_path: Path) -> None:
    connection = start_sandbox("maintenance", rows=ROWS, fresh=True)
    with _open("maintenance", connection, tmp_path) as rb:
        rb.run("map-states")
        rb.run("pause-maps")
        # The pause started two days ago (the documented maximum is one day).
        rb.run_state[PAUSED_AT] = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        over = rb.run("maintenance-over")
        assert over.status == StepStatus.WARNING
        (past,) = [c for c in over.checks if c.name == "pause duration"]
        assert past.status == StepStatus.FAILED and "past the documented maximum of 24 h" in past.evidence
        resumed = rb.run("resume-maps")
        assert resumed.status == StepStatus.WARNING
        assert all(c.status == StepStatus.PASSED for c in resumed.checks if c.name.startswith("Customers"))


def test_the_limits_of_a_pause_warn_before_they_are_reached() -> None:
    assert age_check(0.8 * 86400, 86400).status == StepStatus.WARNING
    assert age_check(0.5 * 86400, 86400).status == StepStatus.PASSED
    assert size_check(2 * 1024**3, 1024**3).status == StepStatus.FAILED
    assert size_check(900 * 1024**2, 1024**3).status == StepStatus.WARNING
    assert size_check(1000, 1024**3).status == StepStatus.PASSED


def test_a_refresh_that_cannot_be_relinked_stops_with_the_reason(start_sandbox: Any, tmp_path: Path) -> None:
    connection = start_sandbox("refresh-relink", rows=ROWS, fresh=True)
    root = sandbox_dir(connection)
    # Moved without a refresh: the Power Platform integration still names the old F&O URL, so
    # Reset link (which restores the connection from it) would connect the wrong environment.
    control.stop(root)
    moved = control.start(root=root, move_port=True).connection
    execution = run("refresh-relink", moved, tmp_path / "run")
    assert execution.data is not None and not execution.ok
    statuses = _statuses(execution.data)
    assert statuses["detect-refresh"] == "failed" and statuses.get("reset-link") != "passed"
    detect = next(s for s in execution.data["steps"] if s["id"] == "detect-refresh")
    assert detect["summary"].startswith("the refresh cannot be relinked: Dataverse is integrated with")
    assert "Power Platform integration" in detect["checks"][0]["fix"]


def test_refresh_from_another_sandbox_copies_its_stale_configuration(
        start_sandbox: Any, tmp_path: Path) -> None:
    production = sandbox_dir(start_sandbox("maintenance", rows=ROWS, fresh=True))
    target = sandbox_dir(start_sandbox("existing-new", rows=ROWS, fresh=True))
    with pytest.raises(Exception, match="is running: stop it first"):
        prepare.refresh(target, production)
    control.stop(production)
    control.stop(target)
    prepare.refresh(target, production)
    connection = control.start(root=target).connection
    with _open("refresh-relink", connection, tmp_path) as rb:
        detect = rb.run("detect-refresh")
    assert detect.status == StepStatus.PASSED and detect.summary.startswith("refreshed:")
    assert "name another Dataverse environment" in detect.checks[-1].evidence


class _Reads:
    """A client that answers `query` from canned rows (no HTTP)."""

    def __init__(self, url: str, rows: dict[str, list[dict[str, Any]]]) -> None:
        self.environment_url, self.rows = url, rows

    def query(self, entity_set: str, **_options: Any) -> Any:
        return iter(self.rows.get(entity_set, []))


def test_the_reset_gate_says_what_to_click_and_the_sandbox_consultant_can_play_it() -> None:
    shown: list[Any] = []
    dataverse = _Reads("https://dv.example", {"msdyn_dualwriteentitymaps": [{"msdyn_name": "m"}]})
    finops = _Reads("https://fo.example", {"DualWriteProjectConfigurations": [
        {"ProjectName": "DWM-1", "InternalEntityName": "E", "ExternalEnvironmentURL": "https://dv.example/"}]})
    admin = PortalAdmin(dataverse, finops, notify=shown.append, timeout_s=0, poll_s=0)  # type: ignore[arg-type]
    admin.reset_link(["usmf", "gbsi"])
    (instruction,) = shown
    assert "Acknowledge Reset" in " ".join(instruction.steps)
    assert consultant.actions({"title": instruction.title, "steps": instruction.steps}) == [
        ("POST", "/dualwrite/reset", {"legal_entities": ["USMF", "GBSI"]}),
        ("POST", "/dualwrite/apply-solution", None)]
    # A project of another Dataverse environment is what stays to clean up.
    finops.rows["DualWriteProjectConfigurations"][0]["ExternalEnvironmentURL"] = "https://prod.example"
    assert admin.stale_configuration() == ["DWM-1 (E) names https://prod.example"]
