"""Dataverse Web API emulation over HTTP (in process): auth, functions, metadata, CRUD, paging, bulk."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from dwlib.clients import DataverseClient
from dwlib.sandbox import dataverse
from dwlib.sandbox import dataverse_annotations as annotations
from dwlib.sandbox.context import Sandbox
from dwlib.sandbox.odata import ODataError, WriteEvent
from dwlib.sandbox.schema import ENTITIES

from .conftest import BASE, Service

ERROR_TYPE = "application/json; odata.metadata=minimal"
CRM = "Microsoft.Dynamics.CRM"


def _error(r: Any, status: int, code: str | None = None) -> str:
    """The error message of a Dataverse error response, after checking its shape."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == ERROR_TYPE
    body = r.json()
    assert set(body["error"]) == {"code", "message"}
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]["message"]


def _company(dv: Service, code: str = "USMF") -> str:
    r = dv.post("cdm_companies", json={"cdm_companycode": code, "cdm_name": code},
                headers={"Prefer": "return=representation"})
    assert r.status_code == 201, r.text
    return r.json()["cdm_companyid"]


def _id(response: Any) -> str:
    return response.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")


# --- authentication -------------------------------------------------------------------------------


def test_missing_expired_and_wrong_audience_tokens_are_401(dv: Service, sbx: Sandbox) -> None:
    for token, word in (("", "Authorization"), ("expired", "expired"), (f"app-{sbx.finops_url}", "scope")):
        r = dv.get("WhoAmI", token=token)
        assert word in _error(r, 401, "0x80072560")
        assert r.headers["WWW-Authenticate"] == (
            f"Bearer authorization_uri={sbx.authority}/oauth2/authorize, resource_id={sbx.dataverse_url}")


def test_principal_without_enabled_user_is_403(dv: Service, sbx: Sandbox) -> None:
    msg = _error(dv.get("WhoAmI", token=f"stranger-{sbx.dataverse_url}"), 403, "0x80072560")
    assert "not a member of the organization" in msg and "application user" in msg
    users = ENTITIES["systemusers"]
    sbx.store.update(users, {"systemuserid": sbx.extras["seed"].app_user_id}, {"isdisabled": True})
    _error(dv.get("WhoAmI"), 403, "0x80072560")


def test_every_response_has_a_request_id(dv: Service) -> None:
    for r in (dv.get("WhoAmI"), dv.get("nothing"), dv.get("accounts", token="")):
        assert r.headers["REQ_ID"] == r.headers["x-ms-service-request-id"]
        uuid.UUID(r.headers["REQ_ID"])
        assert r.headers["OData-Version"] == "4.0"


# --- functions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["WhoAmI", "WhoAmI()"])
def test_who_am_i(dv: Service, sbx: Sandbox, path: str) -> None:
    r = dv.get(path)
    seed = sbx.extras["seed"]
    assert r.json() == {"@odata.context": f"{dv.audience}/api/data/v9.2/$metadata#Microsoft.Dynamics.CRM."
                        "WhoAmIResponse", "BusinessUnitId": seed.business_unit_id,
                        "UserId": seed.app_user_id, "OrganizationId": seed.organization_id}


def test_who_am_i_for_a_user(dv: Service, sbx: Sandbox) -> None:
    r = dv.get("WhoAmI", token=f"user-{sbx.dataverse_url}")
    assert r.status_code == 200 and r.json()["UserId"] != sbx.extras["seed"].app_user_id


def test_integration_details_follow_the_link_state(dv: Service, sbx: Sandbox) -> None:
    msg = _error(dv.get("RetrieveFinanceAndOperationsIntegrationDetails"), 400, "0x80048d0b")
    assert msg == "Dataverse instance isn't integrated with finance and operations."
    link = {"Url": sbx.finops_url, "TenantId": sbx.settings.tenant_id, "Id": str(uuid.uuid4())}
    sbx.store.kv_set("pp_link", link)
    body = dv.get("RetrieveFinanceAndOperationsIntegrationDetails").json()
    assert {k: body[k] for k in link} == link


# --- metadata -------------------------------------------------------------------------------------


def test_entity_definitions(dv: Service) -> None:
    r = dv.get("EntityDefinitions?$select=LogicalName&$filter=LogicalName eq 'msdyn_dualwriteentitymap'")
    assert [v["LogicalName"] for v in r.json()["value"]] == ["msdyn_dualwriteentitymap"]
    assert "MetadataId" in r.json()["value"][0]  # always returned
    one = dv.get("EntityDefinitions(LogicalName='account')"
                 "?$select=LogicalName,EntitySetName,PrimaryIdAttribute")
    assert {k: one.json()[k] for k in ("LogicalName", "EntitySetName", "PrimaryIdAttribute")} == {
        "LogicalName": "account", "EntitySetName": "accounts", "PrimaryIdAttribute": "accountid"}
    attrs = dv.get("EntityDefinitions(LogicalName='account')/Attributes?$filter=AttributeType eq 'Lookup'")
    company = next(a for a in attrs.json()["value"] if a["LogicalName"] == "msdyn_company")
    assert company["Targets"] == ["cdm_company"]
    keys = dv.get("EntityDefinitions(LogicalName='account')/Keys").json()["value"]
    assert ["accountnumber", "msdyn_company"] in [k["KeyAttributes"] for k in keys]
    rels = dv.get("EntityDefinitions(LogicalName='contact')/ManyToOneRelationships"
                  "?$select=ReferencingAttribute,ReferencingEntityNavigationPropertyName,ReferencedEntity")
    customer = [{k: v for k, v in rel.items() if k != "MetadataId"} for rel in rels.json()["value"]
                if rel["ReferencingAttribute"] == "parentcustomerid"]
    assert customer == [  # a Customer lookup is two relationships, one per table (multi-table lookups)
        {"ReferencingAttribute": "parentcustomerid", "ReferencedEntity": "account",
         "ReferencingEntityNavigationPropertyName": "parentcustomerid_account"},
        {"ReferencingAttribute": "parentcustomerid", "ReferencedEntity": "contact",
         "ReferencingEntityNavigationPropertyName": "parentcustomerid_contact"}]
    _error(dv.get("EntityDefinitions(LogicalName='nope')"), 404, "0x80040217")


# --- create, read, key addressing -------------------------------------------------------------


def test_create_returns_entity_id_and_representation(dv: Service, sbx: Sandbox) -> None:
    r = dv.post("accounts", json={"name": "Contoso", "accountnumber": "A1"})
    assert r.status_code == 204 and r.content == b""
    account_id = _id(r)
    assert r.headers["OData-EntityId"] == f"{BASE}/dataverse/api/data/v9.2/accounts({account_id})"
    r = dv.post("accounts?$select=name", json={"name": "Fabrikam"},
                headers={"Prefer": "return=representation"})
    assert r.status_code == 201 and r.headers["Preference-Applied"] == "return=representation"
    body = r.json()
    assert body["@odata.context"].endswith("$metadata#accounts(name)/$entity")
    assert set(body) == {"@odata.context", "@odata.etag", "name", "accountid"}
    got = dv.get(f"accounts({account_id})").json()
    seed = sbx.extras["seed"]
    owner = (got["_ownerid_value"], got["_owningbusinessunit_value"])
    assert owner == (seed.app_user_id, seed.business_unit_id)
    assert got["@odata.etag"] == f'W/"{got["versionnumber"]}"'


def test_alternate_keys_including_a_lookup_column(dv: Service) -> None:
    usmf, usrt = _company(dv, "USMF"), _company(dv, "USRT")
    for company in (usmf, usrt):
        dv.post("accounts", json={"name": f"n-{company[:4]}", "accountnumber": "C-1",
                                  "msdyn_company@odata.bind": f"/cdm_companies({company})"})
    r = dv.get(f"accounts(accountnumber='C-1',_msdyn_company_value={usrt})?$select=name,_msdyn_company_value")
    assert r.json()["_msdyn_company_value"] == usrt and r.json()["name"] == f"n-{usrt[:4]}"
    assert dv.get("cdm_companies(cdm_companycode='usrt')").json()["cdm_companyid"] == usrt  # case-insensitive
    msg = _error(dv.get(f"accounts(accountnumber='C-2',_msdyn_company_value={usrt})"), 404, "0x80040217")
    assert msg == "A record with the specified key values does not exist in account entity"
    missing = str(uuid.uuid4())
    assert _error(dv.get(f"accounts({missing})"), 404) == f"account With Id = {missing} Does Not Exist"
    assert "not a key" in _error(dv.get("accounts(name='x')"), 400)


def test_lookups_bind_read_and_clear(dv: Service) -> None:
    usmf = _company(dv)
    account = _id(dv.post("accounts", json={"name": "A", "accountnumber": "A-9"}))
    r = dv.post("contacts", json={"lastname": "L",
                                  "msdyn_company@odata.bind": "cdm_companies(cdm_companycode='USMF')",
                                  "parentcustomerid_account@odata.bind":
                                      f"{dv.root}accounts(accountnumber='A-9')"},
                headers={"Prefer": "return=representation"})
    body = r.json()
    assert (body["_msdyn_company_value"], body["_parentcustomerid_value"]) == (usmf, account)
    contact = body["contactid"]
    assert dv.patch(f"contacts({contact})", json={"msdyn_company@odata.bind": None}).status_code == 204
    assert dv.get(f"contacts({contact})?$select=_msdyn_company_value").json()["_msdyn_company_value"] is None
    ghost = f"/cdm_companies({uuid.uuid4()})"
    _error(dv.patch(f"contacts({contact})", json={"msdyn_company@odata.bind": ghost}), 404, "0x80040217")
    assert "must reference 'cdm_companies'" in _error(
        dv.patch(f"contacts({contact})", json={"msdyn_company@odata.bind": f"/accounts({account})"}), 400)


@pytest.mark.parametrize("nav", ["parentcustomerid", "ParentCustomerId_Account", "msdyn_Company", "nope"])
def test_bind_needs_the_exact_navigation_property(dv: Service, nav: str) -> None:
    """web-api-client-errors: the Customer lookup `parentcustomerid` has no navigation property of that
    name (it has `parentcustomerid_account` and `parentcustomerid_contact`); names are case-sensitive."""
    account = _id(dv.post("accounts", json={"name": "A"}))
    msg = _error(dv.post("contacts", json={"lastname": "L", f"{nav}@odata.bind": f"accounts({account})"}),
                 400, "0x80048d19")
    assert msg.startswith("Error identified in Payload provided by the user for Entity :'contacts'  ---->  "
                          f"InnerException : Microsoft.OData.ODataException: An undeclared property '{nav}' "
                          "which only has property annotations in the payload")


def test_multi_table_lookups_take_each_target_through_its_own_navigation_property(
        dv: Service, sbx: Sandbox) -> None:
    account = _id(dv.post("accounts", json={"name": "A"}))
    parent = _id(dv.post("contacts", json={"lastname": "Parent"}))
    child = _id(dv.post("contacts", json={"lastname": "C", "parentcustomerid_account@odata.bind":
                                          f"/accounts({account})"}))
    assert dv.get(f"contacts({child})").json()["_parentcustomerid_value"] == account
    dv.patch(f"contacts({child})", json={"parentcustomerid_contact@odata.bind": f"/contacts({parent})"})
    assert dv.get(f"contacts({child})").json()["_parentcustomerid_value"] == parent
    assert "must reference 'contacts'" in _error(dv.patch(f"contacts({child})", json={
        "parentcustomerid_contact@odata.bind": f"/accounts({account})"}), 400)
    # Owner: one navigation property that takes a user or a team
    team = sbx.store.insert(ENTITIES["teams"], {"name": "USMF DW"})["teamid"]
    for owner in (f"/teams({team})", f"/systemusers({sbx.extras['seed'].app_user_id})"):
        assert dv.patch(f"accounts({account})", json={"ownerid@odata.bind": owner}).status_code == 204
        assert dv.get(f"accounts({account})").json()["_ownerid_value"] == owner.split("(")[1][:-1]


def test_unknown_or_mistyped_attributes_are_400(dv: Service) -> None:
    msg = _error(dv.post("accounts", json={"Name": "A"}), 400, "0x0")  # web-api-client-errors
    assert msg == ("An error occurred while validating input parameters: Microsoft.Crm.CrmException: "
                   "Invalid property 'Name' was found in entity 'Microsoft.Dynamics.CRM.account'. ---> "
                   "Microsoft.OData.ODataException: Does not support untyped value in non-open type.")
    _error(dv.post("accounts", json={"_msdyn_company_value": str(uuid.uuid4())}), 400)
    assert "Edm.Int32" in _error(dv.post("accounts", json={"customertypecode": "three"}), 400)
    assert "not valid JSON" in _error(dv.post("accounts", content=b"{nope"), 400)
    assert dv.get("accounts?$select=name").json()["value"] == []


# --- update, upsert, conditions, delete -------------------------------------------------------


def test_upsert_and_conditional_writes(dv: Service) -> None:
    r = dv.patch("accounts(accountnumber='U-1')", json={"name": "created by upsert"})
    assert r.status_code == 204
    account = _id(r)
    r = dv.patch("accounts(accountnumber='U-1')", json={"name": "updated by upsert"})
    assert r.status_code == 204 and _id(r) == account
    assert dv.get(f"accounts({account})").json()["name"] == "updated by upsert"
    create_only = {"If-None-Match": "*"}
    msg = _error(dv.patch("accounts(accountnumber='U-1')", json={"name": "x"}, headers=create_only),
                 412, "0x80040237")
    assert msg == "A record with matching key values already exists."
    update_only = {"If-Match": "*"}
    _error(dv.patch(f"accounts({uuid.uuid4()})", json={"name": "x"}, headers=update_only), 404, "0x80040217")
    assert dv.patch("accounts(accountnumber='U-2')", json={"name": "new"},
                    headers={"If-None-Match": "*"}).status_code == 204
    etag = dv.get(f"accounts({account})").json()["@odata.etag"]
    r = dv.patch(f"accounts({account})", json={"name": "v2"}, headers={"If-Match": etag,
                                                                        "Prefer": "return=representation"})
    assert r.status_code == 200 and r.json()["name"] == "v2" and r.json()["@odata.etag"] != etag
    msg = _error(dv.patch(f"accounts({account})", json={"name": "v3"}, headers={"If-Match": etag}),
                 412, "0x80060882")
    assert msg == "The version of the existing record doesn't match the RowVersion property provided."
    current = dv.get(f"accounts({account})").json()["@odata.etag"]
    assert dv.get(f"accounts({account})", headers={"If-None-Match": current}).status_code == 304
    _error(dv.delete(f"accounts({account})", headers={"If-Match": etag}), 412)
    assert dv.delete(f"accounts({account})", headers={"If-Match": current}).status_code == 204
    _error(dv.delete(f"accounts({account})"), 404, "0x80040217")


def test_single_property_routes(dv: Service) -> None:
    account = _id(dv.post("accounts", json={"name": "A", "description": "d"}))
    assert dv.get(f"accounts({account})/name").json()["value"] == "A"
    assert dv.put(f"accounts({account})/name", json={"value": "B"}).status_code == 204
    assert dv.delete(f"accounts({account})/description").status_code == 204
    got = dv.get(f"accounts({account})?$select=name,description").json()
    assert (got["name"], got["description"]) == ("B", None)
    _error(dv.put(f"accounts({account})", json={}), 405)


# --- queries and paging ---------------------------------------------------------------------------


def test_query_errors_are_documented_messages(dv: Service) -> None:
    # web-api-client-errors: an unknown property is code 0x0, an unknown resource 0x8006088a
    for query in ("accounts?$filter=x eq 1", "accounts?$select=x", "accounts?$orderby=x",
                  "accounts?$expand=x", "accounts?$apply=groupby((x))"):
        msg = _error(dv.get(query), 400, "0x0")
        assert msg == "Could not find a property named 'x' on type 'Microsoft.Dynamics.CRM.account'."
    assert "$skip is not supported" in _error(dv.get("accounts?$skip=5"), 400)
    assert _error(dv.get("Account"), 404, "0x8006088a") == "Resource not found for the segment 'Account'."
    r = dv.get("accounts", headers={"Prefer": "odata.maxpagesize=9999"})
    assert r.headers["Preference-Applied"] == "odata.maxpagesize=5000"  # the maximum
    assert "accounts" in {s["name"] for s in dv.get("").json()["value"]}


def test_paging_12000_rows_with_and_without_orderby(dv: Service, sbx: Sandbox) -> None:
    accounts = ENTITIES["accounts"]
    ids = {r["accountid"] for r in sbx.store.insert_rows(
        accounts, [{"name": f"n{i % 7}", "accountnumber": f"{i:05d}"} for i in range(12_000)])}
    for query in ("accounts?$select=accountid",
                  "accounts?$select=accountid,name&$orderby=name desc&$count=true"):
        seen: list[str] = []
        url, pages = query, 0
        while url:
            r = dv.get(url, headers={"Prefer": "odata.maxpagesize=5000"})
            assert r.status_code == 200 and r.headers["Preference-Applied"] == "odata.maxpagesize=5000"
            body = r.json()
            seen += [v["accountid"] for v in body["value"]]
            if "$count" in query:
                assert body["@odata.count"] == 5000  # Dataverse caps the count it returns
                assert body["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] is True
            url = body.get("@odata.nextLink")
            assert url is None or (url.startswith(dv.root) and "$skiptoken=" in url)
            pages += 1
        assert pages == 3 and len(seen) == len(set(seen)) == 12_000 and set(seen) == ids
    assert dv.get("accounts?$top=3").json()["value"].__len__() == 3
    assert "@odata.nextLink" not in dv.get("accounts?$top=3").json()
    assert dv.get("accounts/$count").text == "5000"


def test_apply_groupby_counts_per_company(dv: Service, sbx: Sandbox) -> None:
    usmf, usrt = _company(dv, "USMF"), _company(dv, "USRT")
    rows = [{"name": "x", "_msdyn_company_value": c} for c in [usmf] * 5 + [usrt] * 3 + [None] * 2]
    sbx.store.insert_rows(ENTITIES["accounts"], rows)
    r = dv.get("accounts?$apply=groupby((_msdyn_company_value),aggregate($count as n))")
    counts = {v.get("_msdyn_company_value"): v["n"] for v in r.json()["value"]}
    assert counts == {usmf: 5, usrt: 3, None: 2}
    # aggregate-data.md: a group whose key is empty leaves the key out of its row
    assert {"n": 2} in r.json()["value"]
    assert r.json()["@odata.context"].endswith("#accounts")
    r = dv.get("accounts?$apply=filter(_msdyn_company_value ne null)/aggregate($count as n)")
    assert r.json()["value"] == [{"n": 8}]


def test_aggregates_over_more_rows_than_the_limit_are_refused_and_the_client_pages_instead(
        dv: Service, sbx: Sandbox, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataverse, "AGGREGATE_LIMIT", 6)  # the platform's is 50,000: keep the test small
    usmf = _company(dv, "USMF")
    rows = [{"name": f"a{i}", "_msdyn_company_value": usmf if i % 3 else None} for i in range(9)]
    sbx.store.insert_rows(ENTITIES["accounts"], rows)
    grouped = "accounts?$apply=groupby((_msdyn_company_value),aggregate($count as n))"
    message = _error(dv.get(grouped), 400, "0x8004e023")
    assert message == "AggregateQueryRecordLimit exceeded. Cannot perform this operation."
    # The limit counts the rows the aggregate covers, after its filter.
    r = dv.get("accounts?$apply=filter(_msdyn_company_value ne null)/aggregate($count as n)")
    assert r.json()["value"] == [{"n": 6}]
    client.headers["Authorization"] = f"Bearer {dv.token}"
    counts = DataverseClient(client, f"{BASE}/dataverse").count_by("accounts", ["_msdyn_company_value"])
    assert counts == [{"_msdyn_company_value": None, "count": 3}, {"_msdyn_company_value": usmf, "count": 6}]


# --- bulk messages --------------------------------------------------------------------------------


def _targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.account", **r} for r in rows]}


def test_create_multiple(dv: Service) -> None:
    body = _targets([{"name": "A"}, {"name": "B"}])
    body["Targets"][1]["@odata.type"] = f"#{CRM}.account"  # the leading '#' is optional
    r = dv.post(f"accounts/{CRM}.CreateMultiple", json=body)
    assert r.status_code == 200
    ids = r.json()["Ids"]
    assert r.json()["@odata.context"].endswith("$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse")
    assert sorted(dv.get(f"accounts({i})").json()["name"] for i in ids) == ["A", "B"]


def test_odata_type_is_mandatory_and_nothing_is_written(dv: Service) -> None:
    body = _targets([{"name": "A"}])
    body["Targets"].append({"name": "B"})
    msg = _error(dv.post(f"accounts/{CRM}.CreateMultiple", json=body), 400)
    assert "Targets[1]" in msg and "Microsoft.Dynamics.CRM.account" in msg
    assert dv.get("accounts").json()["value"] == []


def test_update_multiple_is_all_or_nothing(dv: Service, sbx: Sandbox) -> None:
    usmf = _company(dv)
    stored = sbx.store.insert_rows(ENTITIES["accounts"], [{"name": f"a{i}"} for i in range(1000)])
    targets = [{"accountid": r["accountid"], "msdyn_company@odata.bind": f"/cdm_companies({usmf})"}
               for r in stored]
    bad = [*targets, {"accountid": str(uuid.uuid4()), "name": "ghost"}]
    _error(dv.post(f"accounts/{CRM}.UpdateMultiple", json=_targets(bad)), 404, "0x80040217")
    grouped = "accounts?$apply=groupby((_msdyn_company_value),aggregate($count as n))"
    assert dv.get(grouped).json()["value"] == [{"n": 1000}]
    r = dv.post(f"accounts/{CRM}.UpdateMultiple", json=_targets(targets))
    assert r.status_code == 204
    assert dv.get(grouped).json()["value"] == [{"_msdyn_company_value": usmf, "n": 1000}]
    _error(dv.post(f"accounts/{CRM}.UpdateMultiple", json=_targets([{"name": "no key"}])), 400)


def test_upsert_multiple_by_alternate_key_and_primary_key(dv: Service) -> None:
    existing = _id(dv.post("accounts", json={"name": "old", "accountnumber": "0000001"}))
    other = _id(dv.post("accounts", json={"name": "other"}))
    targets = [{"@odata.id": "accounts(accountnumber='0000001')", "name": "updated"},
               {"@odata.id": "accounts(accountnumber='0000002')", "name": "created"},
               {"accountid": other, "name": "by id"}]
    assert dv.post(f"accounts/{CRM}.UpsertMultiple", json=_targets(targets)).status_code == 204
    assert dv.get(f"accounts({existing})").json()["name"] == "updated"
    assert dv.get("accounts(accountnumber='0000002')").json()["name"] == "created"
    assert dv.get(f"accounts({other})").json()["name"] == "by id"
    new = str(uuid.uuid4())  # by id, in any case: an id that exists updates, one that does not creates
    targets = [{"accountid": other.upper(), "name": "by upper-case id"},
               {"accountid": new.upper(), "name": "new"}]
    assert dv.post(f"accounts/{CRM}.UpsertMultiple", json=_targets(targets)).status_code == 204
    assert dv.get(f"accounts({other})").json()["name"] == "by upper-case id"
    assert dv.get(f"accounts({new})").json()["name"] == "new"
    bad = [{"@odata.id": "accounts(accountnumber='0000003')", "name": "n"}, {"@odata.id": "contacts(x='1')"}]
    _error(dv.post(f"accounts/{CRM}.UpsertMultiple", json=_targets(bad)), 400)
    _error(dv.get("accounts(accountnumber='0000003')"), 404)  # rolled back with the failing target


# --- write hooks ----------------------------------------------------------------------------------


def test_write_hooks_see_writes_and_can_veto_them(dv: Service, sbx: Sandbox) -> None:
    events: list[WriteEvent] = []

    def hook(event: WriteEvent) -> None:
        events.append(event)
        if any(r.get("name") == "veto" for r in event.rows):
            raise ODataError(400, "vetoed by the runtime", "0x80040265")

    sbx.extras["write_hooks"] = [hook]
    account = _id(dv.post("accounts", json={"name": "ok"}))
    first = events[0]
    assert (first.entity.name, first.op, first.rows[0]["accountid"]) == ("accounts", "create", account)
    msg = _error(dv.patch(f"accounts({account})", json={"name": "veto"}), 400, "0x80040265")
    assert msg == "vetoed by the runtime"
    assert dv.get(f"accounts({account})").json()["name"] == "ok"
    other = _id(dv.post("accounts", json={"name": "other"}))
    targets = [{"accountid": account.upper(), "name": "bulk"}, {"accountid": other, "name": "bulk"}]
    assert dv.post(f"accounts/{CRM}.UpdateMultiple", json=_targets(targets)).status_code == 204
    bulk = events[-1]
    assert (bulk.op, sorted(r["accountid"] for r in bulk.rows)) == ("update", sorted([account, other]))
    assert {r["name"] for r in bulk.rows} == {"bulk"}
    dv.delete(f"accounts({account})")
    assert [e.op for e in events] == ["create", "update", "create", "update", "delete"]
    assert json.loads(json.dumps(events[-1].rows[0]))["name"] == "bulk"


# --- table definitions as documented (query-metadata-web-api, retrieve-metadata-name-metadataid) ------


def test_definitions_by_logical_name_and_by_metadata_id(dv: Service) -> None:
    by_name = dv.get("EntityDefinitions(LogicalName='account')?$select=LogicalName").json()
    by_id = dv.get(f"EntityDefinitions({by_name['MetadataId']})?$select=LogicalName").json()
    assert by_id["LogicalName"] == "account" and by_id["MetadataId"] == by_name["MetadataId"]
    attrs = dv.get(f"EntityDefinitions({by_id['MetadataId']})/Attributes"
                   "?$filter=LogicalName eq 'accountcategorycode'&$select=MetadataId").json()["value"]
    assert attrs == [{"@odata.type": "#Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
                      "MetadataId": attrs[0]["MetadataId"]}]
    one = dv.get(f"EntityDefinitions({by_id['MetadataId']})/Attributes({attrs[0]['MetadataId']})"
                 "/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName"
                 "&$expand=OptionSet($select=Options),GlobalOptionSet($select=Options)").json()
    labels = [o["Label"]["UserLocalizedLabel"]["Label"] for o in one["OptionSet"]["Options"]]
    assert (one["LogicalName"], labels) == ("accountcategorycode", ["Preferred Customer", "Standard"])
    assert set(one["GlobalOptionSet"]) == {"MetadataId", "Options"}
    assert "@odata.type" not in one  # the URL cast to its type


def test_attribute_types_as_the_real_tables_have_them(dv: Service) -> None:
    def types(table: str) -> dict[str, str]:
        rows = dv.get(f"EntityDefinitions(LogicalName='{table}')/Attributes"
                      "?$select=LogicalName,AttributeType").json()["value"]
        return {r["LogicalName"]: r["AttributeType"] for r in rows}

    account, contact = types("account"), types("contact")
    assert {k: account[k] for k in ("accountid", "name", "customertypecode", "creditlimit", "ownerid",
                                    "statecode", "statuscode", "msdyn_company", "description")} == {
        "accountid": "Uniqueidentifier", "name": "String", "customertypecode": "Picklist",
        "creditlimit": "Money", "ownerid": "Owner", "statecode": "State", "statuscode": "Status",
        "msdyn_company": "Lookup", "description": "Memo"}
    assert contact["parentcustomerid"] == "Customer"
    assert types("cdm_company")["cdm_companycode"] == "String"


def test_derived_properties_need_a_cast(dv: Service) -> None:
    base = "EntityDefinitions(LogicalName='account')/Attributes"
    msg = _error(dv.get(f"{base}?$select=LogicalName,Targets"), 400, "0x0")
    assert msg == ("Could not find a property named 'Targets' on type "
                   "'Microsoft.Dynamics.CRM.AttributeMetadata'.")
    _error(dv.get(f"{base}?$expand=OptionSet"), 400, "0x0")
    money = dv.get(f"{base}/Microsoft.Dynamics.CRM.MoneyAttributeMetadata?$select=LogicalName,Precision")
    precision = [(a["LogicalName"], a["Precision"]) for a in money.json()["value"]]
    assert precision == [("creditlimit", 2), ("revenue", 2)]
    lookups = dv.get(f"{base}/Microsoft.Dynamics.CRM.LookupAttributeMetadata?$select=LogicalName,Targets"
                     "&$filter=AttributeType eq Microsoft.Dynamics.CRM.AttributeTypeCode'Owner'").json()
    owner = [(a["LogicalName"], a["Targets"]) for a in lookups["value"]]
    assert owner == [("ownerid", ["systemuser", "team"])]


def test_relationships_both_ways_and_keys(dv: Service) -> None:
    one_to_many = dv.get("EntityDefinitions(LogicalName='account')/OneToManyRelationships"
                         "?$select=SchemaName,ReferencingEntity,ReferencingEntityNavigationPropertyName").json()
    names = {(r["SchemaName"], r["ReferencingEntity"], r["ReferencingEntityNavigationPropertyName"])
             for r in one_to_many["value"]}
    assert ("contact_customer_accounts", "contact", "parentcustomerid_account") in names
    key = dv.get("EntityDefinitions(LogicalName='cdm_company')/Keys?$select=KeyAttributes").json()["value"]
    assert [k["KeyAttributes"] for k in key] == [["cdm_companycode"]]


# --- $expand (join-tables.md) ---------------------------------------------------------------------


def test_expand_single_and_collection_valued_navigation_properties(dv: Service) -> None:
    contact = _id(dv.post("contacts", json={"firstname": "Susanna", "fullname": "Susanna Stubberod"}))
    account = _id(dv.post("accounts", json={"name": "Litware", "primarycontactid@odata.bind":
                                            f"/contacts({contact})"}))
    dv.post("accounts", json={"name": "No contact"})
    dv.patch(f"contacts({contact})", json={"parentcustomerid_account@odata.bind": f"/accounts({account})"})
    r = dv.get("accounts?$select=name&$expand=primarycontactid($select=fullname),"
               "contact_customer_accounts($select=fullname)&$orderby=name")
    body = r.json()
    assert body["@odata.context"].endswith(
        "#accounts(name,primarycontactid(fullname),contact_customer_accounts(fullname))")
    litware, lonely = body["value"]
    assert litware["primarycontactid"] == {"fullname": "Susanna Stubberod", "contactid": contact}
    assert "_primarycontactid_value" not in litware  # only what was selected
    assert [c["fullname"] for c in litware["contact_customer_accounts"]] == ["Susanna Stubberod"]
    assert litware["contact_customer_accounts"][0]["_parentcustomerid_value"] == account
    link = litware["contact_customer_accounts@odata.nextLink"]
    assert link == f"{dv.root}accounts({account})/contact_customer_accounts?$select=fullname"
    assert [c["fullname"] for c in dv.get(link).json()["value"]] == ["Susanna Stubberod"]
    assert lonely["primarycontactid"] is None and lonely["contact_customer_accounts"] == []
    one = dv.get(f"accounts({account})?$select=name&$expand=primarycontactid($select=firstname)").json()
    assert one["primarycontactid"]["firstname"] == "Susanna"
    assert _error(dv.get("accounts?$expand=primarycontactid($top=1)"), 400, "0x80060888").startswith(
        "Only $select and $filter clause can be provided")


def test_top_is_ignored_with_a_page_size_preference(dv: Service, sbx: Sandbox) -> None:
    sbx.store.insert_rows(ENTITIES["accounts"], [{"name": f"a{i}"} for i in range(5)])
    assert len(dv.get("accounts?$top=2").json()["value"]) == 2
    # page-results.md: "If you include both, $top is ignored."
    r = dv.get("accounts?$top=2", headers={"Prefer": "odata.maxpagesize=3"})
    assert len(r.json()["value"]) == 3 and "@odata.nextLink" in r.json()


# --- bulk message availability (bulk-operations.md, Availability) -----------------------------------


def test_sdkmessagefilters_say_which_tables_take_bulk_messages(dv: Service) -> None:
    def filters(message: str, table: str) -> list[dict[str, Any]]:
        r = dv.get("sdkmessagefilters?$select=sdkmessagefilterid&$filter=sdkmessageid/name eq @message and "
                   f"primaryobjecttypecode eq @table&@message='{message}'&@table='{table}'")
        assert r.status_code == 200, r.text
        return list(r.json()["value"])

    assert len(filters("CreateMultiple", "account")) == 1
    assert filters("UpsertMultiple", "team") == []
    assert len(filters("Create", "team")) == 1
    target = {"@odata.type": "Microsoft.Dynamics.CRM.team", "name": "T"}
    msg = _error(dv.post(f"teams/{CRM}.CreateMultiple", json={"Targets": [target]}), 400, "0x80040800")
    assert msg.startswith("The 'CreateMultiple' method does not support entities of type 'team'.")
    _error(dv.post("sdkmessagefilters", json={}), 405)


# --- annotations ------------------------------------------------------------------------------------

FORMATTED = "OData.Community.Display.V1.FormattedValue"
LOOKUPS = "Microsoft.Dynamics.CRM.associatednavigationproperty,Microsoft.Dynamics.CRM.lookuplogicalname"


def test_formatted_values_and_lookup_annotations_when_asked(dv: Service, sbx: Sandbox) -> None:
    """select-columns.md, Formatted values and Lookup property data; aggregate-data.md."""
    currencies = ENTITIES["transactioncurrencies"]
    euro, dollar = (sbx.store.insert(currencies, {"isocurrencycode": code, "currencyname": name})
                    [currencies.key[0]] for code, name in (("EUR", "Euro"), ("USD", "US Dollar")))
    sbx.store.update(ENTITIES["organizations"], {"organizationid": sbx.extras["seed"].organization_id},
                     {"basecurrencyid": dollar})  # an aggregate of money is in the base currency
    contact = _id(dv.post("contacts", json={"fullname": "Susanna Stubberod"}))
    team = sbx.store.insert(ENTITIES["teams"], {"name": "USMF DW"})["teamid"]
    account = _id(dv.post("accounts", json={
        "name": "Litware", "revenue": 20000, "customertypecode": 1, "accountcategorycode": 2,
        "transactioncurrencyid@odata.bind": f"transactioncurrencies({euro})",
        "primarycontactid@odata.bind": f"contacts({contact})", "ownerid@odata.bind": f"teams({team})"}))
    query = (f"accounts({account})?$select=name,revenue,customertypecode,_primarycontactid_value,"
             "_ownerid_value,createdon,statecode")
    plain = dv.get(query).json()
    assert not [k for k in plain if "@" in k and k != "@odata.etag" and k != "@odata.context"]
    assert plain["_transactioncurrencyid_value"] == euro  # a currency column brings its currency
    r = dv.get(query, headers={"Prefer": f'odata.include-annotations="{FORMATTED}"'})
    assert r.headers["Preference-Applied"] == f'odata.include-annotations="{FORMATTED}"'
    row = r.json()
    created = plain["createdon"]
    assert {k.split("@")[0]: v for k, v in row.items() if k.endswith("@" + FORMATTED)} == {
        "revenue": "€20,000.00", "customertypecode": "Competitor",
        "_primarycontactid_value": "Susanna Stubberod", "_ownerid_value": "USMF DW", "statecode": "Active",
        "_transactioncurrencyid_value": "Euro",
        "createdon": annotations.when(created)}
    assert list(row).index(f"revenue@{FORMATTED}") == list(row).index("revenue") - 1  # before its property
    assert f"name@{FORMATTED}" not in row  # text has none
    row = dv.get(query, headers={"Prefer": f'odata.include-annotations="{LOOKUPS}"'}).json()
    assert row[f"_ownerid_value@{LOOKUPS.split(',')[0]}"] == "ownerid"
    assert row[f"_ownerid_value@{LOOKUPS.split(',')[1]}"] == "team"
    assert f"revenue@{FORMATTED}" not in row
    everything = dv.get(f"contacts?$select=_parentcustomerid_value&$filter=contactid eq {contact}",
                        headers={"Prefer": 'odata.include-annotations="*"'}).json()["value"][0]
    assert "_parentcustomerid_value@" + FORMATTED not in everything  # an empty lookup has none
    dv.patch(f"contacts({contact})", json={"parentcustomerid_account@odata.bind": f"accounts({account})"})
    everything = dv.get(f"contacts({contact})?$select=_parentcustomerid_value",
                        headers={"Prefer": 'odata.include-annotations="*"'}).json()
    assert everything[f"_parentcustomerid_value@{LOOKUPS.split(',')[0]}"] == "parentcustomerid_account"
    assert everything[f"_parentcustomerid_value@{FORMATTED}"] == "Litware"
    grouped = "groupby((customertypecode),aggregate($count as n,revenue with sum as total))"
    counted = dv.get(f"accounts?$apply={grouped}",
                     headers={"Prefer": f'odata.include-annotations="{FORMATTED}"'}).json()["value"]
    assert counted == [{f"customertypecode@{FORMATTED}": "Competitor", "customertypecode": 1,
                        f"n@{FORMATTED}": "1", "n": 1, f"total@{FORMATTED}": "$20,000.00", "total": 20000}]
    prefer = f'return=representation,odata.include-annotations="{FORMATTED}"'
    created_row = dv.post("accounts?$select=name,accountcategorycode", headers={"Prefer": prefer},
                          json={"name": "B", "accountcategorycode": 1})
    assert created_row.json()[f"accountcategorycode@{FORMATTED}"] == "Preferred Customer"
    assert created_row.headers["Preference-Applied"] == (f'odata.include-annotations="{FORMATTED}",'
                                                         "return=representation")
