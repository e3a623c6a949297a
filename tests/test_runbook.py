"""The runbook engine with fake steps (`runbook_fakes`) against a running sandbox.

The fakes replace the registered steps for the duration of a test, so these tests pin down the
engine alone: validation before any call, timing and calls, the record written after every step,
failures turned into results with remediation, stopping headless, refusing after a failure
interactively, confirmations, dry runs, gates with the sandbox consultant, and the display.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import runbook_fakes
from dw_helpers import Consultant

from dwlib.clients.dualwrite import GatewayAdmin, PortalAdmin
from dwlib.params import ParamsError
from dwlib.record import load_record
from dwlib.render import RESULT_MIME
from dwlib.report import steps_table_html
from dwlib.runbook import Runbook, RunbookError, RunStopped, is_interactive
from dwlib.scenarios import scenario
from dwlib.steps import StepStatus
from dwlib.ui.confirm import offer_confirmation

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = "existing-existing"
PARAMS = ROOT / "params" / f"sandbox-{SCENARIO}.yaml"


@pytest.fixture(autouse=True)
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Fake steps installed, their state in tmp_path, msal's cache out of the home directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    state = tmp_path / "fakes.json"
    monkeypatch.setenv("DW_FAKES_STATE", str(state))
    monkeypatch.setenv("DW_FAKES_RECORD", str(tmp_path / "run.json"))
    with runbook_fakes.installed():
        yield state


def behave(monkeypatch: pytest.MonkeyPatch, **behaviours: str) -> None:
    monkeypatch.setenv("DW_FAKES", json.dumps({k.replace("_", "-"): v for k, v in behaviours.items()}))


def open_rb(connection: dict[str, Any], tmp_path: Path, overrides: dict[str, Any] | None = None,
            **kwargs: Any) -> Runbook:
    root = str(Path(connection["ca_bundle"]).parent)
    return Runbook.open(PARAMS, {"sandbox.dir": root, **(overrides or {})},
                        record_path=tmp_path / "run.json", **kwargs)


def test_bad_parameters_fail_before_anything_is_written_or_called(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenario: existing-existing\nenvironments:\n  tenant_id: t\n"
                   "  dataverse_url: https://127.0.0.1:9/dv\n  finops_url: https://127.0.0.1:9/fo\n"
                   "auth: {client_id: x, client_secret: 'env:NOPE'}\noptions: {dryrun: true}\n"
                   "legal_entities: [USMF]\n")
    with pytest.raises(ParamsError) as exc:
        Runbook.open(bad, record_path=tmp_path / "run.json")
    assert exc.value.problems == [("options.dryrun (line 7)", "unknown key; did you mean 'dry_run'?")]
    assert not (tmp_path / "run.json").exists()


def test_a_full_run_records_every_step_with_timing_calls_and_evidence(
        sandbox: dict[str, Any], tmp_path: Path) -> None:
    with open_rb(sandbox, tmp_path, interactive=False) as rb:
        assert not rb.dry_run  # sandbox parameters: a real run unless they say otherwise
        results = [rb.run(step_id) for step_id in rb.step_ids]
        summary = rb.summary()
    assert [r.status for r in results] == [StepStatus.PASSED] * len(results)
    record = load_record(tmp_path / "run.json")
    assert record["status"] == "passed" and record["ended"] and record["current_step"] is None
    assert [s["id"] for s in record["steps"]] == scenario(SCENARIO).step_ids() == record["steps_planned"]
    for step, result in zip(record["steps"], results, strict=True):
        assert any(c["url"].endswith("/WhoAmI") for c in step["calls"])  # the fake's check
        assert all(c["method"] == "GET" or "/oauth2/" in c["url"] for c in step["calls"])  # + sign-in
        assert step["duration_s"] == result.duration_s > 0 and step["started"].endswith("Z")
    assert (tmp_path / "run-evidence" / "preflight.csv").is_file()  # evidence beside the record
    assert record["http"]["calls"] >= sum(len(s["calls"]) for s in record["steps"])
    assert record["environments"]["observed"]["organization_id"]  # WhoAmI after the first step
    assert record["parameters"]["auth"]["client_secret"].startswith("file:")
    secret = Path(sandbox["client_secret_file"]).read_text().strip()
    assert secret not in (tmp_path / "run.json").read_text()
    assert [r["step"] for r in summary.rows] == rb.step_ids
    assert {r["status"] for r in summary.rows} == {"passed"}


def test_a_second_run_finds_every_step_already_done(sandbox: dict[str, Any], tmp_path: Path) -> None:
    for _ in range(2):
        with open_rb(sandbox, tmp_path, interactive=False) as rb:
            statuses = {rb.run(step_id).status for step_id in rb.step_ids}
    assert statuses == {StepStatus.ALREADY_DONE}


def test_a_raising_step_fails_with_remediation_and_stops_the_run_headless(
        sandbox: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    behave(monkeypatch, plan="raise")
    with open_rb(sandbox, tmp_path, interactive=False) as rb:
        ids = rb.step_ids
        for step_id in ids[:ids.index("plan")]:
            rb.run(step_id)
        with pytest.raises(RunStopped, match=r"step plan failed: RuntimeError: .*re-run the runbook"):
            rb.run("plan")
        with pytest.raises(RunbookError, match=r"step plan failed.*force=True"):
            rb.run("migrate")
        assert rb.run("migrate", force=True).status == StepStatus.PASSED
    text = (tmp_path / "run.json").read_text()
    record = json.loads(text)
    assert record["status"] == "failed" and record["failed_step"] == "plan"
    plan = next(s for s in record["steps"] if s["id"] == "plan")
    assert plan["status"] == "failed" and plan["error"] == f"RuntimeError: {runbook_fakes.KNOWN_ERROR}"
    assert [r["id"] for r in plan["remediation"]] == ["too-many-legal-entities"]
    assert plan["calls"]  # the check's call before act raised
    assert "Traceback" not in text and "File \"" not in text


def test_interactively_a_failure_is_shown_and_later_steps_refuse(
        sandbox: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    behave(monkeypatch, preflight="fail")
    with open_rb(sandbox, tmp_path, interactive=True) as rb:
        result = rb.run("preflight")
        assert result.status == StepStatus.FAILED and result.checks[0].fix == "add it"
        with pytest.raises(RunbookError, match=r"step preflight failed: verification failed\. Fix it"):
            rb.run("power-platform-integration")
        monkeypatch.setenv("DW_FAKES", "{}")  # the consultant fixed it: the same step runs again
        assert rb.run("preflight").status.ok
        assert rb.run("power-platform-integration").status == StepStatus.PASSED


def test_the_summary_is_the_reports_table_said_once(
        sandbox: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with open_rb(sandbox, tmp_path, interactive=True) as rb:
        rb.run("preflight")
        capsys.readouterr()
        summary = rb.summary()
        shown = summary._repr_html_()
    assert capsys.readouterr().out == ""  # no shell command to copy: sealing is the notebook's Seal button
    record = load_record(tmp_path / "run.json")
    assert steps_table_html(record) in shown  # one table, the HTML report's
    assert 'data-status="passed"' in shown and "background:#1a7f37" in shown  # coloured statuses
    assert "text-align:left" in shown and record["steps"][0]["summary"] in shown  # whole, left-aligned
    assert str(summary).splitlines()[1].split()[:2] == ["preflight", "passed"]


def test_irreversible_steps_wait_for_confirmation(
        sandbox: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    behave(monkeypatch, bootstrap_apply="irreversible")
    with open_rb(sandbox, tmp_path, {"options.confirm_irreversible": False}, interactive=True) as rb:
        waiting = rb.run("bootstrap-apply")
        assert waiting.status == StepStatus.WAITING
        assert 'rb.run(\'bootstrap-apply\', confirm=True)' in waiting.next_action
        assert rb.run("bootstrap-apply", confirm=True).status == StepStatus.PASSED


def test_interactively_the_confirm_button_runs_the_waiting_step(
        sandbox: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    behave(monkeypatch, bootstrap_apply="irreversible")
    shown: list[Any] = []
    for where in ("dwlib.ui.confirm.display", "IPython.display.display"):
        monkeypatch.setattr(where, lambda *objs, **kw: shown.extend(objs))
    with open_rb(sandbox, tmp_path, {"options.confirm_irreversible": False}, interactive=True) as rb:
        offer_confirmation(rb)  # what the notebook's board cell (ui.step_board) subscribes
        assert rb.run("bootstrap-apply").status == StepStatus.WAITING
        (box,) = [o for o in shown if hasattr(o, "children")]
        assert rb.results["bootstrap-apply"].status == StepStatus.WAITING
        box.children[1].click()  # the consultant presses Confirm
        assert rb.results["bootstrap-apply"].status == StepStatus.PASSED
        assert box.children[1].disabled
    with open_rb(sandbox, tmp_path, {"options.confirm_irreversible": False}, interactive=False) as rb, \
            pytest.raises(RunStopped, match="step bootstrap-simulate waiting: needs confirmation"):
        behave(monkeypatch, bootstrap_simulate="irreversible")
        rb.run("bootstrap-simulate")


def test_dry_run_changes_nothing(sandbox: dict[str, Any], tmp_path: Path, fakes: Path) -> None:
    with open_rb(sandbox, tmp_path, {"options.dry_run": True}, interactive=False) as rb:
        assert rb.dry_run
        result = rb.run("preflight")
    assert result.status == StepStatus.SKIPPED and result.summary == "dry run — would: do preflight"
    assert not fakes.exists()  # act never ran
    assert load_record(tmp_path / "run.json")["dry_run"] is True


def test_the_record_names_the_step_in_progress(
        sandbox: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fakes: Path) -> None:
    behave(monkeypatch, plan="observe")
    with open_rb(sandbox, tmp_path, interactive=False) as rb:
        rb.run("plan")
    assert json.loads(fakes.read_text())["seen_current_step"] == "plan"
    assert load_record(tmp_path / "run.json")["current_step"] is None


def test_unknown_step_and_wrong_scenario_are_refused(sandbox: dict[str, Any], tmp_path: Path) -> None:
    refused = "'create-company' is not a step of existing-existing: use one of preflight, power-platform"
    with open_rb(sandbox, tmp_path, interactive=False) as rb, pytest.raises(RunbookError, match=refused):
        rb.run("create-company")
    with pytest.raises(ParamsError, match="the parameters are for existing-existing, not new-new"):
        open_rb(sandbox, tmp_path, scenario="new-new")


def test_from_notebook_takes_a_file_or_the_keys_papermill_injects(
        sandbox: dict[str, Any], tmp_path: Path) -> None:
    import yaml

    keys = yaml.safe_load(PARAMS.read_text())
    keys["sandbox"]["dir"] = str(Path(sandbox["ca_bundle"]).parent)
    namespace: dict[str, Any] = {"params_file": None, "overrides": {"options.dry_run": True},
                                 "record_path": str(tmp_path / "run.json"), "interactive": False,
                                 "run_id": "0123abcd-feed", **keys}
    with Runbook.from_notebook(namespace, scenario=SCENARIO) as rb:
        assert rb.dry_run and rb.record.data["run_id"] == "0123abcd-feed"
        assert rb.params.legal_entities == ["USMF", "GBSI", "DEMF", "FRRT"]
    with pytest.raises(ParamsError, match="not both: scenario, legal_entities"):
        Runbook.from_notebook({**namespace, "params_file": str(PARAMS)}, scenario=SCENARIO)
    with pytest.raises(ParamsError, match="no parameters: set params_file"):
        Runbook.from_notebook({"params_file": None, "overrides": {}}, scenario=SCENARIO)


def test_results_display_as_html_and_text(sandbox: dict[str, Any], tmp_path: Path) -> None:
    with open_rb(sandbox, tmp_path, interactive=False) as rb:
        result = rb.run("preflight")
    bundle = result._repr_mimebundle_()
    html = bundle["text/html"]
    embedded = bundle[RESULT_MIME]
    assert embedded["result"] == result.to_dict() and embedded["result"]["id"] == "preflight"
    assert embedded["run"]["run_id"] == rb.record.data["run_id"] and "steps" not in embedded["run"]
    assert 'data-status="passed"' in html and ">PASSED</span>" in html
    assert "<table" in html and "<td>present</td>" in html  # checks
    assert "dataframe" in html and ">b</td>" in html  # the table, rendered by pandas
    text = str(result)
    assert text.startswith("[PASSED] preflight: Fake preflight (")
    assert "✓ thing: present" in text and "counts: rows=3" in text and "map  rows" in text


@pytest.fixture
def fresh_existing_new(start_sandbox: Any) -> dict[str, Any]:
    return start_sandbox("existing-new", rows=12, fresh=True)


def test_a_gate_is_recorded_and_played_by_the_gate_command(
        fresh_existing_new: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    behave(monkeypatch, power_platform_integration="gate")
    path = ROOT / "params" / "sandbox-existing-new.yaml"
    root = str(Path(fresh_existing_new["ca_bundle"]).parent)
    with Runbook.open(path, {"sandbox.dir": root}, record_path=tmp_path / "run.json",
                      interactive=False) as rb:
        result = rb.run("power-platform-integration")
    assert result.status == StepStatus.PASSED, str(result)  # verified through Dataverse by the admin
    record = load_record(tmp_path / "run.json")
    gates = record["steps"][0]["gates"]
    assert [g["title"] for g in gates] == ["Set up the Power Platform integration (LCS)"]
    assert gates[0]["steps"] and gates[0]["verify"] and record["waiting"] is None
    consultant = Consultant(fresh_existing_new)
    try:
        assert consultant.portal("GET", "/dualwrite/connection") is None  # the integration, nothing more
    finally:
        consultant.close()


def test_a_gate_nobody_answers_fails_saying_what_is_missing(
        fresh_existing_new: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    behave(monkeypatch, power_platform_integration="gate")
    path = ROOT / "params" / "sandbox-existing-new.yaml"
    root = str(Path(fresh_existing_new["ca_bundle"]).parent)
    overrides = {"sandbox.dir": root, "options.gates": "show", "options.gate_timeout_s": 0.5}
    with Runbook.open(path, overrides, record_path=tmp_path / "run.json", interactive=True) as rb:
        result = rb.run("power-platform-integration")
    assert result.status == StepStatus.FAILED
    assert "not verified after 0 s; still missing: RetrieveFinanceAndOperationsIntegrationDetails" \
        in result.summary
    assert [r["id"] for r in result.remediation][:1] == [""]  # the admin error's own fix comes first
    assert "portal steps" in result.remediation[0]["fix"]


def test_interactive_means_a_kernel_jupyterlab_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert not is_interactive()  # papermill, dw run, scripts
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/new-new.ipynb")  # set by jupyter_server
    assert is_interactive()


def test_the_gateway_is_opt_in_and_needs_a_consultant_sign_in(
        sandbox: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ParamsError) as exc:
        open_rb(sandbox, tmp_path, {"options.admin": "gateway"})
    assert exc.value.problems == [("options.admin", "the gateway needs a consultant's sign-in: set "
                                                    "auth.method: device_code, or use admin: portal")]
    overrides = {"options.admin": "gateway", "auth": {"method": "device_code"}}
    with pytest.warns(UserWarning, match="unsupported by Microsoft"), \
            open_rb(sandbox, tmp_path, overrides, interactive=False) as rb:
        assert isinstance(rb.admin, GatewayAdmin)
        assert rb.admin.gateway_url == sandbox["gateway_url"]  # from the sandbox's connection.yaml
    with open_rb(sandbox, tmp_path, interactive=False) as rb:
        assert type(rb.admin) is PortalAdmin


def test_an_interrupted_step_is_recorded_as_interrupted_not_failed_and_the_run_goes_on(
        sandbox: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    behave(monkeypatch, plan="interrupt")
    path = tmp_path / "run.json"
    with open_rb(sandbox, tmp_path, interactive=True) as rb:
        for step_id in rb.step_ids[:rb.step_ids.index("plan")]:
            rb.run(step_id)
        with pytest.raises(KeyboardInterrupt):
            rb.run("plan")
        record = load_record(path)
        stopped = (record["status"], record["current_step"], record["failed_step"])
        assert stopped == ("interrupted", "plan", None)
        assert record["error"] == "interrupted (KeyboardInterrupt) while step plan was running"
        assert "plan" not in [s["id"] for s in record["steps"]] and record["ended"]
        # Run the cell again (as after Jupyter's Interrupt): the run goes on, no longer interrupted.
        assert rb.run("plan").status == StepStatus.PASSED
        record = load_record(path)
        assert (record["status"], record["error"], record["ended"]) == ("running", None, None)
