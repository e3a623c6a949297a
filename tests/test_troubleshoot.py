"""The troubleshoot runbook: read-only findings matched to the known-error catalogue, debug mode for a
bounded time only when asked and confirmed (and always off again), and a support bundle that holds
no secret (every byte scanned for the client secret and the run's tokens).

The sandbox is prepared as `dw run troubleshoot --sandbox` prepares it (`dwlib.sandbox.prepare`): the
new-data-new setup runbook, then a documented initial-sync error seeded (`dwlib.sandbox.sync_errors`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dw_helpers import Consultant, sandbox_params, session_for
from run_helpers import assert_in_language, run, sandbox_dir, writes

from dwlib.clients.dualwrite import PortalAdmin
from dwlib.params import ParamsError, load_params
from dwlib.sandbox import control, prepare
from dwlib.steps.base import StepContext, StepError
from dwlib.steps.troubleshoot import TroubleshootDebug, TroubleshootFindings, trace_setting
from dwlib.vocab import StepStatus

SCENARIO = "troubleshoot"
ROWS = 100


@pytest.fixture(autouse=True)
def private_token_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="module")
def troubleshooting(start_sandbox: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """A sandbox prepared as `dw run troubleshoot --sandbox` prepares it (each test leaves debug off)."""
    connection = start_sandbox(prepare.profile(SCENARIO), rows=ROWS, fresh=True)
    prepare.prepare(SCENARIO, sandbox_dir(connection))
    return connection


def debug_modes(connection: dict[str, Any]) -> dict[int, str]:
    """IsDebugMode of every project configuration, as F&O OData reads it (RecId → No/Yes)."""
    consultant = Consultant(connection)
    try:
        rows = consultant.fo_rows("DualWriteProjectConfigurations?cross-company=true")
    finally:
        consultant.close()
    return {r["RecId"]: r["IsDebugMode"] for r in rows}


def test_findings_are_matched_to_known_errors_and_the_bundle_holds_no_secret(
        troubleshooting: dict[str, Any], tmp_path: Path) -> None:
    connection = troubleshooting
    root = sandbox_dir(connection)
    before = control.table_rows(root)
    execution = run(SCENARIO, connection, tmp_path / "runs", language="nl")  # the Dutch runbook
    data = execution.data
    assert data is not None and execution.ok, execution.summary()
    assert_in_language(data, "nl", execution.notebook)
    assert writes(data) == [] and control.table_rows(root) == before  # read-only
    steps = {s["id"]: s for s in data["steps"]}
    assert steps["troubleshoot-debug"]["status"] == StepStatus.ALREADY_DONE  # not asked: left alone
    findings = steps["troubleshoot-findings"]["tables"]["findings"]
    accounts = [f for f in findings if f["map"] == "Customers V3 (accounts)"]
    assert accounts and all(f["known_error"] and f["fix"] for f in accounts), findings
    # The seeded save Dataverse refused through live sync, read from the plug-in trace log.
    (traced,) = [f for f in findings if f["source"] == "live sync (plug-in trace log)"]
    assert traced["known_error"] == "finops-mandatory-field-live" and "Customer group" in traced["text"]
    assert steps["troubleshoot-findings"]["status"] == StepStatus.WARNING
    checks = {c["name"]: c for c in steps["troubleshoot-findings"]["checks"]}
    # no documented read: the step names where the consultant reads them, and the page
    assert "Catch-up errors tab" in checks["catch-up errors"]["evidence"]
    assert checks["catch-up errors"]["doc"].endswith("/errors-and-alerts")
    assert checks["plug-in trace log"]["status"] == StepStatus.PASSED
    assert checks["plug-in trace log"]["evidence"].startswith("Exception: 1 refused live-sync write")

    bundle = execution.record.parent / next(f for f in steps["troubleshoot-bundle"]["evidence_files"]
                                            if f.endswith(".zip"))
    with zipfile.ZipFile(bundle) as zf:
        names = zf.namelist()
        content = b"".join(zf.read(n) for n in names)
    assert "record.json" in names and "responses.json" in names
    assert any(n.startswith("evidence/") and n.endswith("troubleshoot-findings.csv") for n in names)
    secret = Path(connection["client_secret_file"]).read_text().strip()
    raw = bundle.read_bytes() + content
    assert secret and secret.encode() not in raw
    assert b"Bearer ey" not in raw and b"eyJ0eX" not in raw  # no access token (JWT) either


def test_debug_mode_asked_and_confirmed_is_on_for_its_minutes_and_off_again(
        troubleshooting: dict[str, Any], tmp_path: Path) -> None:
    connection = troubleshooting
    projects = debug_modes(connection)
    assert projects and set(projects.values()) == {"No"}
    asked = {"troubleshoot.debug_minutes": 0.02}  # 1.2 s: the window is the parameter, not a guess

    unconfirmed = run(SCENARIO, connection, tmp_path / "unconfirmed", **asked)
    assert unconfirmed.data is not None
    step = next(s for s in unconfirmed.data["steps"] if s["id"] == "troubleshoot-debug")
    assert step["status"] == StepStatus.WAITING and "personal data" in step["next_action"]
    assert writes(unconfirmed.data) == [] and set(debug_modes(connection).values()) == {"No"}

    confirmed = run(SCENARIO, connection, tmp_path / "confirmed", **asked,
                    **{"options.confirm_irreversible": True})
    data = confirmed.data
    assert data is not None and confirmed.ok, confirmed.summary()
    step = next(s for s in data["steps"] if s["id"] == "troubleshoot-debug")
    assert step["status"] == StepStatus.PASSED, step
    assert step["counts"] == {"switched_on": len(projects), "switched_off": len(projects)}
    patched = [w for w in writes(data) if "DualWriteProjectConfigurations" in w]
    assert len(patched) == len(writes(data)) == 2 * len(projects)  # on, then off: nothing else
    assert all(w.startswith("PATCH ") for w in patched)
    assert set(debug_modes(connection).values()) == {"No"}
    assert "tableName=DualWriteErrorLog" in step["next_action"]


def test_an_interrupted_window_still_switches_debug_mode_off(troubleshooting: dict[str, Any]) -> None:
    connection = troubleshooting
    session = session_for(connection)
    seen: list[set[str]] = []

    def interrupted(seconds: float) -> None:
        seen.append(set(debug_modes(connection).values()))
        raise KeyboardInterrupt

    admin = PortalAdmin(session.dataverse, session.finops, poll_s=1, sleep=interrupted)
    params = sandbox_params(connection, **{"troubleshoot.debug_minutes": 60})
    ctx = StepContext(params=params, session=session, admin=admin, evidence_dir=Path("unused"),
                      confirm=lambda _what: True)
    with pytest.raises(KeyboardInterrupt):
        TroubleshootDebug().execute(ctx)
    assert seen == [{"Yes"}]  # it was on while the window ran
    assert set(debug_modes(connection).values()) == {"No"}


@pytest.mark.parametrize("minutes", [61, -1])
def test_debug_minutes_outside_zero_to_sixty_are_refused(minutes: float) -> None:
    with pytest.raises(ParamsError, match=r"troubleshoot\.debug_minutes"):
        load_params({"scenario": SCENARIO}, {"troubleshoot.debug_minutes": minutes}, scenario=SCENARIO)


def test_with_tracing_off_the_findings_say_how_to_turn_it_on(troubleshooting: dict[str, Any]) -> None:
    connection = troubleshooting
    session = session_for(connection)
    dv = session.dataverse
    (org,) = dv.query("organizations", select=["organizationid", "plugintracelogsetting"])
    dv.update("organizations", org["organizationid"], {"plugintracelogsetting": 0})
    try:
        ctx = StepContext(params=sandbox_params(connection), session=session,
                          admin=PortalAdmin(session.dataverse, session.finops), evidence_dir=Path("unused"))
        finding = TroubleshootFindings().check(ctx)
        (check,) = [c for c in finding.checks if c.name == "plug-in trace log"]
        assert check.status == StepStatus.SKIPPED and "Exception" in check.fix
        assert not [f for f in finding.todo if f["source"].startswith("live sync")]
    finally:
        dv.update("organizations", org["organizationid"],
                  {"plugintracelogsetting": org["plugintracelogsetting"]})
        session.close()


def test_a_trace_setting_the_documentation_does_not_name_is_an_error() -> None:
    class Dataverse:
        def query(self, entity_set: str, **options: Any) -> list[dict[str, Any]]:
            return [{"plugintracelogsetting": 7}]

    class Session:
        dataverse = Dataverse()

    with pytest.raises(StepError, match=r"plugintracelogsetting is 7.*0 Off, 1 Exception, 2 All"):
        trace_setting(Session())
