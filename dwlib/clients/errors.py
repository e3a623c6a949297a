"""Exceptions of the clients: what went wrong on the wire, said so a person can fix it.

Every message is scrubbed of secrets and tokens (`dwlib.secrets.scrub`) when it is built.

Example:
    >>> err = HttpError(404, "0x80040217", "account 42 Does Not Exist",
    ...                 method="GET", url="https://org/accounts(42)", request_id="r-1")
    >>> print(err)
    GET https://org/accounts(42) failed: 404 0x80040217 account 42 Does Not Exist (request id r-1)
    >>> err.status, err.code
    (404, '0x80040217')
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from dwlib.errors import DwError
from dwlib.secrets import scrub


class ClientError(DwError):
    """Root of the client errors; `fix` (may be empty) says what to do about it.

    >>> str(ClientError("cannot reach f&o", fix="check environments.finops_url"))
    'cannot reach f&o; fix: check environments.finops_url'
    """

    def __init__(self, message: str, *, fix: str = "") -> None:
        self.fix = scrub(fix)
        text = scrub(message) + (f"; fix: {self.fix}" if self.fix else "")
        super().__init__(text)


class HttpError(ClientError):
    """A service answered with an error: status, service error code, message, request id.

    >>> HttpError(400, "", "bad", method="POST", url="u").request_id
    ''
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        method: str,
        url: str,
        request_id: str = "",
        fix: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = scrub(message)
        self.method = method
        self.url = scrub(url)
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        where = f" (request id {request_id})" if request_id else ""
        detail = " ".join(p for p in (str(status), code, self.message) if p)
        super().__init__(f"{method} {self.url} failed: {detail}{where}", fix=fix)


class NotFoundError(HttpError):
    """The addressed row or resource does not exist (404).

    >>> isinstance(NotFoundError(404, "", "gone", method="GET", url="u"), HttpError)
    True
    """


class ThrottledError(HttpError):
    """Service protection limits kept refusing (429) past the retry budget, or on a request
    that is not safe to repeat; `retry_after_s` says when the service expects a retry.

    >>> ThrottledError(429, "0x80072322", "busy", method="POST", url="u", retry_after_s=5).retry_after_s
    5
    """


class ResponseError(ClientError):
    """A service answered with something the client cannot read (not JSON where JSON was due, a
    `$batch` body that is not multipart, a part without a status line, …); names the endpoint.

    >>> ResponseError("POST", "https://org/api/data/v9.2/$batch", "part 2 has no status line").problem
    'part 2 has no status line'
    """

    def __init__(self, method: str, url: str, problem: str, *, fix: str = "") -> None:
        self.method = method
        self.url = scrub(url)
        self.problem = scrub(problem)
        super().__init__(f"{method} {self.url} answered a response that cannot be read: {self.problem}",
                         fix=fix or "check that the URL is the service's (a proxy or a wrong path can answer "
                                    "with a web page); if it is, report the response with its request id")


class AuthError(ClientError):
    """Signing in failed, or a service refused the token (wrong secret, expired token, wrong
    audience, app not registered); the message names the fix.

    >>> AuthError("token refused", fix="check the URL").fix
    'check the URL'
    """


class ConnectionLostError(ClientError):
    """The connection failed and the request was not (or no longer) repeated.

    `maybe_applied` is True when the request may have reached the service before the failure.

    >>> ConnectionLostError("dropped", maybe_applied=True).maybe_applied
    True
    """

    def __init__(self, message: str, *, fix: str = "", maybe_applied: bool = False) -> None:
        self.maybe_applied = maybe_applied
        super().__init__(message, fix=fix)


class BatchError(ClientError):
    """A `$batch` part failed; `part` is the 0-based position of its request in the batch, `error`
    the part's own error.

    >>> BatchError(2, ClientError("bad")).part
    2
    """

    def __init__(self, part: int, error: ClientError) -> None:
        self.part = part
        self.error = error
        super().__init__(f"$batch part {part} failed: {error}", fix=error.fix)


class BulkError(ClientError):
    """Some chunks of a bulk operation failed; `result` holds what succeeded and what did not.

    >>> BulkError("2 of 10 rows failed", result=None).result is None
    True
    """

    def __init__(self, message: str, result: Any) -> None:
        self.result = result
        super().__init__(message)


class DmfError(ClientError):
    """A data management (DMF) job ended badly or did not end in time; `errors` are the job's own.

    >>> DmfError("job failed", execution_id="e1", status="Failed", errors=["line 7: bad"]).errors
    ['line 7: bad']
    """

    def __init__(self, message: str, *, execution_id: str, status: str, errors: list[str] | None = None,
                 fix: str = "") -> None:
        self.execution_id = execution_id
        self.status = status
        self.errors = [scrub(e) for e in errors or []]
        shown = "; ".join(self.errors[:5])
        super().__init__(message + (f": {shown}" if shown else ""), fix=fix)


def tls_untrusted(exc: BaseException) -> bool:
    """True when `exc` comes from a server certificate that failed verification.

    >>> tls_untrusted(httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"))
    True
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def connection_lost(
    exc: httpx.TransportError, *, method: str, url: str, repeatable: bool
) -> ConnectionLostError:
    """Explain a transport failure of `method url` (after whatever retries the stack made).

    >>> err = connection_lost(httpx.ReadError("x"), method="POST", url="https://o/a", repeatable=False)
    >>> err.maybe_applied
    True
    """
    what = f"{method} {url}"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        if tls_untrusted(exc):
            return ConnectionLostError(
                f"{what}: the server's TLS certificate is not trusted ({text})",
                fix="set environments.ca_bundle to the CA bundle that issued it (a sandbox's ca.pem comes "
                    "with `sandbox: dir:`); verification is never switched off")
        return ConnectionLostError(f"{what}: cannot connect ({text})",
                                   fix="check the URL and that the service (or sandbox) is running")
    if isinstance(exc, httpx.TimeoutException):
        return ConnectionLostError(f"{what}: no answer in time ({type(exc).__name__})",
                                   fix="retry later, or raise options.http.timeout_s",
                                   maybe_applied=not repeatable)
    if repeatable:
        return ConnectionLostError(f"{what}: the connection kept failing ({text})",
                                   fix="retry later; steps re-check what is done before acting")
    return ConnectionLostError(
        f"{what}: the connection dropped after the request was sent ({text}); it was not repeated "
        "because this request is not safe to repeat (it may or may not have been applied)",
        fix="check whether the change happened (e.g. look the row up by its alternate key) before running "
            "it again; re-running the step does that check for you",
        maybe_applied=True)
