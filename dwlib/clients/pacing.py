"""Pacing one user's requests to one Dataverse environment: as parallel as the service suggests,
never past the budget it says is left, and one pause for every request when it answers 429.

Dataverse counts requests, execution time and concurrent requests per user over a sliding window
(service protection API limits), and tells a client on each response how parallel to be
(`x-ms-dop-hint`: "use the integer value returned from the x-ms-dop-hint response header") and
what is left (`x-ms-ratelimit-burst-remaining-xrm-requests`, requests;
`x-ms-ratelimit-time-remaining-xrm-requests`, seconds of execution as `1,200.00`). A 429 carries
`Retry-After`: until it has passed, new requests of the user are refused, and sending early
extends the wait. `Pacer` turns that into when a request may start:

- **Concurrency** is 1 until the first answer, then the hint, never above the configured maximum.
  A concurrency refusal (0x80072326) caps it below what was in flight when it was sent; any other
  429 halves it once (requests that started before the halving do not halve it again), and each
  `limit` answers in a row without a 429 add one back, up to the hint (AIMD). A cap lifts after
  `CAP_HOLD_S`, so a limit raised by the service is found again.
- **Retry-After** pauses every new attempt of the user until it has passed. The refused request is
  retried by the HTTP stack after the same wait and goes first: its answer says how much room there
  is before the others start. Requests then start about as fast as those of the window that just
  ended did (they free their places at that pace; the median gap, a tenth less), until two windows
  pass without a 429.
- **The remaining budget**: a request starts only while the freshest answer leaves room for it
  beyond the requests started after that answer; when there is no room and nothing is in flight,
  one request goes, which finds room again or is told when to come back. So a full window costs
  one 429, not one per request in flight. The service calls these headers a debugging aid that
  resets when a request reaches another web server, so they only ever hold requests back: without
  them the pacer is AIMD with Retry-After pauses.

`DataverseClient` holds one pacer; every request it sends takes a slot, and the HTTP stack calls the
slot's `before_attempt`/`after_attempt` around each attempt, retries included. Taking a slot does
not wait: an attempt waits for its place in `before_attempt`, just before the wire, and its answer
frees the place in `after_attempt`. So a request is built (headers, journal, retry policy) while
the others are on the wire, and the next starts as soon as one is answered, not once its response
has gone back up the stack. Time and waiting go through `clock` and `sleep`, which tests replace.

Example:
    >>> pacer = Pacer(4)
    >>> with pacer.slot() as ticket:
    ...     waited = ticket.before_attempt()
    ...     ticket.after_attempt(httpx.Response(204, headers={"x-ms-dop-hint": "8"}))
    >>> pacer.limit, pacer.hint
    (4, 8)
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

DOP_HINT = "x-ms-dop-hint"
BURST_REMAINING = "x-ms-ratelimit-burst-remaining-xrm-requests"
TIME_REMAINING = "x-ms-ratelimit-time-remaining-xrm-requests"
CONCURRENCY_EXCEEDED = "0x80072326"
CAP_HOLD_S = 300.0  # the documented window: a learned concurrency cap is tried again after it
_EWMA = 0.2  # weight of the newest attempt in the estimate of one attempt's execution time
PACE_SHARE = 0.9  # of the last full window's gap between starts, kept after it


@dataclass(frozen=True)
class Throttle:
    """One 429 the pacer saw: when (its clock), the service's code, the Retry-After in seconds.

    >>> Throttle(12.5, "0x80072322", 3.0).code
    '0x80072322'
    """

    at: float
    code: str
    retry_after_s: float | None


class Ticket:
    """One request's slot: the pacer's view of its attempts (the HTTP stack calls the two hooks)."""

    def __init__(self, pacer: Pacer) -> None:
        self._pacer = pacer
        self.seq = 0  # the reservation of the current attempt (0: none yet)
        self.attempts = 0
        self.started = 0.0
        self.on_wire = 0  # attempts on the wire when this one started, itself included
        self.covered_until = 0.0  # the pause its own 429's Retry-After wait already covers
        self.admitted = False  # an attempt of it holds a place (on the wire, or about to be)
        self.refused = False  # its last attempt was answered 429: its retry goes first

    def before_attempt(self) -> float:
        """Wait out a pause and for a place, then count the attempt as on the wire; the seconds
        waited for pauses and spacing."""
        return self._pacer._before(self)

    def after_attempt(self, response: httpx.Response | None) -> None:
        """Learn from the answer (None: no answer came back)."""
        self._pacer._after(self, response)


class Pacer:
    """When requests of one user to one Dataverse environment may start (see the module).

    >>> Pacer(0)
    Traceback (most recent call last):
    ...
    ValueError: max_concurrency must be at least 1, not 0
    """

    def __init__(self, max_concurrency: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] | None = None) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self.max_concurrency = max_concurrency
        self.clock = clock
        # Looked up at each wait (not bound now), so the process-wide time.sleep stays the default.
        self._sleep = sleep or (lambda seconds: time.sleep(seconds))
        self._cond = threading.Condition()
        self.limit = 1  # until the first answer says how parallel to be
        self.hint: int | None = None
        self.cap: int | None = None
        self._cap_until = 0.0
        self._answered = False
        self._on_wire = 0  # attempts admitted and not yet answered
        self._refused = 0  # requests whose retry after a 429 has not started yet
        self._seq = 0
        self._outstanding: set[int] = set()  # reservations the service may not have counted yet
        self._requests_left = math.inf
        self._seconds_left = math.inf
        self._fresh_seq = -1  # the reservation whose answer the budget comes from
        self._exec_s = 0.0
        self._resume_at = -math.inf
        self._halved_at_seq = -1
        self._gap = 0.0  # least time between two starts, after a full window
        self._next_start = -math.inf
        self._wave: list[float] = []  # when the attempts since the last full window started
        self._period = 0.0  # from the start of the last window's requests to its Retry-After's end
        self._throttled_at = -math.inf
        self._ok_in_a_row = 0
        self.throttles: list[Throttle] = []
        self.paused_s = 0.0  # waited by requests held back for another request's Retry-After

    # --- slots ------------------------------------------------------------------------------------

    @contextmanager
    def slot(self) -> Iterator[Ticket]:
        """A ticket for one request. It does not wait: each attempt waits in `before_attempt`, at
        the last moment, so a request is built (headers, journal, retry policy) while others are on
        the wire, and an answer frees its place before the response has gone back up the stack."""
        ticket = Ticket(self)
        try:
            yield ticket
        finally:
            with self._cond:
                if ticket.admitted:  # an attempt left without an answer (`after_attempt` not called)
                    ticket.admitted = False
                    self._on_wire -= 1
                if ticket.refused:  # given up after a 429
                    ticket.refused = False
                    self._refused -= 1
                self._outstanding.discard(ticket.seq)
                self._cond.notify_all()

    def would_start(self) -> bool:
        """Whether a request asking for a slot now would get one at once.

        >>> Pacer(2).would_start()
        True
        """
        with self._cond:
            return self._room() and self._resume_at <= self.clock()

    def _room(self, retry: bool = False) -> bool:
        if self._on_wire >= self.limit:
            return False
        has_budget = self._requests_left >= 1 and self._seconds_left >= self._exec_s
        # Without budget one request goes and finds out; after a 429, the refused one goes first.
        return has_budget or retry or (self._on_wire == 0 and not self._refused)

    def _reserve(self) -> int:
        self._seq += 1
        self._outstanding.add(self._seq)
        self._requests_left -= 1
        self._seconds_left -= self._exec_s
        return self._seq

    # --- attempts ---------------------------------------------------------------------------------

    def _before(self, ticket: Ticket) -> float:
        waited = 0.0
        retry = ticket.attempts > 0
        while True:
            with self._cond:
                # A place on the wire, unless a pause (another request's 429) is to be waited first.
                self._cond.wait_for(lambda: self._room(retry) or self._paused(ticket))
                resume_at = self._resume_at
                wait = resume_at - max(self.clock(), ticket.covered_until)
                if wait <= 0:
                    now = self.clock()
                    if self._gap and now - self._throttled_at > 2 * self._period:
                        self._gap = 0.0  # two windows without a 429: the limit no longer binds
                    start_at = max(now, self._next_start)
                    self._next_start = start_at + self._gap
                    self._wave.append(start_at)
                    # Every attempt, a retry too, is a request for the service's budget.
                    self._outstanding.discard(ticket.seq)
                    ticket.seq = self._reserve()
                    ticket.attempts += 1
                    ticket.admitted = True
                    if ticket.refused:
                        ticket.refused = False
                        self._refused -= 1
                    self._on_wire += 1
                    ticket.on_wire = self._on_wire
                    break
            self._sleep(wait)
            waited += wait
            ticket.covered_until = max(ticket.covered_until, resume_at)
        if start_at > now:
            self._sleep(start_at - now)
            waited += start_at - now
        with self._cond:
            ticket.started = self.clock()
            self.paused_s += waited
        return waited

    def _paused(self, ticket: Ticket) -> bool:
        return self._resume_at > max(self.clock(), ticket.covered_until)

    def _after(self, ticket: Ticket, response: httpx.Response | None) -> None:
        with self._cond:
            if ticket.admitted:
                ticket.admitted = False
                self._on_wire -= 1
            if response is not None:
                now = self.clock()
                self._learn_hint(response, now)
                if response.status_code == 429:
                    self._throttled(ticket, response, now)
                else:
                    self._budget(ticket, response)
                    self._exec_s = (now - ticket.started if not self._exec_s
                                    else (1 - _EWMA) * self._exec_s + _EWMA * (now - ticket.started))
                    if response.status_code < 400:  # a failure is no sign the service can take more
                        self._increase()
            self._outstanding.discard(ticket.seq)
            self._cond.notify_all()

    def _target(self, now: float) -> int:
        if self.cap is not None and now >= self._cap_until:
            self.cap = None
        return min(self.max_concurrency, self.hint or self.max_concurrency, self.cap or self.max_concurrency)

    def _learn_hint(self, response: httpx.Response, now: float) -> None:
        hint = _number(response.headers.get(DOP_HINT))
        if hint is not None and hint >= 1:
            self.hint = int(hint)
        if not self._answered:
            self._answered = True
            self.limit = self._target(now)
        self.limit = min(self.limit, self._target(now))

    def _budget(self, ticket: Ticket, response: httpx.Response) -> None:
        if ticket.seq < self._fresh_seq:
            return  # an older answer than the one the budget already comes from
        requests = _number(response.headers.get(BURST_REMAINING))
        seconds = _number(response.headers.get(TIME_REMAINING))
        later = sum(1 for seq in self._outstanding if seq > ticket.seq)
        self._requests_left = math.inf if requests is None else requests - later
        self._seconds_left = math.inf if seconds is None else seconds - later * self._exec_s
        self._fresh_seq = ticket.seq

    def _increase(self) -> None:
        self._ok_in_a_row += 1
        if self._ok_in_a_row >= self.limit and self.limit < self._target(self.clock()):
            self.limit += 1
            self._ok_in_a_row = 0

    def _throttled(self, ticket: Ticket, response: httpx.Response, now: float) -> None:
        code = _error_code(response)
        retry_after = _number(response.headers.get("Retry-After"))
        self.throttles.append(Throttle(now, code, retry_after))
        self._ok_in_a_row = 0
        if code.lower() == CONCURRENCY_EXCEEDED:
            # More were in flight than the service allows: never send that many again (for a while).
            self.cap = max(1, min(self.cap or ticket.on_wire, ticket.on_wire - 1))
            self._cap_until = now + CAP_HOLD_S
            self.limit = min(self.limit, self.cap)
            return
        if ticket.seq > self._halved_at_seq:  # the first 429 of a full window
            self.limit = max(1, self.limit // 2)
            self._halved_at_seq = self._seq
            self._spacing(now, now + (retry_after or 0.0))
        if not ticket.refused:
            ticket.refused = True
            self._refused += 1
        if retry_after:
            ticket.covered_until = now + retry_after
            self._resume_at = max(self._resume_at, now + retry_after)
        # The retried request goes first after the pause: its answer says how much room there is.
        self._requests_left = self._seconds_left = 0.0
        self._fresh_seq = ticket.seq


    def _spacing(self, now: float, resume_at: float) -> None:
        """After a full window, start requests about as fast as the window's did: they free their
        places in the service's window at that pace, so a much faster start would meet a 429 again.
        The median gap between its starts (an idle moment before it is not its pace), a tenth less,
        so the pace can recover."""
        gaps = sorted(b - a for a, b in zip(self._wave, self._wave[1:], strict=False))
        median = gaps[len(gaps) // 2] if gaps else 0.0
        self._gap = PACE_SHARE * median
        self._period = resume_at - now + median * len(self._wave)  # about the service's window
        self._throttled_at = now
        self._wave = []


def _number(value: str | None) -> float | None:
    """A header's number (`1,200.00` → 1200.0), or None when it is missing or not a number."""
    if value is None:
        return None
    try:
        number = float(value.replace(",", "").strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _error_code(response: httpx.Response) -> str:
    try:
        error = json.loads(response.content).get("error")
    except (ValueError, AttributeError):
        return ""
    return str(error.get("code") or "") if isinstance(error, dict) else ""
