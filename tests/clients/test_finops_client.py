"""F&O client against a fake OData service: cross-company queries, paging, writes, innererror."""

from __future__ import annotations

import re
from urllib.parse import parse_qs

import httpx
import pytest
from client_fakes import FakeService, body

from dwlib.clients import (
    Batch,
    FinOpsClient,
    HttpConfig,
    HttpError,
    ResponseError,
    ThrottledError,
    make_client,
)
from dwlib.clients.http import RetryBudget

URL = "https://fo.example/finops"
DATA = "/finops/data"


def finops(fake: FakeService) -> FinOpsClient:
    config = HttpConfig(backoff_s=0.0)
    return FinOpsClient(make_client(config, transport=fake.transport), URL, retry=config)


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


def test_a_create_with_its_key_is_settled_by_reading_the_key_and_never_sent_twice(fake: FakeService) -> None:
    rows: dict[str, dict[str, str]] = {}
    answers: list[object] = [504, "drop"]  # a gateway timeout; then created, but the answer is lost

    @fake.on("POST", f"{DATA}/CustomerGroups")
    def post(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        answer = answers.pop(0) if answers else "ok"
        if answer == 504:
            return httpx.Response(504, json={"error": {"code": "", "message": "gateway timeout"}})
        row = body(request)
        assert row["CustomerGroupId"] not in rows, "created twice"
        rows[row["CustomerGroupId"]] = row
        if answer == "drop":
            raise httpx.ReadError("connection reset after the request was sent")
        return httpx.Response(201, json=row)

    @fake.on("GET", f"{DATA}/CustomerGroups\\(.*\\)")
    def get(request: httpx.Request, m: re.Match[str]) -> httpx.Response:
        found = re.search(r"CustomerGroupId='(\w+)'", request.url.raw_path.decode())
        row = rows.get(found[1]) if found else None
        return httpx.Response(200, json=row) if row else \
            httpx.Response(404, json={"error": {"code": "", "message": "not found"}})

    key = {"dataAreaId": "usmf", "CustomerGroupId": "10"}
    row = finops(fake).create("CustomerGroups", {**key, "Description": "d"}, key=key)
    assert row["Description"] == "d" and list(rows) == ["10"]
    assert [r.method for r in fake.requests] == ["POST", "GET", "POST", "GET"]  # 404, then found
    answers[:] = [504]
    with pytest.raises(HttpError, match="504"):  # without a key a create is never repeated
        finops(fake).create("CustomerGroups", {"dataAreaId": "usmf", "CustomerGroupId": "20"})
    assert "20" not in rows


def test_unreadable_answers_raise_naming_the_endpoint_and_lf_only_batches_parse(fake: FakeService) -> None:
    fake.on("GET", f"{DATA}/CustomersV3")(lambda request, m: httpx.Response(200, content=b"<html>AOS</html>"))
    with pytest.raises(ResponseError, match="expected JSON") as exc:
        list(finops(fake).query("CustomersV3"))
    assert exc.value.url.startswith(f"{URL}/data/CustomersV3")
    answer = (b"--batchresponse_1\nContent-Type: application/http\n\nHTTP/1.1 200 OK\n"
              b"Content-Type: application/json\n\n{\"value\": []}\n--batchresponse_1--\n")
    fake.on("POST", f"{DATA}/\\$batch")(lambda request, m: httpx.Response(
        200, headers={"Content-Type": "multipart/mixed; boundary=batchresponse_1"}, content=answer))
    batch = finops(fake).batch()
    batch.get("CustomersV3")
    (part,) = batch.execute()
    assert (part.status, part.json()) == (200, {"value": []})
    fake.routes.clear()
    fake.on("POST", f"{DATA}/\\$batch")(lambda request, m: httpx.Response(
        200, headers={"Content-Type": "multipart/mixed; boundary=batchresponse_1"}, content=answer[:-20]))
    with pytest.raises(ResponseError, match="closing delimiter"):
        batch.execute()


@pytest.mark.parametrize(("method", "path", "call", "content", "problem"), [
    ("POST", "CustomerGroups", lambda fo: fo.create("CustomerGroups", {"CustomerGroupId": "10"}), b"[]",
     "a row must be a JSON object, not list"),
    ("GET", "CustomerGroups\\(.*\\)", lambda fo: fo.get("CustomerGroups", {"dataAreaId": "usmf",
                                                                          "CustomerGroupId": "10"}),
     b'"10"', "a row must be a JSON object, not str"),
    ("POST", "DataManagementDefinitionGroups/.*", lambda fo: fo.action(
        "DataManagementDefinitionGroups/Microsoft.Dynamics.DataEntities.GetExecutionSummaryStatus",
        {"executionId": "x"}, safe=True), b'{"status": "Succeeded"}', "must be a JSON object with a 'value'"),
    ("POST", "DataManagementDefinitionGroups/.*", lambda fo: fo.action(
        "DataManagementDefinitionGroups/Microsoft.Dynamics.DataEntities.GetExecutionSummaryStatus",
        {"executionId": "x"}, safe=True), b"<html>sign in</html>", "expected JSON"),
])
def test_an_answer_in_another_shape_raises_naming_the_endpoint(
        fake: FakeService, method: str, path: str, call: object, content: bytes, problem: str) -> None:
    fake.on(method, f"{DATA}/{path}")(lambda request, m: httpx.Response(200 if method == "GET" else 201,
                                                                        content=content))
    with pytest.raises(ResponseError, match=problem) as exc:
        call(finops(fake))  # type: ignore[operator]
    assert exc.value.method == method and exc.value.url.startswith(f"{URL}/data/")


# --- $batch: parts F&O throttles inside a batch ------------------------------------------------------

Answer = tuple[int, dict[str, str]]


def multipart(items: list[Answer | list[Answer]]) -> httpx.Response:
    """A `$batch` response: an item is one part's (status, headers), or a change set's list of them."""
    def part(status: int, headers: dict[str, str]) -> str:
        lines = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in headers.items())]
        body = '{"error":{"code":"","message":"busy"}}' if status >= 400 else ""
        return "Content-Type: application/http\r\n\r\n" + "\r\n".join(lines) + "\r\n\r\n" + body + "\r\n"

    out = []
    for item in items:
        if isinstance(item, list):
            inner = "".join(f"--cs\r\n{part(*a)}" for a in item) + "--cs--"
            out.append(f"--b\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n{inner}\r\n")
        else:
            out.append(f"--b\r\n{part(*item)}")
    return httpx.Response(200, headers={"Content-Type": "multipart/mixed; boundary=b"},
                          content=("".join(out) + "--b--\r\n").encode())


def batch_of_three(fo: FinOpsClient) -> Batch:
    batch = fo.batch()
    batch.get("LegalEntities")
    with batch.changeset() as cs:
        cs.update("CustomerGroups(dataAreaId='usmf',CustomerGroupId='A')", {"Description": "a"})
    with batch.changeset() as cs:
        cs.create("CustomerGroups", {"dataAreaId": "usmf", "CustomerGroupId": "B"})
        cs.update("CustomerGroups(dataAreaId='usmf',CustomerGroupId='C')", {"Description": "c"})
    return batch


def test_only_the_parts_throttled_inside_a_batch_are_sent_again_after_their_retry_after(
        fake: FakeService, sleeps: list[float]) -> None:
    sent: list[list[str]] = []
    answers = [
        multipart([(200, {}), [(429, {"Retry-After": "3"})], [(429, {"Retry-After": "5"})]]),
        multipart([[(204, {})], [(201, {}), (204, {})]]),
    ]

    @fake.on("POST", f"{DATA}/\\$batch")
    def batch(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        sent.append(re.findall(r"(GET|PATCH|POST) \S+/data/(\S+?)[?( ]", request.content.decode()))
        assert "odata.continue-on-error" in request.headers["Prefer"]
        return answers.pop(0)

    config = HttpConfig(backoff_s=0.0)
    fo = FinOpsClient(make_client(config, transport=fake.transport), URL, retry=config,
                      budget=RetryBudget(600, sleep=sleeps.append))
    responses = fo.execute(batch_of_three(fo))
    assert [r.status for r in responses] == [200, 204, 201, 204]
    assert sent[1] == [("PATCH", "CustomerGroups"), ("POST", "CustomerGroups"), ("PATCH", "CustomerGroups")]
    assert len(sent[0]) == 4 and sleeps == [5.0]  # the longest Retry-After of the throttled parts


def test_throttling_that_outlasts_the_budget_is_one_clear_error_without_waiting(
        fake: FakeService, sleeps: list[float]) -> None:
    fake.on("POST", f"{DATA}/\\$batch")(
        lambda request, _: multipart([(200, {}), [(429, {"Retry-After": "400"})], [(204, {}), (204, {})]]))
    config = HttpConfig(backoff_s=0.0)
    fo = FinOpsClient(make_client(config, transport=fake.transport), URL, retry=config,
                      budget=RetryBudget(300, sleep=sleeps.append))
    with pytest.raises(ThrottledError, match="still throttled 1 part") as refused:
        fo.execute(batch_of_three(fo))
    assert sleeps == [] and "retry_budget_s" in refused.value.fix
