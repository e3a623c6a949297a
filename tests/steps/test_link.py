"""The link gate and the connection's legal entities against sandboxes, with the portal played."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from dw_helpers import Consultant
from sync_helpers import wait_state

from dwlib import catalog
from dwlib.clients.dualwrite import DualWriteAdminError
from dwlib.params import ParamsError
from dwlib.steps.base import StepError, StepStatus
from dwlib.steps.company import LegalEntities
from dwlib.steps.link import PowerPlatformIntegration


@pytest.fixture(scope="module")
def untouched(start_sandbox: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """A new-new sandbox nobody links (the tests using it only read, or time out waiting)."""
    return start_sandbox("new-new", rows=20, fresh=True)


def test_the_gate_links_a_new_finops_for_dat_and_a_rerun_is_already_done(start_sandbox, step_context,
                                                                           portal_player) -> None:
    sandbox = start_sandbox("new-existing", rows=20, fresh=True)
    ctx = step_context(sandbox, consultant=portal_player(sandbox))
    result = PowerPlatformIntegration().execute(ctx)
    assert result.status == StepStatus.PASSED, [c.to_dict() for c in result.checks]
    assert [i.title for i in ctx.instructions] == ["Set up the Power Platform integration (LCS)",
                                                   "Configure dual-write and link the environments (LCS)"]
    assert any("keep these legal entities: DAT;" in s for s in ctx.instructions[1].steps)
    checks = {c.name: c for c in result.checks}
    assert checks["Power Platform integration"].evidence.startswith(
        f"Dataverse is integrated with {sandbox['finops_url']}")
    assert checks["dual-write solutions"].status == StepStatus.PASSED
    # The connection's documented state, not a company row: the LCS setup started the maps, so
    # their projects show the connection's legal entities.
    assert checks["legal entities in the connection"].evidence == \
        "DualWriteProjectConfigurations.PartitionMap: DAT"
    assert not any(name.startswith("company ") for name in checks)  # linking creates no company

    again = PowerPlatformIntegration().execute(ctx)
    assert again.status == StepStatus.ALREADY_DONE and len(ctx.instructions) == 2
    # A new F&O is connected for DAT only, and the LCS setup ran the Legal entities map, which
    # brought DAT's company row: the legal-entities step finds its work done.
    c = Consultant(sandbox)
    try:
        wait_state(c, ["Legal entities (cdm_companies)"], "Running")
    finally:
        c.close()
    legal = LegalEntities().execute(ctx)
    assert legal.status == StepStatus.ALREADY_DONE and len(ctx.instructions) == 2
    company = {ch.name: ch for ch in legal.checks}["company DAT in Dataverse"]
    assert company.evidence.endswith("owner team 'DAT DW' in business unit 'DAT'")


def test_the_gate_times_out_saying_what_is_missing(untouched, step_context) -> None:
    ctx = step_context(untouched, timeout_s=0.3)
    missing = "still missing: RetrieveFinanceAndOperationsIntegrationDetails answers 0x80048d0b"
    with pytest.raises(DualWriteAdminError, match=missing) as err:
        PowerPlatformIntegration().execute(ctx)
    assert "do the portal steps shown above" in str(err.value)
    assert [i.title for i in ctx.instructions] == ["Set up the Power Platform integration (LCS)"]


def test_a_dry_run_says_what_it_would_do_and_shows_no_gate(untouched, step_context) -> None:
    ctx = step_context(untouched, dry_run=True)
    result = PowerPlatformIntegration().execute(ctx)
    assert result.status == StepStatus.SKIPPED
    assert result.summary == ("dry run — would: set up the Power Platform integration; configure dual-write "
                              "and link it for DAT")
    assert ctx.instructions == []


def test_a_link_to_other_environments_fails_naming_both_values(start_sandbox, step_context) -> None:
    sandbox = start_sandbox("existing-new", rows=20, fresh=True)
    consultant = Consultant(sandbox)
    try:
        consultant.portal("POST", "/lcs/power-platform-integration")
    finally:
        consultant.close()
    other = "https://contoso-test.operations.dynamics.com"
    ctx = step_context(sandbox, dry_run=True, params={
        "legal_entities": ["USMF"], "environments.finops_url": other,
        "environments.tenant_id": "11111111-2222-3333-4444-555555555555"})
    result = PowerPlatformIntegration().execute(ctx)
    checks = {c.name: c for c in result.checks}
    assert result.status == StepStatus.FAILED  # also in a dry run: there is nothing to do but fix it
    assert checks["Power Platform integration"].evidence == (
        f"Dataverse is integrated with {sandbox['finops_url']}, not {other} (environments.finops_url)")
    assert "check environments.dataverse_url and finops_url name the linked pair" in \
        checks["Power Platform integration"].fix
    assert checks["same tenant"].status == StepStatus.FAILED
    assert sandbox["tenant_id"] in checks["same tenant"].evidence
    assert "Cross-tenant scenarios aren't currently supported" in checks["same tenant"].fix
    assert ctx.instructions == []


def test_legal_entities_are_added_and_unwanted_ones_flagged(start_sandbox, step_context,
                                                            portal_player) -> None:
    sandbox = start_sandbox("existing-existing", rows=20, fresh=True)
    consultant = Consultant(sandbox)
    try:
        # The consultant linked with the wrong set: GBSI missing, DEMF unwanted.
        consultant.portal("POST", "/lcs/power-platform-integration")
        consultant.portal("POST", "/lcs/dual-write/configure")
        consultant.portal("POST", "/lcs/dual-write/link", {"legal_entities": ["USMF", "DEMF"]})
        ctx = step_context(sandbox, consultant=portal_player(sandbox),
                           params={"legal_entities": ["USMF", "GBSI"]})
        # Linking made no company row, and before any map has a project the connection cannot be
        # read: the step first runs the Legal entities map, which brings the companies.
        dry = LegalEntities().execute(step_context(sandbox, dry_run=True, params={
            "legal_entities": ["USMF", "GBSI"]}))
        assert dry.summary == ("dry run — would: run Legal entities (cdm_companies) with the initial sync; "
                               "bring the cdm_companies rows of USMF, GBSI")
        assert consultant.dv_rows("cdm_companies?$select=cdm_companycode") == []
        result = LegalEntities().execute(ctx)
        assert [i.title for i in ctx.instructions] == ["Run table map Legal entities (cdm_companies)",
                                                       "Add legal entities to the dual-write connection",
                                                       "Remove legal entities from the dual-write connection"]
        # Only the Legal entities map runs and GBSI has one row for it: with initial writes, which
        # bring its company row.
        keep = "Clear 'Skip initial writes for newly added legal entities', then Save."
        assert keep in ctx.instructions[1].steps
        assert consultant.portal("GET", "/dualwrite/connection")["legalEntities"] == ["USMF", "GBSI"]
    finally:
        consultant.close()
    checks = {c.name: c for c in result.checks}
    assert result.status == StepStatus.PASSED, [c.to_dict() for c in result.checks]
    assert checks["legal entities in the connection"].evidence == \
        "DualWriteProjectConfigurations.PartitionMap: GBSI, USMF"
    assert checks["add GBSI"].evidence.startswith("with initial writes: Legal entities (cdm_companies) run")
    assert checks["company GBSI in Dataverse"].status == StepStatus.PASSED
    assert "owner team 'GBSI DW'" in checks["company GBSI in Dataverse"].evidence
    # DEMF keeps the cdm_company row the map brought, but the connection no longer holds it: the
    # step reads the connection, not the rows, so the removal is verified.
    assert "legal entities outside the scope" not in checks


def test_a_removal_not_done_is_read_from_the_connection(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("existing-existing", rows=20, legal_entities=["USMF", "DEMF"])
    ctx = step_context(sandbox, params={"legal_entities": ["USMF"]}, timeout_s=0.3)  # nobody acts
    result = LegalEntities().execute(ctx)
    assert [i.title for i in ctx.instructions] == ["Remove legal entities from the dual-write connection"]
    outside = {c.name: c for c in result.checks}["legal entities outside the scope"]
    assert result.status == StepStatus.WARNING and outside.status == StepStatus.WARNING
    assert outside.evidence == "the connection also holds DEMF (DualWriteProjectConfigurations.PartitionMap)"
    assert result.next_action == outside.fix


def test_more_legal_entities_than_the_limits_are_refused_before_acting(untouched, step_context) -> None:
    codes = [f"E{i:03d}" for i in range(40)]
    ctx = step_context(untouched, params={"scenario": "new-data-new", "legal_entities": codes})
    with pytest.raises(StepError, match=r"41 legal entities: \"Initial writes are supported for up to 40 "
                                        r"legal entities\"") as err:
        LegalEntities().execute(ctx)
    assert catalog.match_error(str(err.value)).id == "too-many-legal-entities"
    # new-new runs no initial sync: 41 pass the limits (and then F&O lacks them) ...
    ctx = step_context(untouched, params={"legal_entities": codes})
    with pytest.raises(StepError, match=r"legal entities E000, E001, .* do not exist in finance and "
                                        r"operations \(it has DAT\)"):
        LegalEntities().execute(ctx)
    # ... but 251 exceed live synchronization.
    ctx = step_context(untouched, params={"legal_entities": [f"L{i:03d}" for i in range(251)]})
    with pytest.raises(StepError, match="live synchronization has a limit of 250 legal entities"):
        LegalEntities().execute(ctx)
    assert ctx.instructions == []


def test_an_existing_finops_needs_legal_entities_in_scope(untouched, step_context) -> None:
    # The parameters file is refused for it, with its other problems, before any step runs.
    with pytest.raises(ParamsError, match="legal_entities: scenario existing-new connects an existing"):
        step_context(untouched, params={"scenario": "existing-new", "legal_entities": []})


def test_an_owning_team_without_the_dual_write_roles_is_flagged(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("existing-existing", rows=20, legal_entities=["USMF"])
    c = Consultant(sandbox)
    try:
        (team,) = c.dv_rows("teams?$select=teamid&$filter=name eq 'USMF DW'")
        rows = c.dv_rows(f"teamrolescollection?$filter=teamid eq {team['teamid']}")
        assert len(rows) == 2  # the dual-write runtime user and app user roles
        assert c.dv("DELETE", f"teamrolescollection({rows[0]['teamroleid']})").status_code == 204
    finally:
        c.close()
    result = LegalEntities().execute(step_context(sandbox, params={"legal_entities": ["USMF"]}))
    roles = {ch.name: ch for ch in result.checks}["roles of the owning team of USMF"]
    assert result.status == StepStatus.WARNING and roles.status == StepStatus.WARNING
    assert roles.evidence.startswith("roles: Dual-write")
    assert "give team 'USMF DW' the Dual-write runtime user and Dual-write app user roles" in roles.fix
