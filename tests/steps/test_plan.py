"""The plan: the decision matrix (every row, with the boundaries), constraints, and sandbox plans."""

from __future__ import annotations

import csv
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from dw_helpers import Consultant, stamp
from plan_helpers import LES, unquote_customers
from sync_helpers import set_plan

from dwlib import catalog
from dwlib.params import ParamsError
from dwlib.steps import STEPS
from dwlib.steps.base import StepStatus
from dwlib.steps.plan import (
    ACTIVATE_SKIP,
    BOOTSTRAP_DV,
    CREATE_FO_COMPANY,
    DEFAULT_MAPS,
    MIGRATE_OUTSIDE,
    MIGRATE_TO_DV,
    MIGRATE_TO_FO,
    PLAN_CSV,
    RUN_INITIAL,
    PlanStep,
    blockers,
    build_plan,
    decide,
    scenario_states,
)
from dwlib.steps.support.reconcile import count, reconcile

MIGRATE = (MIGRATE_OUTSIDE, ACTIVATE_SKIP)
NEW_EXISTING = (CREATE_FO_COMPANY, BOOTSTRAP_DV)
ACCOUNTS, CONTACTS = "Customers V3 (accounts)", "Customers V3 (contacts)"
PREREQUISITES = ["Currencies (transactioncurrencies)", "Terms of payment (msdyn_paymentterms)",
                 "Customer groups (msdyn_customergroups)"]

# Every row of the matrix in initial-sync-guidance.md (dualwrite-facts §5.1), with the values
# around its limits: "<" below, the undefined boundary itself (conservative: migrate), ">" above.
MATRIX = [
    # F&O, Dataverse, has data, single-threaded, volume → actions
    ("new", "new", False, True, 0, (ACTIVATE_SKIP,)),
    ("new", "new", False, False, 0, (ACTIVATE_SKIP,)),
    ("new", "new", True, True, 499_999, (MIGRATE_TO_FO, RUN_INITIAL)),
    ("new", "new", True, False, 499_999, (MIGRATE_TO_DV, RUN_INITIAL)),
    ("new", "new", True, True, 100_000, (MIGRATE_TO_FO, RUN_INITIAL)),  # 70,000 is not a New/New limit
    ("new", "new", True, True, 500_000, MIGRATE),
    ("new", "new", True, False, 500_000, MIGRATE),
    ("new", "new", True, False, 500_001, MIGRATE),
    ("new", "existing", True, True, 69_999, (*NEW_EXISTING, RUN_INITIAL)),
    ("new", "existing", True, True, 70_000, (*NEW_EXISTING, *MIGRATE)),
    ("new", "existing", True, True, 70_001, (*NEW_EXISTING, *MIGRATE)),
    ("new", "existing", True, False, 69_999, (*NEW_EXISTING, RUN_INITIAL)),
    ("new", "existing", True, False, 499_999, (*NEW_EXISTING, RUN_INITIAL)),
    ("new", "existing", True, False, 500_000, (*NEW_EXISTING, *MIGRATE)),
    ("new", "existing", True, False, 500_001, (*NEW_EXISTING, *MIGRATE)),
    ("new", "existing", True, True, 500_001, (*NEW_EXISTING, *MIGRATE)),
    ("existing", "new", True, True, 499_999, (RUN_INITIAL,)),
    ("existing", "new", True, False, 499_999, (RUN_INITIAL,)),
    ("existing", "new", True, True, 100_000, (RUN_INITIAL,)),  # nothing goes Dataverse → F&O
    ("existing", "new", True, True, 500_000, MIGRATE),
    ("existing", "new", True, False, 500_001, MIGRATE),
    ("existing", "existing", True, True, 69_999, (BOOTSTRAP_DV, RUN_INITIAL)),
    ("existing", "existing", True, True, 70_000, (BOOTSTRAP_DV, *MIGRATE)),
    ("existing", "existing", True, True, 70_001, (BOOTSTRAP_DV, *MIGRATE)),
    ("existing", "existing", True, False, 70_001, (BOOTSTRAP_DV, RUN_INITIAL)),
    ("existing", "existing", True, False, 499_999, (BOOTSTRAP_DV, RUN_INITIAL)),
    ("existing", "existing", True, False, 500_000, (BOOTSTRAP_DV, *MIGRATE)),
    ("existing", "existing", True, False, 500_001, (BOOTSTRAP_DV, *MIGRATE)),
]


@pytest.mark.parametrize(("finops", "dataverse", "has_data", "single", "volume", "actions"), MATRIX)
def test_every_matrix_row(finops, dataverse, has_data, single, volume, actions) -> None:
    # The volume on the Dataverse side, the one going to F&O (the worst case of each row).
    d = decide(finops, dataverse, has_data, single_threaded=single, volume=volume, to_finops=volume)
    assert d.actions == actions
    expected = ("migrate" if MIGRATE_OUTSIDE in actions else
                "initial-sync" if RUN_INITIAL in actions else "skip")
    assert d.action == expected
    assert d.matrix_row.startswith(f"{finops} F&O / {dataverse} Dataverse")


def test_matrix_row_names_the_limit_it_used() -> None:
    ee = ("existing", "existing", True)
    assert decide(*ee, single_threaded=True, volume=70_000, to_finops=70_000).matrix_row == \
        "existing F&O / existing Dataverse, single-threaded, 70,000 rows or more from Dataverse to F&O"
    assert decide("new", "existing", True, single_threaded=False, volume=1, to_finops=1).matrix_row == \
        "new F&O / existing Dataverse, multi-threaded, fewer than 500,000 rows"
    low = replace(catalog.limits(), initial_sync_rows_per_legal_entity=10)
    # Past the per-legal-entity limit every map migrates, single-threaded ones too.
    assert decide(*ee, single_threaded=True, volume=10, to_finops=0, limits=low).action == "migrate"
    assert decide(*ee, single_threaded=True, volume=9, to_finops=9, limits=low).action == "initial-sync"


@pytest.mark.parametrize("sides", [("existing", "existing"), ("new", "existing")])
def test_the_70000_rule_looks_at_the_dataverse_to_finops_direction_only(sides) -> None:
    # 100,000 customers of one company in F&O go to Dataverse: that direction is multithreaded.
    fo_heavy = decide(*sides, True, single_threaded=True, volume=100_000, to_finops=500)
    assert fo_heavy.action == "initial-sync"
    assert fo_heavy.matrix_row.endswith("fewer than 70,000 rows from Dataverse to F&O")
    dv_heavy = decide(*sides, True, single_threaded=True, volume=70_000, to_finops=70_000)
    assert dv_heavy.action == "migrate"


@pytest.mark.parametrize(("scenario", "states"), [
    ("new-new", ("new", "new")), ("new-data-new", ("new", "new")), ("new-existing", ("new", "existing")),
    ("new-data-existing", ("new", "existing")), ("existing-new", ("existing", "new")),
    ("existing-existing", ("existing", "existing"))])
def test_scenarios_give_the_matrix_inputs(scenario, states) -> None:
    assert scenario_states(scenario) == states


def test_global_constraints() -> None:
    lim = catalog.limits()
    assert blockers(legal_entities=40, lookups=9, dataverse_rows=9, quoted_rows=0) == []
    assert blockers(legal_entities=41, lookups=9, dataverse_rows=9, quoted_rows=0) == \
        ["41 legal entities: initial writes support 40"]
    # "10 or more lookups" is the boundary: 10 blocks, 9 does not.
    assert lim.failing_lookups == 10
    assert blockers(legal_entities=1, lookups=10, dataverse_rows=1, quoted_rows=0) == [
        "10 lookups on the Dataverse side (10 or more fail the export; or split the lookups)"]
    # Lookups only matter when Dataverse has rows to export.
    assert blockers(legal_entities=1, lookups=lim.failing_lookups + 1, dataverse_rows=0, quoted_rows=0) == []
    assert "double quotes" in blockers(legal_entities=1, lookups=0, dataverse_rows=0, quoted_rows=2)[0]


def _customers(c: Consultant) -> Counter[tuple[str, str]]:
    rows = c.fo_rows("CustomersV3?cross-company=true&$select=dataAreaId,PartyType,CustomerAccount")
    return Counter((r["dataAreaId"].upper(), r["PartyType"]) for r in rows)


def test_plan_counts_both_sides_and_publishes_the_plan(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("existing-new", rows=40, legal_entities=LES)
    c = Consultant(sandbox)
    try:
        unquote_customers(c)
        customers = _customers(c)
    finally:
        c.close()
    ctx = step_context(sandbox, params={"legal_entities": LES}, dry_run=True)  # the plan runs in dry runs
    result = PlanStep().execute(ctx)
    assert result.status == StepStatus.PASSED

    rows = ctx.run_state["plan"]
    assert [r.name for r in rows] == catalog.dependency_order(DEFAULT_MAPS)
    by = {r.name: r for r in rows}
    assert by[ACCOUNTS].finops_rows == {le: customers[(le, "Organization")] for le in LES}
    assert by[CONTACTS].finops_rows == {le: customers[(le, "Person")] for le in LES}
    assert by[ACCOUNTS].dataverse_rows == dict.fromkeys(LES, 0)
    assert by["Legal entities (cdm_companies)"].finops_rows == {"(global)": 4}
    for r in rows:
        assert (r.action, r.master, r.skip_initial_sync) == ("initial-sync", "finops", False)
        # The legal-entities step ran the Legal entities map already: it brings the companies.
        assert r.state == ("Running" if r.name == "Legal entities (cdm_companies)" else "Not running")
        assert r.quoted_rows == 0
        assert r.matrix_row == "existing F&O / new Dataverse, fewer than 500,000 rows"
    # The estimate uses the documented "100 records a minute" and says so next to itself.
    assert by[ACCOUNTS].estimate_s == pytest.approx(sum(by[ACCOUNTS].finops_rows.values()) * 60 / 100)
    table_row = by[ACCOUNTS].row()
    columns = list(table_row)
    assert columns[columns.index("estimate") + 1] == "estimate_basis"
    assert table_row["estimate_basis"].startswith("100 records a minute")
    assert "learn.microsoft.com/en-us/training/modules/extensions-finance-operations-power-platform/" \
           "error-handling" in table_row["estimate_basis"]
    migrate_basis = replace(by[ACCOUNTS], action="migrate").row()["estimate_basis"]
    assert "ASSUMED" in migrate_basis and "no documented DMF import rate" in migrate_basis

    with open(Path(ctx.evidence_dir) / PLAN_CSV, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [t["map"] for t in table] == [r.name for r in rows]
    assert table == [{k: str(v) for k, v in r.row().items()} for r in rows]
    assert result.tables["plan"] == [r.row() for r in rows]
    assert build_plan(ctx) == rows  # recomputed from the real state: the same plan


def test_low_limits_and_quotes_make_maps_migrate(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("existing-new", rows=40, legal_entities=LES)
    c = Consultant(sandbox)
    try:
        unquote_customers(c)
        account = c.fo_rows("CustomersV3?cross-company=true&$filter=PartyType eq 'Organization'&$top=1")[0]
        r = c.fo("PATCH", f"CustomersV3(dataAreaId='{account['dataAreaId']}',CustomerAccount="
                          f"'{account['CustomerAccount']}')?cross-company=true",
                 {"OrganizationName": 'The "Quoted" Company'})
        assert r.status_code == 204, r.text
    finally:
        c.close()
    rows = {r.name: r for r in build_plan(step_context(sandbox, params={"legal_entities": LES}))}
    assert rows[ACCOUNTS].action == "migrate" and rows[ACCOUNTS].quoted_rows == 1
    assert "1 rows hold double quotes" in rows[ACCOUNTS].reason
    assert rows[CONTACTS].action == "initial-sync"
    for name in PREREQUISITES:  # the migrated rows refer to them: migrated too
        assert rows[name].action == "migrate" and f"prerequisite of {ACCOUNTS}" in rows[name].reason
    assert rows["Legal entities (cdm_companies)"].action == "initial-sync"  # linking creates them

    contacts = max(rows[CONTACTS].finops_rows.values())
    low = step_context(sandbox, params={"legal_entities": LES,
                                        "plan.limits.initial_sync_rows_per_legal_entity": contacts})
    rows = {r.name: r for r in build_plan(low)}
    assert rows[CONTACTS].action == "migrate" and rows[CONTACTS].skip_initial_sync
    assert rows[CONTACTS].matrix_row == f"existing F&O / new Dataverse, {contacts:,} rows or more"


def test_new_environments_without_data_skip_and_running_maps_are_shown(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("new-new")
    c = Consultant(sandbox)
    try:
        c.portal("POST", "/dualwrite/maps/currencies/run", {"initial_sync": False})
    finally:
        c.close()
    rows = {r.name: r for r in build_plan(step_context(sandbox))}
    assert rows[ACCOUNTS].action == "skip" and rows[ACCOUNTS].skip_initial_sync
    assert rows[ACCOUNTS].matrix_row == "new F&O / new Dataverse, no data"
    assert rows[ACCOUNTS].finops_rows == {"DAT": 0} and rows[ACCOUNTS].estimate_s == 0
    assert rows["Currencies (transactioncurrencies)"].state == "Running"
    assert "already Running" in rows["Currencies (transactioncurrencies)"].reason


def test_parameters_choose_maps_master_and_skip(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("existing-existing", rows=20, legal_entities=LES)
    c = Consultant(sandbox)
    try:
        unquote_customers(c)
        # One Dataverse account in scope (company set) with a quote in its name.
        usmf = c.dv_rows("cdm_companies?$filter=cdm_companycode eq 'USMF'")[0]["cdm_companyid"]
        account = c.dv_rows("accounts?$filter=customertypecode eq 3 and accountnumber ne null&$top=1")[0]
        r = c.dv("PATCH", f"accounts({account['accountid']})",
                 {"name": 'A "quoted" name', "msdyn_company@odata.bind": f"cdm_companies({usmf})"})
        assert r.status_code == 204, r.text
    finally:
        c.close()
    rows = {r.name: r for r in build_plan(step_context(sandbox, params={"legal_entities": LES}))}
    assert (rows[ACCOUNTS].action, rows[ACCOUNTS].quoted_rows) == ("migrate", 1)
    assert rows[ACCOUNTS].dataverse_rows["USMF"] == 1
    params = {"legal_entities": LES,
              "table_maps": [{"name": "Customers V3", "initial_sync_master": "dataverse",
                              "skip_initial_sync": True}]}
    rows = {r.name: r for r in build_plan(step_context(sandbox, params=params))}
    assert list(rows) == catalog.dependency_order([ACCOUNTS, CONTACTS])
    for name in (ACCOUNTS, CONTACTS):
        assert rows[name].master == "dataverse"
        assert rows[name].action == "skip" and rows[name].skip_initial_sync
        assert "table_maps: skip_initial_sync" in rows[name].reason
    # Rows there are not bootstrapped yet: not eligible, reported.
    assert rows[ACCOUNTS].dataverse_without_company > 0
    assert "not synced until bootstrapped" in rows[ACCOUNTS].reason
    with pytest.raises(ParamsError, match="no table map 'Contacts V9'"):  # refused with the file
        step_context(sandbox, params={"legal_entities": LES, "table_maps": ["Contacts V9"]})


def test_created_companies_count_once_in_the_connection(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("new-data-existing", rows=40, legal_entities=["DAT"])
    params = {"legal_entities": LES, "companies": [{"code": code, "name": f"Contoso {code}"} for code in LES]}
    rows = {r.name: r for r in build_plan(step_context(sandbox, params=params))}
    # Before the company steps the connection holds DAT only: the F&O data of USMF … waits for them.
    assert rows[ACCOUNTS].finops_rows == {"DAT": 0} and rows[ACCOUNTS].action == "initial-sync"
    assert rows[ACCOUNTS].matrix_row == \
        "new F&O / existing Dataverse, single-threaded, fewer than 70,000 rows from Dataverse to F&O"
    assert rows[ACCOUNTS].dataverse_without_company > 0  # existing rows, not bootstrapped yet

    c = Consultant(sandbox)
    try:
        # Added with initial writes: the running Legal entities map writes USMF's company row.
        c.portal("POST", "/dualwrite/legal-entities", {"add": ["USMF"], "skip_initial_writes": False})
        deadline = time.monotonic() + 30
        while not c.dv_rows("cdm_companies?$filter=cdm_companycode eq 'USMF'"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        customers = _customers(c)
    finally:
        c.close()
    rows = {r.name: r for r in build_plan(step_context(sandbox, params=params))}
    assert rows[ACCOUNTS].finops_rows == {"DAT": 0, "USMF": customers[("USMF", "Organization")]}


def test_the_plan_after_the_bootstrap_counts_the_new_companys_volume_against_the_same_limits(
        linked_sandbox, step_context) -> None:
    # new-data-existing: a company of its own for the Dataverse data, created, added, bootstrapped.
    sandbox = linked_sandbox("new-data-existing", rows=40, legal_entities=["DAT", "USMF"])
    c = Consultant(sandbox)
    try:
        created = c.fo("POST", "LegalEntities", {"LegalEntityId": "CRM", "Name": "Contoso CRM"})
        assert created.status_code == 201, created.text
        c.portal("POST", "/dualwrite/legal-entities", {"add": ["CRM"], "skip_initial_writes": False})
        deadline = time.monotonic() + 30
        while not (crm := c.dv_rows("cdm_companies?$filter=cdm_companycode eq 'CRM'")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        accounts = c.dv_rows("accounts?$select=accountid&$filter=customertypecode eq 3 and "
                             "accountnumber ne null&$top=5")
        for a in accounts:
            r = c.dv("PATCH", f"accounts({a['accountid']})",
                     {"msdyn_company@odata.bind": f"cdm_companies({crm[0]['cdm_companyid']})"})
            assert r.status_code == 204, r.text
    finally:
        c.close()
    params = {"legal_entities": ["USMF", "CRM"], "companies": [{"code": "CRM", "name": "Contoso CRM"}],
              "plan.limits.single_threaded_dataverse_to_finops_rows": 5}
    rows = {r.name: r for r in build_plan(step_context(sandbox, params=params))}
    assert rows[ACCOUNTS].dataverse_rows["CRM"] == 5
    # Five bootstrapped rows of CRM going to F&O meet the (lowered) single-threaded limit: migrate.
    assert rows[ACCOUNTS].action == "migrate"
    assert rows[ACCOUNTS].matrix_row == ("new F&O / existing Dataverse, single-threaded, 5 rows or more from "
                                         "Dataverse to F&O")


def test_rows_dual_write_will_not_pick_up_are_counted_listed_and_warned_in_plan_and_verify(
        linked_sandbox, step_context) -> None:
    """Existing Dataverse rows without a company, without an account number, not customers or not
    sellable are counted per table, company and reason, listed in a CSV, and the step warns with the
    documented fix — in the plan and again in verify."""
    sandbox = linked_sandbox("existing-existing", rows=40, legal_entities=["USMF"])
    c = Consultant(sandbox)
    try:
        accounts = c.dv_rows("accounts?$select=accountid,accountnumber,customertypecode"
                             "&$filter=customertypecode eq 3 and accountnumber ne null&$orderby=accountid")
        customer, prospect, unnumbered = accounts[:3]
        for account in (customer, prospect, unnumbered):
            assert stamp(c, account["accountid"], "USMF").status_code == 204
        assert c.dv("PATCH", f"accounts({prospect['accountid']})", {"customertypecode": 8}).status_code == 204
        r = c.dv("PATCH", f"accounts({unnumbered['accountid']})", {"accountnumber": None})
        assert r.status_code == 204
        (contact,) = c.dv_rows("contacts?$select=contactid&$filter=msdyn_sellable eq false&$top=1")
        usmf = c.dv_rows("cdm_companies?$filter=cdm_companycode eq 'USMF'")[0]["cdm_companyid"]
        assert c.dv("PATCH", f"contacts({contact['contactid']})",
                    {"msdyn_company@odata.bind": f"/cdm_companies({usmf})"}).status_code == 204
        without_company = len(c.dv_rows("accounts?$select=accountid&$filter=_msdyn_company_value eq null"))
    finally:
        c.close()

    plan_ctx = step_context(sandbox, params={"legal_entities": ["USMF"]}, dry_run=True)
    for result in (PlanStep().execute(plan_ctx), _verify(step_context, sandbox)):
        assert result.status == StepStatus.WARNING, (
            [ch.evidence for ch in result.checks if ch.status != "passed"])
        table = {(r["table"], r["company"], r["reason"]): r["rows"] for r in result.tables["ineligible"]}
        assert table[("accounts", "USMF", "customertypecode not 3")] == 1
        assert table[("accounts", "USMF", "no accountnumber")] == 1
        assert table[("accounts", "(none)", "no company")] == without_company
        assert table[("contacts", "USMF", "msdyn_sellable not true")] == 1
        assert not any(k[1] == "USMF" and k[0] == "accounts" and v > 1 for k, v in table.items())
        listed = [r for r in _rows(result.evidence_files[-1]) if r["company"] == "USMF"]
        assert {(r["table"], r["row_id"], r["reason"]) for r in listed} == {
            ("accounts", prospect["accountid"], "customertypecode not 3"),
            ("accounts", unnumbered["accountid"], "no accountnumber"),
            ("contacts", contact["contactid"], "msdyn_sellable not true")}
        checks = {ch.name: ch for ch in result.checks if ch.status == StepStatus.WARNING}
        prospects = checks["accounts: rows dual-write will not pick up (customertypecode not 3)"]
        assert "Relationship Type to Customer" in prospects.fix and prospects.doc.endswith("customer-mapping")
        assert checks["accounts: rows dual-write will not pick up (no company)"].doc.endswith("company-data")
        sellable = checks["contacts: rows dual-write will not pick up (msdyn_sellable not true)"]
        assert "Sellable to Yes" in sellable.fix


def _rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _verify(step_context, sandbox):  # type: ignore[no-untyped-def]
    ctx = step_context(sandbox, params={"legal_entities": ["USMF"], "verify.round_trip": "never"})
    set_plan(ctx, [(n, "skip", "finops") for n in catalog.dependency_order(DEFAULT_MAPS)])
    return STEPS["verify"]().execute(ctx)


def test_plan_counts_as_reconcile_does_without_key_sets(linked_sandbox, step_context) -> None:
    """The plan's counts are reconcile's (key set, source filter, company, map filter), the Dataverse
    side read as one `$apply` aggregate per map instead of every key."""
    sandbox = linked_sandbox("existing-existing", rows=40, legal_entities=["USMF", "GBSI"])
    c = Consultant(sandbox)
    try:
        accounts = c.dv_rows("accounts?$select=accountid&$orderby=accountid"
                             "&$filter=customertypecode eq 3 and accountnumber ne null")
        for account, code in zip(accounts[:6], ["USMF"] * 4 + ["GBSI"] * 2, strict=True):
            assert stamp(c, account["accountid"], code).status_code == 204
        # stamped but not eligible: no key, or not a customer
        changes = [{"accountnumber": None}, {"customertypecode": 8}]
        for account, change in zip(accounts[:2], changes, strict=True):
            assert c.dv("PATCH", f"accounts({account['accountid']})", change).status_code == 204
    finally:
        c.close()
    ctx = step_context(sandbox, params={"legal_entities": ["USMF", "GBSI"]})
    names = [ACCOUNTS, "Customers V3 (contacts)", "Currencies (transactioncurrencies)"]
    journal = ctx.session.journal
    first = len(journal)
    counted = {r.map: r for r in count(ctx.session, names, ["USMF", "GBSI"])}
    applied = [e.url for e in journal.entries()[first:] if "$apply" in e.url or "%24apply" in e.url]
    assert len(applied) == 2, applied  # one aggregate per company-specific map
    expected: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
    for rec in reconcile(ctx.session, names, ["USMF", "GBSI"]):
        fo, dv = expected.setdefault(rec.map, ({}, {}))
        fo[rec.company], dv[rec.company] = rec.finops_rows, rec.dataverse_rows
    assert {m: (r.finops, r.dataverse) for m, r in counted.items()} == expected
    assert counted[ACCOUNTS].dataverse == {"USMF": 2, "GBSI": 2}
