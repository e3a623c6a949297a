"""Dual-write administration: read and act on the link, legal entities and table maps.

One interface, `DualWriteAdmin`, two implementations:

- `PortalAdmin` (the default, supported): dual-write has no public API for its actions, so each
  action is a *gate*: the exact instructions for the consultant (where to click, with links built
  from the environment URLs) go to `notify`, then the result is verified through documented reads,
  polling until it holds or `timeout_s` passes. Headless, nobody reads the instructions: it waits
  for the verified state or fails saying what is still missing.
- `GatewayAdmin` (opt-in, UNSUPPORTED BY MICROSOFT): drives the dual-write management gateway
  that Microsoft's Dual-write-automations uses, with a delegated token for
  `https://IntegratorApp.com`. It can break at any time; the portal gate stays for LCS actions.

State is read from documented sources: `RetrieveFinanceAndOperationsIntegrationDetails`,
`solutions`, `cdm_companies`, `msdyn_dualwriteentitymaps`, `msdyn_dualwriteruntimeconfigs`
(Dataverse) and `DualWriteProjectConfigurations` (F&O). Reading a map's state from the status
columns of the last two uses the codes of the gateway (`STATE_OF_STATUS`); the real meaning of
those columns is UNVERIFIED (api-surface.md §5.1).

Example:
    >>> # admin = PortalAdmin(session.dataverse, session.finops, notify=print, timeout_s=1800)
    >>> # admin.run(["Customers V3 (contacts)"], initial_sync=True, master="dataverse")
    >>> # admin.map_states(["Customers V3 (contacts)"])["Customers V3 (contacts)"].state
    >>> STATE_OF_STATUS[4]
    'Running'
"""

from __future__ import annotations

import logging
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from dwlib import catalog

from .dataverse import DataverseClient
from .errors import ClientError, HttpError
from .finops import FinOpsClient

log = logging.getLogger(__name__)

STATE_OF_STATUS = {
    2: "Initializing",
    3: "Resuming",
    4: "Running",
    5: "Paused",
    6: "Not running",
    1: "Not running",
}
INTEGRATOR_APP = "https://IntegratorApp.com"
DUAL_WRITE_UI = "https://dataintegrator.trafficmanager.net/dualWrite?axenv={host}"
LCS = "https://lcs.dynamics.com/V2"


class DualWriteAdminError(ClientError):
    """A dual-write action failed, or its result could not be verified in time; says what is missing."""


@dataclass(frozen=True)
class MapState:
    """A table map's state as the documented configuration tables show it."""

    name: str
    state: str  # Not running | Initializing | Running | Paused | Resuming
    project: str | None = None
    version: int | None = None  # Dataverse row version of its runtime configuration: changes with the state
    source: str = ""

    @property
    def running(self) -> bool:
        return self.state == "Running"


@dataclass(frozen=True)
class SyncError:
    """One initial-sync error, with the catalogue's remediation when the text is known."""

    message: str
    legal_entity: str = ""
    record_id: str = ""
    field: str = ""
    known: catalog.KnownError | None = None

    def remediation(self) -> str:
        return self.known.remediation() if self.known else "Not a documented error: read the message."


@dataclass(frozen=True)
class InitialSyncDetails:
    """What the Initial sync details tab shows for a map (as far as the implementation can read it)."""

    map: str
    state: str
    status: str  # Completed | Error | Executing | Unknown
    errors: list[SyncError] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class Instruction:
    """What the consultant has to do in a portal, and what will be verified afterwards."""

    title: str
    steps: list[str]
    links: dict[str, str]
    verify: str

    def text(self) -> str:
        """The instruction as plain text (numbered steps, links, what is checked)."""
        lines = [self.title, *(f"  {i}. {s}" for i, s in enumerate(self.steps, 1))]
        lines += [f"  {k}: {v}" for k, v in self.links.items()]
        return "\n".join([*lines, f"  Verified automatically: {self.verify}"])


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


class DualWriteAdmin(ABC):
    """Read and act on dual-write; reads are shared, actions differ per implementation."""

    def __init__(
        self,
        dataverse: DataverseClient,
        finops: FinOpsClient,
        *,
        notify: Callable[[Instruction], None] | None = None,
        timeout_s: float = 1800,
        poll_s: float = 5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.dataverse = dataverse
        self.finops = finops
        self.notify = notify or (lambda ins: log.warning("%s", ins.text()))
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._clock = clock
        self._sleep = sleep

    # --- documented reads ---------------------------------------------------------------------------

    def power_platform_link(self) -> dict[str, Any] | None:
        """`RetrieveFinanceAndOperationsIntegrationDetails` (`Url`, `TenantId`, `Id`), or None if not "
        "linked."""
        try:
            return self.dataverse.integration_details()
        except HttpError as exc:
            if exc.code == "0x80048d0b":
                return None
            raise

    def legal_entities(self) -> list[str]:
        """Company codes of the `cdm_companies` rows (dual-write creates one per linked legal entity)."""
        rows = self.dataverse.query("cdm_companies", select=["cdm_companycode"])
        return sorted(r["cdm_companycode"] for r in rows if r.get("cdm_companycode"))

    def applied_maps(self) -> list[str]:
        """Maps in Dataverse (`msdyn_dualwriteentitymaps`): present once the solutions are applied."""
        return sorted(
            {
                r["msdyn_name"]
                for r in self.dataverse.query("msdyn_dualwriteentitymaps", select=["msdyn_name"])
            }
        )

    def map_states(self, names: Iterable[str] | None = None) -> dict[str, MapState]:
        """State of each map (all catalogue maps by default) from the runtime configurations:
        Dataverse `msdyn_dualwriteruntimeconfigs`, else F&O `DualWriteProjectConfigurations`."""
        maps = [catalog.table_map(n) for n in names] if names is not None else list(catalog.table_maps())
        dv = list(
            self.dataverse.query(
                "msdyn_dualwriteruntimeconfigs",
                select=[
                    "msdyn_name",
                    "msdyn_status",
                    "msdyn_internalentityname",
                    "msdyn_externalentityname",
                    "versionnumber",
                ],
            )
        )
        fo: list[dict[str, Any]] | None = None
        out: dict[str, MapState] = {}
        for m in maps:
            rows = [
                r
                for r in dv
                if r.get("msdyn_internalentityname") == m.finops_entity
                and r.get("msdyn_externalentityname") == m.dataverse_table
            ]
            if rows:
                row = max(rows, key=lambda r: r.get("versionnumber") or 0)
                out[m.name] = MapState(
                    m.name,
                    STATE_OF_STATUS.get(row["msdyn_status"], "Not running"),
                    row["msdyn_name"],
                    row.get("versionnumber"),
                    "msdyn_dualwriteruntimeconfigs",
                )
                continue
            if fo is None:
                fo = list(
                    self.finops.query(
                        "DualWriteProjectConfigurations",
                        select=[
                            "RecId",
                            "ProjectName",
                            "Status",
                            "InternalEntityName",
                            "ExternalEntityName",
                            "IsDelete",
                        ],
                    )
                )
            mine = [
                r
                for r in fo
                if r.get("InternalEntityName") == m.finops_entity
                and r.get("ExternalEntityName") == m.dataverse_table
                and r.get("IsDelete") != "Yes"
            ]
            if mine:
                row = max(mine, key=lambda r: r["RecId"])
                out[m.name] = MapState(
                    m.name,
                    STATE_OF_STATUS.get(row["Status"], "Not running"),
                    row["ProjectName"],
                    None,
                    "DualWriteProjectConfigurations",
                )
            else:
                out[m.name] = MapState(m.name, "Not running", source="no project configuration yet")
        return out

    def dependency_order(self, names: Iterable[str]) -> list[str]:
        """The maps to run for `names`, prerequisites first (the catalogue's documented order)."""
        return catalog.dependency_order(names)

    @abstractmethod
    def initial_sync_details(self, name: str) -> InitialSyncDetails:
        """The outcome of a map's last initial sync."""

    # --- actions ------------------------------------------------------------------------------------

    @abstractmethod
    def set_up_power_platform_integration(self) -> dict[str, Any]:
        """Link Dataverse to F&O (LCS); returns the verified integration details."""

    @abstractmethod
    def link(self, legal_entities: Sequence[str]) -> list[str]:
        """Dual-write application Configure + Link with `legal_entities`; returns the companies present."""

    @abstractmethod
    def add_legal_entities(self, codes: Sequence[str], *, skip_initial_writes: bool = False) -> list[str]:
        """Add legal entities to the connection; returns the companies present."""

    @abstractmethod
    def run(
        self,
        names: Sequence[str],
        *,
        initial_sync: bool = True,
        master: str = "dataverse",
        include_related: bool = True,
    ) -> dict[str, MapState]:
        """Run maps (with their not-running prerequisites first); returns their verified states."""

    @abstractmethod
    def stop(self, names: Sequence[str]) -> dict[str, MapState]:
        """Stop Running maps."""

    @abstractmethod
    def pause(self, names: Sequence[str]) -> dict[str, MapState]:
        """Pause Running maps (their changes queue)."""

    @abstractmethod
    def resume(self, names: Sequence[str]) -> dict[str, MapState]:
        """Resume Paused maps (catch up the queue)."""

    # --- waiting ------------------------------------------------------------------------------------

    def _wait(self, what: str, check: Callable[[], list[str]]) -> None:
        """Poll `check` (which lists what is still missing) until it lists nothing or time runs out."""
        deadline = self._clock() + self.timeout_s
        while True:
            missing = check()
            if not missing:
                return
            if self._clock() >= deadline:
                raise DualWriteAdminError(
                    f"{what}: not verified after {self.timeout_s:.0f} s; still missing: {'; '.join(missing)}",
                    fix="do the portal steps shown above (or check why they failed), then run the step again",
                )
            self._sleep(self.poll_s)

    def _wait_states(
        self, what: str, names: Sequence[str], target: str, before: dict[str, MapState] | None = None
    ) -> dict[str, MapState]:
        """Wait until every map is in `target`; a map that went back to Not running after an
        attempt (its row version moved) failed: raise with the initial-sync errors known."""
        result: dict[str, MapState] = {}

        def check() -> list[str]:
            result.update(self.map_states(names))
            if before is not None:
                failed = [
                    n
                    for n in names
                    if result[n].state == "Not running" and result[n].version != before[n].version
                ]
                if failed:
                    raise self._failure(failed)
            return [
                f"'{n}' is {result[n].state}, expected {target}" for n in names if result[n].state != target
            ]

        self._wait(what, check)
        return result

    def _failure(self, failed: Sequence[str]) -> DualWriteAdminError:
        details = [self.initial_sync_details(n) for n in failed]
        lines = []
        for d in details:
            first = d.errors[0] if d.errors else None
            lines.append(f"'{d.map}': " + (f"{first.message} — {first.remediation()}" if first else d.note))
        return DualWriteAdminError(
            "initial sync failed, the map is Not running again: " + " | ".join(lines),
            fix="fix the data or the order as the remediation says, then run again",
        )


class PortalAdmin(DualWriteAdmin):
    """Portal gates: instructions for the consultant, then verification through documented reads.

    `lcs_project_id` / `lcs_environment_id` make the LCS link point at the environment's page.
    """

    def __init__(
        self,
        dataverse: DataverseClient,
        finops: FinOpsClient,
        *,
        lcs_project_id: str = "",
        lcs_environment_id: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(dataverse, finops, **kwargs)
        self.lcs_project_id = lcs_project_id
        self.lcs_environment_id = lcs_environment_id

    def links(self) -> dict[str, str]:
        """Where the consultant clicks: LCS, the F&O Data management workspace, the dual-write UI."""
        fo = self.finops.environment_url
        lcs = (
            f"{LCS}/EnvironmentDetailsV3New/{self.lcs_project_id}?EnvironmentId={self.lcs_environment_id}"
            if self.lcs_project_id and self.lcs_environment_id
            else "https://lcs.dynamics.com"
        )
        return {
            "LCS environment details": lcs,
            "F&O Data management workspace": f"{fo}/?mi=DM_DataManagementWorkspaceMenuItem",
            "Dual-write": DUAL_WRITE_UI.format(host=quote(_host(fo))),
        }

    def _gate(self, title: str, steps: list[str], links: Sequence[str], verify: str) -> None:
        every = self.links()
        self.notify(Instruction(title, steps, {k: every[k] for k in links}, verify))

    def initial_sync_details(self, name: str) -> InitialSyncDetails:
        state = self.map_states([name])[name]
        status = {"Running": "Completed", "Initializing": "Executing"}.get(state.state, "Unknown")
        return InitialSyncDetails(
            catalog.table_map(name).name,
            state.state,
            status,
            note="the error texts are shown only in the dual-write workspace: open the map, tab "
            "'Initial sync details' (top 5 errors), or Data management > Job history (FinOps job name = "
            "execution group id); look each up in dwlib.catalog.match_error",
        )

    def set_up_power_platform_integration(self) -> dict[str, Any]:
        fo = self.finops.environment_url
        self._gate(
            "Set up the Power Platform integration (LCS)",
            [
                f"Open the LCS Environment details page of {_host(fo)}.",
                "Expand Power Platform Integration and select Setup.",
                "Choose the Dataverse environment (a new one from a template, or 'use a different Power "
                "Platform "
                f"environment': {self.dataverse.environment_url}), confirm, and wait for provisioning.",
            ],
            ["LCS environment details"],
            f"Dataverse reports integration with {fo}",
        )

        def check() -> list[str]:
            link = self.power_platform_link()
            if link is None:
                return ["RetrieveFinanceAndOperationsIntegrationDetails answers 0x80048d0b (not integrated)"]
            return (
                []
                if _same_url(link.get("Url", ""), fo)
                else [f"Dataverse is linked to {link.get('Url')}, not {fo}"]
            )

        self._wait("Power Platform integration", check)
        return self.power_platform_link() or {}

    def _solutions_missing(self) -> list[str]:
        installed = {r["uniquename"].lower(): r.get("version") for r in self.dataverse.solutions()}
        missing = []
        for s in catalog.required_solutions():
            version = next((installed[n.lower()] for n in s.names if n.lower() in installed), None)
            if not s.satisfied_by(version):
                missing.append(
                    f"solution {s.uniquename}"
                    + (f" {s.required_version}+" if s.required_version else "")
                    + (f" (installed {version})" if version else " (not installed)")
                )
        return missing

    def link(self, legal_entities: Sequence[str]) -> list[str]:
        codes = [c.upper() for c in legal_entities]
        self._gate(
            "Configure dual-write and link the environments (LCS)",
            [
                f"On the LCS Environment details page of {_host(self.finops.environment_url)}, expand Power "
                f"Platform "
                "Integration and select Dual-write application; review the terms and select Configure, then "
                "OK.",
                "Refresh until the setup succeeds (typically 30 minutes or less); fix any error it shows.",
                "Select Link to Power Platform environment (typically less than 5 minutes).",
                f"In the dual-write workspace keep these legal entities: {', '.join(codes)}; remove the "
                f"others.",
            ],
            ["LCS environment details", "Dual-write"],
            f"dual-write solutions installed, table maps applied, companies {', '.join(codes)} in Dataverse",
        )

        def check() -> list[str]:
            missing = self._solutions_missing()
            if not self.applied_maps():
                missing.append("no table maps in Dataverse (Apply Solution)")
            present = set(self.legal_entities())
            missing += [f"company {c} (cdm_companies)" for c in codes if c not in present]
            return missing

        self._wait("Dual-write link", check)
        return self.legal_entities()

    def add_legal_entities(self, codes: Sequence[str], *, skip_initial_writes: bool = False) -> list[str]:
        wanted = [c.upper() for c in codes]
        self._gate(
            "Add legal entities to the dual-write connection",
            [
                "In F&O open Data management > Dual-write, then Environment details.",
                f"On the Legal entities tab select Add legal entity and add {', '.join(wanted)}.",
                ("Select" if skip_initial_writes else "Clear")
                + " 'Skip initial writes for newly added legal entities'"
                ", then Save.",
            ],
            ["F&O Data management workspace", "Dual-write"],
            f"companies {', '.join(wanted)} in Dataverse",
        )
        self._wait(
            "Legal entities",
            lambda: [f"company {c} (cdm_companies)" for c in wanted if c not in set(self.legal_entities())],
        )
        return self.legal_entities()

    def run(
        self,
        names: Sequence[str],
        *,
        initial_sync: bool = True,
        master: str = "dataverse",
        include_related: bool = True,
    ) -> dict[str, MapState]:
        order = (
            self.dependency_order(names) if include_related else [catalog.table_map(n).name for n in names]
        )
        before = self.map_states(order)
        todo = [n for n in order if not before[n].running]
        if not todo:
            return before
        master_text = {"dataverse": "Dataverse", "finops": "Finance and Operations apps"}[master]
        selected = catalog.table_map(names[-1]).name
        self._gate(
            f"Run table map{'s' if len(todo) > 1 else ''} {', '.join(todo)}",
            [
                "In F&O open Data management > Dual-write (the table map list).",
                f"Select '{selected}' and select Run; in the dialog select Show related table map(s).",
                f"Keep these maps selected, in this order: {' → '.join(todo)}.",
                f"For each, set Master for initial sync to {master_text} and "
                + (
                    "keep Initial Sync selected."
                    if initial_sync
                    else "clear Initial Sync (skip initial sync)."
                ),
                "Select Run and wait until every map shows Running; on errors open 'Initial sync details'.",
            ],
            ["F&O Data management workspace", "Dual-write"],
            f"{', '.join(todo)} Running",
        )
        return self._wait_states("Run table maps", todo, "Running", before)

    def _simple(
        self, action: str, button: str, names: Sequence[str], target: str, extra: str = ""
    ) -> dict[str, MapState]:
        maps = [catalog.table_map(n).name for n in names]
        self._gate(
            f"{action} table maps {', '.join(maps)}",
            [
                "In F&O open Data management > Dual-write (the table map list).",
                f"Select {', '.join(repr(m) for m in maps)} and select {button}.{extra}",
            ],
            ["F&O Data management workspace", "Dual-write"],
            f"{', '.join(maps)} {target}",
        )
        return self._wait_states(f"{action} table maps", maps, target)

    def stop(self, names: Sequence[str]) -> dict[str, MapState]:
        return self._simple("Stop", "Stop", names, "Not running")

    def pause(self, names: Sequence[str]) -> dict[str, MapState]:
        return self._simple("Pause", "Pause", names, "Paused")

    def resume(self, names: Sequence[str]) -> dict[str, MapState]:
        return self._simple(
            "Resume", "Run", names, "Running", " Choose 'Catch up synchronization of queued records'."
        )


class GatewayAdmin(PortalAdmin):
    """UNSUPPORTED BY MICROSOFT: map actions through the dual-write management gateway.

    The gateway is the undocumented backend of the dual-write UI that Microsoft's
    Dual-write-automations drives; it "can break anytime". It needs a *delegated* token for
    `https://IntegratorApp.com` (`http` must carry it, e.g. `tokens.auth_for(INTEGRATOR_APP)` with
    device-code sign-in). LCS actions (integration, link) stay portal gates. Constructing it warns.

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
            raise DualWriteAdminError(
                f"{method} {url} failed: {response.status_code} {message}",
                fix="the gateway is unsupported: use the portal adapter if this persists",
            )
        return response.json() if response.content else None

    def _connection_id(self) -> str:
        if self._cid is None:
            envs = self._call(
                "GET",
                "api/DualWriteManagement/1.0/Environments",
                params={"targetType": "AX", "identifier": _host(self.finops.environment_url)},
            )
            if not envs:
                raise DualWriteAdminError(
                    f"the gateway knows no dual-write connection for {_host(self.finops.environment_url)}",
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
            item = {"tid": detail["tid"], "pid": detail["pid"], "cid": cid, "parameters": params}
            request_id = self._call(
                "POST", "api/DualWriteManagement/1.0/Start", json={"action": action, "details": [item]}
            )["requestId"]

            def done(request_id: str = request_id, name: str = name) -> list[str]:
                status = self._call("GET", f"api/DualWriteManagement/1.0/Status/{request_id}")
                last = next(
                    (r for r in status[0]["detail"]["lastRequests"] if r["requestId"] == request_id), None
                )
                if last and last["state"] == "3":
                    if action == "1":
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
        order = (
            self.dependency_order(names) if include_related else [catalog.table_map(n).name for n in names]
        )
        states = self.map_states(order)
        todo = [n for n in order if not states[n].running]
        params = {
            "skipInitialSync": not initial_sync,
            "conflictResolution": {"option": "1", "master": {"dataverse": "CRM", "finops": "AX"}[master]},
        }
        paused = [n for n in todo if states[n].state == "Paused"]
        self._act("6", paused)
        self._act("1", [n for n in todo if n not in paused], params)
        return self._wait_states("Run table maps", order, "Running")

    def stop(self, names: Sequence[str]) -> dict[str, MapState]:
        maps = [catalog.table_map(n).name for n in names]
        self._act("4", maps)
        return self._wait_states("Stop table maps", maps, "Not running")

    def pause(self, names: Sequence[str]) -> dict[str, MapState]:
        maps = [catalog.table_map(n).name for n in names]
        self._act("5", maps)
        return self._wait_states("Pause table maps", maps, "Paused")

    def resume(self, names: Sequence[str]) -> dict[str, MapState]:
        maps = [catalog.table_map(n).name for n in names]
        self._act("6", maps)
        return self._wait_states("Resume table maps", maps, "Running")
