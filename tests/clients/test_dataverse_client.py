"""Dataverse client against a fake Web API: queries, rows, errors, bulk messages, `$batch`."""

from __future__ import annotations

import json
import re
import threading
import time
from urllib.parse import parse_qs, unquote

import httpx
import pytest
from client_fakes import FakeService, body

from dwlib.clients import (
    AuthError,
    BatchError,
    BulkError,
    ClientError,
    ConnectionLostError,
    DataverseClient,
    HttpConfig,
    HttpError,
    Journal,
    NotFoundError,
    ResponseError,
    ThrottledError,
    make_client,
)
from dwlib.clients.http import RetryBudget

URL = "https://org.example/dv"
API = "/dv/api/data/v9.2"
GUID = "6f1b0c57-1111-2222-3333-444444444444"


def dataverse(fake: FakeService, journal: Journal | None = None, sleeps: list[float] | None = None,
              **kw: int) -> DataverseClient:
    """A client over `fake`; retry waits are recorded in `sleeps` (never slept)."""
    waits: list[float] = [] if sleeps is None else sleeps
    http = make_client(HttpConfig(backoff_s=0.0), journal, transport=fake.transport,
                       budget=RetryBudget(sleep=waits.append))
    return DataverseClient(http, URL, **kw)


def query_of(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}


def entity_definitions(fake: FakeService) -> None:
    @fake.on("GET", f"{API}/EntityDefinitions")
    def defs(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        name = re.search(r"EntitySetName eq '(\w+)'", query_of(request)["$filter"])
        assert name is not None
        return httpx.Response(200, json={"value": [{"EntitySetName": name[1], "LogicalName": name[1][:-1],
                                                    "PrimaryIdAttribute": f"{name[1][:-1]}id"}]})


def bulk_messages(fake: FakeService, available: bool = True) -> list[dict[str, str]]:
    """A fake `sdkmessagefilters`: every table takes every bulk message (or none); the queries asked."""
    asked: list[dict[str, str]] = []

    @fake.on("GET", f"{API}/sdkmessagefilters")
    def filters(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        asked.append(query_of(request))
        return httpx.Response(200, json={"value": [{"sdkmessagefilterid": GUID}] if available else []})

    return asked


def test_query_follows_next_links_with_the_page_size(fake: FakeService) -> None:
    @fake.on("GET", f"{API}/accounts")
    def accounts(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        if "$skiptoken" in query_of(request):
            return httpx.Response(200, json={"value": [{"name": "B"}]})
        link = f"{URL}/api/data/v9.2/accounts?$select=name&$skiptoken=x"
        page = {"value": [{"@odata.etag": "W/1", "name": "A"}], "@odata.nextLink": link}
        return httpx.Response(200, json=page)

    dv = dataverse(fake, page_size=2)
    rows = list(dv.query("accounts", select=["name", "accountnumber"], filter="statecode eq 0"))
    assert [r["name"] for r in rows] == ["A", "B"]
    first, second = fake.requests
    assert query_of(first) == {"$select": "name,accountnumber", "$filter": "statecode eq 0"}
    assert first.headers["Prefer"] == "odata.maxpagesize=2" == second.headers["Prefer"]
    assert query_of(second) == {"$select": "name", "$skiptoken": "x"}  # the link is followed as given
    assert list(dv.dataframe("accounts").columns) == ["name"]  # annotations dropped


def test_the_next_page_is_read_while_the_caller_works_through_one(fake: FakeService) -> None:
    """Page n+1 is asked for before the caller has finished page n (one ahead, never two); a
    caller that stops early leaves the later pages unread."""
    asked: list[int] = []
    seen = threading.Condition()

    @fake.on("GET", f"{API}/accounts")
    def accounts(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        n = int(query_of(request).get("$skiptoken", "0"))
        with seen:
            asked.append(n)
            seen.notify_all()
        link = f"{URL}/api/data/v9.2/accounts?$skiptoken={n + 1}" if n < 4 else None
        return httpx.Response(200, json={"value": [{"name": f"p{n}"}], "@odata.nextLink": link})

    dv = dataverse(fake)
    rows = dv.query("accounts")
    first = next(rows)
    with seen:  # the second page is asked for without the caller asking for it
        assert seen.wait_for(lambda: len(asked) == 2, timeout=10), asked
    assert first["name"] == "p0" and asked == [0, 1]
    assert [r["name"] for r in rows] == ["p1", "p2", "p3", "p4"] and asked == [0, 1, 2, 3, 4]

    asked.clear()
    early = dv.query("accounts")
    assert next(early)["name"] == "p0"
    early.close()  # stops: the page in flight is waited for, nothing after it is asked for
    assert asked in ([0], [0, 1])


def test_get_by_alternate_key_and_errors_carry_status_code_message_and_request_id(fake: FakeService) -> None:
    @fake.on("GET", f"{API}/accounts\\((.*)\\)")
    def account(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        if unquote(m[1]) == "accountnumber='O''Hara'":
            return httpx.Response(200, json={"name": "O'Hara"})
        return httpx.Response(404, headers={"REQ_ID": "svc-42"},
                              json={"error": {"code": "0x80040217", "message": "account Does Not Exist"}})

    dv = dataverse(fake)
    assert dv.get("accounts", {"accountnumber": "O'Hara"})["name"] == "O'Hara"
    with pytest.raises(NotFoundError) as exc:
        dv.get("accounts", GUID, select=["name"])
    err = exc.value
    assert (err.status, err.code, err.request_id) == (404, "0x80040217", "svc-42")
    assert err.message == "account Does Not Exist"
    assert f"GET {URL}/api/data/v9.2/accounts({GUID})?%24select=name failed: 404" in str(err)


def test_create_returns_the_id_and_is_never_repeated(fake: FakeService, sleeps: list[float]) -> None:
    answers = [httpx.Response(503, headers={"Retry-After": "1"}),
               httpx.Response(204, headers={"OData-EntityId": f"{URL}/api/data/v9.2/accounts({GUID})"})]
    fake.on("POST", f"{API}/accounts")(lambda request, m: answers.pop(0))
    dv = dataverse(fake, sleeps=sleeps)
    with pytest.raises(HttpError) as exc:
        dv.create("accounts", {"name": "A"})
    assert exc.value.status == 503 and sleeps == []
    assert dv.create("accounts", {"name": "A"}) == GUID
    assert body(fake.requests[-1]) == {"name": "A"}


def test_a_create_whose_connection_drops_raises_a_clear_error(fake: FakeService) -> None:
    def drop(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)

    fake.on("POST", f"{API}/accounts")(drop)
    with pytest.raises(ConnectionLostError) as exc:
        dataverse(fake).create("accounts", {"name": "A"})
    assert exc.value.maybe_applied and len(fake.requests) == 1
    assert "not safe to repeat" in str(exc.value) and "alternate key" in exc.value.fix


def test_update_only_updates_and_upsert_is_repeated_on_throttling(
    fake: FakeService, sleeps: list[float]
) -> None:
    answers = [httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(204), httpx.Response(204)]
    fake.on("PATCH", f"{API}/accounts\\(.*\\)")(lambda request, m: answers.pop(0))
    dv = dataverse(fake, sleeps=sleeps)
    dv.upsert("accounts", {"accountnumber": "A1"}, {"name": "A"})
    assert sleeps == [2.0] and "If-Match" not in fake.requests[0].headers
    dv.update("accounts", GUID, {"name": "B"})
    assert fake.requests[-1].headers["If-Match"] == "*"


def test_a_retry_after_beyond_the_budget_is_one_clear_error_without_waiting(
    fake: FakeService, sleeps: list[float]
) -> None:
    fake.on("GET", f"{API}/accounts")(lambda request, m: httpx.Response(
        429, headers={"Retry-After": "900"}, json={"error": {"code": "0x80072322", "message": "Number of "
                                                             "requests exceeded the limit of 6000"}}))
    with pytest.raises(ThrottledError) as exc:
        list(dataverse(fake, sleeps=sleeps).query("accounts"))
    assert sleeps == [] and len(fake.requests) == 1 and exc.value.retry_after_s == 900
    assert "asks to wait 900 s (Retry-After)" in exc.value.fix and "gave up at once" in exc.value.fix
    assert "options.http.retry_budget_s" in exc.value.fix


def test_delete_treats_404_after_a_repeat_as_done(fake: FakeService, sleeps: list[float]) -> None:
    attempts: list[int] = []

    @fake.on("DELETE", f"{API}/accounts\\(.*\\)")
    def delete(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        attempts.append(1)
        if len(attempts) == 1:  # applied, but the answer is lost
            raise httpx.ReadError("connection reset", request=request)
        return httpx.Response(404, json={"error": {"code": "0x80040217", "message": "Does Not Exist"}})

    dv = dataverse(fake, sleeps=sleeps)
    dv.delete("accounts", GUID)
    assert len(attempts) == 2
    with pytest.raises(NotFoundError):
        dv.delete("accounts", GUID)  # a first attempt that finds nothing is an error


def test_401_becomes_an_auth_error_naming_the_fix(fake: FakeService) -> None:
    message = "The request is not authorized (wrong_audience): not for this service"
    fake.on("GET", f"{API}/WhoAmI")(lambda request, m: httpx.Response(401, json={"error": {
        "code": "0x80072560", "message": message}}))
    with pytest.raises(AuthError) as exc:
        dataverse(fake).whoami()
    assert "Dataverse refused the access token" in str(exc.value)
    assert "the token is for another resource" in exc.value.fix and URL in exc.value.fix


def test_update_multiple_chunks_with_bounded_concurrency_and_progress(fake: FakeService) -> None:
    entity_definitions(fake)
    bulk_messages(fake)
    in_flight, peak, sizes = [0], [0], []
    lock = threading.Lock()

    @fake.on("POST", f"{API}/accounts/Microsoft\\.Dynamics\\.CRM\\.UpdateMultiple")
    def update_multiple(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak)
        time.sleep(0.01)  # keep requests overlapping so the bound is exercised
        targets = body(request)["Targets"]
        assert all(t["@odata.type"] == "Microsoft.Dynamics.CRM.account" for t in targets)
        with lock:
            sizes.append(len(targets))
            in_flight[0] -= 1
        return httpx.Response(204)

    progress: list[tuple[int, int | None]] = []
    rows = [{"accountid": str(i), "description": "x"} for i in range(2500)]
    result = dataverse(fake, concurrency=2, batch_size=1000).update_multiple(
        "accounts", rows, progress=lambda done, total: progress.append((done, total)))
    assert sorted(sizes) == [500, 1000, 1000] and peak[0] <= 2
    assert (result.total, result.succeeded, result.failed, result.chunks) == (2500, 2500, 0, 3)
    assert progress[-1] == (2500, 2500) and [d for d, _ in progress] == sorted(d for d, _ in progress)
    definitions = [r for r in fake.requests if "EntityDefinitions" in str(r.url)]
    assert len(definitions) == 1


def test_create_multiple_keeps_input_order_and_reports_failed_chunks(fake: FakeService) -> None:
    bulk_messages(fake)
    second_done = threading.Event()

    @fake.on("POST", f"{API}/accounts/Microsoft\\.Dynamics\\.CRM\\.CreateMultiple")
    def create_multiple(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        names = [t["name"] for t in body(request)["Targets"]]
        if "n5" in names:
            error = {"code": "0x80072322", "message": "Number of requests exceeded"}
            return httpx.Response(429, headers={"Retry-After": "1"}, json={"error": error})
        if "n0" in names:
            second_done.wait(5)  # the first chunk finishes after the second
        if "n2" in names:
            second_done.set()
        return httpx.Response(200, json={"Ids": [f"id-{n}" for n in names]})

    dv = dataverse(fake, concurrency=3, batch_size=2)
    rows = [{"name": f"n{i}"} for i in range(8)]
    result = dv.create_multiple("accounts", rows, errors="collect", logical_name="account")
    assert result.ids == ["id-n0", "id-n1", "id-n2", "id-n3", "id-n6", "id-n7"]
    (failure,) = result.failures
    assert (failure.start, failure.rows, failure.error.status) == (4, 2, 429)  # type: ignore[attr-defined]
    assert len(fake.requests) == 5  # the availability check, then each create once, even when throttled
    with pytest.raises(BulkError) as exc:
        dv.create_multiple("accounts", rows, logical_name="account")
    assert "2 of " in str(exc.value) and exc.value.result.failed == 2


def test_upsert_multiple_addresses_rows_by_alternate_key(fake: FakeService) -> None:
    entity_definitions(fake)
    bulk_messages(fake)
    fake.on("POST", f"{API}/accounts/Microsoft\\.Dynamics\\.CRM\\.UpsertMultiple")(
        lambda request, m: httpx.Response(204))
    rows = [{"accountnumber": "A'1", "name": "A"}]
    dataverse(fake).upsert_multiple("accounts", rows, key=["accountnumber"])
    (target,) = body(fake.requests[-1])["Targets"]
    assert target == {"@odata.type": "Microsoft.Dynamics.CRM.account", "name": "A",
                      "@odata.id": "accounts(accountnumber='A''1')"}


def test_grouped_counts_solutions_and_link_details(fake: FakeService) -> None:
    seen: list[dict[str, str]] = []

    @fake.on("GET", f"{API}/(accounts|solutions)")
    def listing(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        seen.append(query_of(request))
        return httpx.Response(200, json={"value": [{"count": 3}]})

    fake.on("GET", f"{API}/RetrieveFinanceAndOperationsIntegrationDetails")(lambda request, m: httpx.Response(
        400, json={"error": {"code": "0x80048d0b", "message": "Dataverse instance isn't integrated"}}))
    dv = dataverse(fake)
    # aggregate-data.md: the group of an empty value comes without the column
    counted = dv.count_by("accounts", ["_msdyn_company_value"], filter="statecode eq 0")
    assert counted == [{"_msdyn_company_value": None, "count": 3}]
    dv.solutions(["Dynamics365Company", "msdyn_DualWriteAppCoreMaps"])
    apply = "filter(statecode eq 0)/groupby((_msdyn_company_value),aggregate($count as count))"
    assert seen[0] == {"$apply": apply}
    names = "uniquename eq 'Dynamics365Company' or uniquename eq 'msdyn_DualWriteAppCoreMaps'"
    assert seen[1]["$filter"] == names
    with pytest.raises(HttpError) as exc:
        dv.integration_details()
    assert exc.value.code == "0x80048d0b" and "Power Platform integration" in exc.value.fix


@pytest.mark.parametrize("group_by", [["_msdyn_company_value"], []])
def test_count_by_pages_and_counts_when_the_aggregate_limit_refuses(fake: FakeService,
                                                                    group_by: list[str]) -> None:
    entity_definitions(fake)
    companies = ["b", None, "a", "b", "b", None, "a"]

    @fake.on("GET", f"{API}/accounts")
    def accounts(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        q = query_of(request)
        if "$apply" in q:
            return httpx.Response(400, json={"error": {"code": "0x8004E023", "message": (
                "AggregateQueryRecordLimit exceeded. Cannot perform this operation.")}})
        start = int(q.get("$skiptoken", 0))
        rows = [{"accountid": f"id{i}", "_msdyn_company_value": c}
                for i, c in enumerate(companies[start:start + 4], start)]
        link = {"@odata.nextLink": f"{URL}/api/data/v9.2/accounts?$skiptoken={start + 4}"} \
            if start + 4 < len(companies) else {}
        return httpx.Response(200, json={"value": rows, **link})

    counts = dataverse(fake, page_size=100).count_by("accounts", group_by, filter="statecode eq 0")
    expected = ([{"_msdyn_company_value": None, "count": 2}, {"_msdyn_company_value": "a", "count": 2},
                 {"_msdyn_company_value": "b", "count": 3}] if group_by else [{"count": 7}])
    assert counts == expected
    paged = [r for r in fake.requests if "accounts" in r.url.path and "$apply" not in query_of(r)]
    assert query_of(paged[0]) == {"$select": ",".join(group_by) or "accountid", "$filter": "statecode eq 0"}
    # pages of the service's own 5,000 rows: no page size preference to send
    assert len(paged) == 2 and not any("Prefer" in r.headers for r in paged)


def test_count_by_raises_other_errors(fake: FakeService) -> None:
    fake.on("GET", f"{API}/accounts")(lambda request, m: httpx.Response(
        400, json={"error": {"code": "0x80040203", "message": "bad $apply"}}))
    with pytest.raises(HttpError, match="bad \\$apply"):
        dataverse(fake).count_by("accounts", ["statecode"])
    assert len(fake.requests) == 1


BATCH_RESPONSE = (
    "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n"
    "--changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    "Content-ID: 1\r\n\r\nHTTP/1.1 204 No Content\r\n"
    "OData-EntityId: {url}/api/data/v9.2/accounts(" + GUID + ")\r\n\r\n\r\n"
    "--changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    "Content-ID: 2\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\r\n--changesetresponse_2--\r\n"
    "--batchresponse_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    "HTTP/1.1 {status}\r\nContent-Type: application/json; odata.metadata=minimal\r\nREQ_ID: part-3\r\n\r\n"
    "{body}\r\n--batchresponse_1--\r\n"
)


def batch_service(fake: FakeService, status: str, part_body: dict[str, object]) -> None:
    @fake.on("POST", f"{API}/\\$batch")
    def batch(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        text = BATCH_RESPONSE.replace("{url}", URL).replace("{status}", status).replace(
            "{body}", json.dumps(part_body))
        return httpx.Response(200, content=text.encode(),
                              headers={"Content-Type": "multipart/mixed; boundary=batchresponse_1"})


def test_batch_with_a_change_set_is_encoded_and_parsed(fake: FakeService) -> None:
    batch_service(fake, "200 OK", {"value": [{"name": "A"}]})
    batch = dataverse(fake).batch()
    with batch.changeset() as cs:
        ref = cs.create("accounts", {"name": "A"})
        cs.update(f"{ref}/primarycontactid", {"firstname": "Ann"})
    batch.get("accounts", {"$select": "name"})
    parts = batch.execute()
    assert [p.status for p in parts] == [204, 204, 200]
    assert parts[0].content_id == "1" and parts[2].json() == {"value": [{"name": "A"}]}
    sent = fake.requests[-1]
    text = sent.content.decode()
    assert sent.headers["Content-Type"].startswith('multipart/mixed; boundary="batch_')
    assert f"POST {URL}/api/data/v9.2/accounts HTTP/1.1\r\n" in text
    patch = "PATCH $1/primarycontactid HTTP/1.1\r\nContent-Type: application/json; type=entry\r\nIf-Match: *"
    assert patch in text
    assert f"GET {URL}/api/data/v9.2/accounts?%24select=name HTTP/1.1" in text
    assert "\n" not in text.replace("\r\n", "")  # CRLF line ends only


def test_a_failed_batch_part_raises_with_its_error(fake: FakeService) -> None:
    batch_service(fake, "400 Bad Request", {"error": {"code": "0x80044331", "message": "subject too long"}})
    batch = dataverse(fake).batch()
    batch.get("accounts")
    with pytest.raises(BatchError) as exc:
        batch.execute()
    assert exc.value.part == 2 and "0x80044331 subject too long (request id part-3)" in str(exc.value)


def test_a_batch_holds_at_most_1000_parts(fake: FakeService) -> None:
    batch = dataverse(fake).batch()
    with batch.changeset() as cs:
        for i in range(1000):
            cs.update(f"accounts({i})", {"name": "x"})
    assert len(batch) == 1000 and batch.safe
    with pytest.raises(ValueError, match="at most 1000"):
        batch.get("accounts")


# --- what the conformance corpus exposed ------------------------------------------------------------


def _batch_answer(request: httpx.Request, status: int = 204) -> httpx.Response:
    """A multipart answer with one part per request part (OData-EntityId for POSTs)."""
    requests = re.findall(rb"^(POST|PATCH|PUT|DELETE|GET) (\S+) HTTP/1.1", request.content, re.M)
    out = [b"--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_1\r\n\r\n"]
    for i, (method, _) in enumerate(requests):
        entity = f"OData-EntityId: {URL}/api/data/v9.2/accounts(00000000-0000-0000-0000-00000000000{i})\r\n"
        out.append(f"--changesetresponse_1\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 {status} X\r\n"
                   f"{entity if method == b'POST' else ''}\r\n\r\n".encode())
    out.append(b"--changesetresponse_1--\r\n--batchresponse_1--\r\n")
    return httpx.Response(200, headers={"Content-Type": "multipart/mixed; boundary=batchresponse_1"},
                          content=b"".join(out))


def test_bulk_messages_a_table_does_not_take_go_as_batch_change_sets(fake: FakeService) -> None:
    """bulk-operations.md: not every standard table takes CreateMultiple/UpdateMultiple/UpsertMultiple;
    the client asks sdkmessagefilters once per table and message and falls back to $batch."""
    entity_definitions(fake)
    asked = bulk_messages(fake, available=False)
    batches: list[bytes] = []

    @fake.on("POST", f"{API}/\\$batch")
    def batch(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        batches.append(request.content)
        return _batch_answer(request)

    dv = dataverse(fake, batch_size=2)
    created = dv.create_multiple("teams", [{"name": "A"}, {"name": "B"}, {"name": "C"}])
    assert len(created.ids) == 3 and created.chunks == 2
    dv.update_multiple("teams", [{"teamid": GUID, "name": "x"}])
    dv.upsert_multiple("teams", [{"name": "T1", "description": "d"}], key=["name"])
    dv.create_multiple("teams", [{"name": "D"}])
    assert asked == [  # the documented query, once per table and message
        {"$select": "sdkmessagefilterid",
         "$filter": "sdkmessageid/name eq @message and primaryobjecttypecode eq @table",
         "@message": f"'{message}'", "@table": "'team'"}
        for message in ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")]
    text = b"".join(batches).decode()
    assert "Microsoft.Dynamics.CRM" not in text.replace("Microsoft.Dynamics.CRM.team", "")
    assert text.count("POST https://org.example/dv/api/data/v9.2/teams HTTP/1.1") == 4
    assert f"PATCH https://org.example/dv/api/data/v9.2/teams({GUID}) HTTP/1.1\r\n" in text
    assert "If-Match: *" in text.split(f"teams({GUID})")[1].split("\r\n\r\n")[0]  # update only
    upsert = text.split("teams(name='T1') HTTP/1.1\r\n")[1].split("--changeset")[0]
    assert "If-Match" not in upsert and json.loads(upsert.split("\r\n\r\n", 1)[1]) == {"description": "d"}


def test_top_is_not_sent_with_a_page_size(fake: FakeService) -> None:
    """page-results.md: with both, $top is ignored; the client sends $top alone when it wants N rows."""
    fake.on("GET", f"{API}/accounts")(lambda request, m: httpx.Response(200, json={"value": []}))
    dv = dataverse(fake, page_size=100)
    list(dv.query("accounts", top=3))
    list(dv.query("accounts"))
    list(dv.query("accounts", page_size=5000))  # the service's own page size: nothing to ask for
    assert query_of(fake.requests[0]) == {"$top": "3"} and "Prefer" not in fake.requests[0].headers
    assert fake.requests[1].headers["Prefer"] == "odata.maxpagesize=100"
    assert "Prefer" not in fake.requests[2].headers


def test_navigation_properties_come_from_the_relationships(fake: FakeService) -> None:
    entity_definitions(fake)
    relationships = [("parentcustomerid", "account", "parentcustomerid_account"),
                     ("parentcustomerid", "contact", "parentcustomerid_contact"),
                     ("ownerid", "owner", "ownerid"), ("msdyn_company", "cdm_company", "msdyn_company")]

    @fake.on("GET", f"{API}/EntityDefinitions\\(LogicalName='contact'\\)/ManyToOneRelationships")
    def rels(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        return httpx.Response(200, json={"value": [
            {"ReferencingAttribute": a, "ReferencedEntity": t, "ReferencingEntityNavigationPropertyName": n}
            for a, t, n in relationships]})

    dv = dataverse(fake)
    assert dv.navigation("contacts", "parentcustomerid", "contact") == "parentcustomerid_contact"
    assert dv.navigation("contacts", "ownerid", "team") == "ownerid"  # one relationship takes both
    assert dv.bind("contacts", "parentcustomerid", "accounts", GUID) == {
        "parentcustomerid_account@odata.bind": f"/accounts({GUID})"}
    with pytest.raises(ClientError, match="no lookup 'parentcustomerid' to the table 'systemuser'"):
        dv.navigation("contacts", "parentcustomerid", "systemuser")
    assert sum("ManyToOne" in str(r.url) for r in fake.requests) == 1  # read once per table


def test_an_lf_only_batch_response_parses(fake: FakeService) -> None:
    @fake.on("POST", f"{API}/\\$batch")
    def batch(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        crlf = _batch_answer(request)
        return httpx.Response(200, headers=crlf.headers, content=crlf.content.replace(b"\r\n", b"\n"))

    b = dataverse(fake).batch()
    with b.changeset() as cs:
        cs.create("accounts", {"name": "A"})
        cs.update(f"accounts({GUID})", {"name": "B"})
    parts = b.execute()
    assert [p.status for p in parts] == [204, 204]
    assert parts[0].headers["odata-entityid"].endswith("accounts(00000000-0000-0000-0000-000000000000)")


@pytest.mark.parametrize(("content_type", "content", "problem"), [
    ("multipart/mixed; boundary=b", b"--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204\r\n\r\n",
     "closing delimiter"),
    ("multipart/mixed; boundary=b", b"--b\r\nContent-Type: application/http\r\n\r\n<html>\r\n--b--",
     "part 0 has no HTTP status line"),
    ("multipart/mixed; boundary=b", b"<html>oops</html>", "boundary '--b'"),
    ("multipart/mixed", b"--b--", "no boundary"),
    ("text/html", b"<html>oops</html>", "without a multipart body"),
])
def test_an_unreadable_batch_response_raises_naming_the_endpoint(
        fake: FakeService, content_type: str, content: bytes, problem: str) -> None:
    fake.on("POST", f"{API}/\\$batch")(lambda request, m: httpx.Response(
        200, headers={"Content-Type": content_type}, content=content))
    b = dataverse(fake).batch()
    b.get("accounts")
    with pytest.raises(ResponseError, match=problem) as exc:
        b.execute()
    assert exc.value.url == f"{URL}/api/data/v9.2/$batch" and exc.value.method == "POST"


@pytest.mark.parametrize(("content", "problem"), [
    (b"<html>sign in</html>", "expected JSON"),
    (b'{"value": "not a list"}', "'value' list"),
    (b"[1, 2]", "'value' list"),
])
def test_an_unreadable_query_answer_raises_naming_the_endpoint(
        fake: FakeService, content: bytes, problem: str) -> None:
    fake.on("GET", f"{API}/accounts")(lambda request, m: httpx.Response(200, content=content))
    with pytest.raises(ResponseError, match=problem) as exc:
        list(dataverse(fake).query("accounts"))
    assert exc.value.url.startswith(f"{URL}/api/data/v9.2/accounts")


def test_a_bulk_body_over_the_payload_limit_is_sent_as_smaller_requests(fake: FakeService) -> None:
    bulk_messages(fake)
    sizes: list[int] = []

    @fake.on("POST", f"{API}/accounts/Microsoft\\.Dynamics\\.CRM\\.UpdateMultiple")
    def update_multiple(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        sizes.append(len(request.content))
        return httpx.Response(204)

    dv = dataverse(fake, batch_size=1000)
    dv.max_payload_bytes = 20_000  # scaled down from 116.65 MB
    rows = [{"accountid": f"{i:036}", "description": "x" * 100} for i in range(1000)]
    result = dv.update_multiple("accounts", rows, logical_name="account")
    assert result.succeeded == 1000 and len(sizes) > 1 and max(sizes) <= 20_000
    requests = [r for r in fake.requests if r.url.path.endswith("UpdateMultiple")]
    sent = [t["accountid"] for r in requests for t in body(r)["Targets"]]
    assert sorted(sent) == [r["accountid"] for r in rows]  # each row once
