"""F&O client against a fake OData service: cross-company queries, paging, writes, innererror."""

from __future__ import annotations

import re
from urllib.parse import parse_qs

import httpx
import pytest
from client_fakes import FakeService, body

from dwlib.clients import FinOpsClient, HttpConfig, HttpError, make_client

URL = "https://fo.example/finops"
DATA = "/finops/data"


def finops(fake: FakeService) -> FinOpsClient:
    return FinOpsClient(make_client(HttpConfig(backoff_s=0.0), transport=fake.transport), URL)


def query_of(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}


def test_company_queries_are_cross_company_and_paged(fake: FakeService) -> None:
    @fake.on("GET", f"{DATA}/CustomersV3")
    def customers(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        if "$skiptoken" in query_of(request):
            return httpx.Response(200, json={"value": [{"CustomerAccount": "2"}]})
        return httpx.Response(200, json={"value": [{"CustomerAccount": "1"}],
                                         "@odata.nextLink": f"{URL}/data/CustomersV3?$skiptoken=10000"})

    rows = list(finops(fake).query("CustomersV3", select=["CustomerAccount"],
                                   filter="PartyType eq 'Organization'", company="USMF"))
    assert [r["CustomerAccount"] for r in rows] == ["1", "2"]
    assert query_of(fake.requests[0]) == {"$select": "CustomerAccount", "cross-company": "true",
                                          "$filter": "dataAreaId eq 'usmf' and (PartyType eq 'Organization')"}
    list(finops(fake).query("CustomersV3"))
    assert "cross-company" not in query_of(fake.requests[-2])  # default company unless asked


def test_create_update_and_innererror(fake: FakeService) -> None:
    fake.on("POST", f"{DATA}/CustomerGroups")(lambda request, m: httpx.Response(201, json=body(request)))
    fake.on("PATCH", f"{DATA}/CustomerGroups\\(.*\\)")(lambda request, m: httpx.Response(500, json={"error": {
        "code": "", "message": "An error has occurred.", "innererror": {
            "message": "Write failed for table row of type 'CustCustomerGroupEntity'. Infolog: x.",
            "type": "Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataWriteException",
            "stacktrace": "at ..."}}}))
    fo = finops(fake)
    created = fo.create("CustomerGroups", {"dataAreaId": "usmf", "CustomerGroupId": "10"})
    assert created["CustomerGroupId"] == "10"
    with pytest.raises(HttpError) as exc:
        fo.update("CustomerGroups", {"dataAreaId": "usmf", "CustomerGroupId": "10"}, {"Description": "d"})
    err = exc.value
    assert err.status == 500 and err.code == "AxODataWriteException"
    assert err.message.startswith("Write failed for table row of type 'CustCustomerGroupEntity'")
    patch = fake.requests[-1]
    path = patch.url.raw_path.decode()
    assert path.startswith(f"{DATA}/CustomerGroups(dataAreaId='usmf',CustomerGroupId='10')")
    assert query_of(patch) == {"cross-company": "true"}
