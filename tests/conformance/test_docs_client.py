"""A client written from Microsoft's documentation alone, against a real sandbox process over HTTPS.

Nothing of dwlib's clients here: raw httpx, the sandbox's URLs, its CA bundle and its app
credentials from `connection.yaml` — what someone who has read only the Web API pages would have.
It creates, reads, updates, deletes, filters, pages, bulk-creates (CreateMultiple, after asking
sdkmessagefilters) and upserts by alternate key.

Pages: v2-oauth2-client-creds-grant-flow (token), compose-http-requests-handle-errors (headers),
create-entity-web-api, retrieve-entity-using-web-api, update-delete-entities-using-web-api,
query/filter-rows, query/page-results, bulk-operations, use-alternate-key-reference-record.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0",
           "If-None-Match": "null"}
ENTITY_ID = re.compile(r"\(([0-9a-f-]{36})\)$")


@pytest.fixture(scope="module")
def web_api(start_sandbox: Any) -> Iterator[httpx.Client]:
    """An httpx client on `[Organization URI]/api/data/v9.2/` with a token for the environment."""
    connection = start_sandbox("new-new", rows=0, fresh=True)
    verify = ssl.create_default_context(cafile=connection["ca_bundle"])
    resource = connection["dataverse_url"]
    with httpx.Client(verify=verify, timeout=30) as plain:
        # "POST /{tenant}/oauth2/v2.0/token" with client_id, scope=<resource>/.default, client_secret
        token = plain.post(f"{connection['authority']}/oauth2/v2.0/token", data={
            "client_id": connection["client_id"], "scope": f"{resource}/.default",
            "client_secret": Path(connection["client_secret_file"]).read_text().strip(),
            "grant_type": "client_credentials"})
        assert token.status_code == 200, token.text
        assert token.json()["token_type"] == "Bearer"
    headers = {**HEADERS, "Authorization": f"Bearer {token.json()['access_token']}"}
    root = f"{resource}/api/data/v9.2/"
    with httpx.Client(base_url=root, verify=verify, headers=headers, timeout=30) as api:
        yield api


def _created_id(response: httpx.Response) -> str:
    assert response.status_code == 204, response.text
    found = ENTITY_ID.search(response.headers["OData-EntityId"])
    assert found is not None
    return found.group(1)


def test_create_read_update_delete(web_api: httpx.Client) -> None:
    account = _created_id(web_api.post("accounts", json={"name": "Docs client A", "revenue": 5000000}))
    read = web_api.get(f"accounts({account})", params={"$select": "name,revenue"})
    assert read.status_code == 200
    assert (read.json()["name"], read.json()["revenue"]) == ("Docs client A", 5000000)
    assert read.json()["@odata.etag"].startswith('W/"')
    # "If-Match: * ensures you don't create a new record by accidentally performing an upsert"
    updated = web_api.patch(f"accounts({account})", json={"name": "Docs client A2"},
                            headers={"If-Match": "*"})
    assert updated.status_code == 204
    assert web_api.get(f"accounts({account})?$select=name").json()["name"] == "Docs client A2"
    assert web_api.delete(f"accounts({account})").status_code == 204
    gone = web_api.get(f"accounts({account})")
    assert gone.status_code == 404 and gone.json()["error"]["message"]
    missing = web_api.patch(f"accounts({account})", json={"name": "x"}, headers={"If-Match": "*"})
    assert missing.status_code == 404


def test_filter_and_page(web_api: httpx.Client) -> None:
    for i in range(5):
        _created_id(web_api.post("accounts", json={"name": f"Docs page {i}"}))
    url: str | None = "accounts?$select=name&$filter=startswith(name,'Docs page')&$orderby=name"
    names, pages = [], 0
    while url:
        # "Prefer: odata.maxpagesize" — re-send the same preference with every @odata.nextLink
        page = web_api.get(url, headers={"Prefer": "odata.maxpagesize=2"})
        assert page.status_code == 200 and page.headers["Preference-Applied"] == "odata.maxpagesize=2"
        names += [row["name"] for row in page.json()["value"]]
        url = page.json().get("@odata.nextLink")
        pages += 1
    assert names == [f"Docs page {i}" for i in range(5)] and pages == 3
    three = web_api.get("accounts?$select=name&$filter=startswith(name,'Docs page')&$top=3")
    assert len(three.json()["value"]) == 3 and "@odata.nextLink" not in three.json()


def test_bulk_create_where_the_table_supports_it(web_api: httpx.Client) -> None:
    supported = web_api.get("sdkmessagefilters", params={
        "$select": "sdkmessagefilterid",
        "$filter": "sdkmessageid/name eq @message and primaryobjecttypecode eq @table",
        "@message": "'CreateMultiple'", "@table": "'account'"})
    assert supported.status_code == 200 and len(supported.json()["value"]) == 1
    targets = [{"@odata.type": "Microsoft.Dynamics.CRM.account", "name": f"Docs bulk {i}"} for i in range(3)]
    created = web_api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    assert created.status_code == 200, created.text
    ids = created.json()["Ids"]
    assert len(ids) == 3
    for account_id, target in zip(ids, targets, strict=True):
        assert web_api.get(f"accounts({account_id})?$select=name").json()["name"] == target["name"]


def test_upsert_by_alternate_key(web_api: httpx.Client) -> None:
    # PATCH to accounts(accountnumber='…') without If-Match: created the first time, updated the next
    key = "accounts(accountnumber='DOCS-001')"
    first = web_api.patch(key, json={"name": "Docs upsert"})
    account = _created_id(first)
    second = web_api.patch(key, json={"name": "Docs upsert, again"})
    assert _created_id(second) == account
    assert web_api.get(f"{key}?$select=name").json()["name"] == "Docs upsert, again"
    # If-None-Match: * makes it create-only: the row exists, so 412
    assert web_api.patch(key, json={"name": "x"}, headers={"If-None-Match": "*"}).status_code == 412
    rows = web_api.get("accounts?$select=accountnumber&$filter=accountnumber eq 'DOCS-001'").json()["value"]
    assert len(rows) == 1


def test_lookup_through_the_navigation_property_the_definitions_name(web_api: httpx.Client) -> None:
    # web-api-navigation-properties: the navigation property of a Customer lookup per target table
    relationships = web_api.get(
        "EntityDefinitions(LogicalName='contact')/ManyToOneRelationships",
        params={"$select": "ReferencingAttribute,ReferencedEntity,ReferencingEntityNavigationPropertyName",
                "$filter": "ReferencingAttribute eq 'parentcustomerid'"}).json()["value"]
    nav = next(r["ReferencingEntityNavigationPropertyName"] for r in relationships
               if r["ReferencedEntity"] == "account")
    account = _created_id(web_api.post("accounts", json={"name": "Docs parent"}))
    contact = _created_id(web_api.post("contacts", json={"lastname": "Docs child",
                                                         f"{nav}@odata.bind": f"/accounts({account})"}))
    assert web_api.post("contacts", json={"lastname": "x", "parentcustomerid@odata.bind":
                                          f"/accounts({account})"}).status_code == 400
    web_api.patch(f"accounts({account})", json={"primarycontactid@odata.bind": f"/contacts({contact})"},
                  headers={"If-Match": "*"})
    # join-tables: $expand a single-valued navigation property with a nested $select
    row = web_api.get(f"accounts({account})", params={
        "$select": "name", "$expand": "primarycontactid($select=lastname)"}).json()
    assert row["primarycontactid"] == {"lastname": "Docs child", "contactid": contact}
    # the choice column's labels, cast to its type (retrieve-metadata-name-metadataid)
    options = web_api.get("EntityDefinitions(LogicalName='account')/Attributes(LogicalName="
                          "'accountcategorycode')/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
                          params={"$select": "LogicalName", "$expand": "OptionSet($select=Options)"}).json()
    labels = {o["Value"]: o["Label"]["UserLocalizedLabel"]["Label"] for o in options["OptionSet"]["Options"]}
    assert labels == {1: "Preferred Customer", 2: "Standard"}
