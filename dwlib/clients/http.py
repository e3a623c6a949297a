"""The one HTTP stack: a configured `httpx.Client` with retries and a journal of every call.

Layers, outermost first: `_JournalTransport` (request id, one journal entry per call) →
`httpx_retries.RetryTransport` (429/503/504 and connection errors; `Retry-After`; exponential
backoff with jitter; bounded by attempts and total wait) → `_BufferedTransport` (reads the body,
so a connection cut mid-response is a retryable error) → `httpx.HTTPTransport` (TLS always
verified, pool sized to the concurrency). Whether a call may be repeated is decided per request:
GET/HEAD/OPTIONS/PUT/DELETE are repeatable; POST and PATCH only when the caller marks them with
`extensions=SAFE` (upserts, UpdateMultiple, read-only actions). A call that is not safe to repeat
is re-sent only when the connection could not even be opened (nothing reached the service).

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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httpx
from httpx_retries import Retry, RetryTransport

from dwlib.secrets import MASK, scrub

from .errors import tls_untrusted

if TYPE_CHECKING:
    from dwlib.params import Params

log = logging.getLogger(__name__)

REQUEST_ID = "x-ms-client-request-id"
SAFE_KEY = "dw.safe"
SAFE: dict[str, Any] = {SAFE_KEY: True}
"""Pass as `extensions=SAFE` on a POST/PATCH that may be repeated (upsert, UpdateMultiple, reads)."""
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

    timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    retry_attempts: int = 8
    retry_total_s: float = 600.0  # cap on the sum of waits of one call
    backoff_s: float = 0.5  # first backoff step without Retry-After; doubles each retry
    max_wait_s: float = 120.0  # cap on one wait (a Retry-After beyond it is cut to it)
    max_connections: int = 8
    ca_bundle: Path | None = None  # None: the default trust store

    @classmethod
    def from_params(cls, params: Params) -> HttpConfig:
        """The stack settings a run's parameters ask for (pool sized to `options.concurrency`).

        >>> # config = HttpConfig.from_params(load_params("params/my-run.yaml"))
        >>> HttpConfig().max_connections
        8
        """
        http = params.options.http
        return cls(
            timeout_s=http.timeout_s,
            connect_timeout_s=http.connect_timeout_s,
            retry_attempts=http.retry_attempts,
            retry_total_s=http.retry_total_s,
            backoff_s=http.backoff_s,
            max_wait_s=http.max_wait_s,
            max_connections=params.options.concurrency + 2,  # + token and polling calls
            ca_bundle=params.environments.ca_bundle,
        )


@dataclass(frozen=True)
class JournalEntry:
    """One HTTP call as the journal keeps it: no headers, no bodies, no secrets in the URL.

    >>> # for e in session.journal.entries(): print(e.method, e.url, e.status, e.retries, e.wait_s)
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


class _CallRetry(Retry):
    """One call's retry policy: repeatable or not, and reporting its waits into a tally."""

    tally: _Tally
    safe: bool

    def is_retryable_method(self, method: str) -> bool:
        return True  # the per-call `safe` flag decides, not the method

    def is_retryable_status_code(self, status_code: int) -> bool:
        return self.safe and super().is_retryable_status_code(status_code)

    def is_retryable_exception(self, exception: Exception) -> bool:
        if isinstance(exception, httpx.ConnectError):
            # Nothing was sent, so even a create may be tried again; but an untrusted certificate
            # stays untrusted, and a service that refuses connections is down, not busy.
            return not tls_untrusted(exception) and self.attempts_made < _CONNECT_RETRIES
        return self.safe and super().is_retryable_exception(exception)

    def increment(self) -> _CallRetry:
        new = super().increment()
        assert isinstance(new, _CallRetry)
        new.tally, new.safe = self.tally, self.safe
        return new

    def sleep(self, response: httpx.Response | Exception) -> None:
        before = self.elapsed_sleep
        reason = (str(response.status_code) if isinstance(response, httpx.Response)
                  else type(response).__name__)
        self.tally.reasons.append(reason)
        super().sleep(response)
        self.tally.waits += self.elapsed_sleep - before
        if reason == "429":
            self.tally.throttled_waits += self.elapsed_sleep - before


class _BufferedTransport(httpx.BaseTransport):
    """Reads each body inside the transport, so a connection cut mid-body is seen (and retried)
    by the retry layer instead of surfacing later in `Client.send`."""

    def __init__(self, wire: httpx.BaseTransport) -> None:
        self._wire = wire

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._wire.handle_request(request)
        try:
            response.read()
        except BaseException:
            response.close()
            raise
        return response

    def close(self) -> None:
        self._wire.close()


class _JournalTransport(httpx.BaseTransport):
    """Stamps a request id, installs the call's retry policy, and journals the outcome."""

    def __init__(self, inner: httpx.BaseTransport, journal: Journal | None, config: HttpConfig) -> None:
        self._inner = inner
        self._journal = journal
        self._config = config

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request_id = request.headers.setdefault(REQUEST_ID, str(uuid.uuid4()))
        safe = request.extensions.get(SAFE_KEY, request.method in _REPEATABLE_METHODS)
        retry = self._retry(bool(safe))
        request.extensions["retry"] = retry
        started = datetime.now(UTC).isoformat(timespec="milliseconds")
        t0 = time.perf_counter()
        try:
            response = self._inner.handle_request(request)
        except httpx.TransportError as exc:
            self._record(request, started, t0, retry.tally, request_id, None, "", type(exc).__name__)
            raise
        service_id = next((response.headers[h] for h in _SERVICE_REQUEST_IDS if h in response.headers), "")
        self._record(request, started, t0, retry.tally, request_id, response.status_code, service_id, "")
        return response

    def close(self) -> None:
        self._inner.close()

    def _retry(self, safe: bool) -> _CallRetry:
        c = self._config
        retry = _CallRetry(
            total=c.retry_attempts,
            backoff_factor=c.backoff_s,
            max_backoff_wait=c.max_wait_s,
            total_timeout=c.retry_total_s,
            status_forcelist=(429, 503, 504),
        )
        retry.tally, retry.safe = _Tally(), safe
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
) -> httpx.Client:
    """An `httpx.Client` wired the one way every call goes: TLS verified, timeouts, retries, journal.

    `transport` replaces the network (tests pass `httpx.MockTransport`); everything above it stays.

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
        transport=_JournalTransport(RetryTransport(transport=_BufferedTransport(wire)), journal, config),
        follow_redirects=False,
    )


def _trust(ca_bundle: Path | None) -> ssl.SSLContext | bool:
    # Verification is never switched off: either the default trust store or the given CA bundle.
    return ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle else True
