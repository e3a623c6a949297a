"""The one HTTP stack: retries (Retry-After, bounds, per-call safety), request ids, the journal."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from client_fakes import FakeService

from dwlib.clients.http import (
    REQUEST_ID,
    RETRY_REFUSED,
    SAFE,
    HttpConfig,
    Journal,
    RetryBudget,
    make_client,
    redact_url,
)

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


def client(fake: FakeService, journal: Journal, sleeps: list[float], run_budget_s: float = 3600,
           **config: float) -> httpx.Client:
    """The stack over `fake`, its waits recorded in `sleeps` instead of slept."""
    budget = RetryBudget(run_budget_s, sleep=sleeps.append)
    return make_client(HttpConfig(**{"backoff_s": 0.1, **config}), journal, transport=fake.transport,  # type: ignore[arg-type]
                       budget=budget)


def test_429_and_503_are_retried_honouring_retry_after(sleeps: list[float]) -> None:
    journal = Journal()
    fake = flaky([429, 503, 504], retry_after="7")
    response = client(fake, journal, sleeps).get(URL)
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
    assert client(fake, Journal(), sleeps).get(URL).status_code == 200
    caps = [0.1 * 2**n for n in (1, 2, 3)]
    assert len(sleeps) == 3 and all(0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))


def test_retries_are_bounded_by_attempts(sleeps: list[float]) -> None:
    journal = Journal()
    fake = flaky([429] * 50, retry_after="1")
    response = client(fake, journal, sleeps, retry_attempts=3).get(URL)
    assert response.status_code == 429
    assert len(fake.requests) == 4 and len(sleeps) == 3
    assert journal.totals() == {"calls": 1, "retries": 3, "wait_s": 3.0, "failed": 1}


def test_backoff_waits_are_bounded_by_the_call_budget_and_fail_at_once_past_it(sleeps: list[float]) -> None:
    fake = flaky([503] * 50)
    journal = Journal()
    response = client(fake, journal, sleeps, retry_total_s=5.0, max_wait_s=3.0, backoff_s=2.0).get(URL)
    assert response.status_code == 503
    assert all(s <= 3.0 for s in sleeps) and sum(sleeps) <= 5.0  # never a wait past what is left
    reason = response.extensions[RETRY_REFUSED]
    assert "left of this call's retry budget (options.http.retry_total_s)" in reason
    assert journal.entries()[0].retries == len(sleeps)


def test_a_retry_after_is_honoured_as_given_up_to_300_s_and_more(sleeps: list[float]) -> None:
    """Retrying before Retry-After extends the penalty: a wait is never cut short (not to max_wait_s)."""
    fake = flaky([429, 429], retry_after="300")
    journal = Journal()
    assert client(fake, journal, sleeps, max_wait_s=3.0).get(URL).status_code == 200
    assert sleeps == [300.0, 300.0]
    assert journal.entries()[0].throttled_wait_s == 600.0


def test_a_retry_after_the_call_budget_cannot_cover_fails_at_once_saying_so(sleeps: list[float]) -> None:
    fake = flaky([429, 429], retry_after="400")
    response = client(fake, Journal(), sleeps, retry_total_s=300.0).get(URL)
    assert response.status_code == 429 and sleeps == [] and len(fake.requests) == 1  # no wait, no retry
    reason = response.extensions[RETRY_REFUSED]
    assert reason.startswith("the service asks to wait 400 s (Retry-After)")
    assert "only 300 s are left of this call's retry budget (options.http.retry_total_s)" in reason


def test_the_run_budget_is_shared_by_every_call_and_client(sleeps: list[float]) -> None:
    budget = RetryBudget(500, sleep=sleeps.append)
    first, second = (make_client(HttpConfig(), None, transport=flaky([429], retry_after="300").transport,
                                 budget=budget) for _ in range(2))
    assert first.get(URL).status_code == 200 and sleeps == [300.0]
    refused = second.get(URL)  # 200 s are left of the run's 500: the second 5-minute wait does not fit
    assert refused.status_code == 429 and sleeps == [300.0]
    assert "only 200 s are left of the run's retry budget (options.http.retry_budget_s)" in \
        refused.extensions[RETRY_REFUSED]
    assert budget.remaining_s == 200.0


def test_a_plain_post_is_not_repeated_but_a_safe_one_is(sleeps: list[float]) -> None:
    unsafe = flaky([429, 503], retry_after="1")
    assert client(unsafe, Journal(), sleeps).post(URL, json={}).status_code == 429
    assert len(unsafe.requests) == 1 and sleeps == []
    safe = flaky([429, 503], retry_after="1")
    assert client(safe, Journal(), sleeps).post(URL, json={}, extensions=SAFE).status_code == 200
    assert len(safe.requests) == 3


def test_dropped_connections_repeat_only_safe_calls(sleeps: list[float]) -> None:
    journal = Journal()
    safe = flaky([httpx.ReadError, httpx.RemoteProtocolError])
    assert client(safe, journal, sleeps).get(URL).status_code == 200
    assert journal.entries()[0].retry_reasons == ("ReadError", "RemoteProtocolError")
    unsafe = flaky([httpx.ReadError])
    with pytest.raises(httpx.ReadError):
        client(unsafe, journal, sleeps).post(URL, json={})
    assert len(unsafe.requests) == 1
    failed = journal.entries()[-1]
    assert (failed.method, failed.status, failed.error) == ("POST", None, "ReadError")


def test_a_connection_never_opened_is_retried_even_for_a_create(sleeps: list[float]) -> None:
    fake = flaky([httpx.ConnectError])
    assert client(fake, Journal(), sleeps).post(URL, json={}).status_code == 200
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

    assert client(fake, Journal(), sleeps).get(URL).json() == {"complete": True}
    assert len(calls) == 2


def test_journal_urls_hide_credentials() -> None:
    url = httpx.URL("https://user:pw@blob.example/dmf/p.zip?sv=2021&sig=abc%2Bdef&se=x&code=123")
    assert redact_url(url) == "https://blob.example/dmf/p.zip?sv=2021&sig=***&se=x&code=***"


def test_journal_exports_entries_as_dicts(sleeps: list[float]) -> None:
    journal = Journal()
    http = client(flaky([429], retry_after="2"), journal, sleeps)
    http.get(URL, params={"$filter": "name eq 'x'"})
    (row,) = journal.as_dicts()
    assert row["method"] == "GET" and row["url"].startswith(URL + "?%24filter=")
    assert row["retries"] == 1 and row["wait_s"] == 2.0 and row["retry_reasons"] == ("429",)
    assert set(row) >= {"started", "status", "duration_ms", "request_id", "service_request_id", "error"}



def test_a_service_that_answered_then_refuses_connections_is_waited_for_within_the_budget(
    sleeps: list[float],
) -> None:
    # A restart: the service answered, then refuses connections for a while, then answers again.
    # (httpx's own transport raises ConnectError without its request, as here.)
    restarting, refusals = FakeService(), iter(range(6))

    @restarting.on("GET", ".*")
    @restarting.on("POST", ".*")
    def answer(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        if len(restarting.requests) > 1 and next(refusals, None) is not None:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        return httpx.Response(200, json={"ok": True})

    journal = Journal()
    http = client(restarting, journal, sleeps, run_budget_s=300)
    assert http.get(URL).status_code == 200  # it answered
    assert http.post(URL, json={}).status_code == 200  # even a create: nothing was sent meanwhile
    assert journal.entries()[-1].retry_reasons == ("ConnectError",) * 6
    assert round(sum(sleeps), 3) == journal.entries()[-1].wait_s > 0  # waited through the run's budget

    # Within the budget only: a wait it cannot cover gives up at once.
    sleeps.clear()
    down = flaky([httpx.ConnectError] * 20)
    http = client(down, Journal(), sleeps, run_budget_s=2)
    with pytest.raises(httpx.ConnectError):
        http.get(URL)  # three quick retries: it never answered
    assert sum(sleeps) <= 2


def test_refused_connections_get_few_retries_and_untrusted_certificates_none(
    sleeps: list[float],
) -> None:
    refused = flaky([httpx.ConnectError] * 10)
    with pytest.raises(httpx.ConnectError):
        client(refused, Journal(), sleeps).get(URL)
    assert len(refused.requests) == 4  # the service is down, not busy: give up soon

    untrusted = FakeService()

    @untrusted.on("GET", ".*")
    def tls(request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        raise httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] verify failed", request=request)

    with pytest.raises(httpx.ConnectError):
        client(untrusted, Journal(), sleeps).get(URL)
    assert len(untrusted.requests) == 1
