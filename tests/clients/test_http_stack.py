"""The one HTTP stack: retries (Retry-After, bounds, per-call safety), request ids, the journal."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from client_fakes import FakeService

from dwlib.clients.http import REQUEST_ID, SAFE, HttpConfig, Journal, make_client, redact_url

URL = "https://svc.example/api/things"


def flaky(statuses: list[int | type[Exception]], retry_after: str | None = None) -> FakeService:
    """A service answering each status (or raising each exception) in turn, then 200."""
    fake = FakeService()
    queue = list(statuses)

    @fake.on("GET", ".*")
    @fake.on("POST", ".*")
    def answer(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        if queue:
            item = queue.pop(0)
            if isinstance(item, type):
                raise item("injected", request=request)
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            return httpx.Response(item, headers=headers, json={"error": {"code": "", "message": "busy"}})
        return httpx.Response(200, json={"ok": True}, headers={"x-ms-service-request-id": "svc-1"})

    return fake


def client(fake: FakeService, journal: Journal, **config: float) -> httpx.Client:
    return make_client(HttpConfig(backoff_s=0.1, **config), journal, transport=fake.transport)  # type: ignore[arg-type]


def test_429_and_503_are_retried_honouring_retry_after(sleeps: list[float]) -> None:
    journal = Journal()
    fake = flaky([429, 503, 504], retry_after="7")
    response = client(fake, journal).get(URL)
    assert response.status_code == 200
    assert sleeps == [7.0, 7.0, 7.0]
    (entry,) = journal.entries()
    assert (entry.status, entry.retries, entry.wait_s) == (200, 3, 21.0)
    assert entry.retry_reasons == ("429", "503", "504")
    assert entry.throttled_wait_s == 7.0  # only the wait after the 429 was throttling
    assert entry.service_request_id == "svc-1"
    ids = {r.headers[REQUEST_ID] for r in fake.requests}
    assert ids == {entry.request_id}  # one id for the call, the same on every attempt


def test_backoff_without_retry_after_grows_with_jitter(sleeps: list[float]) -> None:
    fake = flaky([503, 503, 503])
    assert client(fake, Journal()).get(URL).status_code == 200
    caps = [0.1 * 2**n for n in (1, 2, 3)]
    assert len(sleeps) == 3 and all(0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))


def test_retries_are_bounded_by_attempts(sleeps: list[float]) -> None:
    journal = Journal()
    fake = flaky([429] * 50, retry_after="1")
    response = client(fake, journal, retry_attempts=3).get(URL)
    assert response.status_code == 429
    assert len(fake.requests) == 4 and len(sleeps) == 3
    assert journal.totals() == {"calls": 1, "retries": 3, "wait_s": 3.0, "failed": 1}


def test_retries_are_bounded_by_total_wait(sleeps: list[float]) -> None:
    fake = flaky([429] * 50, retry_after="100")
    response = client(fake, Journal(), retry_total_s=5.0, max_wait_s=3.0).get(URL)
    assert response.status_code == 429
    assert sum(sleeps) == pytest.approx(5.0)  # 3 s (capped), then the 2 s left of the budget
    assert len(sleeps) == 2


def test_a_plain_post_is_not_repeated_but_a_safe_one_is(sleeps: list[float]) -> None:
    unsafe = flaky([429, 503], retry_after="1")
    assert client(unsafe, Journal()).post(URL, json={}).status_code == 429
    assert len(unsafe.requests) == 1 and sleeps == []
    safe = flaky([429, 503], retry_after="1")
    assert client(safe, Journal()).post(URL, json={}, extensions=SAFE).status_code == 200
    assert len(safe.requests) == 3


def test_dropped_connections_repeat_only_safe_calls(sleeps: list[float]) -> None:
    journal = Journal()
    safe = flaky([httpx.ReadError, httpx.RemoteProtocolError])
    assert client(safe, journal).get(URL).status_code == 200
    assert journal.entries()[0].retry_reasons == ("ReadError", "RemoteProtocolError")
    unsafe = flaky([httpx.ReadError])
    with pytest.raises(httpx.ReadError):
        client(unsafe, journal).post(URL, json={})
    assert len(unsafe.requests) == 1
    failed = journal.entries()[-1]
    assert (failed.method, failed.status, failed.error) == ("POST", None, "ReadError")


def test_a_connection_never_opened_is_retried_even_for_a_create(sleeps: list[float]) -> None:
    fake = flaky([httpx.ConnectError])
    assert client(fake, Journal()).post(URL, json={}).status_code == 200
    assert len(fake.requests) == 2


class _CutBody(httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        yield b'{"partial'
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def test_a_body_cut_mid_response_is_retried(sleeps: list[float]) -> None:
    fake = FakeService()
    calls: list[int] = []

    @fake.on("GET", ".*")
    def answer(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(200, stream=_CutBody())
        return httpx.Response(200, json={"complete": True})

    assert client(fake, Journal()).get(URL).json() == {"complete": True}
    assert len(calls) == 2


def test_journal_urls_hide_credentials() -> None:
    url = httpx.URL("https://user:pw@blob.example/dmf/p.zip?sv=2021&sig=abc%2Bdef&se=x&code=123")
    assert redact_url(url) == "https://blob.example/dmf/p.zip?sv=2021&sig=***&se=x&code=***"


def test_journal_exports_entries_as_dicts(sleeps: list[float]) -> None:
    journal = Journal()
    http = client(flaky([429], retry_after="2"), journal)
    http.get(URL, params={"$filter": "name eq 'x'"})
    (row,) = journal.as_dicts()
    assert row["method"] == "GET" and row["url"].startswith(URL + "?%24filter=")
    assert row["retries"] == 1 and row["wait_s"] == 2.0 and row["retry_reasons"] == ("429",)
    assert set(row) >= {"started", "status", "duration_ms", "request_id", "service_request_id", "error"}



def test_refused_connections_get_few_retries_and_untrusted_certificates_none(
    sleeps: list[float],
) -> None:
    refused = flaky([httpx.ConnectError] * 10)
    with pytest.raises(httpx.ConnectError):
        client(refused, Journal()).get(URL)
    assert len(refused.requests) == 4  # the service is down, not busy: give up soon

    untrusted = FakeService()

    @untrusted.on("GET", ".*")
    def tls(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        raise httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] verify failed", request=request)

    with pytest.raises(httpx.ConnectError):
        client(untrusted, Journal()).get(URL)
    assert len(untrusted.requests) == 1
