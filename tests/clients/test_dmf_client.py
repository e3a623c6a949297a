"""DMF client against a fake package API: export and import flows, polling, job errors, blobs."""

from __future__ import annotations

import fcntl
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from client_fakes import FakeService, body

from dwlib.clients import (
    DmfClient,
    DmfError,
    FinOpsClient,
    HttpConfig,
    HttpError,
    Journal,
    ResponseError,
    make_client,
)
from dwlib.clients.dmf import ExecutionStatus, ImportGate
from dwlib.clients.http import RetryBudget

URL = "https://fo.example/finops"
ACTIONS = "/finops/data/DataManagementDefinitionGroups/Microsoft\\.Dynamics\\.DataEntities\\.(\\w+)"
BLOB = "https://fo.example/blob/dmf/pkg.zip?sv=1&sig=SECRETSIG"
ACTION_URL = f"{URL}/data/DataManagementDefinitionGroups/Microsoft.Dynamics.DataEntities."


def dmf_service(
    fake: FakeService, statuses: list[str], errors: list[dict[str, object]] | None = None
) -> dict[str, object]:
    state: dict[str, object] = {"blob": b"", "polls": 0}

    @fake.on("POST", ACTIONS)
    def action(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        name, args = m[1], body(request)
        if name in ("ExportToPackage", "ImportFromPackage"):
            state[name] = args
            # As documented: ExportToPackage nests its value, ImportFromPackage does not.
            value: object = {"value": "exec-1"} if name == "ExportToPackage" else "exec-1"
        elif name == "GetExecutionSummaryStatus":
            state["polls"] = int(state["polls"]) + 1  # type: ignore[call-overload]
            value = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        elif name == "GetExportedPackageUrl":
            value = {"value": BLOB}
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


def dmf(fake: FakeService, journal: Journal | None = None, lock_dir: Path | None = None) -> DmfClient:
    budget = RetryBudget(sleep=lambda s: None)
    http = make_client(HttpConfig(), journal, transport=fake.transport, budget=budget)
    return DmfClient(FinOpsClient(http, URL, budget=budget), http, poll_s=0, timeout_s=5,
                     sleep=lambda s: None, lock_dir=lock_dir)


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


def test_a_wait_polls_soon_then_every_poll_s(fake: FakeService) -> None:
    # A job that ends within seconds is seen ending soon; a long one is polled every poll_s.
    state = dmf_service(fake, ["NotRun", "Executing", "Executing", "Executing", "Executing", "Succeeded"])
    waits: list[float] = []
    budget = RetryBudget(sleep=lambda s: None)
    http = make_client(HttpConfig(), None, transport=fake.transport, budget=budget)
    client = DmfClient(FinOpsClient(http, URL, budget=budget), http, poll_s=2, timeout_s=5,
                       sleep=waits.append)
    assert client.wait("exec-1") == "Succeeded"
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.0] and state["polls"] == 6


def test_import_uploads_then_imports(fake: FakeService, tmp_path: Path) -> None:
    state = dmf_service(fake, ["Executing", "PartiallySucceeded"])
    package = tmp_path / "pkg.zip"
    package.write_bytes(b"zip")
    status = dmf(fake).import_package(package, "Customers import", legal_entity="USMF")
    assert status == "PartiallySucceeded" and state["blob"] == b"zip"
    sent = state["ImportFromPackage"]
    assert sent["packageUrl"] == BLOB  # type: ignore[index]
    # overwrite: "must always be set to False when a composite entity is used … Otherwise, set it to True"
    assert sent["overwrite"] is True and sent["execute"] is True  # type: ignore[index]


@pytest.mark.parametrize("value", ["Bad request", "Running", ""])
def test_a_status_that_is_not_documented_is_a_clear_error(fake: FakeService, value: str) -> None:
    dmf_service(fake, [value])
    with pytest.raises(DmfError, match=f"answered '{value}' for job exec-1, which is not a") as exc:
        dmf(fake).wait("exec-1")
    assert exc.value.status == value and "Job history" in str(exc.value)


def test_a_job_dmf_does_not_know_is_an_error_not_a_wait(fake: FakeService) -> None:
    dmf_service(fake, ["Unknown"])
    with pytest.raises(DmfError, match="DMF does not know job exec-1"):
        dmf(fake).wait("exec-1")


@pytest.mark.parametrize(("value", "lines"), [
    (json.dumps([{"EntityName": "Customers V3", "LineNumber": 2, "ErrorMessage": "bad"}]),
     ["Customers V3 2: bad"]),
    ([{"ErrorMessage": "bad"}, "plain"], ["bad", "plain"]),
    ("Job failed: no data", ["Job failed: no data"]),
    ("", []),
])
def test_execution_errors_take_the_json_list_as_string_or_list(fake: FakeService, value: object,
                                                               lines: list[str]) -> None:
    @fake.on("POST", ACTIONS)
    def action(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        return httpx.Response(200, json={"value": value})

    assert dmf(fake).execution_errors("exec-1") == lines


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
        return httpx.Response(200, json={"value": {"value": args["executionId"]}})

    return state


def starter(fake: FakeService, waits: list[float], run_budget_s: float = 3600, **limits: float) -> DmfClient:
    budget = RetryBudget(run_budget_s, sleep=waits.append)
    http = make_client(HttpConfig(), None, transport=fake.transport, budget=budget)
    config = HttpConfig(**{"retry_attempts": 4, "backoff_s": 0.5, "max_wait_s": 60.0, **limits})
    return DmfClient(FinOpsClient(http, URL, retry=config, budget=budget), http, poll_s=0, timeout_s=5,
                     sleep=waits.append)


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


def test_a_lost_start_of_a_job_still_queued_is_not_sent_again(fake: FakeService) -> None:
    state = starting_service(fake, ["drop"], created="NotRun")  # NotRun: the job exists, queued
    waits: list[float] = []
    execution_id = starter(fake, waits).start_export("G", "p", legal_entity="USMF")
    assert state["starts"] == 1 and state["jobs"] == {execution_id: "NotRun"} and waits == []


def test_a_lost_re_execution_is_a_clear_error_not_a_guess(fake: FakeService) -> None:
    state = starting_service(fake, ["drop"], created="Succeeded")  # the job's last run shows
    with pytest.raises(DmfError, match="may or may not run again"):
        starter(fake, []).start_export("G", "p", legal_entity="USMF", execution_id="G-1", re_execute=True)
    assert state["starts"] == 1


def test_a_retry_after_the_budget_cannot_cover_fails_at_once_without_waiting(fake: FakeService) -> None:
    state = starting_service(fake, [429])  # Retry-After 7
    waits: list[float] = []
    with pytest.raises(DmfError, match=r"wait 7 s \(Retry-After\).*only 5 s are left of the run's retry "
                                       r"budget \(options.http.retry_budget_s\)"):
        starter(fake, waits, run_budget_s=5).start_export("G", "p", legal_entity="USMF")
    assert waits == [] and state["starts"] == 1


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
    with pytest.raises(DmfError, match=r"in 2 attempts .*left of this call's retry budget"):  # time bounds it
        starter(fake, [], retry_total_s=10).start_export("G", "p", legal_entity="USMF")


def test_a_start_refused_for_another_reason_is_not_repeated(fake: FakeService) -> None:
    state = starting_service(fake, [400])
    with pytest.raises(HttpError, match="400"):
        starter(fake, []).start_export("G", "p", legal_entity="USMF")
    assert state["starts"] == 1


# --- ImportFromPackage must not run in parallel ----------------------------------------------------


def importing_service(fake: FakeService, polls_to_finish: int = 3) -> dict[str, object]:
    """A DMF that, like F&O, refuses an import while another is NotRun or Executing; a job is NotRun,
    then Executing, then Succeeded after `polls_to_finish` status reads. State: the order of events."""
    jobs: dict[str, list[str]] = {}
    events: list[str] = []
    lock = threading.Lock()

    @fake.on("POST", ACTIONS)
    def action(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        name, args = m[1], body(request)
        eid = args.get("executionId", "")
        with lock:
            if name == "ImportFromPackage":
                running = [j for j, s in jobs.items() if s[0] in ("NotRun", "Executing")]
                if running:
                    events.append(f"refused {eid}")
                    error = {"code": "", "message": "An error has occurred.",
                             "innererror": {"message": "parallel import"}}
                    return httpx.Response(400, json={"error": error})
                jobs[eid] = ["NotRun"] + ["Executing"] * (polls_to_finish - 1) + ["Succeeded"]
                events.append(f"start {eid}")
                return httpx.Response(200, json={"value": eid})
            states = jobs.get(eid, ["Unknown"])
            status = states.pop(0) if len(states) > 1 else states[0]
            events.append(f"{eid} {status}")
            return httpx.Response(200, json={"value": status})

    return {"jobs": jobs, "events": events}


def test_import_starts_wait_for_the_import_before_them_even_from_another_client(
        fake: FakeService, tmp_path: Path) -> None:
    state = importing_service(fake)
    first, second = dmf(fake, lock_dir=tmp_path), dmf(fake, lock_dir=tmp_path)  # e.g. two runs
    a = first.start_import(BLOB, "G", legal_entity="USMF", execution_id="A")
    b = second.start_import(BLOB, "G", legal_entity="USMF", execution_id="B")  # waits for A
    events = state["events"]
    assert not [e for e in events if e.startswith("refused")]  # type: ignore[attr-defined]
    assert events.index("A Succeeded") < events.index("start B")  # type: ignore[attr-defined]
    assert (a, b) == ("A", "B") and second.wait(b) == ExecutionStatus.SUCCEEDED


def test_import_starts_are_serialized_between_threads(fake: FakeService, tmp_path: Path) -> None:
    state = importing_service(fake)
    clients = [dmf(fake, lock_dir=tmp_path) for _ in range(3)]
    errors: list[BaseException] = []

    def run(client: DmfClient, eid: str) -> None:
        try:
            client.wait(client.start_import(BLOB, "G", legal_entity="USMF", execution_id=eid))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c, f"J{i}")) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not [e for e in state["events"] if e.startswith("refused")]  # type: ignore[attr-defined]
    assert sorted(state["jobs"]) == ["J0", "J1", "J2"]  # type: ignore[call-overload]


def test_an_import_refused_because_of_one_from_elsewhere_is_a_clear_error(fake: FakeService,
                                                                          tmp_path: Path) -> None:
    state = importing_service(fake)
    state["jobs"]["OTHER"] = ["Executing"]  # type: ignore[index]  # started from another machine
    with pytest.raises(DmfError, match=r"ImportFromPackage was refused: .*400.*parallel import") as exc:
        dmf(fake, lock_dir=tmp_path).start_import(BLOB, "G", legal_entity="USMF", execution_id="MINE")
    assert "must not run beside it" in exc.value.fix and exc.value.execution_id == "MINE"


def test_the_import_gate_is_exclusive_across_threads_and_processes(tmp_path: Path) -> None:
    gate = ImportGate("https://fo.example", tmp_path)
    probe = ("import fcntl, sys\nf = open(sys.argv[1], 'a+')\ntry:\n    fcntl.flock(f, fcntl.LOCK_EX | "
             "fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)\n")
    with gate.hold():
        with open(gate.path, "a+") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another holder in this process
        assert subprocess.run([sys.executable, "-c", probe, str(gate.path)]).returncode == 3
    assert subprocess.run([sys.executable, "-c", probe, str(gate.path)]).returncode == 0  # released
    assert ImportGate("https://FO.example/", tmp_path).path == gate.path  # one gate per environment


@pytest.mark.parametrize(("action", "value", "call", "problem"), [
    ("GetExecutionSummaryStatus", {"status": "Succeeded"}, lambda d: d.status("exec-1"),
     "not the string value it documents"),
    ("GetExportedPackageUrl", ["https://x"], lambda d: d.exported_package_url("exec-1"),
     "not the string value it documents"),
    ("ImportFromPackage", 42, lambda d: d.start_import(BLOB, "G", legal_entity="USMF", execution_id="e"),
     "not the string value it documents"),
    ("GetAzureWriteUrl", BLOB, lambda d: d.write_url("pkg.zip"), "not the documented JSON document"),
    ("GetAzureWriteUrl", json.dumps({"BlobId": "{X}"}), lambda d: d.write_url("pkg.zip"),
     "not the documented JSON document with a BlobUrl"),
    ("GetExecutionErrors", {"errors": 1}, lambda d: d.execution_errors("exec-1"), "not a JSON list"),
])
def test_an_answer_in_another_shape_is_a_response_error_naming_the_action(
        fake: FakeService, tmp_path: Path, action: str, value: object, call: object, problem: str) -> None:
    @fake.on("POST", ACTIONS)
    def answer(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        return httpx.Response(200, json={"@odata.context": "ctx", "value": value})

    with pytest.raises(ResponseError, match=problem) as exc:
        call(dmf(fake, lock_dir=tmp_path))  # type: ignore[operator]
    assert exc.value.url == f"{ACTION_URL}{action}"
    assert "SECRETSIG" not in str(exc.value)  # a signed URL in the answer is not repeated


def test_an_action_answer_without_a_value_is_a_response_error(fake: FakeService) -> None:
    fake.on("POST", ACTIONS)(lambda request, m: httpx.Response(200, json={"@odata.context": "ctx"}))
    with pytest.raises(ResponseError, match="'value'"):
        dmf(fake).status("exec-1")


class _CutStream(httpx.SyncByteStream):
    """A body that breaks off after its first piece, as a dropped connection does."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield b"PK-"
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def test_a_download_cut_mid_body_is_fetched_again_and_only_a_whole_package_appears(
        fake: FakeService, tmp_path: Path) -> None:
    gets: list[int] = []

    @fake.on("GET", "/blob/dmf/pkg.zip")
    def get(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        gets.append(1)
        return httpx.Response(200, stream=_CutStream()) if len(gets) == 1 else \
            httpx.Response(200, content=b"PK-whole-package")

    dmf_service(fake, ["Succeeded"])
    out = dmf(fake).export_package("Customers export", tmp_path / "c.zip", legal_entity="USMF")
    assert out.read_bytes() == b"PK-whole-package" and len(gets) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zip"]  # no .part left behind


def test_a_refused_download_leaves_no_file(fake: FakeService, tmp_path: Path) -> None:
    fake.on("GET", "/blob/dmf/pkg.zip")(lambda request, m: httpx.Response(403, text="AuthenticationFailed"))
    dmf_service(fake, ["Succeeded"])
    with pytest.raises(DmfError, match="403 AuthenticationFailed"):
        dmf(fake).export_package("Customers export", tmp_path / "c.zip", legal_entity="USMF")
    assert list(tmp_path.iterdir()) == []


def test_a_sink_writes_the_body_to_disk_and_the_response_keeps_none(
        fake: FakeService, tmp_path: Path) -> None:
    from dwlib.clients.http import SINK_KEY

    big = bytes(range(256)) * 12_000  # 3 MB: several pieces
    fake.on("GET", "/blob/big")(lambda request, m: httpx.Response(200, content=big))
    http = make_client(HttpConfig(), None, transport=fake.transport)
    response = http.get("https://fo.example/blob/big", extensions={SINK_KEY: tmp_path / "big"})
    assert response.status_code == 200 and response.content == b""
    assert (tmp_path / "big").read_bytes() == big


def test_an_upload_streams_the_file_and_sends_it_whole_again_after_a_503(
        fake: FakeService, tmp_path: Path) -> None:
    sent: list[bytes] = []

    @fake.on("PUT", "/blob/dmf/pkg.zip")
    def put(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        sent.append(request.content)
        assert request.headers["Content-Length"] == str(len(package.read_bytes()))
        return httpx.Response(503, headers={"Retry-After": "0"}) if len(sent) == 1 else httpx.Response(201)

    package = tmp_path / "pkg.zip"
    package.write_bytes(b"zip" * 700_000)  # 2.1 MB: three pieces of the file stream
    dmf_service(fake, ["Succeeded"])
    dmf(fake).import_package(package, "Customers import", legal_entity="USMF")
    assert sent == [package.read_bytes()] * 2


def test_an_import_still_running_past_the_deadline_is_named_and_the_next_one_is_not_started(
        fake: FakeService, tmp_path: Path) -> None:
    state = importing_service(fake, polls_to_finish=10_000)
    dmf(fake, lock_dir=tmp_path).start_import(BLOB, "G", legal_entity="USMF", execution_id="A")
    budget = RetryBudget(sleep=lambda s: None)
    http = make_client(HttpConfig(), None, transport=fake.transport, budget=budget)
    late = DmfClient(FinOpsClient(http, URL, budget=budget), http, poll_s=0, timeout_s=0.01,
                     sleep=lambda s: None, lock_dir=tmp_path)
    still = "the import A started before in this environment is still Executing"
    with pytest.raises(DmfError, match=still) as exc:
        late.start_import(BLOB, "G", legal_entity="USMF", execution_id="B")
    assert exc.value.execution_id == "A" and "start B" not in state["events"]  # type: ignore[operator]


def test_a_package_url_that_stays_empty_is_an_error_that_points_to_job_history(
        fake: FakeService, tmp_path: Path) -> None:
    fake.on("POST", ACTIONS.replace("(\\w+)", "GetExportedPackageUrl"))(
        lambda request, m: httpx.Response(200, json={"value": ""}))
    dmf_service(fake, ["Succeeded"])
    budget = RetryBudget(sleep=lambda s: None)
    http = make_client(HttpConfig(), None, transport=fake.transport, budget=budget)
    client = DmfClient(FinOpsClient(http, URL, budget=budget), http, poll_s=0, timeout_s=0.01,
                       sleep=lambda s: None)
    with pytest.raises(DmfError, match="finished but its package URL stayed empty") as exc:
        client.export_package("Customers export", tmp_path / "c.zip", legal_entity="USMF")
    assert "Job history" in exc.value.fix and not (tmp_path / "c.zip").exists()
