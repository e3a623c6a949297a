"""Live sync through the real sandbox: both directions, one transaction, the pause queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dw_helpers import Consultant, session_for

from dwlib import catalog
from dwlib.steps.support.bulkwrite import isolate

ACCOUNTS, CONTACTS = "customers-v3-accounts", "customers-v3-contacts"


def wait_state(c: Consultant, map_id: str, *, deadline_s: float = 30) -> str:
    """Poll the map until it leaves Initializing / Resuming; its final state."""
    end = time.monotonic() + deadline_s
    while True:
        state = c.portal("GET", f"/dualwrite/maps/{map_id}")["state"]
        if state not in ("Initializing", "Resuming") or time.monotonic() > end:
            return state
        time.sleep(0.05)


@pytest.fixture
def live(start_sandbox: Any) -> Iterator[Consultant]:
    """A fresh existing-new sandbox, linked, with both Customers V3 maps (and related) Running."""
    c = Consultant(start_sandbox("existing-new", rows=12, fresh=True))
    c.portal("POST", "/lcs/power-platform-integration")
    c.portal("POST", "/lcs/dual-write/configure")
    c.portal("POST", "/lcs/dual-write/link", {"start_maps": False})
    for map_id in (ACCOUNTS, CONTACTS):
        c.portal("POST", f"/dualwrite/maps/{map_id}/run", {"initial_sync": True})
        assert wait_state(c, map_id) == "Running"
    yield c
    c.close()


def company(c: Consultant, code: str) -> str:
    (row,) = c.dv_rows(f"cdm_companies?$filter=cdm_companycode eq '{code}'&$select=cdm_companyid")
    return row["cdm_companyid"]


def customer_group(c: Consultant, code: str, group: str) -> str:
    """The bind of Dataverse customer group `group` of company `code` (F&O requires one per customer)."""
    (row,) = c.dv_rows(f"msdyn_customergroups?$filter=msdyn_groupid eq '{group}' and "
                       f"_msdyn_company_value eq {company(c, code)}&$select=msdyn_customergroupid")
    return f"/msdyn_customergroups({row['msdyn_customergroupid']})"


def test_finops_writes_appear_in_dataverse_with_the_company(live: Consultant) -> None:
    r = live.fo(
        "POST",
        "CustomersV3",
        {
            "dataAreaId": "usmf",
            "CustomerAccount": "LIVE-1",
            "PartyType": "Organization",
            "OrganizationName": "Live Co",
            "CustomerGroupId": "10",
            "SalesCurrencyCode": "USD",
        },
    )
    assert r.status_code == 201, r.text
    (acc,) = live.dv_rows("accounts?$filter=accountnumber eq 'LIVE-1'")
    assert acc["name"] == "Live Co" and acc["customertypecode"] == 3
    assert acc["_msdyn_company_value"] == company(live, "USMF")
    r = live.fo(
        "PATCH", "CustomersV3(dataAreaId='usmf',CustomerAccount='LIVE-1')", {"OrganizationName": "Renamed"}
    )
    assert r.status_code == 204, r.text
    assert live.dv_rows("accounts?$filter=accountnumber eq 'LIVE-1'")[0]["name"] == "Renamed"
    r = live.fo(
        "POST",
        "CustomersV3",
        {
            "dataAreaId": "gbsi",
            "CustomerAccount": "LIVE-P",
            "PartyType": "Person",
            "PersonFirstName": "Ada",
            "PersonLastName": "Lovelace",
            "CustomerGroupId": "30",
        },
    )
    assert r.status_code == 201, r.text
    (con,) = live.dv_rows("contacts?$filter=msdyn_contactpersonid eq 'LIVE-P'")
    assert (con["lastname"], con["msdyn_sellable"], con["_msdyn_company_value"]) == (
        "Lovelace",
        True,
        company(live, "GBSI"),
    )
    assert live.fo("DELETE", "CustomersV3(dataAreaId='usmf',CustomerAccount='LIVE-1')").status_code == 204
    assert live.dv_rows("accounts?$filter=accountnumber eq 'LIVE-1'") == []


def test_dataverse_customers_appear_in_finops_and_others_do_not(live: Consultant) -> None:
    usmf = f"/cdm_companies({company(live, 'USMF')})"
    r = live.dv(
        "POST",
        "accounts",
        {"name": "From CE", "accountnumber": "CE-1", "customertypecode": 3, "msdyn_company@odata.bind": usmf,
         "msdyn_customergroupid@odata.bind": customer_group(live, "USMF", "10")},
    )
    assert r.status_code == 204, r.text
    (cust,) = live.fo_rows("CustomersV3?cross-company=true&$filter=CustomerAccount eq 'CE-1'")
    assert (cust["dataAreaId"], cust["PartyType"], cust["OrganizationName"]) == (
        "usmf",
        "Organization",
        "From CE",
    )
    r = live.dv(
        "POST",
        "accounts",
        {
            "name": "Competitor",
            "accountnumber": "CE-2",
            "customertypecode": 1,
            "msdyn_company@odata.bind": usmf,
        },
    )
    assert r.status_code == 204, r.text
    r = live.dv("POST", "accounts", {"name": "No company", "accountnumber": "CE-3", "customertypecode": 3})
    assert r.status_code == 204, r.text
    assert (
        live.fo_rows(
            "CustomersV3?cross-company=true&$filter=CustomerAccount eq 'CE-2' or CustomerAccount eq 'CE-3'"
        )
        == []
    )
    r = live.dv(
        "POST",
        "contacts",
        {
            "lastname": "Hopper",
            "msdyn_contactpersonid": "CE-P",
            "msdyn_sellable": True,
            "msdyn_company@odata.bind": usmf,
            "msdyn_customergroupid@odata.bind": customer_group(live, "USMF", "30"),
        },
    )
    assert r.status_code == 204, r.text
    (person,) = live.fo_rows("CustomersV3?cross-company=true&$filter=CustomerAccount eq 'CE-P'")
    assert (person["PartyType"], person["PersonLastName"]) == ("Person", "Hopper")


def test_a_write_the_other_side_rejects_fails_on_both_sides(live: Consultant) -> None:
    usmf_id = company(live, "USMF")
    live.portal("POST", "/dualwrite/maps/customer-groups/stop")  # so groups stay on the side they are made
    # A customer group only Dataverse has: F&O refuses the customer, so Dataverse does too.
    r = live.dv(
        "POST",
        "msdyn_customergroups",
        {"msdyn_groupid": "CEONLY", "msdyn_company@odata.bind": f"/cdm_companies({usmf_id})"},
    )
    assert r.status_code == 204, r.text
    (group,) = live.dv_rows("msdyn_customergroups?$filter=msdyn_groupid eq 'CEONLY'")
    r = live.dv(
        "POST",
        "accounts",
        {
            "name": "Bad",
            "accountnumber": "CE-BAD",
            "customertypecode": 3,
            "msdyn_company@odata.bind": f"/cdm_companies({usmf_id})",
            "msdyn_customergroupid@odata.bind": f"/msdyn_customergroups({group['msdyn_customergroupid']})",
        },
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert "The value 'CEONLY' in field 'Customer group' is not found" in error["message"]
    assert live.dv_rows("accounts?$filter=accountnumber eq 'CE-BAD'") == []
    assert live.fo_rows("CustomersV3?cross-company=true&$filter=CustomerAccount eq 'CE-BAD'") == []
    # A customer group only F&O has: Dataverse can't resolve it, so F&O fails too.
    r = live.fo(
        "POST", "CustomerGroups", {"dataAreaId": "usmf", "CustomerGroupId": "77", "Description": "FO only"}
    )
    assert r.status_code == 201, r.text
    r = live.fo(
        "POST",
        "CustomersV3",
        {
            "dataAreaId": "usmf",
            "CustomerAccount": "FO-BAD",
            "PartyType": "Organization",
            "OrganizationName": "Bad",
            "CustomerGroupId": "77",
        },
    )
    assert r.status_code == 400
    message = r.json()["error"]["innererror"]["message"]
    assert "Unable to write data to entity accounts" in message and "The lookup wasn't found: 77" in message
    assert live.fo_rows("CustomersV3?cross-company=true&$filter=CustomerAccount eq 'FO-BAD'") == []
    assert live.dv_rows("accounts?$filter=accountnumber eq 'FO-BAD'") == []


def test_a_paused_map_queues_changes_in_order_and_resume_catches_up(live: Consultant) -> None:
    key = "CustomersV3(dataAreaId='usmf',CustomerAccount='Q-1')"
    assert (
        live.fo(
            "POST",
            "CustomersV3",
            {
                "dataAreaId": "usmf",
                "CustomerAccount": "Q-1",
                "PartyType": "Organization",
                "OrganizationName": "Name0",
                "CustomerGroupId": "10",
            },
        ).status_code
        == 201
    )
    live.portal("POST", f"/dualwrite/maps/{ACCOUNTS}/pause")
    with pytest.raises(AssertionError):  # Stop is not available while paused
        live.portal("POST", f"/dualwrite/maps/{ACCOUNTS}/stop", expect=200)
    for name in ("NameA", "NameB", "NameC"):
        assert live.fo("PATCH", key, {"OrganizationName": name}).status_code == 204
    assert live.dv_rows("accounts?$filter=accountnumber eq 'Q-1'")[0]["name"] == "Name0"
    queue = live.portal("GET", f"/dualwrite/maps/{ACCOUNTS}/queue")
    assert queue["totalQueuedRecordCount"] == 3
    assert [r["row"]["OrganizationName"] for r in queue["records"]] == ["NameA", "NameB", "NameC"]
    live.portal("POST", f"/dualwrite/maps/{ACCOUNTS}/resume")
    assert wait_state(live, ACCOUNTS) == "Running"
    assert live.dv_rows("accounts?$filter=accountnumber eq 'Q-1'")[0]["name"] == "NameC"
    assert live.portal("GET", f"/dualwrite/maps/{ACCOUNTS}/queue")["totalQueuedRecordCount"] == 0


def test_a_full_pause_queue_blocks_writes_until_resumed(live: Consultant) -> None:
    live.portal("PUT", "/dualwrite/limits", {"pause_max_bytes": 10})
    live.portal("POST", f"/dualwrite/maps/{ACCOUNTS}/pause")
    r = live.fo(
        "POST",
        "CustomersV3",
        {
            "dataAreaId": "usmf",
            "CustomerAccount": "Q-2",
            "PartyType": "Organization",
            "OrganizationName": "Blocked",
            "CustomerGroupId": "10",
        },
    )
    assert r.status_code >= 400
    assert "writes are blocked until the map is resumed" in r.text
    assert live.fo_rows("CustomersV3?cross-company=true&$filter=CustomerAccount eq 'Q-2'") == []
    live.portal("POST", f"/dualwrite/maps/{ACCOUNTS}/resume", {"mode": "skip-discard"})
    assert (
        live.fo(
            "POST",
            "CustomersV3",
            {
                "dataAreaId": "usmf",
                "CustomerAccount": "Q-2",
                "PartyType": "Organization",
                "OrganizationName": "Fine",
                "CustomerGroupId": "10",
            },
        ).status_code
        == 201
    )


def test_initial_sync_jobs_appear_in_the_dmf_job_history(live: Consultant) -> None:
    details = live.portal("GET", f"/dualwrite/maps/{ACCOUNTS}/initial-sync")
    execution = details["last"]["executionId"]
    assert details["last"]["status"] == "Completed" and details["state"] == "Running"
    action = "DataManagementDefinitionGroups/Microsoft.Dynamics.DataEntities."
    r = live.fo("POST", action + "GetExecutionSummaryStatus", {"executionId": execution})
    assert r.status_code == 200, r.text
    assert r.json()["value"] == "Succeeded"
    r = live.fo("POST", action + "GetExecutionErrors", {"executionId": execution})
    assert r.status_code == 200 and r.json()["value"] == "[]"


def test_every_mapped_column_and_value_map_crosses_both_ways(live: Consultant) -> None:
    """The initial sync carried the mapped columns (value maps applied); live sync does too, back."""
    (fo,) = live.fo_rows("CustomersV3?cross-company=true&$filter=dataAreaId eq 'usmf' and "
                         "PartyType eq 'Organization'&$top=1&$orderby=CustomerAccount")
    (acc,) = live.dv_rows(f"accounts?$filter=accountnumber eq '{fo['CustomerAccount']}'")
    rows = {r.finops: r for r in catalog.table_map(ACCOUNTS).mappings}
    hold = dict(rows["OnHoldStatus"].values or ())
    assert acc["msdyn_onholdstatus"] == hold[fo["OnHoldStatus"].lower()]
    columns = ("address1_line1", "address1_postalcode", "address1_latitude", "websiteurl")
    fields = ("DeliveryAddressStreet", "DeliveryAddressZipCode", "DeliveryAddressLatitude",
              "PrimaryContactURL")
    assert [acc[c] for c in columns] == [fo[f] for f in fields]
    assert acc["msdyn_creditlimitismandatory"] is (fo["CreditLimitIsMandatory"] == "Yes")
    r = live.dv("PATCH", f"accounts({acc['accountid']})", {"msdyn_onholdstatus": 806380004,
                                                           "msdyn_onetimecustomer": True})
    assert r.status_code == 204, r.text
    key = f"CustomersV3(dataAreaId='usmf',CustomerAccount='{fo['CustomerAccount']}')?cross-company=true"
    after = live.fo("GET", key).json()
    assert (after["OnHoldStatus"], after["IsOneTimeCustomer"]) == ("Requisition", "Yes")
    r = live.dv("PATCH", f"accounts({acc['accountid']})", {"msdyn_onholdstatus": 1})  # not in the value map
    assert r.status_code >= 400 and "has no entry in the value map" in r.text


# --- the documented limits of a live-sync transaction (sync-limits.md) ------------------------------


def _usmf_accounts(c: Consultant) -> list[dict[str, Any]]:
    usmf = company(c, "USMF")
    return c.dv_rows(f"accounts?$filter=_msdyn_company_value eq {usmf} and customertypecode eq 3"
                     "&$select=accountid,accountnumber")


def _stamp_in_chunks(c: Consultant, rows: list[dict[str, Any]], memo: str) -> tuple[list[str], list[str]]:
    """Update `rows` through the library as the bulk-writing steps do (a refused request split in
    halves); the account ids written and those refused."""
    done: list[str] = []
    refused: list[str] = []
    with session_for(c.connection) as s:
        def send(chunk: list[dict[str, Any]]) -> Any:
            return s.dataverse.update_multiple("accounts", chunk, errors="collect", logical_name="account")

        isolate(send, [{"accountid": r["accountid"], "description": memo} for r in rows],
                done=lambda part: done.extend(r["accountid"] for r in part),
                failed=lambda part, _: refused.extend(r["accountid"] for r in part), stop=threading.Event())
    return done, refused


@pytest.mark.parametrize("limits, error_id", [
    ({"row_ms": 200, "live_transaction_ms": 500}, "live-transaction-timeout"),  # > 2 rows: over 0.5 s
    ({"live_payload_bytes": 4000}, "message-size-exceeded"),  # a few rows' mapped values
])
def test_a_transaction_over_a_live_sync_limit_is_refused_and_smaller_chunks_pass(
        live: Consultant, limits: dict[str, int], error_id: str) -> None:
    rows = _usmf_accounts(live)
    assert len(rows) >= 4
    live.portal("PUT", "/dualwrite/limits", limits)
    targets = [{"@odata.type": "Microsoft.Dynamics.CRM.account", "accountid": r["accountid"],
                "description": "big"} for r in rows]
    refused = live.dv("POST", "accounts/Microsoft.Dynamics.CRM.UpdateMultiple", {"Targets": targets})
    assert refused.status_code == 400
    error = refused.json()["error"]
    known = catalog.match_error(error["message"])
    assert known is not None and known.id == error_id, error
    if error_id == "message-size-exceeded":
        assert error["code"] == "0x80040216"  # -2147220970, as documented
    first = live.dv("GET", f"accounts({rows[0]['accountid']})?$select=description").json()
    assert first.get("description") != "big"  # rolled back
    done, failed = _stamp_in_chunks(live, rows, "chunked")
    assert (sorted(done), failed) == (sorted(r["accountid"] for r in rows), [])
    memos = {c["CustomerAccount"]: c["SalesMemo"] for c in live.fo_rows(
        "CustomersV3?cross-company=true&$filter=dataAreaId eq 'usmf'&$select=CustomerAccount,SalesMemo")}
    assert {memos[r["accountnumber"]] for r in rows} == {"chunked"}  # synced to F&O, chunk by chunk
