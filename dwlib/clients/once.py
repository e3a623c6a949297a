"""Requests that must happen once, made safe to repeat by looking up their effect.

The HTTP stack never repeats a request that is not safe to repeat (a create, a DMF job start):
a second copy could create a second row or start a second job. When the caller names the effect
in advance — the row's key, the job's `executionId` — a passing failure (429/503/504, honouring
`Retry-After`, or a lost connection) can be settled instead: look the effect up; there → done; not
there → send again. The limits are the stack's own (`HttpConfig.retry_attempts`, `retry_total_s`
capping the sum of the waits, `backoff_s` doubling up to `max_wait_s`), and the waits are charged
to the run's `RetryBudget`. A `Retry-After` is waited out as given; when the budget cannot cover
the next wait, it gives up at once, saying so.

Example:
    >>> sent = []
    >>> send_once(lambda: sent.append(1) or "made", lambda: None, config=HttpConfig(),
    ...           budget=RetryBudget(), gave_up=lambda n, e, why: e)
    'made'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .errors import ClientError, ConnectionLostError, HttpError
from .http import HttpConfig, RetryBudget, budget_exhausted

T = TypeVar("T")
PASSING = frozenset({429, 503, 504})  # statuses of a condition that passes: worth another try


def passing_wait(exc: ClientError, attempt: int, config: HttpConfig) -> float | None:
    """Seconds to wait before trying again after `exc` (its Retry-After as given, else the doubling
    backoff up to `max_wait_s`), or None when `exc` does not pass by waiting.

    >>> passing_wait(HttpError(429, "", "busy", method="POST", url="u", retry_after_s=300), 1, HttpConfig())
    300
    >>> passing_wait(HttpError(400, "", "bad", method="POST", url="u"), 1, HttpConfig()) is None
    True
    """
    if isinstance(exc, HttpError):
        if exc.status not in PASSING:
            return None
        if exc.retry_after_s is not None:
            return exc.retry_after_s
    elif not isinstance(exc, ConnectionLostError):
        return None
    return float(min(config.backoff_s * 2 ** (attempt - 1), config.max_wait_s))


def send_once(
    send: Callable[[], T],
    landed: Callable[[], T | None],
    *,
    config: HttpConfig,
    budget: RetryBudget,
    gave_up: Callable[[int, ClientError, str], ClientError],
) -> T:
    """`send()` until it succeeds or `landed()` finds its effect (not None), within `config`'s
    limits and the run's `budget`.

    After a passing failure `landed()` is asked first, then `send()` is tried again after the
    wait. A failure that does not pass is raised — unless an earlier attempt may have landed and
    `landed()` finds it (a service may refuse a repeat of what it already did). When the attempts
    are spent, or the next wait cannot be covered, `gave_up(attempts, last_error, why)` is raised
    without waiting.
    """
    waited = 0.0
    attempt = 0
    while True:
        attempt += 1
        try:
            return send()
        except (HttpError, ConnectionLostError) as exc:
            wait = passing_wait(exc, attempt, config)
            if wait is None:
                found = landed() if attempt > 1 else None
                if found is not None:
                    return found
                raise
            failure: ClientError = exc
        found = landed()  # the request may have been carried out before the failure
        if found is not None:
            return found
        if attempt > config.retry_attempts:
            raise gave_up(attempt, failure, f"{config.retry_attempts} retries are spent "
                                            "(options.http.retry_attempts)") from None
        call_left = config.retry_total_s - waited
        if wait > call_left or not budget.take(wait):
            asked = isinstance(failure, HttpError) and failure.retry_after_s is not None
            raise gave_up(attempt, failure, budget_exhausted(wait, call_left, budget.remaining_s,
                                                             retry_after=asked)) from None
        waited += wait
