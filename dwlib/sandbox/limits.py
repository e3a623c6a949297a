"""Throttling and fault injection in front of the Dataverse and F&O routes (an ASGI middleware).

- Dataverse service protection limits (api-surface §2.10), per user (the token's `oid`) over a
  sliding window: number of requests, combined execution time, concurrent requests → 429 with
  `Retry-After` seconds and the documented code and message. Until a `Retry-After` has passed every
  request of the user is refused, and one that keeps pushing (arriving more than `PUSH_GRACE_S`
  after the refusal) extends the wait, doubling with each push. Execution time is the time a
  request is processed: from its arrival to its response, less the time spent waiting for the
  network (its body, the client reading the response), so concurrent requests do not inflate each
  other's. Every counted response says what is left and how parallel to be:
  `x-ms-ratelimit-burst-remaining-xrm-requests`, `x-ms-ratelimit-time-remaining-xrm-requests`
  (seconds, as `1,200.00`) and `x-ms-dop-hint`.
- F&O resource-based throttling (§3.5): more concurrent F&O OData requests than
  `limits.finops_concurrency` → 429 with the documented message. DMF is exempt, as documented.
- Faults from a spec like `latency=20ms,429=0.05,503=0.02,5xx=0.01,drop=0.01,seed=7,retry=1`:
  rates per request (`500`/`503`/`504` one status each, `5xx` any of them), drawn from one seeded
  generator so a run is repeatable. A dropped request *is* processed, then its connection is cut
  mid-response: the client cannot know whether the write happened. `part429=R` throttles each part
  of an F&O `$batch` at that rate (F&O's 429 inside a batch that answers 200, api-surface §3.4):
  the part is not run, and its change set (if any) fails with it.

Identity, admin, blob and portal paths are never throttled nor faulted.

Example:
    >>> f = Faults.parse("latency=20ms,429=0.05,seed=7")
    >>> f.latency_s, f.throttle, f.seed
    (0.02, 0.05, 7)
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import AuthError, Sandbox
from .state import Limits

BURST_REMAINING = b"x-ms-ratelimit-burst-remaining-xrm-requests"
TIME_REMAINING = b"x-ms-ratelimit-time-remaining-xrm-requests"
DOP_HINT = b"x-ms-dop-hint"
CONCURRENCY_CODE = "0x80072326"
PUSH_GRACE_S = 1.0  # requests this soon after a refusal were already on their way: no extension
FINOPS_THROTTLED = ("This request could not be processed at this time due to system experiencing high "
                    "resource utilization.")
_DMF_PREFIX = "/finops/data/DataManagementDefinitionGroups"  # DIXF/DMF is exempt from throttling
_ODATA_JSON = b"application/json; odata.metadata=minimal"


# spec key → field, in the order one draw is matched against them
_RATES = {"429": "throttle", "500": "error_500", "503": "error_503", "504": "error_504",
          "5xx": "server_error", "drop": "drop"}
_USAGE = ("use latency=20ms,429=0.05,503=0.02,504=0.01,500=0.01,5xx=0.02,drop=0.01,part429=0.1,seed=7,"
          "retry=SECONDS")
PART_THROTTLE = "dw.part_throttle"
"""Scope key of an F&O `$batch` request (its parts inherit it): a callable that answers the
Retry-After of a part to throttle, or None."""
_AX_ODATA = "Microsoft.Dynamics.Platform.Integration.Services.OData"
THROTTLING_KIND = f"{_AX_ODATA}.AxODataThrottlingException"


@dataclass(frozen=True)
class Faults:
    """Parsed fault spec: added latency and per-request rates of 429, 5xx and dropped connections.

    `error_500`/`error_503`/`error_504` inject that status; `server_error` (`5xx=`) any of the three.

    >>> Faults().throttle  # no faults unless asked for
    0.0
    """

    latency_s: float = 0.0
    throttle: float = 0.0
    server_error: float = 0.0
    error_500: float = 0.0
    error_503: float = 0.0
    error_504: float = 0.0
    drop: float = 0.0
    part_throttle: float = 0.0  # per part of an F&O $batch, drawn apart from the request's fault
    seed: int | None = None
    retry_after_s: int = 1
    spec: str = ""

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """Parse `latency=20ms,429=0.05,503=0.02,504=0.01,500=0.01,5xx=0.02,drop=0.01,seed=7,retry=1`
        (any subset).

        >>> Faults.parse("5xx=0.5,503=0.1,drop=0.25").server_error, Faults.parse("503=0.1").error_503
        (0.5, 0.1)
        >>> Faults.parse("").drop
        0.0
        """
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, raw = part.partition("=")
            key, raw = key.strip(), raw.strip()
            try:
                if not sep:
                    raise ValueError
                if key == "latency":
                    scale = 1.0 if raw.endswith("s") and not raw.endswith("ms") else 0.001
                    values["latency_s"] = float(raw.removesuffix("ms").removesuffix("s")) * scale
                    ok = values["latency_s"] >= 0
                elif key in _RATES or key == "part429":
                    name = _RATES.get(key, "part_throttle")
                    values[name] = float(raw)
                    ok = 0.0 <= values[name] <= 1.0
                elif key in ("seed", "retry"):
                    values["seed" if key == "seed" else "retry_after_s"] = int(raw)
                    ok = key == "seed" or int(raw) >= 1
                else:
                    raise ValueError
            except ValueError:
                raise ValueError(f"bad fault item {part!r}: {_USAGE}") from None
            if not ok:
                raise ValueError(f"bad fault value {part!r}: rates are 0..1, latency >= 0, retry >= 1")
        faults = cls(**values, spec=spec.strip())
        if sum(rate for _, rate in faults.rates()) > 1.0:
            raise ValueError(f"bad fault spec {spec!r}: the rates of {', '.join(_RATES)} add up to more "
                             "than 1")
        return faults

    def rates(self) -> list[tuple[str, float]]:
        """`(fault, rate)` per spec key (`429`, `500`, `503`, `504`, `5xx`, `drop`), in draw order.

        >>> Faults.parse("503=0.25").rates()[2]
        ('503', 0.25)
        """
        return [(key, getattr(self, name)) for key, name in _RATES.items()]

    def pick(self, draw: float) -> str | None:
        """The fault a uniform draw in [0, 1) selects (a key of `rates`), or None for none.

        >>> f = Faults.parse("429=0.5,504=0.25"); f.pick(0.4), f.pick(0.6), f.pick(0.9)
        ('429', '504', None)
        """
        edge = 0.0
        for key, rate in self.rates():
            edge += rate
            if draw < edge:
                return key
        return None


@dataclass
class _Window:
    """One user's recent requests (`[arrival time, execution seconds]`, their execution seconds in
    `used`), those in flight, and the refusal the user is waiting out.

    >>> w = _Window(); e = w.arrive(0.0); w.finish(e, 2.5); w.used
    2.5
    >>> w.prune(10.0, 5.0); w.used, len(w.events)
    (0.0, 0)
    """

    events: deque[list[float]] = field(default_factory=deque)
    in_flight: int = 0
    used: float = 0.0
    penalty_since: float = 0.0
    penalty_until: float = 0.0
    pushes: int = 0
    refusal: tuple[str, str] = ("", "")  # code and message of the refusal being waited out
    served: int = 0  # since the sandbox started, for the admin endpoint
    served_s: float = 0.0

    def arrive(self, now: float) -> list[float]:
        event = [now, 0.0]
        self.events.append(event)
        return event

    def finish(self, event: list[float], execution_s: float) -> None:
        event[1] = execution_s
        self.used += execution_s
        self.served += 1
        self.served_s += execution_s

    def prune(self, now: float, window_s: float) -> None:
        while self.events and self.events[0][0] <= now - window_s:
            self.used -= self.events.popleft()[1]
        if not self.events:
            self.used = 0.0  # no float residue once the window is empty


class _Meter:
    """Execution time of one request: time since it arrived, less its waits on the network."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.started = clock()
        self.waited = 0.0

    def spent(self) -> float:
        return max(0.0, self.clock() - self.started - self.waited)

    def receive(self, receive: Receive) -> Receive:
        async def timed() -> Message:
            t = self.clock()
            try:
                return await receive()
            finally:
                self.waited += self.clock() - t
        return timed

    def send(self, send: Send) -> Send:
        async def timed(message: Message) -> None:
            t = self.clock()
            try:
                await send(message)
            finally:
                self.waited += self.clock() - t
        return timed


def _fmt(x: float) -> str:
    return f"{x:g}"


class Guard:
    """The ASGI middleware: service protection limits, F&O throttling and fault injection.

    `server.py` wraps the Starlette app with it and keeps it in `sbx.extras["guard"]`, where the
    admin endpoints find it to change faults and limits while the sandbox runs.

    app = Guard(starlette_app, sbx); guard.set_faults("latency=5ms,seed=1")
    """

    def __init__(self, app: ASGIApp, sbx: Sandbox) -> None:
        self.app = app
        self.sbx = sbx
        self._users: dict[str, _Window] = {}
        self._finops_in_flight = 0
        self.clock: Callable[[], float] = time.monotonic  # tests replace it
        self.faults = Faults()
        self._rng = random.Random()
        self.set_faults(sbx.settings.faults, persist=False)

    # --- configuration ----------------------------------------------------------------------------

    @property
    def limits(self) -> Limits:
        return self.sbx.settings.limits

    def set_faults(self, spec: str, persist: bool = True) -> Faults:
        """Replace the fault spec (raises ValueError when it is bad); reseeds the generator."""
        self.faults = Faults.parse(spec)
        self._rng = random.Random(self.faults.seed)
        self.sbx.settings.faults = self.faults.spec
        if persist:
            self.sbx.settings.save(self.sbx.paths.settings)
        return self.faults

    def set_limits(self, spec: str) -> Limits:
        """Replace the limits with `spec` over the documented defaults (raises ValueError)."""
        self.sbx.settings.limits = Limits.parse(spec)
        self.sbx.settings.save(self.sbx.paths.settings)
        return self.limits

    def describe(self) -> dict[str, Any]:
        """Current faults and limits, as the admin endpoints show them, and per Dataverse user (`oid`)
        the requests served and their execution seconds since the sandbox started."""
        faults = asdict(self.faults)
        usage = {oid: {"requests": w.served, "execution_s": round(w.served_s, 6)}
                 for oid, w in self._users.items()}
        return {"faults": faults, "limits": asdict(self.limits), "usage": usage}

    # --- the middleware ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        service = next((s for s in ("dataverse", "finops") if path == f"/{s}" or path.startswith(f"/{s}/")),
                       None)
        if service is None:
            await self.app(scope, receive, send)
            return
        f = self.faults
        if service == "finops" and path.endswith("/$batch"):
            scope = {**scope, PART_THROTTLE: self._part_throttled}
        fault = f.pick(self._rng.random())
        if fault is None:
            await self._limited(scope, receive, send, service)
        elif fault == "drop":
            await self._limited(scope, receive, _cut_after(send), service)
        elif fault == "429":
            await self._delay()
            await self._refuse(send, service, 429, f.retry_after_s, *self._throttle_error(service))
        else:
            status = self._rng.choice((500, 503, 504)) if fault == "5xx" else int(fault)
            code, message = ("0x80040216", "An unexpected error occurred.") if service == "dataverse" else (
                "", "An error has occurred.")
            retry_after = f.retry_after_s if status == 503 else None
            await self._delay()
            await self._refuse(send, service, status, retry_after, code, message)

    def _part_throttled(self) -> int | None:
        """The Retry-After of a batch part to throttle (`part429`), or None to run it."""
        rate = self.faults.part_throttle
        return self.faults.retry_after_s if rate and self._rng.random() < rate else None

    async def _delay(self) -> None:
        if self.faults.latency_s:
            await asyncio.sleep(self.faults.latency_s)

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Injected latency is part of the request: it counts as execution time and concurrency.
        await self._delay()
        await self.app(scope, receive, send)

    def _throttle_error(self, service: str) -> tuple[str, str]:
        if service == "finops":
            return "", FINOPS_THROTTLED
        return ("0x80072322", f"Number of requests exceeded the limit of {self.limits.requests} over time "
                              f"window of {_fmt(self.limits.window_s)} seconds.")

    async def _limited(self, scope: Scope, receive: Receive, send: Send, service: str) -> None:
        if service == "finops":
            await self._finops(scope, receive, send)
            return
        try:
            oid = self.sbx.identity.authenticate(Request(scope), self.sbx.dataverse_url).oid
        except AuthError:
            # Unauthenticated requests do not count: the route answers them with 401.
            await self._run(scope, receive, send)
            return
        lim = self.limits
        win = self._users.setdefault(oid, _Window())
        now = self.clock()
        win.prune(now, lim.window_s)
        refusal = self._refusal(win, now, lim)
        if refusal:
            await self._refuse(send, service, 429, *refusal)
            return
        event = win.arrive(now)
        win.in_flight += 1
        meter = _Meter(self.clock)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self._budget(win, lim, meter.spent())]
            await send(message)

        try:
            await self._run(scope, meter.receive(receive), meter.send(with_headers))
        finally:
            win.in_flight -= 1
            win.finish(event, meter.spent())

    def _budget(self, win: _Window, lim: Limits, running_s: float) -> list[tuple[bytes, bytes]]:
        """What is left of the user's window (this request's execution so far included) and the
        degree of parallelism to use, as response headers."""
        win.prune(self.clock(), lim.window_s)
        requests = max(0, lim.requests - len(win.events))
        seconds = max(0.0, lim.execution_s - win.used - running_s)
        return [(BURST_REMAINING, str(requests).encode()), (TIME_REMAINING, f"{seconds:,.2f}".encode()),
                (DOP_HINT, str(min(lim.dop, lim.concurrency)).encode())]

    def _refusal(self, win: _Window, now: float, lim: Limits) -> tuple[int, str, str] | None:
        """The refusal of a request arriving now: a limit reached, or a Retry-After not waited out.

        A request that arrives before the Retry-After has passed is refused again; one that keeps
        pushing past `PUSH_GRACE_S` extends the wait by 1, 2, 4, … seconds (a window at most each)."""
        if now < win.penalty_until:
            if now - win.penalty_since >= PUSH_GRACE_S:
                win.pushes += 1
                win.penalty_until += min(lim.window_s, 2.0 ** (win.pushes - 1))
            return (math.ceil(win.penalty_until - now), *win.refusal)
        refusal = self._protection(win, now, lim)
        if refusal and refusal[1] != CONCURRENCY_CODE:
            win.penalty_since, win.penalty_until, win.pushes = now, now + refusal[0], 0
            win.refusal = refusal[1], refusal[2]
        return refusal

    @staticmethod
    def _protection(win: _Window, now: float, lim: Limits) -> tuple[int, str, str] | None:
        """`(retry_after, code, message)` when a service protection limit is reached, else None."""
        if win.in_flight >= lim.concurrency:
            return (1, CONCURRENCY_CODE,
                    f"Number of concurrent requests exceeded the limit of {lim.concurrency}.")
        if len(win.events) >= lim.requests:
            wait = win.events[0][0] + lim.window_s - now
            return (max(1, math.ceil(wait)), "0x80072322",
                    f"Number of requests exceeded the limit of {lim.requests} over time window of "
                    f"{_fmt(lim.window_s)} seconds.")
        used = win.used
        if used >= lim.execution_s:
            # Retry when enough execution time has left the window to be under the limit again.
            wait = lim.window_s
            for t, spent in win.events:
                used -= spent
                if used < lim.execution_s:
                    wait = t + lim.window_s - now
                    break
            ms = f"{round(lim.execution_s * 1000):,}"
            return (max(1, math.ceil(wait)), "0x80072321",
                    f"Combined execution time of incoming requests exceeded limit of {ms}  milliseconds "
                    f"over time window of {_fmt(lim.window_s)} seconds. Decrease number of concurrent "
                    "requests or reduce the duration of requests and try again later.")
        return None

    async def _finops(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"].startswith(_DMF_PREFIX):
            await self._run(scope, receive, send)
            return
        if self._finops_in_flight >= self.limits.finops_concurrency:
            await self._refuse(send, "finops", 429, 1, "", FINOPS_THROTTLED)
            return
        self._finops_in_flight += 1
        try:
            await self._run(scope, receive, send)
        finally:
            self._finops_in_flight -= 1

    @staticmethod
    async def _refuse(send: Send, service: str, status: int, retry_after: int | None, code: str,
                      message: str) -> None:
        """Answer with the service's error body (docs/sandbox.md, Errors)."""
        if service == "dataverse":
            body: dict[str, Any] = {"error": {"code": code, "message": message}}
        else:
            kind = "AxODataThrottlingException" if status == 429 else "AxODataException"
            body = {"error": {"code": code, "message": message, "innererror": {
                "message": message, "type": f"{_AX_ODATA}.{kind}", "stacktrace": ""}}}
        data = json.dumps(body).encode()
        headers = [(b"content-type", _ODATA_JSON), (b"content-length", str(len(data)).encode()),
                   (b"odata-version", b"4.0")]  # an OData answer like any other of the service
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


def _cut_after(send: Send) -> Send:
    """A `send` that lets the route run to the end, then cuts the connection mid-response.

    The route's response is discarded; the client gets the start of a response whose body never
    completes, and the server closes the connection (the client sees a transport error).
    """

    async def cut(message: Message) -> None:
        if message["type"] == "http.response.start":
            # Always a status with a body (204 has none, so it could not be cut short).
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
            await send({"type": "http.response.body", "body": b"{", "more_body": True})

    return cut
