"""migrate: nothing to do, F&O → Dataverse round trip, Dataverse → F&O with a refused row and resume,
Running maps stopped for the migration and run again by table-maps skipping the initial sync."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import pytest
from dw_helpers import Consultant
from plan_helpers import LES, column_differences, unquote_customers
from sync_helpers import CUSTOMER_MAPS, LE, run_maps, state

from dwlib import catalog
from dwlib.catalog.locales import LOCALE_DOC
from dwlib.steps.base import StepError, StepStatus
from dwlib.steps.migrate import MIGRATE_CSV, TO_DATAVERSE, Migrate
from dwlib.steps.plan import PlanStep
from dwlib.steps.support.dmf_package import read_package
from dwlib.steps.tablemaps import TableMaps

ACCOUNTS, CONTACTS = "Customers V3 (accounts)", "Customers V3 (contacts)"


def _context(step_context: Any, sandbox: dict[str, Any], consultant: Any = None, **params: Any) -> Any:
    ctx = step_context(sandbox, params={"legal_entities": LES, **params}, consultant=consultant)
    ctx.session.dmf.poll_s = 0.02  # the sandbox's DMF jobs take milliseconds
    return ctx


def _writes(ctx: Any) -> list[str]:
    services = (ctx.session.dataverse.root, ctx.session.finops.root)
    return [f"{e.method} {e.url}" for e in ctx.session.journal.entries()
            if e.method != "GET" and e.url.startswith(services) and "GetExecution" not in e.url]


def test_nothing_to_migrate(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("existing-new", rows=20, legal_entities=LES)
    c = Consultant(sandbox)
    try:
        unquote_customers(c)
    finally:
        c.close()
    ctx = _context(step_context, sandbox)
    result = Migrate().execute(ctx)  # the plan is recomputed: every map has its initial sync
    assert result.status == StepStatus.ALREADY_DONE and result.summary == "no map needs migration"
    assert _writes(ctx) == []


def test_finops_to_dataverse_round_trip(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("existing-new", rows=40, legal_entities=LES)
    ctx = _context(step_context, sandbox, **{"plan.limits.initial_sync_rows_per_legal_entity": 2})
    plan = PlanStep().execute(ctx)
    migrated = [r.name for r in ctx.run_state["plan"] if r.migrated]
    assert ACCOUNTS in migrated and CONTACTS in migrated, plan.tables

    result = Migrate().execute(ctx)
    assert result.status == StepStatus.PASSED, (result.summary, [c.evidence for c in result.checks])
    assert all(r["status"] == "PASS" for r in result.tables["reconciliation"])

    c = Consultant(sandbox)
    try:
        ids = {r["cdm_companyid"]: r["cdm_companycode"] for r in c.dv_rows("cdm_companies")}
        groups = {r["msdyn_customergroupid"]: r["msdyn_groupid"] for r in c.dv_rows("msdyn_customergroups")}
        terms = {r["msdyn_paymenttermid"]: r["msdyn_name"] for r in c.dv_rows("msdyn_paymentterms")}
        currencies = {r["transactioncurrencyid"]: r["isocurrencycode"]
                      for r in c.dv_rows("transactioncurrencies")}
        accounts = {a["accountnumber"]: a for a in c.dv_rows("accounts")}
        contacts = {a["msdyn_contactpersonid"]: a for a in c.dv_rows("contacts")}
        customers = c.fo_rows("CustomersV3?cross-company=true")
    finally:
        c.close()
    for fo in customers:
        if fo["PartyType"] == "Organization":
            dv = accounts[fo["CustomerAccount"]]
            assert (dv["name"], dv["creditlimit"], dv["customertypecode"]) == \
                (fo["OrganizationName"], fo["CreditLimit"], 3)
            assert groups[dv["_msdyn_customergroupid_value"]] == fo["CustomerGroupId"]
            assert terms[dv["_msdyn_paymentterm_value"]] == fo["PaymentTerms"]
            assert currencies[dv["_transactioncurrencyid_value"]] == fo["SalesCurrencyCode"]
        else:
            dv = contacts[fo["CustomerAccount"]]
            assert (dv["firstname"], dv["lastname"], dv["msdyn_sellable"]) == \
                (fo["PersonFirstName"], fo["PersonLastName"], True)
        assert ids[dv["_msdyn_company_value"]].lower() == fo["dataAreaId"]

    with open(Path(ctx.evidence_dir) / MIGRATE_CSV, newline="", encoding="utf-8") as fh:
        log = list(csv.DictReader(fh))
    assert len(log) == sum(v for k, v in result.counts.items() if "→" in k)
    assert {r["key"] for r in log if r["map"] == ACCOUNTS} == \
        {f["CustomerAccount"] for f in customers if f["PartyType"] == "Organization"}

    again_ctx = _context(step_context, sandbox, **{"plan.limits.initial_sync_rows_per_legal_entity": 2})
    again = Migrate().execute(again_ctx)
    assert again.status == StepStatus.ALREADY_DONE and _writes(again_ctx) == []


def test_dataverse_to_finops_reports_refused_rows_and_resumes(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("existing-existing", rows=30, legal_entities=LES)
    c = Consultant(sandbox)
    try:
        usmf = c.dv_rows("cdm_companies?$filter=cdm_companycode eq 'USMF'")[0]["cdm_companyid"]
        r = c.dv("POST", "msdyn_customergroups", {"msdyn_groupid": "10", "msdyn_description": "Wholesale",
                                                  "msdyn_company@odata.bind": f"cdm_companies({usmf})"})
        assert r.status_code == 204, r.text
        group = c.dv_rows("msdyn_customergroups?$filter=msdyn_groupid eq '10'")[0]["msdyn_customergroupid"]
        # Accounts only Dataverse has (the profile also shares some customers with F&O).
        chosen = c.dv_rows("accounts?$filter=customertypecode eq 3 and startswith(accountnumber,'ACC-')"
                           "&$top=3")
        for i, account in enumerate(chosen):  # two with a customer group, the last without: F&O refuses it
            body = {"msdyn_company@odata.bind": f"cdm_companies({usmf})"}
            if i < 2:
                body["msdyn_customergroupid@odata.bind"] = f"msdyn_customergroups({group})"
            assert c.dv("PATCH", f"accounts({account['accountid']})", body).status_code == 204

        ctx = _context(step_context, sandbox, **{"plan.limits.initial_sync_rows_per_legal_entity": 2})
        PlanStep().execute(ctx)
        assert any(r.name == ACCOUNTS and r.migrated for r in ctx.run_state["plan"])
        result = Migrate().execute(ctx)

        assert result.status == StepStatus.FAILED
        usmf_row = next(r for r in result.tables["reconciliation"]
                        if r["map"] == ACCOUNTS and r["company"] == "USMF")
        assert usmf_row["sample_missing_in_finops"] == chosen[2]["accountnumber"]
        errors = [ch.evidence for ch in result.checks if ch.name == "F&O import error"]
        assert len(errors) == 1 and "Customer group" in errors[0] and chosen[2]["accountnumber"] in errors[0]
        for account in chosen[:2]:
            where = f"CustomerAccount eq '{account['accountnumber']}'"
            fo = c.fo_rows(f"CustomersV3?cross-company=true&$filter={where}")
            assert len(fo) == 1 and fo[0]["dataAreaId"] == "usmf"
            assert (fo[0]["OrganizationName"], fo[0]["CustomerGroupId"], fo[0]["PartyType"]) == \
                (account["name"], "10", "Organization")
            (dv,) = c.dv_rows(f"accounts?$filter=accountid eq {account['accountid']}")
            # every mapped column, value maps (on-hold status, credit limit mandatory) included
            assert column_differences(c, ACCOUNTS, fo[0], dv, direction="to_finops") == []
            assert fo[0]["OnHoldStatus"] in ("No", "Invoice", "All")

        fix = c.dv("PATCH", f"accounts({chosen[2]['accountid']})",
                   {"msdyn_customergroupid@odata.bind": f"msdyn_customergroups({group})"})
        assert fix.status_code == 204
        resumed = Migrate().execute(_context(step_context, sandbox,
                                             **{"plan.limits.initial_sync_rows_per_legal_entity": 2}))
        problems = [ch.evidence for ch in resumed.checks if ch.status != StepStatus.PASSED]
        assert resumed.status == StepStatus.PASSED, problems
        assert resumed.counts == {f"{ACCOUNTS} Dataverse → F&O": 1, "failed": 0, "missing": 0}
    finally:
        c.close()


def test_running_maps_are_stopped_migrated_and_left_for_table_maps(linked_sandbox, step_context,
                                                                     portal_player) -> None:
    sandbox = linked_sandbox("existing-new", rows=40, legal_entities=LES)
    c = Consultant(sandbox)
    try:
        run_maps(c, CUSTOMER_MAPS, initial_sync=False)  # live, as the LCS link may leave them: rows differ
        limits = {"plan.limits.initial_sync_rows_per_legal_entity": 2}
        ctx = _context(step_context, sandbox, portal_player(sandbox), **limits)
        PlanStep().execute(ctx)
        migrated = [r.name for r in ctx.run_state["plan"] if r.migrated]
        assert ACCOUNTS in migrated

        result = Migrate().execute(ctx)
        assert result.status == StepStatus.PASSED, (
            [ch.evidence for ch in result.checks if ch.status != "passed"])
        assert all(r["status"] == "PASS" for r in result.tables["reconciliation"])
        (stop,) = [i for i in ctx.instructions if i.title.startswith("Stop table maps")]
        # The running maps with rows to move; Legal entities (rows made by linking) already reconciled.
        stopped = [n for n in migrated if n in CUSTOMER_MAPS and n != LE]
        assert LE in migrated and stop.title == f"Stop table maps {', '.join(stopped)}"
        assert {n: state(c, n) for n in stopped} == dict.fromkeys(stopped, "Not running")
        assert state(c, LE) == "Running"
        assert [ch.name for ch in result.checks if "stopped for the migration" in ch.name] == \
            [f"{n}: stopped for the migration" for n in stopped]

        maps = TableMaps().execute(ctx)
        assert maps.status == StepStatus.PASSED, maps.checks
        (run,) = [i for i in ctx.instructions if i.title.startswith("Run table map")]
        assert "clear Initial Sync (skip initial sync)." in " ".join(run.steps)
        assert all(n in run.title for n in stopped)
        assert {n: state(c, n) for n in stopped} == dict.fromkeys(stopped, "Running")

        again_ctx = _context(step_context, sandbox, portal_player(sandbox), **limits)
        again = Migrate().execute(again_ctx)
        assert again.status == StepStatus.ALREADY_DONE and _writes(again_ctx) == []
        assert again_ctx.instructions == []  # reconciled Running maps are left alone
    finally:
        c.close()


def test_a_paused_map_to_migrate_stops_the_step_saying_what_to_do(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("existing-new", rows=20, legal_entities=LES)
    c = Consultant(sandbox)
    try:
        run_maps(c, CUSTOMER_MAPS, initial_sync=False)
        c.portal("POST", f"/dualwrite/maps/{catalog.table_map(ACCOUNTS).id}/pause")
    finally:
        c.close()
    ctx = _context(step_context, sandbox, **{"plan.limits.initial_sync_rows_per_legal_entity": 2})
    PlanStep().execute(ctx)
    with pytest.raises(StepError, match=rf"cannot migrate while {re.escape(ACCOUNTS)} is Paused.*Resume"):
        Migrate().execute(ctx)
    assert _writes(ctx) == [] and ctx.instructions == []  # nothing stopped, nothing moved


def test_every_mapped_column_moves_in_the_packages_locale(linked_sandbox, step_context) -> None:
    """nl-NL packages (decimal commas, day-month-year dates): read in the locale F&O names, every
    mapped column of every migrated map arrives, value maps applied."""
    sandbox = linked_sandbox("existing-new", rows=30, legal_entities=LES, dmf_locale="nl-NL")
    ctx = _context(step_context, sandbox, **{"plan.limits.initial_sync_rows_per_legal_entity": 2})
    PlanStep().execute(ctx)
    result = Migrate().execute(ctx)
    assert result.status == StepStatus.PASSED, [ch.evidence for ch in result.checks if ch.status != "passed"]
    (loc,) = [ch for ch in result.checks if ch.name == "package locale (CSV-Unicode)"]
    assert loc.status == StepStatus.PASSED and "nl-nl" in loc.evidence
    export = read_package(ctx.evidence_dir / "migrate" / "customersv3-usmf-export.zip", "Customers V3")
    # Customers V3's two maps (accounts, contacts) share one export per company.
    assert result.counts[f"{ACCOUNTS} {TO_DATAVERSE}"] and result.counts[f"{CONTACTS} {TO_DATAVERSE}"]
    exported = sorted(p.name for p in (ctx.evidence_dir / "migrate").glob("customersv3-*-export.zip"))
    assert exported == sorted(f"customersv3-{c.lower()}-export.zip" for c in LES)
    assert any("," in r["DELIVERYADDRESSLATITUDE"] for r in export.rows)  # the package really is nl-NL

    c = Consultant(sandbox)
    try:
        accounts = {a["accountnumber"]: a for a in c.dv_rows("accounts")}
        contacts = {a["msdyn_contactpersonid"]: a for a in c.dv_rows("contacts")}
        for fo in c.fo_rows("CustomersV3?cross-company=true"):
            name, dv = ((ACCOUNTS, accounts) if fo["PartyType"] == "Organization" else (CONTACTS, contacts))
            assert column_differences(c, name, fo, dv[fo["CustomerAccount"]], direction="to_dataverse") == []
        terms = {(t["_msdyn_company_value"], t["msdyn_name"]): t for t in c.dv_rows("msdyn_paymentterms")}
        ids = {r["cdm_companycode"].lower(): r["cdm_companyid"] for r in c.dv_rows("cdm_companies")}
        for fo in c.fo_rows("PaymentTerms?cross-company=true"):
            dv = terms[(ids[fo["dataAreaId"]], fo["Name"])]
            assert column_differences(c, catalog.table_map("terms-of-payment").name, fo, dv,
                                      direction="to_dataverse") == []
    finally:
        c.close()


def test_a_package_in_another_locale_than_f_and_o_names_fails_with_the_documented_fix(
        linked_sandbox, step_context) -> None:
    """The source data format names no Language locale (DMF then writes in its user's nl-NL): the
    runbook reads it as en-us, the numbers do not parse, and the step says what to set."""
    sandbox = linked_sandbox("existing-new", rows=20, legal_entities=LES, dmf_locale="nl-NL")
    c = Consultant(sandbox)
    try:
        r = c.fo("PATCH", "DataManagementSourceDataFormats(SourceName='CSV-Unicode')", {"LanguageLocale": ""})
        assert r.status_code == 204, r.text
    finally:
        c.close()
    ctx = _context(step_context, sandbox, **{"plan.limits.initial_sync_rows_per_legal_entity": 2})
    PlanStep().execute(ctx)
    with pytest.raises(StepError, match="not a number in en-us") as failed:
        Migrate().execute(ctx)
    message = str(failed.value)
    assert "it names no Language locale" in message and "set Language locale to en-us" in message
    assert LOCALE_DOC in message
