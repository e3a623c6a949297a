"""Dataverse Web API emulation over HTTP (in process): auth, functions, metadata, CRUD, paging, bulk."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from dwlib.clients import DataverseClient
from dwlib.sandbox import dataverse
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
    assert {"ReferencingAttribute": "parentcustomerid", "ReferencingEntityNavigationPropertyName":
            "parentcustomerid", "ReferencedEntity": "account"} in [
        {k: v for k, v in rel.items() if k != "MetadataId"} for rel in rels.json()["value"]]
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
                                  "parentcustomerid@odata.bind": f"{dv.root}accounts(accountnumber='A-9')"},
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
    assert "undeclared property 'nope'" in _error(
        dv.patch(f"contacts({contact})", json={"nope@odata.bind": f"/accounts({account})"}), 400)


def test_unknown_or_mistyped_attributes_are_400(dv: Service) -> None:
    msg = _error(dv.post("accounts", json={"name": "A", "colour": "red"}), 400)
    assert msg == ("The property 'colour' does not exist on type 'Microsoft.Dynamics.CRM.account'. "
                   "Make sure to only use property names that are defined by the type.")
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
    msg = _error(dv.get("accounts?$filter=x eq 1"), 400, "0x80060888")
    assert msg == "Could not find a property named 'x' on type 'Microsoft.Dynamics.CRM.account'."
    assert "$skip is not supported" in _error(dv.get("accounts?$skip=5"), 400)
    assert "$expand" in _error(dv.get(f"accounts({uuid.uuid4()})?$expand=primarycontactid"), 400)
    _error(dv.get("nothings"), 404)
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
    counts = {v["_msdyn_company_value"]: v["n"] for v in r.json()["value"]}
    assert counts == {usmf: 5, usrt: 3, None: 2}
    assert r.json()["@odata.context"].endswith("#accounts(_msdyn_company_value,n)")
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
    assert dv.get(grouped).json()["value"] == [{"_msdyn_company_value": None, "n": 1000}]
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
