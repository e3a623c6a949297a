"""Helpers of the table-map, initial-sync and verify tests: plans, data defects, reads."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from dw_helpers import Consultant

from dwlib import catalog
from dwlib.steps.base import StepContext
from dwlib.steps.plan import Action, PlanRow

CUR, LE, TERMS, GROUPS = ("Currencies (transactioncurrencies)", "Legal entities (cdm_companies)",
                          "Terms of payment (msdyn_paymentterms)", "Customer groups (msdyn_customergroups)")
ACCOUNTS, CONTACTS = "Customers V3 (accounts)", "Customers V3 (contacts)"
CUSTOMER_MAPS = (CUR, LE, TERMS, GROUPS, ACCOUNTS)  # Customers V3 (accounts) and its prerequisites


def set_plan(ctx: StepContext, maps: Sequence[tuple[str, Action, str]]) -> None:
    """Give the steps a plan as the plan step hands it on: (map, action, master) per map."""
    rows = []
    for i, (name, action, master) in enumerate(maps, 1):
        rows.append(PlanRow(order=i, name=name, action=action, master=master,
                            skip_initial_sync=action != "initial-sync", state="", single_threaded=False,
                            lookups=0, finops_rows={}, dataverse_rows={}, dataverse_without_company=0,
                            quoted_rows=0, matrix_row="", reason="given by the test", estimate_s=0.0))
    ctx.run_state["plan"] = rows


def organization(c: Consultant, area: str) -> dict[str, Any]:
    """The first organization customer of an F&O company."""
    rows = c.fo_rows(f"CustomersV3?cross-company=true&$filter=dataAreaId eq '{area}' and "
                     "PartyType eq 'Organization'&$orderby=CustomerAccount")
    return rows[0]


def quote_a_customer(c: Consultant, area: str) -> str:
    """Put double quotes in an F&O organization customer's name; returns its account."""
    row = organization(c, area)
    r = c.fo("PATCH", f"CustomersV3(dataAreaId='{area}',CustomerAccount='{row['CustomerAccount']}')"
                      "?cross-company=true", {"OrganizationName": 'Quoted "Name" Ltd'})
    assert r.status_code == 204, r.text
    return str(row["CustomerAccount"])


def state(c: Consultant, name: str) -> str:
    """A map's state as the dual-write workspace shows it."""
    return str(c.portal("GET", f"/dualwrite/maps/{catalog.table_map(name).id}")["displayState"])


def wait_state(c: Consultant, names: Sequence[str], wanted: str, timeout_s: float = 30) -> None:
    """Poll the portal until every map in `names` is `wanted` (AssertionError after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while (seen := {n: state(c, n) for n in names}) != dict.fromkeys(names, wanted):
        assert time.monotonic() < deadline, f"maps not {wanted} after {timeout_s} s: {seen}"
        time.sleep(0.05)


def run_maps(c: Consultant, names: Sequence[str], *, initial_sync: bool = True,
             master: str = "finops") -> None:
    """Run maps (in this order) through the portal, as the consultant would, and wait until Running."""
    *related, selected = names
    c.portal("POST", f"/dualwrite/maps/{catalog.table_map(selected).id}/run",
             {"related": related, "initial_sync": initial_sync, "master": master})
    wait_state(c, names, "Running")


def company_id(c: Consultant, code: str) -> str:
    """The `cdm_companyid` of a company code."""
    (row,) = c.dv_rows(f"cdm_companies?$filter=cdm_companycode eq '{code}'&$select=cdm_companyid")
    return str(row["cdm_companyid"])
