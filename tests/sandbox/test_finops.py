"""F&O OData emulation over HTTP (in process): companies, composite keys, writes, errors, DMF routing."""

from __future__ import annotations

from typing import Any

import pytest

from dwlib.sandbox.context import Sandbox
from dwlib.sandbox.dmf_package import DmfError
from dwlib.sandbox.schema import ENTITIES

from .conftest import Service

WRITE_FAILED = "Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataWriteException"


def _inner(r: Any, status: int) -> dict[str, str]:
    """The `innererror` of an F&O error response, after checking its shape."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["message"]) == ("", "An error has occurred.")
    assert set(error["innererror"]) == {"message", "type", "stacktrace"}
    return error["innererror"]


@pytest.fixture
def companies(fo: Service) -> Service:
    """USMF and USRT with a customer group and payment terms each; returns `fo`."""
    for code in ("USMF", "USRT"):
        assert fo.post("LegalEntities", json={"LegalEntityId": code, "Name": code}).status_code == 201
        area = code.lower()
        fo.post("PaymentTerms", json={"dataAreaId": area, "Name": "Net30", "NumberOfDays": 30})
        group = {"dataAreaId": code, "CustomerGroupId": "10", "PaymentTermId": "Net30"}
        r = fo.post("CustomerGroups", json=group)
        assert r.status_code == 201, r.text
    fo.post("Currencies", json={"CurrencyCode": "USD", "Name": "US dollar"})
    return fo


def _customer(account: str, area: str = "usmf", **extra: Any) -> dict[str, Any]:
    return {"@odata.type": "#Microsoft.Dynamics.DataEntities.CustomerV3", "dataAreaId": area,
            "CustomerAccount": account, "CustomerGroupId": "10", "OrganizationName": account, **extra}


def test_auth_failures_are_401_in_the_finops_shape(fo: Service, sbx: Sandbox) -> None:
    for token in ("", "expired", f"app-{sbx.dataverse_url}"):
        r = fo.get("LegalEntities", token=token)
        assert "Unauthorized" in _inner(r, 401)["message"]
        assert "resource_id=" + sbx.finops_url in r.headers["WWW-Authenticate"]


def test_service_document_lists_the_entity_sets(fo: Service) -> None:
    names = {v["name"] for v in fo.get("").json()["value"]}
    assert {"LegalEntities", "CustomersV3", "CustomerGroups", "DualWriteProjectConfigurations"} <= names


def test_default_company_scoping_and_cross_company(companies: Service) -> None:
    fo = companies
    for area in ("usmf", "usrt"):
        assert fo.post("CustomersV3", json=_customer(f"{area}-1", area)).status_code == 201
    visible = [c["CustomerAccount"] for c in fo.get("CustomersV3").json()["value"]]
    assert visible == ["usmf-1"]
    everything = fo.get("CustomersV3?cross-company=true&$orderby=CustomerAccount").json()["value"]
    assert [c["dataAreaId"] for c in everything] == ["usmf", "usrt"]
    one = fo.get("CustomersV3?cross-company=true&$filter=dataAreaId eq 'USRT'").json()["value"]
    assert [c["CustomerAccount"] for c in one] == ["usrt-1"]
    assert fo.get("CustomersV3/$count").text == "1"
    assert fo.get("CustomersV3/$count?cross-company=true").text == "2"


def test_default_company_without_usmf(fo: Service) -> None:
    fo.post("CustomerGroups", json={"CustomerGroupId": "G"})
    assert fo.get("CustomerGroups").json()["value"][0]["dataAreaId"] == "dat"
    fo.post("LegalEntities", json={"LegalEntityId": "DEMF", "Name": "Germany"})
    fo.post("LegalEntities", json={"LegalEntityId": "BRMF", "Name": "Brazil"})
    fo.post("CustomerGroups", json={"CustomerGroupId": "G"})
    assert [g["dataAreaId"] for g in fo.get("CustomerGroups").json()["value"]] == ["brmf"]


def test_composite_keys_and_company_visibility(companies: Service) -> None:
    fo = companies
    fo.post("CustomersV3", json=_customer("US-001"))
    fo.post("CustomersV3", json=_customer("US-002", "usrt"))
    r = fo.get("CustomersV3(dataAreaId='usmf',CustomerAccount='US-001')")
    assert r.status_code == 200 and r.json()["CustomerAccount"] == "US-001"
    assert r.json()["@odata.context"].endswith("/data/$metadata#CustomersV3/$entity")
    hidden = fo.get("CustomersV3(dataAreaId='usrt',CustomerAccount='US-002')")
    assert "cross-company=true" in _inner(hidden, 404)["message"]
    shown = fo.get("CustomersV3(dataAreaId='USRT',CustomerAccount='US-002')?cross-company=true")
    assert shown.status_code == 200 and shown.json()["dataAreaId"] == "usrt"
    assert "dataAreaId" in _inner(fo.get("CustomersV3('US-001')"), 400)["message"]


def test_create_returns_201_with_body_etag_and_lower_case_company(companies: Service) -> None:
    r = companies.post("CustomersV3", json=_customer("US-010", "USMF", SalesCurrencyCode="USD"))
    assert r.status_code == 201
    body = r.json()
    assert body["dataAreaId"] == "usmf" and body["@odata.etag"].startswith('W/"')
    assert r.headers["Location"].endswith("/data/CustomersV3(dataAreaId='usmf',CustomerAccount='US-010')")
    r = companies.post("CustomersV3", json=_customer("Ü 1"))
    assert r.headers["Location"].endswith("CustomerAccount='%C3%9C%201')")
    assert companies.get(r.headers["Location"]).json()["CustomerAccount"] == "Ü 1"


def test_write_errors_are_infolog_messages(companies: Service) -> None:
    fo = companies
    inner = _inner(fo.post("CustomersV3", json=_customer("US-020", CustomerGroupId="Local")), 400)
    assert inner["type"] == WRITE_FAILED
    assert inner["message"] == (
        "Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Warning: The value 'Local' in "
        "field 'Customer group' is not found in the related table 'Customer groups'.")
    missing = {k: v for k, v in _customer("US-021").items() if k != "CustomerGroupId"}
    def message(body: dict[str, Any], status: int = 400) -> str:
        return _inner(fo.post("CustomersV3", json=body), status)["message"]

    assert "Field 'Customer group' must be filled in" in message(missing)
    assert "'Currency'" in message(_customer("US-022", SalesCurrencyCode="XXX"))
    assert "Company 'zz'" in message(_customer("US-023", "ZZ"))
    fo.post("CustomersV3", json=_customer("US-024"))
    assert "already exists" in message(_customer("US-024"), 500)
    bad = message(_customer("US-025", Colour="red"))
    assert "The property 'Colour' does not exist on type 'Microsoft.Dynamics.DataEntities.CustomerV3'" in bad
    assert fo.get("CustomersV3?$filter=CustomerAccount ne 'US-024'").json()["value"] == []


def test_update_replace_delete_and_etags(companies: Service) -> None:
    fo = companies
    url = "CustomersV3(dataAreaId='usmf',CustomerAccount='US-030')"
    etag = fo.post("CustomersV3", json=_customer("US-030")).json()["@odata.etag"]
    assert fo.patch(url, json={"OrganizationName": "Renamed"}).status_code == 204
    after = fo.get(url).json()
    assert after["OrganizationName"] == "Renamed" and after["@odata.etag"] != etag
    stale = fo.patch(url, json={"CreditLimit": 5}, headers={"If-Match": etag})
    assert "ETag" in _inner(stale, 412)["message"]
    assert fo.put(url, json={"CreditLimit": 5}, headers={"If-Match": after["@odata.etag"]}).status_code == 204
    assert fo.get(url).json()["CreditLimit"] == 5
    assert "Customer groups" in _inner(fo.patch(url, json={"CustomerGroupId": "nope"}), 400)["message"]
    assert fo.delete(url).status_code == 204
    _inner(fo.get(url), 404)
    _inner(fo.patch(url, json={"OrganizationName": "x"}), 404)


def test_etag_is_the_row_version_not_the_values(companies: Service, sbx: Sandbox) -> None:
    """F&O's ETag follows RecVersion: a value set back (A → B → A) is a new version, and so is a
    write that bypasses OData (DMF, dual-write: here the sandbox's own SQL)."""
    fo = companies
    url = "CustomersV3(dataAreaId='usmf',CustomerAccount='US-031')"
    first = fo.post("CustomersV3", json=_customer("US-031")).json()["@odata.etag"]
    seen = [first]
    for name in ("B", "US-031"):
        assert fo.patch(url, json={"OrganizationName": name}).status_code == 204
        seen.append(fo.get(url).json()["@odata.etag"])
    assert len(set(seen)) == 3 and fo.get(url).json()["OrganizationName"] == "US-031"
    stale = fo.patch(url, json={"CreditLimit": 5}, headers={"If-Match": first})
    assert "ETag" in _inner(stale, 412)["message"]
    table = ENTITIES["CustomersV3"].table
    sbx.store.conn.execute(f'UPDATE "{table}" SET "CreditLimit" = 7 WHERE "CustomerAccount" = ?', ("US-031",))
    query = "CustomersV3?$select=CustomerAccount,CreditLimit&$filter=CustomerAccount eq 'US-031'"
    listed = fo.get(query).json()
    assert listed["value"][0]["@odata.etag"] not in seen and listed["value"][0]["CreditLimit"] == 7
    assert _inner(fo.patch(url, json={"CreditLimit": 8}, headers={"If-Match": seen[-1]}), 412)
    assert fo.patch(url, json={"CreditLimit": 8}, headers={"If-Match": listed["value"][0]["@odata.etag"]}) \
        .status_code == 204
    row = sbx.store.get(ENTITIES["CustomersV3"], {"dataAreaId": "usmf", "CustomerAccount": "US-031"})
    assert row is not None and not [c for c in row if c not in ENTITIES["CustomersV3"].all_columns]


def test_pages_of_10000_and_skip(fo: Service, sbx: Sandbox) -> None:
    groups = ENTITIES["CustomerGroups"]
    rows = [{"dataAreaId": "dat", "CustomerGroupId": f"G{i:05d}"} for i in range(10_050)]
    sbx.store.insert_rows(groups, rows)
    first = fo.get("CustomerGroups?$select=CustomerGroupId&$count=true").json()
    assert len(first["value"]) == 10_000 and first["@odata.count"] == 10_050
    second = fo.get(first["@odata.nextLink"]).json()
    assert [g["CustomerGroupId"] for g in second["value"]] == [f"G{i:05d}" for i in range(10_000, 10_050)]
    assert "@odata.nextLink" not in second
    skipped = fo.get("CustomerGroups?$skip=10040&$select=CustomerGroupId").json()["value"]
    assert [g["CustomerGroupId"] for g in skipped] == [f"G{i:05d}" for i in range(10_040, 10_050)]


def test_record_id_keys_are_generated(fo: Service) -> None:
    r = fo.post("DualWriteProjectConfigurations", json={"ProjectName": "p", "Status": "NotRunning"})
    rec = r.json()["RecId"]
    assert fo.get(f"DualWriteProjectConfigurations({rec})").json()["ProjectName"] == "p"


def test_debug_mode_is_a_no_yes_enum_that_can_be_patched(fo: Service) -> None:
    rec = fo.post("DualWriteProjectConfigurations",
                  json={"ProjectName": "p", "Status": "NotRunning", "IsDebugMode": "No"}).json()["RecId"]
    url = f"DualWriteProjectConfigurations({rec})"
    assert fo.patch(url, json={"IsDebugMode": "Yes"}).status_code == 204
    assert fo.get(url).json()["IsDebugMode"] == "Yes"
    refused = _inner(fo.patch(url, json={"IsDebugMode": "On"}), 400)["message"]
    assert "The value 'On' in field 'IsDebugMode' is not valid: use No or Yes." in refused
    assert fo.get(url).json()["IsDebugMode"] == "Yes"


class _FakeDmf:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((action, body))
        if body.get("fail"):
            raise DmfError("bad definition group", 400)
        return {"@odata.context": "ctx", "value": "https://blob"}


def test_dmf_actions_are_handed_to_the_dmf_service(fo: Service, sbx: Sandbox) -> None:
    action = "DataManagementDefinitionGroups/Microsoft.Dynamics.DataEntities.GetAzureWriteUrl"
    _inner(fo.post(action, json={}), 404)
    sbx.extras["dmf"] = dmf = _FakeDmf()
    r = fo.post(action, json={"uniqueFileName": "x"})
    assert r.json() == {"@odata.context": "ctx", "value": "https://blob"}
    assert dmf.calls == [("Microsoft.Dynamics.DataEntities.GetAzureWriteUrl", {"uniqueFileName": "x"})]
    assert _inner(fo.post(action, json={"fail": True}), 400)["message"] == "bad definition group"
