"""The verify step against sandboxes: reconciliation, missing keys, the live round trip and its clean-up."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from dw_helpers import Consultant
from sync_helpers import ACCOUNTS, CUR, CUSTOMER_MAPS, GROUPS, LE, TERMS, organization, run_maps, set_plan

from dwlib import catalog
from dwlib.steps import STEPS, StepStatus
from dwlib.steps.support.roundtrip import PREFIX, TEMPORARY_GROUP

FAST = {"verify.poll_s": 0.05, "verify.timeout_s": 10}
WRITES = ("POST", "PATCH", "PUT", "DELETE")


def _leftovers(c: Consultant) -> list[Any]:
    return (c.fo_rows(f"CustomersV3?cross-company=true&$filter=CustomerAccount eq '{PREFIX}-*'")
            + c.dv_rows(f"accounts?$select=accountnumber&$filter=startswith(accountnumber,'{PREFIX}')"))


def _context(step_context: Any, sandbox: dict[str, Any], companies: list[str], tmp_path: Path,
             **params: Any) -> Any:
    ctx = step_context(sandbox, params={"legal_entities": companies, **FAST, **params})
    ctx.evidence_dir = tmp_path / "runs" / "run-1-evidence"  # runs/ keeps the round-trip memory
    set_plan(ctx, [(n, "initial-sync", "finops") for n in CUSTOMER_MAPS])
    return ctx


def _csv(path: str | Path) -> list[dict[str, str]]:
    return list(csv.DictReader(Path(path).read_text(encoding="utf-8").splitlines()))


def _writes(ctx: Any) -> list[str]:
    return [f"{e.method} {e.url}" for e in ctx.session.journal.entries()
            if e.method in WRITES and ("/dataverse/" in e.url or "/finops/" in e.url)]


def test_a_good_sync_reconciles_and_the_round_trip_passes_and_cleans_up(linked_sandbox, step_context,
                                                                       tmp_path: Path) -> None:
    sandbox = linked_sandbox("existing-new", rows=20, legal_entities=["USMF", "GBSI"])
    c = Consultant(sandbox)
    try:
        run_maps(c, CUSTOMER_MAPS)
        ctx = _context(step_context, sandbox, ["USMF", "GBSI"], tmp_path)
        result = STEPS["verify"]().execute(ctx)
        assert result.status == StepStatus.PASSED, result.checks
        rows = {(r["map"], r["company"]): r for r in result.tables["reconciliation"]}
        assert set(rows) == {(CUR, "(global)"), (LE, "(global)")} | {
            (m, co) for m in (TERMS, GROUPS, ACCOUNTS) for co in ("USMF", "GBSI")}
        usmf = rows[(ACCOUNTS, "USMF")]
        orgs = c.fo_rows("CustomersV3?cross-company=true&$filter=dataAreaId eq 'usmf' and "
                         "PartyType eq 'Organization'")
        assert usmf["finops_rows"] == usmf["dataverse_rows"] == len(orgs) > 0
        assert rows[(LE, "(global)")]["finops_rows"] == 2  # limited to the connection's companies
        assert all(r["status"] == "PASS" for r in rows.values())
        stages = {ch.name: ch.status for ch in result.checks if ch.name in ("F&O → Dataverse",
                                                                             "Dataverse → F&O", "clean-up")}
        assert stages == dict.fromkeys(("F&O → Dataverse", "Dataverse → F&O", "clean-up"), StepStatus.PASSED)
        assert _leftovers(c) == []
        recon, missing, differing, ineligible = (Path(p) for p in result.evidence_files)
        assert len(_csv(recon)) == len(rows)
        assert _csv(missing) == [] and _csv(differing) == [] and _csv(ineligible) == []
        # values were compared: every mapped two-way column, equal checksums on both sides
        assert usmf["columns_compared"] > 30 and usmf["finops_checksum"] == usmf["dataverse_checksum"] != ""

        writes = len(_writes(ctx))
        again = STEPS["verify"]().execute(ctx)
        assert again.status == StepStatus.ALREADY_DONE, again.checks
        assert len(_writes(ctx)) == writes  # the round trip is not repeated
        assert "round trip passed on" in again.summary
        runs = tmp_path / "runs"
        remembered = json.loads((runs / ".dw-state" / "round-trips.json").read_text())
        assert [t["account"].startswith(PREFIX) for t in remembered.values()] == [True]
        assert list(runs.glob("*.json")) == []  # nothing beside the run records looks like one
    finally:
        c.close()


def test_a_row_deleted_on_one_side_fails_with_its_key(linked_sandbox, step_context, tmp_path: Path) -> None:
    sandbox = linked_sandbox("existing-new", rows=20, legal_entities=["USMF"])
    c = Consultant(sandbox)
    try:
        run_maps(c, CUSTOMER_MAPS)
        c.portal("POST", f"/dualwrite/maps/{catalog.table_map(ACCOUNTS).id}/stop")  # no live sync of deletes
        gone_in_dv = organization(c, "usmf")["CustomerAccount"]
        (account,) = c.dv_rows(f"accounts?$select=accountid&$filter=accountnumber eq '{gone_in_dv}'")
        assert c.dv("DELETE", f"accounts({account['accountid']})").status_code == 204
        last = c.fo_rows("CustomersV3?cross-company=true&$filter=dataAreaId eq 'usmf' and "
                         "PartyType eq 'Organization'&$orderby=CustomerAccount desc")[0]
        gone_in_fo = last["CustomerAccount"]
        r = c.fo("DELETE", f"CustomersV3(dataAreaId='usmf',CustomerAccount='{gone_in_fo}')?"
                           "cross-company=true")
        assert r.status_code == 204, r.text

        ctx = _context(step_context, sandbox, ["USMF"], tmp_path, **{"verify.round_trip": "never"})
        result = STEPS["verify"]().execute(ctx)
        assert result.status == StepStatus.FAILED
        (row,) = [r for r in result.tables["reconciliation"] if r["status"] == "FAIL"]
        assert (row["map"], row["company"]) == (ACCOUNTS, "USMF")
        assert row["finops_rows"] == row["dataverse_rows"]  # same counts, different keys
        samples = (row["sample_missing_in_dataverse"], row["sample_missing_in_finops"])
        assert samples == (gone_in_dv, gone_in_fo)
        missing_csv = result.evidence_files[1]
        assert [(m["missing_in"], m["key"]) for m in _csv(missing_csv)] == [
            ("Dataverse", gone_in_dv), ("F&O", gone_in_fo)]
        assert missing_csv in result.next_action and "initial sync" in result.next_action
        (check,) = [ch for ch in result.checks if ch.status == StepStatus.FAILED]
        assert check.name == f"{ACCOUNTS} USMF" and missing_csv in check.fix
    finally:
        c.close()


def test_values_that_differ_fail_with_both_sides_values_and_equal_data_in_other_forms_passes(
        linked_sandbox, step_context, tmp_path: Path) -> None:
    """Same counts and keys, one value changed on one side (live sync stopped): verify fails naming
    the row and the column with both values; text with spaces around it, or a choice through its
    value map, is the same data and passes."""
    sandbox = linked_sandbox("existing-new", rows=20, legal_entities=["USMF"])
    c = Consultant(sandbox)
    try:
        run_maps(c, CUSTOMER_MAPS)
        c.portal("POST", f"/dualwrite/maps/{catalog.table_map(ACCOUNTS).id}/stop")  # no live sync
        orgs = c.fo_rows("CustomersV3?cross-company=true&$filter=dataAreaId eq 'usmf' and "
                         "PartyType eq 'Organization'&$orderby=CustomerAccount")
        same, changed = orgs[0], orgs[1]
        (same_dv,) = c.dv_rows(f"accounts?$filter=accountnumber eq '{same['CustomerAccount']}'")
        (changed_dv,) = c.dv_rows(f"accounts?$filter=accountnumber eq '{changed['CustomerAccount']}'")
        assert c.dv("PATCH", f"accounts({same_dv['accountid']})",
                    {"name": f"  {same['OrganizationName']} "}).status_code == 204
        hold = 806380005 if changed["OnHoldStatus"] != "Never" else 806380000
        group = "90" if changed["CustomerGroupId"] != "90" else "10"
        (other,) = c.dv_rows(f"msdyn_customergroups?$filter=msdyn_groupid eq '{group}' and "
                             f"_msdyn_company_value eq {changed_dv['_msdyn_company_value']}")
        assert c.dv("PATCH", f"accounts({changed_dv['accountid']})",
                    {"msdyn_onholdstatus": hold, "telephone1": "+1 999", "msdyn_customergroupid@odata.bind":
                     f"msdyn_customergroups({other['msdyn_customergroupid']})"}).status_code == 204

        ctx = _context(step_context, sandbox, ["USMF"], tmp_path, **{"verify.round_trip": "never"})
        result = STEPS["verify"]().execute(ctx)
        assert result.status == StepStatus.FAILED
        (row,) = [r for r in result.tables["reconciliation"] if r["status"] == "FAIL"]
        assert (row["map"], row["finops_rows"], row["missing_in_dataverse"], row["missing_in_finops"]) == \
            (ACCOUNTS, row["dataverse_rows"], 0, 0)
        assert row["differing_rows"] == 1 and row["sample_differing"] == changed["CustomerAccount"]
        assert row["finops_checksum"] != row["dataverse_checksum"]
        differing = _csv(result.evidence_files[2])
        assert {(d["key"], d["column"], d["finops_value"], d["dataverse_value"]) for d in differing} == {
            (changed["CustomerAccount"], "OnHoldStatus ↔ msdyn_onholdstatus", changed["OnHoldStatus"].lower(),
             "never" if hold == 806380005 else "no"),
            (changed["CustomerAccount"], "PrimaryContactPhone ↔ telephone1", changed["PrimaryContactPhone"],
             "+1 999"),
            (changed["CustomerAccount"], "CustomerGroupId ↔ msdyn_customergroupid.msdyn_groupid",
             changed["CustomerGroupId"], group)}
        (check,) = [ch for ch in result.checks if ch.status == StepStatus.FAILED]
        assert "values of" in check.evidence and result.evidence_files[2] in check.fix
    finally:
        c.close()


def test_a_new_company_gets_a_temporary_customer_group_for_the_round_trip(linked_sandbox, step_context,
                                                                          tmp_path: Path) -> None:
    sandbox = linked_sandbox("new-new", legal_entities=["DAT"])
    c = Consultant(sandbox)
    try:
        run_maps(c, CUSTOMER_MAPS, initial_sync=False)  # new-new: table maps live, nothing to sync
        ctx = _context(step_context, sandbox, ["DAT"], tmp_path)
        set_plan(ctx, [(n, "skip", "dataverse") for n in CUSTOMER_MAPS])
        result = STEPS["verify"]().execute(ctx)
        assert result.status == StepStatus.PASSED, result.checks
        assert result.tables["reconciliation"] == []  # nothing moved: live sync is what is proven
        creates = [w for w in _writes(ctx) if w.startswith("POST") and w.endswith("/CustomerGroups")]
        assert len(creates) == 1
        assert c.fo_rows("CustomerGroups?cross-company=true") == []
        assert c.dv_rows("msdyn_customergroups?$select=msdyn_groupid") == [] and _leftovers(c) == []
    finally:
        c.close()


def test_a_failing_direction_is_named_and_the_customer_is_still_cleaned_up(linked_sandbox, step_context,
                                                                           tmp_path: Path) -> None:
    sandbox = linked_sandbox("existing-new", rows=12, legal_entities=["USMF"])
    c = Consultant(sandbox)
    try:
        run_maps(c, CUSTOMER_MAPS)
        accounts = catalog.table_map(ACCOUNTS).id
        c.portal("POST", f"/dualwrite/maps/{accounts}/stop")
        c.portal("PATCH", f"/dualwrite/maps/{accounts}", {"remove": ["name"]})  # names no longer sync
        run_maps(c, [ACCOUNTS], initial_sync=False)
        ctx = _context(step_context, sandbox, ["USMF"], tmp_path, **{"verify.timeout_s": 0.5})
        result = STEPS["verify"]().execute(ctx)
        assert result.status == StepStatus.FAILED
        assert result.summary.endswith("round trip failed (Dataverse → F&O)")
        stages = {ch.name: ch for ch in result.checks}
        assert stages["F&O → Dataverse"].status == StepStatus.PASSED
        assert "did not show the name changed in Dataverse" in stages["Dataverse → F&O"].evidence
        assert stages["clean-up"].status == StepStatus.PASSED and _leftovers(c) == []
        assert "'Dataverse → F&O'" in result.next_action

        c.portal("POST", f"/dualwrite/maps/{catalog.table_map(GROUPS).id}/stop")
        r = c.fo("POST", "CustomerGroups", {"dataAreaId": "usmf", "CustomerGroupId": "0001"})  # F&O only
        assert r.status_code == 201, r.text
        ctx = _context(step_context, sandbox, ["USMF"], tmp_path, **{"verify.round_trip": "always"})
        result = STEPS["verify"]().execute(ctx)
        assert result.summary.endswith("round trip failed (F&O → Dataverse)"), result.checks
        assert "F&O refused customer" in {ch.name: ch for ch in result.checks}["F&O → Dataverse"].evidence
        assert _leftovers(c) == []
    finally:
        c.close()


def test_against_real_environments_the_round_trip_waits_for_confirmation(linked_sandbox, step_context,
                                                                          tmp_path: Path) -> None:
    sandbox = linked_sandbox("existing-new", rows=12, legal_entities=["USMF"])
    c = Consultant(sandbox)
    try:
        run_maps(c, CUSTOMER_MAPS)
        ctx = _context(step_context, sandbox, ["USMF"], tmp_path)
        ctx.params = ctx.params.model_copy(update={"sandbox": None})  # as for environments of a customer
        waiting = STEPS["verify"]().execute(ctx)
        assert waiting.status == StepStatus.WAITING and "live round trip in USMF" in waiting.summary
        assert waiting.next_action.startswith("The live round trip writes into both environments")
        assert "options.confirm_irreversible" in waiting.next_action
        ctx.dry_run, ctx.confirm = True, lambda what: True
        assert STEPS["verify"]().execute(ctx).status == StepStatus.SKIPPED  # a dry run never writes
        assert _writes(ctx) == []
        ctx.dry_run = False
        assert STEPS["verify"]().execute(ctx).status == StepStatus.PASSED  # confirmed: the trip is made
        assert _writes(ctx) and _leftovers(c) == []
    finally:
        c.close()


def test_what_a_killed_round_trip_left_is_reported_with_never_and_deleted_by_the_next_round_trip(
        linked_sandbox, step_context, tmp_path: Path) -> None:
    sandbox = linked_sandbox("new-new", legal_entities=["DAT"])
    c = Consultant(sandbox)
    try:
        run_maps(c, CUSTOMER_MAPS, initial_sync=False)
        # What a round trip killed after its F&O create leaves: its temporary group and customer,
        # both synced to Dataverse.
        customer = {"CustomerAccount": f"{PREFIX}-0000BEEF", "PartyType": "Organization",
                    "OrganizationName": "killed", "CustomerGroupId": "BEEFRT"}
        for path, row in (("CustomerGroups", {"CustomerGroupId": "BEEFRT", "Description": TEMPORARY_GROUP}),
                          ("CustomersV3", customer)):
            r = c.fo("POST", path, {"dataAreaId": "dat", **row})
            assert r.status_code == 201, r.text
        assert len(_leftovers(c)) == 2
        ctx = _context(step_context, sandbox, ["DAT"], tmp_path, **{"verify.round_trip": "never"})
        set_plan(ctx, [(n, "skip", "dataverse") for n in CUSTOMER_MAPS])
        reported = STEPS["verify"]().execute(ctx)
        assert reported.status == StepStatus.WARNING and _writes(ctx) == []
        note = {ch.name: ch for ch in reported.checks}["earlier round trips"]
        assert f"customer {PREFIX}-0000BEEF and customer group BEEFRT in DAT" in note.evidence

        ctx = _context(step_context, sandbox, ["DAT"], tmp_path)
        set_plan(ctx, [(n, "skip", "dataverse") for n in CUSTOMER_MAPS])
        result = STEPS["verify"]().execute(ctx)
        assert result.status == StepStatus.PASSED, result.checks
        cleaned = {ch.name: ch for ch in result.checks}["earlier round trip cleaned up"]
        assert cleaned.status == StepStatus.PASSED
        assert _leftovers(c) == [] and c.fo_rows("CustomerGroups?cross-company=true") == []
    finally:
        c.close()
