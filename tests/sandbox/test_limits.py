"""Service protection limits, F&O throttling and fault injection (`dwlib.sandbox.limits`)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dwlib.errors import SandboxError
from dwlib.sandbox import control
from dwlib.sandbox.context import Sandbox
from dwlib.sandbox.identity import EntraIdentity, app_principal, consultant
from dwlib.sandbox.limits import FINOPS_THROTTLED, Faults, Guard, _Meter, _Window
from dwlib.sandbox.server import ensure_credentials
from dwlib.sandbox.state import Limits, Paths, Settings
from dwlib.sandbox.store import Store

BASE = "https://127.0.0.1:4443"

# --- the fault spec -----------------------------------------------------------------------------------


def test_fault_spec_parses_every_item() -> None:
    f = Faults.parse("latency=20ms, 429=0.05,5xx=0.02,drop=0.01,seed=7,retry=3")
    assert (f.latency_s, f.throttle, f.server_error, f.drop, f.seed, f.retry_after_s) == (
        0.02, 0.05, 0.02, 0.01, 7, 3)
    assert Faults.parse("latency=1.5s").latency_s == 1.5
    assert Faults.parse("latency=40").latency_s == 0.04
    explicit = Faults.parse("503=0.02,504=0.03,500=0.04")
    assert (explicit.error_503, explicit.error_504, explicit.error_500, explicit.server_error) == (
        0.02, 0.03, 0.04, 0.0)


@pytest.mark.parametrize("spec", ["429", "latency=fast", "5xx=2", "drop=-0.1", "boom=1", "retry=0",
                                  "429=0.6,5xx=0.6", "seed=x", "503=1.5", "429=0.5,503=0.3,504=0.3"])
def test_bad_fault_specs_say_how_to_write_one(spec: str) -> None:
    with pytest.raises(ValueError, match=r"bad fault"):
        Faults.parse(spec)


# --- the middleware, in process ----------------------------------------------------------------------


class Rig:
    """A Guard around tiny routes, with tokens for two users and requests through ASGI."""

    def __init__(self, tmp_path: Path, limits: str = "", faults: str = "") -> None:
        paths = Paths(tmp_path)
        ensure_credentials(paths)
        settings = Settings(profile="new-new", rows=0, limits=Limits.parse(limits), faults=faults)
        self.ident = EntraIdentity(paths, settings, BASE)
        self.sbx = Sandbox(paths, settings, Store(paths.db), self.ident, BASE)
        self.gate = asyncio.Event()
        self.waiting = 0
        self.hits = 0

        async def ok(request: Request) -> Response:
            self.hits += 1
            return JSONResponse({"ok": True})

        async def held(request: Request) -> Response:
            self.waiting += 1
            await self.gate.wait()
            return JSONResponse({"ok": True})

        async def slow(request: Request) -> Response:
            await asyncio.sleep(0.03)
            return JSONResponse({"ok": True})

        async def busy(request: Request) -> Response:
            self.now += 0.25  # 250 ms of processing on the fake clock
            return JSONResponse({"ok": True})

        app = Starlette(routes=[
            Route("/dataverse/ok", ok), Route("/dataverse/held", held), Route("/dataverse/slow", slow),
            Route("/dataverse/busy", busy),
            Route("/finops/data/held", held), Route("/finops/data/DataManagementDefinitionGroups/held", held),
            Route("/tenant/oauth2/v2.0/token", ok, methods=["GET"]), Route("/_sandbox/health", ok),
        ])
        self.guard = Guard(app, self.sbx)
        self.now = 0.0
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.guard), base_url=BASE)
        self.app_token = self.ident.issue(app_principal(settings), f"{BASE}/dataverse")["access_token"]
        self.user_token = self.ident.issue(consultant(settings), f"{BASE}/dataverse")["access_token"]

    def fake_clock(self) -> None:
        """The guard reads `self.now` as its clock (advanced by the test and the busy route)."""
        self.guard.clock = lambda: self.now

    async def get(self, path: str, token: str | None = "app") -> httpx.Response:
        tokens = {"app": self.app_token, "user": self.user_token}
        headers = {"Authorization": f"Bearer {tokens[token]}"} if token else {}
        return await self.client.get(path, headers=headers)

    async def until_waiting(self, n: int) -> None:
        deadline = time.monotonic() + 5
        while self.waiting < n:
            assert time.monotonic() < deadline, f"{self.waiting} of {n} requests arrived"
            await asyncio.sleep(0.005)


def _error(response: httpx.Response) -> tuple[str, str]:
    body = response.json()["error"]
    return body["code"], body["message"]


def test_request_limit_per_user_with_retry_after_and_recovery(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = Rig(tmp_path, limits="requests=3,window=1")
        first = [await rig.get("/dataverse/ok") for _ in range(3)]
        assert [r.headers["x-ms-ratelimit-burst-remaining-xrm-requests"] for r in first] == ["2", "1", "0"]
        refused = await rig.get("/dataverse/ok")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["content-type"] == "application/json; odata.metadata=minimal"
        assert _error(refused) == (
            "0x80072322", "Number of requests exceeded the limit of 3 over time window of 1 seconds.")
        assert (await rig.get("/dataverse/ok", token="user")).status_code == 200  # another user
        assert rig.hits == 4
        await asyncio.sleep(int(refused.headers["retry-after"]))  # waiting out the Retry-After
        assert (await rig.get("/dataverse/ok")).status_code == 200
    asyncio.run(scenario())


def test_counted_responses_carry_the_remaining_budget_and_the_dop_hint(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = Rig(tmp_path)
        rig.fake_clock()
        first = await rig.get("/dataverse/ok")
        # As in a captured Dataverse response: requests left, seconds left as "1,200.00", the hint.
        assert [first.headers[h] for h in ("x-ms-ratelimit-burst-remaining-xrm-requests",
                                           "x-ms-ratelimit-time-remaining-xrm-requests",
                                           "x-ms-dop-hint")] == ["5999", "1,200.00", "8"]
        rig = Rig(tmp_path, limits="requests=10,exec=1,window=60,concurrency=3")
        rig.fake_clock()
        seen = [await rig.get(p) for p in ("/dataverse/busy", "/dataverse/busy", "/dataverse/ok")]
        assert [(r.headers["x-ms-ratelimit-burst-remaining-xrm-requests"],
                 r.headers["x-ms-ratelimit-time-remaining-xrm-requests"]) for r in seen] == [
            ("9", "0.75"), ("8", "0.50"), ("7", "0.50")]  # a request's own time counts at once
        assert {r.headers["x-ms-dop-hint"] for r in seen} == {"3"}  # never above the concurrency limit
        assert list(rig.guard.describe()["usage"].values()) == [{"requests": 3, "execution_s": 0.5}]
        refused = [await rig.get("/dataverse/busy") for _ in range(3)]
        assert [r.status_code for r in refused] == [200, 200, 429]
        assert "x-ms-dop-hint" not in refused[-1].headers and _error(refused[-1])[0] == "0x80072321"
    asyncio.run(scenario())


def test_retry_after_grows_while_the_client_keeps_pushing(tmp_path: Path) -> None:
    async def retry_after(rig: Rig, at: float) -> int:
        rig.now = at
        response = await rig.get("/dataverse/ok")
        assert response.status_code == 429 and _error(response)[0] == "0x80072322"
        return int(response.headers["retry-after"])

    async def scenario() -> None:
        rig = Rig(tmp_path, limits="requests=2,window=60")
        rig.fake_clock()
        assert [(await rig.get("/dataverse/ok")).status_code for _ in range(2)] == [200, 200]
        assert await retry_after(rig, 0.0) == 60
        assert await retry_after(rig, 0.5) == 60  # already on its way when the first was refused
        # Pushing on: each early request extends the wait by 1, 2, 4, ... s (a window at most each).
        assert [await retry_after(rig, t) for t in (2.0, 3.0, 4.0, 5.0, 6.0)] == [59, 60, 63, 70, 85]
        assert rig.hits == 2

        patient = Rig(tmp_path, limits="requests=2,window=10")
        patient.fake_clock()
        assert [(await patient.get("/dataverse/ok")).status_code for _ in range(2)] == [200, 200]
        assert await retry_after(patient, 0.0) == 10
        patient.now = 10.0
        assert (await patient.get("/dataverse/ok")).status_code == 200  # waited out: served at once
    asyncio.run(scenario())


def test_execution_time_leaves_out_waiting_for_the_network() -> None:
    async def scenario() -> None:
        now = [0.0]
        meter = _Meter(lambda: now[0])

        async def slow_body() -> dict[str, Any]:
            now[0] += 5.0  # the body trickles in, or another request is processed meanwhile
            return {"type": "http.request", "body": b"", "more_body": False}

        async def slow_reader(message: dict[str, Any]) -> None:
            now[0] += 3.0

        await meter.receive(slow_body)()
        now[0] += 0.5  # processing
        await meter.send(slow_reader)({"type": "http.response.body"})
        assert now[0] == 8.5 and meter.spent() == 0.5
    asyncio.run(scenario())


def test_unauthenticated_requests_do_not_count(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = Rig(tmp_path, limits="requests=1")
        statuses = [(await rig.get("/dataverse/ok", token=None)).status_code for _ in range(3)]
        assert statuses == [200, 200, 200] and rig.hits == 3
    asyncio.run(scenario())


def test_execution_time_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = Rig(tmp_path, limits="exec=0.05,window=300")
        assert [(await rig.get("/dataverse/slow")).status_code for _ in range(2)] == [200, 200]
        refused = await rig.get("/dataverse/slow")
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) in range(299, 301)
        assert _error(refused) == (
            "0x80072321",
            "Combined execution time of incoming requests exceeded limit of 50  milliseconds over time "
            "window of 300 seconds. Decrease number of concurrent requests or reduce the duration of "
            "requests and try again later.")
    asyncio.run(scenario())


def test_documented_messages_at_the_documented_defaults() -> None:
    lim = Limits()
    win = _Window()
    assert Guard._protection(win, 0.0, lim) is None
    win.in_flight = 52
    assert Guard._protection(win, 0.0, lim) == (1, "0x80072326",
                                                "Number of concurrent requests exceeded the limit of 52.")
    win.in_flight = 0
    for _ in range(6000):
        win.finish(win.arrive(0.0), 0.2)
    assert Guard._protection(win, 1.0, lim) == (
        299, "0x80072322", "Number of requests exceeded the limit of 6000 over time window of 300 seconds.")
    win = _Window()
    for t in (10, 20):
        win.finish(win.arrive(float(t)), 600.0)
    retry, code, message = Guard._protection(win, 30.0, lim) or (0, "", "")
    assert (retry, code) == (280, "0x80072321")  # once the first 600 s leave the window
    assert message.startswith("Combined execution time of incoming requests exceeded limit of "
                              "1,200,000  milliseconds over time window of 300 seconds.")


def test_concurrency_limit_is_immediate(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = Rig(tmp_path, limits="concurrency=2")
        held = [asyncio.create_task(rig.get("/dataverse/held")) for _ in range(2)]
        await rig.until_waiting(2)
        refused = await rig.get("/dataverse/ok")
        assert (refused.status_code, _error(refused)[0]) == (429, "0x80072326")
        assert (await rig.get("/dataverse/ok", token="user")).status_code == 200
        rig.gate.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await rig.get("/dataverse/ok")).status_code == 200
    asyncio.run(scenario())


def test_injected_latency_counts_towards_concurrency(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = Rig(tmp_path, limits="concurrency=1", faults="latency=200ms")
        both = await asyncio.gather(rig.get("/dataverse/ok"), rig.get("/dataverse/ok"))
        assert sorted(r.status_code for r in both) == [200, 429]
    asyncio.run(scenario())


def test_finops_resource_throttling_spares_dmf(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = Rig(tmp_path, limits="finops=1")
        held = asyncio.create_task(rig.get("/finops/data/held"))
        await rig.until_waiting(1)
        refused = await rig.get("/finops/data/held")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        body = refused.json()["error"]
        assert body["message"] == FINOPS_THROTTLED and body["innererror"]["message"] == FINOPS_THROTTLED
        dmf = asyncio.create_task(rig.get("/finops/data/DataManagementDefinitionGroups/held"))
        await rig.until_waiting(2)  # DMF is exempt: it got through while F&O is saturated
        rig.gate.set()
        assert [(await t).status_code for t in (held, dmf)] == [200, 200]
    asyncio.run(scenario())


def _statuses(rig: Rig, n: int) -> list[int]:
    async def run() -> list[int]:
        return [(await rig.get("/dataverse/ok")).status_code for _ in range(n)]
    return asyncio.run(run())


def test_fault_rates_are_seeded_and_repeatable(tmp_path: Path) -> None:
    n = 1000
    rig = Rig(tmp_path, faults="429=0.2,5xx=0.1,seed=7")
    first = _statuses(rig, n)
    counts = Counter(first)
    for rate, got in ((0.2, counts[429]), (0.1, counts[500] + counts[503] + counts[504])):
        assert abs(got - rate * n) < 5 * math.sqrt(n * rate * (1 - rate)), (rate, got)
    assert set(counts) == {200, 429, 500, 503, 504}
    assert rig.hits == counts[200]  # refused requests never reach the route
    rig.guard.set_faults("429=0.2,5xx=0.1,seed=7", persist=False)
    assert _statuses(rig, n) == first
    rig.guard.set_faults("429=0.2,5xx=0.1,seed=8", persist=False)
    assert _statuses(rig, n) != first


def test_per_status_fault_rates_inject_only_that_status(tmp_path: Path) -> None:
    n = 1000
    rig = Rig(tmp_path, faults="503=0.2,504=0.1,seed=3")
    counts = Counter(_statuses(rig, n))
    assert set(counts) == {200, 503, 504}
    for rate, got in ((0.2, counts[503]), (0.1, counts[504])):
        assert abs(got - rate * n) < 5 * math.sqrt(n * rate * (1 - rate)), (rate, got)
    rig.guard.set_faults("500=1", persist=False)
    assert set(_statuses(rig, 20)) == {500}


def test_injected_429_and_latency_only_on_service_paths(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = Rig(tmp_path, faults="latency=30ms,429=1,retry=4")
        started = time.monotonic()
        throttled = await rig.get("/dataverse/ok")
        assert time.monotonic() - started >= 0.03
        assert (throttled.status_code, throttled.headers["retry-after"]) == (429, "4")
        assert _error(throttled)[0] == "0x80072322"
        assert (await rig.get("/finops/data/held")).json()["error"]["message"] == FINOPS_THROTTLED
        assert (await rig.get("/tenant/oauth2/v2.0/token")).status_code == 200
        assert (await rig.get("/_sandbox/health")).status_code == 200
    asyncio.run(scenario())


# --- against a sandbox process -------------------------------------------------------------------------


def _whoami(conn: dict[str, Any], http: httpx.Client, token: str) -> httpx.Response:
    return http.get(f"{conn['dataverse_url']}/api/data/v9.2/WhoAmI",
                    headers={"Authorization": f"Bearer {token}"})


def test_sandbox_throttles_and_recovers(start_sandbox: Callable[..., dict[str, Any]],
                                        sandbox_token: Callable[..., str]) -> None:
    conn = start_sandbox("new-new", rows=0, limits="requests=5,window=2")
    token = sandbox_token(conn)
    with control.http_client(conn) as http:
        statuses = [_whoami(conn, http, token).status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        refused = _whoami(conn, http, token)
        assert int(refused.headers["retry-after"]) in (1, 2) and _error(refused)[0] == "0x80072322"
        assert refused.headers["x-ms-service-request-id"]
        time.sleep(int(refused.headers["retry-after"]))  # waiting out the Retry-After, as told
        assert _whoami(conn, http, token).status_code == 200


def test_faults_and_limits_change_while_running(start_sandbox: Callable[..., dict[str, Any]],
                                                sandbox_token: Callable[..., str]) -> None:
    conn = start_sandbox("new-new", rows=0, fresh=True)
    token = sandbox_token(conn)
    with control.http_client(conn) as http:
        assert http.post(f"{conn['admin_url']}/faults", json={"spec": "drop=1"}).status_code == 401
        assert control.admin(conn, "faults", "drop=1,seed=3")["faults"]["drop"] == 1.0
        api = f"{conn['dataverse_url']}/api/data/v9.2"
        auth = {"Authorization": f"Bearer {token}"}
        with pytest.raises(httpx.TransportError):  # the connection is cut mid-response ...
            http.post(f"{api}/accounts", headers=auth, json={"name": "Dropped", "accountnumber": "DROP-1"})
        assert json.loads(Path(conn["state_dir"], "sandbox.json").read_text())["faults"] == "drop=1,seed=3"
        control.admin(conn, "faults", "5xx=1")
        assert _whoami(conn, http, token).status_code in (500, 503, 504)
        control.admin(conn, "faults", "")
        found = http.get(f"{api}/accounts?$filter=accountnumber eq 'DROP-1'&$select=name", headers=auth)
        assert [a["name"] for a in found.json()["value"]] == ["Dropped"]  # ... after the write happened
        assert control.admin(conn, "limits", "requests=1,window=60")["limits"]["requests"] == 1
        assert _whoami(conn, http, token).status_code == 429  # the earlier successful call counts
        assert control.admin(conn, "limits")["limits"]["window_s"] == 60
    with pytest.raises(SandboxError, match="bad fault item 'nonsense'"):
        control.admin(conn, "faults", "nonsense")
