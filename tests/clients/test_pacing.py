"""Pacing of Dataverse requests (`dwlib.clients.pacing`): the hint, AIMD, Retry-After pauses and the
remaining budget, on a fake clock (nothing sleeps)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest
from client_fakes import FakeService, body

from dwlib.clients import DataverseClient, HttpConfig, Journal, make_client
from dwlib.clients.http import RetryBudget
from dwlib.clients.pacing import CAP_HOLD_S, Pacer, Ticket

REQUESTS = "0x80072322"
EXECUTION = "0x80072321"
CONCURRENCY = "0x80072326"


class Clock:
    """A fake clock; `sleep` records the wait and moves the clock on by it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self.moved = threading.Event()  # someone slept

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        self.moved.set()


def answer(status: int = 204, *, hint: int | None = None, requests: int | None = None,
           seconds: str | None = None, code: str = "", retry_after: int | None = None) -> httpx.Response:
    headers = {k: str(v) for k, v in {
        "x-ms-dop-hint": hint, "x-ms-ratelimit-burst-remaining-xrm-requests": requests,
        "x-ms-ratelimit-time-remaining-xrm-requests": seconds, "Retry-After": retry_after}.items()
        if v is not None}
    content = {"error": {"code": code, "message": "limited"}} if status == 429 else None
    return httpx.Response(status, headers=headers, json=content)


@contextmanager
def started(pacer: Pacer, n: int) -> Iterator[list[Ticket]]:
    """`n` requests holding slots, each with its first attempt on the wire."""
    with ExitStack() as stack:
        tickets = [stack.enter_context(pacer.slot()) for _ in range(n)]
        for t in tickets:
            t.before_attempt()
        yield tickets


def warm(pacer: Pacer, hint: int) -> None:
    """One request answered with the hint (and room to spare)."""
    with started(pacer, 1) as (t,):
        t.after_attempt(answer(hint=hint, requests=5000, seconds="1,200.00"))


def test_concurrency_is_one_until_the_first_answer_then_the_hint_within_the_configured_maximum() -> None:
    pacer = Pacer(4)
    assert pacer.limit == 1
    with started(pacer, 1):
        assert not pacer.would_start()  # the first request goes alone: its answer carries the hint
    warm(pacer, hint=8)
    assert (pacer.hint, pacer.limit) == (8, 4)  # bounded by the configuration
    lower = Pacer(4)
    warm(lower, hint=2)
    assert lower.limit == 2
    with started(lower, 2):
        assert not lower.would_start()
    no_hint = Pacer(3)
    with started(no_hint, 1) as (t,):
        t.after_attempt(answer())
    assert (no_hint.hint, no_hint.limit) == (None, 3)  # without a hint: the configured concurrency


def test_a_429_pauses_every_new_attempt_and_the_retried_request_goes_first() -> None:
    clock = Clock()
    pacer = Pacer(4, clock=clock, sleep=clock.sleep)
    warm(pacer, hint=4)
    with ExitStack() as stack:
        first, second, late = (stack.enter_context(pacer.slot()) for _ in range(3))
        first.before_attempt()
        second.before_attempt()
        first.after_attempt(answer(429, code=REQUESTS, retry_after=10))
        second.after_attempt(answer(429, code=REQUESTS, retry_after=10))
        assert pacer.limit == 2  # halved once: the second was sent before the first was refused
        assert [(t.code, t.retry_after_s) for t in pacer.throttles] == [(REQUESTS, 10), (REQUESTS, 10)]
        assert not pacer.would_start()  # no new request until a retried one says there is room
        waited: list[float] = []
        waiting = threading.Thread(target=lambda: waited.append(late.before_attempt()))
        waiting.start()  # waits out the pause with everyone (the fake clock moves on), then ...
        assert clock.moved.wait(5) and clock.slept == [10]
        assert first.before_attempt() == 0  # the HTTP stack waited first's own Retry-After
        assert clock.now == 10 and first.admitted  # ... the retried request goes first
        first.after_attempt(answer(requests=3, seconds="100.00"))  # room: 3, one of them second's
        waiting.join(5)
        assert waited == [10] and late.admitted and not waiting.is_alive()
        late.after_attempt(answer(requests=2, seconds="100.00"))
        second.before_attempt()
        second.after_attempt(answer(requests=1, seconds="100.00"))
    assert pacer.would_start() and pacer.paused_s == 10


def test_a_full_window_costs_one_429_not_one_per_request_in_flight() -> None:
    pacer = Pacer(4)
    warm(pacer, hint=4)
    with pacer.slot() as a, pacer.slot() as b:
        a.before_attempt()
        b.before_attempt()
        a.after_attempt(answer(requests=2))  # b was sent after a: of those two, b took one
        assert pacer.would_start()
        with pacer.slot() as c:
            c.before_attempt()
            assert not pacer.would_start()  # b and c use up what a's answer left
            c.after_attempt(answer(requests=0))
        assert not pacer.would_start()  # no budget left, and b is still on the wire
        b.after_attempt(answer(requests=1))  # older than c's answer: not the freshest budget
        assert pacer.would_start()  # nothing on the wire: one request may go and find out
    with started(pacer, 1):
        assert not pacer.would_start()  # only one


def test_an_answer_frees_its_place_before_its_request_has_left_its_slot() -> None:
    """A request is built (headers, journal, retry policy) while another is on the wire: taking a
    slot does not wait, an attempt waits for a place; an answer frees the place at once, not when
    its response has gone back up the HTTP stack and the slot is left."""
    pacer = Pacer(1)
    warm(pacer, hint=1)
    with pacer.slot() as a, pacer.slot() as b:  # both taken at once: neither waited
        a.before_attempt()
        assert a.admitted and not pacer.would_start()  # one place, a's
        a.after_attempt(answer(requests=100))
        assert pacer.would_start()  # a is still in its slot; its place is free
        b.before_attempt()
        assert b.admitted and not pacer.would_start()
        b.after_attempt(answer(requests=99))
    assert pacer.would_start()


def test_after_a_full_window_requests_start_no_faster_than_that_window_freed_its_places() -> None:
    clock = Clock()
    pacer = Pacer(1, clock=clock, sleep=clock.sleep)
    clock.now = -100.0
    with started(pacer, 1) as (t,):  # long before: not part of the window's pace
        t.after_attempt(answer(requests=10))
    clock.now = 0.0
    for _ in range(4):  # a window of four requests, started 0.5 s apart
        with started(pacer, 1) as (t,):
            t.after_attempt(answer(requests=10))
        clock.now += 0.5
    with started(pacer, 1) as (t,):  # the fifth finds the window full at 2.0 s
        t.after_attempt(answer(429, code=REQUESTS, retry_after=10))
        clock.now = 12.0
        assert t.before_attempt() == 0  # its retry goes at once
        t.after_attempt(answer(requests=9))
    starts = []
    for _ in range(3):
        with started(pacer, 1) as (t,):
            starts.append(round(t.started, 3))
            t.after_attempt(answer(requests=9))
    assert starts == [12.45, 12.9, 13.35]  # 0.5 s apart as in the full window, a tenth less
    clock.now = 40.0  # two windows without a 429: no more spacing
    with started(pacer, 1) as (t,):
        assert t.started == 40.0
        t.after_attempt(answer(requests=9))


def test_the_remaining_execution_time_holds_requests_back() -> None:
    clock = Clock()
    pacer = Pacer(4, clock=clock, sleep=clock.sleep)
    warm(pacer, hint=4)
    with started(pacer, 1) as (t,):
        clock.now += 2.0  # an attempt of 2 s: the estimate of what the next ones cost
        t.after_attempt(answer(requests=100, seconds="5.00"))
    with started(pacer, 2) as (a, b):
        assert not pacer.would_start()  # 5 s left, two requests of ~2 s in flight: no room for a third
        a.after_attempt(answer(requests=98, seconds="3.00"))
        assert not pacer.would_start()  # 3 s left, of which b takes ~2
        b.after_attempt(answer(requests=97, seconds="9.00"))
        assert pacer.would_start()  # 9 s left and nothing after b: room again


def test_a_concurrency_refusal_caps_below_what_was_in_flight_and_the_cap_lifts_later() -> None:
    clock = Clock()
    pacer = Pacer(8, clock=clock, sleep=clock.sleep)
    warm(pacer, hint=8)
    with started(pacer, 3) as (a, b, c):
        c.after_attempt(answer(429, code=CONCURRENCY, retry_after=1))
        assert (pacer.cap, pacer.limit) == (2, 2)
        assert pacer.throttles[-1].code == CONCURRENCY
        for t in (a, b):
            t.after_attempt(answer())
        c.before_attempt()
        c.after_attempt(answer())
    for _ in range(20):  # many answers without a 429: the cap holds ...
        with started(pacer, 1) as (t,):
            t.after_attempt(answer())
    assert pacer.limit == 2
    clock.now += CAP_HOLD_S
    for _ in range(2 + 3 + 4 + 5 + 6 + 7):  # ... until it lifts: additive increase to the hint
        with started(pacer, 1) as (t,):
            t.after_attempt(answer())
    assert pacer.cap is None and pacer.limit == 8


def test_additive_increase_after_a_multiplicative_decrease() -> None:
    clock = Clock()
    pacer = Pacer(8, clock=clock, sleep=clock.sleep)
    warm(pacer, hint=8)
    with started(pacer, 1) as (t,):
        t.after_attempt(answer(429, code=EXECUTION, retry_after=1))
        t.before_attempt()
        t.after_attempt(answer())
    assert pacer.limit == 4
    for _ in range(10):  # failures are no sign the service can take more
        with started(pacer, 1) as (t,):
            t.after_attempt(answer(503))
    assert pacer.limit == 4
    limits = []
    for _ in range(4 + 5 + 6 + 7):  # one more after `limit` answers in a row
        with started(pacer, 1) as (t,):
            t.after_attempt(answer())
        limits.append(pacer.limit)
    assert limits[3] == 5 and limits[8] == 6 and limits[14] == 7 and limits[-1] == 8


def test_headers_the_pacer_cannot_read_are_ignored() -> None:
    pacer = Pacer(2)
    with started(pacer, 1) as (t,):
        t.after_attempt(answer(hint=None, requests=None, seconds="soon"))
    assert pacer.limit == 2 and pacer.would_start()
    with started(pacer, 1) as (t,):
        t.after_attempt(None)  # no answer at all (connection lost)
    assert pacer.would_start()


# --- through the client ---------------------------------------------------------------------------


class Window:
    """A fake Dataverse that allows `limit` requests per `window_s` on a fake clock, answering with
    the budget headers and a hint; a refused request gets a 429 with Retry-After."""

    def __init__(self, clock: Clock, limit: int, window_s: float, hint: int) -> None:
        self.clock, self.limit, self.window_s, self.hint = clock, limit, window_s, hint
        self.arrivals: list[float] = []
        self.refused: list[float] = []
        self.resume_at = 0.0
        self.rows = 0
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request, _: re.Match[str]) -> httpx.Response:
        with self.lock:
            now = self.clock()
            recent = [t for t in self.arrivals if t > now - self.window_s]
            if len(recent) >= self.limit:
                self.refused.append(now)
                wait = int(recent[0] + self.window_s - now) + 1
                self.resume_at = now + wait
                return httpx.Response(429, headers={"Retry-After": str(wait)},
                                      json={"error": {"code": REQUESTS, "message": "limited"}})
            self.arrivals.append(now)
            self.rows += len(body(request)["Targets"])
            headers = {"x-ms-ratelimit-burst-remaining-xrm-requests": str(self.limit - len(recent) - 1),
                       "x-ms-ratelimit-time-remaining-xrm-requests": "1,200.00",
                       "x-ms-dop-hint": str(self.hint)}
            return httpx.Response(204, headers=headers)


def test_bulk_updates_wait_out_each_full_window_and_lose_nothing(fake: FakeService) -> None:
    clock = Clock()
    lock = threading.Lock()

    window = Window(clock, limit=6, window_s=10, hint=4)

    def sleep(seconds: float) -> None:
        # Whoever waits, waits for the Retry-After: the clock moves on to when it has passed.
        with lock:
            clock.now = max(clock.now, window.resume_at)

    fake.on("POST", r".*/accounts/Microsoft\.Dynamics\.CRM\.UpdateMultiple")(window)
    # accounts takes UpdateMultiple (the client asks sdkmessagefilters once, before the first chunk)
    fake.on("GET", r".*/sdkmessagefilters")(
        lambda request, m: httpx.Response(200, json={"value": [{"sdkmessagefilterid": "f"}]}))
    http = make_client(HttpConfig(), Journal(), transport=fake.transport, budget=RetryBudget(sleep=sleep))
    dv = DataverseClient(http, "https://org.example/dv", concurrency=4, batch_size=10,
                         pacer=Pacer(4, clock=clock, sleep=sleep))
    rows = [{"accountid": f"{i:04}", "name": "x"} for i in range(300)]
    result = dv.update_multiple("accounts", rows, logical_name="account")
    assert (result.succeeded, result.failed, window.rows) == (300, 0, 300)
    # 30 requests, 6 a window: a wave at 0 s and after each Retry-After (11 s), one 429 each time.
    assert window.refused == [0.0, 11.0, 22.0, 33.0] and clock.now == 44.0
    assert sorted(set(window.arrivals)) == [0.0, 11.0, 22.0, 33.0, 44.0]


@pytest.mark.parametrize("max_concurrency", [0, -1])
def test_a_pacer_needs_room_for_one_request(max_concurrency: int) -> None:
    with pytest.raises(ValueError, match="max_concurrency must be at least 1"):
        Pacer(max_concurrency)
