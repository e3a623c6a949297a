"""The table-maps step against sandboxes: dependency order, master and skip per map, failures."""

from __future__ import annotations

from typing import Any

from dw_helpers import Consultant
from sync_helpers import ACCOUNTS, CONTACTS, CUR, CUSTOMER_MAPS, GROUPS, LE, TERMS, quote_a_customer, set_plan

from dwlib import catalog
from dwlib.steps import STEPS, StepStatus


def _maps(c: Consultant) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in c.portal("GET", "/dualwrite/maps")}


def test_maps_run_in_dependency_order_with_master_and_skip_per_map(linked_sandbox, step_context,
                                                                   portal_player) -> None:
    sandbox = linked_sandbox("existing-new", rows=20, legal_entities=["USMF", "GBSI"])
    c = Consultant(sandbox)
    try:
        ctx = step_context(sandbox, consultant=portal_player(sandbox),
                           params={"legal_entities": ["USMF", "GBSI"]})
        # The Customers V3 (contacts) example: its prerequisites first; accounts were "migrated".
        set_plan(ctx, [(CONTACTS, "initial-sync", "dataverse"), (GROUPS, "initial-sync", "finops"),
                       (ACCOUNTS, "migrate", "finops"), (LE, "initial-sync", "finops"),
                       (TERMS, "initial-sync", "finops"), (CUR, "initial-sync", "finops")])
        result = STEPS["table-maps"]().execute(ctx)
        assert result.status == StepStatus.PASSED, (result.summary, result.checks)

        runs = [i for i in ctx.instructions if i.title.startswith("Run table map")]
        order = [n for i in runs for n in i.title.split(" ", 3)[3].split(", ")]
        # The Legal entities map runs already: the legal-entities step ran it (it brings the companies).
        assert order == [n for n in catalog.dependency_order([CONTACTS, ACCOUNTS]) if n != LE]
        texts = [i.text() for i in runs]
        assert "Finance and Operations apps and keep Initial Sync selected" in texts[0]
        assert "clear Initial Sync (skip initial sync)" in texts[1] and ACCOUNTS in texts[1]
        assert "Dataverse and keep Initial Sync selected" in texts[2] and f"Select '{CONTACTS}'" in texts[2]

        maps = _maps(c)
        assert {n: maps[n]["displayState"] for n in order} == dict.fromkeys(order, "Running")
        assert maps["Vendors V2 (msdyn_vendors)"]["displayState"] == "Not running"  # not in the plan
        jobs = {n: c.portal("GET", f"/dualwrite/maps/{catalog.table_map(n).id}/initial-sync")["last"]
                for n in order}
        assert jobs[ACCOUNTS] is None  # skip initial sync: no job
        assert jobs[CONTACTS]["master"] == "dataverse" and jobs[GROUPS]["master"] == "finops"
        assert [r["state"] for r in result.tables["table maps"]] == ["Running"] * (len(order) + 1)

        seen = len(ctx.instructions)
        again = STEPS["table-maps"]().execute(ctx)
        assert again.status == StepStatus.ALREADY_DONE and len(ctx.instructions) == seen
    finally:
        c.close()


def test_only_maps_not_running_are_run_and_paused_ones_resume(linked_sandbox, step_context,
                                                              portal_player) -> None:
    sandbox = linked_sandbox("new-new", legal_entities=["DAT"])
    c = Consultant(sandbox)
    try:
        c.portal("POST", f"/dualwrite/maps/{catalog.table_map(GROUPS).id}/run", {"initial_sync": False})
        c.portal("POST", f"/dualwrite/maps/{catalog.table_map(LE).id}/pause")
        ctx = step_context(sandbox, consultant=portal_player(sandbox))
        set_plan(ctx, [(n, "skip", "dataverse") for n in CUSTOMER_MAPS])
        result = STEPS["table-maps"]().execute(ctx)
        assert result.status == StepStatus.PASSED, result.checks
        (run,) = [i for i in ctx.instructions if i.title.startswith("Run table map")]
        assert run.title.endswith(f"{CUR}, {LE}, {ACCOUNTS}")  # Terms, groups were Running already
        assert all(_maps(c)[n]["displayState"] == "Running" for n in CUSTOMER_MAPS)
    finally:
        c.close()


def test_a_failed_initial_sync_shows_the_top_errors_with_remediation(linked_sandbox, step_context,
                                                                    gateway_admin) -> None:
    sandbox = linked_sandbox("existing-new", rows=12, legal_entities=["USMF"])
    c = Consultant(sandbox)
    try:
        ctx = step_context(sandbox, params={"legal_entities": ["USMF"]})
        ctx.admin = gateway_admin(ctx)
        account = quote_a_customer(c, "usmf")
        set_plan(ctx, [(n, "initial-sync", "finops") for n in CUSTOMER_MAPS])
        result = STEPS["table-maps"]().execute(ctx)
        assert result.status == StepStatus.FAILED
        assert result.summary == f"initial sync failed for {ACCOUNTS}"
        (error,) = [ch for ch in result.checks if ch.name.startswith(ACCOUNTS)]
        assert "MalformedLineException" in error.evidence and account in error.evidence
        assert error.fix == catalog.known_error("double-quotes-in-data").fix
        assert [r["id"] for r in result.remediation] == ["double-quotes-in-data"]
        assert "Re-run execution" in result.next_action and "full push" in result.next_action
        assert _maps(c)[ACCOUNTS]["displayState"] == "Not running"
        assert _maps(c)[GROUPS]["displayState"] == "Running"  # the maps before it did run
    finally:
        c.close()


def test_a_gate_nobody_does_fails_naming_the_maps(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("new-new", legal_entities=["DAT"])
    ctx = step_context(sandbox, timeout_s=0.3)
    set_plan(ctx, [(CUR, "skip", "dataverse"), (TERMS, "skip", "dataverse")])
    result = STEPS["table-maps"]().execute(ctx)
    assert result.status == StepStatus.FAILED
    assert result.summary == f"not running: {CUR}, {TERMS}"
    assert "not verified after" in result.checks[0].evidence
    assert ctx.instructions[0].title == f"Run table maps {CUR}, {TERMS}"
