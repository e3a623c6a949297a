"""Preflight against sandboxes: what the link step sets up is pending before it, a clean pass after
it, real problems warn or fail with fixes."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from dw_helpers import Consultant

from dwlib.catalog.locales import LOCALE_DOC
from dwlib.clients.dataverse import DataverseClient
from dwlib.clients.errors import ClientError
from dwlib.steps.base import Check, StepResult, StepStatus
from dwlib.steps.link import PowerPlatformIntegration
from dwlib.steps.preflight import DMF_LOCALE, NOT_YET, Preflight, Setup, _dmf_locale_check


def _by_name(result: StepResult) -> dict[str, Check]:
    return {c.name: c for c in result.checks}


def _writes(ctx: Any) -> list[str]:
    """Requests to the environments (sign-in is not one) other than reads."""
    envs = (ctx.params.environments.dataverse_url, ctx.params.environments.finops_url)
    return [f"{e.method} {e.url}" for e in ctx.session.journal.entries()
            if e.method != "GET" and e.url.startswith(envs)]


@pytest.fixture(scope="module")
def fresh_new_new(start_sandbox: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """A new-new sandbox nobody links (the tests of this module only read it)."""
    return start_sandbox("new-new", rows=20, fresh=True)


def test_before_the_link_what_the_link_step_sets_up_is_pending_not_a_warning(fresh_new_new,
                                                                               step_context) -> None:
    ctx = step_context(fresh_new_new)
    result = Preflight().execute(ctx)
    checks = _by_name(result)
    assert result.status == StepStatus.PASSED, (
        [c.to_dict() for c in result.checks if c.status != StepStatus.SKIPPED])
    assert checks["Dataverse reachable"].status == StepStatus.PASSED
    assert checks["F&O reachable"].status == StepStatus.PASSED
    link = checks["Power Platform integration"]
    assert link.status == StepStatus.SKIPPED and "0x80048d0b" in link.evidence
    assert "not set up yet: the power-platform-integration step sets it up" in link.evidence
    pending = [c for c in result.checks if c.name.startswith(("solutions: ", "application user"))]
    assert len(pending) > 2 and all(c.status == StepStatus.SKIPPED and c.fix == "" for c in pending)
    assert all(c.evidence.endswith(NOT_YET) for c in pending)
    assert "DualWriteCore not installed" in checks["solutions: Dual Write Core"].evidence
    assert sum(c.name.startswith("application user") for c in pending) == 2
    companies = checks["cdm_companies"]
    assert companies.status == StepStatus.SKIPPED and companies.evidence.endswith(NOT_YET)
    assert checks["legal-entity count"].status == StepStatus.PASSED
    assert "DAT" in checks["legal entities in F&O"].evidence
    # No role yet: the dual-write tables it needs to read come with the setup.
    root_team = checks["root business unit default team"]
    assert root_team.status == StepStatus.SKIPPED and "roles: none" in root_team.evidence
    skipped = sum(c.status == StepStatus.SKIPPED for c in result.checks)
    assert f"{skipped} skipped, 0 warnings, 0 failed" in result.summary
    assert _writes(ctx) == []


def test_an_old_solution_or_a_disabled_app_user_before_the_link_is_a_warning(start_sandbox,
                                                                             step_context) -> None:
    sandbox = start_sandbox("new-new", rows=20, fresh=True)
    consultant = Consultant(sandbox)
    try:
        # Left-overs the LCS setup does not repair: an old solution, a disabled dual-write app user.
        assert consultant.dv("POST", "solutions", {"uniquename": "Dynamics365Company", "version": "2.0.100",
                                                   "friendlyname": "Dynamics365Company"}).status_code == 204
        assert consultant.dv("POST", "systemusers", {
            "fullname": "Dual-write runtime", "isdisabled": True, "accessmode": 4,
            "applicationid": "2e49aa60-1bd3-43b6-8ab6-03ada3d9f08b"}).status_code == 204
    finally:
        consultant.close()
    result = Preflight().execute(step_context(sandbox))
    checks = _by_name(result)
    assert result.status == StepStatus.WARNING
    core = checks["solutions: Dual-write Application Core"]
    assert core.status == StepStatus.WARNING
    assert "Dynamics365Company 2.0.100 (needs 2.0.133+)" in core.evidence
    assert "Configure" in core.fix
    user = checks["application user 2e49aa60-1bd3-43b6-8ab6-03ada3d9f08b"]
    assert user.status == StepStatus.WARNING and "is disabled" in user.evidence
    assert {c.name for c in result.checks if c.status == StepStatus.WARNING} == {core.name, user.name}


def test_without_a_later_step_to_set_it_up_a_missing_part_warns() -> None:
    missing = {later: Setup(linked=False, later=later) for later in (True, False)}
    assert missing[True].missing() == StepStatus.SKIPPED and missing[False].missing() == StepStatus.WARNING
    warned = missing[False].check("x", missing[False].missing(), "x missing", fix="install x", doc="d")
    assert (warned.status, warned.evidence, warned.fix) == (StepStatus.WARNING, "x missing", "install x")
    pending = missing[True].check("x", missing[True].missing(), "x missing", fix="install x", doc="d")
    assert (pending.evidence, pending.fix) == (f"x missing; {NOT_YET}", "")
    assert Setup(linked=True, later=True).missing() == StepStatus.FAILED
    assert Setup(linked=False, later=True).problem() == StepStatus.WARNING


def test_a_dry_run_still_checks_and_never_writes(fresh_new_new, step_context) -> None:
    ctx = step_context(fresh_new_new, dry_run=True)
    first, second = Preflight().execute(ctx), Preflight().execute(ctx)
    assert first.status == second.status == StepStatus.PASSED
    assert [c.to_dict() for c in first.checks] == [c.to_dict() for c in second.checks]
    assert _writes(ctx) == [] and ctx.instructions == []


def test_too_many_legal_entities_fail_with_the_documented_limit(fresh_new_new, step_context) -> None:
    codes = [f"E{i:03d}" for i in range(41)]
    ctx = step_context(fresh_new_new, params={"scenario": "new-data-new", "legal_entities": codes})
    checks = _by_name(Preflight().execute(ctx))
    count = checks["legal-entity count"]
    assert count.status == StepStatus.FAILED
    assert "42 legal entities" in count.evidence  # DAT is connected for a new F&O too
    assert "Initial writes are supported for up to 40 legal entities" in count.evidence
    assert checks["legal entities in F&O"].status == StepStatus.FAILED
    # Without an initial sync (new-new) only the live limit of 250 applies.
    ctx = step_context(fresh_new_new, params={"legal_entities": codes})
    assert _by_name(Preflight().execute(ctx))["legal-entity count"].status == StepStatus.PASSED


def test_after_the_link_everything_passes_and_a_missing_part_then_fails(start_sandbox, step_context,
                                                                         portal_player) -> None:
    sandbox = start_sandbox("new-existing", rows=20, fresh=True)
    ctx = step_context(sandbox, consultant=portal_player(sandbox))
    assert PowerPlatformIntegration().execute(ctx).status == StepStatus.PASSED
    result = Preflight().execute(ctx)
    assert result.status == StepStatus.PASSED, (
        [c.to_dict() for c in result.checks if c.status != StepStatus.PASSED])
    assert _by_name(result)["same tenant"].status == StepStatus.PASSED

    consultant = Consultant(sandbox)
    try:
        users = consultant.dv_rows("systemusers?$select=systemuserid&$filter=applicationid eq "
                                   "2e49aa60-1bd3-43b6-8ab6-03ada3d9f08b")
        assert consultant.dv("PATCH", f"systemusers({users[0]['systemuserid']})",
                             {"isdisabled": True}).status_code == 204
    finally:
        consultant.close()
    result = Preflight().execute(ctx)
    user = _by_name(result)["application user 2e49aa60-1bd3-43b6-8ab6-03ada3d9f08b"]
    assert result.status == StepStatus.FAILED
    assert user.status == StepStatus.FAILED and "disabled" in user.evidence  # a warning before the link
    assert f"{user.name}: the LCS dual-write setup creates it" in result.next_action


def test_duplicate_or_blank_companies_fail_with_the_documented_error_and_fix(start_sandbox,
                                                                             step_context) -> None:
    sandbox = start_sandbox("existing-existing", rows=20, fresh=True)
    consultant = Consultant(sandbox)
    try:
        # Left-overs of an earlier setup: two companies with one name (the documented cause compares
        # names, not codes) and a company without a name.
        for row in ({"cdm_companycode": "USMF", "cdm_name": "Contoso US"},
                    {"cdm_companycode": "USRT", "cdm_name": "contoso us "},
                    {"cdm_companycode": "GBSI", "cdm_name": " "}):
            assert consultant.dv("POST", "cdm_companies", row).status_code == 204
    finally:
        consultant.close()
    ctx = step_context(sandbox, params={"legal_entities": ["USMF", "GBSI"]})
    result = Preflight().execute(ctx)
    companies = _by_name(result)["cdm_companies"]
    assert result.status == StepStatus.FAILED
    assert companies.status == StepStatus.FAILED
    assert "duplicate names: 'Contoso US' (USMF, USRT)" in companies.evidence
    assert "blank names: GBSI" in companies.evidence
    assert ("Saving connection set failed! An item with the same key has already been added."
            in companies.evidence)
    assert "Remove the duplicate cdm_company rows (same name)" in companies.fix
    assert companies.doc.endswith("dual-write-troubleshooting-initial-setup")
    assert [c.name for c in result.checks if c.status == StepStatus.FAILED] == ["cdm_companies"]


def test_an_unreachable_environment_fails_and_skips_what_depends_on_it(fresh_new_new, step_context) -> None:
    ctx = step_context(fresh_new_new)
    dv = ctx.session.dataverse
    ctx.session.dataverse = DataverseClient(dv.http, dv.environment_url + "/wrong-org")
    result = Preflight().execute(ctx)
    checks = _by_name(result)
    assert result.status == StepStatus.FAILED
    reach = checks["Dataverse reachable"]
    assert reach.status == StepStatus.FAILED and "WhoAmI" in reach.evidence and "404" in reach.evidence
    assert checks["F&O reachable"].status == StepStatus.PASSED
    skipped = [c for c in result.checks if c.status == StepStatus.SKIPPED]
    assert {c.name for c in skipped} >= {"dual-write solutions", "cdm_companies"}
    assert all(c.evidence == "not checked: Dataverse is not reachable" for c in skipped)


def _platform(c: Consultant, change: dict[str, Any]) -> None:
    r = c.http.post(f"{c.base}/_sandbox/platform", headers=c.admin, json=change)
    assert r.status_code == 200, r.text


PLATFORM = ("F&O version", "not a trial environment", "same geography", "Dataverse version",
            "Prospect to cash")


def test_versions_trial_geography_and_prospect_to_cash_are_read_and_can_fail(start_sandbox,
                                                                             step_context) -> None:
    sandbox = start_sandbox("existing-existing", rows=20, fresh=True)
    params = {"legal_entities": ["USMF"]}
    checks = _by_name(Preflight().execute(step_context(sandbox, params=params)))
    assert {n: checks[n].status for n in PLATFORM} == dict.fromkeys(PLATFORM, StepStatus.PASSED)
    assert checks["F&O version"].evidence.startswith("LCS: application build 10.0.1935.92")
    assert checks["Dataverse version"].evidence.startswith("RetrieveVersion: 9.2.")
    c = Consultant(sandbox)
    try:
        # Each documented requirement broken, as LCS, the admin API and Dataverse would report it.
        _platform(c, {"finops": {"CurrentApplicationBuildVersion": "10.0.383.1"}, "finops_sku": "Trial",
                      "dataverse_location": "unitedstates", "dataverse_version": "9.1.0000.11000"})
        r = c.dv("POST", "solutions", {"uniquename": "msdyn_ProspectToCash", "version": "1.0.0.0",
                                       "friendlyname": "Prospect to cash", "ismanaged": True})
        assert r.status_code == 204, r.text
    finally:
        c.close()
    result = Preflight().execute(step_context(sandbox, params=params))
    checks = _by_name(result)
    assert {n: checks[n].status for n in PLATFORM} == dict.fromkeys(PLATFORM, StepStatus.FAILED)
    assert "older than 10.0.9 (10.0.383.20013)" in checks["F&O version"].evidence
    assert "platform update 33" in checks["F&O version"].fix
    assert "not supported on F&O trial instances" in checks["not a trial environment"].fix
    assert checks["same geography"].evidence == "Dataverse in unitedstates, F&O in europe"
    assert "9.1.0000.11732" in checks["Dataverse version"].fix
    assert checks["Prospect to cash"].evidence == "installed: msdyn_ProspectToCash (Prospect to cash)"
    assert result.status == StepStatus.FAILED


def test_a_check_that_cannot_read_warns_and_never_passes(start_sandbox, step_context) -> None:
    sandbox = start_sandbox("existing-existing", rows=20, fresh=True)
    ctx = step_context(sandbox, params={"legal_entities": ["USMF"], "environments.lcs_project_id": None})
    version = _by_name(Preflight().execute(ctx))["F&O version"]
    assert version.status == StepStatus.WARNING
    assert version.evidence == "not read: environments.lcs_project_id and lcs_environment_id are not set"
    assert "Help > About" in version.fix
    wrong = step_context(sandbox, params={"legal_entities": ["USMF"], "environments.lcs_project_id": 1})
    refused = _by_name(Preflight().execute(wrong))["F&O version"]
    assert refused.status == StepStatus.WARNING
    assert "LCS answered: Project 1 was not found" in refused.evidence


def test_after_the_link_plugins_roles_and_apps_pass_and_each_can_fail(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("existing-existing", rows=20, legal_entities=["USMF"])
    params = {"legal_entities": ["USMF"]}
    names = ("dual-write plug-in steps", "roles of application user 00000015-0000-0000-c000-000000000000",
             "roles of application user 2e49aa60-1bd3-43b6-8ab6-03ada3d9f08b",
             "F&O Microsoft Entra applications", "root business unit default team")
    result = Preflight().execute(step_context(sandbox, params=params))
    checks = _by_name(result)
    assert {n: checks[n].status for n in names} == dict.fromkeys(names, StepStatus.PASSED), result.summary
    assert "maps run with them (Legal entities (cdm_companies), …)" in checks[names[3]].evidence
    c = Consultant(sandbox)
    try:
        (step,) = c.dv_rows("sdkmessageprocessingsteps?$select=sdkmessageprocessingstepid,name&$top=1")
        assert c.dv("PATCH", f"sdkmessageprocessingsteps({step['sdkmessageprocessingstepid']})",
                    {"statecode": 1}).status_code == 204
        (user,) = c.dv_rows("systemusers?$select=systemuserid&$filter=applicationid eq "
                            "00000015-0000-0000-c000-000000000000")
        for row in c.dv_rows(f"systemuserrolescollection?$filter=systemuserid eq {user['systemuserid']}"):
            assert c.dv("DELETE", f"systemuserrolescollection({row['systemuserroleid']})").status_code == 204
        (root,) = c.dv_rows("businessunits?$select=businessunitid&"
                            "$filter=_parentbusinessunitid_value eq null")
        (team,) = c.dv_rows(f"teams?$select=teamid&$filter=isdefault eq true and _businessunitid_value eq "
                            f"{root['businessunitid']}")
        for row in c.dv_rows(f"teamrolescollection?$select=teamroleid&$filter=teamid eq {team['teamid']}"):
            assert c.dv("DELETE", f"teamrolescollection({row['teamroleid']})").status_code == 204
        c.portal("POST", "/dualwrite/maps/legal-entities/stop")  # no map runs: nothing shows the apps at work
    finally:
        c.close()
    checks = _by_name(Preflight().execute(step_context(sandbox, params=params)))
    assert checks[names[0]].status == StepStatus.FAILED  # linked: a disabled step is a real problem
    assert f"step '{step['name']}' is disabled" in checks[names[0]].evidence
    assert checks[names[1]].status == StepStatus.FAILED and checks[names[1]].evidence == "roles: none"
    assert "System Administrator" in checks[names[1]].fix
    assert checks[names[2]].status == StepStatus.PASSED
    assert checks[names[3]].status == StepStatus.WARNING and "no map runs" in checks[names[3]].evidence
    assert checks[names[4]].status == StepStatus.FAILED and "roles: none" in checks[names[4]].evidence


def test_the_dmf_locale_the_initial_sync_needs_is_read_and_can_fail(start_sandbox, step_context) -> None:
    """en-us passes; an nl-NL source data format fails with the documented fix (Language locale en-us
    under Source data formats); a format that names none warns."""
    params = {"legal_entities": ["USMF"]}
    english = _by_name(Preflight().execute(step_context(start_sandbox("existing-existing", rows=20),
                                                        params=params)))[DMF_LOCALE]
    assert english.status == StepStatus.PASSED and "CSV-Unicode" in english.evidence
    dutch = start_sandbox("existing-existing", rows=20, fresh=True, dmf_locale="nl-NL")
    result = Preflight().execute(step_context(dutch, params=params))
    check = _by_name(result)[DMF_LOCALE]
    assert result.status == StepStatus.FAILED and check.status == StepStatus.FAILED
    assert "CSV-Unicode (nl-nl)" in check.evidence and "Edm.Decimal" in check.evidence
    assert "Data management > Source data formats" in check.fix and "Language locale to en-us" in check.fix
    assert check.doc == LOCALE_DOC
    c = Consultant(dutch)
    try:
        for row in c.fo_rows("DataManagementSourceDataFormats"):
            r = c.fo("PATCH", f"DataManagementSourceDataFormats(SourceName='{row['SourceName']}')",
                     {"LanguageLocale": "" if row["SourceName"] == "CSV" else "en-us"})
            assert r.status_code == 204, r.text
    finally:
        c.close()
    unset = _by_name(Preflight().execute(step_context(dutch, params=params)))[DMF_LOCALE]
    assert unset.status == StepStatus.WARNING and unset.evidence.endswith(": CSV")


def test_a_dmf_locale_that_cannot_be_read_warns() -> None:
    class _FinOps:
        def query(self, *args: Any, **kwargs: Any) -> Any:
            raise ClientError("404 Resource not found for the segment 'DataManagementSourceDataFormats'")

    check = _dmf_locale_check(SimpleNamespace(finops=_FinOps()))  # type: ignore[arg-type]
    assert check.status == StepStatus.WARNING and check.evidence.startswith("not read: 404")
    assert "Regional settings: Language locale en-us" in check.fix
