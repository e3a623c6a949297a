"""Default value transforms of column mappings: edited only when stopped, shown in the applied map,
applied to Dataverse → F&O rows in the initial sync and in live sync, set through the portal admin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dw_helpers import (
    Consultant,
    MakeRuntime,
    company_id,
    default_transforms,
    perform_map_gate,
    run_companies_map,
    run_maps,
    session_for,
    stamp,
)

from dwlib import catalog
from dwlib.clients.dualwrite import DualWriteAdminError, Instruction, PortalAdmin
from dwlib.sandbox.dw_runtime import EDIT_REFUSED, DualWriteError
from dwlib.sandbox.schema import ENTITIES

ACCOUNTS = "Customers V3 (accounts)"
ACC, CUST = ENTITIES["accounts"], ENTITIES["CustomersV3"]
MAPS = ENTITIES["msdyn_dualwriteentitymaps"]


def test_edits_need_a_stopped_map_and_show_in_the_applied_map(make_runtime: MakeRuntime) -> None:
    rt = make_runtime("existing-new", rows=12)
    run_maps(rt, catalog.related_maps(ACCOUNTS))
    run_maps(rt, [ACCOUNTS], initial_sync=False)
    with pytest.raises(DualWriteError) as refused:
        rt.edit(ACCOUNTS, defaults={"CUSTOMERGROUPID": "30"})
    assert (refused.value.message, refused.value.status) == (EDIT_REFUSED, 409)
    rt.stop([ACCOUNTS])
    with pytest.raises(DualWriteError, match="no column rows writing F&O columns"):
        rt.edit(ACCOUNTS, defaults={"PartyType": "Person"})  # a constant row, not a column mapping
    rt.edit(ACCOUNTS, defaults={"customergroupid": "30"})
    (row,) = rt.store.find(MAPS, {"msdyn_name": ACCOUNTS})
    assert default_transforms(row["msdyn_mapping"]) == {"CustomerGroupId": "30"}
    rt.edit(ACCOUNTS, defaults={"CustomerGroupId": None})  # removing it
    (row,) = rt.store.find(MAPS, {"msdyn_name": ACCOUNTS})
    assert default_transforms(row["msdyn_mapping"]) == {}


def test_initial_sync_writes_the_default_only_where_dataverse_is_empty(make_runtime: MakeRuntime) -> None:
    rt = make_runtime("existing-new", rows=12)
    run_maps(rt, catalog.related_maps(ACCOUNTS))
    usmf = company_id(rt, "USMF")
    (group10,) = rt.store.find(ENTITIES["msdyn_customergroups"],
                               {"msdyn_groupid": "10", "_msdyn_company_value": usmf})
    rt.store.insert(ACC, {"name": "No group", "accountnumber": "DV-NG", "customertypecode": 3,
                          "_msdyn_company_value": usmf})
    rt.store.insert(ACC, {"name": "Group 10", "accountnumber": "DV-G10", "customertypecode": 3,
                          "_msdyn_company_value": usmf,
                          "_msdyn_customergroupid_value": group10["msdyn_customergroupid"]})
    rt.edit(ACCOUNTS, remove=["msdyn_salestaxgroup.msdyn_name"])  # below "10 or more lookups"
    failed = run_maps(rt, [ACCOUNTS])  # without the default F&O refuses the first row
    assert "Field 'Customer group' must be filled in." in failed["errorMessage"]
    assert rt.map_record(ACCOUNTS)["state"] == "NotRunning"

    rt.edit(ACCOUNTS, defaults={"CUSTOMERGROUPID": "30"})
    done = run_maps(rt, [ACCOUNTS])
    assert done["state"] == "2", done["errorMessage"]
    groups = {r["CustomerAccount"]: r["CustomerGroupId"] for r in rt.store.find(CUST, {"dataAreaId": "usmf"})}
    assert (groups["DV-NG"], groups["DV-G10"]) == ("30", "10")
    (acc,) = rt.store.find(ACC, {"accountnumber": "DV-NG"})
    assert acc["_msdyn_customergroupid_value"] is None  # a default is for F&O only


@pytest.fixture
def running(start_sandbox: Any) -> Iterator[Consultant]:
    """A fresh existing-existing sandbox, linked, Customers V3 (accounts) and its prerequisites Running."""
    c = Consultant(start_sandbox("existing-existing", rows=12, fresh=True))
    c.portal("POST", "/lcs/power-platform-integration")
    c.portal("POST", "/lcs/dual-write/configure")
    c.portal("POST", "/lcs/dual-write/link", {"start_maps": False})
    run_companies_map(c)
    c.portal("POST", f"/dualwrite/maps/{catalog.table_map(ACCOUNTS).id}/run",
             {"initial_sync": False, "related": catalog.related_maps(ACCOUNTS)})
    assert c.portal("GET", "/dualwrite/maps/customers-v3-accounts")["state"] == "Running"
    yield c
    c.close()


def test_live_sync_writes_the_default_into_finops(running: Consultant) -> None:
    c = running
    first, second = c.dv_rows("accounts?$filter=customertypecode eq 3 and _msdyn_company_value eq null and "
                              "accountnumber ne null&$select=accountid,accountnumber&$orderby=accountnumber"
                              "&$top=2")
    refused = stamp(c, first["accountid"], "USMF")
    assert refused.status_code == 400 and "Field 'Customer group' must be filled in." in refused.text
    c.portal("PATCH", "/dualwrite/maps/customers-v3-accounts", {"defaults": {"CUSTOMERGROUPID": "30"}},
             expect=409)  # Running: the edit is refused
    c.portal("POST", "/dualwrite/maps/customers-v3-accounts/stop")
    c.portal("PATCH", "/dualwrite/maps/customers-v3-accounts", {"defaults": {"CUSTOMERGROUPID": "30"}})
    c.portal("POST", "/dualwrite/maps/customers-v3-accounts/run", {"initial_sync": False, "related": []})
    assert stamp(c, second["accountid"], "GBSI").status_code == 204
    where = f"CustomerAccount eq '{second['accountnumber']}'"
    (row,) = c.fo_rows(f"CustomersV3?cross-company=true&$filter={where}")
    assert (row["dataAreaId"], row["CustomerGroupId"]) == ("gbsi", "30")


def test_portal_admin_refuses_a_running_map_and_verifies_the_defaults(running: Consultant) -> None:
    c = running
    seen: list[Instruction] = []

    def consultant(ins: Instruction) -> None:
        seen.append(ins)
        assert perform_map_gate(c, ins.steps, ins.title)

    session = session_for(c.connection)
    try:
        admin = PortalAdmin(session.dataverse, session.finops, notify=consultant, timeout_s=5, poll_s=0.05)
        with pytest.raises(DualWriteAdminError, match="is Running: table mappings can be changed only when"):
            admin.set_column_defaults(ACCOUNTS, {"CUSTOMERGROUPID": "30"})
        assert seen == [] and admin.column_defaults(ACCOUNTS) == {}
        admin.stop([ACCOUNTS])
        assert admin.set_column_defaults(ACCOUNTS, {"CustomerGroupId": "30"}) == {"CustomerGroupId": "30"}
        (ins,) = [i for i in seen if i.title.startswith("Set default values")]
        assert any("Column CUSTOMERGROUPID:" in s and "'30'" in s for s in ins.steps)

        idle = PortalAdmin(session.dataverse, session.finops, notify=seen.append, timeout_s=0.3,
                           poll_s=0.05)  # nobody does the clicks: not verified in time
        with pytest.raises(DualWriteAdminError, match="CUSTOMERGROUPID has default '30', expected '40'"):
            idle.set_column_defaults(ACCOUNTS, {"CUSTOMERGROUPID": "40"})
    finally:
        session.close()


def test_a_refused_live_sync_write_is_in_the_plug_in_trace_log_with_tracing_on(running: Consultant) -> None:
    c = running
    first, second = c.dv_rows("accounts?$filter=customertypecode eq 3 and _msdyn_company_value eq null and "
                              "accountnumber ne null&$select=accountid,accountnumber&$orderby=accountnumber"
                              "&$top=2")
    (org,) = c.dv_rows("organizations?$select=organizationid,plugintracelogsetting")
    assert org["plugintracelogsetting"] == 0  # Off: the refusal leaves no trace
    assert stamp(c, first["accountid"], "USMF").status_code == 400
    assert c.dv_rows("plugintracelogs") == []
    # Exception, as a program sets it (logging-tracing.md): the refused write rolls back, its trace stays
    assert c.dv("PATCH", f"organizations({org['organizationid']})", {"plugintracelogsetting": 1}).is_success
    assert stamp(c, second["accountid"], "USMF").status_code == 400
    (trace,) = c.dv_rows("plugintracelogs?$filter=startswith(typename,'Microsoft.Dynamics.Integrator."
                         "DualWriteRuntime')&$orderby=createdon desc")
    assert (trace["messagename"], trace["primaryentity"]) == ("Update", "account")
    assert "Field 'Customer group' must be filled in." in trace["exceptiondetails"]
    acc = c.dv("GET", f"accounts({second['accountid']})?$select=_msdyn_company_value").json()
    assert acc["_msdyn_company_value"] is None  # the write itself rolled back
    # The service writes the log: the Web API reads and deletes its rows, and creates none.
    assert c.dv("POST", "plugintracelogs", {"typename": "x"}).status_code == 405
    assert c.dv("DELETE", f"plugintracelogs({trace['plugintracelogid']})").status_code == 204
    assert c.dv_rows("plugintracelogs") == []
