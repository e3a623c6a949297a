"""The one HTTP stack: a configured `httpx.Client` with retries and a journal of every call.

Layers, outermost first: `_JournalTransport` (request id, one journal entry per call) →
`httpx_retries.RetryTransport` (429/503/504 and connection errors; `Retry-After` honoured as
given; exponential backoff with jitter; bounded by attempts, by the waiting of one call and by the
run's `RetryBudget`; a refused connection gets a few quick retries, or, from a service that
answered earlier in the run, the same patience as a 503, so a restart is waited out) →
`_BufferedTransport` (reads the body, so a connection cut mid-response is a retryable error) →
`httpx.HTTPTransport` (TLS always verified, pool sized to the concurrency). Whether a call may be
repeated is decided per request: GET/HEAD/OPTIONS/PUT/DELETE are repeatable; POST and PATCH only
when the caller marks them with `extensions=SAFE` (upserts, UpdateMultiple, read-only actions). A
call that is not safe to repeat is re-sent only when the connection could not even be opened
(nothing reached the service).

Waiting less than a `Retry-After` asks for extends the penalty (Dataverse service protection
limits), so a wait is never shortened: when what is left of the call's `retry_total_s` or of the
run's `RetryBudget` cannot cover it, the call fails at once, without waiting, and the response
carries the reason (`RETRY_REFUSED` in its extensions; the clients put it in their error). Waits go
through the budget's `sleep`, which tests replace.

Example:
    >>> journal = Journal()
    >>> def answer(request: httpx.Request) -> httpx.Response:
    ...     return httpx.Response(200, json={"ok": True})
    >>> with make_client(HttpConfig(), journal, transport=httpx.MockTransport(answer)) as client:
    ...     client.get("https://example.test/api?sig=abc").json()
    {'ok': True}
    >>> entry = journal.entries()[0]
    >>> entry.method, entry.url, entry.status, entry.retries
    ('GET', 'https://example.test/api?sig=***', 200, 0)
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

import httpx
from httpx_retries import Retry, RetryTransport

from dwlib.params import HttpOptions
from dwlib.secrets import MASK, scrub

from .errors import tls_untrusted

if TYPE_CHECKING:
    from dwlib.params import Params

log = logging.getLogger(__name__)

REQUEST_ID = "x-ms-client-request-id"
SAFE_KEY = "dw.safe"
SAFE: dict[str, Any] = {SAFE_KEY: True}
"""Pass as `extensions=SAFE` on a POST/PATCH that may be repeated (upsert, UpdateMultiple, reads)."""
PACE_KEY = "dw.pace"
# Request extension: a Path. A 2xx body is written there as it arrives (each attempt starts the file
# again) and the response keeps no body, so a large download never sits in memory.
SINK_KEY = "dw.sink"
"""Request extension: an `AttemptHook` called around each attempt of the call (`pacing.Ticket`)."""
RETRY_REFUSED = "dw.retry_refused"
"""Response extension: why the stack gave up at once instead of waiting (the budget cannot cover it)."""
# The defaults are the parameters model's (`options.http`), declared there once.
_DEFAULTS = HttpOptions()
DEFAULT_RETRY_BUDGET_S = _DEFAULTS.retry_budget_s
_CONNECT_RETRIES = 3
_REPEATABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_SERVICE_REQUEST_IDS = ("x-ms-service-request-id", "REQ_ID", "x-ms-request-id", "request-id")
# Query parameters that carry credentials (SAS signatures, auth codes, tokens).
_SECRET_QUERY_KEYS = frozenset({"sig", "signature", "code", "client_secret", "client_assertion",
                                "access_token", "refresh_token", "id_token", "token", "password", "key"})


@dataclass(frozen=True)
class HttpConfig:
    """Timeouts, retry budget, pool size and trust of the stack.

    >>> HttpConfig(retry_attempts=3).retry_attempts
    3
    """

    timeout_s: float = _DEFAULTS.timeout_s
    connect_timeout_s: float = _DEFAULTS.connect_timeout_s
    retry_attempts: int = _DEFAULTS.retry_attempts
    retry_total_s: float = _DEFAULTS.retry_total_s  # cap on the sum of waits of one call
    backoff_s: float = _DEFAULTS.backoff_s  # first backoff step without Retry-After; doubles each retry
    max_wait_s: float = _DEFAULTS.max_wait_s  # cap on one backoff wait (a Retry-After is honoured as given)
    retry_budget_s: float = DEFAULT_RETRY_BUDGET_S  # the run's total waiting, over all its calls
    max_connections: int = 8
    ca_bundle: Path | None = None  # None: the default trust store

    @classmethod
    def from_params(cls, params: Params) -> HttpConfig:
        """The stack settings a run's parameters ask for (pool sized to `options.concurrency`).

        config = HttpConfig.from_params(load_params("params/my-run.yaml"))
        >>> HttpConfig().max_connections
        8
        """
        return cls(
            **params.options.http.model_dump(),
            max_connections=params.options.concurrency + 2,  # + token and polling calls
            ca_bundle=params.environments.ca_bundle,
        )


class RetryBudget:
    """The run's overall budget for waiting between retries, shared by every client of a run, and
    the `sleep` those waits go through (tests pass one that records instead of sleeping).

    A wait is taken whole or not at all: `take` answers False when what is left cannot cover it.
    It also remembers which services answered during the run (`answered`): a service that answered
    and then refuses connections is restarting, and is waited for like a 503.

    >>> waited = []
    >>> budget = RetryBudget(300, sleep=waited.append)
    >>> budget.take(200), budget.take(200), waited, budget.remaining_s
    (True, False, [200], 100.0)
    """

    def __init__(self, total_s: float = DEFAULT_RETRY_BUDGET_S, *,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.total_s = float(total_s)
        # Looked up at each wait (not bound now), so the process-wide time.sleep stays the default.
        self._sleep = sleep or (lambda seconds: time.sleep(seconds))
        self._spent = 0.0
        self._lock = threading.Lock()
        self._answered: set[str] = set()

    def answered(self, url: httpx.URL) -> None:
        """Note that the service at `url` (scheme, host and port) answered."""
        with self._lock:
            self._answered.add(_service(url))

    def has_answered(self, url: httpx.URL) -> bool:
        """Whether the service at `url` answered earlier in this run.

        >>> b = RetryBudget(); b.answered(httpx.URL("https://h:8443/a"))
        >>> b.has_answered(httpx.URL("https://h:8443/b")), b.has_answered(httpx.URL("https://h:9443/b"))
        (True, False)
        """
        with self._lock:
            return _service(url) in self._answered


    @property
    def remaining_s(self) -> float:
        """Seconds of waiting left to the run."""
        with self._lock:
            return max(0.0, self.total_s - self._spent)

    def take(self, seconds: float) -> bool:
        """Wait `seconds` if the budget covers them (and charge it); False, without waiting, if not."""
        with self._lock:
            if seconds > self.total_s - self._spent:
                return False
            self._spent += seconds
        if seconds > 0:
            self._sleep(seconds)
        return True


def _service(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.host}:{url.port or ''}"


def budget_exhausted(wait_s: float, call_left_s: float, run_left_s: float, *, retry_after: bool) -> str:
    """Why a retry is given up at once: the wait asked for and which budget cannot cover it.

    >>> text = budget_exhausted(400, 600, 120, retry_after=True)
    >>> "wait 400 s (Retry-After)" in text and "only 120 s are left of the run's retry budget" in text
    True
    """
    asked = (f"the service asks to wait {wait_s:g} s (Retry-After) before trying again" if retry_after
             else f"the next retry would wait {wait_s:g} s")
    if run_left_s < call_left_s:
        left = f"only {run_left_s:g} s are left of the run's retry budget (options.http.retry_budget_s)"
    else:
        left = f"only {call_left_s:g} s are left of this call's retry budget (options.http.retry_total_s)"
    why = "rather than retry early, which extends the penalty" if retry_after else "without waiting"
    return f"{asked}, but {left}; gave up at once {why}"


@dataclass(frozen=True)
class JournalEntry:
    """One HTTP call as the journal keeps it: no headers, no bodies, no secrets in the URL.

    for e in session.journal.entries(): print(e.method, e.url, e.status, e.retries, e.wait_s)
    >>> "request_id" in JournalEntry.__dataclass_fields__
    True
    """

    started: str  # ISO 8601, UTC
    method: str
    url: str
    status: int | None  # None when no response came back
    duration_ms: float
    retries: int
    wait_s: float  # time spent waiting between attempts (Retry-After or backoff)
    request_id: str  # our x-ms-client-request-id
    service_request_id: str = ""
    retry_reasons: tuple[str, ...] = ()  # e.g. ("429", "503", "ConnectError")
    throttled_wait_s: float = 0.0  # the part of wait_s spent after 429 Too Many Requests
    error: str = ""  # transport error class when status is None


@dataclass
class Journal:
    """Thread-safe list of `JournalEntry`, one per call; the runbook and run record read it.

    >>> j = Journal()
    >>> j.totals()
    {'calls': 0, 'retries': 0, 'wait_s': 0.0, 'failed': 0}
    """

    _entries: list[JournalEntry] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, entry: JournalEntry) -> None:
        """Append one entry."""
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[JournalEntry]:
        """A snapshot of all entries, oldest first."""
        with self._lock:
            return list(self._entries)

    def as_dicts(self) -> list[dict[str, Any]]:
        """The entries as plain dicts (JSON-ready) for the run record."""
        return [asdict(e) for e in self.entries()]

    def totals(self) -> dict[str, Any]:
        """Calls, retries, total wait and failed calls (status ≥ 400 or no response)."""
        entries = self.entries()
        return {
            "calls": len(entries),
            "retries": sum(e.retries for e in entries),
            "wait_s": round(float(sum(e.wait_s for e in entries)), 3),
            "failed": sum(1 for e in entries if e.status is None or e.status >= 400),
        }

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def redact_url(url: httpx.URL) -> str:
    """`url` without user info and with credential query values masked.

    >>> redact_url(httpx.URL("https://u:p@h/blob/x?sig=abc&sv=1"))
    'https://h/blob/x?sig=***&sv=1'
    """
    base = str(url.copy_with(username=None, password=None, query=None))
    if not url.query:
        return scrub(base)
    # Rebuilt by hand so the rest of the query keeps its original encoding.
    parts = []
    for part in url.query.decode("ascii").split("&"):
        key, sep, _ = part.partition("=")
        parts.append(f"{key}={MASK}" if sep and unquote(key).lower() in _SECRET_QUERY_KEYS else part)
    return scrub(f"{base}?{'&'.join(parts)}")


@dataclass
class _Tally:
    """What the retry layer did for one call (shared by the Retry copies of that call)."""

    waits: float = 0.0
    throttled_waits: float = 0.0  # the part of `waits` spent on 429 Too Many Requests
    reasons: list[str] = field(default_factory=list)


class _Refused(Exception):  # control flow inside the stack: never leaves it
    """The next wait cannot be covered: the retry layer stops and hands back the last response."""

    def __init__(self, response: httpx.Response | Exception, reason: str) -> None:
        super().__init__(reason)
        self.response, self.reason = response, reason


class _CallRetry(Retry):
    """One call's retry policy: repeatable or not, waiting through the run's budget, and reporting
    its waits into a tally."""

    tally: _Tally
    safe: bool
    budget: RetryBudget
    url: httpx.URL  # of the call (httpx's transport errors do not carry their request)

    def is_retryable_method(self, method: str) -> bool:
        return True  # the per-call `safe` flag decides, not the method

    def is_retryable_status_code(self, status_code: int) -> bool:
        return self.safe and super().is_retryable_status_code(status_code)

    def is_retryable_exception(self, exception: Exception) -> bool:
        if isinstance(exception, httpx.ConnectError):
            # Nothing was sent, so even a create may be tried again; but an untrusted certificate
            # stays untrusted. A service that never answered this run is down or misnamed: give
            # up soon. One that answered before is restarting: wait for it within the budgets.
            if tls_untrusted(exception):
                return False
            return self.attempts_made < _CONNECT_RETRIES or self.budget.has_answered(self.url)
        return self.safe and super().is_retryable_exception(exception)

    def increment(self) -> _CallRetry:
        new = super().increment()
        assert isinstance(new, _CallRetry)
        new.tally, new.safe, new.budget, new.url = self.tally, self.safe, self.budget, self.url
        return new

    def _asked(self, response: httpx.Response | Exception) -> float | None:
        """The service's Retry-After in seconds, as given, or None."""
        if not isinstance(response, httpx.Response):
            return None
        header = response.headers.get("Retry-After", "").strip()
        if not header:
            return None
        try:
            return self.parse_retry_after(header)
        except ValueError:
            return None

    def sleep(self, response: httpx.Response | Exception) -> None:
        asked = self._asked(response)
        wait = asked if asked is not None else min(self.backoff_strategy(), self.max_backoff_wait)
        call_left = max(0.0, (self.total_timeout or float("inf")) - self.elapsed_sleep)
        if wait > call_left or not self.budget.take(wait):
            raise _Refused(response, budget_exhausted(wait, call_left, self.budget.remaining_s,
                                                      retry_after=asked is not None))
        reason = (str(response.status_code) if isinstance(response, httpx.Response)
                  else type(response).__name__)
        self.tally.reasons.append(reason)
        self.elapsed_sleep += wait
        self.tally.waits += wait
        if reason == "429":
            self.tally.throttled_waits += wait


class AttemptHook(Protocol):
    """Told of each attempt of a call, retries included (pass one as `extensions={PACE_KEY: hook}`);
    `before_attempt` may wait (a pause all calls keep), and says how long it did."""

    def before_attempt(self) -> float: ...

    def after_attempt(self, response: httpx.Response | None) -> None: ...


class _BufferedTransport(httpx.BaseTransport):
    """Reads each body inside the transport, so a connection cut mid-body is seen (and retried)
    by the retry layer instead of surfacing later in `Client.send`; calls the request's
    `AttemptHook` around each attempt."""

    def __init__(self, wire: httpx.BaseTransport) -> None:
        self._wire = wire

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        hook: AttemptHook | None = request.extensions.get(PACE_KEY)
        if hook is not None:
            paused = hook.before_attempt()
            retry = request.extensions.get("retry")
            if paused and isinstance(retry, _CallRetry):
                # A pause for another call's 429 is throttling this call waited out too.
                retry.tally.waits += paused
                retry.tally.throttled_waits += paused
        try:
            response = self._wire.handle_request(request)
            try:
                sink = request.extensions.get(SINK_KEY)
                if sink is not None and response.status_code < 300:
                    response = _into_file(response, Path(sink))
                else:
                    response.read()
            except BaseException:
                response.close()
                raise
        except BaseException:
            if hook is not None:
                hook.after_attempt(None)
            raise
        if hook is not None:
            hook.after_attempt(response)
        return response

    def close(self) -> None:
        self._wire.close()


def _into_file(response: httpx.Response, path: Path) -> httpx.Response:
    """Write `response`'s (decoded) body to `path` and return it without a body."""
    with path.open("wb") as out:
        for chunk in response.iter_bytes(1 << 20):
            out.write(chunk)
    response.close()
    dropped = {b"content-length", b"content-encoding", b"transfer-encoding"}
    return httpx.Response(response.status_code, extensions=response.extensions,
                          headers=[(k, v) for k, v in response.headers.raw if k.lower() not in dropped])


class _JournalTransport(httpx.BaseTransport):
    """Stamps a request id, installs the call's retry policy, and journals the outcome."""

    def __init__(self, inner: httpx.BaseTransport, journal: Journal | None, config: HttpConfig,
                 budget: RetryBudget) -> None:
        self._inner = inner
        self._journal = journal
        self._config = config
        self._budget = budget

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request_id = request.headers.setdefault(REQUEST_ID, str(uuid.uuid4()))
        safe = request.extensions.get(SAFE_KEY, request.method in _REPEATABLE_METHODS)
        retry = self._retry(bool(safe), request.url)
        request.extensions["retry"] = retry
        started = datetime.now(UTC).isoformat(timespec="milliseconds")
        t0 = time.perf_counter()
        try:
            response = self._inner.handle_request(request)
        except _Refused as refused:
            if isinstance(refused.response, Exception):
                self._record(request, started, t0, retry.tally, request_id, None, "",
                             type(refused.response).__name__)
                raise refused.response from None
            response = refused.response
            response.extensions[RETRY_REFUSED] = refused.reason
        except httpx.TransportError as exc:
            self._record(request, started, t0, retry.tally, request_id, None, "", type(exc).__name__)
            raise
        self._budget.answered(request.url)
        service_id = next((response.headers[h] for h in _SERVICE_REQUEST_IDS if h in response.headers), "")
        self._record(request, started, t0, retry.tally, request_id, response.status_code, service_id, "")
        return response

    def close(self) -> None:
        self._inner.close()

    def _retry(self, safe: bool, url: httpx.URL) -> _CallRetry:
        c = self._config
        retry = _CallRetry(
            total=c.retry_attempts,
            backoff_factor=c.backoff_s,
            max_backoff_wait=c.max_wait_s,
            total_timeout=c.retry_total_s,
            status_forcelist=(429, 503, 504),
        )
        retry.tally, retry.safe, retry.budget, retry.url = _Tally(), safe, self._budget, url
        return retry

    def _record(self, request: httpx.Request, started: str, t0: float, tally: _Tally, request_id: str,
                status: int | None, service_id: str, error: str) -> None:
        entry = JournalEntry(
            started=started,
            method=request.method,
            url=redact_url(request.url),
            status=status,
            duration_ms=round((time.perf_counter() - t0) * 1000, 2),
            retries=len(tally.reasons),
            wait_s=round(tally.waits, 3),
            request_id=request_id,
            service_request_id=service_id,
            retry_reasons=tuple(tally.reasons),
            throttled_wait_s=round(tally.throttled_waits, 3),
            error=error,
        )
        if self._journal is not None:
            self._journal.add(entry)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %s in %.0f ms (retries %d, waited %.1f s, id %s)", entry.method, entry.url,
                      status or error, entry.duration_ms, entry.retries, entry.wait_s, request_id)


def make_client(
    config: HttpConfig,
    journal: Journal | None = None,
    *,
    auth: httpx.Auth | None = None,
    headers: dict[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
    budget: RetryBudget | None = None,
) -> httpx.Client:
    """An `httpx.Client` wired the one way every call goes: TLS verified, timeouts, retries, journal.

    `budget` is the run's retry budget (share one between the clients of a run; default: a budget
    of its own of `config.retry_budget_s`). `transport` replaces the network (tests pass
    `httpx.MockTransport`); everything above it stays.

    >>> make_client(HttpConfig()).timeout
    Timeout(connect=10.0, read=60.0, write=60.0, pool=60.0)
    """
    wire = transport or httpx.HTTPTransport(
        verify=_trust(config.ca_bundle),
        limits=httpx.Limits(max_connections=config.max_connections,
                            max_keepalive_connections=config.max_connections),
    )
    return httpx.Client(
        auth=auth,
        headers=headers,
        timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
        transport=_JournalTransport(RetryTransport(transport=_BufferedTransport(wire)), journal, config,
                                    budget or RetryBudget(config.retry_budget_s)),
        follow_redirects=False,
    )


def _trust(ca_bundle: Path | None) -> ssl.SSLContext | bool:
    # Verification is never switched off: either the default trust store or the given CA bundle.
    return ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle else True
