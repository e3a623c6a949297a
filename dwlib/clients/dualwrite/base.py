"""The dual-write administration interface: `DualWriteAdmin` with the documented reads, the
actions each implementation performs, and the records they return.

State is read from documented sources: `RetrieveFinanceAndOperationsIntegrationDetails`,
`solutions`, `cdm_companies`, `msdyn_dualwriteentitymaps`, `msdyn_dualwriteruntimeconfigs`
(Dataverse) and `DualWriteProjectConfigurations` (F&O). A map's state is read through the
documented representations of those status columns, never from a raw code: the Dataverse choice's
formatted value (`OData.Community.Display.V1.FormattedValue`, asked for with `Prefer:
odata.include-annotations`), else the F&O enum's name (F&O OData carries enums by name). Both are
mapped to `dwlib.vocab.MapState` by name: the states the dual-write page shows, or the `MapStatus` names of
Microsoft's Dual-write-automations (`MapState.of`); any other value is a `DualWriteAdminError`,
not a guess. The real values of these columns are UNVERIFIED (api-surface.md §5.1): `dw doctor
--record` captures them from a real environment. `msdyn_mapping` is read in the shape
Dual-write-automations reads (`entityMappingTasks[].legs[].fieldMappings[].valueTransforms[]`).
The legal entities of the connection (the Legal entities tab of Environment details) are read
from the projects' `PartitionMap` column, also documented as a column with an UNVERIFIED content:
`connection_legal_entities` says when it cannot read them (no project yet, or a value it does not
understand) instead of guessing.

Example:
    >>> MapState.of("InitialSync").value, STATE_OF_STATUS[4].value
    ('Initializing', 'Running')
"""

from __future__ import annotations

import json
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dwlib import catalog
from dwlib.vocab import MAP_STATE_NAMES, MapState

from ..dataverse import DataverseClient
from ..errors import ClientError, HttpError
from ..finops import FinOpsClient
from ..odata import literal

log = logging.getLogger(__name__)

# The gateway's `MapStatus` codes (its `detail.state`), Dual-write-automations' DWEnums.cs.
STATE_OF_STATUS: dict[int, MapState] = {
    1: MapState.NOT_RUNNING,
    2: MapState.INITIALIZING,
    3: MapState.RESUMING,
    4: MapState.RUNNING,
    5: MapState.PAUSED,
    6: MapState.NOT_RUNNING,
}
FORMATTED_VALUE = "OData.Community.Display.V1.FormattedValue"
INTEGRATOR_APP = "https://IntegratorApp.com"


class DualWriteAdminError(ClientError):
    """A dual-write action failed, or its result could not be verified in time; says what is missing."""


@dataclass(frozen=True)
class MapSnapshot:
    """A table map's state as the documented configuration tables show it."""

    name: str
    state: MapState
    project: str | None = None
    version: int | None = None  # Dataverse row version of its runtime configuration: changes with the state
    source: str = ""
    changed_on: str | None = None  # `modifiedon` of that row: when the state last changed (ISO 8601, UTC)

    @property
    def running(self) -> bool:
        return self.state == MapState.RUNNING


def map_state_of(value: Any, *, where: str) -> MapState:
    """The state a status column's documented representation names; DualWriteAdminError for a
    value this client does not know (never a guess such as "Not running").

    >>> map_state_of("Paused", where="x")
    <MapState.PAUSED: 'Paused'>
    >>> map_state_of(4, where="Status")
    Traceback (most recent call last):
    ...
    dwlib.clients.dualwrite.base.DualWriteAdminError: Status holds the map state 4, which this client ...
    """
    state = MapState.of(value) if isinstance(value, str) else None
    if state is None:
        raise DualWriteAdminError(
            f"{where} holds the map state {value!r}, which this client does not know "
            f"(known: {', '.join(MAP_STATE_NAMES)})",
            fix="read the map's state on the dual-write page and report the value, so the client can learn "
                "it (`dw doctor --record` captures it)")
    return state


def mapping_legs(mapping: Any, *, where: str) -> list[dict[str, Any]]:
    """The legs of an `msdyn_mapping` document (`entityMappingTasks[].legs[]`, the shape
    Dual-write-automations reads); DualWriteAdminError for another shape.

    >>> mapping_legs({"entityMappingTasks": [{"legs": [{"fieldMappings": []}]}]}, where="m")
    [{'fieldMappings': []}]
    """
    tasks = mapping.get("entityMappingTasks") if isinstance(mapping, dict) else None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("legs"), list)
                                              for t in tasks):
        raise DualWriteAdminError(
            f"{where} is not in the shape dual-write uses (entityMappingTasks[].legs[].fieldMappings[])",
            fix="check the dual-write solutions are current (Apply Solution in the dual-write workspace)")
    return [leg for t in tasks for leg in t["legs"]]


@dataclass(frozen=True)
class ConnectionLegalEntities:
    """The legal entities of the dual-write connection, as far as they can be read from outside.

    >>> ConnectionLegalEntities(None, "DualWriteProjectConfigurations", "no project yet").readable
    False
    """

    codes: tuple[str, ...] | None  # upper case; None: not readable (`note` says why)
    source: str
    note: str = ""

    @property
    def readable(self) -> bool:
        return self.codes is not None

    def missing(self, wanted: Iterable[str]) -> list[str]:
        """Of `wanted`, the codes the connection lacks ([] when it cannot be read)."""
        have = set(self.codes or ())
        return [c for c in wanted if self.readable and c.upper() not in have]


_COMPANY_CODE = re.compile(r"^[A-Za-z0-9]{1,8}$")  # F&O legal entity ids: at most 4 in practice


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


def host(url: str) -> str:
    """The host (and port) of a URL, as the portals name environments.

    >>> host("https://contoso.operations.dynamics.com/")
    'contoso.operations.dynamics.com'
    """
    return urlsplit(url).netloc


def same_url(a: str, b: str) -> bool:
    """Whether two environment URLs name the same environment (case and trailing slash aside).

    >>> same_url("https://A.example/", "https://a.example")
    True
    """
    return a.rstrip("/").lower() == b.rstrip("/").lower()


def map_names(names: Iterable[str]) -> list[str]:
    """The catalogue names of maps given by name or id (CatalogError when one is unknown).

    >>> map_names(["customers-v3-accounts"])
    ['Customers V3 (accounts)']
    """
    return [catalog.table_map(n).name for n in names]


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

    def dataverse_companies(self) -> list[str]:
        """Company codes of the `cdm_companies` rows, upper case: what the Legal entities
        (cdm_companies) map has brought to Dataverse (not what the connection holds: see
        `connection_legal_entities`)."""
        rows = self.dataverse.query("cdm_companies", select=["cdm_companycode"])
        return sorted(r["cdm_companycode"].upper() for r in rows if r.get("cdm_companycode"))

    def connection_legal_entities(self) -> ConnectionLegalEntities:
        """The legal entities of the dual-write connection, from the `PartitionMap` of the F&O
        project configurations (every project partitions by the connection's legal entities).

        Not readable before any map has a project (they are created when a map first runs), or
        when the column holds something else than company codes: then `codes` is None and `note`
        says so, and what depends on it is a warning, never a pass.

        admin.connection_legal_entities().codes  → ('DAT', 'USMF')
        """
        source = "DualWriteProjectConfigurations.PartitionMap"
        try:
            rows = list(self.finops.query("DualWriteProjectConfigurations",
                                          select=["ProjectName", "PartitionMap", "IsDelete"]))
        except HttpError as exc:
            return ConnectionLegalEntities(None, source, f"not readable: {exc}")
        values = {str(r.get("PartitionMap") or "") for r in rows if r.get("IsDelete") != "Yes"} - {""}
        if not values:
            return ConnectionLegalEntities(None, source, "no table map has a project yet (a map's first "
                                                         "Run creates it)")
        codes = {c.strip() for v in values for c in v.split(",")}
        unknown = sorted(c for c in codes if not _COMPANY_CODE.match(c))
        if unknown:
            return ConnectionLegalEntities(None, source, f"values not understood as company codes: "
                                                         f"{', '.join(unknown)[:200]}")
        return ConnectionLegalEntities(tuple(sorted(c.upper() for c in codes)), source)

    def stale_configuration(self) -> list[str]:
        """The F&O project configurations (`DualWriteProjectConfigurations`) that name another
        Dataverse environment (`ExternalEnvironmentURL`) than the one linked: what a database
        refresh or copy leaves behind (relink-environments, "Backup and restore"). One line each.

        Usage: `admin.stale_configuration()` → `['DWM-1 (CustCustomerV3Entity) names https://prod…']`.
        """
        rows = self.finops.query("DualWriteProjectConfigurations",
                                 select=["ProjectName", "InternalEntityName", "ExternalEnvironmentURL"])
        return sorted({f"{r['ProjectName']} ({r.get('InternalEntityName')}) names "
                       f"{r['ExternalEnvironmentURL']}"
                       for r in rows if r.get("ExternalEnvironmentURL")
                       and not same_url(str(r["ExternalEnvironmentURL"]), self.dataverse.environment_url)})

    def answering(self) -> list[str]:
        """What does not answer of the two environments ([] when both do): WhoAmI in Dataverse, a
        read of LegalEntities in F&O. A maintenance window is over when both answer."""
        down = []
        for name, probe in (("Dataverse", self.dataverse.whoami),
                            ("finance and operations", lambda: self.finops.query("LegalEntities", top=1))):
            try:
                probe()
            except (ClientError, OSError) as exc:
                down.append(f"{name} does not answer: {exc}")
        return down

    def applied_maps(self) -> list[str]:
        """Maps in Dataverse (`msdyn_dualwriteentitymaps`): present once the solutions are applied."""
        return sorted(
            {
                r["msdyn_name"]
                for r in self.dataverse.query("msdyn_dualwriteentitymaps", select=["msdyn_name"])
            }
        )

    def column_defaults(self, name: str) -> dict[str, Any]:
        """The Default value transforms of a map's column rows that write F&O from Dataverse, by
        F&O column, as `msdyn_dualwriteentitymaps.msdyn_mapping` shows them ({} before Apply
        Solution). Constant rows (`PARTYTYPE << none = Organization`) are not listed.

        admin.column_defaults("Customers V3 (accounts)")  → {'CustomerGroupId': '30'}
        """
        m = catalog.table_map(name)
        rows = self.dataverse.query(
            "msdyn_dualwriteentitymaps",
            select=["msdyn_mapping"],
            filter=f"msdyn_name eq {literal(m.name)}",
        )
        out: dict[str, Any] = {}
        for row in rows:
            where = f"msdyn_mapping of '{m.name}'"
            try:
                mapping = json.loads(row.get("msdyn_mapping") or "{}")
            except json.JSONDecodeError:
                raise DualWriteAdminError(f"{where} is not JSON") from None
            for leg in mapping_legs(mapping, where=where):
                for f in leg.get("fieldMappings") or []:
                    if not (f.get("sourceField") and f.get("destinationField")):
                        continue
                    for t in f.get("valueTransforms") or []:
                        if str(t.get("transformType", "")).lower() == "default":
                            out[f["sourceField"]] = t.get("defaultValue")
        return out

    def map_states(self, names: Iterable[str] | None = None) -> dict[str, MapSnapshot]:
        """State of each map (all catalogue maps by default) from the runtime configurations:
        Dataverse `msdyn_dualwriteruntimeconfigs` (the choice's formatted value, and the row version
        that moves with each change), else F&O `DualWriteProjectConfigurations` (the enum's name)."""
        maps = [catalog.table_map(n) for n in names] if names is not None else list(catalog.table_maps())
        columns = ["msdyn_name", "msdyn_status", "msdyn_internalentityname", "msdyn_externalentityname",
                   "versionnumber", "modifiedon"]
        dv = [r for page in self.dataverse.pages(
            "msdyn_dualwriteruntimeconfigs", {"$select": ",".join(columns)},
            {"Prefer": f'odata.include-annotations="{FORMATTED_VALUE}"'}) for r in page]
        fo: list[dict[str, Any]] | None = None
        out: dict[str, MapSnapshot] = {}
        for m in maps:
            rows = [r for r in dv if r.get("msdyn_internalentityname") == m.finops_entity
                    and r.get("msdyn_externalentityname") == m.dataverse_table]
            row = max(rows, key=lambda r: r.get("versionnumber") or 0) if rows else None
            label = row.get(f"msdyn_status@{FORMATTED_VALUE}") if row else None
            if row is not None and label is not None:
                state = map_state_of(label, where="msdyn_dualwriteruntimeconfigs.msdyn_status")
                out[m.name] = MapSnapshot(m.name, state, row["msdyn_name"], row.get("versionnumber"),
                                          "msdyn_dualwriteruntimeconfigs", row.get("modifiedon"))
                continue
            if fo is None:
                fo = list(self.finops.query("DualWriteProjectConfigurations", select=[
                    "RecId", "ProjectName", "Status", "InternalEntityName", "ExternalEntityName",
                    "IsDelete"]))
            mine = [r for r in fo if r.get("InternalEntityName") == m.finops_entity
                    and r.get("ExternalEntityName") == m.dataverse_table and r.get("IsDelete") != "Yes"]
            if mine:
                project = max(mine, key=lambda r: r["RecId"])
                state = map_state_of(project.get("Status"), where="DualWriteProjectConfigurations.Status")
                version = row.get("versionnumber") if row else None
                out[m.name] = MapSnapshot(m.name, state, project["ProjectName"], version,
                                       "DualWriteProjectConfigurations")
            elif row is not None:
                raise DualWriteAdminError(
                    f"the state of '{m.name}' cannot be read: its msdyn_dualwriteruntimeconfigs row has no "
                    "formatted msdyn_status and F&O has no DualWriteProjectConfigurations row for it",
                    fix="check the map on the dual-write page; Reset link repairs a half-removed "
                        "configuration")
            else:
                out[m.name] = MapSnapshot(m.name, MapState.NOT_RUNNING, source="no project configuration yet")
        return out

    def dependency_order(self, names: Iterable[str]) -> list[str]:
        """The maps to run for `names`, prerequisites first (the catalogue's documented order)."""
        return catalog.dependency_order(names)

    def _run_plan(
        self, names: Sequence[str], include_related: bool
    ) -> tuple[list[str], dict[str, MapSnapshot], list[str]]:
        """What Run covers: the maps in order (prerequisites first when `include_related`), their
        states now, and those of them not Running yet."""
        order = self.dependency_order(names) if include_related else map_names(names)
        states = self.map_states(order)
        return order, states, [n for n in order if not states[n].running]

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
    ) -> dict[str, MapSnapshot]:
        """Run maps (with their not-running prerequisites first); returns their verified states."""

    @abstractmethod
    def set_column_defaults(self, name: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """Give column rows of a Not running map a Default value transform (F&O column → value,
        written to F&O when the Dataverse value is empty); returns the verified defaults.

        admin.set_column_defaults("Customers V3 (accounts)", {"CUSTOMERGROUPID": "30"})
        → {'CustomerGroupId': '30'}
        """

    @abstractmethod
    def reset_link(self, legal_entities: Sequence[str]) -> None:
        """Reset link (maps stopped), then Apply Solution: the stale configuration is cleared and the
        connection restored from the Power Platform integration with `legal_entities` (reset.md)."""

    @abstractmethod
    def stop(self, names: Sequence[str]) -> dict[str, MapSnapshot]:
        """Stop Running maps."""

    @abstractmethod
    def pause(self, names: Sequence[str]) -> dict[str, MapSnapshot]:
        """Pause Running maps (their changes queue)."""

    @abstractmethod
    def resume(self, names: Sequence[str]) -> dict[str, MapSnapshot]:
        """Resume Paused maps (catch up the queue)."""

    # --- waiting ------------------------------------------------------------------------------------

    def wait_for(self, what: str, missing: Callable[[], list[str]]) -> None:
        """Poll `missing` (what is still missing, as readable lines) every `poll_s` until it lists
        nothing; DualWriteAdminError naming what is missing after `timeout_s`.

        admin.wait_for("company rows", lambda: sorted({"USMF"} - set(admin.dataverse_companies())))
        """
        self._wait(what, missing)

    def hold(self, seconds: float) -> None:
        """Let `seconds` pass (a window for the consultant to act in), in steps of at most `poll_s`
        through the same clock and sleep as the waits, so an interrupt lands within one poll."""
        deadline = self._clock() + seconds
        while (left := deadline - self._clock()) > 0:
            self._sleep(min(self.poll_s, left))

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
        self, what: str, names: Sequence[str], target: str, before: dict[str, MapSnapshot] | None = None
    ) -> dict[str, MapSnapshot]:
        """Wait until every map is in `target`; a map that went back to Not running after an
        attempt (its row version moved) failed: raise with the initial-sync errors known."""
        result: dict[str, MapSnapshot] = {}

        def check() -> list[str]:
            result.update(self.map_states(names))
            if before is not None:
                failed = [
                    n
                    for n in names
                    if result[n].state == MapState.NOT_RUNNING and result[n].version != before[n].version
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


