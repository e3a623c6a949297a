"""Requests that must happen once, made safe to repeat by looking up their effect.

The HTTP stack never repeats a request that is not safe to repeat (a create, a DMF job start):
a second copy could create a second row or start a second job. When the caller names the effect
in advance — the row's key, the job's `executionId` — a passing failure (429/503/504, honouring
`Retry-After`, or a lost connection) can be settled instead: look the effect up; there → done; not
there → send again. The budget is the stack's own (`HttpConfig.retry_attempts`, `retry_total_s`
capping the sum of the waits, `backoff_s` doubling, `max_wait_s`).

Example:
    >>> sent = []
    >>> send_once(lambda: sent.append(1) or "made", lambda: None, budget=HttpConfig(),
    ...           gave_up=lambda n, e: e, sleep=lambda s: None)
    'made'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .errors import ClientError, ConnectionLostError, HttpError
from .http import HttpConfig

T = TypeVar("T")
PASSING = frozenset({429, 503, 504})  # statuses of a condition that passes: worth another try


def passing_wait(exc: ClientError, attempt: int, budget: HttpConfig) -> float | None:
    """Seconds to wait before trying again after `exc` (Retry-After, else the doubling backoff),
    or None when `exc` does not pass by waiting.

    >>> passing_wait(HttpError(503, "", "busy", method="POST", url="u", retry_after_s=7), 1, HttpConfig())
    7
    >>> passing_wait(HttpError(400, "", "bad", method="POST", url="u"), 1, HttpConfig()) is None
    True
    """
    if isinstance(exc, HttpError):
        if exc.status not in PASSING:
            return None
        if exc.retry_after_s is not None:
            return min(exc.retry_after_s, budget.max_wait_s)
    elif not isinstance(exc, ConnectionLostError):
        return None
    return min(budget.backoff_s * 2 ** (attempt - 1), budget.max_wait_s)


def send_once(
    send: Callable[[], T],
    landed: Callable[[], T | None],
    *,
    budget: HttpConfig,
    gave_up: Callable[[int, ClientError], ClientError],
    sleep: Callable[[float], None],
) -> T:
    """`send()` until it succeeds or `landed()` finds its effect (not None), within `budget`.

    After a passing failure `landed()` is asked first, then `send()` is tried again after the
    wait. A failure that does not pass is raised — unless an earlier attempt may have landed and
    `landed()` finds it (a service may refuse a repeat of what it already did). When the budget is
    spent, `gave_up(attempts, last_error)` is raised.
    """
    waited = 0.0
    attempt = 0
    while True:
        attempt += 1
        try:
            return send()
        except (HttpError, ConnectionLostError) as exc:
            wait = passing_wait(exc, attempt, budget)
            if wait is None:
                found = landed() if attempt > 1 else None
                if found is not None:
                    return found
                raise
            failure: ClientError = exc
        found = landed()  # the request may have been carried out before the failure
        if found is not None:
            return found
        if attempt > budget.retry_attempts or waited + wait > budget.retry_total_s:
            raise gave_up(attempt, failure) from None
        sleep(wait)
        waited += wait
