"""DMF client against a fake package API: export and import flows, polling, job errors, blobs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from client_fakes import FakeService, body

from dwlib.clients import DmfClient, DmfError, FinOpsClient, HttpConfig, Journal, make_client

URL = "https://fo.example/finops"
ACTIONS = "/finops/data/DataManagementDefinitionGroups/Microsoft\\.Dynamics\\.DataEntities\\.(\\w+)"
BLOB = "https://fo.example/blob/dmf/pkg.zip?sv=1&sig=SECRETSIG"


def dmf_service(
    fake: FakeService, statuses: list[str], errors: list[dict[str, object]] | None = None
) -> dict[str, object]:
    state: dict[str, object] = {"blob": b"", "polls": 0}

    @fake.on("POST", ACTIONS)
    def action(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        name, args = m[1], body(request)
        if name in ("ExportToPackage", "ImportFromPackage"):
            state[name] = args
            value: object = "exec-1"
        elif name == "GetExecutionSummaryStatus":
            state["polls"] = int(state["polls"]) + 1  # type: ignore[call-overload]
            value = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        elif name == "GetExportedPackageUrl":
            value = BLOB
        elif name == "GetAzureWriteUrl":
            value = json.dumps({"BlobId": "{X}", "BlobUrl": BLOB})
        else:  # GetExecutionErrors
            value = json.dumps(errors or [])
        return httpx.Response(200, json={"@odata.context": "ctx", "value": value})

    @fake.on("PUT", "/blob/dmf/pkg.zip")
    def put(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        assert request.headers["x-ms-blob-type"] == "BlockBlob" and "Authorization" not in request.headers
        state["blob"] = request.content
        return httpx.Response(201)

    fake.on("GET", "/blob/dmf/pkg.zip")(lambda request, m: httpx.Response(200, content=b"PK-zip-bytes"))
    return state


def dmf(fake: FakeService, journal: Journal | None = None) -> DmfClient:
    http = make_client(HttpConfig(), journal, transport=fake.transport)
    return DmfClient(FinOpsClient(http, URL), http, poll_s=0, timeout_s=5, sleep=lambda s: None)


def test_export_polls_to_the_end_and_downloads(fake: FakeService, tmp_path: Path) -> None:
    state = dmf_service(fake, ["NotRun", "Executing", "Executing", "Succeeded"])
    seen: list[str] = []
    journal = Journal()
    out = dmf(fake, journal).export_package("Customers export", tmp_path / "customers.zip",
                                            legal_entity="USMF", on_status=seen.append)
    assert out.read_bytes() == b"PK-zip-bytes"
    assert seen == ["NotRun", "Executing", "Succeeded"] and state["polls"] == 4
    assert state["ExportToPackage"] == {"definitionGroupId": "Customers export", "packageName": "customers",
                                        "executionId": "", "reExecute": False, "legalEntityId": "USMF"}
    assert "SECRETSIG" not in json.dumps(journal.as_dicts())


def test_import_uploads_then_imports(fake: FakeService, tmp_path: Path) -> None:
    state = dmf_service(fake, ["Executing", "PartiallySucceeded"])
    package = tmp_path / "pkg.zip"
    package.write_bytes(b"zip")
    status = dmf(fake).import_package(package, "Customers import", legal_entity="USMF")
    assert status == "PartiallySucceeded" and state["blob"] == b"zip"
    assert state["ImportFromPackage"]["packageUrl"] == BLOB  # type: ignore[index]


def test_a_failed_job_raises_with_its_errors(fake: FakeService) -> None:
    dmf_service(fake, ["Executing", "Failed"], errors=[
        {"EntityName": "Customers V3", "LineNumber": 7, "RecordKey": "US-007",
         "ErrorMessage": "Customer group 99 does not exist."}])
    client = dmf(fake)
    with pytest.raises(DmfError) as exc:
        client.wait("exec-1")
    assert exc.value.status == "Failed"
    assert exc.value.errors == ["Customers V3 7 US-007: Customer group 99 does not exist."]
    assert "Customer group 99 does not exist." in str(exc.value)


def test_a_job_that_does_not_end_in_time_raises(fake: FakeService) -> None:
    dmf_service(fake, ["Executing"])
    client = dmf(fake)
    with pytest.raises(DmfError, match=r"did not finish in 0\.01 s"):
        client.wait("exec-1", timeout_s=0.01)
