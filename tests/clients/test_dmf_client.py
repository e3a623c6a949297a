"""DMF client against a fake package API: export and import flows, polling, job errors, blobs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from client_fakes import FakeService, body

from dwlib.clients import DmfClient, DmfError, FinOpsClient, HttpConfig, HttpError, Journal, make_client

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
    sent = dict(state["ExportToPackage"])  # type: ignore[call-overload]
    assert str(sent.pop("executionId")).startswith("Customers export-")  # chosen by the client
    assert sent == {"definitionGroupId": "Customers export", "packageName": "customers",
                    "reExecute": False, "legalEntityId": "USMF"}
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


def starting_service(fake: FakeService, answers: list[object],
                     created: str = "Executing") -> dict[str, object]:
    """A DMF whose `ExportToPackage` answers in turn with `answers` (an int: that error status, with
    Retry-After 7 for 429/503; "drop": the connection cuts after the job was created; "lost": it
    cuts before), then with the id. A job starts in status `created`. The state: the jobs created (by
    id) and the start attempts."""
    state: dict[str, object] = {"jobs": {}, "starts": 0}
    jobs: dict[str, str] = state["jobs"]  # type: ignore[assignment]

    @fake.on("POST", ACTIONS)
    def action(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        name, args = m[1], body(request)
        if name == "GetExecutionSummaryStatus":
            return httpx.Response(200, json={"value": jobs.get(args["executionId"], "Unknown")})
        assert name == "ExportToPackage"
        state["starts"] = int(state["starts"]) + 1  # type: ignore[call-overload]
        answer = answers.pop(0) if answers else "ok"
        if answer == "lost":
            raise httpx.ReadError("connection reset before the service took the request")
        if isinstance(answer, int):
            headers = {"Retry-After": "7"} if answer in (429, 503) else {}
            return httpx.Response(answer, headers=headers, json={"error": {"code": "", "message": "busy"}})
        jobs.setdefault(args["executionId"], created)  # a second start of a known id: same job
        if answer == "drop":
            raise httpx.ReadError("connection reset after the request was sent")
        return httpx.Response(200, json={"value": args["executionId"]})

    return state


def starter(fake: FakeService, waits: list[float], **budget: float) -> DmfClient:
    http = make_client(HttpConfig(), None, transport=fake.transport)
    config = HttpConfig(**{"retry_attempts": 4, "backoff_s": 0.5, "max_wait_s": 60.0, **budget})
    return DmfClient(FinOpsClient(http, URL, retry=config), http, poll_s=0, timeout_s=5, sleep=waits.append)


def test_a_start_refused_with_429_503_504_is_started_again_after_retry_after(fake: FakeService) -> None:
    state = starting_service(fake, [429, 503, 504])
    waits: list[float] = []
    execution_id = starter(fake, waits).start_export("G", "p", legal_entity="USMF")
    assert state["starts"] == 4 and list(state["jobs"]) == [execution_id]  # type: ignore[call-overload]
    assert waits == [7.0, 7.0, 2.0]  # Retry-After honoured; 504 without it: backoff 0.5 · 2²
    sent = [body(r)["executionId"] for r in fake.requests if r.url.path.endswith("ExportToPackage")]
    assert set(sent) == {execution_id}  # every attempt names the same job


def test_a_start_whose_answer_was_lost_is_not_started_twice(fake: FakeService) -> None:
    state = starting_service(fake, ["drop"])
    waits: list[float] = []
    execution_id = starter(fake, waits).start_export("G", "p", legal_entity="USMF")
    assert state["starts"] == 1 and state["jobs"] == {execution_id: "Executing"} and waits == []


def test_a_lost_start_of_a_job_still_queued_is_repeated_and_dmf_keeps_one_job(fake: FakeService) -> None:
    state = starting_service(fake, ["drop"], created="NotRun")  # NotRun: queued, or no job at all
    waits: list[float] = []
    execution_id = starter(fake, waits).start_export("G", "p", legal_entity="USMF")
    assert state["starts"] == 2 and state["jobs"] == {execution_id: "NotRun"} and waits == [0.5]


def test_a_start_lost_before_it_reached_dmf_starts_again(fake: FakeService) -> None:
    state = starting_service(fake, ["lost", "lost"])
    waits: list[float] = []
    execution_id = starter(fake, waits).start_export("G", "p", legal_entity="USMF")
    assert state["starts"] == 3 and list(state["jobs"]) == [execution_id] and waits == [0.5, 1.0]


def test_a_start_that_keeps_failing_ends_with_a_clear_error(fake: FakeService) -> None:
    state = starting_service(fake, [503] * 10)
    waits: list[float] = []
    with pytest.raises(DmfError, match=r"ExportToPackage did not start job G-\S+ in 5 attempts.*503") as exc:
        starter(fake, waits).start_export("G", "p", legal_entity="USMF")
    assert state["starts"] == 5 and state["jobs"] == {} and exc.value.status == "Unknown"
    assert "run the step again later" in str(exc.value)
    with pytest.raises(DmfError, match="in 2 attempts"):  # the time budget bounds it too
        starter(fake, [], retry_total_s=10).start_export("G", "p", legal_entity="USMF")


def test_a_start_refused_for_another_reason_is_not_repeated(fake: FakeService) -> None:
    state = starting_service(fake, [400])
    with pytest.raises(HttpError, match="400"):
        starter(fake, []).start_export("G", "p", legal_entity="USMF")
    assert state["starts"] == 1
