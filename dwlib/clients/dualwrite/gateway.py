"""`GatewayAdmin` (opt-in, UNSUPPORTED BY MICROSOFT): table-map actions through the dual-write
management gateway that Microsoft's Dual-write-automations uses, with a delegated token for
`https://IntegratorApp.com`. It can break at any time; the portal gates stay for LCS actions.

Example:
    >>> # admin = GatewayAdmin(dv, fo, http=gateway_http, gateway_url=url)  # UserWarning
    >>> ACTION_CODES["stop"]
    '4'
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import httpx

from dwlib import catalog

from ..dataverse import DataverseClient
from ..finops import FinOpsClient
from ..http import RETRY_REFUSED
from .base import DualWriteAdminError, InitialSyncDetails, MapState, SyncError, host, map_names
from .portal import PortalAdmin

ACTION_CODES = {"start": "1", "stop": "4", "pause": "5", "resume": "6"}  # the gateway's Start actions


class GatewayAdmin(PortalAdmin):
    """UNSUPPORTED BY MICROSOFT: map actions through the dual-write management gateway.

    The gateway is the undocumented backend of the dual-write UI that Microsoft's
    Dual-write-automations drives; it "can break anytime". It needs a *delegated* token for
    `https://IntegratorApp.com` (`http` must carry it, e.g. `tokens.auth_for(INTEGRATOR_APP)` with
    device-code sign-in). LCS actions (integration, link) and mapping edits (column defaults) stay
    portal gates. Constructing it warns.

    Example:
        >>> # admin = GatewayAdmin(dv, fo, http=gateway_http, gateway_url=url)  # UserWarning
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
        self._cid: str | None = None

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
        return response.json() if response.content else None

    def _connection_id(self) -> str:
        if self._cid is None:
            envs = self._call(
                "GET",
                "api/DualWriteManagement/1.0/Environments",
                params={"targetType": "AX", "identifier": host(self.finops.environment_url)},
            )
            if not envs:
                raise DualWriteAdminError(
                    f"the gateway knows no dual-write connection for {host(self.finops.environment_url)}",
                    fix="link the environments first (LCS Dual-write application)",
                )
            self._cid = envs[0]["cid"]
        return self._cid

    def _maps(self) -> dict[str, dict[str, Any]]:
        maps = self._call(
            "GET",
            "api/DualWriteManagement/1.0/Entities",
            params={"targetType": "AX", "cid": self._connection_id()},
        )
        return {m["detail"]["tName"]: m for m in maps}

    def _act(self, action: str, names: Sequence[str], params: dict[str, Any] | None = None) -> None:
        """One Start request per map, in order, each polled to Completed (2) or Error (3)."""
        cid = self._connection_id()
        for name in names:
            detail = self._maps()[name]["detail"]
            # Each entry carries its own map's parameters; none at all for stop, pause and resume.
            item = {"tid": detail["tid"], "pid": detail["pid"], "cid": cid,
                    **({"parameters": params} if params is not None else {})}
            request_id = self._call(
                "POST", "api/DualWriteManagement/1.0/Start", json={"action": action, "details": [item]}
            )["requestId"]

            def done(request_id: str = request_id, name: str = name) -> list[str]:
                status = self._call("GET", f"api/DualWriteManagement/1.0/Status/{request_id}")
                last = next(
                    (r for r in status[0]["detail"]["lastRequests"] if r["requestId"] == request_id), None
                )
                if last and last["state"] == "3":
                    if action == ACTION_CODES["start"]:
                        raise self._failure([name])
                    raise DualWriteAdminError(f"'{name}': {last['errorMessage']}")
                return (
                    [] if last and last["state"] == "2" else [f"request {request_id} for '{name}' is waiting"]
                )

            self._wait(f"gateway action {action} on '{name}'", done)

    def initial_sync_details(self, name: str) -> InitialSyncDetails:
        m = catalog.table_map(name)
        state = self.map_states([m.name])[m.name]
        pid = self._maps()[m.name]["detail"]["pid"]
        if not pid:
            return InitialSyncDetails(m.name, state.state, "Unknown", note="the map has no project yet")
        body = self._call("GET", f"api/ProjectExecutionWithCompanies/{pid}")
        errors: list[SyncError] = []
        statuses = []
        for resp in body.get("projectExecutionResponses", []):
            statuses.append(resp.get("executionStatus", ""))
            for task in resp.get("taskExecutionStatuses", []):
                for leg in task.get("legs", []):
                    for e in leg.get("importErrors") or []:
                        errors.append(
                            SyncError(
                                e["errorMessage"],
                                resp.get("legalEntityId", ""),
                                e.get("recordId", ""),
                                e.get("sourceField", ""),
                                catalog.match_error(e["errorMessage"]),
                            )
                        )
                    if not leg.get("importErrors") and leg.get("status") == "Error" and leg.get("details"):
                        errors.append(SyncError(leg["details"], known=catalog.match_error(leg["details"])))
        status = "Error" if errors or "Error" in statuses else ("Completed" if statuses else "Unknown")
        return InitialSyncDetails(m.name, state.state, status, errors)

    def run(
        self,
        names: Sequence[str],
        *,
        initial_sync: bool = True,
        master: str = "dataverse",
        include_related: bool = True,
    ) -> dict[str, MapState]:
        order, states, todo = self._run_plan(names, include_related)
        params = {
            "skipInitialSync": not initial_sync,
            "conflictResolution": {"option": "1", "master": {"dataverse": "CRM", "finops": "AX"}[master]},
        }
        paused = [n for n in todo if states[n].state == "Paused"]
        self._act(ACTION_CODES["resume"], paused)
        self._act(ACTION_CODES["start"], [n for n in todo if n not in paused], params)
        return self._wait_states("Run table maps", order, "Running")

    def stop(self, names: Sequence[str]) -> dict[str, MapState]:
        return self._switch("stop", names, "Not running")

    def pause(self, names: Sequence[str]) -> dict[str, MapState]:
        return self._switch("pause", names, "Paused")

    def resume(self, names: Sequence[str]) -> dict[str, MapState]:
        return self._switch("resume", names, "Running")

    def _switch(self, action: str, names: Sequence[str], target: str) -> dict[str, MapState]:
        maps = map_names(names)
        self._act(ACTION_CODES[action], maps)
        return self._wait_states(f"{action.capitalize()} table maps", maps, target)
