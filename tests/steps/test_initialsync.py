"""The initial-sync step against sandboxes: start, watch, reconcile, documented failures, reruns."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from dw_helpers import Consultant
from sync_helpers import (
    ACCOUNTS,
    CUSTOMER_MAPS,
    GROUPS,
    company_id,
    organization,
    quote_a_customer,
    run_maps,
    set_plan,
    state,
    wait_state,
)

from dwlib import catalog
from dwlib.clients.dualwrite import MapSnapshot
from dwlib.steps import STEPS, StepError, StepStatus
from dwlib.steps.initialsync import Watch
from dwlib.steps.tablemaps import RERUN_POLICY

FAST = {"initial_sync.poll_s": 0.05, "initial_sync.timeout_s": 60}


class Recorder:
    """A progress factory that remembers what it was told."""

    def __init__(self) -> None:
        self.bars: list[tuple[str, int | None]] = []
        self.done = 0

    def __call__(self, label: str, total: int | None) -> Recorder:
        self.bars.append((label, total))
        return self

    def update(self, n: int = 1) -> None:
        self.done += n

    def close(self) -> None:
        return None


def test_the_step_starts_the_initial_sync_and_reconciles(linked_sandbox, step_context,
                                                         portal_player) -> None:
    sandbox = linked_sandbox("existing-new", rows=20, legal_entities=["USMF", "GBSI"])
    progress = Recorder()
    ctx = step_context(sandbox, consultant=portal_player(sandbox), progress=progress,
                       params={"legal_entities": ["USMF", "GBSI"], **FAST})
    set_plan(ctx, [(n, "initial-sync", "finops") for n in CUSTOMER_MAPS])
    result = STEPS["initial-sync"]().execute(ctx)
    assert result.status == StepStatus.PASSED, result.checks
    # The Legal entities map runs already (the legal-entities step ran it): the others are started.
    assert progress.bars == [("initial sync (maps)", len(CUSTOMER_MAPS) - 1)]
    assert progress.done == len(CUSTOMER_MAPS) - 1
    rows = {(r["map"], r["company"]): r for r in result.tables["initial sync"]}
    for company in ("USMF", "GBSI"):
        row = rows[(ACCOUNTS, company)]
        assert row["finops_rows"] == row["dataverse_rows"] > 0 and row["in_sync"] == "yes"
    assert result.counts["running"] == len(CUSTOMER_MAPS)

    seen = len(ctx.instructions)
    again = STEPS["initial-sync"]().execute(ctx)
    assert again.status == StepStatus.ALREADY_DONE and len(ctx.instructions) == seen


def test_running_maps_with_rows_out_of_sync_get_their_initial_sync_again(linked_sandbox, step_context,
                                                                         portal_player) -> None:
    sandbox = linked_sandbox("existing-new", rows=20, legal_entities=["USMF"])
    c = Consultant(sandbox)
    try:
        run_maps(c, CUSTOMER_MAPS[:-1])
        run_maps(c, [ACCOUNTS], initial_sync=False)  # live, but the existing customers never synced
        ctx = step_context(sandbox, consultant=portal_player(sandbox),
                           params={"legal_entities": ["USMF"], **FAST})
        set_plan(ctx, [(n, "initial-sync", "finops") for n in CUSTOMER_MAPS])
        result = STEPS["initial-sync"]().execute(ctx)
        assert result.status == StepStatus.PASSED, result.checks
        titles = [i.title for i in ctx.instructions]
        assert titles == [f"Stop table maps {ACCOUNTS}", f"Run table map {ACCOUNTS}"]
        assert "keep Initial Sync selected" in ctx.instructions[1].text()
        orgs = c.fo_rows("CustomersV3?cross-company=true&$filter=dataAreaId eq 'usmf' and "
                         "PartyType eq 'Organization'&$select=CustomerAccount")
        accounts = c.dv_rows(f"accounts?$select=accountnumber&$filter=_msdyn_company_value eq "
                             f"{company_id(c, 'USMF')}")
        assert sorted(r["CustomerAccount"] for r in orgs) == sorted(r["accountnumber"] for r in accounts)
    finally:
        c.close()


def test_watching_counts_each_map_once_and_stops_at_the_deadline() -> None:
    states = iter([{"A": "Initializing", "B": "Initializing"}, {"A": "Running", "B": "Initializing"},
                   {"A": "Running", "B": "Not running"}])

    class Admin:
        def map_states(self, names: list[str]) -> dict[str, MapSnapshot]:
            return {n: MapSnapshot(n, s) for n, s in next(states).items()}

    done: list[int] = []
    watch = Watch(Admin(), deadline=float("inf"), poll_s=0.0, progress=done.append)
    assert {n: s.state for n, s in watch.until_settled(["A", "B"]).items()} == {"A": "Running",
                                                                              "B": "Not running"}
    assert done == [1, 1]
    stuck = Watch(Admin(), deadline=0.0, poll_s=0.0, progress=done.append)
    states = iter([{"A": "Initializing", "B": "Initializing"}])
    assert stuck.until_settled(["A", "B"])["A"].state == "Initializing"


def _double_quotes(c: Consultant) -> tuple[list[str], str]:
    return [ACCOUNTS], quote_a_customer(c, "usmf")


def _missing_reference(c: Consultant) -> tuple[list[str], str]:
    c.portal("POST", f"/dualwrite/maps/{catalog.table_map(GROUPS).id}/pause")  # F&O's new group stays queued
    r = c.fo("POST", "CustomerGroups", {"dataAreaId": "usmf", "CustomerGroupId": "77", "Description": "x"})
    assert r.status_code == 201, r.text
    account = organization(c, "usmf")["CustomerAccount"]
    r = c.fo("PATCH", f"CustomersV3(dataAreaId='usmf',CustomerAccount='{account}')?cross-company=true",
             {"CustomerGroupId": "77"})
    assert r.status_code == 204, r.text
    return [ACCOUNTS], "msdyn_customergroupid.msdyn_groupid"


def _too_many_lookups(c: Consultant) -> tuple[list[str], str]:
    c.portal("PUT", "/dualwrite/limits", {"failing_lookups": 2})
    (account,) = c.dv_rows("accounts?$top=1&$select=accountid,accountnumber&$filter=customertypecode eq 3 "
                           "and accountnumber ne null")
    r = c.dv("PATCH", f"accounts({account['accountid']})",
             {"msdyn_company@odata.bind": f"/cdm_companies({company_id(c, 'USMF')})"})
    assert r.status_code == 204, r.text
    return [ACCOUNTS], "5 Attempts to get data from"


def _dependency_not_running(c: Consultant) -> tuple[list[str], str]:
    c.portal("POST", f"/dualwrite/maps/{catalog.table_map(GROUPS).id}/stop")
    return [ACCOUNTS], "Unable to build dual-write lookup metadata"


FAILURES: dict[str, tuple[str, Callable[[Consultant], tuple[list[str], str]]]] = {
    "double-quotes-in-data": ("existing-new", _double_quotes),
    "missing-reference-data": ("existing-new", _missing_reference),
    "too-many-lookups": ("existing-existing", _too_many_lookups),
    "lookup-metadata": ("existing-new", _dependency_not_running),
}


@pytest.mark.parametrize("error_id", list(FAILURES))
def test_each_documented_failure_shows_its_top_errors_and_remediation(
    error_id: str, linked_sandbox: Any, step_context: Any, gateway_admin: Any,
) -> None:
    profile, make_defect = FAILURES[error_id]
    sandbox = linked_sandbox(profile, rows=12, legal_entities=["USMF"])
    c = Consultant(sandbox)
    try:
        run_maps(c, CUSTOMER_MAPS[:-1])
        plan, text = make_defect(c)
        ctx = step_context(sandbox, params={"legal_entities": ["USMF"], **FAST})
        ctx.admin = gateway_admin(ctx)
        set_plan(ctx, [(n, "initial-sync", "finops") for n in plan])
        result = STEPS["initial-sync"]().execute(ctx)
        assert result.status == StepStatus.FAILED, result.checks
        assert result.summary == f"initial sync failed: {ACCOUNTS}"
        errors = [ch for ch in result.checks if ch.name.startswith(f"{ACCOUNTS}: error")]
        assert 1 <= len(errors) <= catalog.limits().top_errors
        assert text in errors[0].evidence
        known = catalog.known_error(error_id)
        assert errors[0].fix == known.fix and errors[0].doc == known.doc_url
        assert result.remediation[0]["id"] == error_id and result.remediation[0]["map"] == ACCOUNTS
        assert result.next_action == RERUN_POLICY
        assert state(c, ACCOUNTS) == "Not running"
    finally:
        c.close()


def test_the_portal_adapter_says_where_the_errors_are(linked_sandbox, step_context, portal_player) -> None:
    sandbox = linked_sandbox("existing-new", rows=12, legal_entities=["USMF"])
    c = Consultant(sandbox)
    try:
        run_maps(c, CUSTOMER_MAPS[:-1])
        quote_a_customer(c, "usmf")
        ctx = step_context(sandbox, consultant=portal_player(sandbox),
                           params={"legal_entities": ["USMF"], **FAST})
        set_plan(ctx, [(ACCOUNTS, "initial-sync", "finops")])
        result = STEPS["initial-sync"]().execute(ctx)
        assert result.status == StepStatus.FAILED
        (check,) = result.checks
        assert "Initial sync details" in check.evidence and check.fix == RERUN_POLICY
    finally:
        c.close()


def _stamp(c: Consultant, code: str, group: str, n: int, skip: int = 0) -> list[dict[str, Any]]:
    """Give `n` Dataverse-only customer accounts company `code` and customer group id `group`."""
    accounts = c.dv_rows(f"accounts?$top={n + skip}&$select=accountid,accountnumber&$orderby=accountnumber&"
                         "$filter=customertypecode eq 3 and startswith(accountnumber,'ACC-') and "
                         "_msdyn_company_value eq null")[skip:]
    bind = {"msdyn_company@odata.bind": f"/cdm_companies({company_id(c, code)})",
            "msdyn_customergroupid@odata.bind": f"/msdyn_customergroups({group})"}
    for a in accounts:
        r = c.dv("PATCH", f"accounts({a['accountid']})", bind)
        assert r.status_code == 204, r.text
    return accounts


def test_a_rerun_says_it_is_a_full_push_and_refuses_when_that_breaks_the_limits(
        linked_sandbox, step_context, portal_player) -> None:
    sandbox = linked_sandbox("new-data-existing", rows=12, legal_entities=["DAT", "USMF"])
    c = Consultant(sandbox)
    try:
        run_maps(c, CUSTOMER_MAPS)
        customers = "CustomersV3?cross-company=true&$select=CustomerAccount&$filter=dataAreaId eq "
        usmf_before = len(c.fo_rows(customers + "'usmf'"))
        # A new company with rows only Dataverse has, stamped while Customers V3 (accounts) was stopped.
        r = c.fo("POST", "LegalEntities", {"LegalEntityId": "NEWC", "Name": "New company"})
        assert r.status_code == 201, r.text
        c.portal("POST", "/dualwrite/legal-entities", {"add": ["NEWC"], "skip_initial_writes": False})
        r = c.fo("POST", "CustomerGroups", {"dataAreaId": "newc", "CustomerGroupId": "10"})
        assert r.status_code == 201, r.text  # live sync brings it to Dataverse
        (group,) = c.dv_rows("msdyn_customergroups?$select=msdyn_customergroupid&$filter=msdyn_groupid eq "
                             f"'10' and _msdyn_company_value eq {company_id(c, 'NEWC')}")
        c.portal("POST", f"/dualwrite/maps/{catalog.table_map(ACCOUNTS).id}/stop")
        # Below "10 or more lookups" (the documented workaround), so Dataverse rows can be exported.
        c.portal("PATCH", f"/dualwrite/maps/{catalog.table_map(ACCOUNTS).id}",
                 {"remove": ["msdyn_salestaxgroup.msdyn_name"]})
        accounts = _stamp(c, "NEWC", group["msdyn_customergroupid"], 3)
        run_maps(c, [ACCOUNTS], initial_sync=False)
        assert c.fo_rows(customers + "'newc'") == []

        params = {"legal_entities": ["USMF", "NEWC"], "companies": [{"code": "NEWC", "name": "New company"}],
                  **FAST}
        ctx = step_context(sandbox, consultant=portal_player(sandbox), params=params)
        set_plan(ctx, [(n, "initial-sync", "finops") for n in CUSTOMER_MAPS])
        step = STEPS["initial-sync"]()
        result = step.execute(ctx)
        assert result.status == StepStatus.PASSED, result.checks
        assert [i.title for i in ctx.instructions] == [f"Stop table maps {ACCOUNTS}",
                                                       f"Run table map {ACCOUNTS}"]
        # Only NEWC needs it, but a rerun cannot be limited to it, and the result says so.
        note = {ch.name: ch for ch in result.checks}["initial sync run again"].evidence
        assert note.startswith(f"{ACCOUNTS}: NEWC need it; the rerun touches DAT, USMF, NEWC — an initial "
                               "sync covers every legal entity of the connection and a rerun is a full push")
        synced = c.fo_rows(customers + "'newc'")
        assert sorted(r["CustomerAccount"] for r in synced) == sorted(a["accountnumber"] for a in accounts)
        assert len(c.fo_rows(customers + "'usmf'")) == usmf_before  # touched, left alone
        wait_state(c, CUSTOMER_MAPS, "Running")
        seen = len(ctx.instructions)
        assert step.execute(ctx).status == StepStatus.ALREADY_DONE and len(ctx.instructions) == seen

        # NEWC needs it again; USMF, which does not, is past the limit: the full push would fail there.
        c.portal("POST", f"/dualwrite/maps/{catalog.table_map(ACCOUNTS).id}/stop")
        _stamp(c, "NEWC", group["msdyn_customergroupid"], 1)
        run_maps(c, [ACCOUNTS], initial_sync=False)
        strict = step_context(sandbox, params={**params, "plan.limits.initial_sync_rows_per_legal_entity": 1})
        set_plan(strict, [(n, "initial-sync", "finops") for n in CUSTOMER_MAPS])
        refused = (rf"full push breaks the initial-sync limits where it is not needed: {re.escape(ACCOUNTS)} "
                   r"USMF: .* rows in one legal entity.*migrate the rows of the companies that need it")
        with pytest.raises(StepError, match=refused):
            step.execute(strict)
        assert strict.instructions == []
    finally:
        c.close()


def test_after_the_plan_step_table_maps_and_initial_sync_converge(linked_sandbox, step_context,
                                                                  portal_player) -> None:
    sandbox = linked_sandbox("existing-new", rows=12, legal_entities=["USMF", "GBSI"])
    ctx = step_context(sandbox, consultant=portal_player(sandbox),
                       params={"legal_entities": ["USMF", "GBSI"], **FAST})
    plan = STEPS["plan"]().execute(ctx)
    assert plan.status == StepStatus.PASSED, plan.checks
    planned = {r["map"]: r["action"] for r in plan.tables["plan"]}
    assert planned[ACCOUNTS] == "initial-sync"
    assert STEPS["table-maps"]().execute(ctx).status == StepStatus.PASSED
    # The table-maps step ran the initial syncs to the end (the portal gate waits for Running).
    synced = STEPS["initial-sync"]().execute(ctx)
    assert synced.status == StepStatus.ALREADY_DONE, synced.checks
    assert {r["map"] for r in synced.tables["initial sync"]} == {
        m for m, action in planned.items() if action == "initial-sync"}
    ctx.run_state.clear()  # a resumed run: the steps rebuild the plan from the real state
    assert STEPS["table-maps"]().execute(ctx).status == StepStatus.ALREADY_DONE
    assert STEPS["initial-sync"]().execute(ctx).status == StepStatus.ALREADY_DONE
