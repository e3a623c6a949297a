"""`GatewayAdmin` (opt-in, UNSUPPORTED BY MICROSOFT): table-map actions through the dual-write
management gateway that Microsoft's Dual-write-automations uses, with a delegated token for
`https://IntegratorApp.com`. It can break at any time; the portal gates stay for LCS actions.

Its reads take the shapes Dual-write-automations deserializes (`DWLibary/Struct/*.cs`): an answer
in another shape, or not JSON, is a `ResponseError` naming the endpoint, never a KeyError.

Example:
    admin = GatewayAdmin(dv, fo, http=gateway_http, gateway_url=url)  # UserWarning
    >>> ACTION_CODES["stop"], RequestState("2").name
    ('4', 'COMPLETED')
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx

from dwlib import catalog
from dwlib.vocab import MapState

from ..dataverse import DataverseClient
from ..errors import ResponseError
from ..finops import FinOpsClient
from ..http import RETRY_REFUSED, redact_url
from .base import DualWriteAdminError, InitialSyncDetails, MapSnapshot, SyncError, host, map_names
from .portal import PortalAdmin

ACTION_CODES = {"start": "1", "stop": "4", "pause": "5", "resume": "6"}  # the gateway's Start actions
API = "api/DualWriteManagement/1.0"


class RequestState(StrEnum):
    """The state of a gateway request for one map (`DWEnums.RequestStatus`)."""

    WAITING = "1"
    COMPLETED = "2"
    ERROR = "3"


@dataclass(frozen=True)
class MapRequest:
    """Where a gateway request stands for one of its maps (`Status/{requestId}`)."""

    map: str
    state: RequestState
    error: str = ""


class GatewayAdmin(PortalAdmin):
    """UNSUPPORTED BY MICROSOFT: map actions through the dual-write management gateway.

    The gateway is the undocumented backend of the dual-write UI that Microsoft's
    Dual-write-automations drives; it "can break anytime". It needs a *delegated* token for
    `https://IntegratorApp.com` (`http` must carry it, e.g. `tokens.auth_for(INTEGRATOR_APP)` with
    device-code sign-in). LCS actions (integration, link) and mapping edits (column defaults) stay
    portal gates. Constructing it warns.

    Example:
        admin = GatewayAdmin(dv, fo, http=gateway_http, gateway_url=url)  # UserWarning
    """

    def __init__(
        self,
        dataverse: DataverseClient,
        finops: FinOpsClient,
        *,
        http: httpx.Client,
        gateway_url: str,
        **kwargs: Any,
    ) -> None:
        warnings.warn(
            "GatewayAdmin drives the dual-write management gateway, which is unsupported by "
            "Microsoft and can change without notice; prefer PortalAdmin",
            UserWarning,
            stacklevel=2,
        )
        super().__init__(dataverse, finops, **kwargs)
        self.http = http
        self.gateway_url = gateway_url.rstrip("/")
        self._env: dict[str, Any] | None = None

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.gateway_url}/{path}"
        try:
            response = self.http.request(method, url, headers={"Accept": "application/json"}, **kwargs)
        except httpx.TransportError as exc:
            raise DualWriteAdminError(
                f"the dual-write gateway at {self.gateway_url} is unreachable: {exc}",
                fix="check gateway_url, or use the portal adapter",
            ) from None
        if response.status_code >= 300:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            refused = response.extensions.get(RETRY_REFUSED)
            raise DualWriteAdminError(
                f"{method} {url} failed: {response.status_code} {message}",
                fix=f"{refused}: run again later" if refused
                else "the gateway is unsupported: use the portal adapter if this persists",
            )
        try:
            return response.json() if response.content else None
        except ValueError:
            kind = response.headers.get("Content-Type", "no Content-Type")
            start = re.sub(r"\s+", " ", response.text[:80]).strip()
            raise _unreadable(method, url, f"expected JSON, got {kind}: {start!r}") from None

    @contextlib.contextmanager
    def _reading(self, method: str, path: str) -> Iterator[None]:
        """Read an answer in the shape Dual-write-automations reads; another shape is a ResponseError."""
        try:
            yield
        except KeyError as exc:
            key = exc.args[0]
            problem = (f"no {key!r} where Dual-write-automations reads one" if isinstance(key, str) else
                       f"not the shape Dual-write-automations reads (no item {key!r})")
            raise _unreadable(method, f"{self.gateway_url}/{path}", problem) from None
        except (IndexError, TypeError, AttributeError, ValueError) as exc:
            raise _unreadable(method, f"{self.gateway_url}/{path}", f"not the shape Dual-write-automations "
                              f"reads ({type(exc).__name__}: {exc})") from None

    def _environment(self) -> dict[str, Any]:
        """`Environments`: the dual-write connection of this F&O environment (`DWEnvironment`)."""
        if self._env is None:
            path = f"{API}/Environments"
            envs = self._call("GET", path, params={"targetType": "AX",
                                                   "identifier": host(self.finops.environment_url)})
            with self._reading("GET", path):
                if not envs:
                    raise DualWriteAdminError(
                        f"the gateway knows no dual-write connection for {host(self.finops.environment_url)}",
                        fix="link the environments first (LCS Dual-write application)",
                    )
                env = dict(envs[0])
                _need(env, "cid", "cname")
            self._env = env
        return self._env

    def connection_id(self) -> str:
        """The id (`cid`) of the dual-write connection of this F&O environment."""
        return str(self._environment()["cid"])

    def maps(self) -> list[dict[str, Any]]:
        """`Entities`: the connection's table maps (`DWMap`: leftEntity, rightEntity, detail)."""
        path = f"{API}/Entities"
        maps = self._call("GET", path, params={"targetType": "AX", "cid": self.connection_id()})
        with self._reading("GET", path):
            for m in maps:
                _need(m["detail"], "tName", "tid", "pid", "state")
            return list(maps)

    def _maps(self) -> dict[str, dict[str, Any]]:
        return {m["detail"]["tName"]: m for m in self.maps()}

    def request(self, action: str, entries: Mapping[str, Mapping[str, Any] | None]) -> str:
        """`Start`: one request for maps by name, each `details[]` entry with its own parameters
        (None: none, as for stop, pause and init); returns the request id."""
        cid = self.connection_id()
        maps = self._maps()
        details = []
        for name, params in entries.items():
            detail = maps[name]["detail"]
            details.append({"tid": detail["tid"], "pid": detail["pid"], "cid": cid,
                            **({"parameters": dict(params)} if params is not None else {})})
        path = f"{API}/Start"
        answer = self._call("POST", path, json={"action": action, "details": details})
        with self._reading("POST", path):
            return str(answer["requestId"])

    def request_states(self, request_id: str) -> list[MapRequest]:
        """`Status/{requestId}`: where the request stands for each of its maps."""
        path = f"{API}/Status/{request_id}"
        maps = self._call("GET", path)
        with self._reading("GET", path):
            out = []
            for m in maps:
                last = next((r for r in m["detail"]["lastRequests"] if r["requestId"] == request_id), None)
                if last is None:
                    raise ValueError(f"'{m['detail']['tName']}' does not list the request in lastRequests")
                out.append(MapRequest(m["detail"]["tName"], RequestState(str(last["state"])),
                                      last.get("errorMessage") or ""))
            return out

    def prerequisites(self, name: str) -> list[str]:
        """`GetTemplatePrerequisiteSequences`: the maps to run for `name`, in the gateway's order
        (a check on the catalogue's documented order; the runbooks run by the catalogue's)."""
        m = catalog.table_map(name)
        maps = self._maps()
        names = {v["detail"]["tid"]: k for k, v in maps.items()}
        path = f"{API}/GetTemplatePrerequisiteSequences/{self.connection_id()}"
        sequences = self._call("POST", path, json=[maps[m.name]["detail"]["tid"]])
        with self._reading("POST", path):
            return [names[tid] for tid in sequences[0]]

    def linked_legal_entities(self) -> list[str]:
        """`ConnectionSet/{cname}`: the F&O legal entities of the connection's legal-entity mapping."""
        path = f"api/ConnectionSet/{self._environment()['cname']}"
        conn_set = self._call("GET", path)
        with self._reading("GET", path):
            mappings = conn_set["dualWriteDetail"]["legalEntityMappings"]["mappings"]
            return [str(m["left"]["name"]) for m in mappings]

    def _act(self, action: str, names: Sequence[str], params: dict[str, Any] | None = None) -> None:
        """One Start request per map, in order, each polled to Completed or Error."""
        for name in names:
            request_id = self.request(action, {name: params})

            def done(request_id: str = request_id, name: str = name) -> list[str]:
                mine = next((r for r in self.request_states(request_id) if r.map == name), None)
                if mine is not None and mine.state == RequestState.ERROR:
                    if action == ACTION_CODES["start"]:
                        raise self._failure([name])
                    raise DualWriteAdminError(f"'{name}': {mine.error}")
                waiting = mine is None or mine.state != RequestState.COMPLETED
                return [f"request {request_id} for '{name}' is waiting"] if waiting else []

            self._wait(f"gateway action {action} on '{name}'", done)

    def initial_sync_details(self, name: str) -> InitialSyncDetails:
        m = catalog.table_map(name)
        state = self.map_states([m.name])[m.name]
        outcome = self.initial_sync_outcome(m.name)
        if outcome is None:
            return InitialSyncDetails(m.name, state.state, "Unknown", note="the map has no project yet")
        status, errors = outcome
        return InitialSyncDetails(m.name, state.state, status, errors)

    def initial_sync_outcome(self, name: str) -> tuple[str, list[SyncError]] | None:
        """`ProjectExecutionWithCompanies/{pid}`: the status of a map's initial syncs (Completed,
        Error, Unknown) and their errors; None while the map has no project."""
        pid = self._maps()[catalog.table_map(name).name]["detail"]["pid"]
        if not pid:
            return None
        path = f"api/ProjectExecutionWithCompanies/{pid}"
        body = self._call("GET", path)
        with self._reading("GET", path):
            errors, status = _sync_errors(body)
        return status, errors

    def run(
        self,
        names: Sequence[str],
        *,
        initial_sync: bool = True,
        master: str = "dataverse",
        include_related: bool = True,
    ) -> dict[str, MapSnapshot]:
        order, states, todo = self._run_plan(names, include_related)
        params = {
            "skipInitialSync": not initial_sync,
            "conflictResolution": {"option": "1", "master": {"dataverse": "CRM", "finops": "AX"}[master]},
        }
        paused = [n for n in todo if states[n].state == MapState.PAUSED]
        self._act(ACTION_CODES["resume"], paused)
        self._act(ACTION_CODES["start"], [n for n in todo if n not in paused], params)
        return self._wait_states("Run table maps", order, MapState.RUNNING)

    def stop(self, names: Sequence[str]) -> dict[str, MapSnapshot]:
        return self._switch("stop", names, MapState.NOT_RUNNING)

    def pause(self, names: Sequence[str]) -> dict[str, MapSnapshot]:
        return self._switch("pause", names, MapState.PAUSED)

    def resume(self, names: Sequence[str]) -> dict[str, MapSnapshot]:
        return self._switch("resume", names, MapState.RUNNING)

    def _switch(self, action: str, names: Sequence[str], target: str) -> dict[str, MapSnapshot]:
        maps = map_names(names)
        self._act(ACTION_CODES[action], maps)
        return self._wait_states(f"{action.capitalize()} table maps", maps, target)


def _unreadable(method: str, url: str, problem: str) -> ResponseError:
    return ResponseError(method, redact_url(httpx.URL(url)), problem, fix="the dual-write gateway is "
                         "unsupported and may have changed: use the portal adapter")


def _need(item: Mapping[str, Any], *keys: str) -> None:
    """KeyError for the first of `keys` that `item` lacks (read later, so checked at once)."""
    missing = [k for k in keys if k not in item]
    if missing:
        raise KeyError(missing[0])


def _sync_errors(body: dict[str, Any]) -> tuple[list[SyncError], str]:
    """The errors and overall status of an `InitialSyncDetails` answer (`projectExecutionResponses[]
    .taskExecutionStatuses[].legs[]`, their `importErrors`, or a failed leg's `details`)."""
    errors: list[SyncError] = []
    statuses = []
    for resp in body["projectExecutionResponses"]:
        statuses.append(resp["executionStatus"])
        for task in resp["taskExecutionStatuses"]:
            for leg in task["legs"]:
                for e in leg.get("importErrors") or []:
                    errors.append(SyncError(e["errorMessage"], resp.get("legalEntityId") or "",
                                            e.get("recordId") or "", e.get("sourceField") or "",
                                            catalog.match_error(e["errorMessage"])))
                if not leg.get("importErrors") and leg.get("status") == "Error" and leg.get("details"):
                    errors.append(SyncError(leg["details"], known=catalog.match_error(leg["details"])))
    status = "Error" if errors or "Error" in statuses else ("Completed" if statuses else "Unknown")
    return errors, status
