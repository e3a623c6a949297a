"""bootstrap-simulate and bootstrap-apply against existing-existing sandboxes."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from dw_helpers import Consultant
from sync_helpers import ACCOUNTS, CUSTOMER_MAPS, run_maps

from dwlib.steps.base import StepError, StepStatus
from dwlib.steps.bootstrap import (
    APPLIED_CSV,
    FAILED_CSV,
    SIMULATION_CSV,
    BootstrapApply,
    BootstrapSimulate,
    StopMaps,
)

MAPPING = {"Contoso US": "USMF", "Contoso UK": "GBSI", "Contoso DE": "DEMF", "Contoso FR": "FRRT"}
PARAMS = {"bootstrap": {"mapping": MAPPING}}
SELECT = "$select=accountid,_msdyn_company_value,_owningbusinessunit_value,versionnumber"


def _rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _state(c: Consultant, table: str = "accounts") -> dict[str, dict[str, Any]]:
    key = "accountid" if table == "accounts" else "contactid"
    select = SELECT.replace("accountid", key)
    return {r[key]: r for r in c.dv_rows(f"{table}?{select}")}


def _expected(c: Consultant, table: str) -> Counter[str]:
    """Rows without company per mapped company code, straight from the sandbox."""
    units = {u["businessunitid"]: u["name"] for u in c.dv_rows("businessunits?$select=businessunitid,name")}
    rows = c.dv_rows(f"{table}?$select=_owningbusinessunit_value&$filter=_msdyn_company_value eq null")
    return Counter(MAPPING.get(units[r["_owningbusinessunit_value"]], "unmapped") for r in rows)


def _writes(ctx: Any) -> list[str]:
    """Calls to the environments other than reads (sign-in calls are not environment writes)."""
    services = (ctx.session.dataverse.root, ctx.session.finops.root)
    return [f"{e.method} {e.url}" for e in ctx.session.journal.entries()
            if e.method != "GET" and e.url.startswith(services)]


@pytest.fixture
def consultant() -> Any:
    made: list[Consultant] = []

    def make(connection: dict[str, Any]) -> Consultant:
        made.append(Consultant(connection))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_simulate_plans_every_row_and_writes_nothing(linked_sandbox, step_context, consultant) -> None:
    sandbox = linked_sandbox("existing-existing", rows=300)
    c = consultant(sandbox)
    before = {t: _state(c, t) for t in ("accounts", "contacts")}
    ctx = step_context(sandbox, params=PARAMS, dry_run=True)  # read-only: runs fully in a dry run

    result = BootstrapSimulate().execute(ctx)

    assert _writes(ctx) == []
    assert {t: _state(c, t) for t in ("accounts", "contacts")} == before
    rows = _rows(result.evidence_files[0])
    assert Path(result.evidence_files[0]).name == SIMULATION_CSV
    for table in ("accounts", "contacts"):
        expected = _expected(c, table)
        planned = Counter(r["company_code"] or "unmapped" for r in rows if r["table"] == table)
        assert planned == expected
        for code in MAPPING.values():
            assert result.counts[f"{table} {code}"] == expected[code]
    unmapped = [r for r in rows if not r["company_code"]]
    assert unmapped and all(r["reason"] == "owning business unit 'Contoso' is not in bootstrap.mapping"
                            for r in unmapped)
    assert result.counts["unmapped"] == len(unmapped)
    assert result.status == StepStatus.WARNING  # the root business unit's rows stay without company
    ids = {r["cdm_companycode"]: r["cdm_companyid"] for r in c.dv_rows("cdm_companies")}
    stamped = [r for r in rows if r["company_code"]]
    assert all(r["company_id"] == ids[r["company_code"]] and r["prior_company"] == "" for r in stamped)
    assert all(r["rule"] == "business unit" for r in stamped) and all(r["rule"] == "" for r in unmapped)
    assert result.counts["rule business unit"] == len(stamped)


def test_apply_stamps_only_rows_that_need_it_then_is_done(linked_sandbox, step_context, consultant) -> None:
    sandbox = linked_sandbox("existing-existing", rows=300)
    c = consultant(sandbox)
    ids = {r["cdm_companycode"]: r["cdm_companyid"] for r in c.dv_rows("cdm_companies")}
    units = {u["name"]: u["businessunitid"] for u in c.dv_rows("businessunits?$select=businessunitid,name")}
    # Someone stamped three US accounts with another company already: the bootstrap leaves them alone.
    us = [r for r in _state(c).values() if r["_owningbusinessunit_value"] == units["Contoso US"]][:3]
    for row in us:
        r = c.dv("PATCH", f"accounts({row['accountid']})",
                 {"msdyn_company@odata.bind": f"cdm_companies({ids['GBSI']})"})
        assert r.status_code == 204, r.text
    before = _state(c)
    expected = _expected(c, "accounts")

    unconfirmed = BootstrapApply().execute(step_context(sandbox, params=PARAMS))
    assert unconfirmed.status == StepStatus.WAITING and _state(c) == before
    bars: dict[str, list[int]] = {}

    class Bar:
        def __init__(self, label: str, total: int | None) -> None:
            self.label = label
            bars[label] = [total or 0]

        def update(self, n: int = 1) -> None:
            bars[self.label].append(n)

        def close(self) -> None:
            bars[self.label].append(-1)

    ctx = step_context(sandbox, params={**PARAMS, "options.batch_size": 40},
                       confirm=lambda what: "rows" in what, progress=Bar)
    result = BootstrapApply().execute(ctx)

    after = _state(c)
    assert result.status == StepStatus.WARNING, result.summary  # unmapped root-BU rows remain
    applied = _rows(Path(ctx.evidence_dir) / APPLIED_CSV)
    changed = {i for i in after if after[i]["versionnumber"] != before[i]["versionnumber"]}
    assert {r["row_id"] for r in applied if r["table"] == "accounts"} == changed
    assert all(r["prior_company"] == "" for r in applied)
    for row in us:  # untouched
        assert after[row["accountid"]] == before[row["accountid"]]
    by_unit = {v: k for k, v in units.items()}
    for i in changed:
        code = MAPPING[by_unit[after[i]["_owningbusinessunit_value"]]]
        assert after[i]["_msdyn_company_value"] == ids[code]
    assert Counter(r["company_code"] for r in applied if r["table"] == "accounts") == \
        Counter({k: v for k, v in expected.items() if k != "unmapped"})
    assert result.counts["remaining"] == 0 and result.counts["failed"] == 0
    for table in ("accounts", "contacts"):  # one bar per table: its total, the rows as they go, closed
        total, *steps, closed = bars[f"bootstrap {table}"]
        stamped = sum(v for k, v in result.counts.items() if k.startswith(f"{table} "))
        assert total == stamped == sum(steps) and len(steps) > 1 and closed == -1
    assert result.counts["unmapped"] == sum(_expected(c, t)["unmapped"] for t in ("accounts", "contacts"))
    assert _expected(c, "contacts").keys() <= {"unmapped"}

    again_ctx = step_context(sandbox, params=PARAMS, confirm=lambda what: True)
    again = BootstrapApply().execute(again_ctx)
    assert again.counts["stamped"] == 0 and again.counts["remaining"] == 0
    assert again.status == StepStatus.WARNING  # nothing to do; the unmapped rows are still reported
    assert _writes(again_ctx) == [] and _state(c) == after


def test_fault_threshold_stops_and_a_rerun_resumes(linked_sandbox, step_context, consultant) -> None:
    sandbox = linked_sandbox("existing-existing", rows=80)
    c = consultant(sandbox)
    victims: list[str] = []

    def confirm_then_delete(what: str) -> bool:
        # Rows deleted between the check and the update: UpdateMultiple refuses their requests.
        rows = c.dv_rows("accounts?$select=accountid&$filter=_msdyn_company_value eq null")[:5]
        for row in rows:
            assert c.dv("DELETE", f"accounts({row['accountid']})").status_code == 204
        victims.extend(r["accountid"] for r in rows)
        return True

    params = {**PARAMS, "bootstrap.max_failed_rows": 3, "bootstrap.tables": ["accounts"],
              "options.batch_size": 8, "options.concurrency": 1}
    ctx = step_context(sandbox, params=params, confirm=confirm_then_delete)
    result = BootstrapApply().execute(ctx)

    assert result.status == StepStatus.FAILED
    assert "stopped after 4 failed rows (limit 3)" in result.summary and FAILED_CSV in result.summary
    failed = _rows(Path(ctx.evidence_dir) / FAILED_CSV)
    assert {r["row_id"] for r in failed} <= set(victims) and len(failed) == 4
    assert all("404" in r["error"] for r in failed)
    assert result.counts["remaining"] > 0  # it stopped before the end

    rerun = BootstrapApply().execute(step_context(sandbox, params=params, confirm=lambda what: True))
    assert rerun.counts["remaining"] == 0 and rerun.counts["failed"] == 0
    assert rerun.status == StepStatus.WARNING  # done; unmapped root-BU rows remain
    assert _expected(c, "accounts").keys() <= {"unmapped"}


def test_missing_company_or_unstriped_table_fails_with_the_fix(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("existing-existing", rows=20, legal_entities=["USMF", "GBSI"])
    ctx = step_context(sandbox, params=PARAMS)
    with pytest.raises(StepError, match=r"company DEMF, FRRT .*add the company to the dual-write connection"):
        BootstrapSimulate().execute(ctx)
    ctx = step_context(sandbox, params={"bootstrap": {"mapping": {"Contoso US": "USMF"},
                                                      "tables": ["businessunits"]}})
    with pytest.raises(StepError, match="businessunits has no company lookup"):
        BootstrapSimulate().execute(ctx)


def test_apply_in_a_dry_run_changes_nothing(linked_sandbox, step_context, consultant) -> None:
    sandbox = linked_sandbox("existing-existing", rows=20)
    before = _state(consultant(sandbox))
    ctx = step_context(sandbox, params=PARAMS, dry_run=True, confirm=lambda what: True)
    result = BootstrapApply().execute(ctx)
    assert result.status == StepStatus.SKIPPED and "stamp" in result.summary
    assert _writes(ctx) == [] and _state(consultant(sandbox)) == before


def test_live_maps_are_stopped_before_the_bootstrap(linked_sandbox, step_context, consultant,
                                                   portal_player) -> None:
    # As in new-existing: the LCS setup started the maps before the bootstrap.
    sandbox = linked_sandbox("existing-existing", rows=40)
    c = consultant(sandbox)
    run_maps(c, CUSTOMER_MAPS, initial_sync=False)
    params = {"bootstrap": {"mapping": {**MAPPING, "Contoso": "USMF"}, "tables": ["accounts"]}}
    with pytest.raises(StepError, match=r"Customers V3 \(accounts\) run: each row stamped now would go to "
                                        r"F&O at once.*run the stop-maps step"):
        BootstrapApply().execute(step_context(sandbox, params=params, confirm=lambda what: True))
    ctx = step_context(sandbox, params=params, consultant=portal_player(sandbox))
    stopped = StopMaps().execute(ctx)
    assert stopped.status == StepStatus.PASSED, stopped.summary
    assert [i.title for i in ctx.instructions] == [f"Stop table maps {ACCOUNTS}"]
    assert stopped.summary == f"stopped {ACCOUNTS}: the plan runs them again after the bootstrap"
    result = BootstrapApply().execute(step_context(sandbox, params=params, confirm=lambda what: True))
    assert result.counts["stamped"] > 0 and result.counts["failed"] == 0
    # Nothing stamped went to F&O on its own: the maps were not live.
    assert c.fo_rows("CustomersV3?cross-company=true&$filter=startswith(CustomerAccount,'ACC-')") == []
    # Done: nothing left to stamp, so the maps are not stopped again (a re-run leaves them alone).
    run_maps(c, [ACCOUNTS], initial_sync=False)
    assert StopMaps().execute(step_context(sandbox, params=params)).status == StepStatus.ALREADY_DONE


def test_stop_maps_reads_no_rows_while_no_map_is_live(linked_sandbox, step_context) -> None:
    # Reading every row without a company costs minutes at a million rows: only a live map needs it.
    sandbox = linked_sandbox("existing-existing", rows=40)
    ctx = step_context(sandbox, params={"bootstrap": {"mapping": {**MAPPING, "Contoso": "USMF"}}})
    result = StopMaps().execute(ctx)
    assert result.status == StepStatus.ALREADY_DONE, result.summary
    assert result.summary == "no live map over the tables to stamp"
    read = [e.url for e in ctx.session.journal.entries() if "/accounts" in e.url or "/contacts" in e.url]
    assert read == []


def _simulate(sandbox: dict[str, Any], step_context: Any, **bootstrap: Any) -> list[dict[str, str]]:
    mapping = {**MAPPING, "Contoso": "USMF"}
    ctx = step_context(sandbox, params={"bootstrap": {"mapping": mapping, **bootstrap}})
    return _rows(BootstrapSimulate().execute(ctx).evidence_files[0])


def test_the_two_documented_methods_differ_on_customers_both_sides_have(linked_sandbox, step_context,
                                                                         consultant) -> None:
    sandbox = linked_sandbox("existing-existing", rows=300)
    c = consultant(sandbox)
    fo = {r["CustomerAccount"]: r for r in c.fo_rows(
        "CustomersV3?cross-company=true&$select=dataAreaId,CustomerAccount,CustomerGroupId,PartyType")}
    by_unit = {(r["table"], r["row_id"]): r for r in _simulate(sandbox, step_context)}
    by_number = {(r["table"], r["row_id"]): r
                 for r in _simulate(sandbox, step_context, method="account-number")}
    shared = [k for k, r in by_number.items() if r["rule"] == "account number"]
    assert {t for t, _ in shared} == {"accounts", "contacts"}  # the profile shares customers both ways
    for k in shared:
        row = by_number[k]
        customer = fo[row["key"].split("|")[0]]
        # The F&O customer's company and customer group: no duplicate in another company.
        assert (row["company_code"], row["customer_group"]) == (customer["dataAreaId"].upper(),
                                                                 customer["CustomerGroupId"])
        assert by_unit[k]["rule"] == "business unit"
    differ = [k for k in shared if by_unit[k]["company_code"] != by_number[k]["company_code"]]
    assert differ  # the business-unit method puts some of them in another company than F&O's
    assert all(r["rule"] == "business unit" for k, r in by_number.items() if k not in shared)


def test_rows_matched_by_neither_rule_are_reported_with_the_reason(linked_sandbox, step_context) -> None:
    sandbox = linked_sandbox("existing-existing", rows=100)
    ctx = step_context(sandbox, params={"bootstrap": {"method": "account-number", "mapping": {},
                                                      "tables": ["accounts"]}})
    result = BootstrapSimulate().execute(ctx)
    rows = _rows(result.evidence_files[0])
    matched = [r for r in rows if r["rule"]]
    neither = [r for r in rows if not r["rule"]]
    assert matched and neither and all(r["rule"] == "account number" for r in matched)
    assert all(r["company_code"] == "" and r["reason"].startswith(("no F&O customer account", "no account"))
               for r in neither)
    assert result.status == StepStatus.WARNING
    assert f"{len(neither)} rows stay without a company, matched by no rule" in \
        {c.name: c for c in result.checks}["unmapped rows"].evidence


def test_the_bootstrap_gives_customers_the_customer_group_finops_requires(linked_sandbox, step_context,
                                                                          consultant, portal_player) -> None:
    sandbox = linked_sandbox("existing-existing", rows=60)
    c = consultant(sandbox)
    params = {"bootstrap": {"mapping": {**MAPPING, "Contoso": "USMF"}, "tables": ["accounts"]}}
    # Without a group: the customers the map sends to F&O would be refused there — a warning.
    bare = BootstrapSimulate().execute(step_context(sandbox, params=params))
    groups = {ch.name: ch for ch in bare.checks}["customer groups"]
    assert bare.status == StepStatus.WARNING and groups.status == StepStatus.WARNING
    assert "no customer group: set bootstrap.customer_group" in groups.evidence
    # With customer_group 30, once the Customer groups map brought the groups to Dataverse.
    run_maps(c, ["Terms of payment (msdyn_paymentterms)", "Customer groups (msdyn_customergroups)"])
    params["bootstrap"]["customer_group"] = "30"
    result = BootstrapApply().execute(step_context(sandbox, params=params, confirm=lambda what: True))
    assert result.status == StepStatus.PASSED, [ch.to_dict() for ch in result.checks]
    customers = c.dv_rows("accounts?$select=_msdyn_customergroupid_value,_msdyn_company_value&"
                          "$filter=customertypecode eq 3")
    thirty = {r["msdyn_customergroupid"]: r["_msdyn_company_value"] for r in c.dv_rows(
        "msdyn_customergroups?$select=msdyn_customergroupid,_msdyn_company_value&"
        "$filter=msdyn_groupid eq '30'")}
    assert customers and all(thirty[r["_msdyn_customergroupid_value"]] == r["_msdyn_company_value"]
                             for r in customers)
    others = c.dv_rows("accounts?$select=_msdyn_customergroupid_value&$filter=customertypecode ne 3")
    assert all(r["_msdyn_customergroupid_value"] is None for r in others)  # not customers: untouched
